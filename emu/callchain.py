"""The real call chain behind each step: which Linux or QEMU functions are on the stack.

Each function names its caller (as in the real sources); a step's chain is its function
plus the callers, outermost first.  Functions not listed stand alone.
"""
from __future__ import annotations

_CALLERS: dict[str, tuple[str, str]] = {
    # -- guest: submission ------------------------------------------------------------------
    "submit_bio": ("", "block/blk-core.c"),
    "blk_mq_submit_bio": ("submit_bio", "block/blk-mq.c"),
    "blk_finish_plug": ("", "block/blk-core.c"),
    "blk_mq_flush_plug_list": ("blk_finish_plug", "block/blk-mq.c"),
    "blk_mq_run_hw_queue": ("blk_mq_flush_plug_list", "block/blk-mq.c"),
    "blk_mq_sched_dispatch_requests": ("blk_mq_run_hw_queue", "block/blk-mq-sched.c"),
    "blk_mq_dispatch_rq_list": ("blk_mq_sched_dispatch_requests", "block/blk-mq.c"),
    "virtio_queue_rq": ("blk_mq_dispatch_rq_list", "drivers/block/virtio_blk.c"),
    "virtblk_prep_rq": ("virtio_queue_rq", "drivers/block/virtio_blk.c"),
    "virtblk_setup_cmd": ("virtblk_prep_rq", "drivers/block/virtio_blk.c"),
    "virtblk_map_data": ("virtblk_prep_rq", "drivers/block/virtio_blk.c"),
    "blk_mq_start_request": ("virtblk_prep_rq", "block/blk-mq.c"),
    "virtblk_add_req": ("virtio_queue_rq", "drivers/block/virtio_blk.c"),
    "virtqueue_add_sgs": ("virtblk_add_req", "drivers/virtio/virtio_ring.c"),
    "virtqueue_add_split": ("virtqueue_add_sgs", "drivers/virtio/virtio_ring.c"),
    "virtqueue_kick_prepare": ("virtio_queue_rq", "drivers/virtio/virtio_ring.c"),
    "virtqueue_kick_prepare_split": ("virtqueue_kick_prepare", "drivers/virtio/virtio_ring.c"),
    "virtqueue_notify": ("virtio_queue_rq", "drivers/virtio/virtio_ring.c"),
    "vp_notify": ("virtqueue_notify", "drivers/virtio/virtio_pci_common.c"),
    "virtio_commit_rqs": ("blk_mq_dispatch_rq_list", "drivers/block/virtio_blk.c"),
    "blk_mq_run_work_fn": ("", "block/blk-mq.c"),
    "blk_mq_delay_run_hw_queue": ("", "block/blk-mq.c"),
    # -- guest: completion ---------------------------------------------------------------------
    "handle_irq_event": ("", "kernel/irq/handle.c"),
    "vring_interrupt": ("handle_irq_event", "drivers/virtio/virtio_ring.c"),
    "virtblk_done": ("vring_interrupt", "drivers/block/virtio_blk.c"),
    "virtqueue_disable_cb": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "virtqueue_disable_cb_split": ("virtqueue_disable_cb", "drivers/virtio/virtio_ring.c"),
    "virtqueue_get_buf": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "virtqueue_get_buf_ctx_split": ("virtqueue_get_buf", "drivers/virtio/virtio_ring.c"),
    "blk_mq_complete_request": ("virtblk_done", "block/blk-mq.c"),
    "virtblk_request_done": ("blk_mq_complete_request", "drivers/block/virtio_blk.c"),
    "blk_mq_end_request": ("virtblk_request_done", "block/blk-mq.c"),
    "virtqueue_enable_cb": ("virtblk_done", "drivers/virtio/virtio_ring.c"),
    "vp_config_changed": ("handle_irq_event", "drivers/virtio/virtio_pci_common.c"),
    # -- guest: probe ----------------------------------------------------------------------------
    "virtio_dev_probe": ("", "drivers/virtio/virtio.c"),
    "vp_reset": ("virtio_dev_probe", "drivers/virtio/virtio_pci_modern.c"),
    "virtio_add_status": ("virtio_dev_probe", "drivers/virtio/virtio.c"),
    "virtio_features_ok": ("virtio_dev_probe", "drivers/virtio/virtio.c"),
    "virtblk_probe": ("virtio_dev_probe", "drivers/block/virtio_blk.c"),
    "vp_request_msix_vectors": ("virtblk_probe", "drivers/virtio/virtio_pci_common.c"),
    "setup_vq": ("virtblk_probe", "drivers/virtio/virtio_pci_modern.c"),
    "vp_modern_find_vqs": ("virtblk_probe", "drivers/virtio/virtio_pci_modern.c"),
    "blk_mq_alloc_tag_set": ("virtblk_probe", "block/blk-mq.c"),
    "virtblk_read_limits": ("virtblk_probe", "drivers/block/virtio_blk.c"),
    "virtio_device_ready": ("virtblk_probe", "drivers/virtio/virtio.c"),
    "virtblk_update_capacity": ("virtblk_probe", "drivers/block/virtio_blk.c"),
    # -- host: notification and processing -----------------------------------------------------------
    "kvm_cpu_exec": ("", "accel/kvm/kvm-all.c"),
    "virtio_pci_notify_write": ("kvm_cpu_exec", "hw/virtio/virtio-pci.c"),
    "virtio_queue_notify": ("virtio_pci_notify_write", "hw/virtio/virtio.c"),
    "virtio_blk_handle_output": ("virtio_queue_notify", "hw/block/virtio-blk.c"),
    "virtio_blk_handle_vq": ("virtio_blk_handle_output", "hw/block/virtio-blk.c"),
    "virtio_blk_get_request": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "virtqueue_pop": ("virtio_blk_get_request", "hw/virtio/virtio.c"),
    "virtqueue_split_pop": ("virtqueue_pop", "hw/virtio/virtio.c"),
    "virtio_blk_handle_request": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "virtio_blk_handle_flush": ("virtio_blk_handle_request", "hw/block/virtio-blk.c"),
    "virtio_blk_submit_multireq": ("virtio_blk_handle_vq", "hw/block/virtio-blk.c"),
    "submit_requests": ("virtio_blk_submit_multireq", "hw/block/virtio-blk.c"),
    "blk_aio_prwv": ("submit_requests", "block/block-backend.c"),
    "blk_co_do_pwritev_part": ("blk_aio_prwv", "block/block-backend.c"),
    "blk_co_do_preadv_part": ("blk_aio_prwv", "block/block-backend.c"),
    "blk_co_do_flush": ("virtio_blk_handle_flush", "block/block-backend.c"),
    "blk_co_do_pdiscard": ("virtio_blk_handle_request", "block/block-backend.c"),
    "blk_co_do_pwrite_zeroes": ("virtio_blk_handle_request", "block/block-backend.c"),
    "bdrv_co_pwritev_part": ("blk_co_do_pwritev_part", "block/io.c"),
    "bdrv_co_preadv_part": ("blk_co_do_preadv_part", "block/io.c"),
    "bdrv_co_flush": ("blk_co_do_flush", "block/io.c"),
    "bdrv_co_pdiscard": ("blk_co_do_pdiscard", "block/io.c"),
    "bdrv_co_pwrite_zeroes": ("blk_co_do_pwrite_zeroes", "block/io.c"),
    "raw_co_pwritev": ("bdrv_co_pwritev_part", "block/raw-format.c"),
    "raw_co_preadv": ("bdrv_co_preadv_part", "block/raw-format.c"),
    "raw_co_flush": ("bdrv_co_flush", "block/raw-format.c"),
    "raw_co_pdiscard": ("bdrv_co_pdiscard", "block/raw-format.c"),
    "raw_co_pwrite_zeroes": ("bdrv_co_pwrite_zeroes", "block/raw-format.c"),
    "raw_co_prw": ("raw_co_pwritev", "block/file-posix.c"),
    "raw_co_flush_to_disk": ("bdrv_co_flush", "block/file-posix.c"),
    "worker_thread": ("", "util/thread-pool.c"),
    "handle_aiocb_rw": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_flush": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_discard": ("worker_thread", "block/file-posix.c"),
    "handle_aiocb_write_zeroes": ("worker_thread", "block/file-posix.c"),
    "aio_bh_poll": ("", "util/async.c"),
    "blk_aio_complete": ("aio_bh_poll", "block/block-backend.c"),
    "virtio_blk_rw_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_flush_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_discard_write_zeroes_complete": ("blk_aio_complete", "hw/block/virtio-blk.c"),
    "virtio_blk_req_complete": ("virtio_blk_rw_complete", "hw/block/virtio-blk.c"),
    "virtqueue_push": ("virtio_blk_req_complete", "hw/virtio/virtio.c"),
    "virtqueue_fill": ("virtqueue_push", "hw/virtio/virtio.c"),
    "virtqueue_flush": ("virtqueue_push", "hw/virtio/virtio.c"),
    "virtio_notify": ("virtio_blk_req_complete", "hw/virtio/virtio.c"),
    "virtio_irq": ("virtio_notify", "hw/virtio/virtio.c"),
    "msix_notify": ("virtio_irq", "hw/pci/msix.c"),
    # -- host: qcow2 -----------------------------------------------------------------------------------
    "qcow2_co_pwritev_part": ("bdrv_co_pwritev_part", "block/qcow2.c"),
    "qcow2_co_preadv_part": ("bdrv_co_preadv_part", "block/qcow2.c"),
    "qcow2_co_flush_to_os": ("bdrv_co_flush", "block/qcow2.c"),
    "qcow2_co_pdiscard": ("bdrv_co_pdiscard", "block/qcow2.c"),
    "qcow2_co_pwrite_zeroes": ("bdrv_co_pwrite_zeroes", "block/qcow2.c"),
    "qcow2_alloc_host_offset": ("qcow2_co_pwritev_part", "block/qcow2-cluster.c"),
    "qcow2_alloc_cluster_link_l2": ("qcow2_co_pwritev_part", "block/qcow2-cluster.c"),
    "qcow2_get_host_offset": ("qcow2_co_preadv_part", "block/qcow2-cluster.c"),
    "qcow2_write_caches": ("qcow2_co_flush_to_os", "block/qcow2-refcount.c"),
    "qcow2_cluster_discard": ("qcow2_co_pdiscard", "block/qcow2-cluster.c"),
    "qcow2_subcluster_zeroize": ("qcow2_co_pwrite_zeroes", "block/qcow2-cluster.c"),
    "bdrv_close": ("", "block.c"),
    "qcow2_inactivate": ("bdrv_close", "block/qcow2.c"),
    "bdrv_open": ("", "block.c"),
    "qcow2_do_open": ("bdrv_open", "block/qcow2.c"),
}


def call_chain(function: str, source: str = "") -> list[tuple[str, str]]:
    """[(function, source file)] from the outermost caller down to `function`."""
    chain = [(function, source or _CALLERS.get(function, ("", ""))[1])]
    seen = {function}
    caller = _CALLERS.get(function, ("", ""))[0]
    while caller and caller not in seen:
        seen.add(caller)
        chain.append((caller, _CALLERS.get(caller, ("", ""))[1]))
        caller = _CALLERS.get(caller, ("", ""))[0]
    return list(reversed(chain))
