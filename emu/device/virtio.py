"""QEMU hw/virtio/virtio.c: VirtIODevice and VirtQueue state, virtqueue_pop/fill/flush, notify."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..sim.steps import add_fact
from ..spec import pci as P
from ..spec import virtio as V

VQ_MAX = 1024  # VIRTIO_QUEUE_MAX in QEMU


@dataclass(slots=True)
class VirtQueue:
    """struct VirtQueue (split ring part), QEMU's own field names."""
    num: int = 0
    num_default: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    caches: bool = False          # region caches built (virtio_init_region_cache)
    desc_len: int = 0             # length of the descriptor cache
    last_avail_idx: int = 0
    shadow_avail_idx: int = 0
    used_idx: int = 0
    signalled_used: int = 0
    signalled_used_valid: bool = False
    notification: bool = True
    inuse: int = 0
    vector: int = P.NO_VECTOR


@dataclass(slots=True)
class VirtIODevice:
    """struct VirtIODevice: status, features, ISR, the queues; `error` keeps the last diagnostic."""
    host_features: int = 0
    guest_features: int = 0
    status: int = 0
    isr: int = 0
    config_vector: int = P.NO_VECTOR
    generation: int = 0
    queue_sel: int = 0
    broken: bool = False
    started: bool = False
    vqs: list = field(default_factory=list)
    error: dict | None = None          # {"message", "spec", "step"} of the first virtio_error
    errors: list = field(default_factory=list)
    guest_errors: list = field(default_factory=list)   # qemu_log_mask(LOG_GUEST_ERROR) lines

    def has_feature(self, bit: int) -> bool:
        return bool(self.guest_features >> bit & 1)


def set_reg(m, obj, attr: str, name: str, value) -> None:
    """Change a device-visible field and log it as a register effect."""
    old = getattr(obj, attr)
    if old != value:
        setattr(obj, attr, value)
        m.log.add(("reg", name, old, value))


# -- errors and interrupts -------------------------------------------------------------

def virtio_error(m, msg: str, spec: str) -> None:
    """virtio_error(): report, set DEVICE_NEEDS_RESET (VERSION_1), config interrupt, broken."""
    vdev = m.vdev
    diag = {"message": msg, "spec": spec, "step": m.steps + 1}
    vdev.errors.append(diag)
    if vdev.error is None:
        vdev.error = diag
    m.log.add(("error", msg, spec))
    if vdev.has_feature(V.F_VERSION_1):
        set_reg(m, vdev, "status", "device_status", vdev.status | V.DEVICE_NEEDS_RESET)
        virtio_notify_config(m)
    set_reg(m, vdev, "broken", "broken", True)


def virtio_set_isr(m, value: int) -> None:
    set_reg(m, m.vdev, "isr", "isr", m.vdev.isr | value)


def virtio_notify_config(m) -> None:
    """virtio_notify_config(): ISR |= 3, generation++, config vector (only once DRIVER_OK)."""
    vdev = m.vdev
    if not vdev.status & V.DRIVER_OK:
        return
    virtio_set_isr(m, 3)
    set_reg(m, vdev, "generation", "config_generation", (vdev.generation + 1) & 0xFF)
    m.transport.msix_notify(m, vdev.config_vector)


# -- ring accessors (vring_avail_idx, vring_used_write, ...) ----------------------------------

def vring_avail_idx(m, vq: VirtQueue) -> int:
    vq.shadow_avail_idx = m.mem.read_u16(vq.avail + V.AVAIL_IDX)
    return vq.shadow_avail_idx


def vring_avail_flags(m, vq: VirtQueue) -> int:
    return m.mem.read_u16(vq.avail + V.AVAIL_FLAGS)


def vring_get_used_event(m, vq: VirtQueue) -> int:
    return m.mem.read_u16(vq.avail + V.avail_used_event_off(vq.num))


def vring_set_avail_event(m, vq: VirtQueue, val: int) -> None:
    if not vq.notification:
        return
    m.mem.write_u16(vq.used + V.used_avail_event_off(vq.num), val)


