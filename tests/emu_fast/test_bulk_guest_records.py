"""The guest bulk handlers' per-request objects kept as C records within a stretch
(emu_fast/_bulk_guest.pyx) against the Python engine: what Python can see when a stretch ends
-- dict contents, key order, value types -- is the Python engine's."""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_bulk_guest import bench_pair, run_bulk, run_py
from tests.emu_fast.test_bulk_guest_fast import SEQ, _to, agree_at_stops
from tests.emu_fast.test_differential import snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

gmod = pytest.importorskip("emu_fast._bulk_guest")

# SEQ, queue depth 32: many operations in flight when a stretch ends; reads (their sha256 and
# status from the record), multi-bio operations (64k and 12k over merged requests)


def _proc(m):
    p = m.guest.proc
    return ([(k, list(v.items()), [type(x) for x in v.values()]) for k, v in p.op_state.items()],
            p.results, p.reads, p.inflight, p.waiting)


@pytest.mark.parametrize("cfg", [{}, {"indirect": False}])
@pytest.mark.parametrize("chunk", [1, 3, 13, 10**6])
def test_op_state_records_are_the_python_engines(tmp_path, cfg, chunk):
    """app.op's op_state entry is a C record until a stretch ends with its operation in flight
    (then the dict {"bios", "status", "buf"} is stored) or it completes (the result and read
    made from the record): at every stop op_state (keys in order, values, their types), the
    results and the reads are the Python engine's."""
    r0 = gmod.op_state_records()
    agree_at_stops(tmp_path, cfg, chunk, _proc)
    recs, made, done = (x - y for x, y in zip(gmod.op_state_records(), r0))
    assert recs > 0 and made > 0, (recs, made, done)
    assert done > 0 or chunk < 50, (recs, made, done)     # (an operation lives ~50 steps)


def test_op_state_records_of_completed_operations_are_never_dicts(tmp_path):
    """bench's 4 KiB random writes at queue depth 1 (long stretches): nearly every operation
    completes from its C record (never made a dict), and the run ends as on the Python
    engine."""
    a, b = bench_pair(tmp_path, 60)
    engine.run(a, "py")
    r0 = gmod.op_state_records()
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    assert bytes(a.mem.ram) == bytes(b.mem.ram) and _proc(a) == _proc(b)
    recs, made, done = (x - y for x, y in zip(gmod.op_state_records(), r0))
    assert recs >= 55 and done >= 50 and made < recs // 4, (recs, made, done)


@pytest.mark.parametrize("chunk", [1, 7, 10**6])
def test_op_state_records_of_split_bios_and_get_id(tmp_path, chunk):
    """A bio cut at max_segments adds one to its operation's bios count (the record made a
    dict first) and GET_ID stores "serial" into its entry: the same op_state, results and run
    as the Python engine."""
    from tests.emu_fast import test_blk_mq as T
    MiB = 1 << 20
    wl = ("write 0 1536k fill=0x5a\nread 0 2M\nget-id\nwrite 0 600k\nwrite 1M 600k\n"
          "wait\nget-id\nread 0 160k\n")
    dev = {"ram_size": 4 * MiB, "seg_max": 3, "lbs": 512, "max_discard_sectors": None,
           "max_write_zeroes_sectors": None, "drop": ()}
    a = T.device_machine(tmp_path, "raw", wl, {"queue_size": 16}, dev)
    b = T.device_machine(tmp_path, "raw", wl, {"queue_size": 16}, dev)
    r0 = gmod.op_state_records()
    for stop in (60, 150, 333):
        _to(a, b, stop, chunk)
        assert _proc(a) == _proc(b), stop
    run_py(a)
    run_bulk(b, chunk)
    assert snapshot(a) == snapshot(b) and a.state() == b.state()
    assert _proc(a) == _proc(b)
    assert any("serial" in r for r in b.guest.proc.results)
    recs, made, _ = (x - y for x, y in zip(gmod.op_state_records(), r0))
    assert recs > 0 and made > 0


def test_op_state_records_take_an_error_status(tmp_path):
    """Requests past the disk's end complete with IOERR within a long stretch: the record's
    status becomes the request's (bio_done), and the results, reads and run are the Python
    engine's."""
    from emu_fast import bench as B
    wl = "queue-depth 1\n" + "".join(
        f"write {k * 8192} 4k\nwrite {B.SIZE + k * 4096} 4k\nread {B.SIZE * 2} 4k\nread {k * 8192} 4k\n"
        for k in range(8))
    a, b = (B._machine(B.make_image(str(tmp_path / f"{e}.raw"), "raw"), wl) for e in ("py", "fast"))
    r0 = gmod.op_state_records()
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    assert bytes(a.mem.ram) == bytes(b.mem.ram) and _proc(a) == _proc(b)
    assert [r["status"] for r in b.guest.proc.results].count("IOERR") == 16
    assert gmod.op_state_records()[2] - r0[2] >= 16


# -- request dicts and completion entries going away, refilled as the next ones -----------------

def _dicts(m):
    import gc
    import sys
    ds = list(m.guest.blkmq.rqs.values()) + list(m.guest.completed)
    return [(list(d.items()), sys.getsizeof(d), gc.is_tracked(d)) for d in ds]


def refills_agree(tmp_path, chunk, view, stats):
    """bench's 4 KiB random writes (120) on both engines, the bulk core's stretches at most
    chunk steps: view(machine) is the same on both at four stops and at the end, and so are
    the end's steps and digest; (the py machine, the fast one, how stats() moved)"""
    a, b = bench_pair(tmp_path, 120)
    s0 = stats()
    for stop in (1000, 2345, 4000, 5555):
        _to(a, b, stop, chunk)
        assert view(a) == view(b), stop
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    assert view(a) == view(b)
    return a, b, [x - y for x, y in zip(stats(), s0)]


@pytest.mark.parametrize("chunk", [7, 10**6])
def test_freed_dicts_refilled_are_new_dicts(tmp_path, chunk):
    """bench's 4 KiB random writes: a request dict freed by end_request and a completion entry
    leaving m.guest.completed are refilled as the next ones; at every stop the live requests and
    the completion entries are the Python engine's (items in order, size, GC tracking)."""
    a, b, (put, got) = refills_agree(tmp_path, chunk, _dicts, gmod.pool_stats)
    assert len(b.guest.completed) == 64
    assert got > 0 and put >= got and (got > 100 or chunk < 50), (put, got)


def test_dicts_held_elsewhere_are_never_refilled(tmp_path):
    """A request dict or completion entry something else still holds when it goes away keeps
    its last contents (never refilled), as on the Python engine."""
    a, b = bench_pair(tmp_path, 150)       # (more than 64: entries leave m.guest.completed)
    held = {id(a): [], id(b): []}
    for stop in range(300, 3000, 97):
        _to(a, b, stop, 10**6)
        for m in (a, b):
            held[id(m)] += list(m.guest.blkmq.rqs.values()) + list(m.guest.completed)
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    ha, hb = held[id(a)], held[id(b)]
    assert len(ha) == len(hb) > 100
    assert [list(d.items()) for d in ha] == [list(d.items()) for d in hb]
