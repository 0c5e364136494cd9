"""HostFile.write_zeroes (file-posix handle_aiocb_write_zeroes, fallocate ZERO_RANGE): the
logical result of pwrite(off, bytes(n)) without writing the part past the end of the file.

Any sequence of pwrite / write_zeroes / truncate / pread / digest, with and without an undo
journal restored, in overlay, write and read mode, with the Python methods or the compiled
ones (emu_fast._hostfile), gives the same results, logical bytes, size, digest, `writes` and
undo journal as the same sequence with every write_zeroes replaced by pwrite(bytes(n)); the
overlay's invariant (every byte past the logical size reads as zero: hostfile's module doc)
holds after every operation.  A qcow2 random-write run (its zeroed COW areas are such
write_zeroes past the end of the image) saves an image `qemu-img check` accepts.
"""
from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import emu_fast
from emu.block.hostfile import BLOCK, HostFile
from tests.hostfile_ops import SIZE, apply, base_image

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_off = st.integers(0, SIZE + 20000)
_len = st.sampled_from([1, 7, 512, 4095, 4096, 4097, 9000, 16384, 65536])
ops = st.lists(st.one_of(
    st.tuples(st.just("zero"), _off, _len),
    st.tuples(st.just("zero"), _off, _len),
    st.tuples(st.just("read"), _off, st.integers(0, 20000)),
    st.tuples(st.just("write"), _off, _len, st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, SIZE + 30000)),
    st.tuples(st.just("undo"), st.booleans()),
    st.tuples(st.just("digest"),)), min_size=1, max_size=30)

COMPILED = [False] + ([True] if emu_fast.available() else [])


def _files(tmp, mode: str, compiled: bool):
    base = tmp / "base.img"
    base_image(base)
    hfs = []
    for name in ("zero.img", "pwrite.img"):
        shutil.copy(base, tmp / name)
        hf = HostFile(str(tmp / name), mode, overlay_dir=str(tmp))
        if compiled:
            emu_fast.require()._hostfile.attach(hf)
        hfs.append(hf)
    return base, hfs


def past_size_reads_zero(hf: HostFile) -> bool:
    """The overlay invariant of hostfile's module doc, checked on the object's fields: base_size
    is not above size; past the size the overlay file holds only zeros; a block straddling
    base_size that is not in cow is the base file's last block."""
    if hf.mode == "read":
        return True                                  # (write_zeroes raises EBADF there)
    if hf.mode == "write":
        return os.fstat(hf.fd).st_size == hf.size
    if hf.base_size > hf.size:
        return False
    if hf.base_size % BLOCK and hf.base_size // BLOCK not in hf.cow \
            and os.fstat(hf.fd).st_size > hf.base_size:
        return False
    ov_end = os.fstat(hf.ov_fd).st_size
    if ov_end > hf.size:
        tail = os.pread(hf.ov_fd, ov_end - hf.size, hf.size)
        if tail.count(0) != len(tail):
            return False
    return True


def _logical(hf: HostFile) -> tuple:
    return hf.size, hf.writes, HostFile.pread(hf, 0, hf.size + 2 * BLOCK), hf.undo, hf.undo_size


