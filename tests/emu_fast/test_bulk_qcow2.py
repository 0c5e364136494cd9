"""qcow2's compute step in the bulk core (emu_fast/_bulk_blk.pyx h_qcow2_compute ->
emu_fast/_qcow2.pyx bulk_compute) against the Python engine.

A read or write request's compute steps (qcow2_alloc_host_offset, qcow2_alloc_cluster_link_l2,
qcow2_get_host_offset: allocation from the free cluster index, refcount updates, the L2 cache
and its LRU/dirty bookkeeping, calculate_l2_meta, the overlap check, the zero-COW shortcut, the
plan of host I/O) run without a Step record, without detail text and without the recording
scheduler.  They must leave exactly the state the Python handlers leave (digest, guest RAM,
image bytes, step count and time, chunk by chunk), on images of every cluster size from 4 KiB
to 64 KiB, refcount widths, lazy refcounts, and with caches so small that tables are evicted
and written back in the middle of a request; and they must actually run (counted).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.block.qcow2.cache import Cache
from emu.block.qcow2.create import create_qcow2
from tests.conftest import build
from tests.emu_fast.test_differential import SETTINGS, snapshot

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")

MiB = 1 << 20
DISK = 8 * MiB


def _mods():
    from emu_fast import _bulk, _bulk_blk
    return _bulk, _bulk_blk


try:
    from emu_fast import _qcow2
except ImportError:         # (not compiled: every test here is skipped)
    _qcow2 = None


def _image(tmp, cs: int, bits: int, lazy: bool, version: int) -> str:
    path = str(tmp / f"q{cs}-{bits}-{int(lazy)}-{version}.qcow2")
    create_qcow2(path, DISK, cluster_size=cs, refcount_bits=bits, lazy_refcounts=lazy,
                 version=version)
    return path


def _machine(path: str, wl: str, l2: int | None, rb: int | None, cfg: dict):
    m = build(path, wl, ram_size=4 * MiB, **cfg)
    eng = m.fmt.engine
    if l2:          # a smaller L2 cache than the disk needs (QEMU's l2-cache-size): evictions
        eng.l2_cache = Cache("l2", l2, eng.l2_cache.table_size)
    if rb:
        eng.rb_cache = Cache("refcount", rb, eng.rb_cache.table_size)
    return m


def _same(a, b, chunks) -> None:
    """Run a on the Python engine and b on the fast one (no observer), chunk by chunk."""
    for k in chunks:
        assert engine.run(a, "py", k) == engine.run(b, "fast", k)
        assert snapshot(a) == snapshot(b)
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    assert a.hostfile.pread(0, a.hostfile.size) == b.hostfile.pread(0, b.hostfile.size)


@st.composite
def _line(draw) -> str:
    k = draw(st.sampled_from(["write"] * 6 + ["read"] * 3 + ["flush", "wait"]))
    if k in ("flush", "wait"):
        return k
    n = draw(st.sampled_from([4096, 4096, 65536, 65536, 512, 8192, 12288, 131072]))
    off = draw(st.integers(0, (DISK - n) // 512)) * 512
    if draw(st.booleans()):
        off = off // n * n                  # aligned 4K / 64K requests
    line = f"{k} {off} {n}"
    if k == "write" and draw(st.booleans()):
        line += f" fill={draw(st.integers(0, 255)):#x}"
    return line


_wls = st.tuples(st.sampled_from([1, 1, 4, 16]), st.lists(_line(), min_size=1, max_size=16)).map(
    lambda t: f"queue-depth {t[0]}\n" + "\n".join(t[1]) + "\n")


@settings(**{**SETTINGS, "max_examples": 25})
@given(cs=st.sampled_from([4096, 16384, 65536]), bits=st.sampled_from([16, 16, 1, 8, 32, 64]),
       lazy=st.booleans(), version=st.sampled_from([3, 3, 2]), wl=_wls,
       l2=st.sampled_from([None, None, 1, 2]), rb=st.sampled_from([None, 1]),
       cache=st.sampled_from(["writeback", "writethrough", "unsafe"]),
       chunks=st.lists(st.integers(1, 400), min_size=1, max_size=4))
def test_bulk_qcow2_same_state_as_python(tmp_path_factory, cs, bits, lazy, version, wl, l2, rb,
                                         cache, chunks):
    tmp = tmp_path_factory.mktemp("bulkq")
    if version == 2:
        bits, lazy = 16, False              # (compat 0.10: 16-bit refcounts, no lazy refcounts)
    path = _image(tmp, cs, bits, lazy, version)
    cfg = dict(cache=cache)
    _same(_machine(path, wl, l2, rb, cfg), _machine(path, wl, l2, rb, cfg), chunks)


WL = """queue-depth 1
write 0 4096 fill=0x11
write 65536 65536 fill=0x22
write 69632 4096 fill=0x33
read 0 8192
read 1048576 65536
write 3145728 4096
write 5242880 65536
read 65536 131072
write 4096 12288
write 7340032 4096
write 1052672 4096
read 7340032 65536
write 20480 8192 fill=0x66
write 3149824 4096
write 131072 65536
write 5308416 16384 fill=0x77
"""


@pytest.mark.parametrize("cs", [4096, 65536])
@pytest.mark.parametrize("l2", [None, 1])
def test_bulk_qcow2_compute_runs_quiet(tmp_path, cs, l2):
    """Every compute step of a read/write workload runs in the core, through bulk_compute or
    the native end-of-request/link steps, never the recording scheduler (with a one-table L2
    cache too: misses and evictions of dirty tables inside the step)."""
    bulk, blk = _mods()
    path = _image(tmp_path, cs, 16, False, 3)
    a = _machine(path, WL, l2, None, {})
    b = _machine(path, WL, l2, None, {})
    bulk.reset_stats()
    blk.reset_counts()
    _qcow2.fast_allocs(True)
    _same(a, b, (37, 150))
    if l2 is None:      # (a one-table cache misses: those steps run the compiled functions)
        assert _qcow2.fast_allocs() >= 5
        assert _qcow2.fast_allocs(in_place=True) >= 1
    got = blk.counts()
    quiet = blk.counts(quiet=True)
    assert quiet.get("qcow2.compute", 0) >= 20, (quiet, got)
    assert not blk.counts(wrapped=True).get("qcow2.compute"), blk.counts(wrapped=True)
    assert "qcow2.compute" not in bulk.stats()["bails"]
    # per request: one quiet step per piece (alloc or read) plus the link steps
    assert got["qcow2.compute"] > quiet["qcow2.compute"]


def test_bulk_qcow2_cow_and_errors_agree(tmp_path):
    """Paths inside a quiet compute step that the Python engine's own methods run (COW of a
    partly written cluster from a backing-less image with data: reads of the old cluster,
    an L2 table allocation, a request past the L1 table's end: a Qcow2Error ends the request)
    agree too."""
    bulk, blk = _mods()
    path = _image(tmp_path, 65536, 16, False, 3)
    wl = ("queue-depth 4\nwrite 0 65536 fill=0x44\nflush\nwrite 512 1024 fill=0x55\n"
          "write 130560 1024\nread 0 65536\nwrite 8387584 4096\nflush\n")
    a = _machine(path, wl, 1, 1, {})
    b = _machine(path, wl, 1, 1, {})
    blk.reset_counts()
    _same(a, b, (25, 60))
    assert blk.counts(quiet=True).get("qcow2.compute", 0) > 0


@pytest.mark.parametrize("l2", [1, None])
@pytest.mark.parametrize("lazy", [True, False])
def test_bulk_qcow2_every_boundary_agrees(tmp_path, lazy, l2):
    """Stop after every step (runs of 2 and 3 steps: the core runs all but the last of each) so
    what a quiet compute step leaves for the next steps (the plan, co["caller"], the caches,
    the pending writes) is compared at each point; lazy refcounts make the first link step
    plan the header's dirty bit, a one-table L2 cache makes steps evict dirty tables."""
    _bulk, blk = _mods()
    path = _image(tmp_path, 4096, 16, lazy, 3)
    wl = ("queue-depth 2\nwrite 0 4096 fill=0x11\nwrite 2097152 8192 fill=0x22\nread 0 8192\n"
          "write 4194304 65536\nwrite 6144 4096\nread 2093056 8192\nwrite 2109440 4096\n"
          "write 4259840 65536 fill=0x33\nwrite 12288 2048\n")
    a = _machine(path, wl, l2, None, {})
    b = _machine(path, wl, l2, None, {})
    blk.reset_counts()
    _qcow2.fast_allocs(True)
    while True:
        for k in (2, 3):
            ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
            assert ra == rb
            assert snapshot(a) == snapshot(b), a.steps
        if ra != "steps":
            break
    assert a.digest() == b.digest()
    assert blk.counts(quiet=True).get("qcow2.compute", 0) >= 6
    if l2 is None:      # new clusters' allocations ran natively (_qcow2._fast_alloc; the last
        assert _qcow2.fast_allocs() >= 1        # step of each run is the compiled engine's)


