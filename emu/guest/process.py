"""The guest process: runs the workload through O_DIRECT + AIO on /dev/vda (block/fops.c)."""
from __future__ import annotations

import hashlib
import struct

from ..spec import blk as B
from ..sim.steps import handler
from ..workload import write_pattern
from . import blk_mq as Q
from .state import BIO_MAX_VECS, BLK_MAX_REQUEST_COUNT, BLK_PLUG_FLUSH_SIZE

FOPS = "block/fops.c"
BLKDEV_MIN_RQ = 4                     # include/linux/blkdev.h
PAGE = 4096
OP_FN = {"write": ("blkdev_write_iter", FOPS), "read": ("blkdev_read_iter", FOPS),
         "discard": ("blkdev_issue_discard", "block/blk-lib.c"),
         "write-zeroes": ("blkdev_issue_zeroout", "block/blk-lib.c"),
         "flush": ("blkdev_issue_flush", "block/blk-flush.c"),
         "get-id": ("virtblk_get_id", "drivers/block/virtio_blk.c"),
         "wait": ("io_getevents", "fs/aio.c"), "queue-depth": ("queue_requests_store", "block/blk-sysfs.c"),
         "at": ("hrtimer_nanosleep", "kernel/time/hrtimer.c")}


def _wake(m, reason: str) -> None:
    p = m.guest.proc
    if p.waiting == reason:
        p.waiting = "woken-" + reason
        m.sim.post("vcpu", "app.resume")


def bio_done(m, bio: dict, status: str) -> None:
    """bio_endio: count the op's finished bios; the last one completes the AIO."""
    p = m.guest.proc
    st = p.op_state[bio["op_idx"]]
    st["bios"] -= 1
    if status != "OK" and st["status"] == "OK":
        st["status"] = status
    if st["bios"] == 0:
        _op_done(m, bio["op_idx"])


def _op_done(m, idx: int) -> None:
    p = m.guest.proc
    st = p.op_state.pop(idx)
    op = p.ops[idx]
    p.inflight -= 1
    if op["op"] == "read":
        data = m.mem.read(st["buf"], op["length"])
        p.reads.append({"n": op["n"], "offset": op["offset"], "length": op["length"],
                        "sha256": hashlib.sha256(data).hexdigest(), "status": st["status"],
                        "line": op["line"]})
    if op["op"] == "get-id":
        raw = m.mem.read(st["buf"], B.ID_BYTES)
        st["serial"] = raw.split(b"\0", 1)[0].decode("latin-1")
    if st.get("buf"):
        m.pages.free_pages(st["buf"])
    p.results.append({"n": op["n"], "line": op["line"], "op": op["op"], "status": st["status"],
                      **({"serial": st["serial"]} if "serial" in st else {})})
    _wake(m, "mem")
    if p.inflight == 0:
        _wake(m, "drain")
        _wake(m, "exit")


@handler("app.start", "app", "blkdev_open", FOPS)
def start(m) -> str:
    p = m.guest.proc
    p.started = True
    m.sim.cont("app.op", preemptible=True)
    return f"the workload process opens /dev/vda (O_RDWR|O_DIRECT); {len(p.ops)} operations"


def _sleep(m, reason: str) -> str:
    """The process blocks; schedule() flushes its plug first (blk_flush_plug)."""
    p = m.guest.proc
    p.waiting = reason
    if m.guest.blkmq.plug:
        m.sim.cont("blkmq.flush_plug", (-1,))
        return f"sleeps ({reason}); its plug is flushed on the way"
    return f"sleeps ({reason})"


