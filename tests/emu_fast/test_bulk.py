"""The bulk core (emu_fast/_bulk.pyx): its scheduler against emu.sim.scheduler.Scheduler.

The core keeps the scheduler in C structures for a stretch of steps and stores it back; the
rules applied to those structures must leave exactly the Scheduler the Python rules leave
(the heap's list in the same order, each context's stack, queues, preempted tasks, blocked
continuation, now/seq/cur).
"""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.sim.scheduler import Scheduler

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

if emu_fast.available():
    from emu_fast import _bulk
    KINDS = [k for k in _bulk.kind_names() if k]
else:
    KINDS = ["vring.get_buf"]

_kind = st.sampled_from(KINDS)
_arg = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(0, 300), st.sampled_from(["", "x", "OK"]))
_args = st.lists(_arg, max_size=3).map(tuple)
_ctx = st.sampled_from(["vcpu", "qemu"])
_delay = st.one_of(st.none(), st.integers(0, 5000))

_op = st.one_of(
    st.just(("pop",)), st.just(("pop",)), st.just(("finish",)),
    st.tuples(st.just("cont"), _kind, _args, _delay, st.booleans()),
    st.tuples(st.just("call"), _kind, _args, _kind, _args, _delay),
    st.tuples(st.just("block"), st.one_of(st.just(""), _kind), _args),
    st.tuples(st.just("unblock"), _ctx, st.integers(0, 100)),
    st.tuples(st.just("post"), _ctx, _kind, _args, st.integers(0, 3000), st.booleans()),
    st.tuples(st.just("post"), _ctx, _kind, _args, st.integers(0, 3000), st.just(True)),
    st.tuples(st.just("post"), _ctx, _kind, _args, st.integers(0, 3000), st.just(False)),
    st.tuples(st.just("at"), st.integers(0, 3000), _kind, _args),
)


def _apply_py(sim: Scheduler, op) -> None:
    name = op[0]
    if name == "pop":
        sim.pop()
    elif name == "finish":
        sim.finish_step()
    elif name == "cont":
        sim.cont(op[1], op[2], op[3], op[4])
    elif name == "call":
        sim.call(op[1], op[2], op[3], op[4], op[5])
    elif name == "block":
        sim.block(op[1], op[2])
    elif name == "unblock":
        sim.unblock(op[1], op[2])
    elif name == "post":
        sim.post(op[1], op[2], op[3], op[4], op[5])
    elif name == "at":
        sim.at(op[1], op[2], op[3])


def _valid(sim: Scheduler, op) -> bool:
    """ops the Python scheduler accepts in this state (pop needs an event; cont/call/block need
    a running context)"""
    if op[0] == "pop":
        return bool(sim.queue)
    if op[0] in ("cont", "call", "block"):
        return bool(sim.cur)
    return True


def _fields(sim: Scheduler):
    return (sim.now, sim.seq, list(sim.queue), sim.cur, sim._decided,
            [(k, c.state()) for k, c in sim.ctxs.items()])


def _sched() -> Scheduler:
    s = Scheduler()
    s.add_ctx("vcpu", 100)
    s.add_ctx("qemu", 70)
    s.post("vcpu", "app.start")
    return s


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.lists(_op, max_size=12), min_size=1, max_size=8))
def test_the_core_schedules_exactly_as_the_scheduler(batches):
    """Batches of operations, each batch on the C state (loaded from and stored back into one
    Scheduler) and on the Python rules (another): the two Schedulers stay equal, field for
    field, the heap's list in the same order."""
    _both_ways(batches)


def _both_ways(batches) -> int:
    """Each batch's valid operations on a Python Scheduler and through the C state of another;
    after each batch the two equal field for field.  The longest queue the Python one had."""
    py, c = _sched(), _sched()
    deepest = 0
    for batch in batches:
        ops = []
        for op in batch:
            if not _valid(py, op):
                continue
            _apply_py(py, op)
            ops.append(op)
            deepest = max(deepest, len(py.queue))
        assert _bulk.sched_ops(c, ops)
        assert repr(_fields(c)) == repr(_fields(py))     # (repr: True is not 1)
    return deepest


_deep_op = st.one_of(
    st.tuples(st.just("at"), st.integers(0, 3), _kind, _args),
    st.tuples(st.just("at"), st.integers(0, 3), _kind, _args),
    st.tuples(st.just("post"), _ctx, _kind, _args, st.integers(0, 3), st.booleans()),
    st.tuples(st.just("cont"), _kind, _args, st.sampled_from([None, 0, 1, 2]), st.just(False)),
    st.just(("pop",)), st.just(("finish",)),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.lists(_deep_op, min_size=20, max_size=80), min_size=1, max_size=4))
