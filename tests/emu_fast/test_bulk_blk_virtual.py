"""The bulk core's block layer keeps file-posix's read, write and flush aios (_va_*) and a raw
image's read and write requests (_vr_*, made by _bulk_dev's submit_requests) as C records while
a stretch runs (emu_fast/_bulk_blk.pyx): the ones still alive must become exactly the dicts
file_posix.submit and backend.blk_aio_submit make, in aios and reqs in the order the Python
engine has them, whenever Python code could look (a stretch's end; a compiled or Python
handler run for a path the native handlers do not model; a flush's, discard's or
write-zeroes' real request or aio put after them; a path run on the dict: FUA, a fault)."""
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
# among them ("at": a guest timer pending keeps the stretches long)
WL = "\n".join(["queue-depth 16"]
               + [f"write {(i * 7919 % 900) * 4096} 4096\nread {(i * 104729 % 900) * 4096} 8192"
                  + ("\ndiscard %d 4096" % ((i * 31 % 900) * 4096) if i % 3 == 0 else "")
                  + ("\nwrite-zeroes %d 8192" % ((i * 17 % 900) * 4096) if i % 4 == 1 else "")
                  + ("\nflush" if i % 5 == 2 else "")
                  for i in range(24)] + ["wait", "at 100ms"]) + "\n"
# every write in [0, 1 MiB) fails: its aio_worker runs the compiled handler, which reads
# aios[aid] (other aios alive then)
FAULT = {"op": "write", "start": 0, "end": 1 << 20, "errno": errno.EIO, "count": -1}


@pytest.mark.parametrize("case", ["plain", "fault", "writethrough"])
@pytest.mark.parametrize("chunk", [5, 13, 29, None])
def test_bulk_blk_records_become_the_same_dicts(tmp_path, case, chunk):
    from emu_fast import _bulk_blk
    cfg = dict(discard="unmap")
    if case == "fault":
        cfg["faults"] = (dict(FAULT),)
    if case == "writethrough":      # (every write is FUA: its request runs on the dict)
        cfg["cache"] = "writethrough"
    a = machine(tmp_path, "raw", "", WL, dict(cfg))
    b = machine(tmp_path, "raw", "", WL, dict(cfg))
    _bulk_blk.reset_counts()
    alive = 0
    for _ in range(5000):
        ra, rb = engine.run(a, "py", chunk), engine.run(b, "fast", chunk)
        assert ra == rb
        assert repr(a.block.aios) == repr(b.block.aios), a.steps     # (key order, values)
        assert repr(a.block.reqs) == repr(b.block.reqs), a.steps
        assert (a.block.next_aio, a.block.next_req) == (b.block.next_aio, b.block.next_req)
        alive += bool(a.block.aios) + bool(a.block.reqs)
        if ra != "steps":
            break
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    hits = _bulk_blk.cache_hits()
    assert hits["virtual"] > 10 and hits["vreq"] > 10      # (records made)
    if chunk is not None:
        assert alive > 3 and hits["materialized"] > 0 and hits["vreq_dicts"] > 0
    if case == "fault":
        assert _bulk_blk.counts(wrapped=True).get("file.aio_worker", 0) > 0
    if case == "writethrough":
        assert hits["vreq_dicts"] > 0


def test_bulk_blk_no_request_records_for_qcow2(tmp_path):
    """(qcow2's compute reads the request's qiov from reqs: its requests stay dicts)"""
    from emu_fast import _bulk_blk
    a = machine(tmp_path, "qcow2", "", WL, dict(discard="unmap"))
    b = machine(tmp_path, "qcow2", "", WL, dict(discard="unmap"))
    _bulk_blk.reset_counts()
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert _bulk_blk.cache_hits()["vreq"] == 0


def test_bulk_blk_python_latency_model_sees_the_dicts(tmp_path):
    """A latency model of its own (Python code, called while the stretch runs) sees aios and
    reqs as the Python engine has them when it is asked (the records become dicts first)."""
    import dataclasses

    from emu.block.latency import LatencyModel

    seen: dict = {}

    def model(m, key):
        @dataclasses.dataclass(frozen=True)
        class Peek(LatencyModel):
            def cost(self, op, nbytes, noise):
                seen.setdefault(key, []).append((repr(m.block.reqs), repr(m.block.aios)))
                return LatencyModel.cost(self, op, nbytes, noise)
        m.latency = Peek()

    a = machine(tmp_path, "raw", "", WL, dict(discard="unmap"))
    b = machine(tmp_path, "raw", "", WL, dict(discard="unmap"))
    model(a, "py")
    model(b, "fast")
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert len(seen["py"]) > 20
    assert seen["py"] == seen["fast"]
