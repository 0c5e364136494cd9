"""emu_fast._hostfile: HostFile.pread/pwrite/write_zeroes compiled, against the Python ones.

Two HostFiles on copies of the same image run the same random operations (reads, writes
across block boundaries and past the end, truncates, an undo journal opened and restored),
one with the compiled methods attached; every result, the whole object state (size,
copy-on-write blocks, undo journal, digest bookkeeping) and the logical content must agree.
"""
from __future__ import annotations

import dis
import os
import shutil
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import emu_fast
from emu.block.hostfile import HostFile
from tests.hostfile_ops import SIZE, apply, base_image
from tests.emu_fast.test_differential import SETTINGS

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

_off = st.integers(0, SIZE + 9000)
_len = st.sampled_from([1, 7, 512, 4095, 4096, 4097, 9000, 16384])
_zero = st.tuples(st.just("zero"), _off, st.sampled_from([-1, 0, 1, 4095, 4097, 9000, 65536]))
ops = st.lists(st.one_of(
    _zero,
    st.tuples(st.just("read"), _off, st.integers(-1, 20000)),
    st.tuples(st.just("write"), _off, _len, st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, SIZE + 12000)),
    st.tuples(st.just("undo"), st.booleans()),
    st.tuples(st.just("digest"),)), min_size=1, max_size=25)


def images(tmp_path_factory, prefix: str, names=("py.img", "fast.img")):
    """(dir, base image, [copies of it named names]) in a new temporary directory."""
    tmp = tmp_path_factory.mktemp(prefix)
    base = tmp / "base.img"
    base_image(base)
    paths = []
    for name in names:
        shutil.copy(base, tmp / name)
        paths.append(str(tmp / name))
    return tmp, base, paths


def state(hf: HostFile) -> dict:
    d = {k: v for k, v in vars(hf).items() if k not in ("pread", "pwrite", "write_zeroes", "fd",
                                                         "ov_fd", "ov_path", "path")}
    d["content"] = HostFile.pread(hf, 0, hf.size)
    return d


@settings(**dict(SETTINGS, max_examples=120))
@given(mode=st.sampled_from(["overlay", "write", "read"]), ops=ops)
def test_compiled_hostfile_methods_are_the_python_ones(tmp_path_factory, mode, ops):
    tmp, base, paths = images(tmp_path_factory, "hf")
    a = HostFile(paths[0], mode, overlay_dir=str(tmp))
    b = HostFile(paths[1], mode, overlay_dir=str(tmp))
    emu_fast.require()._hostfile.attach(b)
    assert emu_fast.require()._hostfile.attached(b) and "pwrite" not in vars(a)
    try:
        for op in ops:
            assert apply(a, op) == apply(b, op), op
            assert state(a) == state(b), op
    finally:
        a.close()
        b.close()
    with open(paths[0], "rb") as fa, open(paths[1], "rb") as fb:
        assert fa.read() == fb.read()
    if mode != "write":
        assert open(paths[1], "rb").read() == base.read_bytes()     # never touched


def test_errors_are_the_python_ones(tmp_path):
    p = tmp_path / "x.img"
    p.write_bytes(bytes(8192))
    hf = HostFile(str(p), "write")
    emu_fast.require()._hostfile.attach(hf)
    hf.close()                                      # fd -1: EBADF from the system call
    with pytest.raises(OSError) as e1:
        hf.pread(0, 10)
    with pytest.raises(OSError) as e2:
        HostFile.pread(hf, 0, 10)
    assert (e1.value.errno, e1.value.strerror) == (e2.value.errno, e2.value.strerror)
    with pytest.raises(OSError) as e3:
        hf.pwrite(0, b"x")
    assert e3.value.errno == e1.value.errno
    assert hf.pread(0, 0) == b"" and hf.pwrite(0, b"") is None
    # unusual argument types take the Python path (same result, same errors)
    ro = HostFile(str(p), "read")
    emu_fast.require()._hostfile.attach(ro)
    assert ro.pread(0, 5) == bytes(5)
    with pytest.raises(OSError):
        ro.pwrite(0, bytearray(b"ab"))
    with pytest.raises(OSError):
        ro.pwrite(0, b"ab")
    ro.close()
    assert os.path.getsize(p) == 8192


@pytest.mark.parametrize("off,n", [(100, 4096), (4000, 200), (4096, 4096), (5000, 9000),
                                   (8191, 2), (0, 5 * 4096 + 700), (3 * 4096 + 1, 4096)])
