"""emu_fast._core: the scheduler's C entry points (_core.pxd: sched_cont/call/block/unblock/
post/at, which the compiled handlers call) and the run loop's pop/finish_step, against the
Python Scheduler's methods.

Two schedulers with the same contexts run the same random operations: one with
emu.sim.scheduler.Scheduler's own methods, the other through _core.sched_op (the C entry
points, called with positional arguments as the handler modules call them).  After every
operation the results, any exception (type and message), state() and every attribute (cur,
_decided, the raw heap list in its exact order: the compiled heap must move entries as heapq
does) must agree.  The compiled side
is a FastScheduler (the compiled rules) or a plain Scheduler (the entry points must then call
its methods).
"""
from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.sim.scheduler import Scheduler
from tests.emu_fast.test_differential import SETTINGS

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

NAMES = ("vcpu", "qemu")
_name = st.sampled_from(NAMES + ("",))           # "" is no context: KeyError on both sides
_kind = st.sampled_from(["a", "b", "c", ""])
_args = st.sampled_from([(), (1,), (2, "x"), (3,)])
# ints (small, equal ones for seq tie-breaks, negative, each side of CPython's one-digit
# ints at 2**30, past 64 bits) and other numbers: the heap compares (time, seq) in C for ints
# that fit, everything else as Python does
_delay = st.sampled_from([0, 0, 1, 3, 7, 7, -2, -9, (1 << 30) - 1, 1 << 30, 1 << 45, 1 << 70,
                          2.5, True])
_opt_delay = st.sampled_from([None, None, 0, 1, 5, 1 << 66, 0.5])


def _trim(draw, full: tuple, required: int) -> tuple:
    """A prefix of the arguments: the rest take the method's defaults."""
    return full[:draw(st.integers(required, len(full)))]


@st.composite
def op(draw):
    which = draw(st.sampled_from(["cont", "cont", "call", "block", "unblock", "post", "post",
                                  "at", "finish_step", "finish_step", "pop", "pop", "cur"]))
    if which == "cont":
        return which, _trim(draw, (draw(_kind), draw(_args), draw(_opt_delay),
                                   draw(st.booleans())), 1)
    if which == "call":
        return which, _trim(draw, (draw(_kind), draw(_args), draw(_kind), draw(_args),
                                   draw(_opt_delay)), 3)
    if which == "block":
        return which, _trim(draw, (draw(_kind), draw(_args)), 1)
    if which == "unblock":
        return which, _trim(draw, (draw(_name), draw(_delay)), 1)
    if which == "post":
        return which, _trim(draw, (draw(_name), draw(_kind), draw(_args), draw(_delay),
                                   draw(st.booleans())), 2)
    if which == "at":
        return which, _trim(draw, (draw(_delay), draw(_kind), draw(_args)), 2)
    if which == "cur":             # the run loop's pop sets cur; this sets it to anything
        return which, (draw(_name), draw(st.booleans()))
    return which, ()


def _new(cls):
    s = Scheduler()
    s.add_ctx("vcpu", 10)
    s.add_ctx("qemu", 4)
    if cls is not Scheduler:
        s.__class__ = cls
    return s


def _run_py(s, which, a):
    if which == "cur":
        s.cur, s._decided = a
        return None
    return getattr(s, which)(*a)


def _run_c(core, s, which, a):
    if which == "cur":
        s.cur, s._decided = a
        return None
    return core.sched_op(s, which, a)


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001  (both sides must fail the same way)
        return ("error", type(e).__name__, str(e))


def _members(sched) -> dict:
    """Every attribute of a Scheduler (its __slots__) and of each of its contexts."""
    d = {n: getattr(sched, n) for n in Scheduler.__slots__}
    d["ctxs"] = {k: {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
                 for k, c in sched.ctxs.items()}
    return d


@pytest.mark.parametrize("compiled_cls", ["FastScheduler", "Scheduler"])
@settings(**{**SETTINGS, "max_examples": 150})
@given(ops=st.lists(op(), min_size=1, max_size=60))
def test_entry_points_are_the_scheduler_methods(compiled_cls, ops):
    core = emu_fast.require()
    cls = core.FastScheduler if compiled_cls == "FastScheduler" else Scheduler
    py, c = _new(Scheduler), _new(cls)
    for which, a in ops:
        want = _outcome(lambda: _run_py(py, which, a))
        got = _outcome(lambda: _run_c(core, c, which, a))
        assert got == want, (which, a)
        assert c.state() == py.state(), (which, a)
        assert _members(c) == _members(py), (which, a)  # also cur, _decided and the raw heap
        assert c.queue == py.queue, (which, a)          # (the same heap, entry for entry)
        assert type(c) is cls
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):   # (a FastScheduler pickles as a Scheduler)
        back = pickle.loads(pickle.dumps(c, proto))
        assert type(back) is Scheduler and _members(back) == _members(py) and back.queue == py.queue


