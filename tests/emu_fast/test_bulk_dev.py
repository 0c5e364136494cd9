"""The bulk core's device side (emu_fast/_bulk_dev.pyx) against the Python engine.

Unobserved runs on the fast engine (engine.run without on_step) hand stretches of steps to the
bulk core, which runs the device's events (virtio-pci doorbell, virtio-blk request handling,
virtqueue pop/fill/flush/notify, MSI-X) with no record.  Each run must end with the Python
engine's state: digest (every component's state), guest RAM, image bytes, step count, clock.
The kinds must actually run in the core (_bulk_dev.counts()), and the error paths the core does
not model (a chain that breaks the device, other request types, ...) must bail to the compiled
engine and still agree.
"""
from __future__ import annotations

import importlib
import sys
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from tests.emu_fast.test_differential import SETTINGS, configs, machine, snapshot, workloads

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

if emu_fast.available():
    _bulk = importlib.import_module("emu_fast._bulk")
    _dev = importlib.import_module("emu_fast._bulk_dev")

KINDS = ["vpci.notify", "vpci.notify_done", "vblk.handle_vq", "vblk.pop", "vblk.handle_request",
         "vblk.mrb_add", "vblk.pass_end", "vblk.submit_multireq", "vblk.submit_requests",
         "vblk.rw_complete", "vblk.req_complete", "vblk.flush", "vblk.flush_complete",
         "vblk.dwz_complete", "vq.fill", "vq.flush", "vq.notify", "vq.irq"]

FEW = dict(SETTINGS, max_examples=15)


def run_bulk(m) -> str:
    """An unobserved run on the fast engine (the bulk core runs what it can), then the block
    layer's close the same way."""
    reason = engine.run(m, "fast")
    if m.begin_shutdown():
        engine.run(m, "fast")
    return reason


def run_py(m, recs: list | None = None) -> str:
    on = None if recs is None else (lambda rec: recs.append(rec.kind) and False)
    reason = engine.run(m, "py", None, on)
    if m.begin_shutdown():
        engine.run(m, "py", None, on)
    return reason


def same(m_py, m_fast) -> None:
    assert snapshot(m_py) == snapshot(m_fast)
    assert m_py.vdev == m_fast.vdev and m_py.vblk == m_fast.vblk
    assert m_py.block.reqs == m_fast.block.reqs and m_py.counters == m_fast.counters


def my_bails() -> dict:
    return {k: n for k, n in _bulk.stats()["bails"].items() if k in KINDS}


def test_kinds_are_registered():
    assert set(KINDS) <= set(_bulk.handled_kinds())


extra = st.fixed_dictionaries({"request_merging": st.booleans(),
                               "werror": st.sampled_from(["report", "ignore"]),
                               "rerror": st.sampled_from(["report", "ignore"])})


@settings(**FEW)
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=workloads, cfg=configs, more=extra)
def test_same_state_as_the_python_engine(tmp_path_factory, fmt, wl, cfg, more):
    tmp = tmp_path_factory.mktemp("bulkdev")
    cfg = dict(cfg, **more)
    m_py = machine(tmp, fmt, "", wl, cfg)
    m_fast = machine(tmp, fmt, "", wl, cfg)
    assert run_py(m_py) == run_bulk(m_fast)
    same(m_py, m_fast)


