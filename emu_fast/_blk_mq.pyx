# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""The guest's process and block layer compiled: the workload process issuing O_DIRECT + AIO
on /dev/vda (Linux block/fops.c, block/blk-lib.c, block/blk-flush.c: emu/guest/process.py)
and the request queue under it (block/blk-mq.c, blk-merge.c, mq-deadline.c:
emu/guest/blk_mq.py) -- tags, plugging, merging, mq-deadline dispatch, completion.

Line-for-line translations of the Python handlers (and the helpers they call) named in each
docstring, over the same plain-data state (Proc, BlkMq dataclasses and their dicts/lists),
with the same side-effect order: guest-memory writes through m.mem.write, scheduler calls,
state mutations and dict key insertion order.  Also write_pattern (emu.workload), the bytes a
`write` carries, built in C.  Values stored into the state are Python ints/bools/strs of the
same types the Python code stores; arithmetic on C integers is used only on quantities bounded
by the disk and queue sizes (checked where they enter).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy, memset
from emu_fast._core cimport sched_at, sched_call, sched_cont, sched_post
from emu_fast._slots cimport slot_offsets, sget, sset

import hashlib as _hashlib
import struct as _struct

import emu.workload as _W
import emu.guest.process as _P
cdef object _split_segs = _P.split_segs
import emu.guest.blk_mq as _Q
from emu.guest import state as _S
from emu.spec import blk as _B
from emu.guest.virtio_blk import pdu_of as _pdu_of
from emu.machine import Machine

from emu_fast import _support as _SUP
from emu_fast._fmt cimport _ascii, _dec, _decll, _hex, _hexll, _ll, _str

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef object _write_pattern_py = _W.write_pattern
cdef object _sha256 = _hashlib.sha256
cdef bytes _GET_ID_HDR = _struct.pack("<IIQ", _B.T_GET_ID, 0, 0)
cdef object _ID_BYTES = _B.ID_BYTES
cdef long long SECTOR_SIZE = _W.SECTOR_SIZE
cdef long long RECORD = _W.RECORD
assert SECTOR_SIZE == 512 and RECORD == 16

cdef long long PAGE = _P.PAGE
cdef long long BIO_MAX_VECS = _S.BIO_MAX_VECS
cdef long long BLK_MAX_REQUEST_COUNT = _S.BLK_MAX_REQUEST_COUNT
cdef long long BLK_PLUG_FLUSH_SIZE = _S.BLK_PLUG_FLUSH_SIZE
cdef object BLKDEV_MIN_RQ = _P.BLKDEV_MIN_RQ
cdef object DD_READ_EXPIRE_NS = _S.DD_READ_EXPIRE_NS
cdef object DD_WRITE_EXPIRE_NS = _S.DD_WRITE_EXPIRE_NS
cdef long long DD_WRITES_STARVED = _S.DD_WRITES_STARVED
cdef long long DD_FIFO_BATCH = _S.DD_FIFO_BATCH
cdef dict OP_FN = _P.OP_FN
assert _Q.MERGEABLE == ("READ", "WRITE", "DISCARD")

cdef long long LIM = 1LL << 52          # C arithmetic only on values below this (disk offsets)
cdef object _set_function = _SUP.set_function
cdef object _alloc_pages = _SUP.alloc_pages
cdef object _free_pages = _SUP.free_pages


# == state members at their __slots__ offsets ====================================================
# `sget(q, _BlkMq, _BQ[Q_PLUG], "plug")` is `q.plug`, `sset(q, _BlkMq, _BQ[Q_PLUG], "plug", v)`
# is `q.plug = v` (emu_fast/_slots.pxd: the member read/written at its offset when q is exactly
# a BlkMq, else getattr/setattr).  One offset table per class; the enum gives each member's
# index in it, in the order of the names passed to slot_offsets below.

cdef object _Machine = Machine
cdef object _Guest = _S.Guest
cdef object _BlkMq = _S.BlkMq
cdef object _Proc = _S.Proc

cdef enum:
    M_SIM, M_GUEST, M_MEM, M_PAGES, M_N
cdef enum:
    G_BLKMQ, G_PROC, G_ZERO_PAGE, G_COMPLETED, G_N
cdef enum:
    Q_DEPTH, Q_NR_REQUESTS, Q_TAGS, Q_ALLOC_HINT, Q_RQS, Q_NEXT_RQ, Q_PLUG, Q_DD_FIFO,
    Q_DD_NEXT_SECTOR, Q_DD_LAST_DIR, Q_DD_BATCHING, Q_DD_STARVED, Q_DISPATCH, Q_STOPPED,
    Q_BATCH, Q_BATCH_FROM, Q_QUEUED, Q_LAST_RET, Q_RUN_WORK_PENDING, Q_LIMITS, Q_WRITE_CACHE,
    Q_N
cdef enum:
    P_OPS, P_PC, P_STARTED, P_INFLIGHT, P_WAITING, P_PENDING_BIOS, P_OP_STATE, P_READS,
    P_RESULTS, P_NEXT_BIO, P_N

cdef Py_ssize_t _MA[M_N]
cdef Py_ssize_t _GU[G_N]
cdef Py_ssize_t _BQ[Q_N]
cdef Py_ssize_t _PR[P_N]

# which classes' members this module reads at their offsets (emu_fast.slot_paths())
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("sim", "guest", "mem", "pages"), _MA),
    "Guest": slot_offsets(_Guest, ("blkmq", "proc", "zero_page", "completed"), _GU),
    "BlkMq": slot_offsets(_BlkMq, (
        "depth", "nr_requests", "tags", "alloc_hint", "rqs", "next_rq", "plug", "dd_fifo",
        "dd_next_sector", "dd_last_dir", "dd_batching", "dd_starved", "dispatch", "stopped",
        "batch", "batch_from", "queued", "last_ret", "run_work_pending", "limits", "write_cache"),
        _BQ),
    "Proc": slot_offsets(_Proc, (
        "ops", "pc", "started", "inflight", "waiting", "pending_bios", "op_state", "reads",
        "results", "next_bio"), _PR),
}