def test_a_long_run_pops_in_time_then_seq_order():
    """Many events with colliding times: the compiled heap pops exactly heapq's order."""
    core = emu_fast.require()
    py, c = _new(Scheduler), _new(core.FastScheduler)
    for i in range(400):
        d = (i * 7919) % 13
        py.at(d, "k", (i,))
        core.sched_op(c, "at", (d, "k", (i,)))
        if i % 3 == 0:
            assert core.sched_op(c, "pop", ()) == py.pop()
    while py.queue:
        assert core.sched_op(c, "pop", ()) == py.pop()
        assert c.queue == py.queue
    assert core.sched_op(c, "pop", ()) is None and c.state() == py.state()


_times = st.one_of(st.integers(-(1 << 62), 1 << 62),
                   st.sampled_from([0, 1, -1, (1 << 30) - 1, 1 << 30, -(1 << 30), -(1 << 30) + 1,
                                    (1 << 63) - 1, 1 << 63, -(1 << 63), 1 << 90]))


@settings(**{**SETTINGS, "max_examples": 200})
@given(ops=st.lists(st.one_of(_times, st.just("pop")), min_size=1, max_size=80))
def test_the_heap_orders_times_of_every_size_and_sign(ops):
    """Free events at any times (negative, around CPython's one-digit ints, past 64 bits,
    compared in C or by Python): the compiled heap is heapq's, entry for entry."""
    core = emu_fast.require()
    py, c = _new(Scheduler), _new(core.FastScheduler)
    for o in ops:
        if o == "pop":
            assert core.sched_op(c, "pop", ()) == py.pop()
        else:
            py.at(o, "k")
            core.sched_op(c, "at", (o, "k"))
        assert c.queue == py.queue
    while py.queue:
        assert core.sched_op(c, "pop", ()) == py.pop()
        assert c.queue == py.queue


# -- the run loop ------------------------------------------------------------------------------

def _machines(tmp_path):
    from tests.emu_fast.test_differential import machine
    wl = "write 0 4096\nread 4096 8192\nwrite 65536 12288\nflush\n"
    return (machine(tmp_path, "raw", "a", wl, {}), machine(tmp_path, "raw", "b", wl, {}))


def test_the_run_loop_follows_registry_changes_between_steps(tmp_path, monkeypatch):
    """The run loop resolves each kind's handler once, but a REGISTRY entry replaced after
    that (and put back) is used from the next step on, as Machine.step does."""
    from emu.sim.steps import REGISTRY
    a, b = _machines(tmp_path)
    kind = "vring.add_desc"
    real = REGISTRY[kind]
    calls = []

    def spy(m, *args):
        calls.append(args)
        return real[0](m, *args) + " (spy)"

    def step_both_until(cond):
        while True:
            ra = a.step()
            rb = emu_fast.step(b)
            assert rb == ra and ra is not None
            assert b.log.cur is None and b.cur is rb and b.steps == a.steps
            if cond(ra):
                return ra

    step_both_until(lambda r: r.kind == kind)       # resolved (the compiled handler) by now
    monkeypatch.setitem(REGISTRY, kind, (spy, real[1]))
    r = step_both_until(lambda r: r.kind == kind)
    assert r.detail.endswith(" (spy)") and len(calls) == 2      # both engines ran the spy
    monkeypatch.setitem(REGISTRY, kind, real)
    r = step_both_until(lambda r: r.kind == kind)
    assert not r.detail.endswith(" (spy)") and len(calls) == 2  # neither does once put back
    while (ra := a.step()) is not None:
        assert emu_fast.step(b) == ra
    assert emu_fast.step(b) is None and b.digest() == a.digest()


@pytest.mark.parametrize("nargs", [0, 1, 8, 9])
def test_handler_arguments_of_any_count(tmp_path, monkeypatch, nargs):
    """fn(m, *args) for events with no, few and many arguments (and a list, not a tuple)."""
    from emu.sim.steps import REGISTRY
    a, b = _machines(tmp_path)
    got = []

    def fn(m, *args):
        got.append(args)
        return f"{len(args)} args" if args else None      # (None: the detail becomes "")
    monkeypatch.setitem(REGISTRY, "test.args", (fn, REGISTRY["vring.add_desc"][1]))
    args = tuple(range(nargs))
    for m in (a, b):
        m.sim.at(0, "test.args", args)
        m.sim.at(0, "test.args", list(args))
    recs_a = list(iter(a.step, None))
    recs_b = list(iter(lambda: emu_fast.step(b), None))
    assert recs_b == recs_a and got == [args, args] * 2
    mine = [r for r in recs_b if r.kind == "test.args"]
    assert [r.detail for r in mine] == [f"{nargs} args" if nargs else ""] * 2


