"""Linux drivers/virtio/virtio_ring.c, split ring: add, kick, get_buf, detach, enable/disable_cb."""
from __future__ import annotations

import struct

from ..spec import virtio as V
from ..sim.steps import add_fact, handler

RING = "drivers/virtio/virtio_ring.c"
COMMON = "drivers/virtio/virtio_pci_common.c"
_DESC = struct.Struct("<QIHH")


def write_desc(m, base: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
    m.mem.write(base + V.DESC_SIZE * i, _DESC.pack(addr, length, flags, nxt))


def _bad_ring(m, msg: str) -> None:
    """BAD_RING(): log and mark the queue broken."""
    vq = m.guest.vq
    vq.broken = True
    vq.bad_ring = msg
    m.guest.log.append(f"virtio_blk: {msg}")
    m.log.add(("guest-error", msg))


@handler("vring.add_split", "virtio_ring", "virtqueue_add_split", RING)
def add_split(m, rid: int) -> str:
    """Pick indirect or direct, check space, take descriptors from the free list."""
    g = m.guest
    vq = g.vq
    rq = g.blkmq.rqs[rid]
    sgs = rq["sgs"]
    total = len(sgs)
    if vq.broken:
        rq["add_err"] = "EIO"
        return "queue is broken: -EIO"
    indirect = vq.indirect and total > 1 and vq.num_free > 0
    table = 0
    note = ""
    if indirect:
        table = m.pages.kmalloc(V.DESC_SIZE * total) or 0
        if not table:
            indirect = False
            note = "kmalloc of the indirect table failed: falling back to direct descriptors; "
    used = 1 if indirect else total
    if vq.num_free < used:
        rq["add_err"] = "ENOSPC"
        if rq["out_sgs"]:
            m.sim.cont("vring.notify", (1,))
            return (note + f"need {used} descriptors, {vq.num_free} free: forced notify "
                    "('for historical reasons'), then -ENOSPC")
        return note + f"need {used} descriptors, {vq.num_free} free: -ENOSPC"
    head = vq.free_head
    rq["add"] = {"indirect": indirect, "table": table, "k": 0, "i": 0 if indirect else head,
                 "head": head, "used": used}
    rq["table"] = table
    m.sim.cont("vring.add_desc", (rid,))
    if indirect:
        return note + f"{total} sg entries -> indirect table of {total} descriptors at {table:#x}"
    return note + f"{total} sg entries -> {total} ring descriptors from free_head {head}"


@handler("vring.add_desc", "virtio_ring", "virtqueue_add_split", RING)
def add_desc(m, rid: int) -> str:
    """Write one descriptor of the chain (virtqueue_add_desc_split)."""
    g = m.guest
    vq = g.vq
    rq = g.blkmq.rqs[rid]
    st = rq["add"]
    k = st["k"]
    gpa, length, is_in = rq["sgs"][k]
    flags = V.VIRTQ_DESC_F_NEXT | (V.VIRTQ_DESC_F_WRITE if is_in else 0)
    i = st["i"]
    if st["indirect"]:
        base, nxt = st["table"], i + 1
    else:
        base, nxt = vq.desc, vq.extra_next[i]
        vq.extra_len[i] = length
        vq.extra_flags[i] = flags
    write_desc(m, base, i, gpa, length, flags, nxt)
    last = k == len(rq["sgs"]) - 1
    where = f"table[{i}]" if st["indirect"] else f"desc[{i}]"
    role = rq["roles"][k]
    if last:
        write_desc(m, base, i, gpa, length, flags & ~V.VIRTQ_DESC_F_NEXT, nxt)
        if not st["indirect"]:
            vq.extra_flags[i] = flags & ~V.VIRTQ_DESC_F_NEXT
        st["prev"] = i
        m.sim.cont("vring.add_head" if st["indirect"] else "vring.add_avail", (rid,))
    else:
        st["k"] = k + 1
        st["i"] = nxt
        m.sim.cont("vring.add_desc", (rid,))
    # for breakpoints: the descriptor as this step left it (ring slot i, or entry i of the table)
    written = flags & ~V.VIRTQ_DESC_F_NEXT if last else flags
    if st["indirect"]:
        add_fact(m, ("desc", "add", vq.index, None, base, i, st["head"], gpa, length, written, nxt, rid))
    else:
        add_fact(m, ("desc", "add", vq.index, i, None, None, st["head"], gpa, length, written, nxt, rid))
    shown = V.desc_flag_names(flags & ~V.VIRTQ_DESC_F_NEXT if last else flags)
    return (f"{where} = {{addr {gpa:#x}, len {length}, {shown}, next {nxt}}} ({role})"
            + ("; last: NEXT cleared" if last else ""))


@handler("vring.add_head", "virtio_ring", "virtqueue_add_split", RING)
def add_head(m, rid: int) -> str:
    """The ring descriptor that points at the indirect table."""
    vq = m.guest.vq
    rq = m.guest.blkmq.rqs[rid]
    st = rq["add"]
    head = st["head"]
    length = V.DESC_SIZE * len(rq["sgs"])
    nxt = vq.extra_next[head]
    write_desc(m, vq.desc, head, st["table"], length, V.VIRTQ_DESC_F_INDIRECT, nxt)
    add_fact(m, ("desc", "add", vq.index, head, None, None, head, st["table"], length,
                 V.VIRTQ_DESC_F_INDIRECT, nxt, rid))
    vq.extra_len[head] = length
    vq.extra_flags[head] = V.VIRTQ_DESC_F_INDIRECT
    m.sim.cont("vring.add_avail", (rid,))
    return f"desc[{head}] = {{addr {st['table']:#x}, len {length}, INDIRECT, next {nxt}}}"


@handler("vring.add_avail", "virtio_ring", "virtqueue_add_split", RING)
def add_avail(m, rid: int) -> str:
    """Update the free list and desc_state, then avail.ring[shadow % N] = head."""
    vq = m.guest.vq
    rq = m.guest.blkmq.rqs[rid]
    st = rq.pop("add")
    head = st["head"]
    vq.num_free -= st["used"]
    vq.free_head = vq.extra_next[head] if st["indirect"] else vq.extra_next[st["prev"]]
    vq.desc_data[head] = rid
    vq.desc_indir[head] = st["table"]
    rq["head"] = head
    slot = vq.avail_idx_shadow & (vq.num - 1)
    m.mem.write_u16(vq.avail + V.AVAIL_RING + 2 * slot, head)
    m.sim.cont("vring.add_publish", (rid,))
    return (f"avail.ring[{slot}] = {head}; num_free {vq.num_free}, free_head {vq.free_head}")


@handler("vring.add_publish", "virtio_ring", "virtqueue_add_split", RING)
def add_publish(m, rid: int) -> str:
    """virtio_wmb, then avail.idx = ++avail_idx_shadow: the publication point."""
    vq = m.guest.vq
    rq = m.guest.blkmq.rqs[rid]
    vq.avail_idx_shadow = (vq.avail_idx_shadow + 1) & 0xFFFF
    m.mem.write_u16(vq.avail + V.AVAIL_IDX, vq.avail_idx_shadow)
    vq.num_added += 1
    rq["stage"] = "avail"
    rq["add_err"] = ""
    return f"virtio_wmb; avail.idx = {vq.avail_idx_shadow} (head {rq['head']} is now visible to the device)"


@handler("vring.kick_prepare", "virtio_ring", "virtqueue_kick_prepare_split", RING)
def kick_prepare(m, then_notify: str) -> str:
    """virtio_mb, then vring_need_event(avail_event, new, old) or !(used.flags & NO_NOTIFY)."""
    vq = m.guest.vq
    new = vq.avail_idx_shadow
    old = (new - vq.num_added) & 0xFFFF
    vq.num_added = 0
    if vq.event:
        ev = m.mem.read_u16(vq.used + V.used_avail_event_off(vq.num))
        need = V.vring_need_event(ev, new, old)
        why = f"vring_need_event(avail_event={ev}, new={new}, old={old}) = {'true' if need else 'false'}"
    else:
        flags = m.mem.read_u16(vq.used + V.USED_FLAGS)
        need = not flags & V.VRING_USED_F_NO_NOTIFY
        why = f"used.flags = {flags:#x}: " + ("notify" if need else "NO_NOTIFY")
    m.guest.kick_needed = need
    if not need:
        m.counters["kicks_suppressed"] += 1
    if then_notify and need:
        m.sim.cont("vring.notify", (0,))
    return why + ("" if need else "; no kick needed")


@handler("vring.notify", "virtio_pci", "vp_notify", COMMON)
def notify(m, forced: int) -> str:
    """virtqueue_notify -> vp_notify: 16-bit MMIO write of the queue index to its doorbell."""
    vq = m.guest.vq
    if vq.broken:
        return "virtqueue_notify: queue broken, no notify"
    m.transport.mmio_write(m, vq.notify_off, 2, vq.index)
    m.counters["kicks"] += 1
    m.sim.post("qemu", "vpci.notify", (vq.notify_off,), delay=m.timing.vmexit_ns)
    m.sim.block("", ())
    return (("forced " if forced else "") +
            f"iowrite16({vq.index}, BAR4+{vq.notify_off:#x}): VM exit to QEMU")


@handler("vring.interrupt", "virtio_ring", "vring_interrupt", RING)
def interrupt(m, vector: int) -> str:
    vq = m.guest.vq
    used_idx = m.mem.read_u16(vq.used + V.USED_IDX)
    if used_idx == vq.last_used_idx:
        return f"vector {vector}: no new used buffers (last_used_idx {used_idx}): IRQ_NONE"
    if vq.broken:
        return "queue broken: interrupt ignored"
    if vq.event:
        vq.event_triggered = True
    m.guest.done_count = 0
    m.sim.cont("vblkd.done")
    return f"vector {vector}: used.idx {used_idx} != last_used_idx {vq.last_used_idx}: callback virtblk_done"


@handler("vring.disable_cb", "virtio_ring", "virtqueue_disable_cb_split", RING)
def disable_cb(m) -> str:
    vq = m.guest.vq
    m.sim.cont("vring.get_buf")
    if vq.avail_flags_shadow & V.VRING_AVAIL_F_NO_INTERRUPT:
        return "callbacks already disabled"
    vq.avail_flags_shadow |= V.VRING_AVAIL_F_NO_INTERRUPT
    if vq.event_triggered:
        return "shadow NO_INTERRUPT; event already triggered: no memory write"
    if vq.event:
        m.mem.write_u16(vq.avail + V.avail_used_event_off(vq.num), 0)
        return "used_event = 0 (\"a hack\")"
    m.mem.write_u16(vq.avail + V.AVAIL_FLAGS, vq.avail_flags_shadow)
    return "avail.flags = NO_INTERRUPT"


@handler("vring.get_buf", "virtio_ring", "virtqueue_get_buf_ctx_split", RING)
def get_buf(m) -> str:
    """Read the next used element, validate it, detach_buf_split, last_used_idx++."""
    g = m.guest
    vq = g.vq
    if vq.broken:
        m.sim.cont("vring.enable_cb")
        return "queue broken: NULL"
    used_idx = m.mem.read_u16(vq.used + V.USED_IDX)
    if vq.last_used_idx == used_idx:
        m.sim.cont("vring.enable_cb")
        return f"last_used_idx == used.idx ({used_idx}): NULL"
    slot = vq.last_used_idx & (vq.num - 1)
    a = vq.used + V.USED_RING + V.USED_ELEM_SIZE * slot
    uid, ulen = m.mem.read_u32(a), m.mem.read_u32(a + 4)
    if uid >= vq.num:
        _bad_ring(m, f"id {uid} out of range")
        m.sim.cont("vring.enable_cb")
        return f"used.ring[{slot}].id = {uid}: BAD_RING: id {uid} out of range (queue broken)"
    rid = vq.desc_data[uid]
    if rid < 0:
        _bad_ring(m, f"id {uid} is not a head!")
        m.sim.cont("vring.enable_cb")
        return f"used.ring[{slot}].id = {uid}: BAD_RING: id {uid} is not a head! (queue broken)"
    freed = detach_buf_split(m, uid)
    vq.last_used_idx = (vq.last_used_idx + 1) & 0xFFFF
    note = ""
    if not vq.avail_flags_shadow & V.VRING_AVAIL_F_NO_INTERRUPT:
        m.mem.write_u16(vq.avail + V.avail_used_event_off(vq.num), vq.last_used_idx)
        note = f"; used_event = {vq.last_used_idx}"
    g.done_count += 1
    rq = g.blkmq.rqs[rid]
    rq["used_len"] = ulen
    m.sim.cont("vblkd.request_done", (rid,))
    return (f"used.ring[{slot}] = {{id {uid}, len {ulen}}}: request {rid}; detach_buf_split freed "
            f"{freed} descriptor(s), num_free {vq.num_free}; last_used_idx {vq.last_used_idx}{note}")


def detach_buf_split(m, head: int) -> int:
    """Walk the chain by the shared descriptors' NEXT flags, push it back on the free list (LIFO)."""
    vq = m.guest.vq
    vq.desc_data[head] = -1
    i = head
    n = 1
    while m.mem.read_u16(vq.desc + V.DESC_SIZE * i + 12) & V.VIRTQ_DESC_F_NEXT:
        i = vq.extra_next[i]
        n += 1
        if n > vq.num:
            _bad_ring(m, f"detach_buf_split: chain from {head} loops (shared NEXT flags corrupted)")
            break
    vq.extra_next[i] = vq.free_head
    vq.free_head = head
    vq.num_free += n
    table = vq.desc_indir[head]
    if table:
        m.pages.kfree(table)
        vq.desc_indir[head] = 0
    return n


@handler("vring.enable_cb", "virtio_ring", "virtqueue_enable_cb", RING)
def enable_cb(m) -> str:
    """enable_cb_prepare (used_event = last_used_idx) + poll (more used buffers -> loop)."""
    vq = m.guest.vq
    vq.event_triggered = False
    note = ""
    if vq.avail_flags_shadow & V.VRING_AVAIL_F_NO_INTERRUPT:
        vq.avail_flags_shadow &= ~V.VRING_AVAIL_F_NO_INTERRUPT
        if not vq.event:
            m.mem.write_u16(vq.avail + V.AVAIL_FLAGS, vq.avail_flags_shadow)
            note = "avail.flags = 0; "
    m.mem.write_u16(vq.avail + V.avail_used_event_off(vq.num), vq.last_used_idx)
    used_idx = m.mem.read_u16(vq.used + V.USED_IDX)
    if used_idx != vq.last_used_idx and not vq.broken:
        m.sim.cont("vring.disable_cb")
        return note + f"used_event = {vq.last_used_idx}; virtio_mb; used.idx {used_idx}: more work, loop"
    m.sim.cont("vblkd.done_end")
    return note + f"used_event = {vq.last_used_idx}; virtio_mb; used.idx {used_idx}: done"