cdef inline object _sim(object m):
    """m.sim"""
    return sget(m, _Machine, _MA[M_SIM], "sim")


cdef inline object _guest(object m):
    """m.guest"""
    return sget(m, _Machine, _MA[M_GUEST], "guest")


# == formatting ==================================================================================
# f"{x}" and f"{x:#x}" of exact ints in C: emu_fast/_fmt.pxd.

def _format_check(values):
    """[(_dec(v), _hex(v)) for v in values]: for the tests (the f-string's own text)."""
    return [(_dec(v), _hex(v)) for v in values]


# == emu.workload ================================================================================

cdef char* _HEX = b"0123456789abcdef"


def write_pattern(n, offset, length, fill=None):
    """emu.workload.write_pattern: fill=, or 16-byte records 'wNNNNNN:SSSSSSSS' (32 per sector)."""
    return _write_pattern(n, offset, length, fill)


cdef object _write_pattern(object n, object offset, object length, object fill):
    """emu.workload.write_pattern (write_pattern's body, called directly by _make_bios)"""
    cdef long long first, count, nn, k, i
    cdef unsigned long long s
    cdef bytes out
    cdef char* o
    cdef char* r
    cdef Py_ssize_t j
    if fill is not None:
        if type(fill) is int and type(length) is int and 0 <= fill <= 255 and length < LIM:
            if length <= 0:
                return b""
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
            memset(PyBytes_AS_STRING(out), <int>fill, <size_t>length)
            return out
        return _write_pattern_py(n, offset, length, fill)
    if type(n) is not int or type(offset) is not int or type(length) is not int \
            or not -LIM < offset < LIM or not -LIM < length < LIM:
        return _write_pattern_py(n, offset, length, fill)
    first = offset // 512               # Python floor division on the ints
    count = length // 512
    nn = n % 1000000
    if count <= 0:
        return b""
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(count * SECTOR_SIZE))
    o = PyBytes_AS_STRING(out)
    for i in range(count):
        r = o + i * SECTOR_SIZE
        r[0] = b'w'
        k = nn
        for j in range(6, 0, -1):
            r[j] = <char>(48 + k % 10)
            k = k // 10
        r[7] = b':'
        s = (<unsigned long long>(first + i)) & 0xFFFFFFFFULL
        for j in range(15, 7, -1):
            r[j] = _HEX[s & 15]
            s >>= 4
        j = RECORD
        while j < SECTOR_SIZE:
            memcpy(r + j, r, <size_t>j)
            j *= 2
    return out


# == emu/guest/blk_mq.py helpers =================================================================

cdef inline bint _mergeable(str op):
    return op == "READ" or op == "WRITE" or op == "DISCARD"


cdef inline int _rq_dir(str op):
    """rq_dir"""
    return 0 if (op == "READ" or op == "DRV_IN") else 1


cdef long long _get_tag(object q) except -2:
    """get_tag (sbitmap_queue_get): first free tag at or after the hint, wrapping; -1 if none."""
    cdef long long n = sget(q, _BlkMq, _BQ[Q_NR_REQUESTS], "nr_requests")
    cdef long long hint = sget(q, _BlkMq, _BQ[Q_ALLOC_HINT], "alloc_hint")
    tags = sget(q, _BlkMq, _BQ[Q_TAGS], "tags")
    cdef char* t_
    cdef long long k, t
    if type(tags) is not bytearray or hint < 0 or n > PyByteArray_GET_SIZE(tags):
        return _Q.get_tag(q)
    t_ = PyByteArray_AS_STRING(tags)
    for k in range(n):
        t = (hint + k) % n
        if not t_[t]:
            t_[t] = 1
            if t == hint:
                sset(q, _BlkMq, _BQ[Q_ALLOC_HINT], "alloc_hint", (t + 1) % n)
            return t
    return -1


cdef void _put_tag(object q, object tag) except *:
    """put_tag"""
    sget(q, _BlkMq, _BQ[Q_TAGS], "tags")[tag] = 0
    if tag < sget(q, _BlkMq, _BQ[Q_NR_REQUESTS], "nr_requests"):
        sset(q, _BlkMq, _BQ[Q_ALLOC_HINT], "alloc_hint", tag)


cdef str _try_merge(object q, dict rq, dict bio):
    """try_merge (blk_rq_merge_ok + blk_try_merge + ll_{back,front}_merge_fn)."""
    cdef str op = rq["op"]
    cdef long long nsect, rsect, rsector, bsector
    if op != bio["op"] or not _mergeable(op) or rq.get("nomerge"):
        return ""
    stage = rq["stage"]
    if not (stage == "plugged" or stage == "queued"):
        return ""
    nsect = (<long long>bio["bytes"]) >> 9
    rsect = (<long long>rq["bytes"]) >> 9
    lim = sget(q, _BlkMq, _BQ[Q_LIMITS], "limits")
    if rsect + nsect > <long long>(lim["max_discard_sectors"] if op == "DISCARD" else lim["max_sectors"]):
        return ""
    if op != "DISCARD" and rq["nsegs"] + len(bio["segs"]) > lim["max_segments"]:
        return ""
    rsector = rq["sector"]
    bsector = bio["sector"]
    if rsector + rsect == bsector:
        return "back"
    if bsector + nsect == rsector:
        return "front"
    return ""


cdef void _do_merge(dict rq, dict bio, str how) except *:
    """do_merge"""
    if how == "back":
        (<list>rq["bios"]).append(bio)
    else:
        (<list>rq["bios"]).insert(0, bio)
        rq["sector"] = bio["sector"]
    rq["bytes"] += bio["bytes"]
    rq["nsegs"] += len(bio["segs"]) if rq["op"] != "DISCARD" else 0


cdef void _free_request(object m, object rid) except *:
    """free_request"""
    g = _guest(m)
    _free_request_qp(m, sget(g, _Guest, _GU[G_BLKMQ], "blkmq"), sget(g, _Guest, _GU[G_PROC], "proc"),
                     rid)