def test_a_handler_that_moves_the_step_counter(tmp_path, monkeypatch):
    """Machine.step counts with `self.steps += 1` after the handler: a handler that changes
    m.steps (none of emu's does) moves the count on both engines alike."""
    from emu.sim.steps import REGISTRY
    a, b = _machines(tmp_path)

    def jump(m, by):
        m.steps += by
    monkeypatch.setitem(REGISTRY, "test.jump", (jump, REGISTRY["vring.add_desc"][1]))
    for m in (a, b):
        m.sim.at(0, "test.jump", (5,))
        m.sim.at(3, "test.jump", (0,))
    recs_a = list(iter(a.step, None))
    recs_b = list(iter(lambda: emu_fast.step(b), None))
    assert recs_b == recs_a and b.steps == a.steps == len(recs_a) + 5


def test_the_exact_shortcuts_are_taken():
    """Step, EffectLog, Scheduler and Ctx have the shape _core's shortcuts check for at import (slots of
    Step, Scheduler and Ctx at their offsets): if a change to emu's classes turns one
    off, the fast engine stays exact but slower, and this says so."""
    assert emu_fast.require().fast_paths() == {"step_slots": True, "scheduler_slots": True,
                                               "ctx_slots": True, "effectlog_slot": True}


def test_slot_members_are_read_at_their_offsets():
    """Every class whose members a compiled module reads at their offsets has the shape that
    needs (plain object slots, object's __setattr__): a change to emu's classes that turns a
    fast path off shows here."""
    paths = emu_fast.slot_paths()
    assert {"_core.Machine", "_core.GuestMemory"} <= set(paths)
    assert all(paths.values()), paths


class _Plain:
    __slots__ = ("a", "b", "__dict__")


class _Sub(_Plain):
    @property
    def b(self):
        return "property"


class _Hooked:
    __slots__ = ("a",)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, ("hooked", value))


def test_slot_access_is_attribute_access():
    """sget/sset (emu_fast/_slots.pxd) read and write a member at its offset only where that
    is exactly what `o.name` does; a subclass, an unset slot, a class with its own
    __setattr__, a name that is not a slot take getattr/setattr, errors included."""
    core = emu_fast.require()
    o = _Plain()
    assert core.slot_access(_Plain, ("a", "b"), o, 0, 5) == (True, None)
    assert o.a == 5 and core.slot_access(_Plain, ("a", "b"), o, 0) == (True, 5)
    with pytest.raises(AttributeError) as e:                    # unset: getattr's own error
        core.slot_access(_Plain, ("a", "b"), o, 1)
    with pytest.raises(AttributeError) as e2:
        o.b
    assert str(e.value) == str(e2.value)
    s = _Sub()
    s.a = 1
    _Plain.b.__set__(s, "slot")                     # what the member holds, hidden by the property
    assert core.slot_access(_Plain, ("a", "b"), s, 1) == (True, "property")   # not exactly _Plain
    assert core.slot_access(_Sub, ("a", "b"), s, 0)[0] is False              # b is no member of _Sub
    h = _Hooked()
    assert core.slot_access(_Hooked, ("a",), h, 0, 7) == (False, None) and h.a == ("hooked", 7)
    o.c = 3
    assert core.slot_access(_Plain, ("c",), o, 0) == (False, 3)                 # not a slot
    del o.a
    with pytest.raises(AttributeError):
        core.slot_access(_Plain, ("a",), o, 0)


def test_a_comparison_that_changes_the_heap_fails_as_heapq_does():
    """An entry whose comparison runs Python code that resizes the queue: heapq raises
    RuntimeError; so does the compiled heap (its guard), in push and in pop."""
    core = emu_fast.require()

    class Sneaky(int):
        queue = None

        def __lt__(self, other):
            if Sneaky.queue is not None:
                Sneaky.queue.append((0, 0, "", "x", ()))
            return int(self) < int(other)

        def __radd__(self, other):          # (now + delay stays a Sneaky)
            return Sneaky(other + int(self))

    outcomes = {}
    for name, cls, op in (("py", Scheduler, lambda s, a: getattr(s, a[0])(*a[1:])),
                          ("c", core.FastScheduler, lambda s, a: core.sched_op(s, a[0], a[1:]))):
        s = _new(cls)
        got = []
        for t in (5, 3, 8, 1):
            op(s, ("at", Sneaky(t), "k"))
        Sneaky.queue = s.queue
        try:
            for t in (4, 2):
                got.append(_outcome(lambda: op(s, ("at", Sneaky(t), "k"))))
            got.append(_outcome(lambda: op(s, ("pop",))))
        finally:
            Sneaky.queue = None
        got.append(len(s.queue))
        outcomes[name] = got
    assert outcomes["c"] == outcomes["py"]
    assert ("error", "RuntimeError", "list changed size during iteration") in outcomes["py"]
