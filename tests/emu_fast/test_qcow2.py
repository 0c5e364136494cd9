"""emu_fast._qcow2: qcow2's mapping and allocation (the qcow2.compute step and the engine
functions it runs) compiled, against the Python engine.

qcow2-heavy workloads -- writes whose sizes and offsets cross cluster and L2-slice
boundaries, rewrites of COPIED clusters, reads, discards, write-zeroes (with and without
unmap), flushes -- on images that reach the rare branches: 512-byte clusters (the image grows
new refcount blocks and a new refcount table), 4 KiB clusters, 1-bit and 64-bit refcounts,
lazy refcounts, version 2, a backing file (COW reads real data), injected errors; each run on
both engines must give the same Step records and final state.  Checkpoints taken while the
fast engine ran restore on the Python engine (and back) to the same run; an engine that ran
fast pickles as a plain Qcow2Engine.
"""
from __future__ import annotations

import errno
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.block.qcow2.create import create_qcow2
from emu.block.qcow2.engine import Qcow2Engine
from emu.session import Session
from tests.conftest import build, make_image
from tests.emu_fast.test_differential import SETTINGS, run_with, snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

MiB = 1 << 20
DISK = 2 * MiB

# name -> create_qcow2 options
IMAGES = {
    "qcow2": dict(cluster_size=65536),
    "qcow2s": dict(cluster_size=4096),
    "tiny": dict(cluster_size=512),                       # refcount blocks fill up: new ones, new table
    "rc1": dict(cluster_size=4096, refcount_bits=1),
    "rc64": dict(cluster_size=4096, refcount_bits=64),
    "lazy": dict(cluster_size=65536, lazy_refcounts=True),
    "v2": dict(cluster_size=65536, version=2),
    "backing": dict(cluster_size=4096, backing="raw"),
}


def new_image(tmp_path, name: str) -> str:
    path = str(tmp_path / f"{name}.qcow2")
    if os.path.exists(path):
        return path
    opts = dict(IMAGES[name])
    if opts.pop("backing", None):
        base = str(tmp_path / "base.raw")
        if not os.path.exists(base):
            make_image(base, DISK, content=bytes(range(1, 256)) * 64)
        opts.update(backing_file=os.path.basename(base), backing_format="raw")
    create_qcow2(path, DISK, **opts)
    return path


def machine(tmp_path, name: str, wl: str, cfg: dict):
    return build(new_image(tmp_path, name), wl, ram_size=4 * MiB, **cfg)


# -- strategies ---------------------------------------------------------------------------------------

# offsets mostly in a small window (so clusters are rewritten: COPIED in place), sometimes anywhere
_off = st.one_of(st.integers(0, 96).map(lambda s: s * 512),
                 st.integers(0, 16).map(lambda c: c * 65536 - 512 if c else 0),
                 st.integers(0, 31).map(lambda c: c * 4096), st.integers(0, 7).map(lambda c: c * 65536),
                 st.integers(0, DISK // 512 - 1).map(lambda s: s * 512))
_len = st.sampled_from([512, 1024, 3584, 4096, 5120, 12288, 65536, 66048, 131072, 200704])


@st.composite
def op_line(draw) -> str:
    kind = draw(st.sampled_from(["write"] * 6 + ["read"] * 2 + ["discard", "write-zeroes", "flush",
                                                                "wait", "queue-depth"]))
    if kind in ("flush", "wait"):
        return kind
    if kind == "queue-depth":
        return f"queue-depth {draw(st.integers(1, 6))}"
    length = draw(_len)
    off = min(draw(_off), DISK - length)
    line = f"{kind} {off} {length}"
    if kind == "write" and draw(st.booleans()):
        line += f" fill={draw(st.integers(0, 255)):#x}"
    if kind == "write-zeroes" and draw(st.booleans()):
        line += " unmap"
    return line


workloads = st.lists(op_line(), min_size=1, max_size=18).map(lambda ls: "\n".join(ls) + "\n")
faults = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["read", "write", "flush", "discard", "write_zeroes"]),
    "start": st.sampled_from([0, 4096, 65536, 1 << 20]), "end": st.sampled_from([1 << 20, 1 << 62]),
    "errno": st.sampled_from([errno.EIO, errno.ENOSPC]),
    "count": st.sampled_from([-1, 1, 3])}), max_size=2).map(tuple)
configs = st.fixed_dictionaries({
    "cache": st.sampled_from(["writeback", "writeback", "writethrough", "unsafe"]),
    "discard": st.sampled_from(["ignore", "unmap"]),
    "faults": st.one_of(st.just(()), faults), "queue_size": st.sampled_from([16, 64])})


def _same_run(a, b) -> None:
    ra: list = []
    rb: list = []
    assert run_with(a, "py", ra) == run_with(b, "fast", rb)
    assert len(ra) == len(rb) == a.steps
    for x, y in zip(ra, rb):
        assert x == y, f"step {x.n}: {x.kind} {x.detail!r} != {y.kind} {y.detail!r}"
    assert snapshot(a) == snapshot(b)
    assert a.fmt.state() == b.fmt.state()
    assert a.fmt.summary() == b.fmt.summary()
    assert type(a.fmt.engine) is Qcow2Engine