cdef void _free_request_qp(object m, object q, object proc, object rid) except *:
    """free_request (q, proc are m.guest.blkmq, m.guest.proc)"""
    rq = sget(q, _BlkMq, _BQ[Q_RQS], "rqs").pop(rid)
    _put_tag(q, rq["tag"])
    if sget(proc, _Proc, _PR[P_WAITING], "waiting") == "tag":
        sset(proc, _Proc, _PR[P_WAITING], "waiting", "woken-tag")
        sched_post(_sim(m), "vcpu", "app.resume")


cdef str _dd_insert(object m, object q, object rid):
    """dd_insert (dd_insert_request): back merge into a queued request, else onto the FIFO.
    (q is m.guest.blkmq)"""
    rqs = sget(q, _BlkMq, _BQ[Q_RQS], "rqs")
    cdef dict rq = rqs[rid]
    cdef str op = rq["op"]
    cdef int d = _rq_dir(op)
    cdef dict other
    cdef long long rsector, rsect, maxs
    if _mergeable(op):
        rsector = rq["sector"]
        rsect = (<long long>rq["bytes"]) >> 9
        lim = sget(q, _BlkMq, _BQ[Q_LIMITS], "limits")
        maxs = lim["max_discard_sectors"] if op == "DISCARD" else lim["max_sectors"]
        for oid in <list>(sget(q, _BlkMq, _BQ[Q_DD_FIFO], "dd_fifo")[d]):
            other = rqs[oid]
            if other["op"] == op and <long long>other["sector"] + ((<long long>other["bytes"]) >> 9) == rsector \
                    and ((<long long>other["bytes"]) >> 9) + rsect <= maxs \
                    and (op == "DISCARD" or other["nsegs"] + rq["nsegs"] <= lim["max_segments"]):
                for bio in rq["bios"]:
                    other["bios"].append(bio)
                other["bytes"] += rq["bytes"]
                other["nsegs"] += rq["nsegs"] if op != "DISCARD" else 0
                _free_request(m, rid)
                return f"request {rid} merged into queued request {oid}"
    rq["stage"] = "queued"
    rq["deadline"] = _sim(m).now + (DD_READ_EXPIRE_NS if d == 0 else DD_WRITE_EXPIRE_NS)
    sget(q, _BlkMq, _BQ[Q_DD_FIFO], "dd_fifo")[d].append(rid)
    return f"request {_dec(rid)} queued in mq-deadline ({'read' if d == 0 else 'write'} FIFO)"


cdef object _dd_next(object q, int d):
    """_dd_next (deadline_next_request): lowest sector at or after the last dispatched end."""
    cdef long long pos = sget(q, _BlkMq, _BQ[Q_DD_NEXT_SECTOR], "dd_next_sector")[d]
    cdef long long s, bs = 0
    best = None
    rqs = sget(q, _BlkMq, _BQ[Q_RQS], "rqs")
    for rid in <list>(sget(q, _BlkMq, _BQ[Q_DD_FIFO], "dd_fifo")[d]):
        s = rqs[rid]["sector"]
        if s >= pos and (best is None or s < bs):
            best = rid
            bs = s
    return best


cdef object _dd_dispatch(object m, object q):
    """dd_dispatch (dd_dispatch_request): sector-order batches, reads first, FIFO expiry.
    (q is m.guest.blkmq)"""
    cdef int d
    fifo = sget(q, _BlkMq, _BQ[Q_DD_FIFO], "dd_fifo")
    rqs = sget(q, _BlkMq, _BQ[Q_RQS], "rqs")
    rid = None
    if sget(q, _BlkMq, _BQ[Q_DD_BATCHING], "dd_batching") < DD_FIFO_BATCH:
        rid = _dd_next(q, sget(q, _BlkMq, _BQ[Q_DD_LAST_DIR], "dd_last_dir"))
    if rid is None:
        reads, writes = fifo
        if reads and not (writes and
                          sget(q, _BlkMq, _BQ[Q_DD_STARVED], "dd_starved") >= DD_WRITES_STARVED):
            d = 0
            if writes:
                sset(q, _BlkMq, _BQ[Q_DD_STARVED], "dd_starved",
                     sget(q, _BlkMq, _BQ[Q_DD_STARVED], "dd_starved") + 1)
        elif writes:
            d = 1
            sset(q, _BlkMq, _BQ[Q_DD_STARVED], "dd_starved", 0)
        else:
            return None
        nxt = _dd_next(q, d)
        head = fifo[d][0]
        rid = head if nxt is None or rqs[head]["deadline"] <= _sim(m).now else nxt
        sset(q, _BlkMq, _BQ[Q_DD_LAST_DIR], "dd_last_dir", d)
        sset(q, _BlkMq, _BQ[Q_DD_BATCHING], "dd_batching", 0)
    cdef dict rq = rqs[rid]
    d = _rq_dir(rq["op"])
    fifo[d].remove(rid)
    sget(q, _BlkMq, _BQ[Q_DD_NEXT_SECTOR], "dd_next_sector")[d] = rq["sector"] + (rq["bytes"] >> 9)
    sset(q, _BlkMq, _BQ[Q_DD_BATCHING], "dd_batching",
         sget(q, _BlkMq, _BQ[Q_DD_BATCHING], "dd_batching") + 1)
    return rid


# == emu/guest/process.py helpers ================================================================

cdef void _wake(object m, str reason) except *:
    """_wake"""
    _wake_p(m, sget(_guest(m), _Guest, _GU[G_PROC], "proc"), reason)


cdef void _wake_p(object m, object p, str reason) except *:
    """_wake (p is m.guest.proc)"""
    if sget(p, _Proc, _PR[P_WAITING], "waiting") == reason:
        sset(p, _Proc, _PR[P_WAITING], "waiting", "woken-" + reason)
        sched_post(_sim(m), "vcpu", "app.resume")


cdef void _bio_done(object m, object p, dict bio, str status) except *:
    """bio_done (bio_endio): the op's last bio completes the AIO.  (p is m.guest.proc)"""
    cdef dict st = sget(p, _Proc, _PR[P_OP_STATE], "op_state")[bio["op_idx"]]
    st["bios"] -= 1
    if status != "OK" and st["status"] == "OK":
        st["status"] = status
    if st["bios"] == 0:
        _op_done(m, p, bio["op_idx"])


