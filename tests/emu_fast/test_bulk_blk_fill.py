"""The bulk core's block layer fills its template copies in place (emu_fast/_bulk_blk.pyx,
vbb_fill_values): file.co_entry's aio dict and qcow2.co_entry's coroutine dict must be exactly
the dicts the Python handlers make (file_posix.submit's aio, driver.co_entry's co): the same
values at the same keys, in the same order, as seen mid-run (repr shows the order, nested too).
"""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_differential import machine, snapshot

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")

WL = "\n".join(["queue-depth 4"] + [f"write {(i * 7919 % 900) * 4096} 4096" for i in range(16)]
               + [f"read {(i * 7919 % 900) * 4096} 8192" for i in range(6)] + ["flush", "wait"]) + "\n"


def _inflight(m) -> tuple:
    """The block layer's in-flight dicts as text that shows every dict's key order."""
    return repr(m.block.aios), repr(getattr(m.fmt, "cos", None)), repr(m.block.reqs)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bulk_blk_filled_dicts_same_as_python(tmp_path, fmt):
    from emu_fast import _bulk_blk
    a = machine(tmp_path, fmt, "", WL, {})
    b = machine(tmp_path, fmt, "", WL, {})
    _bulk_blk.reset_counts()
    seen = 0
    for _ in range(400):
        ra, rb = engine.run(a, "py", 5), engine.run(b, "fast", 5)
        assert ra == rb
        assert _inflight(a) == _inflight(b), a.steps
        seen += bool(a.block.aios if fmt == "raw" else getattr(a.fmt, "cos", None))
        if ra != "steps":
            break
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert seen > 5                                 # (stops with the dicts in flight)
    assert _bulk_blk.cache_hits()["fill"] > 0       # (the fill ran)