def test_a_deep_heap_of_tied_times_keeps_heapq_s_order(batches):
    """Many events at a handful of times (ties broken by seq) make heaps several levels deep:
    the C heap's pushes and pops (entries sifted in registers) leave heapq's list, entry for
    entry, and pop in the same order."""
    assert _both_ways(batches) >= 1


def test_a_round_trip_changes_nothing():
    s = _sched()
    s.pop()
    s.call("vring.add_desc", (3,), "vblkd.add_ret", (3,))
    s.post("vcpu", "vring.interrupt", (1,), 50, True)
    s.post("qemu", "vpci.notify", (12288,))
    s.post("qemu", "vblk.pop", (0,))
    s.block("", ())
    s.at(30, "file.aio_worker", (7,))
    before = repr(_fields(s))
    assert _bulk.sched_ops(s, [])
    assert repr(_fields(s)) == before


@pytest.mark.parametrize("poke", [
    lambda s: s.queue.append((1, 99, "vcpu", "no.such.kind", ())),
    lambda s: s.queue.append((1, 99, "vcpu", "app.op", (1.5,))),
    lambda s: s.queue.append((1, 99, "vcpu", "app.op", (True,))),
    lambda s: s.queue.append((1, 99, "vcpu", "app.op", (1, 2, 3, 4))),
    lambda s: s.queue.append((1, 99, "vcpu", "app.op", (2 ** 64,))),
    lambda s: s.queue.append((1, 99, "nobody", "app.op", ())),
    lambda s: s.ctxs["vcpu"].fifo.append(("app.op", [1])),
    lambda s: setattr(s, "now", 1.0),
])
def test_what_the_core_cannot_hold_is_left_alone(poke):
    """A scheduler with something the C state cannot represent is refused, untouched."""
    s = _sched()
    poke(s)
    before = copy.deepcopy(_fields(s))
    assert _bulk.sched_ops(s, [("pop",)]) is False
    assert _fields(s) == before


# -- the core in the compiled engine's runs ---------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("wname", ["rand4k", "seq64k", "mixed"])
def test_unobserved_runs_go_through_the_core_and_agree(tmp_path, fmt, wname):
    """The bench workloads, run without an observer on the compiled engine, spend their steps in
    the bulk core but for the probe's (fails if a layer stops loading, a hot kind loses its
    handler or bails) and end exactly as on the Python engine (digest, steps, m.cur)."""
    from emu import engine
    from emu_fast import bench as B
    wl = B.workload(wname, 40)
    a = B._machine(B.make_image(str(tmp_path / f"a.{fmt}"), fmt), wl)
    b = B._machine(B.make_image(str(tmp_path / f"b.{fmt}"), fmt), wl)
    _bulk.reset_stats()
    assert engine.run(a, "py") == engine.run(b, "fast") == "end"
    st = _bulk.stats()
    # outside the core: the device probe, qcow2's open, and steps that could have been the
    # run's last (the compiled engine runs those, with their records)
    assert all(k.startswith("probe.") or k == "qcow2.open" for k in st["unhandled"]), st
    assert not st["bails"] and not st["refused"], st
    assert st["steps"] >= 0.6 * b.steps, st
    assert a.steps == b.steps and a.digest() == b.digest()
    assert a.cur == b.cur


def test_the_core_off_is_the_compiled_engine_alone(tmp_path):
    """set_enabled(False): no step runs in the core, and the run ends the same."""
    from emu import engine
    from emu_fast import bench as B
    wl = B.workload("mixed", 24)
    a = B._machine(B.make_image(str(tmp_path / "a.raw"), "raw"), wl)
    b = B._machine(B.make_image(str(tmp_path / "b.raw"), "raw"), wl)
    _bulk.set_enabled(False)
    try:
        _bulk.reset_stats()
        engine.run(a, "fast")
        assert _bulk.stats()["steps"] == 0
    finally:
        _bulk.set_enabled(True)
    engine.run(b, "fast")
    assert _bulk.stats()["steps"] > 0
    assert a.digest() == b.digest() and a.cur == b.cur


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_the_last_step_of_a_close_is_recorded(tmp_path, fmt):
    """qcow2's close ends in a compute step that schedules nothing (bid 0): the compiled
    engine, not the core, runs it, so m.cur after the run is its record, as on Python."""
    from emu import engine
    from emu_fast import bench as B
    wl = B.workload("rand4k", 12)
    a = B._machine(B.make_image(str(tmp_path / f"a.{fmt}"), fmt), wl)
    b = B._machine(B.make_image(str(tmp_path / f"b.{fmt}"), fmt), wl)
    assert engine.run(a, "py") == engine.run(b, "fast") == "end"
    assert a.begin_shutdown() == b.begin_shutdown()
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert a.cur == b.cur and a.digest() == b.digest()
    assert fmt == "raw" or a.cur.kind == "qcow2.compute"