cdef void _op_done(object m, object p, object idx) except *:
    """_op_done (p is m.guest.proc)"""
    cdef dict st = sget(p, _Proc, _PR[P_OP_STATE], "op_state").pop(idx)
    cdef dict op = sget(p, _Proc, _PR[P_OPS], "ops")[idx]
    sset(p, _Proc, _PR[P_INFLIGHT], "inflight", sget(p, _Proc, _PR[P_INFLIGHT], "inflight") - 1)
    if op["op"] == "read":
        data = sget(m, _Machine, _MA[M_MEM], "mem").read(st["buf"], op["length"])
        sget(p, _Proc, _PR[P_READS], "reads").append(
            {"n": op["n"], "offset": op["offset"], "length": op["length"],
             "sha256": _sha256(data).hexdigest(), "status": st["status"], "line": op["line"]})
    if op["op"] == "get-id":
        raw = sget(m, _Machine, _MA[M_MEM], "mem").read(st["buf"], _ID_BYTES)
        st["serial"] = raw.split(b"\0", 1)[0].decode("latin-1")
    if st.get("buf"):
        _free_pages(sget(m, _Machine, _MA[M_PAGES], "pages"), st["buf"])
    res = {"n": op["n"], "line": op["line"], "op": op["op"], "status": st["status"]}
    if "serial" in st:
        res["serial"] = st["serial"]
    sget(p, _Proc, _PR[P_RESULTS], "results").append(res)
    _wake_p(m, p, "mem")
    if sget(p, _Proc, _PR[P_INFLIGHT], "inflight") == 0:
        _wake_p(m, p, "drain")
        _wake_p(m, p, "exit")


cdef str _sleep(object m, str reason):
    """_sleep: the process blocks; schedule() flushes its plug first."""
    g = _guest(m)
    return _sleep_pq(m, sget(g, _Guest, _GU[G_PROC], "proc"), sget(g, _Guest, _GU[G_BLKMQ], "blkmq"),
                     reason)


cdef str _sleep_pq(object m, object p, object q, str reason):
    """_sleep (p, q are m.guest.proc, m.guest.blkmq)"""
    sset(p, _Proc, _PR[P_WAITING], "waiting", reason)
    if sget(q, _BlkMq, _BQ[Q_PLUG], "plug"):
        sched_cont(_sim(m), "blkmq.flush_plug", (-1,))
        return f"sleeps ({reason}); its plug is flushed on the way"
    return f"sleeps ({reason})"


cdef dict _bio(object p, str rq_op, object sector, object nbytes, list segs):
    """_bio"""
    nb = sget(p, _Proc, _PR[P_NEXT_BIO], "next_bio")
    b = {"id": nb, "op_idx": sget(p, _Proc, _PR[P_PC], "pc"), "op": rq_op, "sector": sector,
         "bytes": nbytes, "segs": segs}
    sset(p, _Proc, _PR[P_NEXT_BIO], "next_bio", nb + 1)
    return b


cdef list _range_bios(object m, dict op, str rq_op, object max_sectors, object unmap):
    """_range_bios"""
    cdef list bios = []
    cdef dict b
    g = _guest(m)
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    lim = sget(sget(g, _Guest, _GU[G_BLKMQ], "blkmq"), _BlkMq, _BQ[Q_LIMITS], "limits")
    lbs_sect = lim["logical_block_size"] >> 9
    step = max(lbs_sect, max_sectors - max_sectors % lbs_sect) << 9
    length = op["length"]
    offset = op["offset"]
    for pos in range(0, length, step):
        n = min(step, length - pos)
        b = _bio(p, rq_op, (offset + pos) >> 9, n, [])
        b["unmap"] = unmap
        bios.append(b)
    return bios


cdef tuple _make_bios(object m, dict op):
    """_make_bios: the op's bios as blkdev_direct_IO / blkdev_issue_* build them."""
    g = _guest(m)
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    q = sget(g, _Guest, _GU[G_BLKMQ], "blkmq")
    lim = sget(q, _BlkMq, _BQ[Q_LIMITS], "limits")
    cdef str kind = op["op"]
    cdef list bios, segs
    cdef long long clen, coff, pos, n, k, step, zp, npages
    if kind == "flush":
        if not sget(q, _BlkMq, _BQ[Q_WRITE_CACHE], "write_cache"):
            return [], 0, ""
        return [_bio(p, "FLUSH", 0, 0, [])], 0, ""
    if kind == "get-id":
        buf = _alloc_pages(sget(m, _Machine, _MA[M_PAGES], "pages"), 1)
        if buf is None:
            return [], 0, "ENOMEM"
        return [_bio(p, "DRV_IN", 0, _ID_BYTES, [(buf, _ID_BYTES)])], buf, ""
    off, length = op["offset"], op["length"]
    lbs = lim["logical_block_size"]
    if off % lbs or length % lbs:
        return [], 0, "EINVAL"
    step = BIO_MAX_VECS * PAGE
    if kind == "write" or kind == "read":
        npages = (<long long>length + PAGE - 1) // PAGE     # 0 <= length < LIM (_plain_op)
        buf = _alloc_pages(sget(m, _Machine, _MA[M_PAGES], "pages"), npages)
        if buf is None:
            return [], 0, "ENOMEM"
        if kind == "write":
            sget(m, _Machine, _MA[M_MEM], "mem").write(
                buf, _write_pattern(op["n"], off, length, op.get("fill")))
        bios = []
        clen = length
        coff = off
        rq_op = "WRITE" if kind == "write" else "READ"
        pos = 0
        while pos < clen:
            n = min(step, clen - pos)
            bios.append(_bio(p, rq_op, (coff + pos) >> 9, n, [(buf + pos, n)]))
            pos += step
        return bios, buf, ""
    if kind == "discard":
        if not lim["max_discard_sectors"]:
            return [], 0, "EOPNOTSUPP"
        return _range_bios(m, op, "DISCARD", lim["max_discard_sectors"], False), 0, ""
    # write-zeroes
    if lim["max_write_zeroes_sectors"]:
        return _range_bios(m, op, "WRITE_ZEROES", lim["max_write_zeroes_sectors"],
                           bool(op.get("unmap"))), 0, ""
    if op.get("unmap"):
        return [], 0, "EOPNOTSUPP"
    if not sget(g, _Guest, _GU[G_ZERO_PAGE], "zero_page"):
        sset(g, _Guest, _GU[G_ZERO_PAGE], "zero_page",
             _alloc_pages(sget(m, _Machine, _MA[M_PAGES], "pages"), 1) or 0)
    zero_page = sget(g, _Guest, _GU[G_ZERO_PAGE], "zero_page")
    bios = []
    clen = length
    coff = off
    pos = 0
    while pos < clen:
        n = min(step, clen - pos)
        segs = []
        k = 0
        while k < n:
            segs.append((zero_page, min(PAGE, n - k)))
            k += PAGE
        bios.append(_bio(p, "WRITE", (coff + pos) >> 9, n, segs))
        pos += step
    return bios, 0, ""


