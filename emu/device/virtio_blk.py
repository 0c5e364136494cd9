"""QEMU hw/block/virtio-blk.c: handle_vq, handle_request, multireq merging and completion."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..block.backend import BDRV_REQ_MAY_UNMAP, blk_aio_submit
from ..spec import blk as B
from ..spec import virtio as V
from ..sim.steps import add_fact, handler
from . import virtio as VD
from .iov import iov_discard_back, iov_discard_front, iov_from_buf, iov_size, iov_to_buf

SRC = "hw/block/virtio-blk.c"
VSRC = "hw/virtio/virtio.c"
PSRC = "hw/virtio/virtio-pci.c"


@dataclass(slots=True)
class VirtIOBlock:
    """VirtIOBlock: configuration (properties) plus requests in flight and per-pass state."""
    capacity: int                     # sectors
    serial: str = ""
    queue_size: int = 256
    num_queues: int = 1
    logical_block_size: int = 512
    request_merging: bool = True
    seg_max: int = 254
    max_discard_sectors: int = B.BDRV_REQUEST_MAX_SECTORS
    max_write_zeroes_sectors: int = B.BDRV_REQUEST_MAX_SECTORS
    cyls: int = 2
    heads: int = 16
    secs: int = 63
    reqs: dict = field(default_factory=dict)       # id -> VirtIOBlockReq (dict)
    next_id: int = 1
    mrb: list = field(default_factory=list)        # MultiReqBuffer: request ids in pop order
    mrb_is_write: bool = False
    groups: list = field(default_factory=list)     # merged groups waiting in submit_multireq
    suppress: dict = field(default_factory=dict)   # qi -> suppress_notifications of this pass
    by_type: dict = field(default_factory=lambda: {t: 0 for t in B.SUMMARY_TYPES})
    submitted: int = 0
    completed: int = 0
    errors: int = 0
    merged: int = 0

    @property
    def sector_mask(self) -> int:
        return self.logical_block_size // 512 - 1


def default_host_features(read_only: bool, indirect: bool, event_idx: bool) -> int:
    """virtio_blk_get_features() + the common virtio/virtio-pci properties of QEMU 10.2."""
    bits = [V.BLK_F_SEG_MAX, V.BLK_F_GEOMETRY, V.BLK_F_BLK_SIZE, V.BLK_F_FLUSH,
            V.BLK_F_TOPOLOGY, V.BLK_F_CONFIG_WCE, V.BLK_F_DISCARD, V.BLK_F_WRITE_ZEROES,
            V.F_NOTIFY_ON_EMPTY, V.F_ANY_LAYOUT, V.F_BAD_FEATURE, V.F_VERSION_1, V.F_RING_RESET]
    if read_only:
        bits.append(V.BLK_F_RO)
    if indirect:
        bits.append(V.F_INDIRECT_DESC)
    if event_idx:
        bits.append(V.F_EVENT_IDX)
    mask = 0
    for b in bits:
        mask |= 1 << b
    return mask


def guess_geometry(sectors: int) -> tuple[int, int, int]:
    """hw/block/hd-geometry.c guess_chs_for_size(): 16 heads, 63 sectors."""
    cyls = sectors // (16 * 63)
    return max(2, min(cyls, 16383)), 16, 63


class BlkOps:
    """The VirtioDeviceClass hooks the transport calls: config, status, reset."""

    def get_config(self, m) -> bytes:
        """virtio_blk_update_config(): the config space, as long as the offered features need."""
        s, vdev = m.vblk, m.vdev
        cfg = bytearray(96)
        struct.pack_into("<QII", cfg, 0, s.capacity, 0, s.seg_max)
        struct.pack_into("<HBBI", cfg, 16, s.cyls, s.heads, s.secs, s.logical_block_size)
        struct.pack_into("<BBHI", cfg, 24, 0, 0, 0, 0)
        cfg[32] = 1 if m.block.wce else 0
        struct.pack_into("<H", cfg, 34, s.num_queues)
        struct.pack_into("<III", cfg, 36, s.max_discard_sectors, 1, s.logical_block_size // 512)
        struct.pack_into("<IIB", cfg, 48, s.max_write_zeroes_sectors, 1, 1)
        size = 36
        if vdev.host_features >> V.BLK_F_DISCARD & 1:
            size = 48
        if vdev.host_features >> V.BLK_F_WRITE_ZEROES & 1:
            size = 57
        return bytes(cfg[:size])

    def set_config(self, m, cfg: bytes) -> None:
        """virtio_blk_set_config(): the driver's `writeback` byte switches the write cache."""
        if len(cfg) > 32:
            _set_wce(m, cfg[32] != 0)

    def set_status(self, m, status: int) -> None:
        """virtio_blk_set_status(): without CONFIG_WCE the cache follows FLUSH negotiation."""
        if status & V.DRIVER_OK and not m.vdev.has_feature(V.BLK_F_CONFIG_WCE):
            _set_wce(m, m.vdev.has_feature(V.BLK_F_FLUSH))

    def reset(self, m) -> None:
        """virtio_blk_reset(): drop queued requests, restore the original write-cache mode."""
        s = m.vblk
        for req in s.reqs.values():
            req["dropped"] = True
        s.mrb = []
        s.groups = []
        _set_wce(m, m.block.wce_default)


