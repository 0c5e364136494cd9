"""The bulk core's block layer keeps the aio dicts file.co_entry puts in m.block.aios (discards
and write-zeroes on a raw image: real dicts, not records) in slots while aios is unchanged since
its own last change (_bulk_blk's _ao_*: each insert and pop it makes moves the version it
expects along, _ao_changed): file.aio_worker and file.co_resume then find their aio there.  A
change it makes but does not note would leave the slots unknown: every lookup would miss."""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_differential import machine, snapshot

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")


@pytest.mark.parametrize("depth", [1, 4, 16])
def test_bulk_blk_real_aios_are_found_in_their_slots(tmp_path, depth):
    from emu_fast import _bulk_blk
    wl = f"queue-depth {depth}\n" + "".join(
        f"discard {(i * 7919 % 900) * 4096} 8192\nwrite-zeroes {(i * 104729 % 900) * 4096} 4096\n"
        for i in range(20)) + "wait\nat 100ms\n"
    a = machine(tmp_path, "raw", "", wl, dict(discard="unmap"))
    b = machine(tmp_path, "raw", "", wl, dict(discard="unmap"))
    mx = [0]

    def widest(rec):
        mx[0] = max(mx[0], len(a.block.aios))
        return False
    _bulk_blk.reset_counts()
    assert engine.run(a, "py", None, widest) == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b) and a.digest() == b.digest()
    got = _bulk_blk.counts()
    hits = _bulk_blk.cache_hits()
    assert hits["virtual"] == 0 and not _bulk_blk.counts(wrapped=True)     # (all real dicts)
    assert got["file.aio_worker"] > 30 and got["file.co_resume"] > 30
    assert hits["aio"] >= got["file.aio_worker"] + got["file.co_resume"], (hits, got)
    if depth > 1:
        assert mx[0] > 1                # (several aios in aios at once)
