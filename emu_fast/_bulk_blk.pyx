# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""The bulk core's block layer (emu_fast/_bulk.pxd): BlockBackend and block/io.c (blk.*, bdrv.*),
the raw format driver (raw.co_entry), file-posix's thread-pool requests (file.*) and the qcow2
driver's steps (qcow2.co_entry, io, worker, io_done, compute).

Each handler runs one event with exactly the effect of the Python handler named in its
docstring (emu/block/backend.py, raw.py, file_posix.py, qcow2/driver.py) on the machine's own
objects (the request, aio and coroutine dicts, BlockState, the qcow2 driver and engine, the
HostFile through its own pread/pwrite/fdatasync, guest RAM through the core's ram_write), and
records nothing.  A raw image's read and write requests (m.block.reqs) and file-posix's read,
write and flush aios (m.block.aios) are C records instead while the stretch runs (_vr_*, _va_*:
born and dropped there, they never become dicts); the ones still alive become exactly the
Python engine's dicts, in its order, whenever Python code could look (the stretch's end, a
compiled or Python handler, a Python latency model, another request's or aio's dict put in).
Before begin() a handler only reads.  The paths it does not model (a byte
range beyond the device, a read-only node, an ignored discard, a probed raw image's sector 0,
a fault rule that would fire, a failed I/O, a backing or compressed read, qcow2's discard,
write-zeroes and close phases, an unusual value anywhere) do not bail: they run the
compiled engine's own handler (emu_fast/_block.pyx, _qcow2.pyx; or the Python handler where
none is compiled) with m.sim a recorder of its scheduler calls and m.cur a scratch record, and
the recorded calls are then made on the core's scheduler in order (_wrapped), so the stretch
goes on.  qcow2's read, write and flush phases in compute run _qcow2.bulk_compute (called in
C: BULK_COMPUTE_C), the compiled phases without a record (its common allocations and in-place
writes natively: _qcow2's _fast_alloc), and this module makes the scheduler calls compute
would.  counts() says how many
events of each kind ran here, and how many of them so (wrapped) or through bulk_compute (quiet).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_DelItem, PyDict_GetItemWithError
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_IsValid

cdef extern from "Python.h":
    PyObject* _PyType_Lookup(object t, object name)
    PyObject** _PyObject_GetDictPtr(object o)
    int PyDict_SetItem(object d, object k, object v) except -1
    dict _PyDict_NewPresized(Py_ssize_t minused)
    int PyList_SetSlice(object l, Py_ssize_t lo, Py_ssize_t hi, PyObject* v) except -1
    int _PyLong_Sign(object v)
    size_t _PyLong_NumBits(object v) except? <size_t>-1
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdint cimport uint64_t

# a dict's version tag (CPython < 3.12: every change of a dict gives it a new one, from one
# global counter, so an unchanged tag means the same dict with the same contents)
cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define VBB_HAVE_DICT_VERSION 1
    #define VBB_DICT_VERSION(d) ((unsigned long long)((PyDictObject*)(d))->ma_version_tag)
    #else
    #define VBB_HAVE_DICT_VERSION 0
    #define VBB_DICT_VERSION(d) 0ULL
    #endif
    """
    bint VBB_HAVE_DICT_VERSION
    unsigned long long VBB_DICT_VERSION(object d) noexcept
    dict PyDict_Copy(object d)
from libc.string cimport memcpy, memset

from emu_fast._bulk cimport (
    BAIL, NKINDS, Core, Frame, F0, F1, F2, K_bdrv_co_done, K_bdrv_co_entry, K_blk_aio_complete, K_blk_co_entry,
    K_file_aio_worker, K_file_co_entry, K_file_co_resume, K_file_flush_done, K_qcow2_co_entry,
    K_qcow2_compute, K_qcow2_io, K_qcow2_io_done, K_qcow2_worker,
    K_raw_co_entry, K_vblk_dwz_complete, K_vblk_flush_complete, K_vblk_rw_complete, arg_str, at,
    begin, block, call, cont, i64, post, ram_ok, ram_write, register_handler, register_layer,
    str_arg, unblock)
from emu_fast._slots cimport slot_offsets, sget, sset
from emu_fast._zeros cimport vb_zeros
from emu_fast._pydict311 cimport *

cdef long long _FILLED = 0       # template copies filled in place (cache_hits()["fill"])
cdef long long _AT_HITS = 0      # dict reads answered in place by _at (cache_hits()["at"])

# d[key] read in place: the value of entry j of a dict's compact table when that entry holds
# key itself (a dict holds a key once, so it is d[key]); NULL when it does not (or off 3.11,
# or a split table): the caller looks it up.  The request dicts are copies of one display
# (backend.blk_aio_submit), so their keys sit at the display's positions.
cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    typedef struct { Py_ssize_t dk_refcnt; uint8_t dk_log2_size; uint8_t dk_log2_index_bytes;
                     uint8_t dk_kind; uint32_t dk_version; Py_ssize_t dk_usable;
                     Py_ssize_t dk_nentries; char dk_indices[]; } vbb_dictkeys;
    typedef struct { PyObject *me_key; PyObject *me_value; } vbb_uentry;
    typedef struct { Py_hash_t me_hash; PyObject *me_key; PyObject *me_value; } vbb_gentry;
    static PyObject *vbb_at(PyObject *d, Py_ssize_t j, PyObject *key) {
        PyDictObject *mp = (PyDictObject *)d;
        vbb_dictkeys *dk;
        char *ent;
        if (mp->ma_values != NULL)
            return NULL;
        dk = (vbb_dictkeys *)mp->ma_keys;
        if (j < 0 || j >= dk->dk_nentries)
            return NULL;
        ent = dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes);
        if (dk->dk_kind == 1) {
            vbb_uentry *e = ((vbb_uentry *)ent) + j;
            return e->me_key == key ? e->me_value : NULL;
        }
        if (dk->dk_kind == 0) {
            vbb_gentry *e = ((vbb_gentry *)ent) + j;
            return e->me_key == key ? e->me_value : NULL;
        }
        return NULL;
    }
    #else
    static PyObject *vbb_at(PyObject *d, Py_ssize_t j, PyObject *key) { return NULL; }
    #endif
    """
    PyObject* vbb_at(object d, Py_ssize_t j, object key) noexcept


cdef int _fill(dict d, const int* idx, PyObject** keys, PyObject** vals, Py_ssize_t n) except -1:
    """d[keys[i]] = vals[i] for a copy of a template holding those keys: put in place where
    vb_fill_values (_pydict311.pxd) can, else by PyDict_SetItem (the keys are there: the order
    stays the template's)"""
    global _FILLED
    cdef Py_ssize_t i
    if vb_fill_values(d, idx, keys, vals, n) == 0:
        _FILLED += 1
        return 0
    for i in range(n):
        PyDict_SetItem(d, <object>keys[i], <object>vals[i])
    return 0


import errno as _E
from sys import intern as _intern
from weakref import ref as _weakref

from emu import machine as _machine_mod
from emu.block import backend as _BK
from emu.block import file_posix as _FP
from emu.block import raw as _RAW
from emu.block.latency import LatencyModel as _LatencyModel_cls
from emu.block.qcow2 import driver as _Q
from emu.block.qcow2 import engine as _QE_mod
from emu.machine import Machine as _Machine_cls
from emu.sim.rng import splitmix64 as _splitmix64
from emu.sim.steps import REGISTRY as _REGISTRY, Step as _Step_cls

from emu_fast import _block as _FB
from emu_fast import _qcow2 as _FQ

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef object _Machine = _Machine_cls
cdef object _BlockState = _BK.BlockState
cdef object _LatencyModel = _LatencyModel_cls
cdef object _RawFormat = _RAW.RawFormat
cdef object _Qcow2Format = _Q.Qcow2Format
cdef object _PY_RAND = _Machine_cls.rand
cdef object _PY_SPLITMIX = _splitmix64
cdef object _PY_COST = _LatencyModel_cls.cost
cdef object _PY_FAULT = _FP._fault
cdef object _PY_RAW_ENTRY_KIND = _RAW.RawFormat.entry_kind
cdef object _PY_Q_ENTRY_KIND = _Q.Qcow2Format.entry_kind
cdef object _fp_run = _FP._run
cdef dict BLK_FN = _BK.BLK_FN
cdef dict BDRV_FN = _BK.BDRV_FN
cdef dict RAW_FN = _RAW.FN
cdef dict CO_FN = _FP.CO_FN
cdef dict AIO_FN = _FP.AIO_FN
cdef object BDRV_REQ_FUA = _BK.BDRV_REQ_FUA
cdef object NOT_MAY_UNMAP = ~_BK.BDRV_REQ_MAY_UNMAP
cdef int EIO = _E.EIO
cdef object _MISSING = object()
cdef object _TWO64 = 1 << 64

# the completion callbacks a request can carry (blk_aio_submit's cb)
cdef dict _CB_KIND = {"vblk.rw_complete": K_vblk_rw_complete,
                      "vblk.flush_complete": K_vblk_flush_complete,
                      "vblk.dwz_complete": K_vblk_dwz_complete}

# members read and written at their offsets (emu_fast/_slots.pxd)
cdef Py_ssize_t _M[8]
cdef Py_ssize_t _B[15]
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("block", "fmt", "hostfile", "latency", "rng", "mem", "sim",
                                       "cur"), _M),
    "BlockState": slot_offsets(_BlockState, ("reqs", "aios", "next_aio", "length", "wce", "read_only",
                                             "discard_unmap", "no_flush", "flushed_gen", "write_gen",
                                             "probed", "active_flush", "flush_queue", "faults",
                                             "next_req"), _B),
}
cdef inline object _m_block(object m): return sget(m, _Machine, _M[0], "block")
cdef inline object _m_fmt(object m): return sget(m, _Machine, _M[1], "fmt")
cdef inline object _m_hostfile(object m): return sget(m, _Machine, _M[2], "hostfile")
cdef inline object _m_latency(object m): return sget(m, _Machine, _M[3], "latency")
cdef inline object _m_rng(object m): return sget(m, _Machine, _M[4], "rng")
cdef inline object _m_mem(object m): return sget(m, _Machine, _M[5], "mem")
cdef inline object _m_sim(object m): return sget(m, _Machine, _M[6], "sim")
cdef inline object _m_cur(object m): return sget(m, _Machine, _M[7], "cur")
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
cdef inline object _b_active_flush(object b): return sget(b, _BlockState, _B[11], "active_flush")
cdef inline object _b_flush_queue(object b): return sget(b, _BlockState, _B[12], "flush_queue")
cdef inline object _b_faults(object b): return sget(b, _BlockState, _B[13], "faults")


# == per-run state (the load hook) ==================================================================
# Whether the machine's RNG and latency model are the emulator's own (then computed in C; else
# their Python methods are called, which touch no scheduler state), and the latency constants.
cdef bint _rand_c = False
cdef bint _cost_c = False
cdef i64 _lat_read, _lat_write, _lat_flush, _lat_discard, _lat_zero, _lat_ps, _lat_jitter
cdef int _fmt_kind = 0          # the format driver's entry kind (fmt.entry_kind), 0: unknown


cdef bint _small(object o, i64* out) except -1:
    """o is an exact int in [0, 2**31)"""
    cdef int ovf = 0
    cdef i64 v
    if type(o) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(o, &ovf)
    if ovf or v < 0 or v >= (<i64>1 << 31):
        return False
    out[0] = v
    return True


cdef object _lat_seen = None     # weakref of the LatencyModel _cost_c was decided for
cdef object _fmt_seen = None     # ... and of the format driver _fmt_kind was decided for


cdef dict _MACHINE_MOD = _machine_mod.__dict__


cdef inline bint _cls_is(object cls, str name, object fn):
    """cls.<name> is fn (the class attribute lookup, through the type's method cache)"""
    return _PyType_Lookup(cls, name) == <PyObject*>fn


cdef int _load(Core* c) except -1:
    global _rand_c, _cost_c, _fmt_kind, _lat_seen, _fmt_seen
    global _lat_read, _lat_write, _lat_flush, _lat_discard, _lat_zero, _lat_ps, _lat_jitter
    m = <object>c.m
    _rand_c = (type(m) is _Machine and _cls_is(_Machine, "rand", _PY_RAND)
               and PyDict_GetItemWithError(_MACHINE_MOD, "splitmix64") == <PyObject*>_PY_SPLITMIX
               and "rand" not in m.__dict__)
    lat = _m_latency(m)
    if _lat_seen is None or _lat_seen() is not lat or not _cls_is(_LatencyModel, "cost", _PY_COST):
        _lat_seen = None
        _cost_c = (type(lat) is _LatencyModel and _cls_is(_LatencyModel, "cost", _PY_COST)
                   and _small(lat.read_ns, &_lat_read) and _small(lat.write_ns, &_lat_write)
                   and _small(lat.flush_ns, &_lat_flush) and _small(lat.discard_ns, &_lat_discard)
                   and _small(lat.zero_ns, &_lat_zero) and _small(lat.ps_per_byte, &_lat_ps)
                   and _small(lat.jitter_pct, &_lat_jitter) and _lat_jitter <= 100)
        if _cost_c:                     # (a LatencyModel is frozen: its fields stay)
            _lat_seen = _weakref(lat)
    fmt = _m_fmt(m)
    if _fmt_seen is None or _fmt_seen() is not fmt \
            or not _cls_is(_RawFormat, "entry_kind", _PY_RAW_ENTRY_KIND) \
            or not _cls_is(_Qcow2Format, "entry_kind", _PY_Q_ENTRY_KIND):
        _fmt_seen = None
        _fmt_kind = 0
        if type(fmt) is _RawFormat and _cls_is(_RawFormat, "entry_kind", _PY_RAW_ENTRY_KIND):
            _fmt_kind = K_raw_co_entry
        elif type(fmt) is _Qcow2Format and _cls_is(_Qcow2Format, "entry_kind", _PY_Q_ENTRY_KIND):
            _fmt_kind = K_qcow2_co_entry
        if _fmt_kind:
            _fmt_seen = _weakref(fmt)
    if _fmt_kind and "entry_kind" in fmt.__dict__:
        _fmt_kind = 0                   # (an instance's own entry_kind: the compiled handlers)
        _fmt_seen = None
    return 1


