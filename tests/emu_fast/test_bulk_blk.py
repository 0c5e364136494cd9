"""The bulk core's block layer (emu_fast/_bulk_blk.pyx) against the Python engine.

Runs without an observer (engine.run(m, "fast", k) with no on_step) hand stretches of steps to
the bulk core; its block-layer handlers (blk.*, bdrv.*, raw.co_entry, file.*) must leave exactly
the state the Python handlers leave: same digest, guest RAM, image bytes, step count and time,
and the same last record.  The handlers must actually run (counted per kind by the module), and
the paths they do not model (a fault rule that fires, a probed raw image's sector 0, an ignored
discard, a failing qcow2 I/O) run the compiled engine's handler against a recording scheduler
(_bulk_blk._wrapped: no bail) and must still agree.
"""
from __future__ import annotations

import errno
import random

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from tests.emu_fast.test_differential import DISK, SETTINGS, configs, machine, snapshot, workloads

pytestmark = pytest.mark.skipif(
    not emu_fast.available() or "_bulk_blk" not in getattr(emu_fast, "BULK_LAYERS", ()),
    reason="emu_fast (with the bulk core's block layer) is not compiled")

KINDS = ("blk.co_entry", "bdrv.co_entry", "bdrv.co_done", "blk.aio_complete", "raw.co_entry",
         "file.co_entry", "file.aio_worker", "file.co_resume", "file.flush_done")


def _mods():
    from emu_fast import _bulk, _bulk_blk
    return _bulk, _bulk_blk


def _reset():
    bulk, blk = _mods()
    bulk.reset_stats()
    blk.reset_counts()


def _py_kinds(m) -> dict:
    """Run m on the Python engine to the end; {kind: events}."""
    out: dict = {}

    def count(rec):
        out[rec.kind] = out.get(rec.kind, 0) + 1
        return False
    engine.run(m, "py", None, count)
    return out


def _same(a, b, chunks=(None,)):
    """Run a on the Python engine and b on the fast one (no observer), chunk by chunk."""
    for k in chunks:
        assert engine.run(a, "py", k) == engine.run(b, "fast", k)
        assert b.cur == a.cur and b.log.cur is None
        assert snapshot(a) == snapshot(b)
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert a.digest() == b.digest()


@settings(**{**SETTINGS, "max_examples": 30})
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s", "article"]), wl=workloads, cfg=configs,
       chunks=st.lists(st.integers(1, 300), min_size=1, max_size=4), timer=st.booleans())
def test_bulk_blk_same_state_as_python(tmp_path_factory, fmt, wl, cfg, chunks, timer):
    tmp = tmp_path_factory.mktemp("bulkblk")
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    if timer:       # a guest timer pending while the I/O runs: the core takes its completions too
        wl = "queue-depth 16\n" + wl + "at 100ms\n"
    _same(machine(tmp, kind, name, wl, cfg), machine(tmp, kind, name, wl, cfg), chunks)


