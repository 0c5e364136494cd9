"""Linux block/blk-mq.c (+ blk-merge.c, mq-deadline.c): tags, plugging, merging, dispatch, completion."""
from __future__ import annotations

from ..sim.steps import handler
from .state import DD_FIFO_BATCH, DD_READ_EXPIRE_NS, DD_WRITE_EXPIRE_NS, DD_WRITES_STARVED

BLKMQ = "block/blk-mq.c"
MERGEABLE = ("READ", "WRITE", "DISCARD")


# -- helpers over the plain-data queue ---------------------------------------------------------

def rq_dir(op: str) -> int:
    return 0 if op in ("READ", "DRV_IN") else 1


def rq_sectors(rq: dict) -> int:
    return rq["bytes"] >> 9


def get_tag(q) -> int:
    """sbitmap_queue_get: first free tag at or after the allocation hint, wrapping."""
    n = q.nr_requests
    for k in range(n):
        t = (q.alloc_hint + k) % n
        if not q.tags[t]:
            q.tags[t] = 1
            if t == q.alloc_hint:
                q.alloc_hint = (t + 1) % n
            return t
    return -1


def put_tag(q, tag: int) -> None:
    """sbitmap_queue_clear: the freed tag becomes the hint (it is reused next)."""
    q.tags[tag] = 0
    if tag < q.nr_requests:
        q.alloc_hint = tag


def _max_sectors(q, op: str) -> int:
    lim = q.limits
    return lim["max_discard_sectors"] if op == "DISCARD" else lim["max_sectors"]


def try_merge(q, rq: dict, bio: dict) -> str:
    """blk_rq_merge_ok + blk_try_merge + ll_{back,front}_merge_fn: 'back', 'front' or ''."""
    if rq["op"] != bio["op"] or rq["op"] not in MERGEABLE or rq.get("nomerge"):
        return ""
    if rq["stage"] not in ("plugged", "queued"):
        return ""
    nsect = bio["bytes"] >> 9
    if rq_sectors(rq) + nsect > _max_sectors(q, rq["op"]):
        return ""
    if rq["op"] != "DISCARD" and rq["nsegs"] + len(bio["segs"]) > q.limits["max_segments"]:
        return ""
    if rq["sector"] + rq_sectors(rq) == bio["sector"]:
        return "back"
    if bio["sector"] + nsect == rq["sector"]:
        return "front"
    return ""


def do_merge(rq: dict, bio: dict, how: str) -> None:
    if how == "back":
        rq["bios"].append(bio)
    else:
        rq["bios"].insert(0, bio)
        rq["sector"] = bio["sector"]
    rq["bytes"] += bio["bytes"]
    rq["nsegs"] += len(bio["segs"]) if rq["op"] != "DISCARD" else 0


def dd_insert(m, rid: int) -> str:
    """dd_insert_request: try a back merge into a queued request, else onto the FIFO."""
    q = m.guest.blkmq
    rq = q.rqs[rid]
    d = rq_dir(rq["op"])
    if rq["op"] in MERGEABLE:
        for oid in q.dd_fifo[d]:
            other = q.rqs[oid]
            if other["op"] == rq["op"] and other["sector"] + rq_sectors(other) == rq["sector"] \
                    and rq_sectors(other) + rq_sectors(rq) <= _max_sectors(q, rq["op"]) \
                    and (rq["op"] == "DISCARD" or other["nsegs"] + rq["nsegs"]
                         <= q.limits["max_segments"]):
                for bio in rq["bios"]:
                    other["bios"].append(bio)
                other["bytes"] += rq["bytes"]
                other["nsegs"] += rq["nsegs"] if rq["op"] != "DISCARD" else 0
                free_request(m, rid)
                return f"request {rid} merged into queued request {oid}"
    rq["stage"] = "queued"
    rq["deadline"] = m.sim.now + (DD_READ_EXPIRE_NS if d == 0 else DD_WRITE_EXPIRE_NS)
    q.dd_fifo[d].append(rid)
    return f"request {rid} queued in mq-deadline ({'read' if d == 0 else 'write'} FIFO)"


