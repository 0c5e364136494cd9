"""The bulk core's block layer reads the request, aio and coroutine dicts' fields in place
(emu_fast/_bulk_blk.pyx _rg/vbb_at: the entry at the display's position, when it holds the key)
and finds the device's completion kinds by identity: the runs must agree with the Python engine
when the reads are answered in place, and when the dicts' keys are not where the displays put
them (the lookup then answers)."""
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


def _swap(d: dict, k1: str, k2: str) -> None:
    """d rebuilt with the entries of keys k1 and k2 in each other's place (same contents)"""
    items = list(d.items())
    keys = [k for k, _ in items]
    if k1 in keys and k2 in keys:
        i, j = keys.index(k1), keys.index(k2)
        items[i], items[j] = items[j], items[i]
        d.clear()
        d.update(items)


def _reorder(m) -> int:
    """Every in-flight request, aio and coroutine dict rebuilt with two of its int fields in
    each other's place (the positions the displays give now hold the other key: a read that
    did not check the key would take the wrong int)."""
    n = 0
    for d in list(m.block.reqs.values()):
        _swap(d, "offset", "bytes")
        _swap(d, "id", "ret")
        n += 1
    for d in list(m.block.aios.values()):
        _swap(d, "offset", "bytes")
        n += 1
    for d in list((getattr(m.fmt, "cos", None) or {}).values()):
        _swap(d, "pi", "ret")
        _swap(d, "remaining", "qoff")
        n += 1
    return n


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bulk_blk_reads_in_place(tmp_path, fmt):
    from emu_fast import _bulk_blk
    a = machine(tmp_path, fmt, "", WL, {})
    b = machine(tmp_path, fmt, "", WL, {})
    _bulk_blk.reset_counts()
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    assert _bulk_blk.cache_hits()["at"] > 10         # (the fields were read in place)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bulk_blk_reads_moved_keys(tmp_path, fmt):
    a = machine(tmp_path, fmt, "", WL, {})
    b = machine(tmp_path, fmt, "", WL, {})
    moved = 0
    for _ in range(400):
        ra, rb = engine.run(a, "py", 7), engine.run(b, "fast", 7)
        assert ra == rb
        assert repr(a.block.reqs) == repr(b.block.reqs) and repr(a.block.aios) == repr(b.block.aios)
        na, nb = _reorder(a), _reorder(b)
        assert na == nb
        moved += na
        if ra != "steps":
            break
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    assert moved > 5