@pytest.mark.parametrize("compiled", COMPILED)
@settings(**dict(SETTINGS, max_examples=150))
@given(mode=st.sampled_from(["overlay", "write", "read"]), ops=ops)
@example(mode="overlay", ops=[("zero", SIZE + 100, 9000), ("read", SIZE, 9100)])
@example(mode="overlay", ops=[("truncate", 5000), ("zero", 6000, 512), ("read", 4096, 4096)])
@example(mode="write", ops=[("undo", True), ("zero", SIZE - 10, 65536), ("undo", False)])
@example(mode="overlay", ops=[("digest",), ("zero", 30000, 4096), ("digest",)])
@example(mode="read", ops=[("zero", 0, 7), ("zero", SIZE + 1, 7)])
def test_write_zeroes_is_pwrite_of_zeros(tmp_path_factory, compiled, mode, ops):
    tmp = tmp_path_factory.mktemp("wz")
    base, (a, b) = _files(tmp, mode, compiled)
    try:
        for op in ops:
            assert apply(a, op) == apply(b, op, zero_as_pwrite=True), op
            assert _logical(a) == _logical(b), op
            assert past_size_reads_zero(a) and past_size_reads_zero(b), op
        assert a.digest() == b.digest()
        a.save_as(str(tmp / "a.saved"))
        b.save_as(str(tmp / "b.saved"))
        assert (tmp / "a.saved").read_bytes() == (tmp / "b.saved").read_bytes()
    finally:
        a.close()
        b.close()
    za, zb = (tmp / "zero.img").read_bytes(), (tmp / "pwrite.img").read_bytes()
    assert za == zb
    if mode != "write":
        assert za == base.read_bytes()               # never touched


@pytest.mark.parametrize("compiled", COMPILED)
def test_overlay_write_zeroes_past_the_end_writes_nothing(tmp_path, compiled):
    """Past the end of the file only the size grows: the overlay gets no block and no bytes;
    the part inside the file is zeroed."""
    base, (hf, _) = _files(tmp_path, "overlay", compiled)
    try:
        hf.write_zeroes(SIZE - 100, 4096 + 200)        # across the end: the block before it
        assert sorted(hf.cow) == [SIZE // BLOCK] and hf.writes == 1
        assert hf.size == SIZE + 4096 + 100
        hf.write_zeroes(SIZE + 8192, 1 << 20)
        assert hf.size == SIZE + 8192 + (1 << 20) and hf.writes == 2
        assert os.fstat(hf.ov_fd).st_blocks * 512 <= BLOCK and len(hf.cow) == 1
        hf.write_zeroes(4096 + 10, 100)               # inside: zeroed as pwrite would
        assert hf.pread(4096, 4096 + 200) == bytes(range(256))[:10] + bytes(100) + \
            (bytes(range(256)) * 17)[110:4096 + 200]
        assert hf.pread(SIZE - 150, 400) == b"\x5a" * 50 + bytes(350)
        assert hf.writes == 3
    finally:
        hf.close()


def test_saved_qcow2_rand4k_image_passes_qemu_img_check(tmp_path):
    """A qcow2 4 KiB random-write run on a fresh image (each request allocates a cluster at
    the end of the file, its COW areas zeroed by write_zeroes past EOF) saves an image that
    qemu-img check accepts and that holds the guest's data (the same with both engines)."""
    from emu import engine
    from emu_fast import bench
    from tests.oracle import qemu_img, qemu_img_json, to_raw
    engines = ["py"] + (["fast"] if emu_fast.available() else [])
    raws = []
    for eng in engines:
        d = tmp_path / eng
        d.mkdir()
        img = bench.make_image(str(d / "i.qcow2"), "qcow2")
        m = bench._machine(img, bench.workload("rand4k", 150))
        engine.run(m, eng)
        engine.set_engine(m, "py")
        m.shutdown()                                # (caches written back, image marked clean)
        assert m.hostfile.size > m.hostfile.base_size          # grown by zeroed COW areas
        assert m.hostfile.writes > 0 and len(m.hostfile.cow) < m.hostfile.size // BLOCK // 4
        saved = str(d / "saved.qcow2")
        m.hostfile.save_as(saved)
        m.hostfile.close()
        check = qemu_img("check", saved, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No errors were found" in check.stdout and "leaked" not in check.stdout
        # every cluster lies within the file (the last one's zeroed tail grew it)
        assert qemu_img_json("check", saved)["image-end-offset"] <= os.path.getsize(saved)
        raws.append(to_raw(saved, str(d / "saved.raw")))
    assert all(r == raws[0] for r in raws) and raws[0].count(0) != len(raws[0])