cdef bint _plain_op(dict op):
    """Whether op's offset/length (if any) are ints the C arithmetic above may take."""
    if "offset" not in op:
        return True
    off = op["offset"]
    length = op["length"]
    return type(off) is int and type(length) is int and 0 <= off < LIM and 0 <= length < LIM


# == process.py steps ============================================================================

def start(m):
    """emu.guest.process.start (app.start)"""
    p = sget(_guest(m), _Guest, _GU[G_PROC], "proc")
    sset(p, _Proc, _PR[P_STARTED], "started", True)
    sched_cont(_sim(m), "app.op", (), None, True)
    return f"the workload process opens /dev/vda (O_RDWR|O_DIRECT); " \
        f"{len(sget(p, _Proc, _PR[P_OPS], 'ops'))} operations"


def op_step(m):
    """emu.guest.process.op_step (app.op): issue the next workload operation (or wait)."""
    g = _guest(m)
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    cdef list ops = sget(p, _Proc, _PR[P_OPS], "ops")
    cdef dict op
    cdef list bios
    pc = sget(p, _Proc, _PR[P_PC], "pc")
    if pc >= len(ops):
        if sget(p, _Proc, _PR[P_INFLIGHT], "inflight"):
            return "end of the workload: " + _sleep(m, "exit")
        sched_cont(_sim(m), "app.exit")
        return "end of the workload"
    op = ops[pc]
    if not _plain_op(op):
        return _P.op_step(m)
    cdef str kind = op["op"]
    fn_src = OP_FN[kind]
    _set_function(m, fn_src[0], fn_src[1])
    where = f"line {_dec(op['line'])}: {kind}"
    if kind == "wait":
        if sget(p, _Proc, _PR[P_INFLIGHT], "inflight"):
            return where + ": " + _sleep(m, "drain")
        sset(p, _Proc, _PR[P_PC], "pc", sget(p, _Proc, _PR[P_PC], "pc") + 1)
        sched_cont(_sim(m), "app.op", (), None, True)
        return where + ": nothing in flight"
    if kind == "at":
        sset(p, _Proc, _PR[P_PC], "pc", sget(p, _Proc, _PR[P_PC], "pc") + 1)
        now = _sim(m).now
        if now < op["time_ns"]:
            sched_at(_sim(m), op["time_ns"] - now, "app.hrtimer")
            return where + f" {op['time_ns']} ns (now {now} ns): " + _sleep(m, "timer")
        sched_cont(_sim(m), "app.op", (), None, True)
        return where + f" {op['time_ns']} ns: already past (now {now} ns)"
    if kind == "queue-depth":
        q = sget(g, _Guest, _GU[G_BLKMQ], "blkmq")
        nr = max(op["depth"], BLKDEV_MIN_RQ)
        sset(p, _Proc, _PR[P_PC], "pc", sget(p, _Proc, _PR[P_PC], "pc") + 1)
        sched_cont(_sim(m), "app.op", (), None, True)
        depth = sget(q, _BlkMq, _BQ[Q_DEPTH], "depth")
        if nr > depth:
            return where + (f" {op['depth']}: write error: Invalid argument (EINVAL: the tag"
                            f" set holds {depth}); nr_requests stays "
                            f"{sget(q, _BlkMq, _BQ[Q_NR_REQUESTS], 'nr_requests')}")
        sset(q, _BlkMq, _BQ[Q_NR_REQUESTS], "nr_requests", nr)
        sset(q, _BlkMq, _BQ[Q_ALLOC_HINT], "alloc_hint",
             sget(q, _BlkMq, _BQ[Q_ALLOC_HINT], "alloc_hint") % nr)
        return where + f" {op['depth']}: nr_requests = {nr}"
    bios, buf, err = _make_bios(m, op)
    if err == "ENOMEM" and sget(p, _Proc, _PR[P_INFLIGHT], "inflight"):
        return where + ": no free guest pages for the buffer: " + _sleep(m, "mem")
    sset(p, _Proc, _PR[P_PC], "pc", sget(p, _Proc, _PR[P_PC], "pc") + 1)
    if err:
        sget(p, _Proc, _PR[P_RESULTS], "results").append(
            {"n": op["n"], "line": op["line"], "op": kind, "status": err})
        sched_cont(_sim(m), "app.op", (), None, True)
        return where + f": fails with {err} before reaching the disk"
    if not bios:
        sget(p, _Proc, _PR[P_RESULTS], "results").append(
            {"n": op["n"], "line": op["line"], "op": kind, "status": "OK"})
        sched_cont(_sim(m), "app.op", (), None, True)
        return where + ": the queue has no write cache, so the flush completes at once (no request)"
    cdef Py_ssize_t nbios = len(bios)
    # idx = p.pc - 1 == pc
    sget(p, _Proc, _PR[P_OP_STATE], "op_state")[pc] = {"bios": nbios, "status": "OK", "buf": buf}
    sset(p, _Proc, _PR[P_INFLIGHT], "inflight", sget(p, _Proc, _PR[P_INFLIGHT], "inflight") + 1)
    sget(p, _Proc, _PR[P_PENDING_BIOS], "pending_bios").extend(bios)
    sched_cont(_sim(m), "blkmq.submit_bio", (), None, True)
    size = f" {_hex(op['offset'])}+{_hex(op['length'])}" if "offset" in op else ""
    return f"{where}{size}: {nbios} bio(s)" + (f", buffer at {_hex(buf)}" if buf else "")


