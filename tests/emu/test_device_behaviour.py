"""Device and guest behaviour beyond the happy path: request types, used len, errors, limits."""
from __future__ import annotations

import struct

from emu.spec import blk as B
from tests import specdecode as D
from tests.conftest import build, make_image, run_all, run_until


def _used_lens(m, n):
    vq = m.guest.vq
    return [ln for _id, ln in D.used(bytes(m.mem.ram), vq.used, vq.num)["ring"][:n]]


def test_used_len_as_qemu_computes_it(image):
    """in_len = every device-writable byte of the chain, status byte included."""
    m = build(image, "write 0 8k\nwait\nread 0 8k\nwait\nflush\nwait\nget-id\nwait\n"
                     "discard 0 4k\nwait\nwrite-zeroes 0 4k\nwait\n")
    run_all(m)
    assert _used_lens(m, 6) == [1, 8192 + 1, 1, B.ID_BYTES + 1, 1, 1]


def test_get_id_returns_the_serial(image):
    m = build(image, "get-id\n", serial="VBLK-SERIAL-0001")
    run_all(m)
    assert m.guest.proc.results[0]["serial"] == "VBLK-SERIAL-0001"


def test_read_returns_what_was_written(image):
    m = build(image, "write 4k 8k fill=0x5a\nwait\nread 4k 8k\nwait\n")
    run_all(m)
    import hashlib
    assert m.guest.proc.reads[0]["sha256"] == hashlib.sha256(b"\x5a" * 8192).hexdigest()


