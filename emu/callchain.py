"""The real call chain behind each step: which Linux or QEMU functions are on the stack.

Each function names its caller (as in the real sources); a step's chain is its function
plus the callers, outermost first.  Functions not listed stand alone.
"""
from __future__ import annotations

import functools

_CALLERS: dict[str, tuple[str, str]] = {
    # Checked against Linux 6.18/6.19 and QEMU 10.2 sources.  One caller per function: where
    # the real caller depends on the path (a read or a write, a flush or a discard), the
    # table keeps one real caller; calls through a function pointer (ops tables, request_irq
    # handlers, coroutine entries) count as calls.
    # -- guest: the workload process (syscall entry points are the roots) ------------------
    "vfs_open": ("", "fs/open.c"),
    "do_dentry_open": ("vfs_open", "fs/open.c"),
    "blkdev_open": ("do_dentry_open", "block/fops.c"),
    "io_submit_one": ("", "fs/aio.c"),
    "__io_submit_one": ("io_submit_one", "fs/aio.c"),
    "aio_write": ("__io_submit_one", "fs/aio.c"),
    "aio_read": ("__io_submit_one", "fs/aio.c"),
    "blkdev_write_iter": ("aio_write", "block/fops.c"),
    "blkdev_read_iter": ("aio_read", "block/fops.c"),
    "io_getevents": ("", "fs/aio.c"),                 # SYSCALL_DEFINE5(io_getevents, ...)
    "schedule": ("", "kernel/sched/core.c"),
    "do_group_exit": ("", "kernel/exit.c"),
    "do_exit": ("do_group_exit", "kernel/exit.c"),
    "vfs_fsync_range": ("", "fs/sync.c"),
    "blkdev_fsync": ("vfs_fsync_range", "block/fops.c"),
    "blkdev_issue_flush": ("blkdev_fsync", "block/blk-flush.c"),
    "vfs_fallocate": ("", "fs/open.c"),
    "blkdev_fallocate": ("vfs_fallocate", "block/fops.c"),
    "blkdev_issue_zeroout": ("blkdev_fallocate", "block/blk-lib.c"),
    "blkdev_issue_discard": ("", "block/blk-lib.c"),  # no caller on a raw bdev's syscall path
    "queue_attr_store": ("", "block/blk-sysfs.c"),
    "queue_requests_store": ("queue_attr_store", "block/blk-sysfs.c"),
    "dev_attr_show": ("", "drivers/base/core.c"),
    "serial_show": ("dev_attr_show", "drivers/block/virtio_blk.c"),
    "virtblk_get_id": ("serial_show", "drivers/block/virtio_blk.c"),
    # -- guest: submission ------------------------------------------------------------------
    "submit_bio": ("", "block/blk-core.c"),
    "submit_bio_noacct": ("submit_bio", "block/blk-core.c"),
    "submit_bio_noacct_nocheck": ("submit_bio_noacct", "block/blk-core.c"),
    "__submit_bio_noacct_mq": ("submit_bio_noacct_nocheck", "block/blk-core.c"),
    "__submit_bio": ("__submit_bio_noacct_mq", "block/blk-core.c"),
    "blk_mq_submit_bio": ("__submit_bio", "block/blk-mq.c"),
    "blk_finish_plug": ("", "block/blk-core.c"),
    "__blk_flush_plug": ("blk_finish_plug", "block/blk-core.c"),
    "blk_mq_flush_plug_list": ("__blk_flush_plug", "block/blk-mq.c"),
    "blk_mq_dispatch_list": ("blk_mq_flush_plug_list", "block/blk-mq.c"),
    "blk_mq_run_hw_queue": ("blk_mq_dispatch_list", "block/blk-mq.c"),
    "blk_mq_sched_dispatch_requests": ("blk_mq_run_hw_queue", "block/blk-mq-sched.c"),
    "__blk_mq_sched_dispatch_requests": ("blk_mq_sched_dispatch_requests", "block/blk-mq-sched.c"),
    "blk_mq_dispatch_rq_list": ("__blk_mq_sched_dispatch_requests", "block/blk-mq.c"),
    "virtio_queue_rq": ("blk_mq_dispatch_rq_list", "drivers/block/virtio_blk.c"),
    "virtblk_prep_rq": ("virtio_queue_rq", "drivers/block/virtio_blk.c"),
    "virtblk_setup_cmd": ("virtblk_prep_rq", "drivers/block/virtio_blk.c"),
    "virtblk_map_data": ("virtblk_prep_rq", "drivers/block/virtio_blk.c"),
    "blk_mq_start_request": ("virtblk_prep_rq", "block/blk-mq.c"),
    "virtblk_add_req": ("virtio_queue_rq", "drivers/block/virtio_blk.c"),
    "virtqueue_add_sgs": ("virtblk_add_req", "drivers/virtio/virtio_ring.c"),
    "virtqueue_add": ("virtqueue_add_sgs", "drivers/virtio/virtio_ring.c"),
    "virtqueue_add_split": ("virtqueue_add", "drivers/virtio/virtio_ring.c"),
    "virtqueue_kick_prepare": ("virtio_queue_rq", "drivers/virtio/virtio_ring.c"),
    "virtqueue_kick_prepare_split": ("virtqueue_kick_prepare", "drivers/virtio/virtio_ring.c"),
    "virtqueue_notify": ("virtio_queue_rq", "drivers/virtio/virtio_ring.c"),
    "vp_notify": ("virtqueue_notify", "drivers/virtio/virtio_pci_common.c"),
    "blk_mq_commit_rqs": ("blk_mq_dispatch_rq_list", "block/blk-mq.c"),
    "virtio_commit_rqs": ("blk_mq_commit_rqs", "drivers/block/virtio_blk.c"),
    "blk_mq_run_work_fn": ("", "block/blk-mq.c"),
    "blk_mq_delay_run_hw_queue": ("", "block/blk-mq.c"),
    # -- guest: completion ---------------------------------------------------------------------
    "handle_irq_event": ("", "kernel/irq/handle.c"),
    "handle_irq_event_percpu": ("handle_irq_event", "kernel/irq/handle.c"),
    "__handle_irq_event_percpu": ("handle_irq_event_percpu", "kernel/irq/handle.c"),
    "vring_interrupt": ("__handle_irq_event_percpu", "drivers/virtio/virtio_ring.c"),
    "virtblk_done": ("vring_interrupt", "drivers/block/virtio_blk.c"),
    "virtqueue_disable_cb": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "virtqueue_disable_cb_split": ("virtqueue_disable_cb", "drivers/virtio/virtio_ring.c"),
    "virtqueue_get_buf": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "virtqueue_get_buf_ctx": ("virtqueue_get_buf", "drivers/virtio/virtio_ring.c"),
    "virtqueue_get_buf_ctx_split": ("virtqueue_get_buf_ctx", "drivers/virtio/virtio_ring.c"),
    "blk_mq_complete_request": ("virtblk_done", "block/blk-mq.c"),
    "virtblk_request_done": ("blk_mq_complete_request", "drivers/block/virtio_blk.c"),
    "blk_mq_end_request": ("virtblk_request_done", "block/blk-mq.c"),
    "virtqueue_enable_cb": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "vp_config_changed": ("__handle_irq_event_percpu", "drivers/virtio/virtio_pci_common.c"),
    # -- guest: probe ----------------------------------------------------------------------------
    "virtio_pci_probe": ("", "drivers/virtio/virtio_pci_common.c"),
    "register_virtio_device": ("virtio_pci_probe", "drivers/virtio/virtio.c"),
    "virtio_reset_device": ("register_virtio_device", "drivers/virtio/virtio.c"),
    "vp_reset": ("virtio_reset_device", "drivers/virtio/virtio_pci_modern.c"),
    "virtio_dev_probe": ("", "drivers/virtio/virtio.c"),
    "virtio_add_status": ("virtio_dev_probe", "drivers/virtio/virtio.c"),
    "virtio_features_ok": ("virtio_dev_probe", "drivers/virtio/virtio.c"),
    "virtblk_probe": ("virtio_dev_probe", "drivers/block/virtio_blk.c"),
    "init_vq": ("virtblk_probe", "drivers/block/virtio_blk.c"),
    "virtio_find_vqs": ("init_vq", "include/linux/virtio_config.h"),
    "vp_modern_find_vqs": ("virtio_find_vqs", "drivers/virtio/virtio_pci_modern.c"),
    "vp_find_vqs": ("vp_modern_find_vqs", "drivers/virtio/virtio_pci_common.c"),
    "vp_find_vqs_msix": ("vp_find_vqs", "drivers/virtio/virtio_pci_common.c"),
    "vp_request_msix_vectors": ("vp_find_vqs_msix", "drivers/virtio/virtio_pci_common.c"),
    "vp_setup_vq": ("vp_find_vqs_msix", "drivers/virtio/virtio_pci_common.c"),
    "setup_vq": ("vp_setup_vq", "drivers/virtio/virtio_pci_modern.c"),
    "blk_mq_alloc_tag_set": ("virtblk_probe", "block/blk-mq.c"),
    "virtblk_read_limits": ("virtblk_probe", "drivers/block/virtio_blk.c"),
    "virtio_device_ready": ("virtblk_probe", "include/linux/virtio_config.h"),
    "virtblk_update_capacity": ("virtblk_probe", "drivers/block/virtio_blk.c"),
    # -- host: the doorbell (KVM_EXIT_MMIO) and the pass over the queue -------------------------------
    "kvm_cpu_exec": ("", "accel/kvm/kvm-all.c"),
    "address_space_rw": ("kvm_cpu_exec", "system/physmem.c"),
    "address_space_write": ("address_space_rw", "system/physmem.c"),
    "flatview_write": ("address_space_write", "system/physmem.c"),
    "flatview_write_continue": ("flatview_write", "system/physmem.c"),
    "flatview_write_continue_step": ("flatview_write_continue", "system/physmem.c"),
    "memory_region_dispatch_write": ("flatview_write_continue_step", "system/memory.c"),
    "access_with_adjusted_size": ("memory_region_dispatch_write", "system/memory.c"),
    "memory_region_write_accessor": ("access_with_adjusted_size", "system/memory.c"),
    "virtio_pci_notify_write": ("memory_region_write_accessor", "hw/virtio/virtio-pci.c"),
    "virtio_queue_notify": ("virtio_pci_notify_write", "hw/virtio/virtio.c"),
    "virtio_blk_handle_output": ("virtio_queue_notify", "hw/block/virtio-blk.c"),
    "virtio_blk_handle_vq": ("virtio_blk_handle_output", "hw/block/virtio-blk.c"),
    "virtio_blk_get_request": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "virtqueue_pop": ("virtio_blk_get_request", "hw/virtio/virtio.c"),
    "virtqueue_split_pop": ("virtqueue_pop", "hw/virtio/virtio.c"),
    "virtio_blk_handle_request": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "virtio_blk_handle_flush": ("virtio_blk_handle_request", "hw/block/virtio-blk.c"),
    "virtio_blk_handle_discard_write_zeroes": ("virtio_blk_handle_request", "hw/block/virtio-blk.c"),
    "virtio_blk_submit_multireq": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "submit_requests": ("virtio_blk_submit_multireq", "hw/block/virtio-blk.c"),
    # -- host: the BlockBackend (each blk_aio_* starts its coroutine entry via blk_aio_prwv) -----------
    "blk_aio_pwritev": ("submit_requests", "block/block-backend.c"),
    "blk_aio_preadv": ("submit_requests", "block/block-backend.c"),
    "blk_aio_flush": ("virtio_blk_handle_flush", "block/block-backend.c"),
    "blk_aio_pdiscard": ("virtio_blk_handle_discard_write_zeroes", "block/block-backend.c"),
    "blk_aio_pwrite_zeroes": ("virtio_blk_handle_discard_write_zeroes", "block/block-backend.c"),
    "blk_aio_prwv": ("blk_aio_pwritev", "block/block-backend.c"),
    "blk_aio_write_entry": ("blk_aio_pwritev", "block/block-backend.c"),
    "blk_aio_read_entry": ("blk_aio_preadv", "block/block-backend.c"),
    "blk_aio_flush_entry": ("blk_aio_flush", "block/block-backend.c"),
    "blk_aio_pdiscard_entry": ("blk_aio_pdiscard", "block/block-backend.c"),
    "blk_co_do_pwritev_part": ("blk_aio_write_entry", "block/block-backend.c"),
    "blk_co_do_preadv_part": ("blk_aio_read_entry", "block/block-backend.c"),
    "blk_co_do_flush": ("blk_aio_flush_entry", "block/block-backend.c"),
    "blk_co_do_pdiscard": ("blk_aio_pdiscard_entry", "block/block-backend.c"),
    # not in QEMU: write-zeroes goes blk_aio_pwrite_zeroes -> blk_aio_write_entry ->
    # blk_co_do_pwritev_part (BDRV_REQ_ZERO_WRITE) -> ... -> bdrv_co_do_pwrite_zeroes
    "blk_co_do_pwrite_zeroes": ("blk_aio_pwrite_zeroes", "block/block-backend.c"),
    # -- host: the generic block layer (block/io.c) -------------------------------------------------------
    "bdrv_co_pwritev_part": ("blk_co_do_pwritev_part", "block/io.c"),
    "bdrv_aligned_pwritev": ("bdrv_co_pwritev_part", "block/io.c"),
    "bdrv_driver_pwritev": ("bdrv_aligned_pwritev", "block/io.c"),
    "bdrv_co_preadv_part": ("blk_co_do_preadv_part", "block/io.c"),
    "bdrv_aligned_preadv": ("bdrv_co_preadv_part", "block/io.c"),
    "bdrv_driver_preadv": ("bdrv_aligned_preadv", "block/io.c"),
    "bdrv_co_flush": ("blk_co_do_flush", "block/io.c"),
    "bdrv_co_pdiscard": ("blk_co_do_pdiscard", "block/io.c"),
    "bdrv_co_pwrite_zeroes": ("blk_co_do_pwrite_zeroes", "block/io.c"),
    "bdrv_co_do_pwrite_zeroes": ("bdrv_aligned_pwritev", "block/io.c"),
    # a generated co_wrapper (declared here, body generated into block/block-gen.c at build time)
    "bdrv_flush": ("", "include/block/block-io.h"),
    # -- host: raw format (block/raw-format.c); it has no flush callback of its own -------------------
    "raw_co_pwritev": ("bdrv_driver_pwritev", "block/raw-format.c"),
    "raw_co_preadv": ("bdrv_driver_preadv", "block/raw-format.c"),
    "raw_co_flush": ("bdrv_co_flush", "block/raw-format.c"),   # not in QEMU: see bdrv_co_flush
    "raw_co_pdiscard": ("bdrv_co_pdiscard", "block/raw-format.c"),
    "raw_co_pwrite_zeroes": ("bdrv_co_do_pwrite_zeroes", "block/raw-format.c"),
    # -- host: file-posix and its thread pool ---------------------------------------------------------------
    "raw_co_prw": ("raw_co_pwritev", "block/file-posix.c"),   # file-posix's own raw_co_pwritev
    "raw_co_flush_to_disk": ("bdrv_co_flush", "block/file-posix.c"),
    "worker_thread": ("", "util/thread-pool.c"),
    "handle_aiocb_rw": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_flush": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_discard": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_write_zeroes": ("worker_thread", "block/file-posix.c"),
    # -- host: completion -------------------------------------------------------------------------------------
    "aio_bh_poll": ("", "util/async.c"),
    "aio_bh_call": ("aio_bh_poll", "util/async.c"),
    "blk_aio_complete_bh": ("aio_bh_call", "block/block-backend.c"),
    "blk_aio_complete": ("blk_aio_complete_bh", "block/block-backend.c"),
    "virtio_blk_rw_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_flush_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_discard_write_zeroes_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_req_complete": ("virtio_blk_rw_complete", "hw/block/virtio-blk.c"),
    "virtqueue_push": ("virtio_blk_req_complete", "hw/virtio/virtio.c"),
    "virtqueue_fill": ("virtqueue_push", "hw/virtio/virtio.c"),
    "virtqueue_flush": ("virtqueue_push", "hw/virtio/virtio.c"),
    "virtio_notify": ("virtio_blk_req_complete", "hw/virtio/virtio.c"),
    "virtio_irq": ("virtio_notify", "hw/virtio/virtio.c"),
    "virtio_notify_vector": ("virtio_irq", "hw/virtio/virtio.c"),
    "virtio_pci_notify": ("virtio_notify_vector", "hw/virtio/virtio-pci.c"),
    "msix_notify": ("virtio_pci_notify", "hw/pci/msix.c"),
    # -- host: qcow2 ---------------------------------------------------------------------------------------
    "qcow2_co_pwritev_part": ("bdrv_driver_pwritev", "block/qcow2.c"),
    "qcow2_co_preadv_part": ("bdrv_driver_preadv", "block/qcow2.c"),
    "qcow2_co_flush_to_os": ("bdrv_co_flush", "block/qcow2.c"),
    "qcow2_co_pdiscard": ("bdrv_co_pdiscard", "block/qcow2.c"),
    "qcow2_co_pwrite_zeroes": ("bdrv_co_do_pwrite_zeroes", "block/qcow2.c"),
    "qcow2_alloc_host_offset": ("qcow2_co_pwritev_part", "block/qcow2-cluster.c"),
    "qcow2_add_task": ("qcow2_co_pwritev_part", "block/qcow2.c"),
    "qcow2_co_pwritev_task_entry": ("qcow2_add_task", "block/qcow2.c"),
    "qcow2_co_pwritev_task": ("qcow2_co_pwritev_task_entry", "block/qcow2.c"),
    "handle_alloc_space": ("qcow2_co_pwritev_task", "block/qcow2.c"),
    "qcow2_handle_l2meta": ("qcow2_co_pwritev_task", "block/qcow2.c"),
    "qcow2_alloc_cluster_link_l2": ("qcow2_handle_l2meta", "block/qcow2-cluster.c"),
    "perform_cow": ("qcow2_alloc_cluster_link_l2", "block/qcow2-cluster.c"),
    "do_perform_cow_read": ("perform_cow", "block/qcow2-cluster.c"),
    "do_perform_cow_write": ("perform_cow", "block/qcow2-cluster.c"),
    "qcow2_get_host_offset": ("qcow2_co_preadv_part", "block/qcow2-cluster.c"),
    "qemu_iovec_memset": ("qcow2_co_preadv_part", "util/iov.c"),
    "qcow2_co_preadv_task_entry": ("qcow2_add_task", "block/qcow2.c"),
    "qcow2_co_preadv_task": ("qcow2_co_preadv_task_entry", "block/qcow2.c"),
    "qcow2_co_preadv_compressed": ("qcow2_co_preadv_task", "block/qcow2.c"),
    "qcow2_write_caches": ("qcow2_co_flush_to_os", "block/qcow2-refcount.c"),
    "qcow2_cluster_discard": ("qcow2_co_pdiscard", "block/qcow2-cluster.c"),
    "qcow2_subcluster_zeroize": ("qcow2_co_pwrite_zeroes", "block/qcow2-cluster.c"),
    "bdrv_close": ("", "block.c"),
    "qcow2_close": ("bdrv_close", "block/qcow2.c"),
    "qcow2_do_close": ("qcow2_close", "block/qcow2.c"),
    "qcow2_inactivate": ("qcow2_do_close", "block/qcow2.c"),
    "bdrv_open": ("", "block.c"),
    "bdrv_open_inherit": ("bdrv_open", "block.c"),
    "bdrv_open_common": ("bdrv_open_inherit", "block.c"),
    "bdrv_open_driver": ("bdrv_open_common", "block.c"),
    "qcow2_open": ("bdrv_open_driver", "block/qcow2.c"),
    "qcow2_open_entry": ("qcow2_open", "block/qcow2.c"),
    "qcow2_do_open": ("qcow2_open_entry", "block/qcow2.c"),
    # the host I/O a qcow2 request plans; their caller is the qcow2 function that planned it
    "qcow2_cache_do_get": ("qcow2_cache_get", "block/qcow2-cache.c"),
    "qcow2_cache_get": ("", "block/qcow2-cache.c"),
    "qcow2_cache_entry_flush": ("qcow2_cache_write", "block/qcow2-cache.c"),
    "qcow2_cache_write": ("", "block/qcow2-cache.c"),     # qcow2_write_caches, qcow2_cache_flush
    "qcow2_cache_flush": ("", "block/qcow2-cache.c"),
    "alloc_refcount_block": ("", "block/qcow2-refcount.c"),
    "qcow2_refcount_area": ("", "block/qcow2-refcount.c"),
    "qcow2_process_discards": ("", "block/qcow2-refcount.c"),
    "qcow2_mark_dirty": ("", "block/qcow2.c"),
    "qcow2_mark_clean": ("", "block/qcow2.c"),
    "qcow2_mark_corrupt": ("", "block/qcow2.c"),
    "qcow2_write_l1_entry": ("", "block/qcow2-cluster.c"),
}