cdef int _store(Core* c) except -1:
    _va_flush()                         # (the aios still alive become dicts)
    _vr_flush()                         # (... and the requests)
    return 0


# == which events ran here (counts(): for the tests) ===============================================
cdef long long _COUNT[NKINDS]
cdef long long _WRAPPED[NKINDS]      # ... of them through _wrapped (the compiled handler)
cdef long long _NATIVE[NKINDS]       # ... of them through a quiet engine path (_qcow2.bulk_compute)
memset(_COUNT, 0, sizeof(_COUNT))
memset(_WRAPPED, 0, sizeof(_WRAPPED))
memset(_NATIVE, 0, sizeof(_NATIVE))


cdef inline int _begin(Core* c, int kind) except -1:
    """begin(c), counted"""
    _COUNT[kind] += 1
    return begin(c)


def counts(bint wrapped=False, bint quiet=False):
    """{kind: events of that kind this module's handlers ran} since reset_counts() (wrapped:
    those of them that ran the compiled engine's handler against a recording scheduler; quiet:
    those that ran a quiet engine path, _qcow2.bulk_compute)"""
    from emu_fast._bulk import kind_names
    names = kind_names()
    cdef long long* a = &_COUNT[0]
    if wrapped:
        a = &_WRAPPED[0]
    elif quiet:
        a = &_NATIVE[0]
    return {names[i]: a[i] for i in range(NKINDS) if a[i]}


cdef bint _STRICT = False      # wrapped handlers bail instead (see set_strict)


def set_strict(bint on):
    """While on, the events this module would run through _wrapped or _qcow2.bulk_compute (the
    compiled engine's code, which may meet an error and record an error effect the core throws
    away) are given back to the compiled loop instead, with their records: a session loop whose
    breakpoints only catch errors turns it on, so that no error effect happens unseen in the
    core (the native paths have none: they bail on errors)."""
    global _STRICT
    _STRICT = on


def cache_hits():
    """{cache: lookups it answered} since reset_counts() (tests): "req" (_req, or a request's
    record), "co" (_q_co),
    "item" (_q_item), "aio" (file.aio_worker and co_resume), "fill" (template copies filled in
    place: file.co_entry's aio, qcow2.co_entry's coroutine), "at" (dict reads done in place, _rg),
    "virtual" (aios kept as records), "materialized" (... of them that became dicts), "vreq"
    (requests kept as records), "vreq_dicts" (... of them that became dicts)"""
    return {"req": _RQ_HITS, "co": _QC_HITS, "item": _IT_HITS, "aio": _AO_HITS, "fill": _FILLED,
            "at": _AT_HITS, "virtual": _VA_MADE, "materialized": _VA_DICTS, "vreq": _VR_MADE,
            "vreq_dicts": _VR_DICTS}


def reset_counts():
    global _RQ_HITS, _QC_HITS, _IT_HITS, _AO_HITS, _FILLED, _AT_HITS, _VA_MADE, _VA_DICTS
    global _VR_MADE, _VR_DICTS
    _RQ_HITS = _QC_HITS = _IT_HITS = _AO_HITS = _FILLED = _AT_HITS = _VA_MADE = _VA_DICTS = 0
    _VR_MADE = _VR_DICTS = 0
    memset(_COUNT, 0, sizeof(_COUNT))
    memset(_WRAPPED, 0, sizeof(_WRAPPED))
    memset(_NATIVE, 0, sizeof(_NATIVE))


# == helpers ========================================================================================

cdef inline object _get(object d, object k):
    """d[k] of a dict, or _MISSING"""
    cdef PyObject* p = PyDict_GetItemWithError(d, k)
    if p == NULL:
        return _MISSING
    return <object>p


# the entries of a request dict (backend.blk_aio_submit's display), of an aio dict
# (file_posix.submit's) and of a read or write coroutine (driver.co_entry's _CO_RW) where _rg
# reads a key in place first
cdef enum:
    RQ_OP = 1
    RQ_CUR_OP = 2
    RQ_OFFSET = 3
    RQ_BYTES = 4
    RQ_QIOV = 5
    RQ_FLAGS = 6
    RQ_CB = 7
    RQ_RET = 8
    RQ_PHASE = 9
    AI_BID = 0
    AI_OP = 1
    AI_OFFSET = 2
    AI_BYTES = 3
    AI_IOV = 4
    AI_DATA = 5
    AI_RET = 6
    CO_OP = 0
    CO_PHASE = 1
    CO_RET = 4
    CO_REMAINING = 6
    CO_PIECES = 8
    CO_LINK_I = 9
    CO_WPHASE = 11


cdef str S_CUR_OP = "cur_op"
cdef str S_QIOV = "qiov"
cdef str S_FLAGS = "flags"
cdef str S_CB = "cb"
cdef str S_PHASE = "phase"
cdef str S_DATA = "data"
cdef str S_WPHASE = "wphase"
cdef str S_LINK_I = "link_i"


cdef inline object _rg(object d, Py_ssize_t j, object k):
    """d[k] of a dict (read in place when its entry j holds k: _at), or _MISSING"""
    global _AT_HITS
    cdef PyObject* p = vbb_at(d, j, k)
    if p != NULL:
        _AT_HITS += 1
        return <object>p
    p = PyDict_GetItemWithError(d, k)
    if p == NULL:
        return _MISSING
    return <object>p


# the block layer's operations: the keys of BLK_FN, BDRV_FN, raw's FN, file-posix's CO_FN and
# AIO_FN (a request's "op"/"cur_op"); any other value is not modelled here (bail)
cdef enum:
    OP_READ = 0
    OP_WRITE
    OP_FLUSH
    OP_DISCARD
    OP_WZ
cdef str S_READ = "read"
cdef str S_WRITE = "write"
cdef str S_FLUSH = "flush"
cdef str S_DISCARD = "discard"
cdef str S_WZ = "write_zeroes"
cdef set _OPS = {S_READ, S_WRITE, S_FLUSH, S_DISCARD, S_WZ}
assert set(BLK_FN) == set(BDRV_FN) == set(RAW_FN) == set(CO_FN) == set(AIO_FN) == _OPS


cdef inline int _opcode(object op) except -2:
    """OP_* of an operation name, -1 for anything else"""
    if op is S_WRITE:
        return OP_WRITE
    if op is S_READ:
        return OP_READ
    if op is S_FLUSH:
        return OP_FLUSH
    if op is S_DISCARD:
        return OP_DISCARD
    if op is S_WZ:
        return OP_WZ
    if type(op) is not str:
        return -1
    if op == S_WRITE:
        return OP_WRITE
    if op == S_READ:
        return OP_READ
    if op == S_FLUSH:
        return OP_FLUSH
    if op == S_DISCARD:
        return OP_DISCARD
    if op == S_WZ:
        return OP_WZ
    return -1


cdef inline bint _as_i64(object o, i64* out) except -1:
    """o is an exact int that fits an i64"""
    cdef int ovf = 0
    cdef i64 v
    if type(o) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(o, &ovf)
    if ovf:
        return False
    out[0] = v
    return True


# The request the last _req found: reqs[bid] is still _rq_req while reqs's version tag is
# still _rq_v (the request's own fields are read each time)
cdef i64 _rq_bid = -1
cdef object _rq_reqs = None
cdef object _rq_req = None
cdef unsigned long long _rq_v = 0
cdef long long _RQ_HITS = 0


cdef inline object _req(Core* c, object blk, i64 bid):
    """m.block.reqs[bid] (a dict), or None: bail"""
    global _rq_bid, _rq_reqs, _rq_req, _rq_v, _RQ_HITS
    reqs = _b_reqs(blk)
    if type(reqs) is not dict:
        return None
    if bid == _rq_bid and reqs is _rq_reqs and VBB_DICT_VERSION(reqs) == _rq_v:
        _RQ_HITS += 1
        return _rq_req
    r = _get(reqs, bid)
    if type(r) is not dict:
        return None
    if VBB_HAVE_DICT_VERSION:
        _rq_bid = bid
        _rq_reqs = reqs
        _rq_req = r
        _rq_v = VBB_DICT_VERSION(reqs)
    return r


cdef object _pop0(list l):
    """l.pop(0) (list_pop: the item, then del l[0])"""
    if PyList_GET_SIZE(l) == 0:
        return l.pop(0)                 # (IndexError)
    x = <object>PyList_GET_ITEM(l, 0)
    PyList_SetSlice(l, 0, 1, NULL)
    return x


cdef bint _iov_ok(Core* c, object iov, i64* total) except -1:
    """iov is a list of (gpa, len) pairs of exact ints, each inside guest RAM (mem.read and
    mem.write of each would succeed); total = their lengths' sum (emu.device.iov.iov_size)"""
    cdef i64 gpa, ln, t = 0
    if type(iov) is not list and type(iov) is not tuple:
        return False
    for e in iov:
        if (type(e) is not tuple and type(e) is not list) or len(e) != 2:
            return False
        if not _as_i64(e[0], &gpa) or not _as_i64(e[1], &ln):
            return False
        if not ram_ok(c, gpa, ln) or ln > (<i64>1 << 40):
            return False
        t += ln
    total[0] = t
    return True


# The int this module last stored in m.rng (the same object is the same value) and its value
cdef object _rng_obj = _MISSING
cdef uint64_t _rng_state = 0


cdef i64 _latency(Core* c, object m, object op, int opc, i64 nbytes) except? -1:
    """m.latency.cost(op, nbytes, m.rand()): Machine.rand and LatencyModel.cost"""
    global _rng_obj, _rng_state
    cdef uint64_t state, z
    cdef i64 base, span
    s = _m_rng(m)
    if not (_rand_c and _cost_c and 0 <= nbytes < (<i64>1 << 32) and opc >= 0):
        _va_flush()                     # (Python code: it may look at aios and reqs)
        _vr_flush()
        return _m_latency(m).cost(op, nbytes, m.rand())
    if s is _rng_obj:
        state = _rng_state
    elif type(s) is int and _PyLong_Sign(s) >= 0 and _PyLong_NumBits(s) <= 64:
        state = PyLong_AsUnsignedLongLong(s)
    else:
        _va_flush()
        _vr_flush()
        return _m_latency(m).cost(op, nbytes, m.rand())
    state = state + <uint64_t>0x9E3779B97F4A7C15
    z = state
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    z = z ^ (z >> 31)
    ns = <object>state
    sset(m, _Machine, _M[4], "rng", ns)
    _rng_obj = ns
    _rng_state = state
    if opc == OP_READ:
        base = _lat_read + nbytes * _lat_ps // 1000
    elif opc == OP_WRITE:
        base = _lat_write + nbytes * _lat_ps // 1000
    elif opc == OP_FLUSH:
        base = _lat_flush
    elif opc == OP_DISCARD:
        base = _lat_discard
    else:
        base = _lat_zero
    if _lat_jitter:
        span = base * _lat_jitter // 100
        if span:
            base += <i64>(z % <uint64_t>(2 * span + 1)) - span
    return base if base > 1 else 1


# == the device's read and write requests as C records =============================================
# While the stretch runs, a read or write request the device submits (_bulk_dev's
# blk_aio_submit, raw images only) lives here instead of in m.block.reqs (_vr_reqs): the native
# handlers below read and update the record (blk.co_entry .. blk.aio_complete, which drops
# it).  The ones still alive become backend.blk_aio_submit's dicts, in m.block.reqs in bid
# order -- the order they were submitted -- whenever anything else could look at reqs: before
# a real request is put there (_bulk_dev calls _vr_flush), before a compiled or Python handler
# runs (_wrapped), when a handler meets a path it runs on the dict (FUA, a probed sector 0,
# ...), and when the stretch ends (_store).  So every record is newer than every dict in reqs.
cdef struct VR:
    i64 bid             # -1: a free slot
    int opc             # OP_READ or OP_WRITE
    i64 off
    i64 n               # "bytes"
    i64 rid             # cb = ("vblk.rw_complete", (rid,))
    PyObject* op        # owned: "op" and "cur_op"
    PyObject* ooff      # owned: "offset"
    PyObject* qiov      # owned: "qiov"
    PyObject* ret       # owned: "ret" (NULL: None)
cdef enum:
    VR_N = 64
cdef VR _vr[VR_N]
cdef int _vr_n = 0
cdef object _vr_reqs = None      # the reqs dict the records belong to
cdef long long _VR_MADE = 0      # (cache_hits()["vreq"])
cdef long long _VR_DICTS = 0     # (cache_hits()["vreq_dicts"])
for _i in range(VR_N):
    _vr[_i].bid = -1