def test_unknown_request_type_is_unsupp(image):
    m = build(image, "flush\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    rq = next(iter(m.guest.blkmq.rqs.values()))
    m.poke(rq["pdu"], struct.pack("<I", 0x77))
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "NOTSUPP"
    assert m.vdev.error is None


def test_sector_out_of_range_is_ioerr(tmp_path):
    img = make_image(tmp_path / "s.raw", 1 << 20)
    m = build(img, "read 0 4k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    rq = next(iter(m.guest.blkmq.rqs.values()))
    m.poke(rq["pdu"] + 8, struct.pack("<Q", (1 << 20) // 512 - 4))   # last 4 sectors + 4 more
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "IOERR"
    assert m.vblk.errors == 1 and m.vdev.error is None


def test_discard_with_unmap_flag_is_unsupp(image):
    m = build(image, "discard 0 4k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    rq = next(iter(m.guest.blkmq.rqs.values()))
    m.poke(rq["payload"] + 12, struct.pack("<I", 1))
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "NOTSUPP"


def test_discard_ignore_keeps_data_unmap_zeroes(tmp_path):
    img = make_image(tmp_path / "d.raw", 1 << 20, b"\xff" * 65536)
    for mode, expect in (("ignore", b"\xff" * 4096), ("unmap", bytes(4096))):
        m = build(img, "discard 0 4k\nwait\n", discard=mode)
        run_all(m)
        assert m.guest.proc.results[0]["status"] == "OK"
        assert m.hostfile.pread(0, 4096) == expect


def test_injected_write_error_reports_ioerr_and_ignore_policy(image):
    fault = ({"op": "write", "start": 0, "end": 4096, "errno": 5, "count": -1},)
    m = build(image, "write 0 4k\n", faults=fault)
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "IOERR"
    assert m.hostfile.pread(0, 8) == bytes(8)
    m = build(image, "write 0 4k\n", faults=fault, werror="ignore")
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "OK"


def test_writethrough_flushes_after_every_write(image):
    m = build(image, "write 0 4k\nwait\nwrite 8k 4k\nwait\n", cache="writethrough")
    run_all(m)
    assert m.hostfile.syncs == 2
    assert not m.guest.blkmq.write_cache          # the guest sees a write-through disk...
    m2 = build(image, "flush\n", cache="writethrough")
    run_all(m2)
    assert m2.vblk.submitted == 0                 # ...so its flush never reaches the device


def test_flush_without_writes_skips_fdatasync(image):
    m = build(image, "flush\nwait\nwrite 0 4k\nwait\nflush\nwait\nflush\nwait\n")
    run_all(m)
    assert m.vblk.by_type["FLUSH"] == 3
    assert m.hostfile.syncs == 1


def test_ring_full_without_indirect_stops_and_restarts_the_queue(image):
    wl = "".join(f"write {i * 64}k 4k\n" for i in range(12)) + "wait\n"
    m = build(image, wl, queue_size=4, indirect=False)
    steps = run_all(m)
    assert any("blk_mq_stop_hw_queue" in s.detail for s in steps)
    assert any(s.function == "blk_mq_run_work_fn" for s in steps)
    assert any(s.function == "virtio_commit_rqs" for s in steps)
    assert any(s.detail.startswith("forced iowrite16") for s in steps)   # add_split's notify
    assert [r["status"] for r in m.guest.proc.results] == ["OK"] * 12
    assert m.guest.vq.num_free == 4


def test_big_write_is_split_to_max_sectors(image):
    m = build(image, "write 0 3M\n")
    run_all(m)
    # 3 MiB: bios of 1 MiB (BIO_MAX_VECS pages), requests of at most 1280 KiB
    sizes = sorted(r["bytes"] for r in m.guest.completed)
    assert sum(sizes) == 3 << 20
    assert max(sizes) <= 2560 * 512
    assert m.vblk.by_type["OUT"] == len(sizes) >= 3


def test_adjacent_writes_merge_in_the_plug(image):
    m = build(image, "write 0 4k\nwrite 4k 4k\nwrite 12k 4k\nwrite 8k 4k\nwait\n")
    run_all(m)
    # [0,8k) by two back merges; 12k starts a new request that 8k front-merges into; then
    # mq-deadline's insert merge joins [8k,16k) to [0,8k)
    assert m.vblk.by_type["OUT"] == 1
    assert m.guest.completed[0]["bytes"] == 16384


def test_raw_probe_guard_refuses_a_qcow2_magic_in_sector_0(image):
    m = build(image, "write 0 4k\n")
    run_until(m, lambda s: s.function == "virtio_blk_handle_request")
    buf = m.guest.proc.op_state[0]["buf"]
    m.poke(buf, b"QFI\xfb\x00\x00\x00\x03")
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "IOERR"
    assert m.hostfile.pread(0, 4) == bytes(4)


def test_read_only_drive(image):
    m = build(image, "write 0 4k\nread 0 4k\n", read_only=True)
    run_all(m)
    assert m.guest.config["read_only"]
    assert [r["status"] for r in sorted(m.guest.proc.results, key=lambda r: r["n"])] == ["IOERR", "OK"]


def test_data_length_not_a_multiple_of_the_block_size_is_ioerr(image):
    m = build(image, "write 0 4k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    rq = next(iter(m.guest.blkmq.rqs.values()))
    m.poke(rq["table"] + 16 + 8, struct.pack("<I", 1000))      # table[1].len = 1000
    run_all(m)
    assert m.guest.proc.results[0]["status"] == "IOERR"
    assert m.vdev.error is None and m.hostfile.pread(0, 8) == bytes(8)


def test_qemu_merges_what_blk_mq_could_not(image):
    """Queue size 4 gives seg_max 2: blk-mq stops merging at 2 segments, QEMU merges on."""
    m = build(image, "write 0 4k\nwrite 4k 4k\nwrite 8k 4k\nwait\n", queue_size=4)
    steps = run_all(m)
    assert m.guest.blkmq.limits["max_segments"] == 2
    assert m.vblk.by_type["OUT"] == 2
    assert m.vblk.merged == 1
    writes = [e for s in steps for e in s.effects if e[0] == "file"]
    assert len(writes) == 1 and writes[0][1] == 0 and len(writes[0][3]) == 12288
    assert [r["status"] for r in m.guest.proc.results] == ["OK"] * 3
