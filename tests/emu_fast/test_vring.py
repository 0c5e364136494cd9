"""emu_fast._vring: the guest driver's handlers (virtio_ring.c split ring, virtio_blk.c
queue_rq / done) compiled, against the Python handlers step by step.

Two machines run the same workload in lockstep, one on Machine.step (every handler Python),
one on emu_fast.step (these handlers compiled); every Step record (detail, effects, facts),
the final state and the guest-RAM undo journal must be equal.  Between steps both get the
same pokes of guest RAM where the driver reads it back -- the used ring's index, flags and
elements, avail_event, descriptor flags and next fields, request status bytes, the avail
ring -- so the error paths run too (BAD_RING, chains that loop, out-of-range ids, IOERR,
UNSUPP and unknown statuses, suppressed kicks), as well as small queues (-ENOSPC, forced
notify), kmalloc failures, no INDIRECT_DESC, no EVENT_IDX, discard and write-zeroes ranges and
GET_ID.  A GuestMemory of another type makes the handlers use the memory object's own methods.
"""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.guest import virtio_blk, vring
from emu.mem.guest_memory import GuestMemory
from emu.sim.steps import REGISTRY
from tests.conftest import build, make_image
from tests.emu_fast.test_differential import SETTINGS, snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

MiB = 1 << 20
DISK = 8 * MiB
PORTED = ("vring.add_split", "vring.add_desc", "vring.add_head", "vring.add_avail",
          "vring.add_publish", "vring.kick_prepare", "vring.notify", "vring.interrupt",
          "vring.disable_cb", "vring.get_buf", "vring.enable_cb",
          "vblkd.queue_rq", "vblkd.setup_cmd", "vblkd.map_data", "vblkd.add_req", "vblkd.add_ret",
          "vblkd.queue_rq_end", "vblkd.commit_rqs", "vblkd.commit_notify", "vblkd.done",
          "vblkd.request_done", "vblkd.done_end")


def test_the_driver_handlers_run_compiled():
    from emu_fast import _vring
    assert set(_vring.HANDLERS) == set(PORTED) and set(PORTED) <= set(emu_fast.compiled_kinds())
    for kind, (fn, py) in _vring.HANDLERS.items():
        assert REGISTRY[kind][0] is py and fn is not py
        assert py.__module__ in (vring.__name__, virtio_blk.__name__)


def test_a_replaced_python_handler_is_used_as_is(tmp_path, monkeypatch):
    """With REGISTRY[kind] replaced by another function, the fast engine runs that function
    (not the compiled translation of the one it replaced)."""
    calls = []
    for kind in ("vring.add_desc", "vblkd.request_done"):
        fn, info = REGISTRY[kind]

        def spy(m, *args, _fn=fn, _kind=kind):
            calls.append(_kind)
            return _fn(m, *args) + " (replaced)"
        monkeypatch.setitem(REGISTRY, kind, (spy, info))
    assert not {"vring.add_desc", "vblkd.request_done"} & set(emu_fast.compiled_kinds())
    a, b = _pair(tmp_path, "write 0 4k\nread 4096 8k\n", {})
    recs = [r for r in iter(lambda: emu_fast.step(b), None)]
    assert calls.count("vring.add_desc") == 6 and calls.count("vblkd.request_done") == 2
    assert [r.detail.endswith(" (replaced)") for r in recs if r.kind == "vring.add_desc"] == [True] * 6
    assert recs == [r for r in iter(a.step, None)]          # Machine.step runs the spy too


