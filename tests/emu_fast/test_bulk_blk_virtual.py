"""The bulk core's block layer keeps file-posix's read, write and flush aios as C records
while a stretch runs (emu_fast/_bulk_blk.pyx, _va_*): the aios still alive must become exactly
the dicts file_posix.submit makes, in aios in the order the Python engine has them, whenever
Python code could look (a stretch's end; a compiled or Python handler run for a path the native
handlers do not model; a discard's or write-zeroes' real aio put after them)."""
from __future__ import annotations

import errno

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_differential import machine, snapshot

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")

# writes, reads and flushes in flight together, with discards and write-zeroes (real aios)
# among them
WL = "\n".join(["queue-depth 8"]
               + [f"write {(i * 7919 % 900) * 4096} 4096\nread {(i * 104729 % 900) * 4096} 8192"
                  + ("\ndiscard %d 4096" % ((i * 31 % 900) * 4096) if i % 3 == 0 else "")
                  + ("\nwrite-zeroes %d 8192" % ((i * 17 % 900) * 4096) if i % 4 == 1 else "")
                  + ("\nflush" if i % 5 == 2 else "")
                  for i in range(24)] + ["wait"]) + "\n"
# every write in [0, 1 MiB) fails: its aio_worker runs the compiled handler, which reads
# aios[aid] (other aios alive then)
FAULT = {"op": "write", "start": 0, "end": 1 << 20, "errno": errno.EIO, "count": -1}


@pytest.mark.parametrize("fault", [False, True])
@pytest.mark.parametrize("chunk", [3, 11, None])
def test_bulk_blk_records_become_the_same_aios(tmp_path, fault, chunk):
    from emu_fast import _bulk_blk
    cfg = dict(discard="unmap")
    if fault:
        cfg["faults"] = (dict(FAULT),)
    a = machine(tmp_path, "raw", "", WL, dict(cfg))
    b = machine(tmp_path, "raw", "", WL, dict(cfg))
    _bulk_blk.reset_counts()
    alive = 0
    for _ in range(5000):
        ra, rb = engine.run(a, "py", chunk), engine.run(b, "fast", chunk)
        assert ra == rb
        assert repr(a.block.aios) == repr(b.block.aios), a.steps     # (key order, values)
        assert a.block.next_aio == b.block.next_aio
        alive += bool(a.block.aios)
        if ra != "steps":
            break
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    hits = _bulk_blk.cache_hits()
    assert hits["virtual"] > 20                      # (records made)
    if chunk is not None:
        assert alive > 3 and hits["materialized"] > 0   # (some still alive at a stretch's end)
    if fault:
        assert _bulk_blk.counts(wrapped=True).get("file.aio_worker", 0) > 0
