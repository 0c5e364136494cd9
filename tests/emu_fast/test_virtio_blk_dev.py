"""emu_fast._virtio_blk_dev: the device side of virtio-blk (virtqueue_pop, handle_request, the
MultiReqBuffer, completion, notification) compiled, against the Python handlers.

Both engines run the same workload on the same configuration; at the k-th request the guest
publishes, the same corruption is poked into guest RAM (or the ring state) on both: every
validation of virtqueue_pop, other request types (GET_ID, SCSI, FLUSH, unknown, barrier bits),
sectors out of range, an indirect table the device did not offer.  Step records (detail,
effects, facts) and the final state must be equal.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.sim import steps as S
from tests import specdecode as D
from tests.emu import test_pop_checks as PC
from tests.emu_fast.test_differential import SETTINGS, configs, machine, run_with, snapshot, workloads

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

KINDS = ["vblk.pop", "vblk.handle_request", "vblk.submit_multireq", "vblk.submit_requests",
         "vblk.pass_end", "vblk.handle_vq", "vblk.req_complete", "vblk.rw_complete",
         "vblk.mrb_add", "vq.fill", "vq.flush", "vq.notify", "vq.irq", "vpci.notify",
         "vpci.notify_done"]


def test_kinds_are_compiled():
    assert set(KINDS) <= set(emu_fast.compiled_kinds())


# -- corruptions, applied between steps (the same on both machines) ----------------------------------

def _header(m):
    """Guest address of the out header of the request just published."""
    ram, table, head, _hd = PC._published(m)
    return D.chain(ram, table, head, m.guest.vq.num)[0].addr


def retype(value):
    def f(m):
        m.poke(_header(m), struct.pack("<I", value))
    f.__name__ = f"retype_{value:#x}"
    return f


def resector(value):
    def f(m):
        m.poke(_header(m) + 8, struct.pack("<Q", value))
    f.__name__ = f"resector_{value:#x}"
    return f


def indirect_not_offered(m):
    """test_pop_checks.test_indirect_not_negotiated_is_only_logged's poke."""
    ram, table, head, _hd = PC._published(m)
    c = D.chain(ram, table, head, m.guest.vq.num)
    tbl = m.mem.size - 0x8000
    m.poke(tbl, b"".join(struct.pack("<QIHH", d.addr, d.len, d.flags, i + 1) for i, d in enumerate(c)))
    PC._poke_desc(m, table, head, addr=tbl, len=16 * len(c), flags=D.INDIRECT)


def split_header(m):
    """The header in two descriptors (8 + 8 bytes) inside an indirect table: iov_to_buf
    gathers it from both, iov_discard_front drops both."""
    ram, table, head, _hd = PC._published(m)
    c = D.chain(ram, table, head, m.guest.vq.num)
    if c[0].len != 16:
        return
    ds = [(c[0].addr, 8, D.NEXT), (c[0].addr + 8, 8, D.NEXT)] + [(d.addr, d.len, d.flags) for d in c[1:]]
    tbl = m.mem.size - 0x9000
    m.poke(tbl, b"".join(struct.pack("<QIHH", a, n, fl, i + 1) for i, (a, n, fl) in enumerate(ds)))
    PC._poke_desc(m, table, head, addr=tbl, len=16 * len(ds), flags=D.INDIRECT)


def queue_state(field, value):
    def f(m):
        vq = m.vdev.vqs[0]
        setattr(vq, field, value)
        vq.shadow_avail_idx = (vq.last_avail_idx + 1) & 0xFFFF
    f.__name__ = f"queue_{field}"
    return f


def no_notification_flag(m):
    """The driver sets avail.flags NO_INTERRUPT (only read without EVENT_IDX)."""
    vq = m.guest.vq
    m.poke(vq.avail, struct.pack("<H", 1))


