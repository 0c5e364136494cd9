"""The qcow2 driver's safety nets: overlap checks, the corrupt bit, lazy refcounts, the dirty bit."""
from __future__ import annotations

import hashlib
import struct

from emu.block.qcow2 import layout as L
from tests.conftest import build, run_all
from tests.oracle import qemu_img, qemu_img_json, qemu_io


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _incompat(path) -> int:
    with open(path, "rb") as f:
        f.seek(72)
        return struct.unpack(">Q", f.read(8))[0]


def _image_with_cluster_at_0(tmp_path) -> str:
    img = str(tmp_path / "o.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "4M")
    qemu_io("-f", "qcow2", img, "-c", "write -P 0x11 0 64k")
    return img      # header 0, reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data 0x50000


def test_write_onto_metadata_marks_the_image_corrupt(tmp_path):
    img = _image_with_cluster_at_0(tmp_path)
    with open(img, "r+b") as f:      # L2[0] now claims the L1 table's cluster as its data
        f.seek(0x40000)
        f.write(struct.pack(">Q", 0x30000 | L.QCOW_OFLAG_COPIED))
    with open(img, "rb") as f:
        f.seek(0x30000)
        l1_before = f.read(65536)
    m = build(img, "write 0 4k fill=0xee\nwait\nread 0x100000 4k\nwait\n", mode="write")
    steps = run_all(m)
    m.shutdown()
    m.hostfile.close()
    results = sorted(m.guest.proc.results, key=lambda r: r["n"])
    assert [r["status"] for r in results] == ["IOERR", "IOERR"]   # then -ENOMEDIUM for the read
    assert any("Preventing invalid write on metadata (overlaps with active L1 table)" in s.detail
               for s in steps)
    assert _incompat(img) & L.INCOMPAT_CORRUPT
    assert qemu_img_json("info", img)["format-specific"]["data"]["corrupt"] is True
    with open(img, "rb") as f:
        f.seek(0x30000)
        assert f.read(65536) == l1_before


def test_corrupt_image_opens_read_only_with_a_warning(tmp_path):
    img = _image_with_cluster_at_0(tmp_path)
    with open(img, "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", L.INCOMPAT_CORRUPT))
    before = _sha(img)
    m = build(img, "write 0x100000 4k\nwait\nread 0 4k\nwait\n", mode="write")
    run_all(m)
    m.shutdown()
    m.hostfile.close()
    assert m.fmt.read_only_reason and "corrupt" in m.fmt.read_only_reason.lower()
    assert m.guest.config["read_only"]                     # the guest sees VIRTIO_BLK_F_RO
    assert [r["status"] for r in sorted(m.guest.proc.results, key=lambda r: r["n"])] == ["IOERR", "OK"]
    assert hashlib.sha256(b"\x11" * 4096).hexdigest() == m.guest.proc.reads[0]["sha256"]
    assert _sha(img) == before


def test_lazy_refcounts_dirty_bit_during_the_run_clean_after(tmp_path):
    img = str(tmp_path / "lazy.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M")
    m = build(img, "write 0 4k\nwait\nflush\nwait\nwrite 1M 64k\nwait\nflush\nwait\n", mode="write")
    seen_dirty = False
    flushes = 0
    refblock_writes_after_first_flush = []
    while True:
        s = m.step()
        if s is None:
            break
        seen_dirty |= bool(_incompat(img) & L.INCOMPAT_DIRTY)
        flushes += s.function == "qcow2_write_caches"
        if flushes and s.function == "qcow2_cache_entry_flush" and "refcount block" in s.detail:
            refblock_writes_after_first_flush.append(s.n)
    assert seen_dirty and flushes == 2
    # with lazy refcounts a guest FLUSH leaves refcount blocks dirty (only the L2-table
    # allocation of the first write flushed them, before the first FLUSH)
    assert not refblock_writes_after_first_flush
    m.shutdown()                   # close: caches written, dirty bit cleared
    m.hostfile.close()
    assert not _incompat(img) & L.INCOMPAT_DIRTY
    check = qemu_img("check", img, check=False)
    assert check.returncode == 0, check.stdout


def _crashed_lazy_image(tmp_path) -> str:
    """A lazy-refcounts image left dirty with stale refcounts (the run stopped, no close)."""
    img = str(tmp_path / "crash.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "16M")
    m = build(img, "write 0 4k\nwait\nwrite 1M 192k\nwait\nwrite 9M 64k\nwait\nflush\nwait\n",
              mode="write")
    run_all(m)                     # no shutdown: as if QEMU had been killed
    m.hostfile.close()
    assert _incompat(img) & L.INCOMPAT_DIRTY
    check = qemu_img("check", img, check=False)
    assert check.returncode != 0   # the refcounts on disk are stale
    return img


def test_dirty_image_is_repaired_on_open_like_qemu(tmp_path):
    img = _crashed_lazy_image(tmp_path)
    theirs = str(tmp_path / "theirs.qcow2")
    with open(img, "rb") as a, open(theirs, "wb") as b:
        b.write(a.read())
    m = build(img, "read 0 4k\nwait\n", mode="write")
    steps = run_all(m)
    m.shutdown()
    m.hostfile.close()
    assert steps[0].function == "qcow2_do_open" and "repaired the dirty image" in steps[0].detail
    assert not _incompat(img) & L.INCOMPAT_DIRTY
    check = qemu_img("check", img, check=False)
    assert check.returncode == 0, check.stdout
    qemu_io("-f", "qcow2", theirs, "-c", "read 0 4k")        # QEMU repairs its copy on open
    assert qemu_img("check", theirs, check=False).returncode == 0
    assert qemu_img("compare", img, theirs, check=False).returncode == 0
    assert qemu_img_json("map", img) == qemu_img_json("map", theirs)


def test_dirty_image_on_a_read_only_drive_is_left_alone(tmp_path):
    img = _crashed_lazy_image(tmp_path)
    before = _sha(img)
    m = build(img, "read 0 4k\nwait\n", mode="write", read_only=True)
    run_all(m)
    m.shutdown()
    m.hostfile.close()
    assert m.guest.proc.results[0]["status"] == "OK"
    assert _sha(img) == before


def test_metadata_write_error_makes_the_node_unusable(tmp_path):
    img = str(tmp_path / "e.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "8M")
    fault = ({"op": "write", "start": 0x20000, "end": 0x30000, "errno": 5, "count": -1},)
    m = build(img, "write 0 4k\nwait\nread 0 4k\nwait\n", mode="write", faults=fault)
    run_all(m)
    m.shutdown()
    m.hostfile.close()
    assert [r["status"] for r in sorted(m.guest.proc.results, key=lambda r: r["n"])] == ["IOERR", "IOERR"]
    assert m.fmt.engine.drv_gone


def test_data_write_error_frees_the_allocation(tmp_path):
    img = str(tmp_path / "d.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "8M")
    fault = ({"op": "write", "start": 0x50000, "end": 0x60000, "errno": 5, "count": 1},)
    m = build(img, "write 0 4k\nwait\nwrite 0 4k fill=0x42\nwait\n", mode="write", faults=fault)
    run_all(m)
    m.shutdown()
    m.hostfile.close()
    assert [r["status"] for r in sorted(m.guest.proc.results, key=lambda r: r["n"])] == ["IOERR", "OK"]
    check = qemu_img("check", img, check=False)
    assert check.returncode == 0, check.stdout          # no leak: the cluster was freed, then reused
    assert qemu_img_json("map", img)[0]["offset"] == 0x50000