# outermost frames of real threads and entry points (a chain that reaches one is complete)
QEMU_ROOTS = frozenset({"kvm_cpu_exec", "worker_thread", "aio_bh_poll", "bdrv_open", "bdrv_close"})


def source_of(function: str) -> str:
    """The source file of a function in the table ('' if it is not listed)."""
    return _CALLERS.get(function, ("", ""))[1]


def static_path(function: str) -> list[str]:
    """The function and its static callers, outermost first."""
    return list(_static_path(function))


@functools.lru_cache(maxsize=None)
def _static_path(function: str) -> tuple:
    path = [function]
    caller = _CALLERS.get(function, ("", ""))[0]
    while caller and caller not in path:
        path.insert(0, caller)
        caller = _CALLERS.get(caller, ("", ""))[0]
    return tuple(path)


def call_chain(function: str, source: str = "", caller: str = "") -> list[tuple[str, str]]:
    """[(function, source file)] from the outermost caller down to `function`.

    `caller` overrides the static callers for steps whose caller is known only at run time:
    "a>b" means a called b and b called `function` (a's own callers come from the table).
    """
    if caller:
        hops = caller.split(">")
        names = static_path(hops[0]) + [h for h in hops[1:] if h]
    else:
        names = static_path(function)[:-1]
    # a function may appear twice: bdrv_co_pwritev_part on the qcow2 node, then on its file child
    return [(n, source_of(n)) for n in names] + [(function, source or source_of(function))]