@handler("app.op", "app", "blkdev_write_iter", FOPS)
def op_step(m) -> str:
    """Issue the next workload operation (or start waiting)."""
    g = m.guest
    p = g.proc
    if p.pc >= len(p.ops):
        if p.inflight:
            return "end of the workload: " + _sleep(m, "exit")
        m.sim.cont("app.exit")
        return "end of the workload"
    op = p.ops[p.pc]
    kind = op["op"]
    m.set_function(OP_FN[kind][0], OP_FN[kind][1])
    where = f"line {op['line']}: {kind}"
    if kind == "wait":
        if p.inflight:
            return where + ": " + _sleep(m, "drain")
        p.pc += 1
        m.sim.cont("app.op", preemptible=True)
        return where + ": nothing in flight"
    if kind == "at":
        # clock_nanosleep(TIMER_ABSTIME): the next operation is issued no earlier than T
        p.pc += 1
        now = m.sim.now
        if now < op["time_ns"]:
            m.sim.at(op["time_ns"] - now, "app.hrtimer")
            return where + f" {op['time_ns']} ns (now {now} ns): " + _sleep(m, "timer")
        m.sim.cont("app.op", preemptible=True)
        return where + f" {op['time_ns']} ns: already past (now {now} ns)"
    if kind == "queue-depth":
        # queue_requests_store: raised to BLKDEV_MIN_RQ; blk_mq_update_nr_requests refuses
        # more than the tag set holds with -EINVAL and leaves nr_requests as it was.
        q = g.blkmq
        nr = max(op["depth"], BLKDEV_MIN_RQ)
        p.pc += 1
        m.sim.cont("app.op", preemptible=True)
        if nr > q.depth:
            return where + (f" {op['depth']}: write error: Invalid argument (EINVAL: the tag"
                            f" set holds {q.depth}); nr_requests stays {q.nr_requests}")
        q.nr_requests = nr
        q.alloc_hint %= nr
        return where + f" {op['depth']}: nr_requests = {nr}"
    bios, buf, err = _make_bios(m, op)
    if err == "ENOMEM" and p.inflight:
        return where + ": no free guest pages for the buffer: " + _sleep(m, "mem")
    p.pc += 1
    if err:
        p.results.append({"n": op["n"], "line": op["line"], "op": kind, "status": err})
        m.sim.cont("app.op", preemptible=True)
        return where + f": fails with {err} before reaching the disk"
    if not bios:
        p.results.append({"n": op["n"], "line": op["line"], "op": kind, "status": "OK"})
        m.sim.cont("app.op", preemptible=True)
        return where + ": the queue has no write cache, so the flush completes at once (no request)"
    idx = p.pc - 1
    p.op_state[idx] = {"bios": len(bios), "status": "OK", "buf": buf}
    p.inflight += 1
    p.pending_bios.extend(bios)
    m.sim.cont("blkmq.submit_bio", preemptible=True)
    size = f" {op['offset']:#x}+{op['length']:#x}" if "offset" in op else ""
    return where + size + f": {len(bios)} bio(s)" + (f", buffer at {buf:#x}" if buf else "")


def _bio(m, op: dict, rq_op: str, sector: int, nbytes: int, segs: list, **kw) -> dict:
    p = m.guest.proc
    b = {"id": p.next_bio, "op_idx": p.pc, "op": rq_op, "sector": sector, "bytes": nbytes,
         "segs": segs}
    b.update(kw)
    p.next_bio += 1
    return b