@pytest.mark.parametrize("mode", ["overlay", "write"])
def test_bulk_qcow2_zeroed_cow_areas_agree(tmp_path, mode):
    """The worker's write_zeroes items (handle_alloc_space's zeroed COW areas) run natively,
    both past the end of the file (written without reading it) and inside it (a cluster freed
    by an unmapping discard is allocated again: read, compared, written only if not zero), and
    leave the same image bytes and size as the Python engine's."""
    import shutil
    bulk, blk = _mods()
    path = _image(tmp_path, 65536, 16, False, 3)
    wl = ("queue-depth 1\nwrite 0 65536 fill=0x11\nwrite 65536 65536 fill=0x22\nflush\n"
          "discard 0 65536\nflush\nwrite 4096 4096 fill=0x33\nwrite 1048576 4096\n"
          "write 2097152 4096\ndiscard 65536 65536\nwrite 3145728 4096\nflush\n"
          "write 6291456 8192 fill=0x44\n")
    pa, pb = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    shutil.copy(path, pa)
    shutil.copy(path, pb)
    cfg = dict(discard="unmap", mode=mode)
    a = _machine(pa, wl, None, None, dict(cfg))
    b = _machine(pb, wl, None, None, dict(cfg))
    blk.reset_counts()
    _same(a, b, (60,))
    assert a.hostfile.size == b.hostfile.size
    assert blk.counts().get("qcow2.worker", 0) >= 8, blk.counts()
    assert not blk.counts(wrapped=True).get("qcow2.worker"), blk.counts(wrapped=True)