# ("at" lines keep a guest timer pending, so an I/O completion is seldom the only event in the
# queue: the core leaves such an event, which could be the run's last, to the compiled engine)
def _random_case(seed: int):
    """A random workload and configuration (seeded): 20-60 operations of every kind, sizes up
    to 64 KiB, queue depth 1-16, a guest timer pending (so the core also takes I/O completions)
    or not, on raw or qcow2 (64 KiB or 4 KiB clusters) or the article image."""
    rng = random.Random(seed)
    fmt = rng.choice(["raw", "qcow2", "qcow2s", "article"])
    lines = [f"queue-depth {rng.choice([1, 4, 16])}"]
    for _ in range(rng.randrange(20, 60)):
        k = rng.choice(["write"] * 5 + ["read"] * 3 + ["flush", "discard", "write-zeroes", "wait"])
        if k in ("flush", "wait"):
            lines.append(k)
            continue
        n = rng.choice([512, 4096, 4096, 8192, 12288, 65536])
        off = rng.randrange(0, (DISK - n) // 512) * 512
        if rng.random() < 0.3:
            off = off // 65536 * 65536
        line = f"{k} {off} {n}"
        if k == "write" and rng.random() < 0.3:
            line += f" fill={rng.randrange(256):#x}"
        if k == "write-zeroes" and rng.random() < 0.5:
            line += " unmap"
        lines.append(line)
    if rng.random() < 0.7:
        lines.append("at 500ms")
    cfg = dict(queue_size=rng.choice([16, 256]), indirect=rng.random() < 0.5,
               event_idx=rng.random() < 0.5,
               cache=rng.choice(["writeback", "writeback", "writethrough", "unsafe"]),
               discard=rng.choice(["ignore", "unmap"]), seed=rng.randrange(4))
    if rng.random() < 0.3:
        cfg["faults"] = ({"op": rng.choice(["read", "write", "flush", "discard", "write_zeroes"]),
                          "start": rng.choice([0, 65536, 1 << 20]), "end": rng.choice([1 << 20, 1 << 62]),
                          "errno": rng.choice([errno.EIO, errno.ENOSPC]),
                          "count": rng.choice([-1, 1, 2])},)
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    return kind, "s" if fmt == "qcow2s" else "", "\n".join(lines) + "\n", cfg


@pytest.mark.parametrize("seed", range(20))
def test_bulk_blk_random_workloads(tmp_path, seed):
    kind, name, wl, cfg = _random_case(seed)
    _same(machine(tmp_path, kind, name, wl, cfg), machine(tmp_path, kind, name, wl, cfg),
          (1 + seed * 37 % 500, 900))


WL = """queue-depth 4
write 8192 4096 fill=0x5a
at 1us
write 65536 16384
read 8192 4096
read 0 512
flush
flush
write 1048576 12288 fill=0x11
flush
write-zeroes 20480 8192 unmap
discard 131072 65536
read 1048576 8192
flush
flush
at 3ms
wait
write 4096 4096
read 4096 4096
at 10ms
"""


@pytest.mark.parametrize("cache", ["writeback", "writethrough", "unsafe"])
def test_bulk_blk_kinds_run_in_the_core(tmp_path, cache):
    """Every block-layer kind of a plain raw workload runs in the core (all but a few: a
    stretch never takes the run's last step, nor an event alone in the queue), with no bail."""
    bulk, blk = _mods()
    cfg = dict(cache=cache, discard="unmap")
    ref = _py_kinds(machine(tmp_path, "raw", "", WL, cfg))
    a = machine(tmp_path, "raw", "", WL, cfg)
    b = machine(tmp_path, "raw", "", WL, cfg)
    _reset()
    _same(a, b)
    got = blk.counts()
    bails = bulk.stats()["bails"]
    for kind in KINDS:
        if kind == "file.flush_done" and cache != "writeback":
            continue
        assert ref.get(kind, 0) > 0, kind
        assert got.get(kind, 0) >= ref[kind] * 3 // 4, (kind, got.get(kind), ref[kind])
        assert kind not in bails, (kind, bails)
    assert not blk.counts(wrapped=True)         # all of it natively
    assert set(got) <= set(KINDS)
    assert sum(got.values()) <= bulk.stats()["steps"]


QWL = """queue-depth 16
write 65536 4096 fill=0x33
write 131072 8192
read 0 4096
flush
write 200704 4096
write-zeroes 262144 65536 unmap
discard 393216 65536
read 65536 16384
write 1048576 12288
flush
at 50ms
wait
"""
QCOW2_KINDS = ("blk.co_entry", "bdrv.co_entry", "bdrv.co_done", "blk.aio_complete", "qcow2.co_entry",
               "qcow2.compute", "qcow2.io", "qcow2.worker", "qcow2.io_done")


@pytest.mark.parametrize("name", ["", "s"])
def test_bulk_blk_qcow2_kinds_run_in_the_core(tmp_path, name):
    """On qcow2 (64 KiB and 4 KiB clusters) the generic block layer and the qcow2 driver's
    steps run in the core too."""
    bulk, blk = _mods()
    cfg = dict(discard="unmap")
    ref = _py_kinds(machine(tmp_path, "qcow2", name, QWL, cfg))
    a = machine(tmp_path, "qcow2", name, QWL, cfg)
    b = machine(tmp_path, "qcow2", name, QWL, cfg)
    _reset()
    _same(a, b)
    got = blk.counts()
    wrapped = blk.counts(wrapped=True)
    for kind in QCOW2_KINDS:
        assert got.get(kind, 0) >= ref[kind] * 3 // 4, (kind, got.get(kind), ref[kind])
        assert kind not in bulk.stats()["bails"]
    # the host-I/O steps run natively; compute natively where it decides without the engine
    # (the end of a request, a write turning to its L2 links), through _qcow2.bulk_compute for
    # the read and write phases (no record), else (flush, discard, write-zeroes) the compiled
    # handler
    for kind in ("qcow2.co_entry", "qcow2.io", "qcow2.worker", "qcow2.io_done"):
        assert wrapped.get(kind, 0) == 0, (kind, wrapped)
    quiet = blk.counts(quiet=True)
    assert 0 < wrapped.get("qcow2.compute", 0) <= got["qcow2.compute"] // 4, (wrapped, got)
    assert quiet.get("qcow2.compute", 0) >= got["qcow2.compute"] // 3, (quiet, got)
    assert quiet.get("qcow2.compute", 0) + wrapped["qcow2.compute"] < got["qcow2.compute"]


@pytest.mark.parametrize("case", ["write_fault", "flush_fault", "zero_fault"])
def test_bulk_blk_qcow2_failing_io_agrees(tmp_path, case):
    """A planned host I/O that fails (an injected error) runs the compiled handlers (no bail)
    and still agrees: the data write's allocation undone, a metadata failure's unusable node."""
    bulk, blk = _mods()
    op = {"write_fault": "write", "flush_fault": "flush", "zero_fault": "write_zeroes"}[case]
    cfg = dict(discard="unmap", faults=({"op": op, "start": 0, "end": 1 << 62,
                                         "errno": errno.EIO, "count": 2},))
    a = machine(tmp_path, "qcow2", "", QWL, dict(cfg))
    b = machine(tmp_path, "qcow2", "", QWL, dict(cfg))
    _reset()
    _same(a, b, (50, 200))
    assert blk.counts(wrapped=True).get("qcow2.worker", 0) > 0
    assert not bulk.stats()["bails"]


@pytest.mark.parametrize("case", ["fault", "fault_once", "sector0", "discard_ignored", "ebadf"])
def test_bulk_blk_other_paths_agree(tmp_path, case):
    """Paths the native handlers do not model run the compiled engine's handler against a
    recording scheduler (no bail) and still agree; a failing pwrite (an image opened
    read-only: EBADF) is modelled natively, and agrees too."""
    bulk, blk = _mods()
    wl = WL
    cfg: dict = dict(discard="unmap")
    expect = None
    mode = None
    if case == "fault":             # every write in [0, 1 MiB) fails
        cfg["faults"] = ({"op": "write", "start": 0, "end": 1 << 20, "errno": errno.EIO,
                          "count": -1},)
        expect = "file.aio_worker"
    elif case == "fault_once":      # one write fails; the exhausted rule then never fires
        cfg["faults"] = ({"op": "write", "start": 65536, "end": 1 << 20, "errno": errno.ENOSPC,
                          "count": 1},)
        expect = "file.aio_worker"
    elif case == "sector0":         # a probed raw image guards sector 0
        wl = "write 0 4096 fill=0x51\nread 0 4096\nwrite 4096 4096\n"
        expect = "raw.co_entry"
    elif case == "discard_ignored":
        cfg["discard"] = "ignore"
        expect = "bdrv.co_entry"
    elif case == "ebadf":
        mode = "read"
    if mode:
        cfg["mode"] = mode
    a = machine(tmp_path, "raw", "", wl, dict(cfg))
    b = machine(tmp_path, "raw", "", wl, dict(cfg))
    _reset()
    _same(a, b, (7, 40))
    assert not bulk.stats()["bails"]
    if expect:
        assert blk.counts(wrapped=True).get(expect, 0) > 0, blk.counts(wrapped=True)
    else:
        assert blk.counts().get("file.aio_worker", 0) > 0 and not blk.counts(wrapped=True)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_bulk_blk_keeps_the_undo_journals(tmp_path, fmt):
    """With reverse execution's undo journals on (GuestMemory.undo, HostFile.undo), the core's
    guest-RAM writes and host-file writes keep them exactly as the Python engine does."""
    _bulk, blk = _mods()
    wl = QWL if fmt == "qcow2" else WL
    a = machine(tmp_path, fmt, "", wl, dict(discard="unmap"))
    b = machine(tmp_path, fmt, "", wl, dict(discard="unmap"))
    _reset()
    for k in (40, 400, None):
        for m in (a, b):
            m.mem.undo = {}
            m.hostfile.undo = {}
            m.hostfile.undo_size = None
        assert engine.run(a, "py", k) == engine.run(b, "fast", k)
        assert snapshot(a) == snapshot(b)
        assert a.mem.undo == b.mem.undo
        assert a.hostfile.undo == b.hostfile.undo and a.hostfile.undo_size == b.hostfile.undo_size
    assert blk.counts().get("file.aio_worker" if fmt == "raw" else "qcow2.worker", 0) > 5


# -- what the handlers keep between steps (_bulk_blk's caches) -------------------------------------
# The request (m.block.reqs[bid]), qcow2's coroutine (m.fmt.cos[bid], with the driver's engine
# and lock queue), its plan item and file-posix's aio dicts are found once and kept while their
# dicts' version tags say nothing changed.  Replacing any of them between two runs (the same way
# on both engines) must be noticed: a handler that went on with the old dict would leave the new
# one behind and the runs would differ.

def _replace_dicts(m, what: str) -> int:
    """Put copies in place of the block layer's live request dicts (what: which); some also
    change what the requests do next (two aios trade offsets, a plan's rest runs backwards),
    the same on both engines.  -> how many such changes"""
    moved = 0
    if what in ("reqs", "all"):
        for bid, req in list(m.block.reqs.items()):
            m.block.reqs[bid] = dict(req)
    if what in ("aios", "all"):
        aios = m.block.aios
        if what == "all":
            for aid, aio in list(aios.items()):
                aios[aid] = dict(aio)
        # two writes of the same size trade places (in the live dicts)
        ws = [aio for aid, aio in sorted(aios.items()) if aio["op"] == "write"]
        if len(ws) >= 2 and ws[0]["bytes"] == ws[1]["bytes"]:
            ws[0]["offset"], ws[1]["offset"] = ws[1]["offset"], ws[0]["offset"]
            moved += 1
    cos = getattr(m.fmt, "cos", None)
    if cos is None:
        return moved
    if what in ("cos", "all"):
        for bid, co in list(cos.items()):
            cos[bid] = dict(co)
    if what in ("items", "all"):            # the plan list's items, the list itself unchanged
        for co in cos.values():
            plan = co.get("plan")
            for i, item in enumerate(plan or ()):
                plan[i] = dict(item)
            pi = co.get("pi")
            if plan and type(pi) is int and len(plan) - pi >= 2 \
                    and all(it["op"] != "flush" for it in plan[pi:]):   # (io_done reads a flush's gen)
                plan[pi:] = plan[pi:][::-1]     # (the items still to run, the other way round)
                moved += 1
    if what == "touch":                     # the same values stored again
        for co in cos.values():
            co["pi"] = co["pi"]
        for aio in m.block.aios.values():
            aio["op"] = aio["op"]
    return moved


RWL = "\n".join(["queue-depth 4"] + [f"write {(i * 7919 % 900) * 4096} 4096" for i in range(24)]
                + [f"read {(i * 7919 % 900) * 4096} 8192" for i in range(8)] + ["flush", "wait"]) + "\n"


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "qcow2s"])
def test_bulk_blk_caches_hit(tmp_path, fmt):
    """The kept request, coroutine, plan item and aio answer most of the handlers' lookups
    (and the runs agree)."""
    _bulk, blk = _mods()
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    wl = RWL.replace("queue-depth 4", "queue-depth 1")
    a = machine(tmp_path, kind, name, wl, dict(discard="unmap"))
    b = machine(tmp_path, kind, name, wl, dict(discard="unmap"))
    _reset()
    _same(a, b)
    hits = blk.cache_hits()
    got = blk.counts()
    assert hits["req"] >= got["blk.co_entry"], (hits, got)
    if kind == "raw":
        assert hits["aio"] >= got["file.aio_worker"], (hits, got)
        assert hits["co"] == hits["item"] == 0
    else:
        assert hits["co"] >= got["qcow2.compute"], (hits, got)
        assert hits["item"] >= got["qcow2.worker"] + got["qcow2.io_done"] - 2, (hits, got)