def _set_wce(m, on: bool) -> None:
    if m.block.wce != on:
        m.log.add(("reg", "write_cache", m.block.wce, on))
        m.block.wce = on


# -- the processing pass ------------------------------------------------------------------

@handler("vpci.notify", "virtio-pci", "virtio_pci_notify_write", PSRC)
def notify_write(m, off: int) -> str:
    """The doorbell MMIO write traps into QEMU: virtio_queue_notify -> virtio_blk_handle_output."""
    qi = m.transport.notify_queue(off)
    vdev = m.vdev
    m.counters["notifies"] += 1
    if qi is None or qi >= len(vdev.vqs) or not vdev.vqs[qi].desc or vdev.broken:
        why = "device is broken (needs reset)" if vdev.broken else f"queue {qi} has no ring"
        m.sim.unblock("vcpu", m.timing.vmentry_ns)
        return f"virtio_queue_notify ignores the kick: {why}"
    m.sim.call("vblk.handle_vq", (qi, 0), "vpci.notify_done", ())
    return f"kick for queue {qi}: virtio_queue_notify -> virtio_blk_handle_output"


@handler("vpci.notify_done", "virtio-pci", "virtio_pci_notify_write", PSRC)
def notify_done(m) -> str:
    m.sim.unblock("vcpu", m.timing.vmentry_ns)
    return "the MMIO write returns; the vCPU re-enters the guest"


@handler("vblk.handle_vq", "virtio-blk", "virtio_blk_handle_vq", SRC)
def handle_vq(m, qi: int, again: int) -> str:
    """Start (or loop) a pass: with notifications on, turn them off while the ring is drained."""
    s = m.vblk
    if not again:
        s.suppress[qi] = m.vdev.vqs[qi].notification
    if s.suppress[qi]:
        VD.virtio_queue_set_notification(m, qi, False)
    m.sim.cont("vblk.pop", (qi,))
    how = ("EVENT_IDX: avail_event goes stale" if m.vdev.has_feature(V.F_EVENT_IDX)
           else "used.flags |= NO_NOTIFY")
    return (("again: " if again else "") +
            (f"virtio_queue_set_notification(vq, 0) ({how})" if s.suppress[qi]
             else "notifications already off"))


@handler("vblk.pop", "virtio", "virtqueue_split_pop", VSRC)
def pop(m, qi: int) -> str:
    """virtio_blk_get_request -> virtqueue_pop: take the next chain off the avail ring."""
    s = m.vblk
    before = len(m.vdev.errors)
    elem = VD.virtqueue_pop(m, qi)
    if elem is None:
        m.sim.cont("vblk.pass_end", (qi,))
        if len(m.vdev.errors) > before:
            return f"virtio_error: {m.vdev.errors[-1]['message']}"
        return "avail ring empty (last_avail_idx == avail.idx)"
    rid = s.next_id
    s.next_id += 1
    s.reqs[rid] = {"id": rid, "qi": qi, "elem": elem, "type": None, "sector": 0,
                   "in_len": 0, "status_gpa": 0, "qiov": [], "mr_next": None,
                   "is_write": False, "stage": "popped"}
    m.sim.cont("vblk.handle_request", (qi, rid))
    out = "+".join(str(n) for _a, n in elem["out"]) or "0"
    inn = "+".join(str(n) for _a, n in elem["in"]) or "0"
    via = f" via indirect table @{elem['indirect'][0]:#x}" if elem["indirect"] else ""
    return (f"head {elem['index']} (avail idx {elem['avail_idx']}){via}: "
            f"out {out} bytes, in {inn} bytes; inuse={m.vdev.vqs[qi].inuse}")