def virtio_queue_set_notification(m, qi: int, enable: bool) -> None:
    """virtio_queue_split_set_notification(): EVENT_IDX -> avail_event, else used.flags."""
    vq = m.vdev.vqs[qi]
    vq.notification = enable
    if not vq.desc or not vq.caches:
        return
    if m.vdev.has_feature(V.F_EVENT_IDX):
        vring_set_avail_event(m, vq, vring_avail_idx(m, vq))
    else:
        flags = m.mem.read_u16(vq.used + V.USED_FLAGS)
        new = flags & ~V.VRING_USED_F_NO_NOTIFY if enable else flags | V.VRING_USED_F_NO_NOTIFY
        if new != flags:
            m.mem.write_u16(vq.used + V.USED_FLAGS, new)


def virtio_queue_empty(m, qi: int) -> bool:
    """virtio_queue_split_empty(): shadow index first, then a read of avail.idx."""
    vdev = m.vdev
    vq = vdev.vqs[qi]
    if vdev.broken or not vq.avail:
        return True
    if vq.shadow_avail_idx != vq.last_avail_idx:
        return False
    avail_idx = vring_avail_idx(m, vq) if vq.caches else 0   # no caches: QEMU reads 0
    return avail_idx == vq.last_avail_idx


# -- virtqueue_pop ------------------------------------------------------------------------

def _read_desc(m, base: int, i: int) -> tuple[int, int, int, int]:
    a = base + V.DESC_SIZE * i
    mem = m.mem
    return mem.read_u64(a), mem.read_u32(a + 8), mem.read_u16(a + 12), mem.read_u16(a + 14)


def _map_desc(m, iov: list, addrs: list, max_num_sg: int, pa: int, sz: int) -> bool:
    """virtqueue_map_desc(): one iovec per RAM region the buffer covers."""
    if not sz:
        virtio_error(m, "virtio: zero sized buffers are not allowed", "2.7.5 (len of a buffer)")
        return False
    while sz:
        if len(iov) == max_num_sg:
            virtio_error(m, "virtio: too many write descriptors in indirect table",
                         "2.7.5.3.1 (chain longer than the queue allows)")
            return False
        if not m.mem.is_mapped(pa, 1):
            virtio_error(m, "virtio: bogus descriptor or out of resources",
                         "2.7.5 (addr is a guest-physical address of a buffer)")
            return False
        length = min(sz, m.mem.size - pa)
        iov.append((pa, length))
        addrs.append(pa)
        sz -= length
        pa += length
    return True


