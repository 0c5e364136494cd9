"""emu_fast._block: the block layer's request path compiled, against the Python handlers.

Workloads heavy in what the block layer branches on -- flushes (with and without writes
since the last one, cache=unsafe), discard=ignore/unmap, write-zeroes, writethrough (FUA
emulated by a flush), a read-only node, injected errors on every operation, qcow2 with small
and large clusters -- run on both engines: every Step record and the final state must agree.
"""
from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.sim.steps import REGISTRY
from tests.emu_fast.test_differential import DISK, SETTINGS, machine, run_with, snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

KINDS = ("file.aio_worker", "file.co_entry", "file.co_resume", "blk.co_entry", "bdrv.co_entry",
         "bdrv.co_done", "blk.aio_complete", "raw.co_entry", "qcow2.co_entry", "qcow2.io",
         "qcow2.worker", "qcow2.io_done")

_off = st.integers(0, DISK // 4096 - 8).map(lambda b: b * 4096)
io = st.tuples(st.sampled_from(["write", "write", "write", "read", "discard", "write-zeroes"]), _off,
               st.sampled_from([512, 4096, 12288, 65536])).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
line = st.one_of(io, io, io, io, st.just("flush"), st.just("wait"),
                 st.integers(1, 8).map(lambda d: f"queue-depth {d}"))
workloads = st.lists(line, min_size=1, max_size=16).map(lambda ls: "\n".join(ls) + "\n")
faults = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["read", "write", "flush", "discard", "write_zeroes"]),
    "start": st.sampled_from([0, 65536, 1 << 20]), "end": st.sampled_from([1 << 20, 1 << 62]),
    "errno": st.sampled_from([errno.EIO, errno.ENOSPC, errno.EPERM]),
    "count": st.sampled_from([-1, 1, 3])}), max_size=3).map(tuple)
configs = st.fixed_dictionaries({
    "cache": st.sampled_from(["writeback", "writethrough", "unsafe"]),
    "discard": st.sampled_from(["ignore", "unmap"]), "read_only": st.sampled_from([False, False, True]),
    "werror": st.sampled_from(["report", "ignore"]), "faults": faults, "queue_size": st.sampled_from([4, 64])})


def test_the_block_layer_kinds_run_compiled():
    assert set(KINDS) <= set(emu_fast.compiled_kinds())


@settings(**dict(SETTINGS, max_examples=80))
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s"]), wl=workloads, cfg=configs)
def test_block_layer_differential(tmp_path_factory, fmt, wl, cfg):
    tmp = tmp_path_factory.mktemp("blk")
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    a = machine(tmp, kind, name, wl, cfg)
    b = machine(tmp, kind, name, wl, cfg)
    ra: list = []
    rb: list = []
    assert run_with(a, "py", ra) == run_with(b, "fast", rb)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x == y, f"step {x.n}: {x.kind} {x.detail!r} != {y.kind} {y.detail!r}"
    assert snapshot(a) == snapshot(b)
    assert a.block == b.block


def test_a_replaced_python_handler_is_used_as_is(tmp_path, monkeypatch):
    seen = []
    real = REGISTRY["file.aio_worker"]

    def spy(m, aid):
        seen.append(aid)
        return real[0](m, aid)
    monkeypatch.setitem(REGISTRY, "file.aio_worker", (spy, real[1]))
    assert "file.aio_worker" not in emu_fast.compiled_kinds()
    m = machine(tmp_path, "raw", "", "write 0 4k\nread 0 4k\nflush\n", {})
    recs: list = []
    run_with(m, "fast", recs)
    assert len(seen) >= 2 and len(seen) == sum(r.kind == "file.aio_worker" for r in recs)


@pytest.mark.parametrize("name", ["_run", "_plan_frame", "_next_item"])
def test_a_replaced_qcow2_driver_function_is_used(tmp_path, monkeypatch, name):
    """The compiled qcow2 host-I/O steps call driver._run/_plan_frame/_next_item's replacement."""
    from emu.block.qcow2 import driver as Q
    real = getattr(Q, name)
    seen = []

    def spy(*args):
        seen.append(name)
        return real(*args)
    monkeypatch.setattr(Q, name, spy)
    m = machine(tmp_path, "qcow2", "", "write 0 4k\nwrite 65536 4k\nread 0 4k\n", {})
    recs: list = []
    run_with(m, "fast", recs)
    steps = {"_run": ("qcow2.worker",), "_plan_frame": ("qcow2.io", "qcow2.io_done"),
             "_next_item": ("qcow2.io_done",)}[name]
    n = sum(r.kind in steps for r in recs)
    assert n and len(seen) >= n