def _dd_next(q, d: int) -> int | None:
    """deadline_next_request: the lowest-sector request at or after the last dispatched end."""
    pos = q.dd_next_sector[d]
    best = None
    for rid in q.dd_fifo[d]:
        s = q.rqs[rid]["sector"]
        if s >= pos and (best is None or s < q.rqs[best]["sector"]):
            best = rid
    return best


def dd_dispatch(m) -> int | None:
    """dd_dispatch_request: batches in sector order, reads before writes, FIFO expiry."""
    q = m.guest.blkmq
    rid = None
    if q.dd_batching < DD_FIFO_BATCH:
        rid = _dd_next(q, q.dd_last_dir)
    if rid is None:
        reads, writes = q.dd_fifo
        if reads and not (writes and q.dd_starved >= DD_WRITES_STARVED):
            d = 0
            if writes:
                q.dd_starved += 1
        elif writes:
            d = 1
            q.dd_starved = 0
        else:
            return None
        nxt = _dd_next(q, d)
        head = q.dd_fifo[d][0]
        rid = head if nxt is None or q.rqs[head]["deadline"] <= m.sim.now else nxt
        q.dd_last_dir = d
        q.dd_batching = 0
    rq = q.rqs[rid]
    d = rq_dir(rq["op"])
    q.dd_fifo[d].remove(rid)
    q.dd_next_sector[d] = rq["sector"] + rq_sectors(rq)
    q.dd_batching += 1
    return rid


def free_request(m, rid: int) -> None:
    q = m.guest.blkmq
    rq = q.rqs.pop(rid)
    put_tag(q, rq["tag"])
    proc = m.guest.proc
    if proc.waiting == "tag":
        proc.waiting = "woken-tag"
        m.sim.post("vcpu", "app.resume")


# -- steps ------------------------------------------------------------------------------------

@handler("blkmq.flush_plug", "blk-mq", "blk_mq_flush_plug_list", BLKMQ)
def flush_plug(m, count: int) -> str:
    """blk_mq_flush_plug_list: plugged requests go to mq-deadline, then the queue runs."""
    q = m.guest.blkmq
    n = len(q.plug) if count < 0 else count
    plug, q.plug = q.plug[:n], q.plug[n:]
    notes = [dd_insert(m, rid) for rid in plug]
    m.sim.cont("blkmq.run_queue")
    return f"{len(plug)} plugged request(s) -> mq-deadline; " + "; ".join(notes) if plug \
        else "plug empty; run the queue"


@handler("blkmq.run_queue", "blk-mq", "blk_mq_run_hw_queue", BLKMQ)
def run_queue(m) -> str:
    """blk_mq_sched_dispatch_requests: hctx->dispatch first, then what mq-deadline hands out."""
    q = m.guest.blkmq
    if q.stopped:
        return "hardware queue stopped (BLK_MQ_S_STOPPED): nothing dispatched"
    if q.batch:
        return "a dispatch is already running"
    if q.dispatch:
        q.batch, q.dispatch = q.dispatch, []
        q.batch_from = "dispatch"
    else:
        while len(q.batch) < q.nr_requests:
            rid = dd_dispatch(m)
            if rid is None:
                break
            q.batch.append(rid)
        q.batch_from = "sched"
    if not q.batch:
        return "nothing to dispatch"
    q.queued = 0
    m.sim.cont("blkmq.dispatch")
    return f"{len(q.batch)} request(s) from {'hctx->dispatch' if q.batch_from == 'dispatch' else 'mq-deadline'}: " \
        + " ".join(str(r) for r in q.batch)