# backend.blk_aio_submit's display, its own values None (a str-keys table, as _bulk_dev's)
cdef dict _BREQ = {}
for _k, _v in (("id", None), ("op", None), ("cur_op", None), ("offset", None), ("bytes", None),
               ("qiov", None), ("flags", None), ("cb", None), ("ret", None), ("phase", "submit")):
    _BREQ[_k] = _v
cdef PyObject* _BREQ_KEYS[9]
for _i, _k in enumerate(_BREQ):
    if _i < 9:
        _BREQ_KEYS[_i] = <PyObject*>_k


cdef inline VR* _vr_get(object blk, i64 bid) noexcept:
    """the record of m.block.reqs[bid], or NULL (a record found counts as a "req" hit)"""
    global _RQ_HITS
    cdef VR* v
    if _vr_n == 0 or bid < 0:
        return NULL
    v = &_vr[bid & (VR_N - 1)]
    if v.bid != bid or _b_reqs(blk) is not _vr_reqs:
        return NULL
    _RQ_HITS += 1
    return v


cdef inline void _vr_free(VR* v) noexcept:
    global _vr_n
    v.bid = -1
    Py_XDECREF(v.op)
    Py_XDECREF(v.ooff)
    Py_XDECREF(v.qiov)
    Py_XDECREF(v.ret)
    v.op = v.ooff = v.qiov = v.ret = NULL
    _vr_n -= 1


cdef int _vr_flush() except -1:
    """The records still alive become reqs's dicts, oldest first (blk_aio_submit's display)."""
    global _vr_reqs, _VR_DICTS
    cdef int i, j, k, m = 0
    cdef int order[VR_N]
    cdef PyObject* fv[9]
    cdef VR* v
    cdef object o_bid, o_n, o_flags, cb
    if _vr_n == 0:
        return 0
    for i in range(VR_N):
        if _vr[i].bid >= 0:
            j = m
            while j > 0 and _vr[order[j - 1]].bid > _vr[i].bid:
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
            m += 1
    reqs = _vr_reqs
    o_flags = 0
    for k in range(m):
        v = &_vr[order[k]]
        o_bid = v.bid
        o_n = v.n
        cb = (S_RW_COMPLETE, (v.rid,))
        d = PyDict_Copy(_BREQ)
        fv[0] = <PyObject*>o_bid
        fv[1] = v.op
        fv[2] = v.op
        fv[3] = v.ooff
        fv[4] = <PyObject*>o_n
        fv[5] = v.qiov
        fv[6] = <PyObject*>o_flags
        fv[7] = <PyObject*>cb
        fv[8] = v.ret if v.ret != NULL else <PyObject*>None
        _fill(d, NULL, _BREQ_KEYS, fv, 9)
        PyDict_SetItem(reqs, o_bid, d)
        _VR_DICTS += 1
        _vr_free(v)
    _vr_reqs = None
    return 0


cdef int _vr_make(Core* c, object blk, i64 bid, object op, object offset, object qiov, i64 nbytes,
                  i64 rid) except -1:
    """_bulk_dev's blk_aio_submit of a read or write (flags 0, cb ("vblk.rw_complete", (rid,)),
    qiov's size nbytes): 1 when kept as a record; 0: the caller puts the dict in reqs (the
    records went there first)"""
    global _vr_n, _vr_reqs, _VR_MADE
    cdef VR* v
    cdef int opc
    cdef i64 off
    if _fmt_kind != K_raw_co_entry:
        return 0                        # (the caller's dict goes in after _vr_flush)
    reqs = _b_reqs(blk)
    opc = OP_WRITE if op is S_WRITE else OP_READ if op is S_READ else -1
    if _fmt_kind != K_raw_co_entry or opc < 0 or type(reqs) is not dict or bid < 0 \
            or not _as_i64(offset, &off) or (_vr_n and reqs is not _vr_reqs) \
            or (len(<dict>reqs) and PyDict_GetItemWithError(reqs, bid) != NULL):
        _vr_flush()
        return 0
    v = &_vr[bid & (VR_N - 1)]
    if v.bid >= 0:
        _vr_flush()
    _vr_reqs = reqs
    v.bid = bid
    v.opc = opc
    v.off = off
    v.n = nbytes
    v.rid = rid
    Py_INCREF(op)
    v.op = <PyObject*>op
    Py_INCREF(offset)
    v.ooff = <PyObject*>offset
    Py_INCREF(qiov)
    v.qiov = <PyObject*>qiov
    v.ret = NULL
    _vr_n += 1
    _VR_MADE += 1
    return 1


ctypedef int (*vr_make_t)(Core* c, object blk, i64 bid, object op, object offset, object qiov,
                          i64 nbytes, i64 rid) except -1
ctypedef int (*vr_flush_t)() except -1
# (for _bulk_dev: the two functions above, by pointer)
VR_MAKE = PyCapsule_New(<void*>_vr_make, "emu_fast._bulk_blk.vr_make", NULL)
VR_FLUSH = PyCapsule_New(<void*>_vr_flush, "emu_fast._bulk_blk.vr_flush", NULL)


# == BlockBackend and block/io.c ====================================================================

cdef int h_blk_co_entry(Core* c, Frame* f) except -1:
    """backend.co_entry: blk_co_do_preadv_part/pwritev_part/flush/... (block/block-backend.c)"""
    cdef int opc
    cdef i64 bid = f.a[0], off, n, length
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:
        if (vr.opc != OP_WRITE or _b_wce(blk)) and _as_i64(_b_length(blk), &length) \
                and vr.off >= 0 and vr.n >= 0 and vr.off <= length and vr.n <= length - vr.off:
            _begin(c, K_blk_co_entry)
            cont(c, F1(K_bdrv_co_entry, bid), -1)
            return 0
        _vr_flush()                     # (FUA, or out of range: on the dict)
    req = _req(c, blk, bid)
    if req is None:
        return _other(c, f, K_blk_co_entry)
    op = _rg(req, RQ_OP, S_OP)
    opc = _opcode(op)
    if opc < 0:
        return _other(c, f, K_blk_co_entry)
    o_off = _rg(req, RQ_OFFSET, S_OFFSET)
    o_n = _rg(req, RQ_BYTES, S_BYTES)
    if not _as_i64(o_off, &off) or not _as_i64(o_n, &n):
        return _other(c, f, K_blk_co_entry)                     # (the detail formats both)
    if opc != OP_FLUSH:
        if not _as_i64(_b_length(blk), &length):
            return _other(c, f, K_blk_co_entry)
        if off < 0 or n < 0 or off > length or n > length - off:
            return _other(c, f, K_blk_co_entry)                 # _complete_early(-EIO)
    fua = False
    if opc == OP_WRITE and not _b_wce(blk):
        flags = _rg(req, RQ_FLAGS, S_FLAGS)
        if flags is _MISSING or type(flags) is not int:
            return _other(c, f, K_blk_co_entry)
        fua = True
    _begin(c, K_blk_co_entry)
    if fua:
        req["flags"] = flags | BDRV_REQ_FUA
    cont(c, F1(K_bdrv_co_entry, bid), -1)
    return 0


cdef int h_bdrv_co_entry(Core* c, Frame* f) except -1:
    """backend.bdrv_co_entry: bdrv_co_preadv_part/pwritev_part/... (block/io.c)"""
    cdef int opc
    cdef i64 bid = f.a[0]
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:
        if _fmt_kind != 0 and not (vr.opc == OP_WRITE and _b_read_only(blk)):
            _begin(c, K_bdrv_co_entry)
            cont(c, F1(_fmt_kind, bid), -1)
            return 0
        _vr_flush()
    req = _req(c, blk, bid)
    if req is None or _fmt_kind == 0:
        return _other(c, f, K_bdrv_co_entry)
    op = _rg(req, RQ_OP, S_OP)
    opc = _opcode(op)
    if opc < 0:
        return _other(c, f, K_bdrv_co_entry)
    if (opc == OP_WRITE or opc == OP_WZ or opc == OP_DISCARD) and _b_read_only(blk):
        return _other(c, f, K_bdrv_co_entry)                     # -EPERM
    unmap = True
    if opc == OP_DISCARD or opc == OP_WZ:
        unmap = bool(_b_discard_unmap(blk))
    if opc == OP_DISCARD and not unmap:
        return _other(c, f, K_bdrv_co_entry)                     # discard=ignore: completes early
    clear = opc == OP_WZ and not unmap
    if clear:
        flags = _rg(req, RQ_FLAGS, S_FLAGS)
        if flags is _MISSING or type(flags) is not int:
            return _other(c, f, K_bdrv_co_entry)
    _begin(c, K_bdrv_co_entry)
    if clear:
        req["flags"] = flags & NOT_MAY_UNMAP
    cont(c, F1(_fmt_kind, bid), -1)
    return 0


cdef i64 _FUA = BDRV_REQ_FUA if 0 < BDRV_REQ_FUA < (1 << 62) else 0
cdef bint _fua_small = _FUA != 0       # (flags & FUA in C when flags fits an i64: the same bit)


cdef int h_bdrv_co_done(Core* c, Frame* f) except -1:
    """backend.bdrv_co_done: back in bdrv_co_pwritev_part (block/io.c), FUA emulated by a flush"""
    cdef int opc
    cdef i64 bid = f.a[0], fl
    cdef bint has_fua
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:                      # (flags 0: no FUA)
        if vr.ret == NULL or type(<object>vr.ret) is int:
            _begin(c, K_bdrv_co_done)
            cont(c, F1(K_blk_aio_complete, bid), -1)
            return 0
        _vr_flush()
    req = _req(c, blk, bid)
    if req is None:
        return _other(c, f, K_bdrv_co_done)
    op = _rg(req, RQ_OP, S_OP)
    ret = _rg(req, RQ_RET, S_RET)
    opc = _opcode(op)
    if opc < 0 or (ret is not None and type(ret) is not int):
        return _other(c, f, K_bdrv_co_done)
    fua = False
    if opc == OP_WRITE:
        flags = _rg(req, RQ_FLAGS, S_FLAGS)
        if type(flags) is not int:
            return _other(c, f, K_bdrv_co_done)
        if _fua_small and _as_i64(flags, &fl):
            has_fua = (fl & _FUA) != 0
        else:
            has_fua = bool(flags & BDRV_REQ_FUA)
        if has_fua and ret == 0:
            phase = _rg(req, RQ_PHASE, S_PHASE)
            if phase is _MISSING:
                return _other(c, f, K_bdrv_co_done)
            if phase != "fua":
                if _fmt_kind == 0:
                    return _other(c, f, K_bdrv_co_done)
                fua = True
    _begin(c, K_bdrv_co_done)
    if fua:
        req["phase"] = "fua"
        req["cur_op"] = "flush"
        cont(c, F1(_fmt_kind, bid), -1)
        return 0
    cont(c, F1(K_blk_aio_complete, bid), -1)
    return 0


cdef str S_RW_COMPLETE = _intern("vblk.rw_complete")     # (as _bulk_dev makes them)
cdef str S_FLUSH_COMPLETE = _intern("vblk.flush_complete")


cdef int h_blk_aio_complete(Core* c, Frame* f) except -1:
    """backend.aio_complete: blk_aio_complete (block/block-backend.c) runs the device's callback"""
    cdef i64 bid = f.a[0], a0 = 0, a1 = 0, r
    cdef int ik
    cdef Frame nf
    cdef Py_ssize_t na
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:
        if vr.ret != NULL and _as_i64(<object>vr.ret, &r):
            _begin(c, K_blk_aio_complete)
            a0 = vr.rid
            _vr_free(vr)                # (del reqs[bid])
            cont(c, F2(K_vblk_rw_complete, a0, r), -1)
            return 0
        _vr_flush()
    req = _req(c, blk, bid)
    if req is None:
        return _other(c, f, K_blk_aio_complete)
    cb = _rg(req, RQ_CB, S_CB)
    ret = _rg(req, RQ_RET, S_RET)
    if (type(cb) is not tuple and type(cb) is not list) or len(cb) != 2 \
            or _rg(req, RQ_OP, S_OP) is _MISSING or not _as_i64(ret, &r):
        return _other(c, f, K_blk_aio_complete)
    kind = cb[0]
    args = cb[1]
    if type(kind) is not str or (type(args) is not tuple and type(args) is not list):
        return _other(c, f, K_blk_aio_complete)
    if kind is S_RW_COMPLETE:           # (the device's literals: mostly found by identity)
        ik = K_vblk_rw_complete
    elif kind is S_FLUSH_COMPLETE:
        ik = K_vblk_flush_complete
    else:
        k = _get(_CB_KIND, kind)
        ik = -1 if k is _MISSING else <int>k
    na = len(args)
    if ik < 0 or na > 2:
        return _other(c, f, K_blk_aio_complete)
    if na >= 1 and not _as_i64(args[0], &a0):
        return _other(c, f, K_blk_aio_complete)
    if na >= 2 and not _as_i64(args[1], &a1):
        return _other(c, f, K_blk_aio_complete)
    _begin(c, K_blk_aio_complete)
    PyDict_DelItem(_b_reqs(blk), bid)
    nf = F0(ik)
    nf.n = <int>na + 1
    nf.a[0] = a0
    nf.a[1] = a1
    nf.a[na] = r
    cont(c, nf, -1)
    return 0


