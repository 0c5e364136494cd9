# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""The QEMU block layer's request path compiled: BlockBackend and block/io.c (blk.*, bdrv.*),
the raw format driver (raw.co_entry), file-posix's thread-pool requests (file.*) and the qcow2
driver's host-I/O steps (qcow2.io, qcow2.worker, qcow2.io_done, qcow2.co_entry).

Line-for-line translations of the handlers in emu/block/{backend,raw,file_posix}.py and
emu/block/qcow2/driver.py named in each docstring.  Rare branches (a probed raw image's sector
0, a qcow2 plan item that never leaves guest memory, a flush item, a failed qcow2 I/O) run the
Python handler itself, decided before anything has changed.  qcow2's compute step (the
engine's cluster mapping and allocation) is in _qcow2.pyx.
"""
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy
from emu_fast._core cimport sched_at, sched_cont, sched_post

import errno as _E

from emu.block import backend as _BK
from emu.block import file_posix as _FP
from emu.block import raw as _RAW

from emu.block.qcow2 import driver as _Q

from emu_fast import _support as _SUP
from emu_fast._fmt cimport _ascii, _dec, _decll, _hex, _hexll, _ll

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef dict AIO_FN = _FP.AIO_FN
cdef dict CO_FN = _FP.CO_FN
cdef dict ERRNO_NAMES = _FP.ERRNO_NAMES
cdef dict BLK_FN = _BK.BLK_FN
cdef dict BDRV_FN = _BK.BDRV_FN
cdef dict RAW_FN = _RAW.FN
cdef dict Q_CO_FN = _Q.CO_FN
cdef dict WORKER_FN = _Q.WORKER_FN
cdef long long BDRV_REQ_FUA = _BK.BDRV_REQ_FUA
cdef long long BDRV_REQ_MAY_UNMAP = _BK.BDRV_REQ_MAY_UNMAP
cdef object _flush_acquire = _FP._flush_acquire
cdef object _q_run = _Q._run
cdef object _PY_PLAN_FRAME = _Q._plan_frame
cdef object _PY_NEXT_ITEM = _Q._next_item
cdef dict _QD = _Q.__dict__             # _Q.name is _QD.get(name) while the name is bound
cdef dict DATA_IO = _Q.DATA_IO
cdef object _static_path = _Q.static_path
cdef object _source_of = _Q.source_of
cdef object QEMU_ROOTS = _Q.QEMU_ROOTS
cdef str Q_SRC = _Q.SRC
cdef dict _FRAMES = {}      # (fn, the coroutine's caller) -> (source, caller): static tables only
cdef object _fp_run = _FP._run
cdef object Qcow2Error = _Q.Qcow2Error
cdef int EIO = _E.EIO
cdef int EPERM = _E.EPERM
cdef int ENOMEDIUM = _E.ENOMEDIUM
cdef dict _Q_LAT_OP = {"guest_write": "write", "write": "write", "flush": "flush",
                       "discard": "discard", "write_zeroes": "write_zeroes"}
cdef dict _Q_FAULT_OP = {"guest_write": "write", "guest_read": "read", "cow_read": "read",
                         "compressed_read": "read", "backing_read": "read"}

# Machine's and BlockState's members, read at their offsets (emu_fast/_slots.pxd)
from emu.machine import Machine as _Machine_cls
from emu_fast._slots cimport slot_offsets, sget, sset
from emu_fast._zeros cimport vb_zeros
cdef object _Machine = _Machine_cls
cdef object _BlockState = _BK.BlockState
cdef Py_ssize_t _M[7]
cdef Py_ssize_t _B[11]
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("sim", "block", "fmt", "hostfile", "mem", "latency", "log"), _M),
    "BlockState": slot_offsets(_BlockState, ("reqs", "aios", "next_aio", "length", "wce", "read_only",
                                             "discard_unmap", "no_flush", "flushed_gen", "write_gen",
                                             "probed"), _B),
}
cdef inline object _m_sim(object m): return sget(m, _Machine, _M[0], "sim")
cdef inline object _m_block(object m): return sget(m, _Machine, _M[1], "block")
cdef inline object _m_fmt(object m): return sget(m, _Machine, _M[2], "fmt")
cdef inline object _m_hostfile(object m): return sget(m, _Machine, _M[3], "hostfile")
cdef inline object _m_mem(object m): return sget(m, _Machine, _M[4], "mem")
cdef inline object _m_latency(object m): return sget(m, _Machine, _M[5], "latency")
cdef inline object _m_log(object m): return sget(m, _Machine, _M[6], "log")
cdef inline object _b_reqs(object b): return sget(b, _BlockState, _B[0], "reqs")
cdef inline object _b_aios(object b): return sget(b, _BlockState, _B[1], "aios")
cdef inline object _b_next_aio(object b): return sget(b, _BlockState, _B[2], "next_aio")
cdef inline object _b_length(object b): return sget(b, _BlockState, _B[3], "length")
cdef inline object _b_wce(object b): return sget(b, _BlockState, _B[4], "wce")
cdef inline object _b_read_only(object b): return sget(b, _BlockState, _B[5], "read_only")
cdef inline object _b_discard_unmap(object b): return sget(b, _BlockState, _B[6], "discard_unmap")
cdef inline object _b_no_flush(object b): return sget(b, _BlockState, _B[7], "no_flush")
cdef inline object _b_flushed_gen(object b): return sget(b, _BlockState, _B[8], "flushed_gen")
cdef inline object _b_write_gen(object b): return sget(b, _BlockState, _B[9], "write_gen")
cdef inline object _b_probed(object b): return sget(b, _BlockState, _B[10], "probed")

cdef object _set_function = _SUP.set_function
cdef object _cost = _SUP.cost
cdef object _rand = _SUP.rand
cdef object _fault = _SUP.fault


# == formatting ==================================================================================
# f"{x}" and f"{x:#x}" of exact ints in C: emu_fast/_fmt.pxd.

def _format_check(values):
    """[(_dec(v), _hex(v)) for v in values]: for the tests (the f-string's own text)."""
    return [(_dec(v), _hex(v)) for v in values]


cdef inline str _s(object o):
    """format(o, '') of a value that is usually a str (f"{o}")"""
    if type(o) is str:
        return <str>o
    return format(o, "")


cdef inline void _log(object m, tuple eff) except *:
    """EffectLog.add"""
    cur = _m_log(m).cur
    if cur is not None:
        cur.append(eff)


cdef str _ret_str(object ret):
    """file_posix._ret_str"""
    if not ret:
        return "0"
    return "-" + _s(ERRNO_NAMES.get(-ret, -ret))


cdef long long _iov_size(object iov) except? -1:
    """emu.device.iov.iov_size"""
    return sum(n for _a, n in iov)


# -- file-posix -----------------------------------------------------------------------------

cdef object _submit(object m, object bid, object op, object offset, object nbytes, object iov):
    """file_posix.submit (data=None)"""
    blk = _m_block(m)
    aid = _b_next_aio(blk)
    sset(blk, _BlockState, _B[2], "next_aio", _b_next_aio(blk) + 1)
    _b_aios(blk)[aid] = {"bid": bid, "op": op, "offset": offset, "bytes": nbytes,
                     "iov": iov, "data": None, "ret": None}
    lat = _cost(_m_latency(m), op, nbytes, _rand(m))
    sched_at(_m_sim(m), lat, "file.aio_worker", (aid,))
    return lat


cdef str _fp_run_rw(object m, object f, dict aio):
    """file_posix._run for read and write"""
    op, off, n = aio["op"], aio["offset"], aio["bytes"]
    mem = _m_mem(m)
    cdef Py_ssize_t pos
    if op == "read":
        data = f.pread(off, n)
        _log(m, ("file-read", off, n))
        pos = 0
        for gpa, ln in aio["iov"]:
            mem.write(gpa, data[pos:pos + ln])
            pos += ln
        return f"preadv({_dec(n)} bytes at host offset {_hex(off)}) into {len(aio['iov'])} guest buffer(s)"
    if aio["data"] is not None:
        data = aio["data"]
    else:
        data = b"".join([mem.read(gpa, ln) for gpa, ln in aio["iov"]])
    old = f.pread(off, n)
    f.pwrite(off, data)
    _log(m, ("file", off, old, data))
    return f"pwritev({_dec(n)} bytes at host offset {_hex(off)})"


def aio_worker(m, aid):
    """file_posix.aio_worker"""
    cdef dict aio = _b_aios(_m_block(m))[aid]
    op, off, n = aio["op"], aio["offset"], aio["bytes"]
    _set_function(m, AIO_FN[op])
    f = _m_hostfile(m)
    err = _fault(m, op, off, n)
    if err:
        aio["ret"] = -err
        detail = f"{op} at {off:#x}+{n}: injected error {ERRNO_NAMES.get(err, err)}"
    else:
        try:
            if op == "read" or op == "write":
                detail = _fp_run_rw(m, f, aio)
            else:
                detail = _fp_run(m, f, aio)
            aio["ret"] = 0
        except OSError as e:
            aio["ret"] = -(e.errno or EIO)
            detail = f"{op} at {off:#x}+{n} failed: {e.strerror}"
    sched_post(_m_sim(m), "qemu", "file.co_resume", (aid,))
    return detail


def file_co_entry(m, bid):
    """file_posix.co_entry"""
    cdef dict req = _b_reqs(_m_block(m))[bid]
    op = req["cur_op"]
    _set_function(m, CO_FN[op])
    if op == "flush" and not _flush_acquire(m, bid):
        return "a flush is already running: wait for it (bs->active_flush_req)"
    if op == "flush" and (_b_no_flush(_m_block(m)) or _b_flushed_gen(_m_block(m)) == _b_write_gen(_m_block(m))):
        req["ret"] = 0
        why = "cache=unsafe (BDRV_O_NO_FLUSH)" if _b_no_flush(_m_block(m)) else \
            "nothing written since the last flush (flushed_gen == write_gen)"
        sched_cont(_m_sim(m), "file.flush_done", (bid,))
        return f"no fdatasync: {why}"
    if op == "flush":
        req["flush_gen"] = _b_write_gen(_m_block(m))
    rw = op == "read" or op == "write"
    nbytes = _iov_size(req["qiov"]) if rw else req["bytes"]
    lat = _submit(m, bid, op, req["offset"], nbytes, req["qiov"] if rw else None)
    return f"{op} {_dec(nbytes)} bytes at {_hex(req['offset'])} -> thread pool (done in {_dec(lat)} ns); coroutine yields"


def file_co_resume(m, aid):
    """file_posix.co_resume"""
    blk = _m_block(m)
    cdef dict aio = _b_aios(blk).pop(aid)
    bid = aio["bid"]
    cdef dict req = _b_reqs(blk)[bid]
    aop = aio["op"]
    ret = aio["ret"]
    _set_function(m, CO_FN[aop])
    req["ret"] = ret
    if aop == "flush":
        if ret == 0:
            blk.flushed_gen = req.pop("flush_gen")
        sched_cont(_m_sim(m), "file.flush_done", (bid,))
    else:
        if aop != "read" and ret == 0:
            blk.write_gen += 1
        sched_cont(_m_sim(m), "bdrv.co_done", (bid,))
    return f"{aop} returned {_ret_str(ret)}; coroutine re-entered"


# -- BlockBackend and block/io.c -------------------------------------------------------------

cdef void _complete_early(object m, object bid, object ret) except *:
    """backend._complete_early"""
    _b_reqs(_m_block(m))[bid]["ret"] = ret
    sched_post(_m_sim(m), "qemu", "blk.aio_complete", (bid,))


def blk_co_entry(m, bid):
    """backend.co_entry"""
    blk = _m_block(m)
    cdef dict req = _b_reqs(blk)[bid]
    op = req["op"]
    _set_function(m, BLK_FN[op])
    if op != "flush":
        off, n = req["offset"], req["bytes"]
        if off < 0 or n < 0 or off > _b_length(blk) or n > _b_length(blk) - off:
            _complete_early(m, bid, -EIO)
            return f"blk_check_byte_request: {off:#x}+{n} beyond the device ({_b_length(blk)} bytes): -EIO"
    extra = ""
    if op == "write" and not _b_wce(blk):
        req["flags"] |= BDRV_REQ_FUA
        extra = "; write cache off (writethrough): BDRV_REQ_FUA added"
    sched_cont(_m_sim(m), "bdrv.co_entry", (bid,))
    return f"{op} {_dec(req['bytes'])} bytes at {_hex(req['offset'])}{extra}"


def bdrv_co_entry(m, bid):
    """backend.bdrv_co_entry"""
    blk = _m_block(m)
    cdef dict req = _b_reqs(blk)[bid]
    op = req["op"]
    _set_function(m, BDRV_FN[op])
    if (op == "write" or op == "write_zeroes" or op == "discard") and _b_read_only(blk):
        _complete_early(m, bid, -EPERM)
        return "bdrv_co_write_req_prepare: read-only node: -EPERM"
    if op == "discard" and not _b_discard_unmap(blk):
        _complete_early(m, bid, 0)
        return "discard=ignore (no BDRV_O_UNMAP): succeeds without touching the image"
    if op == "write_zeroes" and not _b_discard_unmap(blk):
        req["flags"] &= ~BDRV_REQ_MAY_UNMAP
    fmt = _m_fmt(m)
    sched_cont(_m_sim(m), fmt.entry_kind(op), (bid,))
    return f"-> {fmt.name} driver"


def bdrv_co_done(m, bid):
    """backend.bdrv_co_done"""
    cdef dict req = _b_reqs(_m_block(m))[bid]
    op = req["op"]
    _set_function(m, BDRV_FN[op])
    if op == "write" and req["flags"] & BDRV_REQ_FUA and req["ret"] == 0 \
            and req["phase"] != "fua":
        req["phase"] = "fua"
        req["cur_op"] = "flush"
        sched_cont(_m_sim(m), _m_fmt(m).entry_kind("flush"), (bid,))
        return "BDRV_REQ_FUA not supported by the driver: bdrv_co_flush() after the write"
    sched_cont(_m_sim(m), "blk.aio_complete", (bid,))
    return f"{op} returns {_ret_str(req['ret'])}"


def blk_aio_complete(m, bid):
    """backend.aio_complete"""
    cdef dict req = _b_reqs(_m_block(m)).pop(bid)
    kind, args = req["cb"]
    ret = req["ret"]
    sched_cont(_m_sim(m), kind, tuple(args) + (ret,))
    return f"{req['op']} request {_dec(bid)} completes with {_ret_str(ret)}"


# -- raw-format --------------------------------------------------------------------------------

def raw_co_entry(m, bid):
    """raw.co_entry (a write reaching sector 0 of a probed image: the Python handler)"""
    cdef dict req = _b_reqs(_m_block(m))[bid]
    op = req["cur_op"]
    if op == "write" and _b_probed(_m_block(m)) and req["offset"] < 512 and req["bytes"]:
        return _RAW.co_entry(m, bid)
    _set_function(m, RAW_FN[op])
    sched_cont(_m_sim(m), "file.co_entry", (bid,))
    return f"{op} passes straight to the file at the same offset"


# -- qcow2: the host I/O of a plan -------------------------------------------------------------

def q_co_entry(m, bid):
    """qcow2 driver.co_entry"""
    f = _m_fmt(m)
    cdef dict req = _b_reqs(_m_block(m))[bid]
    op = req["cur_op"]
    _set_function(m, Q_CO_FN[op])
    if f.engine.drv_gone:
        req["ret"] = -ENOMEDIUM
        sched_post(_m_sim(m), "qemu", "blk.aio_complete", (bid,))
        return "the qcow2 node was made unusable by an earlier corruption: -ENOMEDIUM"
    cdef dict co = {"op": op, "phase": "start", "plan": [], "pi": 0, "ret": 0}
    if op == "write" or op == "read":
        co.update(pos=req["offset"], remaining=req["bytes"], qoff=0, pieces=[], link_i=0,
                  zero=False, wphase="alloc")
    f.cos[bid] = co
    if f.lock_owner is not None:
        f.lock_queue.append(bid)
        return f"s->lock is held by request {f.lock_owner}: wait (qemu_co_mutex_lock)"
    f.lock_owner = bid
    sched_cont(_m_sim(m), "qcow2.compute", (bid,))
    return f"{op} {_dec(req['bytes'])} bytes at guest {_hex(req['offset'])}; s->lock taken"


def q_io(m, bid):
    """qcow2 driver.io (guest_zero and flush items: the Python handler)"""
    cdef dict co = _m_fmt(m).cos[bid]
    cdef dict item = co["plan"][co["pi"]]
    op = item["op"]
    if op == "guest_zero" or op == "flush":
        return _Q.io(m, bid)
    _plan_frame(m, co, item)
    lat = _cost(_m_latency(m), _Q_LAT_OP.get(op, "read"), item.get("length", 0), _rand(m))
    sched_at(_m_sim(m), lat, "qcow2.worker", (bid,))
    return f"{item['what']} -> thread pool ({_dec(lat)} ns); coroutine yields"


cdef str _q_run_write(object m, dict item):
    """qcow2 driver._run for write and guest_write"""
    f = _m_hostfile(m)
    op, off = item["op"], item["offset"]
    mem = _m_mem(m)
    if op == "write":
        data = item["data"]
    else:
        data = b"".join([mem.read(p[1], p[2]) if p[0] == "ram" else
                         (bytes(p[1]) if p[0] == "zero" else p[1]) for p in item["parts"]])
    old = f.pread(off, len(data))
    f.pwrite(off, data)
    _log(m, ("file", off, old, data))
    return f"pwrite {len(data)} bytes at host {_hex(off)}: {item['what']}"


cdef object _plan_frame(object m, dict co, dict item):
    """qcow2 driver._plan_frame (its static call-chain lookups cached per function and caller)"""
    if _QD.get("_plan_frame") is not _PY_PLAN_FRAME:
        return _Q._plan_frame(m, co, item)
    fn = item["fn"]
    ctx = co.get("caller", "")
    key = (fn, ctx)
    r = _FRAMES.get(key)
    if r is None:
        caller = DATA_IO.get(fn, "")
        path = _static_path(fn)
        if not caller and ctx and ctx not in path and path[0] not in QEMU_ROOTS:
            caller = ">".join([ctx, *path[:len(path) - 1]])
        r = (_source_of(fn) or Q_SRC, caller)
        _FRAMES[key] = r
    _set_function(m, fn, (<tuple>r)[0], (<tuple>r)[1])


cdef object _next_item(object m, object bid, dict co, object detail):
    """qcow2 driver._next_item"""
    if _QD.get("_next_item") is not _PY_NEXT_ITEM:
        return _Q._next_item(m, bid, co, detail)
    _m_fmt(m).engine.executed(co["plan"][co["pi"]])
    co["pi"] += 1
    sched_cont(_m_sim(m), "qcow2.io" if co["pi"] < len(co["plan"]) else "qcow2.compute", (bid,))
    return detail


cdef str _q_run_zero(object m, dict item):
    """qcow2 driver._run for write_zeroes and discard"""
    f = _m_hostfile(m)
    op, off, n = item["op"], item["offset"], item.get("length", 0)
    end = off + n if op == "write_zeroes" else min(off + n, f.size)
    if end > off:
        old = f.pread(off, end - off)
        new = vb_zeros(end - off) if type(end) is int and type(off) is int and end - off < 1 << 40 \
            else bytes(end - off)
        if end > f.size or old != new:      # (old != new or end > f.size): neither has effects
            f.write_zeroes(off, end - off)
            _log(m, ("file", off, old, new))
    return f"{'fallocate(ZERO_RANGE)' if op == 'write_zeroes' else 'fallocate(PUNCH_HOLE)'} " \
           f"{_hex(off)}+{_hex(n)}: {item['what']}"


def q_worker(m, bid):
    """qcow2 driver.worker"""
    cdef dict co = _m_fmt(m).cos[bid]
    cdef dict item = co["plan"][co["pi"]]
    op = item["op"]
    _set_function(m, WORKER_FN[op])
    fault_op = _Q_FAULT_OP.get(op, op)
    err = _fault(m, fault_op, item["offset"], max(item.get("length", 0), 1))
    detail = ""
    if err:
        co["io_ret"] = -err
        detail = f"{item['what']}: injected error {ERRNO_NAMES.get(err, err)}"
    else:
        try:
            if _QD.get("_run") is not _q_run:
                detail = _Q._run(m, item)
            elif op == "write" or op == "guest_write":
                detail = _q_run_write(m, item)
            elif op == "write_zeroes" or op == "discard":
                detail = _q_run_zero(m, item)
            else:
                detail = _q_run(m, item)
            co["io_ret"] = 0
        except OSError as e:
            co["io_ret"] = -(e.errno or EIO)
            detail = f"{item['what']} failed: {e.strerror}"
        except Qcow2Error as e:
            co["io_ret"] = e.errno
            detail = f"{item['what']} failed: {e}"
    sched_post(_m_sim(m), "qemu", "qcow2.io_done", (bid,))
    return detail


def q_io_done(m, bid):
    """qcow2 driver.io_done (a failed I/O: the Python handler)"""
    cdef dict co = _m_fmt(m).cos[bid]
    if co.get("io_ret") != 0:
        return _Q.io_done(m, bid)
    cdef dict item = co["plan"][co["pi"]]
    _plan_frame(m, co, item)
    co.pop("io_ret")
    op = item["op"]
    if op == "write" or op == "guest_write" or op == "write_zeroes" or op == "discard":
        _m_block(m).write_gen += 1
    if op == "flush":
        _m_block(m).flushed_gen = item["gen"]
    return _next_item(m, bid, co, f"{item['what']}: done")


HANDLERS = {
    "file.aio_worker": (aio_worker, _FP.aio_worker),
    "file.co_entry": (file_co_entry, _FP.co_entry),
    "file.co_resume": (file_co_resume, _FP.co_resume),
    "blk.co_entry": (blk_co_entry, _BK.co_entry),
    "bdrv.co_entry": (bdrv_co_entry, _BK.bdrv_co_entry),
    "bdrv.co_done": (bdrv_co_done, _BK.bdrv_co_done),
    "blk.aio_complete": (blk_aio_complete, _BK.aio_complete),
    "raw.co_entry": (raw_co_entry, _RAW.co_entry),
    "qcow2.co_entry": (q_co_entry, _Q.co_entry),
    "qcow2.io": (q_io, _Q.io),
    "qcow2.worker": (q_worker, _Q.worker),
    "qcow2.io_done": (q_io_done, _Q.io_done),
}