@handler("vblk.handle_request", "virtio-blk", "virtio_blk_handle_request", SRC)
def handle_request(m, qi: int, rid: int) -> str:
    """Parse the out header and dispatch on the type, exactly where QEMU validates."""
    s = m.vblk
    req = s.reqs[rid]
    elem = req["elem"]
    out_iov, in_iov = elem["out"], elem["in"]
    if len(out_iov) < 1 or len(in_iov) < 1:
        return _fatal(m, qi, rid, "virtio-blk missing headers",
                      "5.2.6 (a request has a device-readable header and a writable status)")
    hdr = iov_to_buf(m, out_iov, B.OUTHDR_SIZE)
    if len(hdr) != B.OUTHDR_SIZE:
        return _fatal(m, qi, rid, "virtio-blk request outhdr too short",
                      "5.2.6 (struct virtio_blk_req header is 16 bytes)")
    out_iov = iov_discard_front(out_iov, B.OUTHDR_SIZE)
    if in_iov[-1][1] < 1:
        return _fatal(m, qi, rid, "virtio-blk request inhdr too short", "5.2.6 (status byte)")
    req["in_len"] = iov_size(in_iov)
    gpa, n = in_iov[-1]
    req["status_gpa"] = gpa + n - 1
    in_iov = iov_discard_back(in_iov, 1)
    typ, _ioprio, sector = struct.unpack("<IIQ", hdr)
    req["type"] = typ
    masked = typ & ~(B.T_OUT | B.T_BARRIER)
    tname = B.TYPE_NAMES.get(typ & ~B.T_BARRIER, f"type {typ:#x}")
    if tname in s.by_type:
        s.by_type[tname] += 1
    s.submitted += 1
    if masked == B.T_IN:
        return _handle_rw(m, qi, rid, typ, sector, out_iov, in_iov)
    if masked == B.T_FLUSH:
        req["stage"] = "flush"
        if s.mrb and s.mrb_is_write:
            m.sim.call("vblk.submit_multireq", (qi,), "vblk.flush", (qi, rid))
            return "FLUSH: first submit the pending writes of the MultiReqBuffer"
        m.sim.cont("vblk.flush", (qi, rid))
        return "FLUSH"
    if masked == B.T_GET_ID:
        serial = s.serial.encode()[:B.ID_BYTES]
        size = min(len(serial) + 1, iov_size(in_iov), B.ID_BYTES)
        iov_from_buf(m, in_iov, (serial + b"\0")[:size])
        return _complete_now(m, qi, rid, B.S_OK, f"GET_ID: {size} bytes of serial {s.serial!r}")
    if masked in (B.T_DISCARD & ~B.T_OUT, B.T_WRITE_ZEROES & ~B.T_OUT):
        return _handle_dwz(m, qi, rid, typ, out_iov)
    if masked == B.T_SCSI_CMD:
        if len(elem["out"]) < 2 or len(elem["in"]) < 3:
            return _complete_now(m, qi, rid, B.S_IOERR, "SCSI_CMD with too few segments: IOERR")
        scsi_gpa = elem["in"][-2][0]
        m.mem.write_u32(scsi_gpa, 255)
        return _complete_now(m, qi, rid, B.S_UNSUPP, "SCSI passthrough is gone: UNSUPP")
    return _complete_now(m, qi, rid, B.S_UNSUPP, f"{tname}: not supported by this device: UNSUPP")


def _fatal(m, qi: int, rid: int, msg: str, spec: str) -> str:
    """A fatal guest error: virtio_error, virtqueue_detach_element, end of the pop loop."""
    VD.virtio_error(m, msg, spec)
    req = m.vblk.reqs.pop(rid)
    vq = m.vdev.vqs[qi]
    VD.set_reg(m, vq, "inuse", f"vq{qi}.inuse", vq.inuse - req["elem"]["ndescs"])
    m.sim.cont("vblk.pass_end", (qi,))
    return f"virtio_error: {msg}; element detached"


def _complete_now(m, qi: int, rid: int, status: int, detail: str) -> str:
    m.sim.call("vblk.req_complete", (rid, status), "vblk.pop", (qi,))
    return detail


def sect_range_ok(s: VirtIOBlock, sector: int, size: int) -> bool:
    """virtio_blk_sect_range_ok()."""
    nb = size >> 9
    if nb > B.BDRV_REQUEST_MAX_SECTORS or sector & s.sector_mask or size % s.logical_block_size:
        return False
    return not (sector > s.capacity or nb > s.capacity - sector)