@settings(**FEW)
@given(wl=workloads, cfg=configs, chunks=st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_stretches_end_anywhere(tmp_path_factory, wl, cfg, chunks):
    """Fast (unobserved) and Python runs alternating at random steps: the device state the
    core holds in C is stored back at the end of every stretch and loaded at the next."""
    tmp = tmp_path_factory.mktemp("bulkdevsw")
    ref = machine(tmp, "raw", "", wl, cfg)
    m = machine(tmp, "raw", "", wl, cfg)
    run_py(ref)
    k = 0
    while True:
        n = chunks[k % len(chunks)]
        eng = "fast" if k % 2 == 0 else "py"
        if engine.run(m, eng, n if k < 4 * len(chunks) else None) == "end":
            break
        k += 1
    if m.begin_shutdown():
        engine.run(m, "fast")
    same(ref, m)


WORKLOADS = {
    "qd1-writes": "queue-depth 1\n" + "".join(f"write {i * 12288} 4k\n" for i in range(24)) + "wait\n",
    "mixed": "queue-depth 16\n" + "".join(
        (f"write {(i * 7919) % 900 * 4096} 16k\n" if i % 3 == 0 else
         f"read {(i * 104729) % 900 * 4096} 4k\n" if i % 3 == 1 else
         f"write {(i * 13) % 900 * 4096} 4k\n") + ("flush\n" if i % 8 == 7 else "")
        for i in range(48)) + "wait\n",
    "seq": "queue-depth 8\n" + "".join(f"write {i * 65536} 64k\n" for i in range(24)) + "wait\n",
    "discard-zeroes": "queue-depth 4\n" + "".join(
        f"write {i * 8192} 8k\ndiscard {i * 8192} 4k\nwrite-zeroes {i * 8192 + 4096} 4k"
        f"{' unmap' if i % 2 else ''}\nread {i * 8192} 8k\n" for i in range(12)) + "wait\n",
    "get-id": "write 0 4k\nget-id\nqueue-depth 4\nread 0 4k\nget-id\nwrite 8192 8k\nwait\n",
    "big": "queue-depth 3\n" + "".join(f"write {i * 524288} 512k\nread {i * 262144} 256k\n"
                                        "write 8192 8k\n" for i in range(4)) + "wait\n",
}


@pytest.mark.parametrize("wl", sorted(WORKLOADS))
@pytest.mark.parametrize("cfg", [{}, {"event_idx": False, "indirect": False},
                                 {"queue_size": 4, "request_merging": False},
                                 {"cache": "writethrough", "werror": "ignore", "discard": "unmap"}],
                         ids=["default", "no-event-idx-no-indirect", "small-ring", "writethrough"])
def test_kinds_run_in_the_core(tmp_path, wl, cfg):
    """Every device kind the workload takes runs in the core (none bails), and the result is
    the Python engine's."""
    if wl == "get-id":
        cfg = dict(cfg, serial="vblk-serial-01234567")
    m_py = machine(tmp_path, "raw", "", WORKLOADS[wl], cfg)
    m_fast = machine(tmp_path, "raw", "", WORKLOADS[wl], cfg)
    kinds: list = []
    run_py(m_py, kinds)
    _bulk.reset_stats()
    _dev.reset_counts()
    run_bulk(m_fast)
    same(m_py, m_fast)
    seen = Counter(k for k in kinds if k in KINDS)
    ran = _dev.counts()
    assert my_bails() == {}
    assert set(ran) <= set(seen)
    assert all(ran[k] <= seen[k] for k in ran)
    # the core stops before an event that could be the run's last; every kind still ran in it
    assert {k for k in seen if seen[k] > 3} - {"vblk.mrb_add"} <= set(ran), (seen, ran)
    assert sum(ran.values()) >= sum(seen.values()) // 3


@pytest.mark.parametrize("wl,cfg,chunk", [
    ("discard-zeroes", {"discard": "unmap"}, 5), ("discard-zeroes", {}, 9),
    ("mixed", {"queue_size": 16}, 7), ("qd1-writes", {"event_idx": False}, 11)])
def test_same_state_at_every_stop(tmp_path, wl, cfg, chunk):
    """Runs of `chunk` steps (the core runs all but the last of each): the state in flight
    (request dicts, the MultiReqBuffer, the block layer's requests) equal at every stop."""
    m_py = machine(tmp_path, "raw", "", WORKLOADS[wl], cfg)
    m_fast = machine(tmp_path, "raw", "", WORKLOADS[wl], cfg)
    _dev.reset_counts()
    while True:
        a = engine.run(m_py, "py", chunk)
        b = engine.run(m_fast, "fast", chunk)
        assert a == b and m_py.steps == m_fast.steps
        assert m_py.vdev == m_fast.vdev and m_py.vblk == m_fast.vblk
        assert m_py.block == m_fast.block and m_py.counters == m_fast.counters
        assert m_py.sim.state() == m_fast.sim.state()
        if a == "end":
            break
    same(m_py, m_fast)
    assert _dev.counts()
    rec = _dev.records()        # requests held in C: made at stops, decoded after them
    assert rec["born"] and rec["made"] and rec["decoded"] and rec["written"], rec


# -- error paths and unusual state: bail, and agree --------------------------------------------------

def _mutations():
    from tests.emu_fast.test_virtio_blk_dev import CORRUPTIONS

    def notifications_on(m):
        """pop's avail_event write (EVENT_IDX with the queue's notification flag on)."""
        m.vdev.vqs[0].notification = True

    def mask_vector(m):
        m.transport.proxy.msix_table[1].masked = True

    def lose_irq(m):
        m.guest.irq_vectors.clear()

    return [c for c in CORRUPTIONS if c is not None] + [notifications_on, mask_vector, lose_irq]


MUTATIONS = _mutations() if emu_fast.available() else []


def _run_to_publish(m, k: int) -> bool:
    seen = [0]

    def on(rec):
        seen[0] += rec.kind == "vring.add_publish"
        return seen[0] >= k
    return engine.run(m, "py", None, on) == "stopped"


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("qs,indirect,k", [(4, True, 1), (256, False, 3)])
def test_error_paths_bail_and_agree(tmp_path, mutate, qs, indirect, k):
    wl = "write 0 4k\nread 8192 8k\nread 0 4k\nwrite 4096 4k\nflush\nwrite 12288 4k\n"
    cfg = {"queue_size": qs, "indirect": indirect}
    m_py = machine(tmp_path, "raw", "", wl, cfg)
    m_fast = machine(tmp_path, "raw", "", wl, cfg)
    assert _run_to_publish(m_py, k) and _run_to_publish(m_fast, k)
    mutate(m_py)
    mutate(m_fast)
    _bulk.reset_stats()
    run_py(m_py)
    run_bulk(m_fast)
    same(m_py, m_fast)
    if m_py.vdev.errors:            # a virtio_error: the core bailed on the event that made it
        assert my_bails()


@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("j", [2, 3, 6])
def test_pop_with_notifications_left_on(tmp_path, event_idx, k, j):
    """virtqueue_pop writes avail_event (EVENT_IDX) only while the queue's notification flag is
    on, which handle_vq turns off before popping: turn it back on after the k-th vblk.pop, so
    the core's next pop writes the new last_avail_idx (test_virtio_blk_dev's case, in the core);
    compared j steps later (the core runs all but the last of them) and at the end."""
    wl = "queue-depth 4\nwrite 0 4k\nread 8192 8k\nread 0 4k\nwrite 4096 4k\nwrite 65536 4k\n" \
         "read 4096 4k\nwait\n"
    cfg = {"event_idx": event_idx}
    runs = []
    for eng in ("py", "fast"):
        m = machine(tmp_path, "raw", "", wl, cfg)
        seen = [0]

        def on(rec, seen=seen):
            seen[0] += rec.kind == "vblk.pop"
            return seen[0] >= k
        assert engine.run(m, "py", None, on) == "stopped"
        m.vdev.vqs[0].notification = True
        _dev.reset_counts()
        engine.run(m, eng, j)
        runs.append(m)
    same(*runs)
    assert _dev.counts().get("vblk.pop") or _dev.counts().get("vblk.handle_request")
    run_py(runs[0])
    run_bulk(runs[1])
    same(*runs)


@settings(**dict(SETTINGS, max_examples=25))
@given(wl=workloads, cfg=configs, k=st.integers(1, 5), mutate=st.sampled_from(MUTATIONS or [None]))
def test_random_error_paths(tmp_path_factory, wl, cfg, k, mutate):
    tmp = tmp_path_factory.mktemp("bulkdeverr")
    m_py = machine(tmp, "raw", "", wl, cfg)
    m_fast = machine(tmp, "raw", "", wl, cfg)
    hit = _run_to_publish(m_py, k)
    assert _run_to_publish(m_fast, k) == hit
    if hit:
        try:
            mutate(m_py)
        except Exception:           # noqa: BLE001  (not applicable to this request)
            assume(False)
        mutate(m_fast)
    run_py(m_py)
    run_bulk(m_fast)
    same(m_py, m_fast)


@settings(**dict(SETTINGS, max_examples=12))
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=st.sampled_from(["mixed", "discard-zeroes", "seq", "big"]),
       qs=st.sampled_from([8, 256]), chunks=st.lists(st.integers(4, 30), min_size=1, max_size=8))