cdef str _split(object m, object q, dict bio):
    """_split (bio_split_to_limits): cut at max_sectors / max_segments; requeue the rest.
    (q is m.guest.blkmq)"""
    lim = sget(q, _BlkMq, _BQ[Q_LIMITS], "limits")
    mds = lim["max_discard_sectors"]
    mwz = lim["max_write_zeroes_sectors"]
    cdef str op = bio["op"]
    maxs = mds if op == "DISCARD" else (mwz if op == "WRITE_ZEROES" else lim["max_sectors"])
    cdef list segs = bio["segs"]
    cdef list head, tail
    nbytes = bio["bytes"]
    cut = min(nbytes, maxs << 9)
    if segs:
        mseg = lim["max_segments"]
        if len(segs) > mseg:
            cut = min(cut, sum([sg[1] for sg in segs[:mseg]]))
    if op == "FLUSH" or op == "DRV_IN" or cut >= nbytes:
        return ""
    p = sget(_guest(m), _Guest, _GU[G_PROC], "proc")
    rest = dict(bio)
    nb = sget(p, _Proc, _PR[P_NEXT_BIO], "next_bio")
    rest["id"] = nb
    rest["sector"] = bio["sector"] + (cut >> 9)
    rest["bytes"] = nbytes - cut
    sset(p, _Proc, _PR[P_NEXT_BIO], "next_bio", nb + 1)
    if segs:
        bio["segs"], rest["segs"] = _split_segs(segs, cut)
    bio["bytes"] = cut
    sget(p, _Proc, _PR[P_PENDING_BIOS], "pending_bios").insert(1, rest)
    sget(p, _Proc, _PR[P_OP_STATE], "op_state")[bio["op_idx"]]["bios"] += 1
    return f"bio_split_to_limits: {cut} bytes now, bio {rest['id']} ({rest['bytes']} bytes) later; "


cdef inline tuple _next_frame(object m):
    """_next_frame"""
    p = sget(_guest(m), _Guest, _GU[G_PROC], "proc")
    return ("blkmq.submit_bio", ()) if sget(p, _Proc, _PR[P_PENDING_BIOS], "pending_bios") \
        else ("app.op", ())


cdef inline void _next(object m) except *:
    """_next"""
    _next_p(m, sget(_guest(m), _Guest, _GU[G_PROC], "proc"))


cdef inline void _next_p(object m, object p) except *:
    """_next (p is m.guest.proc)"""
    if sget(p, _Proc, _PR[P_PENDING_BIOS], "pending_bios"):
        sched_cont(_sim(m), "blkmq.submit_bio", (), None, True)
    else:
        sched_cont(_sim(m), "app.op", (), None, True)


def submit_bio(m):
    """emu.guest.process.submit_bio (blkmq.submit_bio): split, merge, else tag and plug."""
    g = _guest(m)
    q = sget(g, _Guest, _GU[G_BLKMQ], "blkmq")
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    cdef list pending = sget(p, _Proc, _PR[P_PENDING_BIOS], "pending_bios")
    cdef dict bio = pending[0]
    cdef dict rq
    cdef str how, bop
    cdef list cands, plug
    cdef long long tag
    b_bytes = bio["bytes"]
    b_sector = bio["sector"]
    if not (type(b_bytes) is int and type(b_sector) is int and 0 <= b_bytes < LIM
            and 0 <= b_sector < LIM):
        return _P.submit_bio(m)
    note = _split(m, q, bio)
    bop = bio["op"]
    rqs = sget(q, _BlkMq, _BQ[Q_RQS], "rqs")
    if _mergeable(bop):
        plug = sget(q, _BlkMq, _BQ[Q_PLUG], "plug")
        cands = [plug[len(plug) - 1]] if plug else []
        cands += sget(q, _BlkMq, _BQ[Q_DD_FIFO], "dd_fifo")[_rq_dir(bop)]
        for rid in cands:
            how = _try_merge(q, rqs[rid], bio)
            if how:
                rq = rqs[rid]
                _do_merge(rq, bio, how)
                pending.pop(0)
                _next_p(m, p)
                where = "plugged" if rq["stage"] == "plugged" else "queued"
                return note + f"bio {_dec(bio['id'])} {how}-merged into {where} request {_dec(rid)} " \
                    f"(now {_dec(rq['bytes'])} bytes)"
    tag = _get_tag(q)
    if tag < 0:
        return note + f"no free tag ({_dec(sget(q, _BlkMq, _BQ[Q_NR_REQUESTS], 'nr_requests'))} in use): " \
            + _sleep_pq(m, p, q, "tag")
    pending.pop(0)
    rid = sget(q, _BlkMq, _BQ[Q_NEXT_RQ], "next_rq")
    sset(q, _BlkMq, _BQ[Q_NEXT_RQ], "next_rq", rid + 1)
    segs = bio["segs"]
    b_sector = bio["sector"]
    b_bytes = bio["bytes"]
    rq = {"id": rid, "tag": tag, "op": bop, "sector": b_sector, "bytes": b_bytes,
          "bios": [bio], "nsegs": len(segs) or (1 if (bop == "DISCARD" or bop == "WRITE_ZEROES") else 0),
          "nomerge": not _mergeable(bop), "unmap": bio.get("unmap", False),
          "stage": "plugged", "head": None, "table": 0, "payload": 0, "status": None}
    rqs[rid] = rq
    what = f"bio {_dec(bio['id'])} -> new request {_dec(rid)} ({bop} sector {_dec(b_sector)}, {_dec(b_bytes)} bytes), tag {tag}"
    if bop == "FLUSH" or bop == "DRV_IN":
        if bop == "DRV_IN":
            sget(m, _Machine, _MA[M_MEM], "mem").write(_pdu_of(m, tag), _GET_ID_HDR)
        rq["stage"] = "queued"
        sget(q, _BlkMq, _BQ[Q_DISPATCH], "dispatch").append(rid)
        kind, args = _next_frame(m)
        sched_call(_sim(m), "blkmq.run_queue", (), kind, args)
        return note + what + ("; virtblk_get_id wrote the GET_ID header" if bop == "DRV_IN" else "") \
            + "; bypasses the plug and the scheduler (hctx->dispatch), run the queue"
    plug = sget(q, _BlkMq, _BQ[Q_PLUG], "plug")
    cdef Py_ssize_t n_before = len(plug)
    flush_first = n_before > 0 and (n_before >= BLK_MAX_REQUEST_COUNT or
                                    rqs[plug[n_before - 1]]["bytes"] >= BLK_PLUG_FLUSH_SIZE)
    plug.append(rid)
    if flush_first:
        kind, args = _next_frame(m)
        sched_call(_sim(m), "blkmq.flush_plug", (n_before,), kind, args)
        return note + what + f"; plug full: flush the {n_before} plugged request(s) first"
    _next_p(m, p)
    return f"{note}{what}; plugged ({len(plug)} in the plug)"


