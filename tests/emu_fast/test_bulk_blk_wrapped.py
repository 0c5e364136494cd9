"""The bulk core's block layer (emu_fast/_bulk_blk.pyx) runs a raw image's paths it does not model
(_other -> _wrapped: the compiled engine's handler) while other requests and aios are still C
records (_vr_*, _va_*).  Those records must become the Python engine's dicts first, in its order
(_wrapped's _va_flush/_vr_flush, a handler's own write-back, _latency's before Python code runs,
_vr_make's and _va_put's when a slot is taken), and the stretch must leave exactly the Python
engine's state: the same reqs and aios (keys, order, values) and counters after every chunk,
the same guest RAM, image bytes, digest and stop steps.

Each case keeps many reads and writes in flight (queue depth > 1, mixed with flushes,
discards and write-zeroes) and puts one twist on both machines alike, so that some events take a
wrapped path with records alive: every file.co_entry (aio ids beyond what the core keeps in
C), a read-only node (writes fail in bdrv.co_entry), a device longer than the block backend
(requests beyond it fail in blk.co_entry), sector 0 of a probed raw image (raw.co_entry),
fault rules that fire (file.aio_worker), writethrough (FUA), a Python latency model or rand
that looks at reqs and aios, an rng state beyond 64 bits.
"""
from __future__ import annotations

import dataclasses
import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.block.latency import LatencyModel
from tests.emu_fast.test_differential import DISK, SETTINGS, machine, snapshot
from tests.strategies import io_ops, workload_text

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")

MiB = 1 << 20
TWISTS = ("next_aio", "read_only", "short", "sector0", "fault", "writethrough", "peek_latency",
          "peek_rand", "peek_rng", "big_rng")
# the event kind each twist sends through _wrapped at least once (None: no wrapped path)
EXPECT = {"next_aio": "file.co_entry", "read_only": "bdrv.co_entry", "short": "blk.co_entry",
          "sector0": "raw.co_entry", "fault": "file.aio_worker", "writethrough": None,
          "peek_latency": None, "peek_rand": None, "peek_rng": None, "big_rng": None}


def _records_wl(items, depth: int) -> str:
    """A workload with many reads and writes in flight: the items, each write followed by a
    read of the same range and a second write farther on (a guest timer pending at the end
    keeps the stretches long)."""
    lines = [f"queue-depth {depth}"]
    for i, (op, blk, n) in enumerate(items):
        lines.append(workload_text([(op, blk, n)]).strip())
        if op == "write":
            lines.append(f"read {blk * 4096} {n * 512}")
            lines.append(f"write {((blk * 37 + i * 11) % 900) * 4096} 4096")
    return "\n".join(lines + ["wait", "at 100ms"]) + "\n"


def _peek_int(m, seen: list, v: int) -> int:
    """v as an rng state whose "+" (splitmix64's first step, in Machine.rand) is Python code that
    looks at reqs and aios"""
    class PeekInt(int):
        def __add__(self, other):
            seen.append(("rng", repr(m.block.reqs), repr(m.block.aios)))
            return int(self) + other
    return PeekInt(v)


def _twist(m, twist: str, seen: list) -> None:
    """Put the twist on m (before it runs)."""
    blk = m.block
    if twist == "next_aio":             # (aio ids from 2**62 on: file.co_entry runs wrapped)
        blk.next_aio = 1 << 62
    elif twist == "read_only":          # (the device still takes writes: bdrv.co_entry -EPERM)
        blk.read_only = True
    elif twist == "short":              # (the device's capacity stays DISK: blk.co_entry -EIO)
        blk.length = DISK // 2 + 4096
    elif twist == "fault":
        blk.faults[:] = [{"op": "write", "start": 64 * 1024, "end": 2 * MiB, "errno": errno.EIO,
                          "count": 3},
                         {"op": "read", "start": 0, "end": 3 * MiB, "errno": errno.ENOSPC,
                          "count": -1},
                         {"op": "flush", "start": 0, "end": 0, "errno": errno.EIO, "count": 1}]
    elif twist == "peek_latency":       # (Python code the core calls: it sees reqs and aios)
        @dataclasses.dataclass(frozen=True)
        class Peek(LatencyModel):
            def cost(self, op, nbytes, noise):
                seen.append((op, repr(m.block.reqs), repr(m.block.aios)))
                return LatencyModel.cost(self, op, nbytes, noise)
        m.latency = Peek()
    elif twist == "peek_rand":          # (an instance's own rand: Python code too)
        rand = m.rand

        def peek():
            seen.append((repr(m.block.reqs), repr(m.block.aios)))
            return rand()
        m.rand = peek
    elif twist == "big_rng":            # (rand in Python once: the state is masked to 64 bits)
        m.rng = (1 << 70) + 12345
    elif twist == "peek_rng":           # (again after every chunk: see _agree)
        m.rng = _peek_int(m, seen, m.rng)