# == raw-format =====================================================================================

cdef int h_raw_co_entry(Core* c, Frame* f) except -1:
    """raw.co_entry: raw_co_preadv/pwritev/... (block/raw-format.c), straight to the file"""
    cdef int opc
    cdef i64 bid = f.a[0]
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:
        if not (vr.opc == OP_WRITE and _b_probed(blk) and vr.off < 512):
            _begin(c, K_raw_co_entry)
            cont(c, F1(K_file_co_entry, bid), -1)
            return 0
        _vr_flush()
    req = _req(c, blk, bid)
    if req is None:
        return _other(c, f, K_raw_co_entry)
    op = _rg(req, RQ_CUR_OP, S_CUR_OP)
    opc = _opcode(op)
    if opc < 0:
        return _other(c, f, K_raw_co_entry)
    if opc == OP_WRITE and _b_probed(blk):
        off = _rg(req, RQ_OFFSET, S_OFFSET)
        if type(off) is not int or off < 512:
            return _other(c, f, K_raw_co_entry)                 # a probed image's sector 0: the compiled engine decides
    _begin(c, K_raw_co_entry)
    cont(c, F1(K_file_co_entry, bid), -1)
    return 0


# == file-posix ====================================================================================

# The aio dicts file.co_entry made (AO_N slots, aid & AO_N-1): while m.block.aios is the dict
# _ao_aios at version _ao_aiosv (every change this module's handlers make to it moves
# _ao_aiosv along; any other change leaves it behind, and the next change made here clears
# the slots), aios[aid] is still the slot's aio, and while the aio's own version tag is the
# slot's, its fields are still the slot's values ("ret": _ao_ret, as the worker stored it)
cdef enum:
    AO_N = 16
cdef i64 _ao_aid[AO_N]
cdef i64 _ao_bid[AO_N]
cdef i64 _ao_off[AO_N]
cdef i64 _ao_n[AO_N]
cdef int _ao_opc[AO_N]
cdef unsigned long long _ao_v[AO_N]
cdef list _ao_aio = [None] * AO_N
cdef list _ao_op = [None] * AO_N
cdef list _ao_ooff = [None] * AO_N
cdef list _ao_on = [None] * AO_N
cdef list _ao_iov = [None] * AO_N
cdef list _ao_ret = [None] * AO_N
cdef object _ao_aios = None
cdef unsigned long long _ao_aiosv = 0
cdef long long _AO_HITS = 0
for _i in range(AO_N):
    _ao_aid[_i] = -1


cdef inline bint _ao_known(object aios) noexcept:
    """aios has not changed since this module's handlers last changed it"""
    return aios is _ao_aios and VBB_DICT_VERSION(aios) == _ao_aiosv


cdef int _ao_changed(object aios, bint known) except -1:
    """a handler here just changed aios (known: _ao_known(aios) just before)"""
    global _ao_aios, _ao_aiosv
    cdef int i
    if not known:
        for i in range(AO_N):
            _ao_aid[i] = -1
        _ao_aios = aios
    _ao_aiosv = VBB_DICT_VERSION(aios)
    if not VBB_HAVE_DICT_VERSION:
        _ao_aios = None
    return 0


cdef inline int _ao_slot(object aios, i64 aid) noexcept:
    """the slot of aios[aid], valid and unchanged, or -1"""
    cdef int s = <int>(aid & (AO_N - 1))
    if _ao_aid[s] == aid and aid >= 0 and _ao_known(aios) \
            and VBB_DICT_VERSION(<object>PyList_GET_ITEM(_ao_aio, s)) == _ao_v[s]:
        return s
    return -1



# The aio dicts file.co_entry would make for reads, writes and flushes live here instead, as C
# records (VA_N slots, aid & VA_N-1), while the stretch runs: file.aio_worker reads its record
# and keeps its ret there, file.co_resume drops it.  The ones still alive become the dicts
# file_posix.submit makes, and go into aios (_va_aios) in aid order -- the order they were
# made -- whenever anything else could look at aios: before a real aio is put there, before a
# compiled or Python handler runs (_wrapped), and when the stretch ends (_store).  So every aio
# in the table is newer than every aio in the dict, and the dict ends up as the Python engine's.
cdef struct VA:
    i64 aid             # -1: a free slot
    i64 bid
    i64 off
    i64 n
    int opc             # OP_READ, OP_WRITE or OP_FLUSH
    PyObject* op        # the aio's values (owned references)
    PyObject* ooff
    PyObject* on
    PyObject* iov
    PyObject* ret       # NULL: None (the worker has not run)
cdef enum:
    VA_N = 64
cdef VA _va[VA_N]
cdef int _va_n = 0               # records in use
cdef object _va_aios = None      # the aios dict they belong to
cdef long long _VA_MADE = 0      # records made (cache_hits()["virtual"])
cdef long long _VA_DICTS = 0     # ... of them that became dicts (cache_hits()["materialized"])
for _i in range(VA_N):
    _va[_i].aid = -1


cdef inline VA* _va_find(object aios, i64 aid) noexcept:
    """the record of aios[aid], or NULL"""
    cdef VA* v
    if _va_n == 0 or aios is not _va_aios or aid < 0:
        return NULL
    v = &_va[aid & (VA_N - 1)]
    return v if v.aid == aid else NULL


cdef inline void _va_free(VA* v) noexcept:
    global _va_n
    v.aid = -1
    Py_XDECREF(v.op)
    Py_XDECREF(v.ooff)
    Py_XDECREF(v.on)
    Py_XDECREF(v.iov)
    Py_XDECREF(v.ret)
    v.op = v.ooff = v.on = v.iov = v.ret = NULL
    _va_n -= 1


cdef int _va_flush() except -1:
    """The records still alive become aios's dicts, oldest first (file_posix.submit's display,
    and the "ret" the worker stored)."""
    global _va_n, _va_aios, _VA_DICTS, _AO_HITS
    cdef int i, j, k, m = 0
    cdef int order[VA_N]
    cdef PyObject* fv[5]
    cdef VA* v
    cdef object o_bid, o_aid
    if _va_n == 0:
        return 0
    for i in range(VA_N):
        if _va[i].aid >= 0:
            j = m
            while j > 0 and _va[order[j - 1]].aid > _va[i].aid:
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
            m += 1
    aios = _va_aios
    for k in range(m):
        v = &_va[order[k]]
        o_bid = v.bid
        o_aid = v.aid
        aio = PyDict_Copy(_AIO)
        fv[0] = <PyObject*>o_bid
        fv[1] = v.op
        fv[2] = v.ooff
        fv[3] = v.on
        fv[4] = v.iov
        _fill(aio, _AIO_IDX, _AIO_KEYS, fv, 5)
        if v.ret != NULL:
            PyDict_SetItem(aio, S_RET, <object>v.ret)
        PyDict_SetItem(aios, o_aid, aio)
        _VA_DICTS += 1
        _va_free(v)
    _va_aios = None
    return 0


cdef bint _va_put(object aios, i64 aid, i64 bid, i64 off, i64 nb, int opc, object op,
                  object offset, object o_nb, object iov) except -1:
    """keep a new aio as a record (False: it must be a dict: the records went there first)"""
    global _va_n, _va_aios, _VA_MADE
    cdef VA* v
    if aid < 0 or (_va_n and aios is not _va_aios) \
            or (len(<dict>aios) and PyDict_GetItemWithError(aios, aid) != NULL):
        _va_flush()
        return False
    v = &_va[aid & (VA_N - 1)]
    if v.aid >= 0:
        _va_flush()
    _va_aios = aios
    v.aid = aid
    v.bid = bid
    v.off = off
    v.n = nb
    v.opc = opc
    Py_INCREF(op)
    v.op = <PyObject*>op
    Py_INCREF(offset)
    v.ooff = <PyObject*>offset
    Py_INCREF(o_nb)
    v.on = <PyObject*>o_nb
    Py_INCREF(iov)
    v.iov = <PyObject*>iov
    v.ret = NULL
    _va_n += 1
    _VA_MADE += 1
    return True


cdef int h_file_co_entry(Core* c, Frame* f) except -1:
    """file_posix.co_entry: raw_co_prw/raw_co_flush_to_disk (block/file-posix.c) -> thread pool"""
    cdef int opc
    cdef i64 bid = f.a[0], nb, aid, off
    cdef int sl
    cdef PyObject* fv[5]
    cdef object o_bid, o_nb
    cdef VR* vr
    m = <object>c.m
    blk = _m_block(m)
    vr = _vr_get(blk, bid)
    if vr != NULL:                      # (a read or a write)
        req = None
        op = <object>vr.op
        opc = vr.opc
    else:
        req = _req(c, blk, bid)
        if req is None:
            return _other(c, f, K_file_co_entry)
        op = _rg(req, RQ_CUR_OP, S_CUR_OP)
        opc = _opcode(op)
        if opc < 0:
            return _other(c, f, K_file_co_entry)
    is_flush = opc == OP_FLUSH
    skip = False
    if is_flush:
        active = _b_active_flush(blk)
        if not (active is None or active == bid):
            fq = _b_flush_queue(blk)
            if type(fq) is not list:
                return _other(c, f, K_file_co_entry)
            _begin(c, K_file_co_entry)
            (<list>fq).append(bid)      # _flush_acquire: wait (the task returns)
            return 0
        skip = bool(_b_no_flush(blk)) or _b_flushed_gen(blk) == _b_write_gen(blk)
        if skip:
            _begin(c, K_file_co_entry)
            sset(blk, _BlockState, _B[11], "active_flush", bid)
            req["ret"] = 0
            cont(c, F1(K_file_flush_done, bid), -1)
            return 0
    # submit(): the checks first
    offset = <object>vr.ooff if vr != NULL else _rg(req, RQ_OFFSET, S_OFFSET)
    if type(offset) is not int:
        return _other(c, f, K_file_co_entry)                     # (the detail formats it)
    if opc == OP_READ or opc == OP_WRITE:
        iov = <object>vr.qiov if vr != NULL else _rg(req, RQ_QIOV, S_QIOV)
        if not _iov_ok(c, iov, &nb):
            return _other(c, f, K_file_co_entry)
        o_nb = nb
    else:
        iov = None
        o_nb = _rg(req, RQ_BYTES, S_BYTES)
        if not _as_i64(o_nb, &nb):
            return _other(c, f, K_file_co_entry)
    aios = _b_aios(blk)
    o_aid = _b_next_aio(blk)
    if type(aios) is not dict or not _as_i64(o_aid, &aid) or aid >= (<i64>1 << 62):
        return _other(c, f, K_file_co_entry)
    _begin(c, K_file_co_entry)
    if is_flush:
        sset(blk, _BlockState, _B[11], "active_flush", bid)
        req["flush_gen"] = _b_write_gen(blk)
    sset(blk, _BlockState, _B[2], "next_aio", aid + 1)
    if opc <= OP_FLUSH and _as_i64(offset, &off) \
            and _va_put(aios, aid, bid, off, nb, opc, op, offset, o_nb, iov):
        at(c, _latency(c, m, op, opc, nb), F1(K_file_aio_worker, aid))
        return 0
    _va_flush()                         # (the records first: they are older)
    aio = PyDict_Copy(_AIO)            # (the dict display, in its order: _AIO's keys)
    o_bid = bid
    fv[0] = <PyObject*>o_bid
    fv[1] = <PyObject*>op
    fv[2] = <PyObject*>offset
    fv[3] = <PyObject*>o_nb
    fv[4] = <PyObject*>iov
    _fill(aio, _AIO_IDX, _AIO_KEYS, fv, 5)
    known = _ao_known(aios)
    PyDict_SetItem(aios, o_aid, aio)
    _ao_changed(aios, known)
    if VBB_HAVE_DICT_VERSION and _as_i64(offset, &off) and aid >= 0:
        sl = <int>(aid & (AO_N - 1))
        _ao_aid[sl] = aid
        _ao_bid[sl] = bid
        _ao_off[sl] = off
        _ao_n[sl] = nb
        _ao_opc[sl] = opc
        _ao_v[sl] = VBB_DICT_VERSION(aio)
        _ao_aio[sl] = aio
        _ao_op[sl] = op
        _ao_ooff[sl] = offset
        _ao_on[sl] = o_nb
        _ao_iov[sl] = iov
        _ao_ret[sl] = None
    at(c, _latency(c, m, op, opc, nb), F1(K_file_aio_worker, aid))
    return 0


cdef str S_BID = "bid"
cdef str S_OFFSET = "offset"
cdef str S_BYTES = "bytes"
cdef str S_IOV = "iov"
cdef str S_RET = "ret"
# an aio dict as file_posix.submit makes it, its own values None (copied: see _CO_RW)
cdef dict _AIO = _PyDict_NewPresized(7)
for _k in ("bid", "op", "offset", "bytes", "iov", "data", "ret"):
    _AIO[_k] = None
cdef int _AIO_IDX[5]
cdef PyObject* _AIO_KEYS[5]
for _i, _k in enumerate(_AIO):
    if _i < 5:                          # bid, op, offset, bytes, iov (_AIO keeps the keys alive)
        _AIO_IDX[_i] = _i
        _AIO_KEYS[_i] = <PyObject*>_k