def resume(m):
    """emu.guest.process.resume (app.resume)"""
    p = sget(_guest(m), _Guest, _GU[G_PROC], "proc")
    reason = sget(p, _Proc, _PR[P_WAITING], "waiting").replace("woken-", "")
    sset(p, _Proc, _PR[P_WAITING], "waiting", "")
    if reason == "drain":
        sset(p, _Proc, _PR[P_PC], "pc", sget(p, _Proc, _PR[P_PC], "pc") + 1)
        sched_cont(_sim(m), "app.op", (), None, True)
        return "woken: all in-flight operations completed"
    if reason == "exit":
        sched_cont(_sim(m), "app.exit")
        return "woken: the last operation completed"
    if reason == "tag":
        sched_cont(_sim(m), "blkmq.submit_bio", (), None, True)
        return "woken: a tag is free"
    sched_cont(_sim(m), "app.op", (), None, True)
    return f"woken ({reason})"


def hrtimer_wakeup(m):
    """emu.guest.process.hrtimer_wakeup (app.hrtimer)"""
    _wake(m, "timer")
    return "the sleep's timer expired: wake the process"


def exit_(m):
    """emu.guest.process.exit_ (app.exit)"""
    g = _guest(m)
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    sset(p, _Proc, _PR[P_WAITING], "waiting", "done")
    if sget(sget(g, _Guest, _GU[G_BLKMQ], "blkmq"), _BlkMq, _BQ[Q_PLUG], "plug"):
        sched_cont(_sim(m), "blkmq.flush_plug", (-1,))
    return f"the workload process exits " \
        f"({len(sget(p, _Proc, _PR[P_RESULTS], 'results'))} operations finished)"


# == blk_mq.py steps =============================================================================

def flush_plug(m, count):
    """emu.guest.blk_mq.flush_plug (blkmq.flush_plug): plugged requests -> mq-deadline."""
    q = sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq")
    cdef list old = sget(q, _BlkMq, _BQ[Q_PLUG], "plug")
    cdef Py_ssize_t n
    if type(count) is not int:
        return _Q.flush_plug(m, count)
    if count < 0:
        n = len(old)
    elif count > len(old):
        n = len(old)
    else:
        n = count
    cdef list plug = old[:n]
    sset(q, _BlkMq, _BQ[Q_PLUG], "plug", old[n:])
    notes = [_dd_insert(m, q, rid) for rid in plug]
    sched_cont(_sim(m), "blkmq.run_queue")
    return f"{len(plug)} plugged request(s) -> mq-deadline; " + "; ".join(notes) if plug \
        else "plug empty; run the queue"


def run_queue(m):
    """emu.guest.blk_mq.run_queue (blkmq.run_queue): hctx->dispatch first, then mq-deadline."""
    q = sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq")
    if sget(q, _BlkMq, _BQ[Q_STOPPED], "stopped"):
        return "hardware queue stopped (BLK_MQ_S_STOPPED): nothing dispatched"
    if sget(q, _BlkMq, _BQ[Q_BATCH], "batch"):
        return "a dispatch is already running"
    cdef bint from_dispatch
    disp = sget(q, _BlkMq, _BQ[Q_DISPATCH], "dispatch")
    if disp:
        sset(q, _BlkMq, _BQ[Q_BATCH], "batch", disp)       # q.batch, q.dispatch = q.dispatch, []
        sset(q, _BlkMq, _BQ[Q_DISPATCH], "dispatch", [])
        sset(q, _BlkMq, _BQ[Q_BATCH_FROM], "batch_from", "dispatch")
        from_dispatch = True
    else:
        batch = sget(q, _BlkMq, _BQ[Q_BATCH], "batch")
        nr = sget(q, _BlkMq, _BQ[Q_NR_REQUESTS], "nr_requests")
        while len(batch) < nr:
            rid = _dd_dispatch(m, q)
            if rid is None:
                break
            batch.append(rid)
        sset(q, _BlkMq, _BQ[Q_BATCH_FROM], "batch_from", "sched")
        from_dispatch = False
    batch = sget(q, _BlkMq, _BQ[Q_BATCH], "batch")
    if not batch:
        return "nothing to dispatch"
    sset(q, _BlkMq, _BQ[Q_QUEUED], "queued", 0)
    sched_cont(_sim(m), "blkmq.dispatch")
    return f"{len(batch)} request(s) from {'hctx->dispatch' if from_dispatch else 'mq-deadline'}: " \
        + " ".join([_str(r) for r in batch])


def dispatch(m):
    """emu.guest.blk_mq.dispatch (blkmq.dispatch)"""
    q = sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq")
    batch = sget(q, _BlkMq, _BQ[Q_BATCH], "batch")
    rid = batch[0]
    cdef bint last = len(batch) == 1
    sget(q, _BlkMq, _BQ[Q_RQS], "rqs")[rid]["stage"] = "dispatched"
    sched_call(_sim(m), "vblkd.queue_rq", (rid, 1 if last else 0), "blkmq.dispatch_ret", (rid,))
    return f".queue_rq(request {_dec(rid)}, last={'True' if last else 'False'})"


