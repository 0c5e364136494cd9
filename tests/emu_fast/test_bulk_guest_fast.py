"""The guest bulk handlers' per-stretch shortcuts (emu_fast/_bulk_guest.pyx) against the Python
engine: values kept in C for a stretch are the Python engine's when it ends, and a value of an
unexpected type takes the old path."""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_bulk_guest import bench_pair, run_bulk, run_py
from tests.emu_fast.test_differential import machine, snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

_bulk = pytest.importorskip("emu_fast._bulk")
gmod = pytest.importorskip("emu_fast._bulk_guest")

WL = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 12k\n"
                                 for i in range(6)) + "flush\nwait\nwrite 65536 64k\nwait\n"


def _to(a, b, stop, chunk):
    engine.run(a, "py", stop - a.steps)
    while b.steps < stop:
        if _bulk.run(b, min(chunk, stop - b.steps)) == 0:
            emu_fast.step(b)
    assert a.steps == b.steps == stop


@pytest.mark.parametrize("cfg", [{}, {"event_idx": False}])
@pytest.mark.parametrize("chunk", [3, 40, 10**6])
def test_kick_counters_added_at_each_stretch_end(tmp_path, cfg, chunk):
    """m.counters' kicks and kicks_suppressed are counted in C within a stretch and are the
    Python engine's at the end of every stretch (the compiled engine's steps between read and
    change them), with nothing left uncounted."""
    a = machine(tmp_path, "raw", "", WL, cfg)
    b = machine(tmp_path, "raw", "", WL, cfg)
    before = gmod.kick_stats()[0]
    for stop in (60, 131, 200, 277):
        _to(a, b, stop, chunk)
        assert a.counters == b.counters, stop
        assert list(a.counters) == list(b.counters)
        assert gmod.kick_stats()[1] == 0
    run_py(a)
    run_bulk(b, chunk)
    assert a.counters == b.counters and a.counters["kicks"] > 0
    assert snapshot(a) == snapshot(b)
    assert gmod.kick_stats()[0] > before


class Tally:
    """a counter that is not an int: remembers each increment (so n += 1 twice is not n += 2)"""

    def __init__(self, hist=()):
        self.hist = hist

    def __add__(self, n):
        return Tally(self.hist + (n,))

    def __eq__(self, other):
        return type(other) is Tally and other.hist == self.hist

    __hash__ = None


def test_kick_counters_of_another_type_incremented_at_once(tmp_path):
    """An entry that is not an exact int when the stretch starts is incremented by each step
    (its own +), as the Python engine does, not once by the stretch's total."""
    a = machine(tmp_path, "raw", "", WL, {})
    b = machine(tmp_path, "raw", "", WL, {})
    for m in (a, b):
        m.counters["kicks"] = Tally()
    engine.run(a, "py", 400)
    while b.steps < 400:
        if _bulk.run(b, 400 - b.steps) == 0:
            emu_fast.step(b)
    assert a.steps == b.steps
    assert len(a.counters["kicks"].hist) > 3
    assert a.counters == b.counters
    assert bytes(a.mem.ram) == bytes(b.mem.ram)


# -- the scatterlists (rq["data_sgs"], rq["sgs"], rq["roles"]) kept in C -------------------------

SEQ = ("queue-depth 32\n" + "".join(f"write {i * 4096} 4k\nread {(i + 100) * 8192} 4k\n"
                                    for i in range(60)) + "wait\nread 0 64k\nwrite 8192 12k\nwait\n")
STOPS = (150, 433, 700, 1201, 1650, 2222)


def agree_at_stops(tmp_path, cfg, chunk, view) -> None:
    """SEQ on both engines, the bulk core's stretches at most chunk steps: view(machine) is
    the same on both at each of STOPS and at the end, and so are the end's snapshots."""
    a = machine(tmp_path, "raw", "", SEQ, cfg)
    b = machine(tmp_path, "raw", "", SEQ, cfg)
    for stop in STOPS:
        _to(a, b, stop, chunk)
        assert view(a) == view(b), stop
    run_py(a)
    run_bulk(b, chunk)
    assert view(a) == view(b)
    assert snapshot(a) == snapshot(b)


@pytest.mark.parametrize("cfg", [{}, {"indirect": False}])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 10**6])
def test_scatterlists_kept_in_c_are_the_python_engines(tmp_path, cfg, chunk):
    """Merged requests of 1 to 16 data segments: up to PLAN_MAX (8) their scatterlists are kept
    in C and made lists only where a stretch ends with the request alive (the compiled engine
    reads them); at every stop the request dicts are the Python engine's, values and key order,
    and the run ends the same."""
    p0 = gmod.plan_stats()
    agree_at_stops(tmp_path, cfg, chunk, lambda m: (
        m.guest.blkmq.rqs, [list(r) for r in m.guest.blkmq.rqs.values()],
        [[type(x) for x in r.values()] for r in m.guest.blkmq.rqs.values()], snapshot(m)))
    kept, made, lists = (x - y for x, y in zip(gmod.plan_stats(), p0))
    assert kept > 0 and lists > 0          # (more than 8 segments: the list path)
    assert made > 0                        # stretches ended between map_data and the request's end