def test_requests_held_in_c(tmp_path_factory, fmt, wl, qs, chunks):
    """The requests of vblk.reqs are C records during a stretch: a request popped in it gets its
    dict when the stretch ends (_make_req), one already there is decoded at its first event and
    its changed fields written back (_write_back).  Stretches ending at random steps (every
    stage of a request) leave vblk.reqs equal to the Python engine's, key order too."""
    tmp = tmp_path_factory.mktemp("bulkdevrec")
    cfg = {"queue_size": qs}
    m_py = machine(tmp, fmt, "", WORKLOADS[wl], cfg)
    m_fast = machine(tmp, fmt, "", WORKLOADS[wl], cfg)
    _dev.reset_counts()
    k = 0
    while True:
        n = chunks[k % len(chunks)]
        k += 1
        a = engine.run(m_py, "py", n)
        b = engine.run(m_fast, "fast", n)
        assert a == b and m_py.steps == m_fast.steps
        assert m_py.vblk == m_fast.vblk and list(m_py.vblk.reqs) == list(m_fast.vblk.reqs)
        assert [list(r) for r in m_py.vblk.reqs.values()] == \
            [list(r) for r in m_fast.vblk.reqs.values()]
        assert m_py.block.reqs == m_fast.block.reqs and m_py.counters == m_fast.counters
        if a == "end":
            break
    if m_py.begin_shutdown() | m_fast.begin_shutdown():
        engine.run(m_py, "py")
        engine.run(m_fast, "fast")
    same(m_py, m_fast)
    rec = _dev.records()        # (the core runs all but the last step of each run)
    assert rec["born"] and rec["made"] and rec["decoded"], rec
    if sys.version_info[:2] == (3, 11):     # block requests' values put in place (_aio_submit)
        assert rec["setitem"] == 0, rec


