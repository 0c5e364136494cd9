"""Linux drivers/block/virtio_blk.c: virtio_queue_rq and virtblk_done."""
from __future__ import annotations

import struct

from ..spec import blk as B
from ..sim.steps import handler

VBLK = "drivers/block/virtio_blk.c"
TYPE_OF = {"READ": B.T_IN, "WRITE": B.T_OUT, "FLUSH": B.T_FLUSH, "DISCARD": B.T_DISCARD,
           "WRITE_ZEROES": B.T_WRITE_ZEROES}


def pdu_of(m, tag: int) -> int:
    """The request's struct virtblk_req (its blk-mq PDU): out_hdr @0, in_hdr.status @16."""
    from .state import VBLK_PDU_SIZE
    return m.guest.pdu_base + tag * VBLK_PDU_SIZE


@handler("vblkd.queue_rq", "virtio_blk", "virtio_queue_rq", VBLK)
def queue_rq(m, rid: int, last: int) -> str:
    rq = m.guest.blkmq.rqs[rid]
    rq["last"] = bool(last)
    m.guest.kick_needed = False
    m.sim.cont("vblkd.setup_cmd", (rid,))
    return f"request {rid} (tag {rq['tag']}, {rq['op']} sector {rq['sector']}), bd->last = {bool(last)}"


@handler("vblkd.setup_cmd", "virtio_blk", "virtblk_setup_cmd", VBLK)
def setup_cmd(m, rid: int) -> str:
    """Fill the out header in the PDU; build the discard/write-zeroes range payload."""
    rq = m.guest.blkmq.rqs[rid]
    pdu = pdu_of(m, rq["tag"])
    rq["pdu"] = pdu
    if rq["op"] == "DRV_IN":
        m.sim.cont("vblkd.map_data", (rid,))
        return "REQ_OP_DRV_IN: out header already prepared by virtblk_get_id"
    typ = TYPE_OF[rq["op"]]
    sector = rq["sector"] if rq["op"] in ("READ", "WRITE") else 0
    m.mem.write(pdu, struct.pack("<IIQ", typ, 0, sector))
    detail = f"out_hdr @{pdu:#x} = {{type {B.TYPE_NAMES[typ]}, ioprio 0, sector {sector}}}"
    if rq["op"] in ("DISCARD", "WRITE_ZEROES"):
        rng = m.pages.kmalloc(B.DWZ_SEG_SIZE)
        if rng is None:
            # virtio_queue_rq returns virtblk_prep_rq's status at once: blk-mq requeues the
            # request and runs the queue again after BLK_MQ_RESOURCE_DELAY
            m.guest.blkmq.last_ret = "RESOURCE"
            return detail + "; kmalloc of the range failed: BLK_STS_RESOURCE"
        flags = B.WRITE_ZEROES_FLAG_UNMAP if rq.get("unmap") else 0
        m.mem.write(rng, struct.pack("<QII", rq["sector"], rq["bytes"] >> 9, flags))
        rq["payload"] = rng
        detail += (f"; range @{rng:#x} = {{sector {rq['sector']}, {rq['bytes'] >> 9} sectors, "
                   f"flags {flags}}}")
    m.sim.cont("vblkd.map_data", (rid,))
    return detail


@handler("vblkd.map_data", "virtio_blk", "virtblk_map_data", VBLK)
def map_data(m, rid: int) -> str:
    """blk_rq_map_sg: physically contiguous bio segments become one scatterlist entry."""
    rq = m.guest.blkmq.rqs[rid]
    sgs: list = []
    if rq.get("payload"):
        sgs = [[rq["payload"], B.DWZ_SEG_SIZE]]
    else:
        for bio in rq["bios"]:
            for gpa, n in bio["segs"]:
                if sgs and sgs[-1][0] + sgs[-1][1] == gpa:
                    sgs[-1][1] += n
                else:
                    sgs.append([gpa, n])
    rq["data_sgs"] = [tuple(s) for s in sgs]
    m.sim.cont("blkmq.start_request", (rid,))
    return f"{len(sgs)} data segment(s)" + (": " + ", ".join(f"{a:#x}+{n}" for a, n in sgs) if sgs else "")


@handler("vblkd.add_req", "virtio_blk", "virtblk_add_req", VBLK)
def add_req(m, rid: int) -> str:
    """Take the vq lock; out_hdr, data (out for OUT types, else in), status byte."""
    g = m.guest
    rq = g.blkmq.rqs[rid]
    g.vq_locked = True
    pdu = rq["pdu"]
    is_out = bool(TYPE_OF.get(rq["op"], B.T_GET_ID) & B.T_OUT)
    sgs = [(pdu, B.OUTHDR_SIZE, False)]
    roles = ["request header"]
    for gpa, n in rq["data_sgs"]:
        sgs.append((gpa, n, not is_out))
        roles.append("data" if not rq.get("payload") else "range")
    sgs.append((pdu + 16, 1, True))
    roles.append("status")
    rq["sgs"] = sgs
    rq["roles"] = roles
    rq["out_sgs"] = 2 if is_out and rq["data_sgs"] else 1
    m.sim.call("vring.add_split", (rid,), "vblkd.add_ret", (rid,))
    return (f"spin_lock_irqsave(vq lock); virtqueue_add_sgs: {sum(1 for s in sgs if not s[2])} out, "
            f"{sum(1 for s in sgs if s[2])} in")


