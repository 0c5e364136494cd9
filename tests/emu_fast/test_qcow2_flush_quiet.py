"""qcow2's flush phase in the bulk core (emu_fast/_qcow2.pyx bulk_compute -> _flush_phase: the
driver's _flush_phase with Qcow2Engine.write_caches, cache_write, cache_entry_flush,
cache_flush_dependency and bdrv_flush compiled) against the Python engine: the same plan items
(their keys in order), pending writes, dirty marks and cache dependencies, step by step; and,
when the engine's class no longer has those methods as its module defines them, the methods
themselves run.
"""
from __future__ import annotations

import pytest

from emu import engine
from emu.block.qcow2.engine import Qcow2Engine
from tests.emu_fast.test_bulk_qcow2 import _image, _machine, _mods, _qcow2, pytestmark  # noqa: F401
from tests.emu_fast.test_differential import snapshot
from tests.emu_fast.test_qcow2_quiet import _lockstep

WL = """queue-depth 2
write 0 4096 fill=0x21
write 1048576 8192 fill=0x22
flush
write 4096 4096 fill=0x23
write 3145728 65536 fill=0x24
read 0 8192
flush
write 5242880 512 fill=0x25
flush
flush
write 7340032 4096 fill=0x26
write 2097152 4096 fill=0x27
flush
"""


@pytest.mark.parametrize("cs,lazy,small", [(65536, False, False), (4096, False, True),
                                           (65536, True, False), (4096, True, True)])
def test_quiet_flush_agrees_step_by_step(tmp_path, cs, lazy, small):
    """Every compute step of a write/read/flush workload runs quiet in the core (none through
    the compiled handler's record), and the flushes' plans, pending writes, dirty marks and
    dependencies are the Python engine's after every step (lazy refcounts: the refcount
    blocks stay dirty; small caches: evictions between the flushes)"""
    _bulk, blk = _mods()
    path = _image(tmp_path, cs, 16, lazy, 3)
    caches = (2, 1) if small else (None, None)
    a = _machine(path, WL, *caches, {})
    b = _machine(path, WL, *caches, {})
    blk.reset_counts()
    _qcow2.fast_allocs(True)
    _lockstep(a, b, [7, 11, 2, 3] * 60)
    assert not blk.counts(wrapped=True).get("qcow2.compute"), blk.counts(wrapped=True)
    assert _qcow2.fast_allocs(flushes=True) >= 3


def test_quiet_flush_runs_a_replaced_method(tmp_path, monkeypatch):
    """With Qcow2Engine.cache_write replaced, the quiet flush calls the engine's methods (the
    replacement runs, once per cache a flush writes) and still agrees"""
    calls = []
    orig = Qcow2Engine.cache_write

    def cache_write(self, c):
        calls.append(c.name)
        return orig(self, c)

    path = _image(tmp_path, 65536, 16, False, 3)
    a = _machine(path, WL, None, None, {})
    b = _machine(path, WL, None, None, {})
    monkeypatch.setattr(Qcow2Engine, "cache_write", cache_write)
    ra = engine.run(a, "py")
    py_calls = len(calls)
    del calls[:]
    assert engine.run(b, "fast") == ra
    assert snapshot(a) == snapshot(b)
    assert py_calls > 0 and len(calls) == py_calls, (py_calls, calls)
