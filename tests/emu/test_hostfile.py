"""The host file protocol: the copy-on-write overlay behaves exactly like writing the file."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from emu.block.hostfile import HostFile
from tests.conftest import make_image

SIZE = 40000      # deliberately not a multiple of the 4 KiB overlay block


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, SIZE + 9000), st.binary(min_size=1, max_size=9000)),
                    max_size=12))
def test_overlay_equals_direct_writes(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("h")
    base = bytes((i * 13) & 0xFF for i in range(SIZE))
    a = make_image(d / "a.raw", SIZE, base)
    b = make_image(d / "b.raw", SIZE, base)
    ov = HostFile(a, "overlay", str(d))
    wr = HostFile(b, "write")
    model = bytearray(base)
    for off, data in ops:
        ov.pwrite(off, data)
        wr.pwrite(off, data)
        if off + len(data) > len(model):
            model.extend(bytes(off + len(data) - len(model)))
        model[off:off + len(data)] = data
        assert ov.size == wr.size == len(model)
    assert ov.pread(0, len(model) + 100) == bytes(model) + bytes(100)
    assert wr.pread(0, len(model)) == bytes(model)
    assert ov.digest() == wr.digest()
    with open(a, "rb") as f:
        assert f.read() == base                      # the overlay never touched the image
    out = d / "saved.raw"
    ov.save_as(str(out))
    with open(out, "rb") as f:
        assert f.read() == bytes(model)
    ov.close()
    wr.close()


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, SIZE + 9000), st.binary(min_size=1, max_size=9000)),
    st.tuples(st.just("t"), st.one_of(st.integers(0, SIZE + 9000),
                                      st.integers(0, 12).map(lambda b: b * 4096)), st.none())),
    max_size=10))
def test_overlay_reads_as_the_file_after_truncates(tmp_path_factory, ops):
    """With shrinks and growths too, every read (past the end as well) of the overlay gives
    what the file itself, truncated and written the same way, gives: bytes the base image had
    past a shrink read as zero (a shrink to a block boundary left them readable once)."""
    d = tmp_path_factory.mktemp("h")
    base = bytes((i * 13) & 0xFF for i in range(SIZE))
    ov = HostFile(make_image(d / "a.raw", SIZE, base), "overlay", str(d))
    wr = HostFile(make_image(d / "b.raw", SIZE, base), "write")
    try:
        for kind, arg, data in ops:
            for hf in (ov, wr):
                hf.pwrite(arg, data) if kind == "w" else hf.truncate(arg)
            assert ov.size == wr.size
            assert ov.pread(0, ov.size + 9000) == wr.pread(0, wr.size + 9000)
            assert ov.pread(ov.size // 2, 5000) == wr.pread(wr.size // 2, 5000)
    finally:
        ov.close()
        wr.close()


def test_overlay_file_is_gone_at_once(tmp_path):
    img = make_image(tmp_path / "x.raw", 8192)
    before = set(os.listdir(tmp_path))
    hf = HostFile(img, "overlay", str(tmp_path))
    hf.pwrite(0, b"abc")
    assert set(os.listdir(tmp_path)) == before          # unlinked while open
    hf.close()


def test_digest_tracks_changes_incrementally(tmp_path):
    img = make_image(tmp_path / "x.raw", 1 << 20)
    hf = HostFile(img, "overlay", str(tmp_path))
    d0 = hf.digest()
    hf.pwrite(300000, b"z")
    d1 = hf.digest()
    assert d1 != d0
    hf.pwrite(300000, b"\0")
    assert hf.digest() == d0
    fresh = HostFile(img, "read")
    assert fresh.digest() == d0
