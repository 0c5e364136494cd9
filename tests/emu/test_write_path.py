"""The ordered list of real functions one 4 KiB write passes through (reference hop table §6)."""
from __future__ import annotations

from tests.conftest import build, run_all

# From virtio_queue_rq to blk_mq_end_request for `write 0 4k`, default configuration
# (INDIRECT_DESC + EVENT_IDX negotiated, MSI-X, raw image, cache=writeback).
EXPECTED = [
    # guest: blk-mq hands the request to the driver
    "virtio_queue_rq", "virtblk_setup_cmd", "virtblk_map_data", "blk_mq_start_request",
    "virtblk_add_req",
    # virtqueue_add_split: indirect decision, 3 table entries, ring head, avail entry, avail idx
    "virtqueue_add_split", "virtqueue_add_split", "virtqueue_add_split", "virtqueue_add_split",
    "virtqueue_add_split", "virtqueue_add_split", "virtqueue_add_split",
    "virtio_queue_rq", "virtqueue_kick_prepare_split", "virtio_queue_rq", "vp_notify",
    # host: the doorbell traps into QEMU
    "virtio_pci_notify_write", "virtio_blk_handle_vq", "virtqueue_split_pop",
    "virtio_blk_handle_request", "virtqueue_split_pop", "virtio_blk_handle_vq",
    "virtio_blk_submit_multireq", "submit_requests", "blk_co_do_pwritev_part",
    "bdrv_co_pwritev_part", "raw_co_pwritev", "raw_co_prw", "virtio_pci_notify_write",
    # guest: back from the MMIO exit, the dispatch loop finds nothing more
    "blk_mq_dispatch_rq_list", "blk_mq_run_hw_queue",
    # host: the thread pool's pwritev, then the completion back into the ring
    "handle_aiocb_rw", "raw_co_prw", "bdrv_co_pwritev_part", "blk_aio_complete",
    "virtio_blk_rw_complete", "virtio_blk_req_complete", "virtqueue_fill", "virtqueue_flush",
    "virtio_notify", "virtio_irq",
    # guest: the interrupt and virtblk_done
    "vring_interrupt", "virtblk_done", "virtqueue_disable_cb_split",
    "virtqueue_get_buf_ctx_split", "virtblk_request_done", "blk_mq_end_request",
]


def test_one_4k_write_function_order(image):
    steps = run_all(build(image, "write 0 4k\n"))
    names = [s.function for s in steps]
    start = names.index("virtio_queue_rq")
    end = names.index("blk_mq_end_request")
    assert names[start:end + 1] == EXPECTED


def test_every_step_names_layer_and_source(image):
    steps = run_all(build(image, "write 0 4k\nread 0 4k\nflush\n"))
    for s in steps:
        assert s.layer and s.function and s.source, s
        assert s.source.endswith(".c"), s.source
        guest = s.layer in ("app", "blk-mq", "virtio_blk", "virtio_ring", "virtio_pci")
        if guest:
            assert s.source.split("/")[0] in ("drivers", "block", "fs", "kernel"), s
        else:
            assert s.source.split("/")[0] in ("hw", "block"), s


def test_effects_record_old_and_new_bytes(image):
    m = build(image, "write 0 4k\n")
    steps = run_all(m)
    ram = [e for s in steps for e in s.effects if e[0] == "ram"]
    host = [e for s in steps for e in s.effects if e[0] == "file"]
    assert ram and host
    # Replaying the RAM effects in order from zeroed RAM reproduces guest RAM exactly.
    replay = bytearray(len(m.mem.ram))
    for _kind, gpa, old, new in ram:
        assert bytes(replay[gpa:gpa + len(old)]) == old
        replay[gpa:gpa + len(new)] = new
    assert replay == m.mem.ram
    (_k, off, old, new), = host
    assert off == 0 and old == bytes(4096) and len(new) == 4096
    assert m.hostfile.pread(0, 4096) == new
