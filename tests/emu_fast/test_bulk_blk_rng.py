"""The bulk core's block layer draws the latency noise from m.rng in C and keeps the int it last
stored there with its value (emu_fast/_bulk_blk.pyx, _latency): a run whose m.rng is replaced
between stretches (another value, or an equal int that is another object) must still draw
exactly what Machine.rand draws on the Python engine.
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


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("how", ["other", "equal", "big"])
def test_bulk_blk_latency_sees_a_replaced_rng(tmp_path, fmt, how):
    a = machine(tmp_path, fmt, "", WL, {})
    b = machine(tmp_path, fmt, "", WL, {})
    for i in range(200):
        ra, rb = engine.run(a, "py", 9), engine.run(b, "fast", 9)
        assert ra == rb
        assert (a.steps, a.sim.now, a.rng) == (b.steps, b.sim.now, b.rng)
        if ra != "steps":
            break
        if how == "other":              # another value
            a.rng = b.rng = (a.rng * 31 + i) % (1 << 64)
        elif how == "equal":            # the same value, another int object
            a.rng = int(str(a.rng))
            b.rng = int(str(b.rng))
        elif i % 3 == 0:                # beyond 64 bits: the Python methods decide
            a.rng = b.rng = a.rng + (1 << 64) * (i + 1)
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b) and a.rng == b.rng