def _make_bios(m, op: dict) -> tuple[list, int, str]:
    """Build the op's bios as blkdev_direct_IO / blkdev_issue_* would; (bios, buffer, error)."""
    g = m.guest
    lim = g.blkmq.limits
    kind = op["op"]
    if kind == "flush":
        if not g.blkmq.write_cache:
            return [], 0, ""
        return [_bio(m, op, "FLUSH", 0, 0, [])], 0, ""
    if kind == "get-id":
        buf = m.pages.alloc_pages(1)
        if buf is None:
            return [], 0, "ENOMEM"
        return [_bio(m, op, "DRV_IN", 0, B.ID_BYTES, [(buf, B.ID_BYTES)])], buf, ""
    off, length = op["offset"], op["length"]
    lbs = lim["logical_block_size"]
    if off % lbs or length % lbs:
        return [], 0, "EINVAL"
    if kind in ("write", "read"):
        npages = (length + PAGE - 1) // PAGE
        buf = m.pages.alloc_pages(npages)
        if buf is None:
            return [], 0, "ENOMEM"
        if kind == "write":
            m.mem.write(buf, write_pattern(op["n"], off, length, op.get("fill")))
        bios = []
        step = BIO_MAX_VECS * PAGE
        for pos in range(0, length, step):
            n = min(step, length - pos)
            bios.append(_bio(m, op, kind.upper(), (off + pos) >> 9, n, [(buf + pos, n)]))
        return bios, buf, ""
    if kind == "discard":
        if not lim["max_discard_sectors"]:
            return [], 0, "EOPNOTSUPP"
        return _range_bios(m, op, "DISCARD", lim["max_discard_sectors"]), 0, ""
    # write-zeroes: fallocate(PUNCH_HOLE) may unmap and never falls back; ZERO_RANGE may
    if lim["max_write_zeroes_sectors"]:
        return _range_bios(m, op, "WRITE_ZEROES", lim["max_write_zeroes_sectors"],
                           unmap=bool(op.get("unmap"))), 0, ""
    if op.get("unmap"):
        return [], 0, "EOPNOTSUPP"
    if not g.zero_page:
        g.zero_page = m.pages.alloc_pages(1) or 0
    bios = []
    step = BIO_MAX_VECS * PAGE
    for pos in range(0, length, step):
        n = min(step, length - pos)
        segs = [(g.zero_page, min(PAGE, n - k)) for k in range(0, n, PAGE)]
        bios.append(_bio(m, op, "WRITE", (off + pos) >> 9, n, segs))
    return bios, 0, ""


def _range_bios(m, op: dict, rq_op: str, max_sectors: int, unmap: bool = False) -> list:
    bios = []
    lbs_sect = m.guest.blkmq.limits["logical_block_size"] >> 9
    step = max(lbs_sect, max_sectors - max_sectors % lbs_sect) << 9
    for pos in range(0, op["length"], step):
        n = min(step, op["length"] - pos)
        bios.append(_bio(m, op, rq_op, (op["offset"] + pos) >> 9, n, [], unmap=unmap))
    return bios


def split_segs(segs: list, cut: int) -> tuple[list, list]:
    """A bio's (gpa, len) segments cut after `cut` bytes: (the first part's, the rest's)."""
    head, tail, pos = [], [], 0
    for a, n in segs:
        if pos + n <= cut:
            head.append((a, n))
        elif pos >= cut:
            tail.append((a, n))
        else:
            head.append((a, cut - pos))
            tail.append((a + cut - pos, n - (cut - pos)))
        pos += n
    return head, tail


@handler("blkmq.submit_bio", "blk-mq", "blk_mq_submit_bio", Q.BLKMQ)
def submit_bio(m) -> str:
    """Split to the queue limits, try a plug or scheduler merge, else take a tag and plug."""
    g = m.guest
    q = g.blkmq
    p = g.proc
    bio = p.pending_bios[0]
    note = _split(m, bio)
    if bio["op"] in Q.MERGEABLE:
        cands = ([q.plug[-1]] if q.plug else []) + q.dd_fifo[Q.rq_dir(bio["op"])]
        for rid in cands:
            how = Q.try_merge(q, q.rqs[rid], bio)
            if how:
                Q.do_merge(q.rqs[rid], bio, how)
                p.pending_bios.pop(0)
                _next(m)
                where = "plugged" if q.rqs[rid]["stage"] == "plugged" else "queued"
                return note + f"bio {bio['id']} {how}-merged into {where} request {rid} " \
                    f"(now {q.rqs[rid]['bytes']} bytes)"
    tag = Q.get_tag(q)
    if tag < 0:
        return note + f"no free tag ({q.nr_requests} in use): " + _sleep(m, "tag")
    p.pending_bios.pop(0)
    rid = q.next_rq
    q.next_rq += 1
    rq = {"id": rid, "tag": tag, "op": bio["op"], "sector": bio["sector"], "bytes": bio["bytes"],
          "bios": [bio], "nsegs": len(bio["segs"]) or (1 if bio["op"] in ("DISCARD", "WRITE_ZEROES") else 0),
          "nomerge": bio["op"] not in Q.MERGEABLE, "unmap": bio.get("unmap", False),
          "stage": "plugged", "head": None, "table": 0, "payload": 0, "status": None}
    q.rqs[rid] = rq
    what = f"bio {bio['id']} -> new request {rid} ({bio['op']} sector {bio['sector']}, {bio['bytes']} bytes), tag {tag}"
    if bio["op"] in ("FLUSH", "DRV_IN"):
        if bio["op"] == "DRV_IN":
            from .virtio_blk import pdu_of
            m.mem.write(pdu_of(m, tag), struct.pack("<IIQ", B.T_GET_ID, 0, 0))
        rq["stage"] = "queued"
        q.dispatch.append(rid)
        m.sim.call("blkmq.run_queue", (), *_next_frame(m))
        return note + what + ("; virtblk_get_id wrote the GET_ID header" if bio["op"] == "DRV_IN" else "") \
            + "; bypasses the plug and the scheduler (hctx->dispatch), run the queue"
    flush_first = bool(q.plug) and (len(q.plug) >= BLK_MAX_REQUEST_COUNT or
                                    q.rqs[q.plug[-1]]["bytes"] >= BLK_PLUG_FLUSH_SIZE)
    n_before = len(q.plug)
    q.plug.append(rid)
    if flush_first:
        m.sim.call("blkmq.flush_plug", (n_before,), *_next_frame(m))
        return note + what + f"; plug full: flush the {n_before} plugged request(s) first"
    _next(m)
    return note + what + f"; plugged ({len(q.plug)} in the plug)"


