"""An independent decoder of virtio structures in guest RAM, written from the virtio 1.x spec.

It deliberately imports nothing from emu: offsets and flag values are re-derived here from
the spec's struct definitions (2.7.5 virtq_desc, 2.7.6 virtq_avail, 2.7.8 virtq_used,
5.2.6 virtio_blk_req), so a layout bug in the emulator cannot hide in a shared constant.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

NEXT, WRITE, INDIRECT = 1, 2, 4


@dataclass
class Desc:
    addr: int
    len: int
    flags: int
    next: int


def desc(ram: bytes, table: int, i: int) -> Desc:
    """struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; } — 16 bytes."""
    return Desc(*struct.unpack_from("<QIHH", ram, table + 16 * i))


def avail(ram: bytes, base: int, qsize: int) -> dict:
    """struct virtq_avail { le16 flags; le16 idx; le16 ring[qsize]; le16 used_event; }"""
    flags, idx = struct.unpack_from("<HH", ram, base)
    ring = list(struct.unpack_from(f"<{qsize}H", ram, base + 4))
    (used_event,) = struct.unpack_from("<H", ram, base + 4 + 2 * qsize)
    return {"flags": flags, "idx": idx, "ring": ring, "used_event": used_event}


def used(ram: bytes, base: int, qsize: int) -> dict:
    """struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[qsize]; le16 avail_event; }"""
    flags, idx = struct.unpack_from("<HH", ram, base)
    ring = [struct.unpack_from("<II", ram, base + 4 + 8 * i) for i in range(qsize)]
    (avail_event,) = struct.unpack_from("<H", ram, base + 4 + 8 * qsize)
    return {"flags": flags, "idx": idx, "ring": ring, "avail_event": avail_event}


def chain(ram: bytes, table: int, head: int, qsize: int) -> list[Desc]:
    """Follow a descriptor chain, entering an indirect table if the head points to one."""
    d = desc(ram, table, head)
    if d.flags & INDIRECT:
        table, n = d.addr, d.len // 16
        i = 0
    else:
        n, i = qsize, head
    out = []
    for _ in range(n):
        d = desc(ram, table, i)
        out.append(d)
        if not d.flags & NEXT:
            break
        i = d.next
    return out


def blk_outhdr(raw: bytes) -> dict:
    """struct virtio_blk_req header { le32 type; le32 reserved; le64 sector; }"""
    t, r, s = struct.unpack("<IIQ", raw[:16])
    return {"type": t, "reserved": r, "sector": s}


def vring_init(base: int, qsize: int, align: int) -> tuple[int, int, int]:
    """The legacy contiguous layout (spec 2.7.2 'Legacy Interfaces: A Note on Virtqueue Layout')."""
    desc_ = base
    avail_ = base + 16 * qsize
    used_ = avail_ + 2 * (3 + qsize)
    used_ = (used_ + align - 1) // align * align
    return desc_, avail_, used_