# -- tests -----------------------------------------------------------------------------------------------

def test_qcow2_compute_runs_compiled():
    assert "qcow2.compute" in emu_fast.compiled_kinds()


@settings(**dict(SETTINGS, max_examples=150))
@given(name=st.sampled_from(sorted(IMAGES)), wl=workloads, cfg=configs)
def test_qcow2_differential(tmp_path_factory, name, wl, cfg):
    tmp = tmp_path_factory.mktemp("q")
    _same_run(machine(tmp, name, wl, cfg), machine(tmp, name, wl, cfg))


@pytest.mark.parametrize("cluster_size,refcount_bits,disk,grows", [
    (512, 32, 6 * MiB, True), (512, 64, 3 * MiB, True), (512, 8, 3 * MiB, False),
    (4096, 1, 3 * MiB, False)])
def test_images_that_grow_their_refcount_structures(tmp_path, cluster_size, refcount_bits, disk,
                                                      grows):
    """512-byte clusters: writing the whole disk fills refcount blocks (new ones are
    allocated) and, with wide refcounts, the refcount table (qcow2_refcount_area moves it);
    then scattered rewrites, discards, write-zeroes and reads."""
    path = str(tmp_path / "grow.qcow2")
    create_qcow2(path, disk, cluster_size=cluster_size, refcount_bits=refcount_bits)
    wl = ["queue-depth 4"] + [f"write {i * 131072} 128k" for i in range(disk // 131072 - 2)]
    wl += [f"write {(i * 37 % 509) * 4096 + 512 * (i % 3)} {512 * (1 + i % 9)}" for i in range(60)]
    wl += ["flush", "discard 0 524288", "write-zeroes 524288 262144 unmap", "write 4096 70144",
           "read 0 1048576", "flush"]
    wl = "\n".join(wl) + "\n"
    a = build(path, wl, ram_size=4 * MiB, queue_size=64)
    b = build(path, wl, ram_size=4 * MiB, queue_size=64)
    table = a.fmt.engine.refcount_table_offset
    _same_run(a, b)
    assert (b.fmt.engine.refcount_table_offset != table) == grows
    assert not b.fmt.engine.corrupt


@pytest.mark.parametrize("name", ["qcow2", "qcow2s", "tiny", "lazy", "backing"])
def test_rewrites_of_zeroed_allocated_clusters(tmp_path, name):
    """write-zeroes without unmap leaves allocated zero clusters (ZERO_ALLOC, COPIED): a partial
    write into one is done in place with COW of the rest (calculate_l2_meta's keep_old case)."""
    wl = ["write 0 262144 fill=0x5a", "write 524288 131072", "flush",
          "write-zeroes 0 131072", "write-zeroes 524288 65536",
          "write 4608 1024", "write 65536 512", "write 126976 4096 fill=0x11", "write 528384 8192",
          "write 61440 8192", "read 0 262144", "write-zeroes 0 262144 unmap", "write 1024 2048",
          "read 0 131072", "flush"]
    wl = "\n".join(wl) + "\n"
    _same_run(machine(tmp_path, name, wl, {}), machine(tmp_path, name, wl, {}))


def _written_image(tmp_path, name: str, version: int = 3) -> tuple[str, object]:
    """A 4 KiB-cluster image with guest clusters 0-7 written (header 0, reftable 0x1000,
    refblock 0x2000, L1 0x3000, L2 0x4000, data 0x5000..): (path, its engine at open)."""
    path = str(tmp_path / f"{name}.qcow2")
    create_qcow2(path, DISK, cluster_size=4096, version=version)
    wl = "".join(f"write {i * 4096} 4k fill={i + 1:#x}\n" for i in range(8)) + "flush\n"
    m = build(path, wl, mode="write", ram_size=4 * MiB)
    run_with(m, "py", [])
    m.hostfile.close()
    return path, build(path, "flush\n", ram_size=4 * MiB).fmt.engine


def _patch(path: str, offset: int, value: int) -> None:
    import struct
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(">Q", value))


# (name, what to patch: engine -> [(file offset, 8-byte value)], version)
CORRUPTIONS = [
    ("data-on-l1", lambda e: [(0x4000, e.l1_table_offset | 1 << 63)], 3),
    ("data-on-refblock", lambda e: [(0x4000 + 8, e.refcount_table[0] | 1 << 63)], 3),
    ("data-on-reftable", lambda e: [(0x4000 + 16, e.refcount_table_offset | 1 << 63)], 3),
    ("data-on-l2", lambda e: [(0x4000 + 24, 0x4000 | 1 << 63)], 3),
    ("data-unaligned", lambda e: [(0x4000 + 32, 0x9200 | 1 << 63)], 3),
    ("zero-alloc-unaligned", lambda e: [(0x4000 + 40, 0xa200 | 1 << 63 | 1)], 3),
    ("l2-not-copied", lambda e: [(e.l1_table_offset, 0x4000)], 3),
    ("data-not-copied", lambda e: [(0x4000 + 48, 0xb000)], 3),
    ("zero-in-v2", lambda e: [(0x4000 + 8, 1)], 2),
]


CORRUPT_WORKLOADS = {
    "read-first": ["read 0 32768", "write 512 1024", "write 4096 4096", "write 8192 8192",
                   "write 16384 4096", "write 20480 8192 fill=0x77", "read 0 32768",
                   "write 65536 4096", "discard 0 16384", "write-zeroes 24576 8192", "flush"],
    "write-first": ["write 16384 1024", "write 20992 512", "write 12288 8192", "write 8192 512",
                    "write 0 4096", "write 36864 4096", "read 0 65536", "flush"],
}


@pytest.mark.parametrize("wl", sorted(CORRUPT_WORKLOADS))
@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_metadata_on_both_engines(tmp_path, case, wl):
    """Writes onto metadata (the overlap check marks the image corrupt), misaligned entries,
    shared (not COPIED) tables and clusters, zero clusters in a v2 image: the same failures
    on both engines."""
    name, patches, version = case
    path, eng = _written_image(tmp_path, name, version)
    for off, val in patches(eng):
        _patch(path, off, val)
    text = "\n".join(CORRUPT_WORKLOADS[wl]) + "\n"
    a = build(path, text, ram_size=4 * MiB)
    b = build(path, text, ram_size=4 * MiB)
    _same_run(a, b)


class _Pickler(pickle.Pickler):
    def __init__(self, buf, shared):
        super().__init__(buf, pickle.HIGHEST_PROTOCOL)
        self.shared = shared

    def persistent_id(self, obj):
        return "hostfile" if obj is self.shared else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, buf, shared):
        super().__init__(buf)
        self.shared = shared

    def persistent_load(self, pid):
        return self.shared