def dispatch_ret(m, rid):
    """emu.guest.blk_mq.dispatch_ret (blkmq.dispatch_ret)"""
    q = sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq")
    ret = sget(q, _BlkMq, _BQ[Q_LAST_RET], "last_ret")
    if ret == "OK":
        batch = sget(q, _BlkMq, _BQ[Q_BATCH], "batch")
        batch.pop(0)
        sset(q, _BlkMq, _BQ[Q_QUEUED], "queued", sget(q, _BlkMq, _BQ[Q_QUEUED], "queued") + 1)
        if batch:
            sched_cont(_sim(m), "blkmq.dispatch", (), None, True)
            return f"request {_dec(rid)}: BLK_STS_OK"
        sched_cont(_sim(m), "blkmq.run_queue", (), None, True)
        return f"request {_dec(rid)}: BLK_STS_OK; batch done, look for more"
    if ret == "IOERR" or ret == "NOTSUPP":
        sget(q, _BlkMq, _BQ[Q_BATCH], "batch").pop(0)
        if sget(q, _BlkMq, _BQ[Q_BATCH], "batch"):
            sched_call(_sim(m), "blkmq.end_request", (rid, ret, 0), "blkmq.dispatch", ())
        else:
            sched_call(_sim(m), "blkmq.end_request", (rid, ret, 0), "blkmq.run_queue", ())
        return f"request {rid}: BLK_STS_{ret}: end it with an error"
    for r in sget(q, _BlkMq, _BQ[Q_BATCH], "batch"):
        sget(q, _BlkMq, _BQ[Q_RQS], "rqs")[r]["stage"] = "requeued"
    sset(q, _BlkMq, _BQ[Q_DISPATCH], "dispatch",
         sget(q, _BlkMq, _BQ[Q_BATCH], "batch") + sget(q, _BlkMq, _BQ[Q_DISPATCH], "dispatch"))
    sset(q, _BlkMq, _BQ[Q_BATCH], "batch", [])
    if ret == "RESOURCE":
        sched_at(_sim(m), 3_000_000, "blkmq.delay_run")
    if sget(q, _BlkMq, _BQ[Q_QUEUED], "queued"):
        sched_cont(_sim(m), "vblkd.commit_rqs")
    return (f"request {rid}: BLK_STS_{ret}: "
            f"{len(sget(q, _BlkMq, _BQ[Q_DISPATCH], 'dispatch'))} request(s) back on hctx->dispatch"
            + ("; commit_rqs" if sget(q, _BlkMq, _BQ[Q_QUEUED], "queued") else ""))


def delay_run(m):
    """emu.guest.blk_mq.delay_run (blkmq.delay_run)"""
    sched_post(_sim(m), "vcpu", "blkmq.run_work")
    return "BLK_MQ_RESOURCE_DELAY expired: schedule a queue run"


def run_work(m):
    """emu.guest.blk_mq.run_work (blkmq.run_work)"""
    sset(sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq"), _BlkMq, _BQ[Q_RUN_WORK_PENDING],
         "run_work_pending", False)
    sched_cont(_sim(m), "blkmq.run_queue")
    return "kblockd: run the hardware queue"


def start_request(m, rid):
    """emu.guest.blk_mq.start_request (blkmq.start_request)"""
    rq = sget(sget(_guest(m), _Guest, _GU[G_BLKMQ], "blkmq"), _BlkMq, _BQ[Q_RQS], "rqs")[rid]
    sim = _sim(m)
    rq["stage"] = "started"
    rq["start_ns"] = sim.now
    sched_cont(sim, "vblkd.add_req", (rid,))
    return f"request {_dec(rid)}: MQ_RQ_IN_FLIGHT"


def end_request(m, rid, status, from_irq):
    """emu.guest.blk_mq.end_request (blkmq.end_request): complete the bios, free the tag."""
    if type(status) is not str:
        return _Q.end_request(m, rid, status, from_irq)
    g = _guest(m)
    q = sget(g, _Guest, _GU[G_BLKMQ], "blkmq")
    p = sget(g, _Guest, _GU[G_PROC], "proc")
    cdef dict rq = sget(q, _BlkMq, _BQ[Q_RQS], "rqs")[rid]
    rq["status"] = status
    for bio in rq["bios"]:
        _bio_done(m, p, bio, status)
    _free_request_qp(m, q, p, rid)
    cdef list completed = sget(g, _Guest, _GU[G_COMPLETED], "completed")
    completed.append({"id": rid, "op": rq["op"], "sector": rq["sector"],
                      "bytes": rq["bytes"], "status": status})
    if len(completed) > 64:
        del completed[0]
    if from_irq:
        sched_cont(_sim(m), "vring.get_buf")
    return f"request {_dec(rid)} ({rq['op']} sector {_dec(rq['sector'])}, {_dec(rq['bytes'])} bytes): BLK_STS_{status}; tag {_dec(rq['tag'])} freed"


HANDLERS = {
    "app.start": (start, _P.start),
    "app.op": (op_step, _P.op_step),
    "app.resume": (resume, _P.resume),
    "app.hrtimer": (hrtimer_wakeup, _P.hrtimer_wakeup),
    "app.exit": (exit_, _P.exit_),
    "blkmq.submit_bio": (submit_bio, _P.submit_bio),
    "blkmq.flush_plug": (flush_plug, _Q.flush_plug),
    "blkmq.run_queue": (run_queue, _Q.run_queue),
    "blkmq.dispatch": (dispatch, _Q.dispatch),
    "blkmq.dispatch_ret": (dispatch_ret, _Q.dispatch_ret),
    "blkmq.delay_run": (delay_run, _Q.delay_run),
    "blkmq.run_work": (run_work, _Q.run_work),
    "blkmq.start_request": (start_request, _Q.start_request),
    "blkmq.end_request": (end_request, _Q.end_request),
}