def test_overlay_writes_copy_partial_first_and_last_blocks(tmp_path, off, n):
    """A write into the overlay copies the base's partial first and last blocks first."""
    base = bytes(range(256)) * (SIZE // 256) + b"\x5a" * (SIZE % 256)
    hfs = []
    for name in ("py.img", "fast.img"):
        (tmp_path / name).write_bytes(base)
        hfs.append(HostFile(str(tmp_path / name), "overlay", overlay_dir=str(tmp_path)))
    emu_fast.require()._hostfile.attach(hfs[1])
    try:
        for hf in hfs:
            hf.pwrite(off, b"\x01" * n)
            hf.pwrite(off + n + 4096, b"\x02" * 7)
        assert state(hfs[0]) == state(hfs[1])        # the content included
    finally:
        for hf in hfs:
            hf.close()


def test_reads_past_the_base_share_one_run_of_zeros(tmp_path):
    """An overlay read wholly past the base file and its copied blocks is bytes(n), shared
    between reads of the same length (emu_fast/_zeros.pxd); a read that touches a written
    block or the base is not."""
    p = tmp_path / "b.img"
    p.write_bytes(b"\x5a" * 8192)
    hf = HostFile(str(p), "overlay", overlay_dir=str(tmp_path))
    emu_fast.require()._hostfile.attach(hf)
    try:
        hf.pwrite(65536, b"\x01" * 10)              # block 16 now lives in the overlay
        lengths = [4096 * k for k in range(1, 12)] + [1, 65536, 4096]    # > 8: the cache evicts
        for n in lengths:
            a, b = hf.pread(81920, n), hf.pread(81920 + 4096, n)
            assert a == bytes(n) and b == bytes(n) and a is b, n
            assert HostFile.pread(hf, 81920, n) == a
        touching = hf.pread(61440, 8192)            # ends in block 16
        assert touching[4096:4106] == b"\x01" * 10 and touching[:4096] == bytes(4096)
        assert hf.pread(8000, 4096) == b"\x5a" * 192 + bytes(3904)      # starts in the base
        assert hf.pread(8192, 0) == b""
    finally:
        hf.close()


@settings(**dict(SETTINGS, max_examples=60))
@given(mode=st.sampled_from(["overlay", "write", "read"]), ops=ops, plain=st.booleans())
@example(mode="write", plain=True,               # the restore writes the old block back
         ops=[("undo", True), ("write", 100, 7, 1), ("undo", False)])
def test_pwrite_over_the_instance_dict_is_the_python_method(tmp_path_factory, mode, ops, plain):
    """hf_pwrite's fast path (the object's __dict__ read and written directly) runs for every
    pwrite of a plain HostFile and for none once the class has an attribute of one of the
    names it reads; either way every result and the whole object state are the Python
    method's."""
    hfmod = emu_fast.require()._hostfile
    tmp, base, paths = images(tmp_path_factory, "hfd")
    a = HostFile(paths[0], mode, overlay_dir=str(tmp))
    b = HostFile(paths[1], mode, overlay_dir=str(tmp))
    hfmod.attach(b)
    calls = []                          # every non-empty pwrite the Python twin makes,

    def counted(off, data):             # the undo journal's restores included
        if data:
            calls.append(off)
        return HostFile.pwrite(a, off, data)
    a.pwrite = counted                  # (state() leaves the instance's pwrite out)
    if not plain:
        HostFile.base_size = 0          # a class attribute (the instance's shadows it)
    before = hfmod.counts()["pwrite_plain"]
    try:
        for op in ops:
            assert apply(a, op) == apply(b, op), op
            assert state(a) == state(b), op
        assert len(calls) >= sum(1 for op in ops if op[0] == "write")
        assert hfmod.counts()["pwrite_plain"] - before == (len(calls) if plain else 0)
    finally:
        if not plain:
            del HostFile.base_size
        a.close()
        b.close()


_W = st.sampled_from([0, 7, 2**62 - 1, 2**62, -2**62, 2**70])
kept_ops = st.lists(st.one_of(
    _zero,
    st.tuples(st.just("read"), _off, st.integers(-1, 20000)),
    st.tuples(st.just("write"), _off, _len, st.integers(0, 255)),
    st.tuples(st.just("pywrite"), _off, _len, st.integers(0, 255)),
    st.tuples(st.just("writes"), _W),
    st.tuples(st.just("other"), _off, _len),
    st.tuples(st.just("truncate"), st.integers(0, SIZE + 12000)),
    st.tuples(st.just("undo"), st.booleans()),
    st.tuples(st.just("digest"),)), min_size=1, max_size=30)


@settings(**dict(SETTINGS, max_examples=80))
@given(mode=st.sampled_from(["overlay", "write", "read"]), ops=kept_ops)
@example(mode="overlay", ops=[("write", 0, 4096, 1), ("pywrite", 8192, 7, 2), ("write", 100, 7, 3),
                              ("writes", 2**70), ("write", 0, 1, 4), ("writes", 2**62 - 1),
                              ("write", 0, 1, 5), ("write", 0, 1, 6), ("read", 0, 9000)])
@example(mode="write", ops=[("write", SIZE + 100, 4096, 1),    # grows: the kept size follows
                           ("write", SIZE - 1000, 4096, 2), ("read", SIZE, 9000)])
@example(mode="overlay", ops=[("write", 0, 7, 1), ("zero", SIZE + 100, 9000),   # write_zeroes
                              ("write", SIZE + 50, 100, 2), ("read", SIZE, 9200)])  # keeps them
@example(mode="read", ops=[("write", 0, 7, 1), ("zero", 0, 9000), ("write", 0, 7, 1)])
@example(mode="overlay", ops=[("writes", 2**70), ("zero", SIZE - 100, 9000),  # not keepable:
                              ("zero", SIZE + 20000, 1), ("read", SIZE - 200, 30000)])  # the dict
def test_kept_fields_follow_every_change_of_the_dict(tmp_path_factory, mode, ops):
    """pwrite/pread over the fields kept in C (_k_*: valid while the instance dict's version
    tag is the one they were read at) see every store the Python side makes between calls
    (its own pwrite, `writes` set by hand, truncate, digest, the undo journal), another
    HostFile's calls in between, and ints too large to keep (the dict read instead); every
    non-empty call with keepable fields runs over the kept fields."""
    hfmod = emu_fast.require()._hostfile
    tmp, base, paths = images(tmp_path_factory, "hfk", ("py.img", "fast.img", "other.img"))
    a = HostFile(paths[0], mode, overlay_dir=str(tmp))
    b = HostFile(paths[1], mode, overlay_dir=str(tmp))
    other = HostFile(paths[2], "overlay", overlay_dir=str(tmp))
    hfmod.attach(b)
    hfmod.attach(other)
    keepable = lambda: -2**62 <= a.writes < 2**62      # noqa: E731
    kw, kr = [], []                     # the calls the kept fields must serve

    def counted_w(off, data):
        if data:
            kw.append(keepable())
        return HostFile.pwrite(a, off, data)

    in_write = [False]                  # (the compiled pwrite's _keep_old reads without the
                                        #  method; the Python one's, in truncate too, with it)
    def counted_r(off, n):
        if n > 0 and off >= 0 and not (in_write[0]
                                       and sys._getframe(1).f_code.co_name == "_keep_old"):
            kr.append(keepable())
        return HostFile.pread(a, off, n)
    a.pwrite, a.pread = counted_w, counted_r
    before = hfmod.counts()
    try:
        for op in ops:
            in_write[0] = op[0] in ("write", "zero")
            if op[0] == "pywrite":
                r = [HostFile.pwrite(h, op[1], bytes([op[3]]) * op[2]) if mode != "read" else None
                     for h in (a, b)]
                assert r[0] == r[1]
            elif op[0] == "writes":
                a.writes = b.writes = op[1]
            elif op[0] == "other":
                other.pwrite(op[1], b"\x07" * op[2])
                assert other.pread(op[1], op[2]) == b"\x07" * op[2]
            else:
                assert apply(a, op) == apply(b, op), op
            assert state(a) == state(b), op
        after = hfmod.counts()
        n_other = 2 * sum(1 for op in ops if op[0] == "other")
        assert after["pwrite_kept"] - before["pwrite_kept"] + after["pread_kept"] \
            - before["pread_kept"] == sum(kw) + sum(kr) + n_other
    finally:
        for h in (a, b, other):
            h.close()


def test_kept_fields_see_the_interpreters_specialized_attribute_stores(tmp_path):
    """`hf.writes = v` in a hot function becomes STORE_ATTR_WITH_HINT (CPython 3.11), which
    writes the instance dict's entry in place: the kept fields must still notice (the store
    changes the dict's version tag) and every pwrite count on from the stored value."""
    hfs = []
    for name in ("py.img", "fast.img"):
        (tmp_path / name).write_bytes(bytes(3 * 4096))
        hfs.append(HostFile(str(tmp_path / name), "write"))
    a, b = hfs
    emu_fast.require()._hostfile.attach(b)

    def set_writes_a(hf, v):
        hf.writes = v

    def set_writes_b(hf, v):                        # one each: a hint is for one dict layout
        hf.writes = v
    setters = [set_writes_a, set_writes_b]

    try:
        for i in range(200):                        # warm enough to specialize the store
            for hf, set_writes in zip(hfs, setters):
                set_writes(hf, 1000 * i)
                hf.pwrite(512 * (i % 20), b"\x07" * 100)
                hf.size = hf.size                   # a store of an equal value, too
            assert state(a) == state(b), i
            assert b.writes == 1000 * i + 1
        if sys.version_info[:2] == (3, 11):         # the store this test is about did run
            ops = {ins.opname for ins in dis.get_instructions(setters[1], adaptive=True)}
            assert "STORE_ATTR_WITH_HINT" in ops, ops
    finally:
        a.close()
        b.close()