cdef bint _fault_fires(object m, object blk, object op, object off, object n) except -1:
    """Whether file_posix._fault(m, op, off, n) would return an error (it changes nothing
    when it does not)"""
    faults = _b_faults(blk)
    if type(faults) is not list:
        return True
    if not faults:
        return False
    if _FP._fault is not _PY_FAULT:
        return True
    try:
        for rule in faults:
            if type(rule) is not dict:
                return True
            if rule["op"] != op or rule["count"] == 0:
                continue
            if op != "flush" and not (off < rule["end"] and rule["start"] < off + n):
                continue
            return True
    except Exception:
        return True                     # (the compiled engine raises it)
    return False


cdef int h_file_aio_worker(Core* c, Frame* f) except -1:
    """file_posix.aio_worker: handle_aiocb_rw/flush/... (block/file-posix.c), the syscall"""
    cdef int opc
    cdef i64 aid = f.a[0], off, n, nb, gpa, ln, pos, l, have
    cdef const char* src
    cdef char* dst
    cdef int sl
    cdef VA* v
    global _AO_HITS
    m = <object>c.m
    blk = _m_block(m)
    aios = _b_aios(blk)
    if type(aios) is not dict:
        return _other(c, f, K_file_aio_worker)
    v = _va_find(aios, aid)
    sl = _ao_slot(aios, aid) if v == NULL else -1
    if v != NULL:                       # (a record: its "data" is None)
        _AO_HITS += 1
        aio = None
        op = <object>v.op
        o_off = <object>v.ooff
        o_n = <object>v.on
        iov = <object>v.iov
        opc = v.opc
        off = v.off
        n = v.n
        data = None
    elif sl >= 0:                       # (the aio co_entry made: its "data" is None)
        _AO_HITS += 1
        aio = <object>PyList_GET_ITEM(_ao_aio, sl)
        op = <object>PyList_GET_ITEM(_ao_op, sl)
        o_off = <object>PyList_GET_ITEM(_ao_ooff, sl)
        o_n = <object>PyList_GET_ITEM(_ao_on, sl)
        iov = <object>PyList_GET_ITEM(_ao_iov, sl)
        opc = _ao_opc[sl]
        off = _ao_off[sl]
        n = _ao_n[sl]
        data = None
    else:
        aio = _get(aios, aid)
        if type(aio) is not dict:
            return _other(c, f, K_file_aio_worker)
        op = _rg(aio, AI_OP, S_OP)
        o_off = _rg(aio, AI_OFFSET, S_OFFSET)
        o_n = _rg(aio, AI_BYTES, S_BYTES)
        opc = _opcode(op)
        if opc < 0 or not _as_i64(o_off, &off) or not _as_i64(o_n, &n):
            return _other(c, f, K_file_aio_worker)
        iov = _rg(aio, AI_IOV, S_IOV)
        data = None
        if opc == OP_WRITE:
            data = _rg(aio, AI_DATA, S_DATA)
    if off < 0 or n < 0:
        return _other(c, f, K_file_aio_worker)
    if c.qemu < 0 or _fault_fires(m, blk, op, o_off, o_n):
        return _other(c, f, K_file_aio_worker)
    hf = _m_hostfile(m)
    if opc == OP_READ:
        if not _iov_ok(c, iov, &nb):
            return _other(c, f, K_file_aio_worker)
    elif opc == OP_WRITE:
        if data is _MISSING:
            return _other(c, f, K_file_aio_worker)
        if data is None and not _iov_ok(c, iov, &nb):
            return _other(c, f, K_file_aio_worker)
    _begin(c, K_file_aio_worker)
    ret = 0
    try:
        if opc == OP_READ:
            _scatter(c, m, hf.pread(o_off, o_n), iov)
        elif opc == OP_WRITE:
            if data is None:
                data = PyBytes_FromStringAndSize(NULL, nb)
                dst = PyBytes_AS_STRING(data)
                pos = 0
                for e in iov:
                    gpa = e[0]
                    ln = e[1]
                    memcpy(dst + pos, c.ram + gpa, <size_t>ln)
                    pos += ln
            hf.pwrite(o_off, data)
        elif opc == OP_FLUSH:
            hf.fdatasync()
        else:
            _fp_run(m, hf, aio)
    except OSError as e:
        ret = -(e.errno or EIO)
    if v != NULL:
        Py_INCREF(ret)
        Py_XDECREF(v.ret)
        v.ret = <PyObject*>ret
        post(c, c.qemu, F1(K_file_co_resume, aid), 0, False)
        return 0
    sl = _ao_slot(aios, aid)
    PyDict_SetItem(aio, S_RET, ret)
    if sl >= 0 and PyList_GET_ITEM(_ao_aio, sl) == <PyObject*>aio:
        _ao_v[sl] = VBB_DICT_VERSION(aio)
        _ao_ret[sl] = ret
    post(c, c.qemu, F1(K_file_co_resume, aid), 0, False)
    return 0


cdef int h_file_co_resume(Core* c, Frame* f) except -1:
    """file_posix.co_resume: the thread-pool completion re-enters raw_co_prw (block/file-posix.c)"""
    cdef int opc, sl
    cdef i64 aid = f.a[0], bid
    cdef VA* v
    cdef VR* vr
    global _AO_HITS
    m = <object>c.m
    blk = _m_block(m)
    aios = _b_aios(blk)
    if type(aios) is not dict:
        return _other(c, f, K_file_co_resume)
    v = _va_find(aios, aid)
    sl = _ao_slot(aios, aid) if v == NULL else -1
    if v != NULL:
        _AO_HITS += 1
        bid = v.bid
        opc = v.opc
        ret = None if v.ret == NULL else <object>v.ret
    elif sl >= 0:
        _AO_HITS += 1
        bid = _ao_bid[sl]
        opc = _ao_opc[sl]
        ret = <object>PyList_GET_ITEM(_ao_ret, sl)
    else:
        aio = _get(aios, aid)
        if type(aio) is not dict:
            return _other(c, f, K_file_co_resume)
        o_bid = _rg(aio, AI_BID, S_BID)
        aop = _rg(aio, AI_OP, S_OP)
        ret = _rg(aio, AI_RET, S_RET)
        opc = _opcode(aop)
        if not _as_i64(o_bid, &bid) or opc < 0:
            return _other(c, f, K_file_co_resume)
    if ret is not None and type(ret) is not int:
        return _other(c, f, K_file_co_resume)
    vr = _vr_get(blk, bid)
    if vr != NULL:                      # (a read or a write)
        req = None
    else:
        req = _req(c, blk, bid)
        if req is None:
            return _other(c, f, K_file_co_resume)
        if opc == OP_FLUSH and ret == 0 and PyDict_GetItemWithError(req, "flush_gen") == NULL:
            return _other(c, f, K_file_co_resume)
    _begin(c, K_file_co_resume)
    if v != NULL:
        _va_free(v)                     # (aios.pop(aid): the record goes)
    else:
        known = _ao_known(aios)
        PyDict_DelItem(aios, aid)
        _ao_changed(aios, known)
        if sl >= 0:
            _ao_aid[sl] = -1
    if vr != NULL:
        Py_INCREF(ret)
        Py_XDECREF(vr.ret)
        vr.ret = <PyObject*>ret
    else:
        PyDict_SetItem(req, S_RET, ret)
    if opc == OP_FLUSH:
        if ret == 0:
            sset(blk, _BlockState, _B[8], "flushed_gen", req.pop("flush_gen"))
        cont(c, F1(K_file_flush_done, bid), -1)
    else:
        if opc != OP_READ and ret == 0:
            sset(blk, _BlockState, _B[9], "write_gen", _b_write_gen(blk) + 1)
        cont(c, F1(K_bdrv_co_done, bid), -1)
    return 0


cdef int h_file_flush_done(Core* c, Frame* f) except -1:
    """file_posix.flush_done: the end of bdrv_co_flush (block/io.c) wakes the next queued flush"""
    cdef i64 bid = f.a[0], nxt = 0
    m = <object>c.m
    blk = _m_block(m)
    req = _req(c, blk, bid)
    if req is None:
        return _other(c, f, K_file_flush_done)
    ret = _rg(req, RQ_RET, S_RET)
    if ret is not None and type(ret) is not int:
        return _other(c, f, K_file_flush_done)                     # (the detail formats it)
    mine = _b_active_flush(blk) == bid
    wake = False
    if mine:
        fq = _b_flush_queue(blk)
        if type(fq) is not list:
            return _other(c, f, K_file_flush_done)
        if fq:
            if c.qemu < 0 or not _as_i64((<list>fq)[0], &nxt):
                return _other(c, f, K_file_flush_done)
            wake = True
    _begin(c, K_file_flush_done)
    if mine:
        sset(blk, _BlockState, _B[11], "active_flush", None)
        if wake:
            o_nxt = _pop0(fq)
            sset(blk, _BlockState, _B[11], "active_flush", o_nxt)
            post(c, c.qemu, F1(K_file_co_entry, nxt), 0, False)
    cont(c, F1(K_bdrv_co_done, bid), -1)
    return 0


# == qcow2: the compiled engine's handlers, steered through a recording scheduler ====================
# The qcow2 driver's steps (emu/block/qcow2/driver.py) run the compiled engine's own handlers
# (emu_fast/_qcow2.pyx q_compute, emu_fast/_block.pyx q_co_entry/q_io/q_worker/q_io_done, which
# the differential tests hold to the Python ones) with m.sim a _Rec that only records the
# scheduler calls (none of these handlers reads the scheduler's state) and m.cur a scratch
# record (their set_function calls, and compute's caller, read from it); the calls are then
# made, in order, on the core's scheduler.  Their detail strings are made and dropped.

cdef class _Rec:
    """Records Scheduler.cont/call/block/unblock/post/at calls (emu.sim.scheduler)."""
    cdef public list ops

    def __cinit__(self):
        self.ops = []

    def cont(self, kind, args=(), delay=None, preemptible=False):
        self.ops.append((0, kind, args, delay, preemptible))

    def call(self, kind, args, ret_kind, ret_args=(), delay=None):
        self.ops.append((1, kind, args, ret_kind, ret_args, delay))

    def block(self, kind, args=()):
        self.ops.append((2, kind, args))

    def unblock(self, name, delay=0):
        self.ops.append((3, name, delay))

    def post(self, name, kind, args=(), delay=0, urgent=False):
        self.ops.append((4, name, kind, args, delay, urgent))

    def at(self, delay, kind, args=()):
        self.ops.append((5, delay, kind, args))


cdef _Rec _REC = _Rec()
cdef dict _KID = {}
cdef list _KNAME = []


cdef int _kinds() except -1:
    from emu_fast._bulk import kind_names
    for i, name in enumerate(kind_names()):
        _KID[name] = i
        _KNAME.append(name)
    return 0
cdef object _SCRATCH = None      # the Step record the wrapped handlers see as m.cur
cdef object _Step = _Step_cls
cdef Py_ssize_t _S[5]
SLOT_PATHS["Step"] = slot_offsets(_Step, ("kind", "layer", "function", "source", "caller"), _S)


cdef tuple _info(str kind):
    """(kind, layer, function, source) of the kind's StepInfo: what a new Step record holds"""
    i = _REGISTRY[kind][1]
    return (i.kind, i.layer, i.function, i.source)


cdef Frame _frame(Core* c, object kind, object args) except *:
    """(kind, args) as a Frame"""
    cdef Frame fr
    cdef Py_ssize_t i, n
    cdef i64 v
    fr = F0(<int>_KID[kind])
    n = len(args)
    if n > 3:
        raise ValueError(f"bulk core: {kind} with {n} arguments")
    fr.n = <int>n
    for i in range(n):
        a = args[i]
        if type(a) is str:
            fr.a[i] = str_arg(c, a)
            fr.s[i] = 1
        elif _as_i64(a, &v):
            fr.a[i] = v
        else:
            raise TypeError(f"bulk core: argument {a!r} of {kind}")
    return fr


cdef int _ctx_index(Core* c, object name) except -2:
    cdef int i
    for i in range(c.nctx):
        if <object>c.ctx[i].name == name:
            return i
    raise KeyError(name)


cdef inline i64 _delay(object d) except? -2:
    return -1 if d is None else <i64>d


cdef int _replay(Core* c, list ops) except -1:
    """Make the recorded scheduler calls on the core's scheduler, in order."""
    for op in ops:
        t = op[0]
        if t == 0:
            cont(c, _frame(c, op[1], op[2]), _delay(op[3]), bool(op[4]))
        elif t == 1:
            call(c, _frame(c, op[1], op[2]), _frame(c, op[3], op[4]), _delay(op[5]))
        elif t == 2:
            block(c, _frame(c, op[1], op[2]))
        elif t == 3:
            unblock(c, _ctx_index(c, op[1]), <i64>op[2])
        elif t == 4:
            post(c, _ctx_index(c, op[1]), _frame(c, op[2], op[3]), <i64>op[4], bool(op[5]))
        else:
            at(c, <i64>op[1], _frame(c, op[2], op[3]))
    return 0