def _handle_rw(m, qi: int, rid: int, typ: int, sector: int, out_iov: list, in_iov: list) -> str:
    s = m.vblk
    req = s.reqs[rid]
    is_write = bool(typ & B.T_OUT)
    req.update(sector=sector, is_write=is_write, qiov=out_iov if is_write else in_iov)
    size = iov_size(req["qiov"])
    what = f"{'OUT' if is_write else 'IN'} sector {sector} ({size} bytes)"
    if not sect_range_ok(s, sector, size):
        return _complete_now(m, qi, rid, B.S_IOERR,
                             f"{what}: virtio_blk_sect_range_ok fails "
                             f"(capacity {s.capacity} sectors, block {s.logical_block_size}): IOERR")
    if s.mrb and (len(s.mrb) == B.MAX_MERGE_REQS or is_write != s.mrb_is_write
                  or not s.request_merging):
        m.sim.call("vblk.submit_multireq", (qi,), "vblk.mrb_add", (qi, rid))
        return f"{what}: submit the MultiReqBuffer first"
    _mrb_append(s, rid, is_write)
    m.sim.cont("vblk.pop", (qi,))
    return f"{what}: appended to the MultiReqBuffer ({len(s.mrb)} queued)"


def _mrb_append(s: VirtIOBlock, rid: int, is_write: bool) -> None:
    s.mrb.append(rid)
    s.mrb_is_write = is_write
    s.reqs[rid]["stage"] = "mrb"


@handler("vblk.mrb_add", "virtio-blk", "virtio_blk_handle_request", SRC)
def mrb_add(m, qi: int, rid: int) -> str:
    s = m.vblk
    _mrb_append(s, rid, s.reqs[rid]["is_write"])
    m.sim.cont("vblk.pop", (qi,))
    return f"request appended to the MultiReqBuffer ({len(s.mrb)} queued)"


def _handle_dwz(m, qi: int, rid: int, typ: int, out_iov: list) -> str:
    """DISCARD / WRITE_ZEROES: one 16-byte segment, QEMU's checks in QEMU's order."""
    s = m.vblk
    is_wz = (typ & ~B.T_BARRIER) == B.T_WRITE_ZEROES
    name = "WRITE_ZEROES" if is_wz else "DISCARD"
    out_len = iov_size(out_iov)
    if not typ & B.T_OUT or out_len > B.DWZ_SEG_SIZE:
        return _complete_now(m, qi, rid, B.S_UNSUPP,
                             f"{name}: more than one segment (max_*_seg = 1): UNSUPP")
    seg = iov_to_buf(m, out_iov, B.DWZ_SEG_SIZE)
    if len(seg) != B.DWZ_SEG_SIZE:
        return _fatal(m, qi, rid, "virtio-blk discard/write_zeroes header too short",
                      "5.2.6 (struct virtio_blk_discard_write_zeroes is 16 bytes)")
    sector, num, flags = struct.unpack("<QII", seg)
    maxs = s.max_write_zeroes_sectors if is_wz else s.max_discard_sectors
    what = f"{name} sector {sector} +{num}"
    req = s.reqs[rid]
    req["sector"] = sector
    if num > maxs or not sect_range_ok(s, sector, num << 9):
        return _complete_now(m, qi, rid, B.S_IOERR, f"{what}: out of range: IOERR")
    if flags & ~B.WRITE_ZEROES_FLAG_UNMAP:
        return _complete_now(m, qi, rid, B.S_UNSUPP, f"{what}: unknown flags {flags:#x}: UNSUPP")
    if not is_wz and flags & B.WRITE_ZEROES_FLAG_UNMAP:
        return _complete_now(m, qi, rid, B.S_UNSUPP, f"{what}: DISCARD with UNMAP: UNSUPP")
    req["stage"] = "submitted"
    if is_wz:
        fl = BDRV_REQ_MAY_UNMAP if flags & B.WRITE_ZEROES_FLAG_UNMAP else 0
        blk_aio_submit(m, "write_zeroes", sector << 9, num << 9, None, fl,
                       ("vblk.dwz_complete", (rid,)), ("vblk.pop", (qi,)))
        return f"{what}{' (unmap)' if fl else ''}: blk_aio_pwrite_zeroes"
    blk_aio_submit(m, "discard", sector << 9, num << 9, None, 0,
                   ("vblk.dwz_complete", (rid,)), ("vblk.pop", (qi,)))
    return f"{what}: blk_aio_pdiscard"


