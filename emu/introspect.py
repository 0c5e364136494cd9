"""QEMU's virtio introspection with QEMU's field names (hw/virtio/virtio-qmp.c,
x-query-virtio-status / -queue-status / -queue-element), as plain dicts."""
from __future__ import annotations

import struct

from .spec import virtio as V


def virtio_status(m) -> dict:
    """info virtio-status."""
    vdev = m.vdev
    # QEMU's VirtioStatus names (qapi/virtio.json), plus device_name/endianness, the names
    # this dict first used (kept for its readers)
    return {"name": "virtio-blk", "device_name": "virtio-blk", "device_id": 2,
            "vhost_started": False, "bus_name": "virtio-bus", "broken": vdev.broken,
            "disabled": False, "vm_running": True, "use_started": True, "started": vdev.started,
            "start_on_kick": False, "disable_legacy_check": False,
            "use_guest_notifier_mask": True, "num_vqs": len(vdev.vqs),
            "queue_sel": vdev.queue_sel, "isr": vdev.isr, "device_endian": "little",
            "endianness": "little",
            "status": vdev.status, "status_names": V.status_names(vdev.status),
            "guest_features": V.feature_names(vdev.guest_features),
            "host_features": V.feature_names(vdev.host_features & ~V.LEGACY_FEATURES),
            "backend_features": [], "config_generation": vdev.generation,
            "error": vdev.error}


def virtio_queue_status(m, queue: int = 0) -> dict:
    """info virtio-queue-status."""
    q = m.vdev.vqs[queue]
    return {"name": "virtio-blk", "queue_index": queue, "inuse": q.inuse, "used_idx": q.used_idx,
            "signalled_used": q.signalled_used, "signalled_used_valid": q.signalled_used_valid,
            "last_avail_idx": q.last_avail_idx, "shadow_avail_idx": q.shadow_avail_idx,
            "vring_num": q.num, "vring_num_default": q.num_default, "vring_align": 4096,
            "vring_desc": q.desc, "vring_avail": q.avail, "vring_used": q.used,
            "desc": q.desc, "avail": q.avail, "used": q.used}


def virtio_queue_element(m, head: int | None = None, queue: int = 0) -> dict:
    """info virtio-queue-element [HEAD]: the chain at HEAD (default: the next one to pop)."""
    q = m.vdev.vqs[queue]
    mem = m.mem
    if not q.num or not q.caches:
        raise ValueError("the queue is not set up yet")
    avail_flags, avail_idx = mem.read_u16(q.avail), mem.read_u16(q.avail + 2)
    if head is None:
        head = mem.read_u16(q.avail + 4 + 2 * (q.last_avail_idx % q.num))
    if not 0 <= head < q.num:
        raise ValueError(f"head {head} is out of range (queue size {q.num})")
    descs = []
    base, i, limit = q.desc, head, q.num
    a, ln, fl, nx = struct.unpack_from("<QIHH", mem.ram, base + 16 * i)
    if fl & V.VIRTQ_DESC_F_INDIRECT and ln and ln % 16 == 0 and mem.is_mapped(a, ln):
        descs.append({"addr": a, "len": ln, "flags": V.desc_flag_names(fl).lower().split("|")})
        base, i, limit = a, 0, ln // 16
        a, ln, fl, nx = struct.unpack_from("<QIHH", mem.ram, base)
    for _ in range(limit):
        descs.append({"addr": a, "len": ln, "flags": [f for f in V.desc_flag_names(fl).lower().split("|")
                                                      if f != "0"]})
        if not fl & V.VIRTQ_DESC_F_NEXT or nx >= limit:
            break
        i = nx
        a, ln, fl, nx = struct.unpack_from("<QIHH", mem.ram, base + 16 * i)
    return {"index": head, "ndescs": len(descs), "descs": descs,
            "avail": {"flags": avail_flags, "idx": avail_idx, "ring": head},
            "used": {"flags": mem.read_u16(q.used), "idx": mem.read_u16(q.used + 2)}}