def virtqueue_pop(m, qi: int) -> dict | None:
    """virtqueue_split_pop(): every check QEMU makes, in QEMU's order, with QEMU's messages."""
    vdev = m.vdev
    if vdev.broken:
        return None
    vq = vdev.vqs[qi]
    if virtio_queue_empty(m, qi):
        return None
    max_ = vq.num
    if vq.inuse >= vq.num:
        virtio_error(m, "Virtqueue size exceeded",
                     "2.7.13.3 (driver made more buffers available than the queue size)")
        return None
    idx = vq.last_avail_idx
    set_reg(m, vq, "last_avail_idx", f"vq{qi}.last_avail_idx", (idx + 1) & 0xFFFF)
    head = m.mem.read_u16(vq.avail + V.AVAIL_RING + 2 * (idx % vq.num))
    if head >= vq.num:
        virtio_error(m, f"Guest says index {head} is available",
                     "2.7.6 (avail ring entries are heads of descriptor chains < queue size)")
        return None
    if vdev.has_feature(V.F_EVENT_IDX):
        vring_set_avail_event(m, vq, vq.last_avail_idx)
    if not vq.caches:
        virtio_error(m, "Region caches not initialized", "4.1.4.3 (queue not set up)")
        return None
    if vq.desc_len < max_ * V.DESC_SIZE:
        virtio_error(m, "Cannot map descriptor ring", "2.7.5 (descriptor table in RAM)")
        return None
    base = vq.desc
    i = head
    descs = []
    addr, length, flags, nxt = _read_desc(m, base, i)
    descs.append((base, i, addr, length, flags, nxt))
    add_fact(m, ("desc", "pop", qi, i, None, None, head, addr, length, flags, nxt, None))
    indirect_table = None
    if flags & V.VIRTQ_DESC_F_INDIRECT:
        if not length or length % V.DESC_SIZE:
            virtio_error(m, "Invalid size for indirect buffer table",
                         "2.7.5.3.1 (indirect table len is a multiple of 16)")
            return None
        if not vdev.has_feature(V.F_INDIRECT_DESC):
            vdev.guest_errors.append("Device virtio-blk: indirect_desc was not negotiated!")
            m.log.add(("guest-error", "indirect_desc was not negotiated!"))
        if not m.mem.is_mapped(addr, length):
            virtio_error(m, "Cannot map indirect buffer",
                         "2.7.5.3.1 (indirect table in RAM)")
            return None
        max_ = length // V.DESC_SIZE
        base = addr
        indirect_table = (addr, length)
        i = 0
        addr, length, flags, nxt = _read_desc(m, base, i)
        descs.append((base, i, addr, length, flags, nxt))
        add_fact(m, ("desc", "pop", qi, None, base, i, head, addr, length, flags, nxt, None))
    out_iov: list = []
    in_iov: list = []
    out_addr: list = []
    in_addr: list = []
    entries = 0
    while True:
        if flags & V.VIRTQ_DESC_F_WRITE:
            ok = _map_desc(m, in_iov, in_addr, V.VIRTQUEUE_MAX_SIZE - len(out_iov), addr, length)
        else:
            if in_iov:
                virtio_error(m, "Incorrect order for descriptors",
                             "2.7.4.2 (device-writable buffers after device-readable ones)")
                return None
            ok = _map_desc(m, out_iov, out_addr, V.VIRTQUEUE_MAX_SIZE, addr, length)
        if not ok:
            return None
        entries += 1
        if entries > max_:
            virtio_error(m, "Looped descriptor", "2.7.5.2 (a chain must not loop)")
            return None
        if not flags & V.VIRTQ_DESC_F_NEXT:
            break
        if nxt >= max_:
            virtio_error(m, f"Desc next is {nxt}", "2.7.5.2 (next < queue size / table entries)")
            return None
        i = nxt
        addr, length, flags, nxt = _read_desc(m, base, i)
        descs.append((base, i, addr, length, flags, nxt))
        if indirect_table is None:
            add_fact(m, ("desc", "pop", qi, i, None, None, head, addr, length, flags, nxt, None))
        else:
            add_fact(m, ("desc", "pop", qi, None, base, i, head, addr, length, flags, nxt, None))
    set_reg(m, vq, "inuse", f"vq{qi}.inuse", vq.inuse + 1)
    return {"index": head, "ndescs": 1, "out": out_iov, "in": in_iov,
            "descs": descs, "indirect": indirect_table, "avail_idx": idx}


# -- completion ---------------------------------------------------------------------------