def _long_chain(m, n: int = 64) -> None:
    """The published request's data descriptor, as the device sees it, becomes n descriptors
    (free slots 100.. of the table; the driver's own walk, by its shadow next links, is unchanged)."""
    import struct
    vq = m.vdev.vqs[0]
    mem = m.mem
    aidx = mem.read_u16(vq.avail + 2)
    head = mem.read_u16(vq.avail + 4 + 2 * ((aidx - 1) % vq.num))
    _a, _l, hflags, data = struct.unpack("<QIHH", bytes(mem.read(vq.desc + 16 * head, 16)))
    addr, length, flags, status = struct.unpack("<QIHH", bytes(mem.read(vq.desc + 16 * data, 16)))
    assert hflags & 1 and flags & 1 and length % n == 0 and 100 + n <= vq.num
    part = length // n
    for k in range(n):
        nxt = 100 + k + 1 if k < n - 1 else status
        mem.write(vq.desc + 16 * (100 + k), struct.pack("<QIHH", addr + k * part, part, flags, nxt))
    mem.write(vq.desc + 16 * head + 14, struct.pack("<H", 100))


@pytest.mark.parametrize("op", ["write", "read"])
@pytest.mark.parametrize("stop", [0, 3, 9])
def test_long_chain_on_the_heap(tmp_path, op, stop):
    """A chain of over 32 descriptors: its record's arrays go on the heap (_room); same state,
    whether the stretch ends while it is in flight (stop steps after the publish) or not."""
    wl = f"{op} 0 64k\nwrite 131072 4k\n{op} 65536 64k\n"
    cfg = {"queue_size": 256, "indirect": False}
    m_py = machine(tmp_path, "raw", "", wl, cfg)
    m_fast = machine(tmp_path, "raw", "", wl, cfg)
    assert _run_to_publish(m_py, 1) and _run_to_publish(m_fast, 1)
    _long_chain(m_py)
    _long_chain(m_fast)
    _dev.reset_counts()
    _bulk.reset_stats()
    if stop:
        engine.run(m_py, "py", stop)
        engine.run(m_fast, "fast", stop)
        assert m_py.vblk == m_fast.vblk
    run_py(m_py)
    run_bulk(m_fast)
    same(m_py, m_fast)
    assert _dev.records()["heap"] and my_bails() == {}, (_dev.records(), my_bails())