cdef int _wrapped(Core* c, Frame* f, int kind, object fn, tuple info) except -1:
    """Run the compiled engine's handler fn of this event against a recording scheduler."""
    global _SCRATCH
    cdef int i
    if _STRICT:
        return BAIL
    _va_flush()                         # (the handler may look at aios and reqs)
    _vr_flush()
    if not _KID:
        _kinds()
    args = []
    for i in range(f.n):
        args.append(arg_str(c, f.a[i]) if f.s[i] else f.a[i])
    _begin(c, kind)
    _WRAPPED[kind] += 1
    m = <object>c.m
    if _SCRATCH is None:
        _SCRATCH = _Step(0, 0, "", "", "", "", "")
    rec = _SCRATCH
    sset(rec, _Step, _S[0], "kind", (<tuple>info)[0])
    sset(rec, _Step, _S[1], "layer", (<tuple>info)[1])
    sset(rec, _Step, _S[2], "function", (<tuple>info)[2])
    sset(rec, _Step, _S[3], "source", (<tuple>info)[3])
    sset(rec, _Step, _S[4], "caller", "")
    _REC.ops = []
    sim = _m_sim(m)
    cur = _m_cur(m)
    sset(m, _Machine, _M[6], "sim", _REC)
    sset(m, _Machine, _M[7], "cur", rec)
    try:
        fn(m, *args)
    finally:
        sset(m, _Machine, _M[6], "sim", sim)
        sset(m, _Machine, _M[7], "cur", cur)
    ops = _REC.ops
    _REC.ops = []
    _replay(c, ops)
    return 0


cdef object _FN_COMPUTE = _FQ.HANDLERS["qcow2.compute"][0]
cdef object _FN_CO_ENTRY = _FB.HANDLERS["qcow2.co_entry"][0]
cdef object _FN_IO = _FB.HANDLERS["qcow2.io"][0]
cdef object _FN_WORKER = _FB.HANDLERS["qcow2.worker"][0]
cdef object _FN_IO_DONE = _FB.HANDLERS["qcow2.io_done"][0]
cdef tuple _I_COMPUTE = _info("qcow2.compute")
cdef tuple _I_CO_ENTRY = _info("qcow2.co_entry")
cdef tuple _I_IO = _info("qcow2.io")
cdef tuple _I_WORKER = _info("qcow2.worker")
cdef tuple _I_IO_DONE = _info("qcow2.io_done")

# every other path of the block layer's steps: the compiled engine's handler (emu_fast/_block.pyx)
# or, where it has none, the Python handler, through _wrapped (no bail: the stretch goes on)
cdef dict _OTHER = {}
for _k in ("blk.co_entry", "bdrv.co_entry", "bdrv.co_done", "blk.aio_complete", "raw.co_entry",
           "file.co_entry", "file.aio_worker", "file.co_resume", "file.flush_done"):
    _OTHER[_k] = (_FB.HANDLERS[_k][0] if _k in _FB.HANDLERS else _REGISTRY[_k][0], _info(_k))


cdef int _other(Core* c, Frame* f, int kind) except -1:
    """the event's path the native handler does not model"""
    if not _KID:
        _kinds()
    fn, info = _OTHER[_KNAME[kind]]
    return _wrapped(c, f, kind, fn, info)


# -- qcow2's host-I/O steps, natively on their common paths ------------------------------------------
# (every other path runs the compiled handler through _wrapped: no bail)

cdef dict Q_CO_FN = _Q.CO_FN
cdef dict Q_WORKER_FN = _Q.WORKER_FN
for _n in ("engine", "cos", "lock_owner", "lock_queue"):
    assert not hasattr(_Q.Qcow2Format, _n)      # instance attributes: read from fmt.__dict__
cdef dict _Q_LAT_OP = {"guest_write": S_WRITE, "write": S_WRITE, "flush": S_FLUSH,
                       "discard": S_DISCARD, "write_zeroes": S_WZ}
cdef dict _Q_FAULT_OP = {"guest_write": "write", "guest_read": "read", "cow_read": "read",
                         "compressed_read": "read", "backing_read": "read"}
cdef str S_GUEST_WRITE = "guest_write"
cdef str S_GUEST_READ = "guest_read"
cdef str S_COW_READ = "cow_read"
cdef str S_GUEST_ZERO = "guest_zero"
cdef str S_RAM = "ram"
cdef str S_ZERO = "zero"

# plan item operations (Qcow2Engine.io's op) the native handlers know
cdef enum:
    QI_OTHER = 0
    QI_WRITE            # "write" (item["data"])
    QI_GUEST_WRITE      # "guest_write" (item["parts"])
    QI_GUEST_READ
    QI_READ             # "read", "cow_read": nothing to do but the effect record
    QI_FLUSH
    QI_WZ
    QI_DISCARD


cdef inline int _qop(object op) except -1:
    """QI_* of a plan item's op (the driver's literals are interned: mostly found by identity)"""
    if op is S_GUEST_WRITE:
        return QI_GUEST_WRITE
    if op is S_WRITE:
        return QI_WRITE
    if op is S_GUEST_READ:
        return QI_GUEST_READ
    if op is S_FLUSH:
        return QI_FLUSH
    if op is S_COW_READ or op is S_READ:
        return QI_READ
    if op is S_WZ:
        return QI_WZ
    if op is S_DISCARD:
        return QI_DISCARD
    if op is S_GUEST_ZERO:
        return QI_OTHER
    if op == S_GUEST_WRITE:
        return QI_GUEST_WRITE
    if op == S_WRITE:
        return QI_WRITE
    if op == S_GUEST_READ:
        return QI_GUEST_READ
    if op == S_WZ:
        return QI_WZ
    if op == S_COW_READ or op == S_READ:
        return QI_READ
    if op == S_FLUSH:
        return QI_FLUSH
    if op == S_DISCARD:
        return QI_DISCARD
    return QI_OTHER


cdef object _qfmt(Core* c):
    """m.fmt.__dict__ when m.fmt is a Qcow2Format (else None)"""
    if _fmt_kind != K_qcow2_co_entry:
        return None
    cdef PyObject** dp = _PyObject_GetDictPtr(_m_fmt(<object>c.m))
    if dp == NULL or dp[0] == NULL or type(<object>dp[0]) is not dict:
        return None
    return <object>dp[0]


# What the last _q_co found in m.fmt.__dict__ (fd): fd["cos"] (_qc_cos), its [bid] (_qc_co),
# fd["engine"] and fd["lock_queue"] (or _MISSING), still so while neither fd's nor cos's
# version tag has changed (the coroutine's own fields are read each time)
cdef i64 _qc_bid = -1
cdef object _qc_fd = None
cdef object _qc_cos = None
cdef object _qc_co = None
cdef object _qc_eng = None
cdef object _qc_lq = None
cdef unsigned long long _qc_fdv = 0, _qc_cosv = 0
cdef long long _QC_HITS = 0


cdef inline bint _qc_valid(object fd, i64 bid) noexcept:
    """the cache above is fd's request bid, unchanged"""
    return (bid == _qc_bid and fd is _qc_fd and VBB_DICT_VERSION(fd) == _qc_fdv
            and VBB_DICT_VERSION(_qc_cos) == _qc_cosv)


cdef int _qc_keep(object fd, object cos, i64 bid, object co, object eng, object lq) except -1:
    """(eng, lq: fd's "engine" and "lock_queue", or _MISSING)"""
    global _qc_bid, _qc_fd, _qc_cos, _qc_co, _qc_eng, _qc_lq, _qc_fdv, _qc_cosv
    _qc_bid = bid if VBB_HAVE_DICT_VERSION else -1
    _qc_fd = fd
    _qc_cos = cos
    _qc_co = co
    _qc_eng = eng
    _qc_lq = lq
    _qc_fdv = VBB_DICT_VERSION(fd)
    _qc_cosv = VBB_DICT_VERSION(cos)
    return 0


cdef inline void _qc_cos_changed(object cos) noexcept:
    """cos changed, but not at the cached request (which was valid just before)"""
    global _qc_cosv
    _qc_cosv = VBB_DICT_VERSION(cos)


cdef object _q_co(object fd, i64 bid):
    """m.fmt.cos[bid] (a dict), or None; after a dict, _qc_eng and _qc_lq are fd's "engine"
    and "lock_queue" (or _MISSING)"""
    global _QC_HITS
    if _qc_valid(fd, bid):
        _QC_HITS += 1
        return _qc_co
    cos = _get(fd, "cos")
    if type(cos) is not dict:
        return None
    co = _get(cos, bid)
    if type(co) is not dict:
        return None
    _qc_keep(fd, cos, bid, co, _get(fd, "engine"), _get(fd, "lock_queue"))
    return co


# The plan item the last _q_item found: co["plan"] (_it_plan), its [co["pi"]] (_it_item, at
# _it_pi of _it_nplan items), its op (_it_op, _it_q), still so while neither co's nor the
# item's version tag has changed and the plan list still holds the item there; _it_ret: the
# co["io_ret"] the worker stored (when _it_has_ret)
cdef object _it_co = None
cdef object _it_plan = None
cdef object _it_item = None
cdef object _it_op = None
cdef int _it_q = QI_OTHER
cdef i64 _it_pi = 0
cdef Py_ssize_t _it_nplan = 0
cdef unsigned long long _it_cov = 0, _it_itv = 0
cdef bint _it_has_ret = False
cdef i64 _it_ret = 0
cdef long long _IT_HITS = 0


cdef inline void _it_forget() noexcept:
    global _it_co, _it_plan, _it_item, _it_op, _it_has_ret
    _it_co = _it_plan = _it_item = _it_op = None
    _it_has_ret = False


cdef inline bint _it_valid(object co) noexcept:
    """the cache is co's, and neither co nor its item has changed since"""
    return (co is _it_co and VBB_DICT_VERSION(co) == _it_cov
            and VBB_DICT_VERSION(_it_item) == _it_itv)


cdef inline void _it_refresh(object co, bint was) noexcept:
    """co (or its item) was just changed by the handler that found the item (was: _it_valid(co)
    just before the change): the cache goes on"""
    global _it_cov, _it_itv
    if was and co is _it_co:
        _it_cov = VBB_DICT_VERSION(co)
        _it_itv = VBB_DICT_VERSION(_it_item)


cdef object _q_item(object co, i64* pi, Py_ssize_t* nplan):
    """co["plan"][co["pi"]] (a dict with str "op", "fn" and a "what"), or None; after a dict,
    _it_op and _it_q are its op"""
    global _it_co, _it_plan, _it_item, _it_op, _it_q, _it_pi, _it_nplan, _it_cov, _it_itv
    global _it_has_ret, _IT_HITS
    if _it_valid(co) and PyList_GET_SIZE(_it_plan) == _it_nplan \
            and PyList_GET_ITEM(_it_plan, _it_pi) == <PyObject*>_it_item:
        _IT_HITS += 1
        pi[0] = _it_pi
        nplan[0] = _it_nplan
        return _it_item
    _it_forget()
    plan = _get(co, "plan")
    if type(plan) is not list or not _as_i64(_get(co, "pi"), pi):
        return None
    if pi[0] < 0 or pi[0] >= len(<list>plan):
        return None
    nplan[0] = len(<list>plan)
    item = (<list>plan)[pi[0]]
    if type(item) is not dict:
        return None
    op = _get(item, "op")
    if type(op) is not str or type(_get(item, "fn")) is not str or _get(item, "what") is _MISSING:
        return None
    _it_op = op
    _it_q = _qop(op)
    if VBB_HAVE_DICT_VERSION:
        _it_co = co
        _it_plan = plan
        _it_item = item
        _it_pi = pi[0]
        _it_nplan = nplan[0]
        _it_cov = VBB_DICT_VERSION(co)
        _it_itv = VBB_DICT_VERSION(item)
    return item


cdef int h_qcow2_co_entry(Core* c, Frame* f) except -1:
    """driver.co_entry: qcow2_co_preadv_part/pwritev_part/... (block/qcow2.c) takes s->lock"""
    cdef i64 bid = f.a[0], off, n
    cdef int opc
    cdef PyObject* fv[5]
    m = <object>c.m
    fd = _qfmt(c)
    blk = _m_block(m)
    req = _req(c, blk, bid)
    if fd is None or req is None:
        return _wrapped(c, f, K_qcow2_co_entry, _FN_CO_ENTRY, _I_CO_ENTRY)
    eng = _get(fd, "engine")
    op = _rg(req, RQ_CUR_OP, S_CUR_OP)
    opc = _opcode(op)
    cos = _get(fd, "cos")
    owner = _get(fd, "lock_owner")
    lq = _get(fd, "lock_queue")
    o_off = _rg(req, RQ_OFFSET, S_OFFSET)
    o_n = _rg(req, RQ_BYTES, S_BYTES)
    if eng is _MISSING or opc < 0 or type(cos) is not dict or owner is _MISSING \
            or (owner is not None and type(lq) is not list) \
            or not _as_i64(o_off, &off) or not _as_i64(o_n, &n) or eng.drv_gone:
        return _wrapped(c, f, K_qcow2_co_entry, _FN_CO_ENTRY, _I_CO_ENTRY)
    _begin(c, K_qcow2_co_entry)
    if opc == OP_WRITE or opc == OP_READ:
        # (co.update(...), in its order: a copy of _CO_RW, then the request's own values)
        co = PyDict_Copy(_CO_RW)
        plan = []
        pieces = []
        fv[0] = <PyObject*>op
        fv[1] = <PyObject*>plan
        fv[2] = <PyObject*>o_off
        fv[3] = <PyObject*>o_n
        fv[4] = <PyObject*>pieces
        _fill(co, _CO_RW_IDX, _CO_RW_KEYS, fv, 5)
    else:
        co = _PyDict_NewPresized(5)
        co["op"] = op
        co["phase"] = "start"
        co["plan"] = []
        co["pi"] = 0
        co["ret"] = 0
    was = _qc_valid(fd, _qc_bid)
    (<dict>cos)[bid] = co
    if owner is not None:
        (<list>lq).append(bid)          # s->lock is held: wait (the task returns)
        if was and bid != _qc_bid:      # (the owner's coroutine is still its cos entry)
            _qc_cos_changed(cos)
        return 0
    fd["lock_owner"] = bid
    _qc_keep(fd, cos, bid, co, eng, lq)  # (compute finds it)
    cont(c, F1(K_qcow2_compute, bid), -1)
    return 0


