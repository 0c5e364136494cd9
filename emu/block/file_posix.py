"""QEMU block/file-posix.c: requests handed to the thread pool, run as real syscalls on the image."""
from __future__ import annotations

import errno as E

from ..device.iov import iov_size
from ..sim.steps import handler

SRC = "block/file-posix.c"
AIO_FN = {"read": "handle_aiocb_rw", "write": "handle_aiocb_rw", "flush": "handle_aiocb_flush",
          "discard": "handle_aiocb_discard", "write_zeroes": "handle_aiocb_write_zeroes"}
CO_FN = {"read": "raw_co_prw", "write": "raw_co_prw", "flush": "raw_co_flush_to_disk",
         "discard": "raw_co_pdiscard", "write_zeroes": "raw_co_pwrite_zeroes"}
ERRNO_NAMES = {v: k for k, v in vars(E).items() if k.startswith("E") and isinstance(v, int)}


def submit(m, bid: int, op: str, offset: int, nbytes: int, iov: list | None = None,
           data: bytes | None = None) -> int:
    """Queue one request to the thread pool (raw_thread_pool_submit); the coroutine then yields."""
    blk = m.block
    aid = blk.next_aio
    blk.next_aio += 1
    blk.aios[aid] = {"bid": bid, "op": op, "offset": offset, "bytes": nbytes,
                     "iov": iov, "data": data, "ret": None}
    lat = m.latency.cost(op, nbytes, m.rand())
    m.sim.at(lat, "file.aio_worker", (aid,))
    return lat


def _fault(m, op: str, offset: int, nbytes: int) -> int:
    """An injected error (blkdebug-style rule) for this host operation, or 0."""
    for rule in m.block.faults:
        if rule["op"] != op or rule["count"] == 0:
            continue
        if op != "flush" and not (offset < rule["end"] and rule["start"] < offset + nbytes):
            continue
        if rule["count"] > 0:
            rule["count"] -= 1
        return rule["errno"]
    return 0


@handler("file.aio_worker", "file", "handle_aiocb_rw", SRC)
def aio_worker(m, aid: int) -> str:
    """A thread-pool worker runs the syscall: preadv/pwritev/fdatasync/fallocate on the image."""
    aio = m.block.aios[aid]
    op, off, n = aio["op"], aio["offset"], aio["bytes"]
    m.set_function(AIO_FN[op])
    f = m.hostfile
    err = _fault(m, op, off, n)
    if err:
        aio["ret"] = -err
        detail = f"{op} at {off:#x}+{n}: injected error {ERRNO_NAMES.get(err, err)}"
    else:
        try:
            detail = _run(m, f, aio)
            aio["ret"] = 0
        except OSError as e:
            aio["ret"] = -(e.errno or E.EIO)
            detail = f"{op} at {off:#x}+{n} failed: {e.strerror}"
    m.sim.post("qemu", "file.co_resume", (aid,))
    return detail


def _run(m, f, aio: dict) -> str:
    op, off, n = aio["op"], aio["offset"], aio["bytes"]
    if op == "read":
        data = f.pread(off, n)
        m.log.add(("file-read", off, n))
        pos = 0
        for gpa, ln in aio["iov"]:
            m.mem.write(gpa, data[pos:pos + ln])
            pos += ln
        return f"preadv({n} bytes at host offset {off:#x}) into {len(aio['iov'])} guest buffer(s)"
    if op == "write":
        if aio["data"] is not None:
            data = aio["data"]
        else:
            data = b"".join(m.mem.read(gpa, ln) for gpa, ln in aio["iov"])
        old = f.pread(off, n)
        f.pwrite(off, data)
        m.log.add(("file", off, old, data))
        return f"pwritev({n} bytes at host offset {off:#x})"
    if op == "flush":
        f.fdatasync()
        m.log.add(("fsync", f.path))
        return "fdatasync(image)"
    if op in ("discard", "write_zeroes"):
        end = min(off + n, f.size) if op == "discard" else off + n
        if end <= off:
            return f"{op} at {off:#x}+{n}: beyond end of file, nothing to do"
        old = f.pread(off, end - off)
        new = bytes(end - off)
        if old != new:
            f.pwrite(off, new)
            m.log.add(("file", off, old, new))
        what = "fallocate(PUNCH_HOLE)" if op == "discard" else "fallocate(ZERO_RANGE)"
        return f"{what} {off:#x}+{end - off} (zeroes written where data was)"
    raise AssertionError(op)


@handler("file.co_entry", "file", "raw_co_prw", SRC)
def co_entry(m, bid: int) -> str:
    """file-posix entry: hand the request to the thread pool and yield the coroutine."""
    req = m.block.reqs[bid]
    op = req["cur_op"]
    m.set_function(CO_FN[op])
    if op == "flush" and not _flush_acquire(m, bid):
        return "a flush is already running: wait for it (bs->active_flush_req)"
    if op == "flush" and (m.block.no_flush or m.block.flushed_gen == m.block.write_gen):
        req["ret"] = 0
        why = "cache=unsafe (BDRV_O_NO_FLUSH)" if m.block.no_flush else \
            "nothing written since the last flush (flushed_gen == write_gen)"
        m.sim.cont("file.flush_done", (bid,))
        return f"no fdatasync: {why}"
    if op == "flush":
        req["flush_gen"] = m.block.write_gen
    nbytes = iov_size(req["qiov"]) if op in ("read", "write") else req["bytes"]
    lat = submit(m, bid, op, req["offset"], nbytes, iov=req["qiov"] if op in ("read", "write") else None)
    return f"{op} {nbytes} bytes at {req['offset']:#x} -> thread pool (done in {lat} ns); coroutine yields"


def _flush_acquire(m, bid: int) -> bool:
    blk = m.block
    if blk.active_flush is None or blk.active_flush == bid:
        blk.active_flush = bid
        return True
    blk.flush_queue.append(bid)
    return False


@handler("file.co_resume", "file", "raw_co_prw", SRC)
def co_resume(m, aid: int) -> str:
    """The thread-pool completion re-enters the coroutine, which returns up the block layer."""
    aio = m.block.aios.pop(aid)
    bid = aio["bid"]
    req = m.block.reqs[bid]
    m.set_function(CO_FN[aio["op"]])
    req["ret"] = aio["ret"]
    if aio["op"] == "flush":
        if aio["ret"] == 0:
            m.block.flushed_gen = req.pop("flush_gen")
        m.sim.cont("file.flush_done", (bid,))
    else:
        if aio["op"] != "read" and aio["ret"] == 0:
            m.block.write_gen += 1
        m.sim.cont("bdrv.co_done", (bid,))
    return f"{aio['op']} returned {_ret_str(aio['ret'])}; coroutine re-entered"


@handler("file.flush_done", "file", "bdrv_co_flush", "block/io.c")
def flush_done(m, bid: int) -> str:
    """End of bdrv_co_flush on the file node: wake the next queued flush (qemu_co_queue_next)."""
    blk = m.block
    woke = ""
    if blk.active_flush == bid:
        blk.active_flush = None
        if blk.flush_queue:
            nxt = blk.flush_queue.pop(0)
            blk.active_flush = nxt
            m.sim.post("qemu", "file.co_entry", (nxt,))
            woke = f"; wakes queued flush request {nxt}"
    m.sim.cont("bdrv.co_done", (bid,))
    return f"flush returns {_ret_str(m.block.reqs[bid]['ret'])}{woke}"


def _ret_str(ret: int | None) -> str:
    if not ret:
        return "0"
    return f"-{ERRNO_NAMES.get(-ret, -ret)}"
