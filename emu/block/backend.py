"""QEMU block/block-backend.c + block/io.c: the BlockBackend entry points and the generic bdrv path.

A request is a coroutine whose state is a plain dict in BlockState.reqs; each layer is one
step; the format driver (raw, later qcow2) plugs in through `entry_kind(op)`.
"""
from __future__ import annotations

import errno as E
from dataclasses import dataclass, field

from ..device.iov import iov_size
from ..sim.steps import handler
from .file_posix import _ret_str

BDRV_REQ_FUA = 0x10
BDRV_REQ_MAY_UNMAP = 0x4

BLK_FN = {"read": "blk_co_do_preadv_part", "write": "blk_co_do_pwritev_part",
          "flush": "blk_co_do_flush", "discard": "blk_co_do_pdiscard",
          "write_zeroes": "blk_co_do_pwrite_zeroes"}
BDRV_FN = {"read": "bdrv_co_preadv_part", "write": "bdrv_co_pwritev_part",
           "flush": "bdrv_co_flush", "discard": "bdrv_co_pdiscard",
           "write_zeroes": "bdrv_co_pwrite_zeroes"}


@dataclass(slots=True)
class BlockState:
    """BlockBackend + BlockDriverState state that the guest can influence or observe."""
    length: int                       # virtual disk size in bytes
    wce: bool = True                  # blk_enable_write_cache
    wce_default: bool = True
    read_only: bool = False
    discard_unmap: bool = False       # BDRV_O_UNMAP (-drive discard=unmap)
    no_flush: bool = False            # BDRV_O_NO_FLUSH (cache=unsafe)
    werror: str = "report"
    rerror: str = "report"
    probed: bool = True               # format was probed (raw: guard the first sector)
    write_gen: int = 0
    flushed_gen: int = 0
    active_flush: int | None = None
    flush_queue: list = field(default_factory=list)
    reqs: dict = field(default_factory=dict)
    aios: dict = field(default_factory=dict)
    next_req: int = 1
    next_aio: int = 1
    faults: list = field(default_factory=list)


def blk_aio_submit(m, op: str, offset: int, nbytes: int, qiov: list | None, flags: int,
                   cb: tuple, then: tuple | None) -> int:
    """blk_aio_prwv()/blk_aio_flush()/...: create the coroutine and enter it at once.

    cb = (kind, args) runs with (ret,) appended when the request completes; then = the
    caller's continuation once the coroutine yields (None: the caller's task returns).
    """
    blk = m.block
    bid = blk.next_req
    blk.next_req += 1
    if qiov is not None:
        nbytes = iov_size(qiov)
    blk.reqs[bid] = {"id": bid, "op": op, "cur_op": op, "offset": offset, "bytes": nbytes,
                     "qiov": qiov, "flags": flags, "cb": cb, "ret": None, "phase": "submit"}
    if then is None:
        m.sim.cont("blk.co_entry", (bid,))
    else:
        m.sim.call("blk.co_entry", (bid,), then[0], then[1])
    return bid


def _complete_early(m, bid: int, ret: int) -> None:
    """The coroutine finished before blk_aio_prwv returned: the callback runs from a BH."""
    m.block.reqs[bid]["ret"] = ret
    m.sim.post("qemu", "blk.aio_complete", (bid,))


@handler("blk.co_entry", "block", "blk_co_do_pwritev_part", "block/block-backend.c")
def co_entry(m, bid: int) -> str:
    """blk_co_do_*: byte-range check, FUA when the write cache is off (writethrough)."""
    blk = m.block
    req = blk.reqs[bid]
    op = req["op"]
    m.set_function(BLK_FN[op])
    if op != "flush":
        off, n = req["offset"], req["bytes"]
        if off < 0 or n < 0 or off > blk.length or n > blk.length - off:
            _complete_early(m, bid, -E.EIO)
            return f"blk_check_byte_request: {off:#x}+{n} beyond the device ({blk.length} bytes): -EIO"
    extra = ""
    if op == "write" and not blk.wce:
        req["flags"] |= BDRV_REQ_FUA
        extra = "; write cache off (writethrough): BDRV_REQ_FUA added"
    m.sim.cont("bdrv.co_entry", (bid,))
    return f"{op} {req['bytes']} bytes at {req['offset']:#x}{extra}"


@handler("bdrv.co_entry", "block", "bdrv_co_pwritev_part", "block/io.c")
def bdrv_co_entry(m, bid: int) -> str:
    """bdrv_co_*: permission checks and the generic shortcuts, then the format driver."""
    blk = m.block
    req = blk.reqs[bid]
    op = req["op"]
    m.set_function(BDRV_FN[op])
    if op in ("write", "write_zeroes", "discard") and blk.read_only:
        _complete_early(m, bid, -E.EPERM)
        return "bdrv_co_write_req_prepare: read-only node: -EPERM"
    if op == "discard" and not blk.discard_unmap:
        _complete_early(m, bid, 0)
        return "discard=ignore (no BDRV_O_UNMAP): succeeds without touching the image"
    if op == "write_zeroes" and not blk.discard_unmap:
        req["flags"] &= ~BDRV_REQ_MAY_UNMAP
    m.sim.cont(m.fmt.entry_kind(op), (bid,))
    return f"-> {m.fmt.name} driver"


@handler("bdrv.co_done", "block", "bdrv_co_pwritev_part", "block/io.c")
def bdrv_co_done(m, bid: int) -> str:
    """Back in block/io.c: emulate FUA with a flush after a successful write, then complete."""
    req = m.block.reqs[bid]
    m.set_function(BDRV_FN[req["op"]])
    if req["op"] == "write" and req["flags"] & BDRV_REQ_FUA and req["ret"] == 0 \
            and req["phase"] != "fua":
        req["phase"] = "fua"
        req["cur_op"] = "flush"
        m.sim.cont(m.fmt.entry_kind("flush"), (bid,))
        return "BDRV_REQ_FUA not supported by the driver: bdrv_co_flush() after the write"
    m.sim.cont("blk.aio_complete", (bid,))
    return f"{req['op']} returns {_ret_str(req['ret'])}"


@handler("blk.aio_complete", "block", "blk_aio_complete", "block/block-backend.c")
def aio_complete(m, bid: int) -> str:
    """blk_aio_complete(): run the device's completion callback with the result."""
    req = m.block.reqs.pop(bid)
    kind, args = req["cb"]
    m.sim.cont(kind, tuple(args) + (req["ret"],))
    return f"{req['op']} request {bid} completes with {_ret_str(req['ret'])}"