cdef str S_OP = "op"
cdef str S_PLAN = "plan"
cdef str S_POS = "pos"
cdef str S_REMAINING = "remaining"
cdef str S_PIECES = "pieces"
# a read or write coroutine's dict as co_entry makes it, its own values None (copied: the copy
# has its keys in the same order, and the copy's stores only replace values)
cdef dict _CO_RW = _PyDict_NewPresized(12)
for _k, _v in (("op", None), ("phase", "start"), ("plan", None), ("pi", 0), ("ret", 0),
               ("pos", None), ("remaining", None), ("qoff", 0), ("pieces", None), ("link_i", 0),
               ("zero", False), ("wphase", "alloc")):
    _CO_RW[_k] = _v
cdef int _CO_RW_IDX[5]
cdef PyObject* _CO_RW_KEYS[5]
_i = 0
for _j, _k in enumerate(_CO_RW):       # op, plan, pos, remaining, pieces (_CO_RW keeps the keys)
    if _k in ("op", "plan", "pos", "remaining", "pieces"):
        _CO_RW_IDX[_i] = _j
        _CO_RW_KEYS[_i] = <PyObject*>_k
        _i += 1
assert _i == 5


cdef int h_qcow2_io(Core* c, Frame* f) except -1:
    """driver.io: bdrv_pwrite/... (block/qcow2.c), the next planned host I/O to the thread pool"""
    cdef i64 bid = f.a[0], pi, ln, tot, gpa, n
    cdef Py_ssize_t nplan
    cdef int opc, q
    m = <object>c.m
    fd = _qfmt(c)
    co = _q_co(fd, bid) if fd is not None else None
    item = _q_item(co, &pi, &nplan) if co is not None else None
    if item is None:
        return _wrapped(c, f, K_qcow2_io, _FN_IO, _I_IO)
    op = _it_op
    q = _it_q
    if q == QI_GUEST_WRITE or q == QI_WRITE:
        lop = S_WRITE
        opc = OP_WRITE
    elif q == QI_GUEST_READ or q == QI_READ:
        lop = S_READ
        opc = OP_READ
    else:
        lop = _get(_Q_LAT_OP, op)
        if lop is _MISSING:
            lop = S_READ
        opc = _opcode(lop)
    o_ln = _get(item, "length")
    if o_ln is _MISSING:
        o_ln = 0
    if not _as_i64(o_ln, &ln):
        return _wrapped(c, f, K_qcow2_io, _FN_IO, _I_IO)
    if q == QI_OTHER and op == S_GUEST_ZERO:
        # the zeros go straight into guest RAM, then the next item
        iov = _get(item, "iov")
        eng = _qc_eng
        if PyDict_GetItemWithError(item, "length") == NULL or eng is _MISSING \
                or not _iov_ok(c, iov, &tot):
            return _wrapped(c, f, K_qcow2_io, _FN_IO, _I_IO)
        _begin(c, K_qcow2_io)
        for e in iov:
            gpa = e[0]
            n = e[1]
            if n > 0:
                z = vb_zeros(n)
                ram_write(c, gpa, PyBytes_AS_STRING(z), n)
        return _next_item(c, eng, co, item, pi, nplan, bid, q)
    if q == QI_FLUSH:
        blk = _m_block(m)
        eng = _qc_eng
        if eng is _MISSING:
            return _wrapped(c, f, K_qcow2_io, _FN_IO, _I_IO)
        if _b_no_flush(blk) or _b_flushed_gen(blk) == _b_write_gen(blk):
            _begin(c, K_qcow2_io)
            return _next_item(c, eng, co, item, pi, nplan, bid, q)
        _begin(c, K_qcow2_io)
        was = _it_valid(co)
        item["gen"] = _b_write_gen(blk)
        _it_refresh(co, was)
    else:
        _begin(c, K_qcow2_io)
    at(c, _latency(c, m, lop, opc, ln), F1(K_qcow2_worker, bid))
    return 0


cdef object _EXECUTED = None     # FastQcow2Engine.executed, as its class dict holds it
cdef object _PY_EXECUTED = _QE_mod.Qcow2Engine.__dict__["executed"]
cdef str S_PENDING = "pending"


# the engine's __dict__ whose "pending" list _ex_pend is (and no "executed" in it), at version _ex_v
cdef object _ex_d = None
cdef object _ex_pend = None
cdef unsigned long long _ex_v = 0


cdef int _executed(object eng, object item, int q) except -1:
    """eng.executed(item): Qcow2Engine.executed (the ran item's bytes leave the pending view)
    read and done here when the engine's class has the Python or the compiled method and the
    instance does not override it (else called); q: _qop of the item's op"""
    global _EXECUTED, _ex_d, _ex_pend, _ex_v
    cdef PyObject* fn
    cdef PyObject** dp
    cdef PyObject* pend
    if _EXECUTED is None:
        _EXECUTED = _FQ.FastQcow2Engine.__dict__["executed"]
    fn = _PyType_Lookup(type(eng), "executed")
    dp = _PyObject_GetDictPtr(eng)
    if fn != NULL and (<object>fn is _EXECUTED or <object>fn is _PY_EXECUTED) and dp != NULL \
            and dp[0] != NULL and type(<object>dp[0]) is dict and type(item) is dict:
        d = <object>dp[0]
        if d is _ex_d and VBB_DICT_VERSION(d) == _ex_v:
            pend = <PyObject*>_ex_pend
        elif PyDict_GetItemWithError(d, "executed") == NULL:
            pend = PyDict_GetItemWithError(d, S_PENDING)
            if pend != NULL and type(<object>pend) is list and VBB_HAVE_DICT_VERSION:
                _ex_d = d
                _ex_pend = <object>pend
                _ex_v = VBB_DICT_VERSION(d)
        else:
            pend = NULL
        if pend != NULL and type(<object>pend) is list:
            if q == QI_WZ or q == QI_DISCARD or q == QI_GUEST_WRITE \
                    or PyDict_GetItemWithError(item, "data") != NULL:
                if PyList_GET_SIZE(<object>pend) > 0:
                    PyList_SetSlice(<object>pend, 0, 1, NULL)      # (pop(0), its value unused)
                else:
                    (<list><object>pend).pop(0)                     # (IndexError)
            return 0
    eng.executed(item)
    return 0


cdef int _next_item(Core* c, object eng, object co, object item, i64 pi, Py_ssize_t nplan,
                    i64 bid, int q) except -1:
    """driver._next_item (q: _qop of the item's op)"""
    _executed(eng, item, q)
    PyDict_SetItem(co, S_PI, pi + 1)
    cont(c, F1(K_qcow2_io if pi + 1 < nplan else K_qcow2_compute, bid), -1)
    return 0


cdef str S_PI = "pi"


cdef bint _parts_ok(Core* c, object parts, i64* total) except -1:
    """a guest_write item's parts: ("ram", gpa, len) inside guest RAM, ("zero", n) or
    (other, bytes); total = the joined length"""
    cdef i64 a, b, t = 0
    if type(parts) is not list:
        return False
    for p in parts:
        if type(p) is not tuple or len(<tuple>p) < 2:
            return False
        k = (<tuple>p)[0]
        if k == S_RAM:
            if len(<tuple>p) < 3 or not _as_i64((<tuple>p)[1], &a) or not _as_i64((<tuple>p)[2], &b) \
                    or not ram_ok(c, a, b) or b > (<i64>1 << 40):
                return False
            t += b
        elif k == S_ZERO:
            if not _as_i64((<tuple>p)[1], &b) or b < 0 or b > (<i64>1 << 40):
                return False
            t += b
        else:
            if type((<tuple>p)[1]) is not bytes:
                return False
            t += PyBytes_GET_SIZE((<tuple>p)[1])
    total[0] = t
    return True


cdef int _scatter(Core* c, object m, object got, object iov) except -1:
    """The bytes a pread returned into the guest buffers of iov (the file driver's
    dma_memory_write of each piece; iov checked by _iov_ok)"""
    cdef const char* src
    cdef i64 have, pos = 0, ln, l
    if type(got) is bytes:
        src = PyBytes_AS_STRING(got)
        have = PyBytes_GET_SIZE(got)
        for e in iov:
            ln = e[1]
            l = have - pos
            if l > ln:
                l = ln
            if l > 0:
                ram_write(c, e[0], src + pos, l)
            pos += ln
    else:
        mem = _m_mem(m)
        for e in iov:
            mem.write(e[0], got[pos:pos + e[1]])
            pos += e[1]
    return 0


cdef int h_qcow2_worker(Core* c, Frame* f) except -1:
    """driver.worker: handle_aiocb_rw/flush/... (block/file-posix.c) runs one planned host I/O"""
    cdef i64 bid = f.a[0], pi, off, n, nb = 0, pos, gpa, ln, l, have, end, size
    cdef Py_ssize_t nplan
    cdef int q
    cdef const char* src
    cdef char* dst
    global _it_has_ret, _it_ret
    m = <object>c.m
    fd = _qfmt(c)
    co = _q_co(fd, bid) if fd is not None else None
    item = _q_item(co, &pi, &nplan) if co is not None else None
    if item is None or c.qemu < 0:
        return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    op = _it_op
    q = _it_q
    o_off = _get(item, "offset")
    o_n = _get(item, "length")
    if o_n is _MISSING:
        o_n = 0
    if q == QI_OTHER or not _wfn_has(op) \
            or not _as_i64(o_off, &off) or not _as_i64(o_n, &n) or off < 0 or n < 0:
        return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    blk = _m_block(m)
    faults = _b_faults(blk)
    if type(faults) is not list or PyList_GET_SIZE(faults) != 0:
        fop = _get(_Q_FAULT_OP, op)
        if fop is _MISSING:
            fop = op
        if _fault_fires(m, blk, fop, o_off, o_n if n > 1 else 1):
            return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    data = None
    iov = None
    if q == QI_WRITE:
        data = _get(item, "data")
        if type(data) is not bytes:
            return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    elif q == QI_GUEST_WRITE:
        parts = _get(item, "parts")
        if not _parts_ok(c, parts, &nb):
            return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    elif q == QI_GUEST_READ:
        iov = _get(item, "iov")
        if not _iov_ok(c, iov, &nb):
            return _wrapped(c, f, K_qcow2_worker, _FN_WORKER, _I_WORKER)
    hf = _m_hostfile(m)
    _begin(c, K_qcow2_worker)
    ret = 0
    try:
        if q == QI_WRITE or q == QI_GUEST_WRITE:
            if q == QI_GUEST_WRITE:
                data = PyBytes_FromStringAndSize(NULL, nb)
                dst = PyBytes_AS_STRING(data)
                pos = 0
                for p in parts:
                    k = (<tuple>p)[0]
                    if k == S_RAM:
                        gpa = (<tuple>p)[1]
                        ln = (<tuple>p)[2]
                        memcpy(dst + pos, c.ram + gpa, <size_t>ln)
                    elif k == S_ZERO:
                        ln = (<tuple>p)[1]
                        memset(dst + pos, 0, <size_t>ln)
                    else:
                        b = (<tuple>p)[1]
                        ln = PyBytes_GET_SIZE(b)
                        memcpy(dst + pos, PyBytes_AS_STRING(b), <size_t>ln)
                    pos += ln
            hf.pwrite(o_off, data)
        elif q == QI_GUEST_READ:
            _scatter(c, m, hf.pread(o_off, o_n), iov)
        elif q == QI_FLUSH:
            hf.fdatasync()
        elif q == QI_WZ or q == QI_DISCARD:
            end = off + n
            if q == QI_DISCARD:
                size = hf.size
                if size < end:
                    end = size
            if end > off:
                if end > hf.size:       # (zeroed whatever it reads: no pread, no compare)
                    hf.write_zeroes(o_off, end - off)
                elif hf.pread(o_off, end - off) != vb_zeros(end - off):
                    hf.write_zeroes(o_off, end - off)
        # (QI_READ: a cow_read or read item only records its effect)
    except OSError as e:
        ret = -(e.errno or EIO)
    was = _it_valid(co)
    PyDict_SetItem(co, S_IO_RET, ret)
    _it_refresh(co, was)
    if was and type(ret) is int:
        _it_has_ret = True
        _it_ret = ret
    post(c, c.qemu, F1(K_qcow2_io_done, bid), 0, False)
    return 0


cdef str S_IO_RET = "io_ret"
cdef unsigned long long _wfn_v = 0     # driver.WORKER_FN's version when _wfn_all was decided
cdef bint _wfn_all = False            # ... every QI_* op but QI_OTHER is one of its keys