CORRUPTIONS = [None] + [c[3] for c in PC.CASES] + [
    retype(8), retype(2), retype(4), retype(0x80000000), retype(0x80000001), retype(99),
    retype(11), retype(13), resector(1 << 63), resector((1 << 64) - 1), resector(8191),
    resector(8190), indirect_not_offered, split_header, queue_state("caches", False),
    queue_state("desc_len", 16), no_notification_flag]


def _run_to_publish(m, eng: str, k: int, recs: list) -> bool:
    """Run until the k-th vring.add_publish (True) or the end (False)."""
    seen = [0]

    def on(rec):
        recs.append(rec)
        if rec.kind == "vring.add_publish":
            seen[0] += 1
        return seen[0] >= k
    return engine.run(m, eng, None, on) == "stopped"


extra = st.fixed_dictionaries({"request_merging": st.booleans(),
                               "werror": st.sampled_from(["report", "ignore"]),
                               "rerror": st.sampled_from(["report", "ignore"]),
                               "serial": st.sampled_from(["", "vblk-serial-01234567"])})


@settings(**dict(SETTINGS, max_examples=120))
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=workloads, cfg=configs, more=extra,
       small=st.booleans(), k=st.integers(1, 6),
       corrupt=st.sampled_from(CORRUPTIONS))
def test_device_side_same_on_both_engines(tmp_path_factory, fmt, wl, cfg, more, small, k, corrupt):
    tmp = tmp_path_factory.mktemp("vblkdev")
    cfg = dict(cfg, **more)
    if small:
        cfg["queue_size"] = 4                     # ring wrap-around, inuse == num
    m_py = machine(tmp, fmt, "", wl, cfg)
    m_fast = machine(tmp, fmt, "", wl, cfg)
    py_recs: list = []
    fast_recs: list = []
    hit = _run_to_publish(m_py, "py", k, py_recs)
    assert _run_to_publish(m_fast, "fast", k, fast_recs) == hit
    if hit and corrupt is not None:
        try:
            corrupt(m_py)
        except Exception:                          # noqa: BLE001  (not applicable here)
            assume(False)
        corrupt(m_fast)
    assert run_with(m_py, "py", py_recs) == run_with(m_fast, "fast", fast_recs)
    assert len(py_recs) == len(fast_recs) == m_py.steps
    for a, b in zip(py_recs, fast_recs):
        assert a == b, f"step {a.n}: {a.kind} {a.detail!r} != {b.kind} {b.detail!r}"
    assert snapshot(m_py) == snapshot(m_fast)
    assert m_py.vdev == m_fast.vdev and m_py.vblk == m_fast.vblk