_ops = st.lists(st.one_of(
    st.tuples(st.sampled_from(["write", "write", "read", "discard", "write-zeroes"]),
              st.one_of(st.integers(0, 64), st.integers(0, DISK // 4096 - 33)),
              st.sampled_from([1, 8, 9, 64, 256])),
    st.sampled_from([("flush",), ("wait",), ("get-id",)]),
    st.tuples(st.just("queue-depth"), st.integers(1, 12))), min_size=4, max_size=40)


def _workload(items) -> str:
    lines = []
    for it in items:
        if it[0] == "queue-depth":
            lines.append(f"queue-depth {it[1]}")
        elif len(it) == 1:
            lines.append(it[0])
        else:
            op, blk, n = it
            unmap = " unmap" if op == "write-zeroes" and blk % 2 else ""
            lines.append(f"{op} {blk * 4096} {n * 512}{unmap}")
    return "\n".join(lines) + "\n"


_configs = st.fixed_dictionaries({
    "queue_size": st.sampled_from([4, 8, 64]),
    "indirect": st.booleans(),
    "event_idx": st.booleans(),
    "ram_size": st.sampled_from([MiB, 4 * MiB]),
    "discard": st.sampled_from(["ignore", "unmap"]),
    "seed": st.integers(0, 3)})


def _poke_targets(m) -> list:
    """(gpa, size) of guest RAM the driver reads back or the device reads."""
    vq = m.guest.vq
    out = []
    if vq.num:
        n = vq.num
        out += [(vq.used + 2, 2), (vq.used, 2), (vq.used + 4 + 8 * n, 2), (vq.avail + 4 + 2 * n, 2)]
        out += [(vq.used + 4 + 8 * s, 4) for s in range(n)]            # used.ring[s].id
        out += [(vq.used + 8 + 8 * s, 4) for s in range(n)]            # used.ring[s].len
        out += [(vq.desc + 16 * d + 12, 2) for d in range(n)]          # desc[d].flags
        out += [(vq.desc + 16 * d + 14, 2) for d in range(n)]          # desc[d].next
        out += [(vq.avail + 4 + 2 * s, 2) for s in range(n)]           # avail.ring[s]
    for rq in m.guest.blkmq.rqs.values():
        if rq.get("pdu"):
            out.append((rq["pdu"] + 16, 1))                            # the status byte
    return out


def _poke_value(rng: random.Random, size: int, num: int) -> bytes:
    v = rng.choice([0, 1, 2, 3, num - 1, num, 0xFF, 0xFFFF, 0xFFFFFFFF,
                    rng.randrange(1 << (8 * size))])
    return (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _lockstep(a, b, rng: random.Random | None, poke_every: int, limit: int = 20000,
              undo: bool = False) -> int:
    """Step a (Python) and b (compiled) alike; with rng, poke both the same way: a random
    target every poke_every steps, and now and then what the driver is about to read: the
    status byte (right after get_buf), used.flags or avail_event (right after add_publish).
    With undo, both keep an undo journal of guest RAM pages."""
    n = 0
    if undo:
        a.mem.undo, b.mem.undo = {}, {}
    for n in range(1, limit + 1):
        if rng is not None and n % poke_every == 0:
            targets = _poke_targets(a)
            if targets:
                gpa, size = rng.choice(targets)
                data = _poke_value(rng, size, a.guest.vq.num)
                a.poke(gpa, data)
                b.poke(gpa, data)
        if rng is not None and a.cur is not None and a.cur.kind == "vring.get_buf" \
                and "request " in a.cur.detail and rng.random() < 0.3:
            rid = int(a.cur.detail.split("request ")[1].split(";")[0])
            status = bytes([rng.choice([0, 1, 2, 3, 0xFF])])
            a.poke(a.guest.blkmq.rqs[rid]["pdu"] + 16, status)
            b.poke(b.guest.blkmq.rqs[rid]["pdu"] + 16, status)
        if rng is not None and a.cur is not None and a.cur.kind == "vring.add_publish" \
                and rng.random() < 0.2:                   # what kick_prepare reads next
            vq = a.guest.vq
            gpa = vq.used + (4 + 8 * vq.num if vq.event else 0)
            data = _poke_value(rng, 2, vq.num)
            a.poke(gpa, data)
            b.poke(gpa, data)
        ra, rb = a.step(), emu_fast.step(b)
        assert ra == rb, (f"step {n}: {ra and ra.kind} {ra and ra.detail!r} != "
                          f"{rb and rb.kind} {rb and rb.detail!r}")
        if ra is None:
            break
    assert snapshot(a) == snapshot(b)
    assert a.mem.undo == b.mem.undo
    return n


def _pair(tmp, wl: str, cfg: dict):
    path = str(tmp / "disk.raw")
    if not os.path.exists(path):
        make_image(path, DISK, content=bytes(range(256)) * 64)
    return build(path, wl, **cfg), build(path, wl, **cfg)


@settings(**dict(SETTINGS, max_examples=60))
@given(items=_ops, cfg=_configs, poke_seed=st.integers(0, 1 << 30),
       poke_every=st.sampled_from([0, 0, 40, 150, 400]), undo=st.booleans())
def test_lockstep_with_guest_ram_pokes(tmp_path_factory, items, cfg, poke_seed, poke_every, undo):
    a, b = _pair(tmp_path_factory.mktemp("ring"), _workload(items), cfg)
    _lockstep(a, b, random.Random(poke_seed) if poke_every else None, poke_every or 1,
              undo=undo)


def test_kmalloc_failures(tmp_path):
    """The indirect table's and the discard range's kmalloc fail now and then (on both
    machines alike): direct descriptors instead, BLK_STS_RESOURCE."""
    wl = "queue-depth 6\n" + "".join(f"write {i * 8192} 8k\ndiscard {i * 65536} 4k\n"
                                     f"write-zeroes {i * 4096} 4k\nread {i * 4096} 8k\n"
                                     for i in range(8)) + "wait\n"
    seen = set()
    for every in (2, 3, 5):
        a, b = _pair(tmp_path, wl, {"discard": "unmap"})
        for m in (a, b):
            calls = [0]

            def kmalloc(size, _real=m.pages.kmalloc, _calls=calls, _every=every):
                _calls[0] += 1
                return None if _calls[0] % _every == 0 else _real(size)
            m.pages.kmalloc = kmalloc
        for n in range(1, 20000):
            ra, rb = a.step(), emu_fast.step(b)
            assert ra == rb
            if ra is None:
                break
            if "kmalloc of the" in ra.detail:
                seen.add(ra.kind)
        assert snapshot(a) == snapshot(b)
    assert seen == {"vring.add_split", "vblkd.setup_cmd"}


class _OtherMemory(GuestMemory):
    """Not exactly a GuestMemory: the compiled handlers use its methods."""


def test_other_memory_types_use_their_own_methods(tmp_path):
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 8k\n" for i in range(6))
    wl += "discard 0 64k\nwrite-zeroes 65536 8k unmap\nget-id\nflush\n"
    for indirect in (True, False):
        a, b = _pair(tmp_path, wl, {"indirect": indirect})
        for m in (a, b):
            m.mem.__class__ = _OtherMemory
        assert _lockstep(a, b, None, 1) > 100



def test_state_members_are_read_at_their_slot_offsets():
    """The handlers read and write the members of these classes at their __slots__ offsets
    (emu_fast/_slots.pxd); a change to emu's classes that turns that off shows here."""
    paths = emu_fast.slot_paths()
    mine = {k for k in paths if k.startswith("_vring.")}
    assert mine == {f"_vring.{c}" for c in ("Machine", "Guest", "DriverVq", "BlkMq", "GuestMemory",
                                            "EffectLog", "Step")}
    assert all(paths[k] for k in mine), paths


def _subclass(cls):
    return type("Other" + cls.__name__, (cls,), {"__slots__": ()})


def test_state_objects_of_other_types_take_the_getattr_path(tmp_path):
    """With the machine, the guest, its virtqueue and its queue of subclasses (the same slots,
    but not exactly the classes the offsets were taken from) the handlers read and write the
    members by name: the same steps, the same final state."""
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 8k\n" for i in range(6))
    wl += "discard 0 64k\nwrite-zeroes 65536 8k unmap\nget-id\nflush\n"
    for indirect, event_idx in ((True, True), (False, False)):
        a, b = _pair(tmp_path, wl, {"indirect": indirect, "event_idx": event_idx})
        while not a.guest.vq.num:           # until the driver's probe has set up its virtqueue
            assert a.step() == emu_fast.step(b)
        for m in (a, b):
            for o in (m, m.guest, m.guest.vq, m.guest.blkmq):
                o.__class__ = _subclass(type(o))
        assert _lockstep(a, b, None, 1) > 100
        assert [type(o).__name__ for o in (b, b.guest, b.guest.vq, b.guest.blkmq)] == [
            "OtherMachine", "OtherGuest", "OtherDriverVq", "OtherBlkMq"]


def test_driver_errors_and_full_rings(tmp_path):
    """Corrupt the used ring's next id or its index (BAD_RING), or set NEXT in every
    descriptor (detach_buf_split's chain loops), just before the driver reads them; on a ring
    too small for the queue depth (-ENOSPC)."""
    wl = "queue-depth 12\n" + "".join(f"write {i * 4096} 4k\n" for i in range(40)) + "wait\n"
    seen: set = set()
    for queue_size, indirect, bad in ((4, False, None), (4, True, None), (8, False, "id"),
                                      (8, True, "idx"), (8, False, "loop"), (4, True, "loop")):
        a, b = _pair(tmp_path, wl, {"queue_size": queue_size, "indirect": indirect})
        armed = True
        for n in range(1, 20000):
            if bad and armed and n > 300 and a.cur.kind == "vring.disable_cb":   # get_buf is next
                armed = False
                vq = a.guest.vq
                slot = vq.last_used_idx & (vq.num - 1)
                for m in (a, b):
                    if bad == "id":
                        m.poke(vq.used + 4 + 8 * slot, vq.num.to_bytes(4, "little"))   # just past
                    elif bad == "idx":
                        m.poke(vq.used + 2, ((vq.last_used_idx + 3) & 0xFFFF).to_bytes(2, "little"))
                    else:
                        for d in range(vq.num):
                            m.poke(vq.desc + 16 * d + 12, b"\x01\x00")
            ra, rb = a.step(), emu_fast.step(b)
            assert ra == rb
            if ra is None:
                break
            for what in ("BAD_RING", "-ENOSPC"):
                if what in ra.detail:
                    seen.add(what)
            if any(fact[0] == "guest-error" and "loops" in fact[1] for fact in ra.effects):
                seen.add("loops")
        assert snapshot(a) == snapshot(b)
    assert seen == {"BAD_RING", "-ENOSPC", "loops"}


def test_int_formatting():
    """The compiled f"{x}" / f"{x:#x}" of ints are Python's (and other values go to format())."""
    from emu_fast import _vring
    values = [0, 1, 9, 10, 15, 16, 255, 4096, 10 ** 6, (1 << 31) - 1, 1 << 32, (1 << 63) - 1,
              1 << 63, 1 << 64, 10 ** 30, -1, -16, -(1 << 63), -(1 << 63) - 1, True, False]
    for v in values:
        assert _vring.format_int(v) == (format(v, "#x"), format(v, "")), v


_u = st.one_of(st.sampled_from([0, 1, 255, 256, 0xFFFF, 0x10000, 0xFFFFFFFF, 1 << 32,
                                (1 << 64) - 1, 1 << 64, -1]), st.integers(0, (1 << 64) - 1))


@settings(**dict(SETTINGS, max_examples=300))
@given(addr=_u, length=_u, flags=st.integers(-2, 0x10001), nxt=_u)
def test_descriptor_bytes(addr, length, flags, nxt):
    """The compiled descriptor packing is vring._DESC.pack, errors included."""
    from emu_fast import _vring
    try:
        want = vring._DESC.pack(addr, length, flags, nxt)
    except Exception as e:          # noqa: BLE001  (struct.error)
        with pytest.raises(type(e)):
            _vring.pack_desc(addr, length, flags, nxt)
        return
    assert _vring.pack_desc(addr, length, flags, nxt) == want