def _split(m, bio: dict) -> str:
    """bio_split_to_limits: cut the bio at max_sectors / max_segments; requeue the rest."""
    q = m.guest.blkmq
    lim = q.limits
    maxs = {"DISCARD": lim["max_discard_sectors"], "WRITE_ZEROES": lim["max_write_zeroes_sectors"]}.get(
        bio["op"], lim["max_sectors"])
    segs = bio["segs"]
    cut = min(bio["bytes"], maxs << 9)
    if segs and len(segs) > lim["max_segments"]:
        cut = min(cut, sum(n for _a, n in segs[:lim["max_segments"]]))
    if bio["op"] in ("FLUSH", "DRV_IN") or cut >= bio["bytes"]:
        return ""
    p = m.guest.proc
    rest = dict(bio, id=p.next_bio, sector=bio["sector"] + (cut >> 9), bytes=bio["bytes"] - cut)
    p.next_bio += 1
    if segs:
        bio["segs"], rest["segs"] = split_segs(segs, cut)
    bio["bytes"] = cut
    p.pending_bios.insert(1, rest)
    p.op_state[bio["op_idx"]]["bios"] += 1
    return f"bio_split_to_limits: {cut} bytes now, bio {rest['id']} ({rest['bytes']} bytes) later; "


def _next_frame(m) -> tuple:
    return ("blkmq.submit_bio", ()) if m.guest.proc.pending_bios else ("app.op", ())


def _next(m) -> None:
    kind, args = _next_frame(m)
    m.sim.cont(kind, args, preemptible=True)


@handler("app.resume", "app", "schedule", "kernel/sched/core.c")
def resume(m) -> str:
    p = m.guest.proc
    reason = p.waiting.replace("woken-", "")
    p.waiting = ""
    if reason == "drain":
        p.pc += 1
        m.sim.cont("app.op", preemptible=True)
        return "woken: all in-flight operations completed"
    if reason == "exit":
        m.sim.cont("app.exit")
        return "woken: the last operation completed"
    if reason == "tag":
        m.sim.cont("blkmq.submit_bio", preemptible=True)
        return "woken: a tag is free"
    m.sim.cont("app.op", preemptible=True)
    return f"woken ({reason})"


@handler("app.hrtimer", "app", "hrtimer_wakeup", "kernel/time/hrtimer.c")
def hrtimer_wakeup(m) -> str:
    _wake(m, "timer")
    return "the sleep's timer expired: wake the process"


@handler("app.exit", "app", "do_exit", "kernel/exit.c")
def exit_(m) -> str:
    p = m.guest.proc
    p.waiting = "done"
    if m.guest.blkmq.plug:
        m.sim.cont("blkmq.flush_plug", (-1,))
    return f"the workload process exits ({len(p.results)} operations finished)"