@handler("vblkd.add_ret", "virtio_blk", "virtio_queue_rq", VBLK)
def add_ret(m, rid: int) -> str:
    rq = m.guest.blkmq.rqs[rid]
    err = rq.get("add_err", "")
    if err:
        m.sim.call("vring.kick_prepare", ("",), "vblkd.add_err_kick", (rid,))
        return f"virtblk_add_req failed: -{err}: virtqueue_kick anyway"
    if rq["last"]:
        m.sim.call("vring.kick_prepare", ("",), "vblkd.queue_rq_end", (rid,))
        return "added; bd->last: virtqueue_kick_prepare"
    m.sim.cont("vblkd.queue_rq_end", (rid,))
    return "added; not the last request of the batch: no kick yet"


@handler("vblkd.add_err_kick", "virtio_blk", "virtio_queue_rq", VBLK)
def add_err_kick(m, rid: int) -> str:
    if m.guest.kick_needed:
        m.sim.call("vring.notify", (0,), "vblkd.add_err_end", (rid,))
        return "virtqueue_kick: notify"
    m.sim.cont("vblkd.add_err_end", (rid,))
    return "virtqueue_kick: no notify needed"


@handler("vblkd.add_err_end", "virtio_blk", "virtio_queue_rq", VBLK)
def add_err_end(m, rid: int) -> str:
    g = m.guest
    rq = g.blkmq.rqs[rid]
    err = rq.pop("add_err")
    _cleanup_cmd(m, rq)
    g.vq_locked = False
    if err == "ENOSPC":
        g.blkmq.stopped = True
        g.blkmq.last_ret = "DEV_RESOURCE"
        return "ring full: blk_mq_stop_hw_queue; unlock; BLK_STS_DEV_RESOURCE"
    g.blkmq.last_ret = "IOERR" if err == "EIO" else "RESOURCE"
    return f"unlock; BLK_STS_{g.blkmq.last_ret}"


@handler("vblkd.queue_rq_end", "virtio_blk", "virtio_queue_rq", VBLK)
def queue_rq_end(m, rid: int) -> str:
    g = m.guest
    g.vq_locked = False
    g.blkmq.last_ret = "OK"
    if g.kick_needed:
        g.kick_needed = False
        m.sim.cont("vring.notify", (0,))
        return "spin_unlock_irqrestore; notify outside the lock"
    return "spin_unlock_irqrestore; BLK_STS_OK"


@handler("vblkd.commit_rqs", "virtio_blk", "virtio_commit_rqs", VBLK)
def commit_rqs(m) -> str:
    m.sim.call("vring.kick_prepare", ("",), "vblkd.commit_notify", ())
    return "dispatch stopped early: kick what was queued"


@handler("vblkd.commit_notify", "virtio_blk", "virtio_commit_rqs", VBLK)
def commit_notify(m) -> str:
    if m.guest.kick_needed:
        m.guest.kick_needed = False
        m.sim.cont("vring.notify", (0,))
        return "notify"
    return "no notify needed"


@handler("vblkd.done", "virtio_blk", "virtblk_done", VBLK)
def done(m) -> str:
    m.guest.vq_locked = True
    m.sim.cont("vring.disable_cb")
    return "spin_lock_irqsave(vq lock); do { virtqueue_disable_cb; while (get_buf) complete; } while (!enable_cb)"


@handler("vblkd.request_done", "virtio_blk", "virtblk_request_done", VBLK)
def request_done(m, rid: int) -> str:
    """Read the status byte (last byte of the in header), unmap, free the range payload."""
    rq = m.guest.blkmq.rqs[rid]
    status = m.mem.read(rq["pdu"] + 16, 1)[0]
    rq["vstatus"] = status
    sts = {B.S_OK: "OK", B.S_UNSUPP: "NOTSUPP"}.get(status, "IOERR")
    _cleanup_cmd(m, rq)
    m.sim.cont("blkmq.end_request", (rid, sts, 1))
    return f"status byte {status} ({B.STATUS_NAMES.get(status, 'unknown')}) -> BLK_STS_{sts}"


def _cleanup_cmd(m, rq: dict) -> None:
    """virtblk_cleanup_cmd(): kfree the special payload."""
    if rq.get("payload"):
        m.pages.kfree(rq["payload"])
        rq["payload"] = 0


@handler("vblkd.done_end", "virtio_blk", "virtblk_done", VBLK)
def done_end(m) -> str:
    g = m.guest
    q = g.blkmq
    note = ""
    if g.done_count and q.stopped:
        q.stopped = False
        if not q.run_work_pending:
            q.run_work_pending = True
            m.sim.post("vcpu", "blkmq.run_work")
        note = "blk_mq_start_stopped_hw_queues(async): kblockd will run the queue; "
    g.vq_locked = False
    return note + f"{g.done_count} request(s) completed; spin_unlock_irqrestore"
