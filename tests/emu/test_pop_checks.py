"""Every validation virtqueue_pop / virtio_blk_handle_request makes, triggered by bad bytes in RAM.

Each case runs the guest until its request is published in the avail ring, corrupts guest
memory the way a buggy driver could, and lets the device find it.  The device must report
QEMU's message, go to DEVICE_NEEDS_RESET and mark itself broken, and the emulator must keep
running to the end without an exception.
"""
from __future__ import annotations

import struct

import pytest

from tests import specdecode as D
from tests.conftest import build, run_all, run_until

NEEDS_RESET = 0x40


def _published(m):
    """(ram, desc table, head, head descriptor) of the request just made available."""
    vq = m.guest.vq
    ram = bytes(m.mem.ram)
    a = D.avail(ram, vq.avail, vq.num)
    slot = (a["idx"] - 1) % vq.num
    head = a["ring"][slot]
    return ram, vq.desc, head, D.desc(ram, vq.desc, head)


def _poke_desc(m, table, i, **fields):
    cur = D.desc(bytes(m.mem.ram), table, i)
    vals = {"addr": cur.addr, "len": cur.len, "flags": cur.flags, "next": cur.next, **fields}
    m.poke(table + 16 * i, struct.pack("<QIHH", vals["addr"], vals["len"], vals["flags"], vals["next"]))


def head_index_too_big(m):
    vq = m.guest.vq
    a = D.avail(bytes(m.mem.ram), vq.avail, vq.num)
    m.poke(vq.avail + 4 + 2 * ((a["idx"] - 1) % vq.num), struct.pack("<H", 300))


def indirect_len_zero(m):
    _ram, table, head, _hd = _published(m)
    _poke_desc(m, table, head, len=0)


def indirect_len_not_multiple(m):
    _ram, table, head, _hd = _published(m)
    _poke_desc(m, table, head, len=40)


def indirect_table_unmapped(m):
    _ram, table, head, _hd = _published(m)
    _poke_desc(m, table, head, addr=m.mem.size - 16)


def writable_before_readable(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 0, flags=D.NEXT | D.WRITE)


def zero_length_buffer(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 1, len=0)


def bogus_address(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 1, addr=m.mem.size + 0x10000)


def next_out_of_range(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 0, next=7)


def descriptor_loop(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 1, next=0)


def direct_loop(m):
    _ram, table, head, hd = _published(m)
    _poke_desc(m, table, hd.next, next=head)      # second descriptor points back at the head


def too_many_descriptors(m):
    _ram, table, head, hd = _published(m)
    n = 1100
    big = m.mem.size - 0x20000           # a free area at the top of guest RAM
    data = m.mem.size - 0x30000
    entries = b"".join(struct.pack("<QIHH", data, 16, D.NEXT, i + 1) for i in range(n))
    m.poke(big, entries)
    _poke_desc(m, table, head, addr=big, len=16 * n)


def more_than_queue_size(m):
    vq = m.guest.vq
    a = D.avail(bytes(m.mem.ram), vq.avail, vq.num)
    head = a["ring"][0]
    for slot in range(1, vq.num):
        m.poke(vq.avail + 4 + 2 * slot, struct.pack("<H", head))
    m.poke(vq.avail + 2, struct.pack("<H", a["idx"] + vq.num))


def status_not_writable(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 2, flags=0)


def outhdr_short(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 0, len=8)


def dwz_header_short(m):
    _ram, _t, _h, hd = _published(m)
    _poke_desc(m, hd.addr, 1, len=8)


CASES = [
    ("Guest says index 300 is available", "write 0 4k\n", {}, head_index_too_big),
    ("Invalid size for indirect buffer table", "write 0 4k\n", {}, indirect_len_zero),
    ("Invalid size for indirect buffer table", "write 0 4k\n", {}, indirect_len_not_multiple),
    ("Cannot map indirect buffer", "write 0 4k\n", {}, indirect_table_unmapped),
    ("Incorrect order for descriptors", "write 0 4k\n", {}, writable_before_readable),
    ("virtio: zero sized buffers are not allowed", "write 0 4k\n", {}, zero_length_buffer),
    ("virtio: bogus descriptor or out of resources", "write 0 4k\n", {}, bogus_address),
    ("Desc next is 7", "write 0 4k\n", {}, next_out_of_range),
    ("Looped descriptor", "write 0 4k\n", {}, descriptor_loop),
    ("Looped descriptor", "write 0 4k\n", {"indirect": False}, direct_loop),
    ("virtio: too many write descriptors in indirect table", "write 0 4k\n", {},
     too_many_descriptors),
    ("Virtqueue size exceeded", "write 0 4k\n", {"queue_size": 4}, more_than_queue_size),
    ("virtio-blk missing headers", "write 0 4k\n", {}, status_not_writable),
    ("virtio-blk request outhdr too short", "flush\n", {}, outhdr_short),
    ("virtio-blk discard/write_zeroes header too short", "discard 0 4k\n", {}, dwz_header_short),
]