def _build(tmp, wl: str, twist: str, cfg: dict, seen: list):
    cfg = dict(cfg)
    if twist == "writethrough":
        cfg["cache"] = "writethrough"
    m = machine(tmp, "raw", "", wl, cfg)
    _twist(m, twist, seen)
    return m


def _agree(tmp, wl: str, twist: str, cfg: dict, chunks) -> None:
    """Run the Python engine and the fast one side by side, chunk by chunk (no observer:
    the bulk core runs), comparing the block layer's dicts and the whole state each time."""
    from emu_fast import _bulk, _bulk_blk
    seen_a: list = []
    seen_b: list = []
    a = _build(tmp, wl, twist, cfg, seen_a)
    b = _build(tmp, wl, twist, cfg, seen_b)
    _bulk.reset_stats()
    _bulk_blk.reset_counts()
    for k in list(chunks) + [None]:
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        assert ra == rb
        assert b.cur == a.cur                                       # (the last record)
        assert repr(a.block.reqs) == repr(b.block.reqs), a.steps     # (keys, order, values)
        assert repr(a.block.aios) == repr(b.block.aios), a.steps
        assert (a.block.next_req, a.block.next_aio, a.block.active_flush, a.block.flush_queue,
                a.block.write_gen, a.block.flushed_gen, a.block.faults, a.rng) == \
            (b.block.next_req, b.block.next_aio, b.block.active_flush, b.block.flush_queue,
             b.block.write_gen, b.block.flushed_gen, b.block.faults, b.rng)
        assert seen_a == seen_b
        assert snapshot(a) == snapshot(b)
        if ra == "end":
            break
        if twist == "peek_rng":
            a.rng = _peek_int(a, seen_a, a.rng)
            b.rng = _peek_int(b, seen_b, b.rng)
    assert a.digest() == b.digest()
    assert not _bulk.stats()["bails"]
    hits = _bulk_blk.cache_hits()
    assert hits["vreq"] > 0                     # (requests were kept as records)
    if EXPECT[twist]:
        assert _bulk_blk.counts(wrapped=True).get(EXPECT[twist], 0) > 0, \
            _bulk_blk.counts(wrapped=True)
    if twist != "short":                # (FUA and the rest of blk.co_entry: natively)
        assert _bulk_blk.counts(wrapped=True).get("blk.co_entry", 0) == 0
    if twist.startswith("peek"):
        assert len(seen_a) > (0 if twist == "peek_rng" else 5)


@settings(**{**SETTINGS, "max_examples": 40})
@given(twist=st.sampled_from(TWISTS),
       items=io_ops(max_size=10, sectors=(1, 8, 9, 16)),
       depth=st.sampled_from([4, 8, 16, 32]),
       discard=st.sampled_from(["ignore", "unmap"]),
       chunks=st.lists(st.integers(1, 200), min_size=0, max_size=4))
def test_bulk_blk_wrapped_paths_with_records_alive(tmp_path_factory, twist, items, depth, discard,
                                                   chunks):
    """Random raw workloads (the tail: sector 0, and requests beyond half the disk) with one
    twist: the same dicts, state and stops as the Python engine after every chunk."""
    tmp = tmp_path_factory.mktemp("wrapped")
    items = list(items) + [("write", 0, 8), ("write", 5, 16), ("read", 2, 8), ("read", 600, 16),
                          ("write", 800, 8)]
    _agree(tmp, _records_wl(items, depth), twist, dict(discard=discard), chunks)


# every twist at least once, on one fixed workload with flushes, discards and write-zeroes
FIXED = [("write", 3, 8), ("read", 9, 16), ("flush", 0, 0), ("discard", 12, 8),
         ("write-zeroes", 20, 16), ("write", 0, 1), ("read", 0, 8), ("write", 40, 16),
         ("flush", 0, 0), ("write", 63, 9), ("discard", 1, 8)]