@handler("vblk.flush", "virtio-blk", "virtio_blk_handle_flush", SRC)
def handle_flush(m, qi: int, rid: int) -> str:
    m.vblk.reqs[rid]["stage"] = "submitted"
    blk_aio_submit(m, "flush", 0, 0, None, 0, ("vblk.flush_complete", (rid,)), ("vblk.pop", (qi,)))
    return "blk_aio_flush"


@handler("vblk.pass_end", "virtio-blk", "virtio_blk_handle_vq", SRC)
def pass_end(m, qi: int) -> str:
    """Re-enable notifications and re-check the ring (closes the race with the driver)."""
    s = m.vblk
    msg = ""
    if s.suppress.get(qi):
        VD.virtio_queue_set_notification(m, qi, True)
        vq = m.vdev.vqs[qi]
        msg = (f"virtio_queue_set_notification(vq, 1): avail_event = {vq.shadow_avail_idx}; "
               if m.vdev.has_feature(V.F_EVENT_IDX) else "used.flags NO_NOTIFY cleared; ")
    if not VD.virtio_queue_empty(m, qi):
        m.sim.cont("vblk.handle_vq", (qi, 1))
        return msg + "virtio_queue_empty: more buffers arrived, loop"
    if s.mrb:
        m.sim.cont("vblk.submit_multireq", (qi,))
        return msg + f"queue empty; submit the MultiReqBuffer ({len(s.mrb)} requests)"
    s.suppress.pop(qi, None)
    return msg + "queue empty; pass ends"