def test_freed_requests_never_make_their_scatterlists(tmp_path):
    """bench's 4 KiB random writes at queue depth 1 (long stretches): nearly every request's
    scatterlists stay in C until the request is freed (never made lists), and the run ends as
    on the Python engine."""
    a, b = bench_pair(tmp_path, 60)
    engine.run(a, "py")
    p0 = gmod.plan_stats()
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    assert bytes(a.mem.ram) == bytes(b.mem.ram)
    kept, made, lists = (x - y for x, y in zip(gmod.plan_stats(), p0))
    assert kept >= 50 and made < kept and lists == 0, (kept, made, lists)   # (3 lists a request)


# -- the page allocator's large / slab_objs entries kept in C within a stretch -------------------

def _alloc_dicts(m):
    p = m.pages
    return ([(k, v) for k, v in p.large.items()], [(k, v) for k, v in p.slab_objs.items()],
            [(k, list(v)) for k, v in p.slab_free.items()], bytes(p.used))


@pytest.mark.parametrize("cfg", [{}, {"indirect": False}])
@pytest.mark.parametrize("chunk", [1, 2, 5, 13, 10**6])
def test_allocator_entries_kept_in_c_are_the_python_engines(tmp_path, cfg, chunk):
    """Buffers (alloc_pages) and indirect tables (kmalloc) allocated and freed within a stretch
    never reach large / slab_objs; those alive when it ends are stored there: at every stop
    the allocator's dicts are the Python engine's, values and key order."""
    s0 = gmod.alloc_stats()
    agree_at_stops(tmp_path, cfg, chunk, _alloc_dicts)
    kept, dropped, stored = (x - y for x, y in zip(gmod.alloc_stats(), s0))
    assert kept > 0 and stored > 0, (kept, dropped, stored)
    if chunk > 10**5 or not cfg:
        assert dropped > 0                 # (freed in the stretch that allocated them)


@pytest.mark.parametrize("which", ["large", "slab_objs"])
def test_allocator_key_already_held_is_updated_in_place(tmp_path, which):
    """A key the dict already holds (a stale entry for the next buffer's page or the next slab
    object, an entry after it) is updated where it is, then popped when freed in the same
    stretch, as the Python engine does -- not kept in C as a new key (which would leave the
    stale entry behind, before the other)."""
    a, b = bench_pair(tmp_path, 40)
    _to(a, b, 300, 10**6)
    base = len(a.pages.large)
    while len(a.pages.large) >= base:       # (to a step where a buffer was just freed)
        _to(a, b, a.steps + 1, 1)
    for m in (a, b):
        p = m.pages
        if which == "large":
            p.large[p.used.find(b"\0") << 12] = 99         # the next buffer's page
        else:
            for c, f in p.slab_free.items():                # the next object of every class
                if f:
                    p.slab_objs[f[-1]] = 99
        getattr(p, which)[1 << 40] = 7          # (an entry after it: the order shows)
    assert _alloc_dicts(a) == _alloc_dicts(b)
    k0 = gmod.alloc_stats()[0]
    engine.run(a, "py")
    engine.run(b, "fast")
    assert gmod.alloc_stats()[0] > k0
    assert _alloc_dicts(a) == _alloc_dicts(b)
    assert a.steps == b.steps and bytes(a.mem.ram) == bytes(b.mem.ram)


# -- the process's op_state entries kept in C within a stretch -----------------------------------

@pytest.mark.parametrize("cfg", [{}, {"indirect": False}])
@pytest.mark.parametrize("chunk", [1, 3, 13, 10**6])
def test_op_states_kept_in_c_are_the_python_engines(tmp_path, cfg, chunk):
    """An operation's op_state entry made and popped within a stretch never reaches the dict;
    those of operations in flight when it ends are stored there: at every stop op_state is the
    Python engine's (keys in order, values)."""
    a = machine(tmp_path, "raw", "", SEQ, cfg)
    b = machine(tmp_path, "raw", "", SEQ, cfg)
    s0 = gmod.op_state_stats()
    for stop in (150, 433, 700, 1201, 1650, 2222):
        _to(a, b, stop, chunk)
        assert list(a.guest.proc.op_state.items()) == list(b.guest.proc.op_state.items()), stop
    run_py(a)
    run_bulk(b, chunk)
    assert snapshot(a) == snapshot(b)
    kept, stored = (x - y for x, y in zip(gmod.op_state_stats(), s0))
    assert kept > 0 and stored > 0, (kept, stored)


def test_op_state_key_already_held_is_updated_in_place(tmp_path):
    """A stale op_state entry for the next operation's pc (an entry after it) is updated where
    it is and popped when the operation completes in the same stretch, as the Python engine
    does."""
    a, b = bench_pair(tmp_path, 40)
    _to(a, b, 300, 10**6)
    for m in (a, b):
        m.guest.proc.op_state[m.guest.proc.pc] = {"stale": 1}
        m.guest.proc.op_state[10**9] = {"after": 2}
    assert list(a.guest.proc.op_state.items()) == list(b.guest.proc.op_state.items())
    k0 = gmod.op_state_stats()[0]
    engine.run(a, "py")
    engine.run(b, "fast")
    assert gmod.op_state_stats()[0] > k0
    assert list(a.guest.proc.op_state.items()) == list(b.guest.proc.op_state.items())
    assert a.steps == b.steps and bytes(a.mem.ram) == bytes(b.mem.ram)