@pytest.mark.parametrize("corrupt", [c for c in CORRUPTIONS if c is not None],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("qs,indirect,k", [(4, True, 1), (256, False, 3)])
def test_each_corruption(tmp_path, corrupt, qs, indirect, k):
    """Every corruption at least once, on a small and a large ring, on a write and a read."""
    wl = "write 0 4k\nread 8192 8k\nread 0 4k\nwrite 4096 4k\n"
    cfg = {"queue_size": qs, "indirect": indirect}
    m_py = machine(tmp_path, "raw", "", wl, cfg)
    m_fast = machine(tmp_path, "raw", "", wl, cfg)
    py_recs: list = []
    fast_recs: list = []
    assert _run_to_publish(m_py, "py", k, py_recs) and _run_to_publish(m_fast, "fast", k, fast_recs)
    corrupt(m_py)
    corrupt(m_fast)
    run_with(m_py, "py", py_recs)
    run_with(m_fast, "fast", fast_recs)
    assert py_recs == fast_recs
    assert snapshot(m_py) == snapshot(m_fast)


def test_replaced_python_handler_is_used(tmp_path, monkeypatch):
    """While REGISTRY holds another function for a kind, the compiled handler is not used;
    otherwise the compiled one runs (the Python virtqueue_pop is never called)."""
    import emu.device.virtio as VD
    wl = "write 0 4k\nread 0 4k\n"
    calls = []
    real_pop = VD.virtqueue_pop
    monkeypatch.setattr(VD, "virtqueue_pop", lambda m, qi: calls.append(qi) or real_pop(m, qi))
    m = machine(tmp_path, "raw", "", wl, {})
    engine.run(m, "fast")
    assert calls == [] and m.vblk.completed == 2            # compiled pop: no Python call

    fn, info = S.REGISTRY["vblk.pop"]
    seen = []

    def wrapped(m, qi):
        seen.append(qi)
        return fn(m, qi)
    monkeypatch.setitem(S.REGISTRY, "vblk.pop", (wrapped, info))
    assert "vblk.pop" not in emu_fast.compiled_kinds()
    assert "vq.fill" in emu_fast.compiled_kinds()
    m2 = machine(tmp_path, "raw", "", wl, {})
    ref = machine(tmp_path, "raw", "", wl, {})
    a: list = []
    b: list = []
    run_with(m2, "fast", a)
    assert seen and len(seen) == len(calls) == sum(r.kind == "vblk.pop" for r in a)
    monkeypatch.setitem(S.REGISTRY, "vblk.pop", (fn, info))
    run_with(ref, "py", b)
    assert a == b and snapshot(m2) == snapshot(ref)


@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_pop_with_notifications_left_on(tmp_path, event_idx, k):
    """virtqueue_pop writes avail_event (EVENT_IDX) only while the queue's notification flag is
    on, which handle_vq normally turns off before popping: turn it back on after the k-th
    vblk.pop on both engines, so the next pop's write of the new last_avail_idx is compared."""
    wl = "write 0 4k\nread 8192 8k\nread 0 4k\nwrite 4096 4k\n"
    cfg = {"event_idx": event_idx}
    runs = []
    for eng in ("py", "fast"):
        m = machine(tmp_path, "raw", "", wl, cfg)
        recs: list = []
        seen = [0]

        def on(rec, recs=recs, seen=seen):
            recs.append(rec)
            seen[0] += rec.kind == "vblk.pop"
            return seen[0] >= k
        assert engine.run(m, eng, None, on) == "stopped"
        m.vdev.vqs[0].notification = True
        run_with(m, eng, recs)
        runs.append((m, recs))
    (m_py, py_recs), (m_fast, fast_recs) = runs
    assert any(r.kind == "vblk.pop" and any(e[0] == "ram" for e in r.effects) for r in py_recs) \
        == event_idx
    assert py_recs == fast_recs
    assert snapshot(m_py) == snapshot(m_fast)


def test_state_members_are_read_at_their_offsets():
    """The handlers read and write the members of every emulator class they use at its
    __slots__ offsets (emu_fast/_slots.pxd): each class resolved, none left on getattr."""
    classes = ("Machine", "GuestMemory", "EffectLog", "Step", "VirtIODevice", "VirtQueue",
               "VirtIOBlock")
    paths = emu_fast.slot_paths()
    assert {c: paths.get(f"_virtio_blk_dev.{c}") for c in classes} == dict.fromkeys(classes, True)


@pytest.mark.parametrize("lbs", [512, 4096])
def test_sector_mask_follows_the_block_size(tmp_path, lbs):
    """sect_range_ok's VirtIOBlock.sector_mask (a property, computed by the compiled code):
    the device's block size changes after the guest probed it and the first request is
    re-aimed at sector 1, in range with 512-byte blocks, misaligned with 4096-byte ones."""
    wl = "write 0 4k\nread 8192 8k\n"
    runs = []
    for eng in ("py", "fast"):
        m = machine(tmp_path, "raw", "", wl, {})
        recs: list = []
        assert _run_to_publish(m, eng, 1, recs)
        m.vblk.logical_block_size = lbs
        resector(1)(m)
        run_with(m, eng, recs)
        runs.append((recs, snapshot(m), m.vblk))
    assert runs[0] == runs[1]
    fails = [r.detail for r in runs[0][0] if "sect_range_ok fails" in r.detail]
    assert len(fails) == (lbs == 4096)