@pytest.mark.parametrize("twist", TWISTS)
@pytest.mark.parametrize("chunks", [(), (7, 23, 61), (13,) * 400], ids=["whole", "some", "dense"])
def test_bulk_blk_each_twist(tmp_path, twist, chunks):
    """Every twist, in one run and chunk by chunk (its wrapped kind must run; blk.co_entry,
    FUA included, stays native but for requests beyond the backend)."""
    _agree(tmp_path, _records_wl(FIXED, 16), twist, dict(discard="unmap"), chunks)


def _slow_big_wl(n: int, every: int, big: int) -> str:
    """Small reads and writes at queue depth 32, with a big write every `every` requests: made
    slow by the latency model's per-byte cost, each stays in flight while more than 64 newer
    requests and aios come and go (the records' slots, bid & 63 and aid & 63, are then
    taken by an older one when a new one comes)."""
    lines = ["queue-depth 32"]
    for i in range(n):
        if i % every == 0:
            lines.append(f"write {(i % 50) * 65536} {big}")
        else:
            lines.append(f"{'read' if i % 2 else 'write'} {(i * 7919 % 900) * 4096} 512")
    return "\n".join(lines + ["wait", "at 100ms"]) + "\n"


@settings(**{**SETTINGS, "max_examples": 10})
@given(every=st.sampled_from([17, 40, 60]), big=st.sampled_from([32768, 65536]),
       twist=st.sampled_from([None, "next_aio_edge", "fault"]),
       chunks=st.lists(st.integers(1, 400), min_size=0, max_size=3))
def test_bulk_blk_records_whose_slot_is_taken(tmp_path_factory, every, big, twist, chunks):
    """An old request's and aio's record still alive when a new one needs its slot (_vr_make,
    _va_put: the records go to the dicts first)."""
    from emu_fast import _bulk, _bulk_blk
    tmp = tmp_path_factory.mktemp("slots")
    wl = _slow_big_wl(200, every, big)
    cfg = dict(latency=LatencyModel(ps_per_byte=20000))
    a = machine(tmp, "raw", "", wl, dict(cfg))
    b = machine(tmp, "raw", "", wl, dict(cfg))
    for m in (a, b):
        if twist == "next_aio_edge":    # (aio ids cross 2**62 mid-run: co_entry goes wrapped)
            m.block.next_aio = (1 << 62) - 150
        elif twist == "fault":
            m.block.faults[:] = [{"op": "write", "start": 0, "end": 1 << 62, "errno": errno.EIO,
                                  "count": 5}]
    _bulk.reset_stats()
    _bulk_blk.reset_counts()
    for k in list(chunks) + [None]:
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        assert ra == rb
        assert repr(a.block.reqs) == repr(b.block.reqs), a.steps
        assert repr(a.block.aios) == repr(b.block.aios), a.steps
        assert (a.block.next_req, a.block.next_aio, a.rng) == (b.block.next_req, b.block.next_aio, b.rng)
        assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()
    assert not _bulk.stats()["bails"]
    assert _bulk_blk.cache_hits()["vreq"] > 100 and _bulk_blk.cache_hits()["virtual"] > 100


@pytest.mark.parametrize("how", ["stepping", "bulk_wrapped", "bulk"])
def test_an_instance_rand_is_called_by_every_engine(tmp_path, how):
    """A machine's own rand (m.rand = f: Machine's __dict__) is what file_posix.submit calls on
    the Python engine; the compiled engine's file.co_entry (emu_fast._support.rand, run step by
    step or by the bulk core through _wrapped) and the bulk core's own (_latency) call it too."""
    wl = "queue-depth 8\n" + "".join(f"write {i * 12288} 4096\nread {i * 8192} 8192\n"
                                     for i in range(12)) + "flush\nwait\n"
    runs = {}
    for eng in ("py", "fast"):
        m = machine(tmp_path, "raw", "", wl, {})
        calls: list = []

        def rand(m=m, calls=calls):
            calls.append(len(m.block.reqs))
            return 1000 + 7 * len(calls)
        m.rand = rand
        if how == "bulk_wrapped":
            m.block.next_aio = 1 << 62
        observer = (lambda rec: False) if how == "stepping" else None
        assert engine.run(m, eng, None, observer) == "end"
        runs[eng] = (calls, snapshot(m), m.rng)
    assert len(runs["py"][0]) > 10 and runs["py"][2] == 0      # (Machine.rand never ran)
    assert runs["py"] == runs["fast"]