def _dumps(obj, shared) -> bytes:
    import io
    buf = io.BytesIO()
    _Pickler(buf, shared).dump(obj)
    return buf.getvalue()


def _loads(blob: bytes, shared):
    import io
    return _Unpickler(io.BytesIO(blob), shared).load()


def test_a_fast_engine_pickles_as_a_plain_qcow2_engine(tmp_path):
    wl = "queue-depth 2\n" + "".join(f"write {i * 69632} 4k\n" for i in range(40)) + "flush\n"
    m = machine(tmp_path, "qcow2s", wl, {})
    engine.run(m, "fast", 300)
    eng = m.fmt.engine
    assert type(eng).__name__ == "FastQcow2Engine" and isinstance(eng, Qcow2Engine)
    blob = _dumps(eng, m.hostfile)                # the host file is shared, as in checkpoints
    assert b"emu_fast" not in blob and b"FastQcow2Engine" not in blob
    back = _loads(blob, m.hostfile)
    assert type(back) is Qcow2Engine
    assert back.state() == eng.state()
    import copy
    assert type(copy.deepcopy(eng, {id(m.hostfile): m.hostfile})) is Qcow2Engine
    engine.set_engine(m, "py")                    # detach: the plain class again
    assert type(m.fmt.engine) is Qcow2Engine
    ref = machine(tmp_path, "qcow2s", wl, {})
    run_with(ref, "py", [])
    run_with(m, "py", [])
    assert snapshot(m) == snapshot(ref)


@settings(**dict(SETTINGS, max_examples=12))
@given(name=st.sampled_from(["qcow2", "qcow2s", "tiny"]), wl=workloads,
       interval=st.sampled_from([7, 40]), frac=st.sampled_from([3, 5]))
def test_checkpoints_restore_across_engines(tmp_path_factory, name, wl, interval, frac):
    """A run on the fast engine, its checkpoints restored and continued on the Python engine
    (and the other way round), gives the Python engine's own run."""
    tmp = tmp_path_factory.mktemp("cp")
    ref = machine(tmp, name, wl, {})
    ref_recs: list = []
    run_with(ref, "py", ref_recs)
    for first, second in (("fast", "py"), ("py", "fast")):
        s = Session(machine(tmp, name, wl, {}), checkpoint_interval=interval)
        assert engine.run_until(s, first).reason == "end"
        assert snapshot(s.m) == snapshot(ref)
        k = max(1, s.m.steps // frac)
        s.goto(k)                                 # restored from a checkpoint, re-executed
        recs: list = []
        run_with(s.m, second, recs)
        assert recs == ref_recs[k:]
        assert snapshot(s.m) == snapshot(ref)


def test_a_refcount_table_poked_into_a_plain_list_is_read_as_python_reads_it(tmp_path):
    """The engine keeps its refcount table as a FrozenTable (a tuple) and the compiled code
    indexes tuples in C; anything else put there (a list, from a script) is indexed as Python
    does, so both engines still agree."""
    wl = "".join(f"write {i * 69632} 4k\n" for i in range(24))
    out = {}
    for eng in ("py", "fast"):
        m = machine(tmp_path, "tiny", wl, {})
        engine.run(m, eng, 150)
        m.fmt.engine.refcount_table = list(m.fmt.engine.refcount_table)
        records: list = []
        assert run_with(m, eng, records) == "end"
        out[eng] = (snapshot(m), [(r.kind, r.detail) for r in records])
    assert out["py"] == out["fast"]
