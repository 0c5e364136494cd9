"""Byte layouts in guest RAM, checked with the independent spec decoder (tests/specdecode.py)."""
from __future__ import annotations

import pytest

from emu.workload import write_pattern
from tests import specdecode as D
from tests.conftest import build, run_all, run_until


def _ring(m):
    vq = m.guest.vq
    return vq.desc, vq.avail, vq.used, vq.num


@pytest.mark.parametrize("qsize", [4, 64, 256, 1024])
def test_ring_parts_follow_vring_init_with_cache_line_alignment(image, qsize):
    m = build(image, "", queue_size=qsize)
    run_all(m)
    desc, avail, used, num = _ring(m)
    assert num == qsize
    assert (desc, avail, used) == D.vring_init(desc, qsize, 64)
    assert desc % 16 == 0 and avail % 2 == 0 and used % 4 == 0
    # the device latched the same addresses from the common config registers
    q = m.vdev.vqs[0]
    assert (q.desc, q.avail, q.used, q.num) == (desc, avail, used, qsize)


def test_published_write_request_decodes_from_raw_ram(image):
    m = build(image, "write 0x3000 8k\n")
    run_until(m, lambda s: s.kind == "vring.add_publish")
    desc, avail, used, num = _ring(m)
    ram = bytes(m.mem.ram)
    a = D.avail(ram, avail, num)
    assert a["idx"] == 1
    head = a["ring"][0]
    hd = D.desc(ram, desc, head)
    assert hd.flags == D.INDIRECT and hd.len == 3 * 16
    c = D.chain(ram, desc, head, num)
    assert [d.flags for d in c] == [D.NEXT, D.NEXT, D.WRITE]
    assert [d.len for d in c] == [16, 8192, 1]
    hdr = D.blk_outhdr(ram[c[0].addr:c[0].addr + 16])
    assert hdr == {"type": 1, "reserved": 0, "sector": 0x3000 // 512}
    assert ram[c[1].addr:c[1].addr + 8192] == write_pattern(1, 0x3000, 8192)
    # the status byte sits right after the 16-byte header in struct virtblk_req
    assert c[2].addr == c[0].addr + 16


def test_direct_chain_without_indirect(image):
    m = build(image, "read 0 4k\n", indirect=False)
    run_until(m, lambda s: s.kind == "vring.add_publish")
    desc, avail, _used, num = _ring(m)
    ram = bytes(m.mem.ram)
    head = D.avail(ram, avail, num)["ring"][0]
    c = D.chain(ram, desc, head, num)
    assert [d.flags for d in c] == [D.NEXT, D.NEXT | D.WRITE, D.WRITE]
    assert [d.len for d in c] == [16, 4096, 1]
    assert D.blk_outhdr(ram[c[0].addr:c[0].addr + 16])["type"] == 0


def test_used_ring_and_event_indices_after_completion(image):
    m = build(image, "write 0 4k\nwait\nread 0 4k\nwait\n")
    run_all(m)
    _desc, avail, used, num = _ring(m)
    ram = bytes(m.mem.ram)
    u = D.used(ram, used, num)
    a = D.avail(ram, avail, num)
    assert u["idx"] == 2 and a["idx"] == 2
    # used len as QEMU computes it: the whole device-writable size (status byte included)
    assert [ln for _id, ln in u["ring"][:2]] == [1, 4097]
    # EVENT_IDX words: the driver asks for an interrupt at the next used entry,
    # QEMU re-enabled notification at the current avail index
    assert a["used_event"] == 2
    assert u["avail_event"] == 2
    assert a["flags"] == 0 and u["flags"] == 0


def test_no_event_idx_uses_flags(image):
    m = build(image, "write 0 4k\n", event_idx=False)
    steps = run_all(m)
    _desc, _avail, used, num = _ring(m)
    assert not m.vdev.has_feature(29)
    # QEMU set VRING_USED_F_NO_NOTIFY while it drained the ring and cleared it afterwards
    flag_writes = [e for s in steps for e in s.effects
                   if e[0] == "ram" and e[1] == used and s.function == "virtio_blk_handle_vq"]
    assert [int.from_bytes(e[3], "little") for e in flag_writes] == [1, 0]
    assert D.used(bytes(m.mem.ram), used, num)["flags"] == 0