cdef bint _wfn_has(object op) except -1:
    """op in driver.WORKER_FN (op: a QI_* op other than QI_OTHER)"""
    global _wfn_v, _wfn_all
    if VBB_HAVE_DICT_VERSION:
        if VBB_DICT_VERSION(Q_WORKER_FN) != _wfn_v:
            _wfn_all = all(k in Q_WORKER_FN for k in ("guest_write", "write", "guest_read", "read",
                                                      "cow_read", "flush", "write_zeroes", "discard"))
            _wfn_v = VBB_DICT_VERSION(Q_WORKER_FN)
        if _wfn_all:
            return True
    return PyDict_GetItemWithError(Q_WORKER_FN, op) != NULL


cdef int h_qcow2_io_done(Core* c, Frame* f) except -1:
    """driver.io_done: the planned I/O completed, the coroutine re-enters (block/qcow2.c)"""
    cdef i64 bid = f.a[0], pi, r
    cdef Py_ssize_t nplan
    cdef int q
    m = <object>c.m
    fd = _qfmt(c)
    co = _q_co(fd, bid) if fd is not None else None
    item = _q_item(co, &pi, &nplan) if co is not None else None
    if item is None:
        return _wrapped(c, f, K_qcow2_io_done, _FN_IO_DONE, _I_IO_DONE)
    if _it_has_ret and co is _it_co:     # (the worker's co["io_ret"], co unchanged since)
        r = _it_ret
    elif not _as_i64(_get(co, "io_ret"), &r):
        return _wrapped(c, f, K_qcow2_io_done, _FN_IO_DONE, _I_IO_DONE)
    if r != 0:
        return _wrapped(c, f, K_qcow2_io_done, _FN_IO_DONE, _I_IO_DONE)
    q = _it_q
    gen = None
    if q == QI_FLUSH:
        gen = _get(item, "gen")
        if gen is _MISSING:
            return _wrapped(c, f, K_qcow2_io_done, _FN_IO_DONE, _I_IO_DONE)
    eng = _qc_eng
    if eng is _MISSING:
        return _wrapped(c, f, K_qcow2_io_done, _FN_IO_DONE, _I_IO_DONE)
    blk = _m_block(m)
    _begin(c, K_qcow2_io_done)
    PyDict_DelItem(co, S_IO_RET)
    if q == QI_WRITE or q == QI_GUEST_WRITE or q == QI_WZ or q == QI_DISCARD:
        sset(blk, _BlockState, _B[9], "write_gen", _b_write_gen(blk) + 1)
    elif q == QI_FLUSH:
        sset(blk, _BlockState, _B[8], "flushed_gen", gen)
    return _next_item(c, eng, co, item, pi, nplan, bid, q)


cdef object _Qcow2Engine = _QE_mod.Qcow2Engine
cdef object _FQ_BULK_COMPUTE = getattr(_FQ, "bulk_compute", None)
# _qcow2's bulk_compute in C (its BULK_COMPUTE_C), else NULL (the Python-level function)
ctypedef int (*_bulk_compute_fn)(object, object, dict, object) except -1
cdef _bulk_compute_fn _BULK_COMPUTE_C = NULL
cdef const char* _BC_NAME = "emu_fast._qcow2.bulk_compute: int (object m, object eng, dict co, object bid) except -1"     # (the name carries the signature)
_cap = getattr(_FQ, "BULK_COMPUTE_C", None)
if _cap is not None and PyCapsule_IsValid(_cap, _BC_NAME):
    _BULK_COMPUTE_C = <_bulk_compute_fn>PyCapsule_GetPointer(_cap, _BC_NAME)
cdef object _FastQcow2Engine = _FQ.FastQcow2Engine
cdef dict _QD = _Q.__dict__
cdef object _PY_Q_FINISH = _Q._finish
cdef object _PY_WRITE_PHASE = _Q._write_phase
cdef object _PY_READ_PHASE = _Q._read_phase
cdef object _PY_FLUSH_PHASE = _Q._flush_phase

# the compute steps that decide without the engine (driver._compute):
cdef enum:
    QC_ENGINE = 0       # anything else: the compiled handler
    QC_DONE             # the request is done: _finish
    QC_TO_LINK          # a write's pieces are all allocated and written: link the L2 entries
    QC_LINKED           # ... and all linked: done, _finish
    QC_READ_DONE        # a read has nothing left: done, _finish


cdef int h_qcow2_compute(Core* c, Frame* f) except -1:
    """driver.compute: qcow2_alloc_host_offset/... (block/qcow2-cluster.c), the engine decides
    (natively: the steps that end a request or turn a write to its L2 links; the others run
    the compiled handler)"""
    cdef i64 bid = f.a[0], li, r
    cdef int what = QC_ENGINE
    m = <object>c.m
    fd = _qfmt(c)
    co = _q_co(fd, bid) if fd is not None else None
    eng = _qc_eng if co is not None else _MISSING
    if eng is _MISSING or (type(eng) is not _Qcow2Engine and type(eng) is not _FastQcow2Engine) \
            or not _qd_check() or not _qd_finish_ok or bid == 0:
        return _wrapped(c, f, K_qcow2_compute, _FN_COMPUTE, _I_COMPUTE)
    phase = _rg(co, CO_PHASE, S_PHASE)
    op = _rg(co, CO_OP, S_OP)
    if _seq(phase, S_DONE):
        what = QC_DONE
    elif _seq(op, S_WRITE):
        wphase = _rg(co, CO_WPHASE, S_WPHASE)
        if _seq(wphase, S_ALLOC):
            if _rg(co, CO_REMAINING, S_REMAINING) == 0:
                what = QC_TO_LINK
        elif _seq(wphase, S_LINK):
            pieces = _rg(co, CO_PIECES, S_PIECES)
            if _as_i64(_rg(co, CO_LINK_I, S_LINK_I), &li) and type(pieces) is list and li >= len(<list>pieces):
                what = QC_LINKED
    elif _seq(op, S_READ) and _rg(co, CO_REMAINING, S_REMAINING) == 0:
        what = QC_READ_DONE
    blk = _m_block(m)
    req = _req(c, blk, bid)
    lq = _qc_lq
    if what == QC_ENGINE:
        # a read, write or flush phase: _qcow2.bulk_compute (driver.compute without its
        # record), then the scheduler calls compute makes; anything else: the compiled handler
        if type(op) is str and (_qd_write_ok if _seq(op, S_WRITE) else _qd_read_ok if _seq(op, S_READ)
                                else _qd_flush_ok and _seq(op, S_FLUSH)) \
                and phase is not _MISSING and req is not None \
                and type(lq) is list and (not lq or (c.qemu >= 0 and type((<list>lq)[0]) is int)) \
                and _FQ_BULK_COMPUTE is not None:
            if _STRICT:         # (an engine error there would be an error effect, unrecorded)
                return BAIL
            _begin(c, K_qcow2_compute)
            _NATIVE[K_qcow2_compute] += 1
            if type(eng) is _Qcow2Engine:
                eng.__class__ = _FastQcow2Engine    # (as the compiled handler does)
            if _BULK_COMPUTE_C != NULL:
                r = _BULK_COMPUTE_C(m, eng, <dict>co, bid)
            else:
                r = _FQ_BULK_COMPUTE(m, eng, co, bid)
            if r == 1:
                cont(c, F1(K_qcow2_io, bid), -1)
                return 0
            if r == 3:
                cont(c, F1(K_qcow2_compute, bid), -1)
                return 0
            return _q_finish(c, fd, req, lq, co, bid)
        return _wrapped(c, f, K_qcow2_compute, _FN_COMPUTE, _I_COMPUTE)
    # _finish's reads: the request, and co["ret"] (formatted by the detail)
    if req is None or not _as_i64(_rg(co, CO_RET, S_RET), &r) or type(lq) is not list \
            or (what == QC_TO_LINK and not _qd_write_ok) \
            or (lq and (c.qemu < 0 or type((<list>lq)[0]) is not int)):
        return _wrapped(c, f, K_qcow2_compute, _FN_COMPUTE, _I_COMPUTE)
    _begin(c, K_qcow2_compute)
    if type(eng) is _Qcow2Engine:
        eng.__class__ = _FastQcow2Engine            # (as the compiled handler does)
    if what != QC_DONE:                 # the phase runs with a fresh plan, and plans nothing
        plan = []                       # (eng.plan = plan: nothing reads it before the next)
        if what == QC_TO_LINK:
            (<dict>co)["wphase"] = "link"
        elif what == QC_LINKED:
            (<dict>co)["wphase"] = "done"
            (<dict>co)["phase"] = "done"
        else:
            (<dict>co)["phase"] = "done"
        (<dict>co)["plan"] = plan
        _inst_set(eng, "plan", [])
        (<dict>co)["pi"] = 0
        if what == QC_TO_LINK:
            cont(c, F1(K_qcow2_compute, bid), -1)
            (<dict>co)["caller"] = (<tuple>_I_COMPUTE)[2]   # (the step's function: no set_function ran)
            return 0
    return _q_finish(c, fd, req, lq, co, bid)


cdef str S_DONE = "done"
cdef str S_ALLOC = "alloc"
cdef str S_LINK = "link"
cdef str S_START = "start"


cdef inline bint _seq(object a, str b) except -1:
    """a == b for a str b: at once when a is b or another of the driver's phase and op names
    (interned literals: equal only when identical), else compared"""
    if a is b:
        return True
    if a is S_DONE or a is S_ALLOC or a is S_LINK or a is S_START or a is S_WRITE or a is S_READ:
        return False
    return a == b


# what compute checks of the driver module, decided once per version of its dict and of
# driver.PHASES: driver._finish is the Python one (_qd_finish_ok), PHASES["write"],
# PHASES["read"] and PHASES["flush"] are the Python phases (_qd_write_ok, _qd_read_ok,
# _qd_flush_ok)
cdef unsigned long long _qd_v = 0, _qd_phv = 0
cdef object _qd_ph = None
cdef bint _qd_finish_ok = False, _qd_write_ok = False, _qd_read_ok = False, _qd_flush_ok = False


cdef bint _qd_check() except -1:
    """brings the flags above up to date (-> True)"""
    global _qd_v, _qd_phv, _qd_ph, _qd_finish_ok, _qd_write_ok, _qd_read_ok, _qd_flush_ok
    if VBB_HAVE_DICT_VERSION and _qd_ph is not None and VBB_DICT_VERSION(_QD) == _qd_v \
            and VBB_DICT_VERSION(_qd_ph) == _qd_phv:
        return True
    _qd_finish_ok = _get(_QD, "_finish") is _PY_Q_FINISH
    ph = _get(_QD, "PHASES")
    if type(ph) is dict:
        _qd_write_ok = _get(ph, S_WRITE) is _PY_WRITE_PHASE
        _qd_read_ok = _get(ph, S_READ) is _PY_READ_PHASE
        _qd_flush_ok = _get(ph, S_FLUSH) is _PY_FLUSH_PHASE and _BULK_COMPUTE_C != NULL   # (a _qcow2 with the quiet flush)
        _qd_ph = ph
        _qd_phv = VBB_DICT_VERSION(ph)
    else:
        _qd_write_ok = _qd_read_ok = _qd_flush_ok = False
        _qd_ph = None
    _qd_v = VBB_DICT_VERSION(_QD)
    return True


cdef int _inst_set(object o, str name, object v) except -1:
    """setattr(o, name, v) of an instance attribute no class attribute overrides (the
    engine's plan): into o.__dict__"""
    cdef PyObject** dp = _PyObject_GetDictPtr(o)
    if dp != NULL and dp[0] != NULL:
        return PyDict_SetItem(<object>dp[0], name, v)
    setattr(o, name, v)
    return 0


cdef int _q_finish(Core* c, object fd, object req, object lq, object co, i64 bid) except -1:
    """driver._finish (bid != 0; the caller checked the request and the lock queue)"""
    PyDict_DelItem(_get(fd, "cos"), bid)
    (<dict>fd)["lock_owner"] = None
    if lq:
        nxt = _pop0(lq)
        (<dict>fd)["lock_owner"] = nxt
        post(c, c.qemu, F1(K_qcow2_compute, <i64>nxt), 0, False)
    (<dict>req)["ret"] = (<dict>co)["ret"]
    cont(c, F1(K_bdrv_co_done, bid), -1)
    return 0


register_layer(_load, _store)
register_handler(K_qcow2_compute, h_qcow2_compute)
register_handler(K_qcow2_co_entry, h_qcow2_co_entry)
register_handler(K_qcow2_io, h_qcow2_io)
register_handler(K_qcow2_worker, h_qcow2_worker)
register_handler(K_qcow2_io_done, h_qcow2_io_done)
register_handler(K_blk_co_entry, h_blk_co_entry)
register_handler(K_bdrv_co_entry, h_bdrv_co_entry)
register_handler(K_bdrv_co_done, h_bdrv_co_done)
register_handler(K_blk_aio_complete, h_blk_aio_complete)
register_handler(K_raw_co_entry, h_raw_co_entry)
register_handler(K_file_co_entry, h_file_co_entry)
register_handler(K_file_aio_worker, h_file_aio_worker)
register_handler(K_file_co_resume, h_file_co_resume)
register_handler(K_file_flush_done, h_file_flush_done)
