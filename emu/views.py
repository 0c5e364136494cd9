"""Read-only decoded views of a machine for the panes (frozen dataclasses, no side effects).

Everything is decoded from guest RAM, the register file, component state and the image
file as they are now; nothing here changes the machine (not even a cache's LRU order).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .spec import blk as B
from .spec import virtio as V

GUEST_OPS = {"READ": "IN", "WRITE": "OUT", "FLUSH": "FLUSH", "DISCARD": "DISCARD",
             "WRITE_ZEROES": "WRITE_ZEROES", "DRV_IN": "GET_ID"}


@dataclass(frozen=True)
class RequestView:
    """One guest request (struct request) and where it is in the stack now."""
    id: int
    type: str                 # virtio-blk type name: IN, OUT, FLUSH, ...
    sector: int
    length: int
    stage: str
    status: str               # "" while in flight, else OK / IOERR / NOTSUPP
    tag: int = -1
    head: int | None = None   # descriptor head once in the ring
    data: tuple = ()          # guest buffers (gpa, len)


@dataclass(frozen=True)
class DescView:
    """One descriptor decoded from guest RAM, with what the driver uses it for."""
    index: int
    addr: int
    len: int
    flags: int
    flag_names: str
    next: int
    role: str = ""            # request header / data / status / indirect table / range
    owner: int | None = None  # guest request id
    free: bool = False        # on the driver's free list
    table: tuple = ()         # entries of the indirect table this descriptor points at


@dataclass(frozen=True)
class RingsView:
    """Avail and used rings plus both ends' indices (QEMU's queue-status names)."""
    size: int
    desc: int
    avail: int
    used: int
    avail_flags: int
    avail_idx: int
    avail_ring: tuple          # (slot, head)
    used_event: int
    used_flags: int
    used_idx_mem: int
    used_ring: tuple           # (slot, id, len)
    avail_event: int
    last_used_idx: int         # driver
    avail_idx_shadow: int      # driver
    num_free: int
    free_head: int
    last_avail_idx: int        # device
    shadow_avail_idx: int
    used_idx: int
    signalled_used: int
    signalled_used_valid: bool
    inuse: int


@dataclass(frozen=True)
class DeviceView:
    """The device as `info virtio-status` shows it, plus counters and the error."""
    status: int
    status_names: tuple
    features_offered: tuple
    features_negotiated: tuple
    config: tuple              # (field, value)
    queue_regs: tuple          # (name, value)
    counters: tuple            # (name, value)
    broken: bool
    error: dict | None
    isr: int
    config_generation: int
    write_cache: bool


@dataclass(frozen=True)
class HostRange:
    host: int
    length: int
    kind: str
    guest: int | None = None


@dataclass(frozen=True)
class StepView:
    n: int
    time_ns: int
    side: str
    layer: str
    function: str
    source: str
    detail: str
    ram_writes: tuple = field(default=())     # (gpa, len)
    host_writes: tuple = field(default=())    # (offset, len)
    error: str = ""


# -- requests --------------------------------------------------------------------------------

def _device_req_by_head(m) -> dict:
    return {r["elem"]["index"]: r for r in m.vblk.reqs.values() if r.get("elem")}


def _unpopped_heads(m) -> set:
    """Heads the driver published that the device has not popped yet (last_avail_idx..avail.idx)."""
    vq, q = m.guest.vq, m.vdev.vqs[0]
    if not vq.num:
        return set()
    idx = m.mem.read_u16(vq.avail + 2)
    pending = min((idx - q.last_avail_idx) % 65536, vq.num)
    return {m.mem.read_u16(vq.avail + 4 + 2 * ((q.last_avail_idx + i) % vq.num)) for i in range(pending)}


def _used_heads(m) -> set:
    """Heads the device pushed that the driver has not taken yet (last_used_idx..used.idx)."""
    vq = m.guest.vq
    if not vq.num:
        return set()
    idx = m.mem.read_u16(vq.used + 2)
    pending = min((idx - vq.last_used_idx) % 65536, vq.num)
    return {m.mem.read_u32(vq.used + 4 + 8 * ((vq.last_used_idx + i) % vq.num)) for i in range(pending)}


def _live_stage(m, rq: dict, dev: dict, unpopped: set, pushed: set = frozenset()) -> str:
    stage = rq["stage"]
    if stage in ("plugged", "queued", "requeued"):
        return stage
    if stage in ("dispatched", "started"):
        return "driver: adding"                     # virtio_queue_rq .. virtqueue_add_split
    if stage == "avail":
        # furthest along first: virtqueue_get_buf took it (QEMU's virtio_notify for it may not
        # have run yet); published but not popped (a device request under a reused head is an
        # older chain's); pushed by virtqueue_flush (virtio_notify may still be deciding)
        if rq.get("used_len") is not None:
            return "guest: completing"
        head = rq.get("head")
        if head in unpopped:
            return "avail: not popped"
        d = dev.get(head)
        if d is None or head in pushed:
            return "used: awaiting irq"
        return {"popped": "device: popped", "mrb": "device: merging",
                "submitted": "host: block I/O", "flush": "host: flush",
                "completing": "device: completing"}.get(d["stage"], "device: " + d["stage"])
    return stage


def requests(m) -> list[RequestView]:
    """Completed (most recent) and in-flight guest requests, by id."""
    out = []
    for c in m.guest.completed:
        out.append(RequestView(c["id"], GUEST_OPS.get(c["op"], c["op"]), c["sector"], c["bytes"],
                               "done", c["status"]))
    dev = _device_req_by_head(m)
    unpopped = _unpopped_heads(m)
    pushed = _used_heads(m)
    for rid, rq in sorted(m.guest.blkmq.rqs.items()):
        data = tuple(seg for bio in rq["bios"] for seg in bio["segs"])
        out.append(RequestView(rid, GUEST_OPS.get(rq["op"], rq["op"]), rq["sector"], rq["bytes"],
                               _live_stage(m, rq, dev, unpopped, pushed), "", rq["tag"], rq.get("head"), data))
    out.sort(key=lambda r: r.id)
    return out


# -- descriptors -----------------------------------------------------------------------------------

def _desc(m, base: int, i: int) -> tuple[int, int, int, int]:
    return struct.unpack_from("<QIHH", m.mem.ram, base + 16 * i)


def descriptors(m) -> list[DescView]:
    """The descriptor table of queue 0 with roles, owners, free-list membership."""
    vq = m.guest.vq
    if not vq.num or not m.mem.is_mapped(vq.desc, 16 * vq.num):
        return []
    roles: dict = {}
    tables: dict = {}
    for rid, rq in m.guest.blkmq.rqs.items():
        head = rq.get("head")
        if head is None or head >= vq.num or vq.desc_data[head] != rid:
            continue        # not on the ring yet, or detached by virtqueue_get_buf (free again)
        rr = rq.get("roles", [])
        if rq.get("table"):
            roles[head] = ("indirect table", rid)
            entries = []
            for k in range(len(rq.get("sgs", []))):
                if not m.mem.is_mapped(rq["table"] + 16 * k, 16):
                    break
                a, ln, fl, nx = _desc(m, rq["table"], k)
                entries.append(DescView(k, a, ln, fl, V.desc_flag_names(fl), nx,
                                        rr[k] if k < len(rr) else "", rid))
            tables[head] = tuple(entries)
        else:
            i = head
            for k in range(len(rr)):
                roles[i] = (rr[k], rid)
                i = vq.extra_next[i]
    free = set()
    i = vq.free_head
    for _ in range(vq.num_free):
        if i in free or i >= vq.num:
            break
        free.add(i)
        i = vq.extra_next[i]
    out = []
    for i in range(vq.num):
        a, ln, fl, nx = _desc(m, vq.desc, i)
        role, owner = roles.get(i, ("", None))
        out.append(DescView(i, a, ln, fl, V.desc_flag_names(fl), nx, role, owner, i in free,
                            tables.get(i, ())))
    return out


# -- rings --------------------------------------------------------------------------------------------

def rings(m) -> RingsView | None:
    vq = m.guest.vq
    q = m.vdev.vqs[0]
    if not vq.num:
        return None
    mem = m.mem
    n = vq.num
    av = [(s, mem.read_u16(vq.avail + 4 + 2 * s)) for s in range(n)]
    us = [(s, mem.read_u32(vq.used + 4 + 8 * s), mem.read_u32(vq.used + 8 + 8 * s)) for s in range(n)]
    return RingsView(n, vq.desc, vq.avail, vq.used,
                     mem.read_u16(vq.avail), mem.read_u16(vq.avail + 2), tuple(av),
                     mem.read_u16(vq.avail + V.avail_used_event_off(n)),
                     mem.read_u16(vq.used), mem.read_u16(vq.used + 2), tuple(us),
                     mem.read_u16(vq.used + V.used_avail_event_off(n)),
                     vq.last_used_idx, vq.avail_idx_shadow, vq.num_free, vq.free_head,
                     q.last_avail_idx, q.shadow_avail_idx, q.used_idx, q.signalled_used,
                     q.signalled_used_valid, q.inuse)


# -- device -----------------------------------------------------------------------------------------------

def device(m) -> DeviceView:
    vdev = m.vdev
    cfg = m.dev_ops.get_config(m)
    config = []
    for name, (off, size) in B.CONFIG_FIELDS.items():
        if off + size <= len(cfg):
            config.append((name, int.from_bytes(cfg[off:off + size], "little")))
    q = vdev.vqs[0]
    pq = m.transport.proxy.vqs[0]
    regs = (("queue_size", q.num), ("queue_enable", pq.enabled), ("queue_desc", q.desc),
            ("queue_driver", q.avail), ("queue_device", q.used), ("queue_msix_vector", q.vector),
            ("config_msix_vector", vdev.config_vector), ("queue_notify_off", 0))
    c = m.counters
    counters = (("kicks", c["kicks"]), ("kicks suppressed (EVENT_IDX)", c["kicks_suppressed"]),
                ("interrupts", c["interrupts"]),
                ("interrupts suppressed (EVENT_IDX)", c["irqs_suppressed"]),
                ("requests", m.vblk.submitted), ("completed", m.vblk.completed),
                ("errors", m.vblk.errors), ("merged by QEMU", m.vblk.merged))
    return DeviceView(vdev.status, tuple(V.status_names(vdev.status)),
                      tuple(V.feature_names(vdev.host_features & ~V.LEGACY_FEATURES)),
                      tuple(V.feature_names(vdev.guest_features)), tuple(config), regs, counters,
                      vdev.broken, vdev.error, vdev.isr, vdev.generation, m.block.wce)


# -- the host file -------------------------------------------------------------------------------------------

def host_map(m) -> list[HostRange]:
    """Every range of the host file by kind (qcow2 structures, data with its guest offset)."""
    f = m.hostfile
    if m.fmt.name == "raw":
        return [HostRange(0, f.size, "data", 0)] if f.size else []
    from .block.qcow2.image import map_image, open_qcow2
    try:
        meta = open_qcow2(f.pread, f.size, f.path, check_backing=False)
        return [HostRange(r["host"], r["length"], r["kind"], r.get("guest"))
                for r in map_image(meta, f.pread, f.size)]
    except Exception:      # a mid-run image can be inconsistent on disk; the map is best effort
        return [HostRange(0, f.size, "unknown")]


def guest_to_host(m, offset: int, length: int) -> list[tuple[int, int]]:
    """Where guest bytes [offset, +length) live in the host file now (data clusters only)."""
    if m.fmt.name == "raw":
        return [(offset, length)]
    eng = m.fmt.engine
    out = []
    end = offset + length
    while offset < end:
        cs = eng.cluster_size
        n = min(end - offset, cs - offset % cs)
        l1i = offset >> (eng.l2_bits + eng.cluster_bits)
        host = None
        if l1i < eng.l1_size and eng.l1_table[l1i] & 0x00FFFFFFFFFFFE00:
            l2 = eng.l1_table[l1i] & 0x00FFFFFFFFFFFE00
            idx = (offset >> eng.cluster_bits) & (eng.l2_size - 1)
            table_off = l2 + (idx // eng.l2_slice_size) * eng.l2_slice_size * 8
            ci = eng.l2_cache.is_table_offset(table_off)
            k = idx % eng.l2_slice_size
            raw = (bytes(eng.l2_cache.tables[ci][k * 8:k * 8 + 8]) if ci >= 0
                   else eng.pread(table_off + k * 8, 8))
            entry = int.from_bytes(raw, "big")
            if not entry & (1 << 62) and not entry & 1 and entry & 0x00FFFFFFFFFFFE00:
                host = (entry & 0x00FFFFFFFFFFFE00) + offset % cs
        if host is not None:
            if out and out[-1][0] + out[-1][1] == host:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((host, n))
        offset += n
    return out


def step_view(rec) -> StepView:
    from .sim.steps import GUEST_LAYERS
    ram = tuple((e[1], len(e[3])) for e in rec.effects if e[0] == "ram")
    host = tuple((e[1], len(e[3])) for e in rec.effects if e[0] == "file")
    err = next((e[1] for e in rec.effects if e[0] == "error"), "")
    return StepView(rec.n, rec.time_ns, "guest" if rec.layer in GUEST_LAYERS else "host",
                    rec.layer, rec.function, rec.source, rec.detail, ram, host, err)