@handler("blkmq.dispatch", "blk-mq", "blk_mq_dispatch_rq_list", BLKMQ)
def dispatch(m) -> str:
    q = m.guest.blkmq
    rid = q.batch[0]
    last = len(q.batch) == 1
    q.rqs[rid]["stage"] = "dispatched"
    m.sim.call("vblkd.queue_rq", (rid, int(last)), "blkmq.dispatch_ret", (rid,))
    return f".queue_rq(request {rid}, last={last})"


@handler("blkmq.dispatch_ret", "blk-mq", "blk_mq_dispatch_rq_list", BLKMQ)
def dispatch_ret(m, rid: int) -> str:
    q = m.guest.blkmq
    ret = q.last_ret
    if ret == "OK":
        q.batch.pop(0)
        q.queued += 1
        if q.batch:
            m.sim.cont("blkmq.dispatch", preemptible=True)
            return f"request {rid}: BLK_STS_OK"
        m.sim.cont("blkmq.run_queue", preemptible=True)
        return f"request {rid}: BLK_STS_OK; batch done, look for more"
    if ret in ("IOERR", "NOTSUPP"):
        q.batch.pop(0)
        if q.batch:
            m.sim.call("blkmq.end_request", (rid, ret, 0), "blkmq.dispatch", ())
        else:
            m.sim.call("blkmq.end_request", (rid, ret, 0), "blkmq.run_queue", ())
        return f"request {rid}: BLK_STS_{ret}: end it with an error"
    # DEV_RESOURCE / RESOURCE: requeue the rest at the head of hctx->dispatch
    for r in q.batch:
        q.rqs[r]["stage"] = "requeued"
    q.dispatch = q.batch + q.dispatch
    q.batch = []
    if ret == "RESOURCE":
        m.sim.at(3_000_000, "blkmq.delay_run")
    if q.queued:
        m.sim.cont("vblkd.commit_rqs")
    return (f"request {rid}: BLK_STS_{ret}: {len(q.dispatch)} request(s) back on hctx->dispatch"
            + ("; commit_rqs" if q.queued else ""))


@handler("blkmq.delay_run", "blk-mq", "blk_mq_delay_run_hw_queue", BLKMQ)
def delay_run(m) -> str:
    m.sim.post("vcpu", "blkmq.run_work")
    return "BLK_MQ_RESOURCE_DELAY expired: schedule a queue run"


@handler("blkmq.run_work", "blk-mq", "blk_mq_run_work_fn", BLKMQ)
def run_work(m) -> str:
    m.guest.blkmq.run_work_pending = False
    m.sim.cont("blkmq.run_queue")
    return "kblockd: run the hardware queue"


@handler("blkmq.start_request", "blk-mq", "blk_mq_start_request", BLKMQ)
def start_request(m, rid: int) -> str:
    rq = m.guest.blkmq.rqs[rid]
    rq["stage"] = "started"
    rq["start_ns"] = m.sim.now
    m.sim.cont("vblkd.add_req", (rid,))
    return f"request {rid}: MQ_RQ_IN_FLIGHT"


@handler("blkmq.end_request", "blk-mq", "blk_mq_end_request", BLKMQ)
def end_request(m, rid: int, status: str, from_irq: int) -> str:
    """Complete every bio of the request, free the tag, wake the process if it waits."""
    from .process import bio_done
    q = m.guest.blkmq
    rq = q.rqs[rid]
    rq["status"] = status
    for bio in rq["bios"]:
        bio_done(m, bio, status)
    free_request(m, rid)
    m.guest.completed.append({"id": rid, "op": rq["op"], "sector": rq["sector"],
                              "bytes": rq["bytes"], "status": status})
    if len(m.guest.completed) > 64:
        del m.guest.completed[0]
    if from_irq:
        m.sim.cont("vring.get_buf")
    return f"request {rid} ({rq['op']} sector {rq['sector']}, {rq['bytes']} bytes): BLK_STS_{status}; tag {rq['tag']} freed"