@pytest.mark.parametrize("message,workload,cfg,corrupt", CASES,
                         ids=[f"{c[3].__name__}" for c in CASES])
def test_pop_check(image, message, workload, cfg, corrupt):
    m = build(image, workload, **cfg)
    run_until(m, lambda s: s.kind == "vring.add_publish")
    corrupt(m)
    steps = run_all(m)            # never raises: the error is a diagnostic
    err = m.vdev.error
    assert err is not None and err["message"] == message
    assert err["spec"]                       # names the virtio spec section it breaks
    assert m.vdev.status & NEEDS_RESET
    assert m.vdev.broken
    err_steps = [s for s in steps if any(e[0] == "error" for e in s.effects)]
    assert len(err_steps) == 1 and err_steps[0].n == err["step"]
    # VERSION_1 device: the config interrupt reaches the guest (vp_config_changed)
    assert any(s.function == "vp_config_changed" for s in steps)
    assert m.guest.proc.inflight == 1       # the request never completes
    assert m.vblk.completed == 0


def test_kicks_after_the_error_are_ignored(image):
    m = build(image, "write 1M 4k\nget-id\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")   # GET_ID bypasses the plug: first
    zero_length_buffer(m)
    steps = run_all(m)
    notifies = [s for s in steps if s.kind == "vpci.notify"]
    assert len(notifies) == 2
    assert "ignores the kick" in notifies[1].detail
    assert m.vdev.error["message"] == "virtio: zero sized buffers are not allowed"


def test_last_avail_idx_already_advanced_past_bad_head(image):
    m = build(image, "write 0 4k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    head_index_too_big(m)
    run_all(m)
    assert m.vdev.vqs[0].last_avail_idx == 1
    assert m.vdev.vqs[0].inuse == 0


def test_indirect_not_negotiated_is_only_logged(image):
    """QEMU logs a guest error and still processes an indirect chain it did not offer."""
    m = build(image, "write 0 4k\n", indirect=False)
    run_until(m, lambda s: s.kind == "vring.add_publish")
    ram, table, head, _hd = _published(m)
    c = D.chain(ram, table, head, m.guest.vq.num)
    tbl = m.mem.size - 0x8000
    m.poke(tbl, b"".join(struct.pack("<QIHH", d.addr, d.len, d.flags, i + 1) for i, d in enumerate(c)))
    _poke_desc(m, table, head, addr=tbl, len=16 * len(c), flags=D.INDIRECT)
    run_all(m)
    assert m.vdev.error is None
    assert any("indirect_desc was not negotiated" in e for e in m.vdev.guest_errors)
    assert m.hostfile.pread(0, 16)[:7] == b"w000001"
    # the driver walks the shared descriptors to free the chain: the poke leaked two of them
    assert m.guest.vq.num_free == m.guest.vq.num - 2


@pytest.mark.parametrize("field,value,message", [
    ("caches", False, "Region caches not initialized"),
    ("desc_len", 16, "Cannot map descriptor ring"),
])
def test_queue_state_checks(image, field, value, message):
    """The two checks of ring-cache state (unreachable through guest RAM alone)."""
    m = build(image, "write 0 4k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    vq = m.vdev.vqs[0]
    setattr(vq, field, value)
    vq.shadow_avail_idx = 1      # the device already saw avail.idx move (no cache read needed)
    run_all(m)
    assert m.vdev.error["message"] == message
    assert m.vdev.status & NEEDS_RESET


def test_wrong_queue_enable_value(image):
    m = build(image, "")
    run_all(m)
    m.log.cur = []
    m.transport.mmio_write(m, 28, 2, 0)           # queue_enable = 0
    assert m.vdev.error["message"] == "wrong value for queue_enable 0"
    assert m.vdev.broken


@pytest.mark.parametrize("part", ["desc", "driver", "device"])
def test_ring_outside_ram_cannot_be_mapped(image, part):
    m = build(image, "")
    run_all(m)
    m.log.cur = []
    m.vdev.status = 0
    m.vdev.broken = False
    tr = m.transport
    offs = {"desc": 32, "driver": 40, "device": 48}
    tr.mmio_write(m, 22, 2, 0)
    tr.mmio_write(m, offs[part], 4, 0xFFFF0000)
    tr.mmio_write(m, offs[part] + 4, 4, 0x1)
    tr.mmio_write(m, 28, 2, 1)
    name = {"desc": "desc", "driver": "avail", "device": "used"}[part]
    assert m.vdev.error["message"] == f"Cannot map {name}"
