"""The guest bulk handlers' per-stretch shortcuts (emu_fast/_bulk_guest.pyx) against the Python
engine: values kept in C for a stretch are the Python engine's when it ends, and a value of an
unexpected type takes the old path."""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_bulk_guest import run_bulk, run_py
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