def virtqueue_fill(m, qi: int, elem: dict, length: int, idx: int = 0) -> bool:
    """virtqueue_split_fill(): used.ring[used_idx + idx] = {id, len}; nothing if broken."""
    vdev = m.vdev
    vq = vdev.vqs[qi]
    if vdev.broken or not vq.used:
        return False
    slot = (idx + vq.used_idx) % vq.num
    a = vq.used + V.USED_RING + V.USED_ELEM_SIZE * slot
    m.mem.write(a, elem["index"].to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little"))
    # for breakpoints: the chain goes back to the driver; its descriptors as popped
    head = elem["index"]
    for k, (base, i, daddr, dlen, dflags, dnext) in enumerate(elem.get("descs", ())):
        if k == 0 or not elem.get("indirect"):
            add_fact(m, ("desc", "used", qi, i, None, None, head, daddr, dlen, dflags, dnext, None))
        else:
            add_fact(m, ("desc", "used", qi, None, base, i, head, daddr, dlen, dflags, dnext, None))
    return True


def virtqueue_flush(m, qi: int, count: int = 1) -> bool:
    """virtqueue_split_flush(): publish used.idx, inuse -= count, signalled_used wrap guard."""
    vdev = m.vdev
    vq = vdev.vqs[qi]
    if vdev.broken:
        set_reg(m, vq, "inuse", f"vq{qi}.inuse", vq.inuse - count)
        return False
    if not vq.used:
        return False
    old = vq.used_idx
    new = (old + count) & 0xFFFF
    m.mem.write_u16(vq.used + V.USED_IDX, new)
    set_reg(m, vq, "used_idx", f"vq{qi}.used_idx", new)
    set_reg(m, vq, "inuse", f"vq{qi}.inuse", vq.inuse - count)
    diff = (new - vq.signalled_used) & 0xFFFF
    if (diff - 0x10000 if diff >= 0x8000 else diff) < ((new - old) & 0xFFFF):
        vq.signalled_used_valid = False
    return True


def virtio_should_notify(m, qi: int) -> tuple[bool, str]:
    """virtio_split_should_notify(): (decision, why)."""
    vdev = m.vdev
    vq = vdev.vqs[qi]
    if vdev.has_feature(V.F_NOTIFY_ON_EMPTY) and not vq.inuse and virtio_queue_empty(m, qi):
        return True, "NOTIFY_ON_EMPTY and the queue is empty"
    if not vdev.has_feature(V.F_EVENT_IDX):
        flags = vring_avail_flags(m, vq)
        if flags & V.VRING_AVAIL_F_NO_INTERRUPT:
            return False, "avail.flags has NO_INTERRUPT"
        return True, "avail.flags allows interrupts"
    v = vq.signalled_used_valid
    vq.signalled_used_valid = True
    old = vq.signalled_used
    new = vq.used_idx
    set_reg(m, vq, "signalled_used", f"vq{qi}.signalled_used", new)
    event = vring_get_used_event(m, vq)
    if not v:
        return True, f"first notification (signalled_used was not valid), used_event={event}"
    need = V.vring_need_event(event, new, old)
    return need, (f"vring_need_event(used_event={event}, new={new}, old={old}) = "
                  f"{'true' if need else 'false'}")


# -- set-up and reset ------------------------------------------------------------------------

def virtio_init_region_cache(m, qi: int) -> None:
    """virtio_init_region_cache(): map desc/avail/used fully or report which one fails."""
    vdev = m.vdev
    vq = vdev.vqs[qi]
    vq.caches = False
    vq.desc_len = 0
    if not vq.desc:
        return
    event = 2 if vdev.has_feature(V.F_EVENT_IDX) else 0
    parts = (("desc", vq.desc, V.DESC_SIZE * vq.num),
             ("avail", vq.avail, 4 + 2 * vq.num + event),
             ("used", vq.used, 4 + 8 * vq.num + event))
    for name, gpa, size in parts:
        if not m.mem.is_mapped(gpa, size):
            virtio_error(m, f"Cannot map {name}", "2.7 (virtqueue parts must lie in RAM)")
            return
    vq.caches = True
    vq.desc_len = V.DESC_SIZE * vq.num


def virtio_queue_set_num(m, qi: int, num: int) -> None:
    """virtio_queue_set_num(): no flipping between existent and nonexistent, at most 1024."""
    vq = m.vdev.vqs[qi]
    if bool(num) != bool(vq.num) or num > V.VIRTQUEUE_MAX_SIZE or num < 0:
        return
    set_reg(m, vq, "num", f"vq{qi}.num", num)


def virtio_reset(m) -> None:
    """virtio_reset(): every queue back to its defaults, features 0, ISR 0, not broken."""
    vdev = m.vdev
    set_reg(m, vdev, "status", "device_status", 0)
    vdev.guest_features = 0
    vdev.isr = 0
    vdev.config_vector = P.NO_VECTOR
    vdev.queue_sel = 0
    vdev.broken = False
    vdev.started = False
    for q in vdev.vqs:
        q.desc = q.avail = q.used = 0
        q.caches = False
        q.desc_len = 0
        q.last_avail_idx = q.shadow_avail_idx = q.used_idx = 0
        q.signalled_used = 0
        q.signalled_used_valid = False
        q.notification = True
        q.vector = P.NO_VECTOR
        q.inuse = 0
        q.num = q.num_default


def virtio_set_features(m, val: int) -> int:
    """virtio_set_features(): refused after FEATURES_OK; unknown bits masked off."""
    vdev = m.vdev
    if vdev.status & V.FEATURES_OK:
        return -22
    if val >> V.F_BAD_FEATURE & 1:
        vdev.guest_errors.append("guest sent VIRTIO_F_BAD_FEATURE")
    old_event = vdev.has_feature(V.F_EVENT_IDX)
    vdev.guest_features = val & vdev.host_features
    if vdev.has_feature(V.F_EVENT_IDX) != old_event:
        for qi, q in enumerate(vdev.vqs):
            if q.num:
                virtio_init_region_cache(m, qi)
    return 0