SWL = "\n".join(["queue-depth 1"] + [f"write {(i * 7919 % 900) * 4096} 4096\nwait" for i in range(4)]
                + [f"read {(i * 7919 % 900) * 4096} 8192\nwait" for i in range(1)]) + "\n"
PWL = "\n".join(["queue-depth 4"] + [f"write {(i * 7919 % 900) * 4096} 4096" for i in range(12)]
                + [f"read {(i * 7919 % 900) * 4096} 8192" for i in range(2)] + ["wait"]) + "\n"


@settings(**{**SETTINGS, "max_examples": 10,
             "phases": (Phase.explicit, Phase.reuse, Phase.generate)})    # (no shrinking: slow)
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s"]),
       what=st.sampled_from(["reqs", "aios", "cos", "items", "touch", "all"]),
       cache=st.sampled_from(["writeback", "writethrough"]),
       wl=st.sampled_from([SWL, PWL]), seed=st.integers(0, 1 << 16))
def test_bulk_blk_caches_notice_replaced_dicts(tmp_path_factory, fmt, what, cache, wl, seed):
    """Copies put in place of live request dicts between runs (on both engines) are what the
    core's handlers go on with (runs of 2-20 steps, to the end; SWL: one request at a time, so
    that what a handler kept is what the request's next step asks for)."""
    tmp = tmp_path_factory.mktemp("bulkblkcache")
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    a = machine(tmp, kind, name, wl, dict(discard="unmap", cache=cache))
    b = machine(tmp, kind, name, wl, dict(discard="unmap", cache=cache))
    rng = random.Random(seed)
    _reset()
    while True:
        k = rng.randrange(2, 21)
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        assert ra == rb
        assert snapshot(a) == snapshot(b)
        if ra != "steps":
            break
        _replace_dicts(a, what)
        _replace_dicts(b, what)
    assert a.digest() == b.digest()


@pytest.mark.parametrize("fmt,what", [("raw", "aios"), ("qcow2", "items")])
def test_bulk_blk_caches_notice_moved_work(tmp_path, fmt, what):
    """Between every few steps, in-flight work moves (two aios trade offsets; a plan's items
    still to run turn round), the same on both engines: the core's handlers must follow."""
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    wl = PWL if kind == "raw" else SWL
    a = machine(tmp_path, kind, name, wl, dict(discard="unmap"))
    b = machine(tmp_path, kind, name, wl, dict(discard="unmap"))
    _reset()
    moved = 0
    i = 0
    while True:
        k = 5 + i * 7 % 31 if kind == "raw" else 2 + i % 7
        i += 1
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        assert ra == rb
        assert snapshot(a) == snapshot(b)
        if ra != "steps":
            break
        n = _replace_dicts(a, what)
        assert _replace_dicts(b, what) == n
        moved += n
    assert moved > 0