@handler("vblk.submit_multireq", "virtio-blk", "virtio_blk_submit_multireq", SRC)
def submit_multireq(m, qi: int) -> str:
    """Sort by sector (ties: pop order) and cut into contiguous groups QEMU would merge."""
    s = m.vblk
    reqs = [s.reqs[r] for r in s.mrb]
    if len(reqs) > 1:
        reqs.sort(key=lambda r: r["sector"])
    max_transfer = 0x7FFFFFFF
    groups: list = []
    cur: list = []
    sector = nb = niov = 0
    for r in reqs:
        size = iov_size(r["qiov"])
        if cur and (sector + nb != r["sector"] or niov > B.IOV_MAX - len(r["qiov"])
                    or size > max_transfer or nb > (max_transfer - size) // 512):
            groups.append(cur)
            cur = []
        if not cur:
            sector, nb, niov = r["sector"], 0, 0
        cur.append(r["id"])
        nb += size // 512
        niov += len(r["qiov"])
    if cur:
        groups.append(cur)
    s.mrb = []
    s.groups = groups
    s.merged += sum(len(g) - 1 for g in groups)
    m.sim.cont("vblk.submit_requests", (qi,))
    shown = ", ".join("[" + " ".join(str(s.reqs[r]["sector"]) for r in g) + "]" for g in groups)
    return f"{len(reqs)} requests -> {len(groups)} group(s) by sector: {shown}"


@handler("vblk.submit_requests", "virtio-blk", "submit_requests", SRC)
def submit_requests(m, qi: int) -> str:
    """One merged group becomes one blk_aio_preadv/pwritev; the requests chain via mr_next."""
    s = m.vblk
    group = s.groups.pop(0)
    first = s.reqs[group[0]]
    qiov: list = []
    for a, b in zip(group, group[1:]):
        s.reqs[a]["mr_next"] = b
    for r in group:
        qiov.extend(s.reqs[r]["qiov"])
        s.reqs[r]["stage"] = "submitted"
    op = "write" if first["is_write"] else "read"
    then = ("vblk.submit_requests", (qi,)) if s.groups else None
    blk_aio_submit(m, op, first["sector"] << 9, 0, qiov, 0, ("vblk.rw_complete", (group[0],)), then)
    return (f"blk_aio_p{'writev' if op == 'write' else 'readv'}(offset {first['sector'] << 9:#x}, "
            f"{iov_size(qiov)} bytes, {len(qiov)} iovecs) for {len(group)} request(s)")


# -- completion -------------------------------------------------------------------------------

def _error_action(m, ret: int, is_read: bool) -> str:
    """blk_get_error_action(): report -> IOERR, ignore -> OK as if it worked."""
    return m.block.rerror if is_read else m.block.werror


@handler("vblk.rw_complete", "virtio-blk", "virtio_blk_rw_complete", SRC)
def rw_complete(m, rid: int, ret: int) -> str:
    """Walk the merged chain: each request completes with the group's result."""
    s = m.vblk
    req = s.reqs.get(rid)
    if req is None or req.get("dropped"):
        s.reqs.pop(rid, None)
        return "request was dropped by a device reset"
    status = B.S_OK
    why = "ok"
    if ret:
        action = _error_action(m, ret, not req["is_write"])
        status = B.S_OK if action == "ignore" else B.S_IOERR
        why = f"error {ret}: {action} policy"
    nxt = req["mr_next"]
    if nxt is not None:
        m.sim.call("vblk.req_complete", (rid, status), "vblk.rw_complete", (nxt, ret))
    else:
        m.sim.cont("vblk.req_complete", (rid, status))
    return f"sector {req['sector']}: {why}"


@handler("vblk.flush_complete", "virtio-blk", "virtio_blk_flush_complete", SRC)
def flush_complete(m, rid: int, ret: int) -> str:
    return _simple_complete(m, rid, ret, is_read=False)


@handler("vblk.dwz_complete", "virtio-blk", "virtio_blk_discard_write_zeroes_complete", SRC)
def dwz_complete(m, rid: int, ret: int) -> str:
    return _simple_complete(m, rid, ret, is_read=False)


def _simple_complete(m, rid: int, ret: int, is_read: bool) -> str:
    req = m.vblk.reqs.get(rid)
    if req is None or req.get("dropped"):
        m.vblk.reqs.pop(rid, None)
        return "request was dropped by a device reset"
    status = B.S_OK
    if ret and _error_action(m, ret, is_read) != "ignore":
        status = B.S_IOERR
    m.sim.cont("vblk.req_complete", (rid, status))
    return f"result {ret}"


@handler("vblk.req_complete", "virtio-blk", "virtio_blk_req_complete", SRC)
def req_complete(m, rid: int, status: int) -> str:
    """Store the status byte in guest memory, then virtqueue_push."""
    req = m.vblk.reqs[rid]
    m.mem.write(req["status_gpa"], bytes([status]))
    req["status"] = status
    add_fact(m, ("req-status", rid, status, req["status_gpa"]))
    req["stage"] = "completing"
    m.sim.cont("vq.fill", (rid,))
    return f"status {B.STATUS_NAMES.get(status, status)} -> status byte @{req['status_gpa']:#x}"


@handler("vq.fill", "virtio", "virtqueue_fill", VSRC)
def fill(m, rid: int) -> str:
    req = m.vblk.reqs[rid]
    qi = req["qi"]
    vq = m.vdev.vqs[qi]
    if not VD.virtqueue_fill(m, qi, req["elem"], req["in_len"]):
        m.sim.cont("vq.flush", (rid,))
        return "device broken: buffers unmapped, nothing written to the used ring"
    m.sim.cont("vq.flush", (rid,))
    return (f"used.ring[{vq.used_idx % vq.num}] = {{id {req['elem']['index']}, "
            f"len {req['in_len']}}}")


@handler("vq.flush", "virtio", "virtqueue_flush", VSRC)
def flush(m, rid: int) -> str:
    req = m.vblk.reqs[rid]
    qi = req["qi"]
    vq = m.vdev.vqs[qi]
    published = VD.virtqueue_flush(m, qi, 1)
    s = m.vblk
    if not published:
        s.reqs.pop(rid)
        return f"device broken: inuse -> {vq.inuse}, used.idx not published"
    s.completed += 1
    if req.get("status"):
        s.errors += 1
    m.sim.cont("vq.notify", (rid,))
    return f"smp_wmb; used.idx = {vq.used_idx}; inuse = {vq.inuse}"


@handler("vq.notify", "virtio", "virtio_notify", VSRC)
def notify(m, rid: int) -> str:
    req = m.vblk.reqs.pop(rid)
    qi = req["qi"]
    need, why = VD.virtio_should_notify(m, qi)
    if need:
        m.sim.cont("vq.irq", (qi,))
        return f"virtio_should_notify: yes ({why})"
    m.counters["irqs_suppressed"] += 1
    return f"virtio_should_notify: no ({why}); no interrupt"


@handler("vq.irq", "virtio-pci", "virtio_irq", VSRC)
def irq(m, qi: int) -> str:
    """virtio_irq(): ISR |= 1, then virtio_pci_notify -> msix_notify(vector)."""
    VD.virtio_set_isr(m, 1)
    vec = m.vdev.vqs[qi].vector
    sent = m.transport.msix_notify(m, vec)
    return f"ISR |= 1; msix_notify(vector {vec})" + ("" if sent else " (masked or no vector)")
