# cython: language_level=3, cdivision=False
"""The guest side of the bulk core (emu_fast/_bulk.pxd): bulk handlers for the guest process
(emu/guest/process.py app.*, blkmq.submit_bio), blk-mq (emu/guest/blk_mq.py), the virtio_blk
driver (emu/guest/virtio_blk.py) and the driver's split virtqueue (emu/guest/vring.py).

Each handler runs one event exactly as the Python handler named in its docstring changes the
machine (the same mutations of the same Python objects, in the same order, the same guest-RAM
bytes, the same scheduler calls), but records nothing (no effects, facts, detail text or
set_function).  Every read that decides whether the event can run here comes before begin();
the paths not modelled (BAD_RING, out-of-RAM rings, values struct.pack would refuse, the
ring-full/resource requeue, discard/write-zeroes/get-id operations, split bios, anything of an
unexpected type) return BAIL with nothing changed, and the compiled engine runs that event.

The machine's objects (Guest, DriverVq, BlkMq, Proc, the page allocator, the counters dict) are
looked up in the load hook at the start of each stretch (nothing in these handlers rebinds
them); their members are read and written at their __slots__ offsets (emu_fast/_slots.pxd),
which load checks are plain slots of exactly those classes.  Lists a handler rebinds (the
plug, the batch, hctx->dispatch) are read from their slot at each use.
"""
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.dict cimport PyDict_SetItem

cdef extern from "Python.h":
    dict _PyDict_NewPresized(Py_ssize_t minused)    # (what BUILD_MAP's _PyDict_FromItems makes)
    int _list_set_slice "PyList_SetSlice"(object l, Py_ssize_t lo, Py_ssize_t hi,
                                          PyObject* v) except -1
    int _rich_eq "PyObject_RichCompareBool"(object a, object b, int op) except -1
    Py_ssize_t _LIST_SIZE "PyList_GET_SIZE"(object l)
    PyObject* _LIST_ITEM "PyList_GET_ITEM"(object l, Py_ssize_t i)
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memchr, memcmp, memcpy, memmove, memset
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from emu_fast._bulk cimport *
from emu_fast._pydict311 cimport *
from emu_fast._slots cimport slot_offsets, vbs_peek, vbs_set

import hashlib as _hashlib

from emu.guest import state as _S
from emu.guest import process as _P
cdef object _split_segs = _P.split_segs
from emu.guest import blk_mq as _Q
from emu.guest import virtio_blk as _VB
from emu.machine import Machine
from emu.mem.page_alloc import KMALLOC_CLASSES, PageAllocator
from emu.spec import blk as B
from emu.spec import pci as _PCI
from emu.spec import virtio as V
from emu.transport.virtio_pci import Transport
from emu import workload as _W

from emu_fast import _support as _SUP
from emu_fast import _blk_mq as _BMQ

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

# == constants (checked against the Python modules) ================================================
cdef enum:
    DESC_SIZE = 16
    F_NEXT = 1
    F_WRITE = 2
    F_INDIRECT = 4
    AVAIL_F_NO_INTERRUPT = 1
    USED_F_NO_NOTIFY = 1
    AVAIL_FLAGS = 0
    AVAIL_IDX = 2
    AVAIL_RING = 4
    USED_FLAGS = 0
    USED_IDX = 2
    USED_RING = 4
    USED_ELEM_SIZE = 8
    PDU_SIZE = 64
    OUTHDR_SIZE = 16
    DWZ_SEG_SIZE = 16
    PAGE = 4096
    T_OUT = 1
    T_GET_ID = 8
    S_OK = 0
    S_UNSUPP = 2
assert (V.DESC_SIZE, V.VIRTQ_DESC_F_NEXT, V.VIRTQ_DESC_F_WRITE, V.VIRTQ_DESC_F_INDIRECT) == (16, 1, 2, 4)
assert (V.VRING_AVAIL_F_NO_INTERRUPT, V.VRING_USED_F_NO_NOTIFY) == (1, 1)
assert (V.AVAIL_FLAGS, V.AVAIL_IDX, V.AVAIL_RING, V.USED_FLAGS, V.USED_IDX, V.USED_RING,
        V.USED_ELEM_SIZE) == (0, 2, 4, 0, 2, 4, 8)
assert all(V.avail_used_event_off(n) == AVAIL_RING + 2 * n and
           V.used_avail_event_off(n) == USED_RING + USED_ELEM_SIZE * n for n in (1, 256, 1024))
assert B.WRITE_ZEROES_FLAG_UNMAP == 1
assert _S.VBLK_PDU_SIZE == PDU_SIZE and B.OUTHDR_SIZE == OUTHDR_SIZE and B.DWZ_SEG_SIZE == DWZ_SEG_SIZE
assert (B.T_IN, B.T_OUT, B.T_GET_ID, B.S_OK, B.S_UNSUPP) == (0, 1, 8, 0, 2)
assert _P.PAGE == PAGE and _Q.MERGEABLE == ("READ", "WRITE", "DISCARD")

cdef dict _TYPE_OF = _VB.TYPE_OF
cdef object _T_GET_ID_O = B.T_GET_ID
cdef long long BIO_MAX_VECS = _S.BIO_MAX_VECS
cdef long long BLK_MAX_REQUEST_COUNT = _S.BLK_MAX_REQUEST_COUNT
cdef long long BLK_PLUG_FLUSH_SIZE = _S.BLK_PLUG_FLUSH_SIZE
cdef object BLKDEV_MIN_RQ = _P.BLKDEV_MIN_RQ
cdef object DD_READ_EXPIRE_NS = _S.DD_READ_EXPIRE_NS
cdef object DD_WRITE_EXPIRE_NS = _S.DD_WRITE_EXPIRE_NS
cdef long long DD_WRITES_STARVED = _S.DD_WRITES_STARVED
cdef long long DD_FIFO_BATCH = _S.DD_FIFO_BATCH
cdef bint _DD_EXP_C = all(type(x) is int and 0 <= x < (1 << 52) for x in (DD_READ_EXPIRE_NS, DD_WRITE_EXPIRE_NS))
cdef long long _DD_READ_C = DD_READ_EXPIRE_NS if _DD_EXP_C else 0
cdef long long _DD_WRITE_C = DD_WRITE_EXPIRE_NS if _DD_EXP_C else 0
cdef long long LIM = 1LL << 52          # C arithmetic only on values below this
cdef long long COMMON_CFG = _PCI.COMMON_CFG
cdef long long DEVICE_CFG = _PCI.DEVICE_CFG
cdef long long REGION_SIZE = _PCI.REGION_SIZE

cdef object _kmalloc = _SUP.kmalloc           # PageAllocator.kmalloc (compiled; exact)
cdef object _kfree = _SUP.kfree
cdef object _alloc_pages = _SUP.alloc_pages
cdef object _free_pages = _SUP.free_pages
cdef object _write_pattern = _BMQ.write_pattern   # emu.workload.write_pattern (compiled; exact)
cdef object _sha256 = _hashlib.sha256
cdef object _ID_BYTES = B.ID_BYTES
cdef object _PY_MMIO_WRITE = Transport.mmio_write
cdef object _PY_WRITE_PATTERN = _W.write_pattern

# == the machine's members at their __slots__ offsets ==============================================
cdef object _Machine = Machine
cdef object _Guest = _S.Guest
cdef object _DriverVq = _S.DriverVq
cdef object _BlkMq = _S.BlkMq
cdef object _Proc = _S.Proc
cdef object _Transport = Transport
cdef enum:
    M_GUEST, M_PAGES, M_COUNTERS, M_TRANSPORT, M_TIMING, M_N
cdef enum:
    G_VQ, G_BLKMQ, G_PROC, G_KICK_NEEDED, G_DONE_COUNT, G_PDU_BASE, G_VQ_LOCKED, G_COMPLETED,
    G_ZERO_PAGE, G_N
cdef enum:
    VQ_INDEX, VQ_NUM, VQ_DESC, VQ_AVAIL, VQ_USED, VQ_NOTIFY_OFF, VQ_FREE_HEAD, VQ_NUM_FREE,
    VQ_NUM_ADDED, VQ_LAST_USED_IDX, VQ_AVAIL_IDX_SHADOW, VQ_AVAIL_FLAGS_SHADOW, VQ_EVENT,
    VQ_INDIRECT, VQ_BROKEN, VQ_EVENT_TRIGGERED, VQ_DESC_DATA, VQ_DESC_INDIR, VQ_EXTRA_NEXT,
    VQ_EXTRA_LEN, VQ_EXTRA_FLAGS, VQ_N
cdef enum:
    Q_DEPTH, Q_NR_REQUESTS, Q_TAGS, Q_ALLOC_HINT, Q_RQS, Q_NEXT_RQ, Q_PLUG, Q_DD_FIFO,
    Q_DD_NEXT_SECTOR, Q_DD_LAST_DIR, Q_DD_BATCHING, Q_DD_STARVED, Q_DISPATCH, Q_STOPPED,
    Q_BATCH, Q_BATCH_FROM, Q_QUEUED, Q_LAST_RET, Q_RUN_WORK_PENDING, Q_LIMITS, Q_WRITE_CACHE,
    Q_N
cdef enum:
    P_OPS, P_PC, P_INFLIGHT, P_WAITING, P_PENDING_BIOS, P_OP_STATE, P_READS, P_RESULTS,
    P_NEXT_BIO, P_STARTED, P_N
cdef Py_ssize_t _MO[M_N]
cdef Py_ssize_t _GO[G_N]
cdef Py_ssize_t _VO[VQ_N]
cdef Py_ssize_t _QO[Q_N]
cdef Py_ssize_t _PO[P_N]
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("guest", "pages", "counters", "transport", "timing"), _MO),
    "Guest": slot_offsets(_Guest, ("vq", "blkmq", "proc", "kick_needed", "done_count", "pdu_base",
                                   "vq_locked", "completed", "zero_page"), _GO),
    "DriverVq": slot_offsets(_DriverVq, (
        "index", "num", "desc", "avail", "used", "notify_off", "free_head", "num_free",
        "num_added", "last_used_idx", "avail_idx_shadow", "avail_flags_shadow", "event",
        "indirect", "broken", "event_triggered", "desc_data", "desc_indir", "extra_next",
        "extra_len", "extra_flags"), _VO),
    "BlkMq": slot_offsets(_BlkMq, (
        "depth", "nr_requests", "tags", "alloc_hint", "rqs", "next_rq", "plug", "dd_fifo",
        "dd_next_sector", "dd_last_dir", "dd_batching", "dd_starved", "dispatch", "stopped",
        "batch", "batch_from", "queued", "last_ret", "run_work_pending", "limits", "write_cache"),
        _QO),
    "Proc": slot_offsets(_Proc, ("ops", "pc", "inflight", "waiting", "pending_bios", "op_state",
                                 "reads", "results", "next_bio", "started"), _PO),
}
cdef bint _SLOTS_OK = all(SLOT_PATHS.values())


cdef inline object SG(object o, Py_ssize_t off):
    """o.<member at off> (o checked at load to be exactly its class)"""
    cdef PyObject* p = vbs_peek(o, off)
    if p == NULL:
        raise AttributeError("member not set")
    return <object>p


cdef inline i64 SI(object o, Py_ssize_t off) except? -1:
    """int(o.<member>) as a C integer (an exact int read from its digits)"""
    cdef PyObject* p = vbs_peek(o, off)
    cdef long long v
    if p != NULL and vbg_ll(<object>p, &v):
        return v
    return <i64>SG(o, off)


cdef inline void SS(object o, Py_ssize_t off, object v) noexcept:
    """o.<member> = v"""
    vbs_set(o, off, v)



# == which kinds may run here ========================================================================
# A kind's bulk handler runs only while emu.sim.steps.REGISTRY holds the Python handler it
# models (a replaced handler -- a test's wrapper, a debugging hook -- runs as is, on the compiled
# engine, as emu_fast._core does); looked up again when REGISTRY's dict version tag changes.
cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define VBG_HAVE_DICT_VERSION 1
    #define VBG_DICT_VERSION(d) ((unsigned long long)((PyDictObject*)(d))->ma_version_tag)
    #else
    #define VBG_HAVE_DICT_VERSION 0
    #define VBG_DICT_VERSION(d) 0ULL
    #endif
    """
    bint VBG_HAVE_DICT_VERSION
    unsigned long long VBG_DICT_VERSION(dict d)

from emu.sim.steps import REGISTRY as _REGISTRY_PY
from emu.guest import vring as _VR
cdef dict _REGISTRY = _REGISTRY_PY
cdef tuple _KINDS = (
    (K_vring_add_split, "vring.add_split", _VR.add_split),
    (K_vring_add_desc, "vring.add_desc", _VR.add_desc),
    (K_vring_add_head, "vring.add_head", _VR.add_head),
    (K_vring_add_avail, "vring.add_avail", _VR.add_avail),
    (K_vring_add_publish, "vring.add_publish", _VR.add_publish),
    (K_vring_kick_prepare, "vring.kick_prepare", _VR.kick_prepare),
    (K_vring_notify, "vring.notify", _VR.notify),
    (K_vring_interrupt, "vring.interrupt", _VR.interrupt),
    (K_vring_disable_cb, "vring.disable_cb", _VR.disable_cb),
    (K_vring_get_buf, "vring.get_buf", _VR.get_buf),
    (K_vring_enable_cb, "vring.enable_cb", _VR.enable_cb),
    (K_vblkd_queue_rq, "vblkd.queue_rq", _VB.queue_rq),
    (K_vblkd_setup_cmd, "vblkd.setup_cmd", _VB.setup_cmd),
    (K_vblkd_map_data, "vblkd.map_data", _VB.map_data),
    (K_vblkd_add_req, "vblkd.add_req", _VB.add_req),
    (K_vblkd_add_ret, "vblkd.add_ret", _VB.add_ret),
    (K_vblkd_queue_rq_end, "vblkd.queue_rq_end", _VB.queue_rq_end),
    (K_vblkd_done, "vblkd.done", _VB.done),
    (K_vblkd_request_done, "vblkd.request_done", _VB.request_done),
    (K_vblkd_done_end, "vblkd.done_end", _VB.done_end),
    (K_blkmq_flush_plug, "blkmq.flush_plug", _Q.flush_plug),
    (K_blkmq_run_queue, "blkmq.run_queue", _Q.run_queue),
    (K_blkmq_dispatch, "blkmq.dispatch", _Q.dispatch),
    (K_blkmq_dispatch_ret, "blkmq.dispatch_ret", _Q.dispatch_ret),
    (K_blkmq_start_request, "blkmq.start_request", _Q.start_request),
    (K_blkmq_end_request, "blkmq.end_request", _Q.end_request),
    (K_blkmq_submit_bio, "blkmq.submit_bio", _P.submit_bio),
    (K_app_op, "app.op", _P.op_step),
    (K_app_resume, "app.resume", _P.resume),
    (K_vblkd_add_err_kick, "vblkd.add_err_kick", _VB.add_err_kick),
    (K_vblkd_add_err_end, "vblkd.add_err_end", _VB.add_err_end),
    (K_vblkd_commit_rqs, "vblkd.commit_rqs", _VB.commit_rqs),
    (K_vblkd_commit_notify, "vblkd.commit_notify", _VB.commit_notify),
    (K_blkmq_run_work, "blkmq.run_work", _Q.run_work),
    (K_blkmq_delay_run, "blkmq.delay_run", _Q.delay_run),
    (K_app_hrtimer, "app.hrtimer", _P.hrtimer_wakeup),
    (K_app_exit, "app.exit", _P.exit_),
    (K_app_start, "app.start", _P.start),
)
cdef bint _kreg[NKINDS]             # REGISTRY still holds the kind's Python handler
cdef bint _kok[NKINDS]              # ... and this stretch's machine is one these handlers know
cdef unsigned long long _reg_version = 0
cdef bint _reg_valid = False


cdef int _check_registry() except -1:
    global _reg_version, _reg_valid
    cdef unsigned long long v = VBG_DICT_VERSION(_REGISTRY)
    cdef int k
    if VBG_HAVE_DICT_VERSION and _reg_valid and v == _reg_version:
        return 0
    for k in range(NKINDS):
        _kreg[k] = False
    for k, name, fn in _KINDS:
        entry = _REGISTRY.get(name)
        _kreg[k] = type(entry) is tuple and len(<tuple>entry) == 2 and (<tuple>entry)[0] is fn
    _reg_version = v
    _reg_valid = True
    return 0


cdef int _set_ok(bint ready) except -1:
    if ready:
        _check_registry()
        memcpy(_kok, _kreg, sizeof(_kok))
    else:
        memset(_kok, 0, sizeof(_kok))
    return 0


# A class's attributes checked once per version of the class: CPython gives a class a new
# version tag whenever one of its (or its bases') attributes is set or deleted (0: none yet).
cdef extern from *:
    """
    #define VBG_TYPE_TAG(t) ((unsigned long long)((PyTypeObject*)(t))->tp_version_tag)
    """
    unsigned long long VBG_TYPE_TAG(object t)


# == per-stretch state (the load hook) =============================================================
cdef object _m = None
cdef object _g = None
cdef object _vq = None
cdef object _q = None
cdef object _p = None
cdef object _mem = None
cdef object _pages = None
cdef dict _counters = None
cdef dict _rqs = None
cdef bint _ready = False
cdef bint _qok_known = False    # (_q_ok found this stretch's blk-mq lists lists)
cdef bint _notify_ok = False
cdef i64 _vmexit_ns = 0
cdef i64 _S_EMPTY = 0, _S_OK = 0, _S_IOERR = 0, _S_NOTSUPP = 0      # str argument indices

# m.counters' "kicks" and "kicks_suppressed": only these handlers change them in a stretch (the
# compiled engine's steps run between stretches), so an entry that holds an exact int at load is
# counted in C and the stretch's increments added to it at store (as _bulk_dev does its
# counters); an entry missing or of another type at load is incremented at once, as before.
cdef enum:
    KC_KICKS, KC_SUPPRESSED, KC_N
cdef tuple _KC_KEYS = ("kicks", "kicks_suppressed")
cdef i64 _kc_d[KC_N]            # the stretch's increments
cdef bint _kc_ok[KC_N]          # the entry held an exact int at load
cdef long long _KC_DEFERRED = 0     # increments counted in C (tests)


cdef int _kc_load(dict counters) except -1:
    cdef int i
    for i in range(KC_N):
        _kc_d[i] = 0
        _kc_ok[i] = counters is not None and type(counters.get(_KC_KEYS[i])) is int
    return 0


cdef int _kc_store() except -1:
    """the stretch's increments added to m.counters' entries"""
    cdef int i
    cdef i64 d
    for i in range(KC_N):
        d = _kc_d[i]
        _kc_d[i] = 0
        _kc_ok[i] = False
        if d:
            k = _KC_KEYS[i]
            _counters[k] = _counters[k] + d
    return 0


cdef inline int _kc_bump(int i) except -1:
    """m.counters[key] += 1"""
    global _KC_DEFERRED
    if _kc_ok[i]:
        _kc_d[i] += 1
        _KC_DEFERRED += 1
    else:
        k = _KC_KEYS[i]
        _counters[k] += 1
    return 0


def kick_stats():
    """(kicks and suppressed kicks counted in C, the stretch's increments not yet added) (tests)"""
    return _KC_DEFERRED, _kc_d[KC_KICKS] + _kc_d[KC_SUPPRESSED]


cdef int _load(Core* c) except -1:
    global _m, _g, _vq, _q, _p, _mem, _pages, _counters, _rqs, _ready, _notify_ok, _vmexit_ns
    global _S_EMPTY, _S_OK, _S_IOERR, _S_NOTSUPP, _tr_tag, _wp_ok, _wb_on, _lim_obj, _qok_known
    _lim_obj = None
    _qok_known = False
    _ready = False
    _set_ok(False)
    _kc_load(None)
    _rq_forget()
    _wflush_all()               # (none: the last stretch's store wrote them)
    _ad_forget()
    _wb_on = False
    _pool_free(&_pl_rq)
    _pool_free(&_pl_done)
    _pool_free(&_pl_bio)
    _pool_free(&_pl_l1)
    m = <object>c.m
    if not _SLOTS_OK or type(m) is not _Machine or c.vcpu < 0:
        return 1            # the core may run; these handlers bail (see _ready)
    g = SG(m, _MO[M_GUEST])
    if type(g) is not _Guest:
        return 1
    vq = SG(g, _GO[G_VQ])
    q = SG(g, _GO[G_BLKMQ])
    p = SG(g, _GO[G_PROC])
    counters = SG(m, _MO[M_COUNTERS])
    if (type(vq) is not _DriverVq or type(q) is not _BlkMq or type(p) is not _Proc
            or type(counters) is not dict or type(SG(q, _QO[Q_RQS])) is not dict):
        return 1
    _m, _g, _vq, _q, _p = m, g, vq, q, p
    _mem = <object>c.mem
    _pages = SG(m, _MO[M_PAGES])
    _pa_load(_pages)
    _counters = counters
    _kc_load(counters)
    _rqs = SG(q, _QO[Q_RQS])
    tr = SG(m, _MO[M_TRANSPORT])
    _notify_ok = False
    if type(tr) is _Transport:
        if _tr_tag != 0 and VBG_TYPE_TAG(_Transport) == _tr_tag:
            _notify_ok = True               # (checked for this version of the class)
        else:
            _notify_ok = _Transport.mmio_write is _PY_MMIO_WRITE
            _tr_tag = VBG_TYPE_TAG(_Transport) if _notify_ok else 0
        _notify_ok = _notify_ok and "mmio_write" not in tr.__dict__
    vm = SG(m, _MO[M_TIMING]).vmexit_ns
    if not _small(vm):
        _notify_ok = False
    else:
        _vmexit_ns = vm
    _wp_ok = _P.write_pattern is _PY_WRITE_PATTERN
    _S_EMPTY = str_arg(c, "")
    _S_OK = str_arg(c, "OK")
    _S_IOERR = str_arg(c, "IOERR")
    _S_NOTSUPP = str_arg(c, "NOTSUPP")
    _ready = True
    _wb_on = True
    _set_ok(True)
    return 1


cdef int _store(Core* c) except -1:
    global _m, _g, _vq, _q, _p, _mem, _pages, _counters, _rqs, _ready, _wb_on, _qok_known
    _qok_known = False
    try:
        _wflush_all()           # the kept request fields (and a lazy add state) into the dicts
    finally:
        _wb_on = False
        _ad_forget()
        _kc_store()             # (the counters' increments)
        _po_flush_all()         # (the allocator's kept entries)
        _os_flush()             # (op_state's)
        _pool_free(&_pl_rq)     # (the kept dict shells)
        _pool_free(&_pl_done)
        _pool_free(&_pl_bio)
        _pool_free(&_pl_l1)
    _m = _g = _vq = _q = _p = _mem = _pages = None
    _pa_load(None)
    _counters = None
    _rqs = None
    _ready = False
    _set_ok(False)
    _rq_forget()
    _ad_forget()
    return 0


# == small helpers ===================================================================================

cdef int _del0(list l) except -1:
    """l.pop(0), its value dropped (list_ass_slice, as list.pop does for an inner index)"""
    if not _LIST_SIZE(l):
        raise IndexError("pop from empty list")
    return _list_set_slice(l, 0, 1, NULL)


cdef int _remove(object l, object x) except -1:
    """l.remove(x) (a list: the same comparisons, the same deletion)"""
    cdef Py_ssize_t i
    if type(l) is not list:
        l.remove(x)
        return 0
    for i in range(_LIST_SIZE(l)):
        if _rich_eq(<object>_LIST_ITEM(l, i), x, 2):     # Py_EQ
            return _list_set_slice(l, i, i + 1, NULL)
    raise ValueError("list.remove(x): x not in list")


cdef bint _wp_ok = False        # emu.guest.process.write_pattern is emu.workload's (per stretch)


# The request the last lookup found: a request's steps follow one another, and within a stretch
# only these handlers change rqs (the entry of a request goes at _free_request; a new one is
# added under a new id); cleared at load and store.
cdef i64 _c_rid = -1
cdef dict _c_rq = None


cdef inline dict _rq(i64 rid):
    """m.guest.blkmq.rqs[rid] (None when there is no such request or it is not a dict)"""
    global _c_rid, _c_rq
    if rid == _c_rid and _c_rq is not None:
        return _c_rq
    o = _rqs.get(rid)
    if type(o) is not dict:
        return None
    _c_rid = rid
    _c_rq = <dict>o
    return <dict>o


cdef inline object _rqo(object rid):
    """m.guest.blkmq.rqs[rid] for a rid object (the request the last lookup found when rid is
    an int of its id, else the dict's own lookup, raising as it does)"""
    cdef long long r
    if _c_rq is not None and vbg_ll(rid, &r) and r == _c_rid:
        return _c_rq
    return _rqs[rid]


cdef inline void _rq_remember(object rid, dict rq) noexcept:
    """rq is now m.guest.blkmq.rqs[rid]"""
    global _c_rid, _c_rq
    cdef long long r
    if vbg_ll(rid, &r) and r >= 0:
        _c_rid = r
        _c_rq = rq
    else:
        _c_rid = -1
        _c_rq = None


cdef inline void _rq_forget() noexcept:
    global _c_rid, _c_rq
    _c_rid = -1
    _c_rq = None


cdef extern from *:
    """
    static inline int vbg_chars_eq(const void *a, const void *b, size_t n) {
        const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
        size_t i;
        if (n > 32)
            return memcmp(a, b, n) == 0;
        for (i = 0; i < n; i++)
            if (x[i] != y[i])
                return 0;
        return 1;
    }
    """
    bint vbg_chars_eq(const void* a, const void* b, size_t n) noexcept


cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)


cdef extern from *:
    """
    /* a == b for an exact str b: identity, then the length, the kind and the characters (a
       str subclass or another type: PyObject_RichCompareBool) */
    static inline __attribute__((always_inline)) int vbg_eq(PyObject *a, PyObject *b) {
        Py_ssize_t n;
        if (a == b)
            return 1;
        if (!PyUnicode_CheckExact(a))
            return PyObject_RichCompareBool(a, b, Py_EQ);
        n = PyUnicode_GET_LENGTH(b);
        if (PyUnicode_GET_LENGTH(a) != n || PyUnicode_KIND(a) != PyUnicode_KIND(b))
            return 0;
        return vbg_chars_eq(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)(n * PyUnicode_KIND(b)));
    }
    """
    int vbg_eq(object a, object b) except -1


cdef inline bint _eq(object a, str b) except -1:
    """a == b for a str literal b (vbg_eq)"""
    return vbg_eq(a, b)


cdef extern from *:
    """
    /* PyObject_IsTrue(o): True, False, None and an exact list, int or str answered in place
       (what their own slots would answer); anything else asks PyObject_IsTrue */
    static inline __attribute__((always_inline)) int vbg_true(PyObject *o) {
        if (o == Py_True)
            return 1;
        if (o == Py_False || o == Py_None)
            return 0;
        if (PyList_CheckExact(o) || PyLong_CheckExact(o))
            return Py_SIZE(o) != 0;
        if (PyUnicode_CheckExact(o))
            return PyUnicode_GET_LENGTH(o) != 0;
        return PyObject_IsTrue(o);
    }
    """
    int vbg_true(object o) except -1


cdef inline bint _t(object o) except -1:
    """bool(o) (vbg_true)"""
    return vbg_true(o)


cdef inline bint _is_int(object o) noexcept:
    return type(o) is int


cdef extern from *:
    """
    /* 1: o is exactly an int that fits a long long (*out, read from its digits when it has
       at most two); 0: not */
    static inline __attribute__((always_inline)) int vbg_ll(PyObject *o, long long *out) {
        int ovf = 0;
        long long v;
        if (!PyLong_CheckExact(o))
            return 0;
    #if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
        {
            Py_ssize_t sz = Py_SIZE(o);
            const digit *d = ((PyLongObject *)o)->ob_digit;
            if (sz == 0) { *out = 0; return 1; }
            if (sz == 1) { *out = (long long)d[0]; return 1; }
            if (sz == 2) { *out = (long long)d[0] | ((long long)d[1] << 30); return 1; }
        }
    #endif
        v = PyLong_AsLongLongAndOverflow(o, &ovf);
        if (ovf || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        *out = v;
        return 1;
    }
    """
    bint vbg_ll(object o, long long* out) noexcept


cdef inline bint _in(object o, long long hi) noexcept:
    """o is an int in [0, hi]"""
    cdef long long v
    return vbg_ll(o, &v) and 0 <= v <= hi


cdef inline bint _small(object o) noexcept:
    """o is an int in [0, 2**52)"""
    return _in(o, LIM - 1)


cdef inline void _st(uint8_t* p, uint64_t v, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        p[i] = <uint8_t>(v >> (8 * i))


cdef int _write_desc(Core* c, i64 gpa, uint64_t addr, uint64_t length, uint64_t flags,
                     uint64_t nxt) except -1:
    """emu.guest.vring.write_desc (struct virtq_desc "<QIHH"); the caller checked ram_ok"""
    cdef uint8_t buf[16]
    _st(buf, addr, 8)
    _st(buf + 8, length, 4)
    _st(buf + 12, flags, 2)
    _st(buf + 14, nxt, 2)
    return ram_write(c, gpa, buf, 16)


cdef inline bint _u64(object o) noexcept:
    """o is an int struct.pack("Q") takes (all guest addresses here are below 2**63)"""
    return _in(o, 0x7FFFFFFFFFFFFFFF)


cdef inline bint _u32(object o) noexcept:
    return _in(o, 0xFFFFFFFF)


cdef inline bint _u16(object o) noexcept:
    return _in(o, 0xFFFF)


cdef inline bint _bool(object o) noexcept:
    return o is True or o is False


# == dict access without the C API's generic paths (CPython 3.11's dict layout) ====================
# A lookup of a str key in a dict of str keys (what every request, bio and state dict here is)
# probes the table for the key object itself first (keys are interned identifiers: the Python
# handlers' constants and these handlers' are the same objects); anything else -- another
# layout, another key object, a miss -- asks PyDict_GetItemWithError, so the answer is always
# the C API's.  A new dict of known keys is a copy of a template dict (dict.copy(): its keys
# table cloned) whose values are then put in place, as BUILD_CONST_KEY_MAP's would be (same
# keys, order, table size, GC tracking); checked once at import, else built by PyDict_SetItem.
cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    #define VBG_DICT_FAST 1

    static PyObject *vbg_absent = NULL;      /* vbg_slot's "surely not there" */
    static inline __attribute__((always_inline)) PyObject **vbg_slot(PyObject *d, PyObject *key) {
        PyDictObject *mp = (PyDictObject *)d;
        vb_dictkeys *dk = (vb_dictkeys *)mp->ma_keys;
        Py_hash_t h = ((PyASCIIObject *)key)->hash;
        size_t mask, i, perturb;
        int ib, n;
        if (mp->ma_values != NULL || dk->dk_kind != 1 || h == -1)
            return NULL;
        mask = ((size_t)1 << dk->dk_log2_size) - 1;
        i = (size_t)h & mask;
        perturb = (size_t)h;
        ib = dk->dk_log2_index_bytes - dk->dk_log2_size;
        for (n = 0; n < 32; n++) {
            Py_ssize_t ix;
            if (ib == 0) ix = ((const int8_t *)dk->dk_indices)[i];
            else if (ib == 1) ix = ((const int16_t *)dk->dk_indices)[i];
            else if (ib == 2) ix = ((const int32_t *)dk->dk_indices)[i];
            else ix = (Py_ssize_t)((const int64_t *)dk->dk_indices)[i];
            if (ix == -1)            /* (no key of this hash on the way: no equal key) */
                return &vbg_absent;
            if (ix >= 0) {
                PyObject *k = VB_UENTRIES(dk)[ix].me_key;
                if (k == key)
                    return &VB_UENTRIES(dk)[ix].me_value;
                if (((PyASCIIObject *)k)->hash == h)
                    return NULL;         /* maybe an equal key: the C API decides */
            }
            perturb >>= 5;
            i = (i * 5 + perturb + 1) & mask;
        }
        return NULL;
    }

    /* d[key] borrowed, or NULL (absent; an error set if the lookup raised) */
    static inline __attribute__((always_inline)) PyObject *vbg_get(PyObject *d, PyObject *key) {
        PyObject **s = vbg_slot(d, key);
        if (s != NULL && *s != NULL)
            return *s;
        if (s == &vbg_absent)
            return NULL;
        return PyDict_GetItemWithError(d, key);
    }

    /* entries [from, n) of a str-keys table get values vals[from..n) in place; whether any of
       vals[0..n) may be GC-tracked (the dict must be, then) */
    static int vbg_put_values(vb_uentry *ep, PyObject *const *vals, Py_ssize_t from,
                              Py_ssize_t n) {
        Py_ssize_t i;
        int track = 0;
        for (i = 0; i < n; i++) {
            PyObject *old = ep[i].me_value, *v = vals[i];
            if (i >= from) {
                Py_INCREF(v);
                ep[i].me_value = v;
                Py_XDECREF(old);
            }
            if (!track && VB_MAY_BE_TRACKED(v))
                track = 1;
        }
        return track;
    }

    /* a copy of tmpl (n str keys, unicode table, no deleted entries) with values vals */
    static PyObject *vbg_build(PyObject *tmpl, PyObject *const *vals, Py_ssize_t n) {
        PyObject *d = PyDict_Copy(tmpl);
        vb_dictkeys *dk;
        if (d == NULL)
            return NULL;
        dk = (vb_dictkeys *)((PyDictObject *)d)->ma_keys;
        if (((PyDictObject *)d)->ma_values != NULL || dk->dk_kind != 1 || dk->dk_nentries != n
                || ((PyDictObject *)d)->ma_used != n || (void *)dk == (void *)((PyDictObject *)tmpl)->ma_keys) {
            Py_DECREF(d);
            PyErr_SetString(PyExc_SystemError, "vbg_build: unexpected dict layout");
            return NULL;
        }
        if (vbg_put_values(VB_UENTRIES(dk), vals, 0, n) && !PyObject_GC_IsTracked(d))
            PyObject_GC_Track(d);
        return d;
    }
    #else
    #define VBG_DICT_FAST 0
    static inline PyObject *vbg_get(PyObject *d, PyObject *key) { return PyDict_GetItemWithError(d, key); }
    static PyObject *vbg_build(PyObject *tmpl, PyObject *const *vals, Py_ssize_t n) {
        PyErr_SetString(PyExc_SystemError, "vbg_build: not this CPython");
        return NULL;
    }
    #endif
    /* d.get(key, dflt) (a new reference; NULL: the lookup raised) */
    static inline __attribute__((always_inline)) PyObject *vbg_getdef(PyObject *d, PyObject *key, PyObject *dflt) {
        PyObject *v;
        if (!PyDict_CheckExact(d) || !PyUnicode_CheckExact(key))
            return PyObject_CallMethod(d, "get", "OO", key, dflt);
        v = vbg_get(d, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            v = dflt;
        }
        Py_INCREF(v);
        return v;
    }
    #define vbg_getnone(d, k) vbg_getdef((d), (k), Py_None)
    /* d[key] (a new reference; NULL: KeyError or what the lookup raised) */
    static inline __attribute__((always_inline)) PyObject *vbg_getitem(PyObject *d, PyObject *key) {
        PyObject *v;
        if (!PyDict_CheckExact(d) || !PyUnicode_CheckExact(key))
            return PyObject_GetItem(d, key);
        v = vbg_get(d, key);
        if (v == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, key);
            return NULL;
        }
        Py_INCREF(v);
        return v;
    }
    """
    bint VBG_DICT_FAST
    object vbg_build(object tmpl, PyObject** vals, Py_ssize_t n)
    object DGET "vbg_getnone"(object d, object key)               # d.get(key)
    object DGETD "vbg_getdef"(object d, object key, object dflt)  # d.get(key, dflt)
    object DG "vbg_getitem"(object d, object key)                 # d[key]


# the templates: dict displays evaluated by CPython itself (BUILD_CONST_KEY_MAP's dicts)
cdef dict _T_RQ = eval('{"id": None, "tag": None, "op": None, "sector": None, "bytes": None, '
                       '"bios": None, "nsegs": None, "nomerge": None, "unmap": None, '
                       '"stage": None, "head": None, "table": None, "payload": None, "status": None}')
cdef dict _T_BIO = eval('{"id": None, "op_idx": None, "op": None, "sector": None, "bytes": None, '
                        '"segs": None}')
cdef dict _T_ADD = eval('{"indirect": None, "table": None, "k": None, "i": None, "head": None, '
                        '"used": None}')
cdef dict _T_OPST = eval('{"bios": None, "status": None, "buf": None}')
cdef dict _T_DONE = eval('{"id": None, "op": None, "sector": None, "bytes": None, "status": None}')
cdef dict _T_RES = eval('{"n": None, "line": None, "op": None, "status": None}')
cdef object _ZERO = 0
cdef long long _BUILT = 0          # dicts made from a template (tests)


cdef bint _check_build() except -1:
    """vbg_build makes what the display makes (keys, order, values, table size, tracking)"""
    cdef PyObject* vals[14]
    import sys, gc
    if not VBG_DICT_FAST:
        return False
    objs = [1, [2], "x", None, (3,), 4.5, True, 0, -1, 2**70, "y", None, {}, b""]
    for i in range(14):
        vals[i] = <PyObject*>objs[i]
    try:
        d = vbg_build(_T_RQ, vals, 14)
    except SystemError:
        return False
    ref = eval('{"id": a[0], "tag": a[1], "op": a[2], "sector": a[3], "bytes": a[4], '
               '"bios": a[5], "nsegs": a[6], "nomerge": a[7], "unmap": a[8], '
               '"stage": a[9], "head": a[10], "table": a[11], "payload": a[12], "status": a[13]}',
               {"a": objs})
    ok = (list(d.items()) == list(ref.items()) and sys.getsizeof(d) == sys.getsizeof(ref)
          and gc.is_tracked(d) == gc.is_tracked(ref)
          and all(DG(d, k) is ref[k] for k in ref) and DGET(d, "nope") is None)
    for i in range(4):
        vals[i] = <PyObject*>objs[i + 6]        # (no containers: untracked, as the display)
    d = vbg_build(_T_OPST, vals, 3)
    ref = eval('{"bios": a[6], "status": a[7], "buf": a[8]}', {"a": objs})
    return ok and d == ref and not gc.is_tracked(d) and sys.getsizeof(d) == sys.getsizeof(ref)


cdef bint _BUILD_OK = _check_build()


cdef inline object _mk(dict tmpl, PyObject** vals, Py_ssize_t n):
    """a new dict of tmpl's keys with values vals (n of them)"""
    global _BUILT
    cdef Py_ssize_t i
    cdef dict d
    if _BUILD_OK:
        _BUILT += 1
        return vbg_build(tmpl, vals, n)
    d = {}
    i = 0
    for k in tmpl:
        PyDict_SetItem(d, k, <object>vals[i])
        i += 1
    return d


def dict_stats():
    """(the fast dict paths are on, dicts made from templates) (tests)"""
    return bool(_BUILD_OK), _BUILT


# A request dict freed by end_request, or a completion entry leaving m.guest.completed, that
# only the handler holds and that is still laid out exactly as a copy of its template (the
# same key objects in order, the same table and index, nothing added or deleted) is not
# deallocated but kept (_pool_put: its values dropped there and then, as its deallocation
# would, untracked) and refilled as the next dict of that template (_pool_get: a new version
# tag by PyDict_SetItem of its first value, the others put in place, tracked as a new copy
# would be): the same dict a copy of the template makes.  The kept shells are freed when the
# stretch ends.
cdef extern from *:
    """
    #if VBG_DICT_FAST
    /* d laid out exactly as a copy of tmpl (n str keys): 1, else 0 */
    static int vbg_like_tmpl(PyObject *d, PyObject *tmpl, Py_ssize_t n) {
        PyDictObject *mp = (PyDictObject *)d, *tp = (PyDictObject *)tmpl;
        vb_dictkeys *dk, *tk;
        Py_ssize_t i;
        if (!PyDict_CheckExact(d) || mp->ma_values != NULL || tp->ma_values != NULL
                || mp->ma_used != n || tp->ma_used != n)
            return 0;
        dk = (vb_dictkeys *)mp->ma_keys;
        tk = (vb_dictkeys *)tp->ma_keys;
        if (dk == tk || dk->dk_refcnt != 1 || dk->dk_kind != 1 || tk->dk_kind != 1
                || dk->dk_log2_size != tk->dk_log2_size
                || dk->dk_log2_index_bytes != tk->dk_log2_index_bytes
                || dk->dk_nentries != n || tk->dk_nentries != n || dk->dk_usable != tk->dk_usable)
            return 0;
        for (i = 0; i < n; i++)
            if (VB_UENTRIES(dk)[i].me_key != VB_UENTRIES(tk)[i].me_key
                    || VB_UENTRIES(dk)[i].me_value == NULL)
                return 0;
        return memcmp(dk->dk_indices, tk->dk_indices, (size_t)1 << dk->dk_log2_index_bytes) == 0;
    }
    /* d's n values dropped (None in their place), d untracked */
    static void vbg_clear_values(PyObject *d, Py_ssize_t n) {
        vb_uentry *ep = VB_UENTRIES((vb_dictkeys *)((PyDictObject *)d)->ma_keys);
        Py_ssize_t i;
        if (PyObject_GC_IsTracked(d))
            PyObject_GC_UnTrack(d);
        for (i = 0; i < n; i++) {
            PyObject *old = ep[i].me_value;
            Py_INCREF(Py_None);
            ep[i].me_value = Py_None;
            Py_DECREF(old);
        }
    }
    /* d (vbg_clear_values'd) given values vals: the first by PyDict_SetItem (a new version
       tag), the rest in place; tracked when a value may be (as vbg_build) */
    static int vbg_refill(PyObject *d, PyObject *const *vals, Py_ssize_t n) {
        vb_uentry *ep = VB_UENTRIES((vb_dictkeys *)((PyDictObject *)d)->ma_keys);
        int track;
        if (PyDict_SetItem(d, ep[0].me_key, vals[0]) < 0)
            return -1;
        track = vbg_put_values(VB_UENTRIES((vb_dictkeys *)((PyDictObject *)d)->ma_keys),
                               vals, 1, n);
        if (track && !PyObject_GC_IsTracked(d))
            PyObject_GC_Track(d);
        else if (!track && PyObject_GC_IsTracked(d))
            PyObject_GC_UnTrack(d);
        return 0;
    }
    #else
    static int vbg_like_tmpl(PyObject *d, PyObject *tmpl, Py_ssize_t n) { return 0; }
    static void vbg_clear_values(PyObject *d, Py_ssize_t n) { }
    static int vbg_refill(PyObject *d, PyObject *const *vals, Py_ssize_t n) { return -1; }
    #endif
    """
    bint vbg_like_tmpl(object d, object tmpl, Py_ssize_t n) noexcept
    void vbg_clear_values(object d, Py_ssize_t n) noexcept
    bint vbg_like_tmpl_p "vbg_like_tmpl"(PyObject* d, object tmpl, Py_ssize_t n) noexcept
    void vbg_clear_values_p "vbg_clear_values"(PyObject* d, Py_ssize_t n) noexcept
    int vbg_refill(object d, PyObject** vals, Py_ssize_t n) except -1

cdef enum:
    POOL_MAX = 4
cdef struct DPool:
    int n
    PyObject* d[POOL_MAX]       # (references) cleared shells
cdef DPool _pl_rq, _pl_done, _pl_bio, _pl_l1    # (_pl_l1: one-slot lists, a freed request's "bios")
_pl_rq.n = 0
_pl_done.n = 0
_pl_bio.n = 0
_pl_l1.n = 0
cdef long long _POOL_PUT = 0, _POOL_GOT = 0      # (tests: pool_stats)
cdef long long _BIO_PUT = 0, _BIO_GOT = 0        # (tests: bio_pool_stats)
cdef long long _L1_PUT = 0, _L1_GOT = 0


cdef int _pool_put(DPool* pl, object d, dict tmpl, Py_ssize_t n) except -1:
    """d (going away: only the caller holds it) kept for the next dict of tmpl's keys when it
    is laid out as tmpl's copy (its values dropped now); else left to its deallocation"""
    global _POOL_PUT
    if (not _BUILD_OK or not _wb_on or pl.n == POOL_MAX or Py_REFCNT(<PyObject*>d) != 1
            or not vbg_like_tmpl(d, tmpl, n)):
        return 0
    Py_INCREF(<PyObject*>d)
    pl.d[pl.n] = <PyObject*>d
    pl.n += 1
    vbg_clear_values(d, n)
    _POOL_PUT += 1
    return 0


cdef object _pool_get(DPool* pl, dict tmpl, PyObject** vals, Py_ssize_t n):
    """a new dict of tmpl's keys with values vals: a kept shell refilled, else _mk"""
    global _POOL_GOT, _BUILT
    cdef PyObject* x
    if not pl.n:
        return _mk(tmpl, vals, n)
    pl.n -= 1
    x = pl.d[pl.n]
    pl.d[pl.n] = NULL
    d = <object>x
    Py_DECREF(x)                # (d holds it now)
    vbg_refill(d, vals, n)
    _POOL_GOT += 1
    _BUILT += 1
    return d


cdef void _pool_free(DPool* pl) noexcept:
    cdef PyObject* x
    while pl.n:
        pl.n -= 1
        x = pl.d[pl.n]
        pl.d[pl.n] = NULL
        Py_DECREF(x)


def pool_stats():
    """(dicts kept for reuse, dicts refilled from them) (tests)"""
    return _POOL_PUT, _POOL_GOT


# A freed request's bios (blk_mq_end_request's bio_endio: the request's bio list and its bios
# go with it) are kept the same way when nothing else can reach them: the request dict only the
# handler holds, its "bios" list only the request, each bio dict only that list (and laid out as
# _T_BIO's copy); app.op's next bios are refilled from them (emu.guest.process._bio).
cdef int _bios_put(dict rq) except -1:
    """rq's bios (rq going away: only the caller holds it) kept for the next bios"""
    global _BIO_PUT, _L1_PUT
    cdef PyObject* x
    cdef Py_ssize_t i
    if not _BUILD_OK or not _wb_on or _pl_bio.n == POOL_MAX or Py_REFCNT(<PyObject*>rq) != 1:
        return 0
    bl = DGET(rq, "bios")
    if type(bl) is not list or Py_REFCNT(<PyObject*>bl) != 2:    # (rq's and bl's)
        return 0
    for i in range(_LIST_SIZE(bl)):
        x = _LIST_ITEM(bl, i)
        if _pl_bio.n == POOL_MAX or Py_REFCNT(x) != 1 or not vbg_like_tmpl_p(x, _T_BIO, 6):
            continue
        Py_INCREF(x)            # (the pool's; the list's goes with the list)
        _pl_bio.d[_pl_bio.n] = x
        _pl_bio.n += 1
        vbg_clear_values_p(x, 6)
        _BIO_PUT += 1
    if _pl_l1.n < POOL_MAX and vbg_list1_keep(bl):     # (the list itself, for submit_bio's next)
        Py_INCREF(<PyObject*>bl)
        _pl_l1.d[_pl_l1.n] = <PyObject*>bl
        _pl_l1.n += 1
        _L1_PUT += 1
    return 0


cdef extern from *:
    """
    /* l (an exact list of one item, one slot allocated, only the caller holding it besides its
       owner) emptied for reuse: its item dropped, its slot kept, untracked; 1, else 0 */
    static int vbg_list1_keep(PyObject *l) {
        PyListObject *o = (PyListObject *)l;
        PyObject *x;
        if (!PyList_CheckExact(l) || Py_SIZE(l) != 1 || o->allocated != 1 || o->ob_item == NULL)
            return 0;
        x = o->ob_item[0];
        o->ob_item[0] = NULL;
        Py_SET_SIZE(o, 0);
        if (PyObject_GC_IsTracked(l))
            PyObject_GC_UnTrack(l);
        Py_XDECREF(x);
        return 1;
    }
    /* a kept list refilled as [x] (what PyList_New(1) and PyList_SET_ITEM make, tracked) */
    static void vbg_list1_fill(PyObject *l, PyObject *x) {
        Py_INCREF(x);
        ((PyListObject *)l)->ob_item[0] = x;
        Py_SET_SIZE((PyListObject *)l, 1);
        PyObject_GC_Track(l);
    }
    """
    bint vbg_list1_keep(object l) noexcept
    void vbg_list1_fill(object l, object x) noexcept


cdef list _list1(object x):
    """[x] (a kept list refilled, else a new one)"""
    global _L1_GOT
    cdef PyObject* p
    if not _pl_l1.n:
        return [x]
    _pl_l1.n -= 1
    p = _pl_l1.d[_pl_l1.n]
    _pl_l1.d[_pl_l1.n] = NULL
    l = <list>p
    Py_DECREF(p)                # (l holds it now)
    vbg_list1_fill(l, x)
    _L1_GOT += 1
    return l


def bio_pool_stats():
    """(bio dicts kept for reuse, bio dicts refilled from them, bio lists kept, bio lists
    refilled) (tests)"""
    return _BIO_PUT, _BIO_GOT, _L1_PUT, _L1_GOT


def dict_get(d, key, dflt=None):
    """d.get(key, dflt) as the handlers look it up (tests)"""
    return DGETD(d, key, dflt)


def dict_item(d, key):
    """d[key] as the handlers look it up (tests)"""
    return DG(d, key)


# == the guest's page allocator (emu/mem/page_alloc.py), in C ======================================
# PageAllocator.alloc_pages / free_pages / kmalloc / kfree over the allocator's own bytearray
# and dicts (looked up at load; nothing here rebinds them), when the allocator is exactly a
# PageAllocator whose methods are the Python ones (checked at load); else emu_fast._support's
# (which call an override itself).

cdef bint _pa_own = False
cdef object _pa_used = None
cdef dict _pa_slab_free = None
cdef dict _pa_slab_objs = None
cdef dict _pa_large = None
cdef tuple _KM_CLASSES = tuple(KMALLOC_CLASSES)
cdef long long _KM_C[32]
cdef Py_ssize_t _NKM = len(_KM_CLASSES)
assert _NKM <= 32 and all(type(k) is int and 0 < k < LIM for k in _KM_CLASSES)
for _j in range(_NKM):
    _KM_C[_j] = _KM_CLASSES[_j]


cdef object _PY_PA_ALLOC = PageAllocator.alloc_pages
cdef object _PY_PA_FREE = PageAllocator.free_pages
cdef object _PY_PA_KMALLOC = PageAllocator.kmalloc
cdef object _PY_PA_KFREE = PageAllocator.kfree
cdef object _PageAllocator = PageAllocator
cdef unsigned long long _pa_tag = 0      # PageAllocator's version when its methods were checked
cdef unsigned long long _tr_tag = 0      # Transport's, for mmio_write
assert sorted(f.name for f in __import__("dataclasses").fields(PageAllocator)) == [
    "large", "size", "slab_free", "slab_objs", "start", "used"]    # (_pa_load counts them)


# The allocator's churn within a stretch: large[gpa] = npages (alloc_pages) and
# slab_objs[gpa] = cls (kmalloc) of a key neither dict holds are kept here, in the order stored,
# while only these handlers look at the dicts; one freed in the stretch (free_pages, kfree, the
# slab taking a page) leaves before the dict ever held it -- the Python engine's store and pop
# leave the same contents in the same order -- and the rest are stored into the dicts, in
# order, when the stretch ends (_po_flush_all) or the list is full.  A key the dict already
# holds is stored at once (Python updates it in place); a key that is not an exact int takes
# the dict's own path, the kept ones stored first.
cdef enum:
    PO_MAX = 16
cdef struct POver:
    int n
    int64_t k[PO_MAX]           # the gpa
    int64_t v[PO_MAX]           # large: npages; slab_objs: the size class's index
cdef POver _po_large, _po_slab
_po_large.n = 0
_po_slab.n = 0
cdef long long _PO_KEPT = 0, _PO_DROPPED = 0, _PO_STORED = 0    # (tests: alloc_stats)


cdef int _po_flush(POver* o, dict d, bint slab) except -1:
    """o's kept entries stored into d, in order"""
    global _PO_STORED
    cdef int j, n = o.n
    o.n = 0
    for j in range(n):
        if slab:
            PyDict_SetItem(d, o.k[j], _KM_CLASSES[o.v[j]])
        else:
            PyDict_SetItem(d, o.k[j], o.v[j])
        _PO_STORED += 1
    return 0


cdef int _po_flush_all() except -1:
    if _pa_large is not None:
        _po_flush(&_po_large, _pa_large, False)
    if _pa_slab_objs is not None:
        _po_flush(&_po_slab, _pa_slab_objs, True)
    _po_large.n = 0
    _po_slab.n = 0
    return 0


cdef int _po_set(POver* o, dict d, bint slab, int64_t k, object ko, int64_t v, object vo) except -1:
    """d[ko] = vo (ko an exact int of value k)"""
    global _PO_KEPT
    cdef int j
    for j in range(o.n):
        if o.k[j] == k:
            o.v[j] = v
            return 0
    if not _wb_on or o.n == PO_MAX or ko in d:
        if o.n == PO_MAX:
            _po_flush(o, d, slab)
        d[ko] = vo
        return 0
    o.k[o.n] = k
    o.v[o.n] = v
    o.n += 1
    _PO_KEPT += 1
    return 0


cdef bint _po_pop(POver* o, object ko, int64_t* v) noexcept:
    """the kept entry of key ko taken out (*v: its value): True; False: ko is not an exact int
    or no entry is kept for it"""
    global _PO_DROPPED
    cdef long long k
    cdef int j
    if not o.n or not vbg_ll(ko, &k):
        return False
    for j in range(o.n):
        if o.k[j] == k:
            v[0] = o.v[j]
            o.n -= 1
            if j < o.n:
                memmove(&o.k[j], &o.k[j + 1], (o.n - j) * sizeof(int64_t))
                memmove(&o.v[j], &o.v[j + 1], (o.n - j) * sizeof(int64_t))
            _PO_DROPPED += 1
            return True
    return False


cdef int _po_other(POver* o, object ko, dict d, bint slab) except -1:
    """before d's own path for key ko: a key that is not an exact int could equal a kept one
    (the kept ones are stored first)"""
    if o.n and type(ko) is not int:
        _po_flush(o, d, slab)
    return 0


def alloc_stats():
    """(allocator entries kept in C, dropped when freed in the stretch, stored into the dicts)
    (tests)"""
    return _PO_KEPT, _PO_DROPPED, _PO_STORED


# The slab's free list of size class j (slab_free[_KM_CLASSES[j]], a list) found by its last
# lookup, while the dict has not changed since (its version tag: a dict's tags are never another
# dict's, so an unchanged tag is the same dict holding the same lists); 0: look it up.
cdef PyObject* _sf_l[32]                # (borrowed: the dict holds it)
cdef unsigned long long _sf_v[32]
memset(_sf_v, 0, sizeof(_sf_v))
cdef long long _SF_HITS = 0             # (tests: slab_list_hits)


cdef inline object _sf_get(Py_ssize_t j, object cls):
    """slab_free.get(cls) for cls = _KM_CLASSES[j]"""
    global _SF_HITS
    cdef unsigned long long v = VBG_DICT_VERSION(_pa_slab_free)
    if VBG_HAVE_DICT_VERSION and _sf_v[j] != 0 and _sf_v[j] == v:
        _SF_HITS += 1
        return <object>_sf_l[j]
    fl = _pa_slab_free.get(cls)
    if VBG_HAVE_DICT_VERSION and type(fl) is list:
        _sf_l[j] = <PyObject*>fl
        _sf_v[j] = v
    return fl


def slab_list_hits():
    """slab free lists taken from _sf_l, not looked up (tests)"""
    return _SF_HITS


cdef int _pa_load(object pages) except -1:
    """Use the C allocator when pages is exactly a PageAllocator with the Python methods, none
    overridden on the instance (its __dict__ holds only its six fields)."""
    global _pa_own, _pa_used, _pa_slab_free, _pa_slab_objs, _pa_large
    _po_large.n = 0             # (stored by the last stretch's end)
    _po_slab.n = 0
    _pa_own = False
    _pa_used = _pa_slab_free = _pa_slab_objs = _pa_large = None
    memset(_sf_v, 0, sizeof(_sf_v))
    global _pa_tag
    if type(pages) is not _PageAllocator:
        return 0
    if _pa_tag == 0 or VBG_TYPE_TAG(_PageAllocator) != _pa_tag:
        _pa_tag = 0
        if (_PageAllocator.alloc_pages is not _PY_PA_ALLOC
                or _PageAllocator.free_pages is not _PY_PA_FREE
                or _PageAllocator.kmalloc is not _PY_PA_KMALLOC
                or _PageAllocator.kfree is not _PY_PA_KFREE):
            return 0
        _pa_tag = VBG_TYPE_TAG(_PageAllocator)      # (0: checked again next time)
    d = pages.__dict__
    if type(d) is not dict or len(<dict>d) != 6:
        return 0
    used = (<dict>d).get("used")
    sf = (<dict>d).get("slab_free")
    so = (<dict>d).get("slab_objs")
    lg = (<dict>d).get("large")
    if type(used) is not bytearray or type(sf) is not dict or type(so) is not dict or type(lg) is not dict:
        return 0
    _pa_used, _pa_slab_free, _pa_slab_objs, _pa_large = used, sf, so, lg
    _pa_own = True
    return 0


cdef object _pa_alloc(long long npages):
    """PageAllocator.alloc_pages (first fit; None when no run of npages free frames)"""
    cdef uint8_t* buf
    cdef Py_ssize_t size, p, i, j
    cdef const void* z
    if not _pa_own or npages <= 0:
        return _alloc_pages(_pages, npages)
    buf = <uint8_t*>PyByteArray_AS_STRING(_pa_used)
    size = PyByteArray_GET_SIZE(_pa_used)
    p = 0
    while True:
        if p >= size:
            return None
        z = memchr(buf + p, 0, <size_t>(size - p))
        if z == NULL:
            return None
        i = <const uint8_t*>z - buf
        j = i
        while j < size and j - i < npages and buf[j] == 0:
            j += 1
        if j - i == npages:
            break
        p = j
    memset(buf + i, 1, <size_t>npages)
    gpa = (<long long>i) << 12
    _po_set(&_po_large, _pa_large, False, (<long long>i) << 12, gpa, npages, npages)
    return gpa


cdef int _pa_free(object gpa) except -1:
    """PageAllocator.free_pages"""
    cdef long long n, g
    cdef int64_t kept
    if not _pa_own:
        _free_pages(_pages, gpa)
        return 0
    if _po_pop(&_po_large, gpa, &kept):
        npages = kept
    else:
        _po_other(&_po_large, gpa, _pa_large, False)
        npages = _pa_large.pop(gpa)
    if (_ll(gpa, &g) and _ll(npages, &n)
            and (g >> 12) + n <= PyByteArray_GET_SIZE(_pa_used)):
        memset(<uint8_t*>PyByteArray_AS_STRING(_pa_used) + (g >> 12), 0, <size_t>n)
    else:
        ppos = gpa >> 12
        _pa_used[ppos:ppos + npages] = bytes(npages)
    return 0


cdef object _pa_kmalloc(long long size):
    """PageAllocator.kmalloc (the slab: LIFO free lists per size class)"""
    cdef list fl
    cdef long long i, n, g
    cdef int64_t kept
    if not _pa_own:
        return _kmalloc(_pages, size)
    cdef Py_ssize_t j
    cls = None
    for j in range(_NKM):
        if _KM_C[j] >= size:
            cls = _KM_CLASSES[j]            # (the tuple's own int, as next(...) gives)
            break
    if cls is None:
        return _kmalloc(_pages, size)
    free_o = _sf_get(j, cls)
    if free_o is None:
        free_o = _pa_slab_free.setdefault(cls, [])
    fl = free_o
    if not fl:
        page = _pa_alloc(1)
        if page is None:
            return None
        if not _po_pop(&_po_large, page, &kept):
            del _pa_large[page]
        n = PAGE // <long long>cls
        fl.extend([page + cls * i for i in range(n - 1, -1, -1)])
    gpa = fl.pop()
    if vbg_ll(gpa, &g):
        _po_set(&_po_slab, _pa_slab_objs, True, g, gpa, j, cls)
    else:
        _po_other(&_po_slab, gpa, _pa_slab_objs, True)
        _pa_slab_objs[gpa] = cls
    return gpa


cdef int _pa_kfree(object gpa) except -1:
    """PageAllocator.kfree"""
    if not _pa_own:
        _kfree(_pages, gpa)
        return 0
    cdef int64_t kept
    if _po_pop(&_po_slab, gpa, &kept):
        cls = _KM_CLASSES[kept]
        fl = _sf_get(kept, cls)
        if fl is not None:              # (else slab_free[cls] raises, as Python's would)
            (<list>fl).append(gpa) if type(fl) is list else fl.append(gpa)
            return 0
    else:
        _po_other(&_po_slab, gpa, _pa_slab_objs, True)
        cls = _pa_slab_objs.pop(gpa, None)
    if cls is None:
        _pa_free(gpa)
        return 0
    _pa_slab_free[cls].append(gpa)
    return 0


# == emu.workload.write_pattern, written into guest RAM ===========================================
cdef extern from *:
    """
    /* the 512-byte sector r: 32 copies of the 16-byte record rec */
    static void vbg_fill_sector(uint8_t *r, const uint8_t *rec) {
        uint64_t a, b;
        int j;
        memcpy(&a, rec, 8);
        memcpy(&b, rec + 8, 8);
        #pragma GCC unroll 32
        for (j = 0; j < 32; j++) {
            memcpy(r + 16 * j, &a, 8);
            memcpy(r + 16 * j + 8, &b, 8);
        }
    }
    """
    void vbg_fill_sector(uint8_t* r, const uint8_t* rec) noexcept nogil
cdef extern from *:
    """
    /* rec[8:16] = the 8 lowercase hex digits of s (two per byte, from a table) */
    static char vbg_hex2[512];
    static void vbg_hex2_init(void) {
        int b;
        for (b = 0; b < 256; b++) {
            vbg_hex2[2 * b] = "0123456789abcdef"[b >> 4];
            vbg_hex2[2 * b + 1] = "0123456789abcdef"[b & 15];
        }
    }
    static inline void vbg_hex8(uint8_t *rec, uint32_t s) {
        memcpy(rec + 8, vbg_hex2 + 2 * (s >> 24), 2);
        memcpy(rec + 10, vbg_hex2 + 2 * ((s >> 16) & 255), 2);
        memcpy(rec + 12, vbg_hex2 + 2 * ((s >> 8) & 255), 2);
        memcpy(rec + 14, vbg_hex2 + 2 * (s & 255), 2);
    }
    """
    void vbg_hex2_init() noexcept nogil
    void vbg_hex8(uint8_t* rec, uint32_t s) noexcept nogil
vbg_hex2_init()
cdef uint8_t* _scratch = NULL
cdef Py_ssize_t _scratch_cap = 0


cdef inline void _dirty_range(Core* c, i64 gpa, i64 n) noexcept:
    """ram_write's page marks for [gpa, gpa + n) (0 < n, in RAM)"""
    cdef i64 p = gpa >> 12, last = (gpa + n - 1) >> 12
    while p <= last:
        c.dirty[p] = 1
        p += 1


cdef void _pattern_into(uint8_t* dst, long long n, long long offset, long long length,
                        object fill, long long total) noexcept:
    """write_pattern(n, offset, length, fill) made at dst (total bytes: _write_pattern_ram's)"""
    cdef long long first, count, nn, k, i
    cdef Py_ssize_t j
    cdef uint8_t rec[16]
    if fill is not None:
        memset(dst, <int><long long>fill, <size_t>total)
        return
    first = offset // 512
    count = length // 512
    nn = n % 1000000
    rec[0] = 119            # 'w'     (the record's first half, the same for every sector)
    k = nn
    for j in range(6, 0, -1):
        rec[j] = <uint8_t>(48 + k % 10)
        k = k // 10
    rec[7] = 58             # ':'
    for i in range(count):
        vbg_hex8(rec, <uint32_t>(<unsigned long long>(first + i)))     # ("%08x" % (s & 0xFFFFFFFF))
        vbg_fill_sector(dst + i * 512, rec)


cdef int _write_pattern_ram(Core* c, i64 gpa, long long n, long long offset, long long length,
                            object fill) except -1:
    """GuestMemory.write(gpa, write_pattern(n, offset, length, fill)) for 0 <= offset, length <
    2**52 and fill None or a byte (fill: length bytes; else 16-byte records 'wNNNNNN:SSSSSSSS',
    32 per sector, for length // 512 sectors)"""
    global _scratch, _scratch_cap
    cdef long long total
    cdef void* v
    if fill is not None:
        total = length
    else:
        total = (length // 512) * 512
    if total <= 0:
        if not ram_ok(c, gpa, 0):
            _mem.write(gpa, b"")
        return 0
    if not ram_ok(c, gpa, total):
        _mem.write(gpa, _write_pattern(n, offset, length, fill))     # (raises as Python does)
        return 0
    if c.undo == NULL:              # (no undo journal: made in place, as ram_write would copy it)
        _pattern_into(c.ram + gpa, n, offset, length, fill, total)
        _dirty_range(c, gpa, total)
        return 0
    if total > _scratch_cap:
        v = realloc(_scratch, <size_t>total)
        if v == NULL:
            raise MemoryError()
        _scratch = <uint8_t*>v
        _scratch_cap = total
    _pattern_into(_scratch, n, offset, length, fill, total)
    return ram_write(c, gpa, _scratch, total)


# == request fields written back at the end of a stretch ============================================
# Within a stretch only these handlers look at blk-mq's request dicts, and most of what they
# store into a request (its stage, the driver's pdu, scatterlists and add state, the used
# length, the status...) is only read back by them.  Those fields (W_*) are kept here, per
# request in the order they were first stored, and written into the request's dict when the
# stretch ends (_store), when the slots run out, or before a path that reads the dict itself; a
# request freed in the stretch (end_request) that nothing else holds is dropped with them
# unwritten: nobody can see them.  The handlers read those fields through RG/RGET/RIN (this
# table first), every other field straight from the dict.  The virtqueue add state
# (rq["add"]) is kept in C (_ad_*) while it is only that: made a dict only when the stretch
# ends or a path reads it.  So are the scatterlists (rq["data_sgs"], rq["sgs"], rq["roles"]) of
# a request of at most PLAN_MAX data segments: map_data keeps the segments in its slot (nd, da,
# dn), add_req the header's pdu, the direction and the role (pdu, is_out, rng), the fields hold
# _LZP, and the lists are made (_plan_materialize) only where they are written back or read.
cdef enum:
    WB_SLOTS = 32
cdef enum:
    W_stage = 0, W_deadline, W_last, W_pdu, W_data_sgs, W_start_ns, W_sgs, W_roles, W_out_sgs,
    W_add, W_table, W_head, W_add_err, W_used_len, W_vstatus, W_status, WB_KEYS
cdef tuple _WB_NAMES = ("stage", "deadline", "last", "pdu", "data_sgs", "start_ns", "sgs", "roles", "out_sgs", "add", "table", "head", "add_err", "used_len", "vstatus", "status")
cdef PyObject* _WBK[WB_KEYS]
for _j in range(WB_KEYS):
    _WBK[_j] = <PyObject*>_WB_NAMES[_j]        # (the tuple keeps them; interned as the handlers')

cdef enum:
    PLAN_MAX = 8

cdef struct WSlot:
    PyObject* d                 # the request dict (a reference), NULL: free
    int n                       # fields kept, in the order first stored: order[0:n]
    uint8_t order[WB_KEYS]
    PyObject* v[WB_KEYS]        # by field: its value (a reference), NULL: not kept
    int nd                      # the data segments of the lazy scatterlists: (da[i], dn[i])
    int64_t da[PLAN_MAX]
    int64_t dn[PLAN_MAX]
    int64_t pdu                 # (the lazy sgs and roles: the header, the direction, the role)
    bint is_out
    bint rng

cdef WSlot _ws[WB_SLOTS]
cdef int _ws_next = 0           # (the slot a request takes when all are in use)
cdef int _ws_used = 0           # slots in use
cdef uint32_t _ws_mask = 0      # ... by bit (only those are looked at)
cdef int _ws_last = 0           # the slot found last (looked at first)
assert WB_SLOTS == 32
cdef extern from *:
    """
    #define vbg_ctz32(x) __builtin_ctz(x)
    """
    int vbg_ctz32(uint32_t x) noexcept nogil
cdef bint _wb_on = False        # (in a stretch: set at load, all written back at store)
cdef long long _WB_DROPPED = 0, _WB_WRITTEN = 0, _WB_STORES = 0

cdef class _LazyAdd:            # rq["add"] while the add state is only in C
    pass
cdef object _LAZY = _LazyAdd()
cdef class _LazyPlan:           # rq["data_sgs"], rq["sgs"], rq["roles"] while only in the slot
    pass
cdef object _LZP = _LazyPlan()
cdef long long _PLANS = 0, _PLANS_MADE = 0, _PLANS_NOT = 0     # (tests: plan_stats)

cdef extern from "Python.h":
    void Py_INCREF(PyObject* o)
    void Py_DECREF(PyObject* o)
    Py_ssize_t Py_REFCNT(PyObject* o)


cdef inline WSlot* _wslot(object d) noexcept:
    global _ws_last
    cdef int i
    cdef uint32_t m = _ws_mask
    if m:
        if _ws[_ws_last].d == <PyObject*>d:
            return &_ws[_ws_last]
        while m:
            i = vbg_ctz32(m)
            if _ws[i].d == <PyObject*>d:
                _ws_last = i
                return &_ws[i]
            m &= m - 1
    return NULL


cdef void _wclear(WSlot* s) noexcept:
    global _ws_used, _ws_mask
    cdef int i, w
    cdef PyObject* d = s.d
    cdef PyObject* x
    s.d = NULL
    _ws_used -= 1
    _ws_mask &= ~((<uint32_t>1) << <int>(s - &_ws[0]))
    for i in range(s.n):
        w = s.order[i]
        x = s.v[w]
        s.v[w] = NULL
        if x != NULL:
            Py_DECREF(x)
    s.n = 0
    Py_DECREF(d)


cdef int _wflush_slot(WSlot* s) except -1:
    """write slot s's fields into its dict, in order (the lazy add state made a dict first)"""
    global _WB_WRITTEN
    cdef int i, w
    if s.d == NULL:
        return 0
    d = <object>s.d
    try:
        for i in range(s.n):
            w = s.order[i]
            if s.v[w] == <PyObject*>_LAZY:
                _ad_materialize(s, w)
            elif s.v[w] == <PyObject*>_LZP:
                _plan_materialize(s, w)
            PyDict_SetItem(<dict>d, <object>_WBK[w], <object>s.v[w])
            _WB_WRITTEN += 1
    finally:
        _wclear(s)
    return 0


cdef int _wflush(object d) except -1:
    """d's fields written back now (a path that reads the dict itself follows)"""
    cdef WSlot* s = _wslot(d)
    if s != NULL:
        _wflush_slot(s)
    return 0


cdef int _wflush_all() except -1:
    cdef int i
    for i in range(WB_SLOTS):
        if _ws[i].d != NULL:
            _wflush_slot(&_ws[i])
    return 0


cdef int RS(dict d, int w, object v) except -1:
    """d[field w] = v (kept until written back)"""
    global _ws_next, _ws_used, _ws_last, _ws_mask
    cdef WSlot* s
    cdef PyObject* old
    cdef int i
    if not _wb_on:
        PyDict_SetItem(d, <object>_WBK[w], v)
        return 0
    s = _wslot(d)
    if s == NULL:
        if _ws_mask != 0xFFFFFFFFU:
            i = vbg_ctz32(~_ws_mask)        # (the first free slot)
        else:
            i = _ws_next                    # (all in use: one written back, in turn)
            _ws_next = (_ws_next + 1) % WB_SLOTS
            _wflush_slot(&_ws[i])
        s = &_ws[i]
        _ws_last = i
        Py_INCREF(<PyObject*>d)
        s.d = <PyObject*>d
        s.n = 0
        _ws_used += 1
        _ws_mask |= (<uint32_t>1) << i
    old = s.v[w]
    Py_INCREF(<PyObject*>v)
    s.v[w] = <PyObject*>v
    if old != NULL:
        Py_DECREF(old)
    else:
        s.order[s.n] = <uint8_t>w
        s.n += 1
    return 0


cdef inline PyObject* _wfind(object d, int w) except? NULL:
    """the kept value of d's field w (borrowed), or NULL"""
    cdef WSlot* s = _wslot(d)
    if s == NULL or s.v[w] == NULL:
        return NULL
    if s.v[w] == <PyObject*>_LAZY:
        _ad_materialize(s, w)
    elif s.v[w] == <PyObject*>_LZP:
        _plan_materialize(s, w)
    return s.v[w]


cdef int _plan_materialize(WSlot* s, int w) except -1:
    """the lazy scatterlist field w of slot s (holding _LZP) made the list map_data or add_req
    would have stored"""
    global _PLANS_MADE
    cdef list l = []
    cdef int i
    if w == W_data_sgs:
        for i in range(s.nd):
            l.append((s.da[i], s.dn[i]))
    elif w == W_sgs:
        l.append((s.pdu, OUTHDR_SIZE, False))
        for i in range(s.nd):
            l.append((s.da[i], s.dn[i], not s.is_out))
        l.append((s.pdu + 16, 1, True))
    elif w == W_roles:
        l.append("request header")
        for i in range(s.nd):
            l.append("range" if s.rng else "data")
        l.append("status")
    else:
        raise SystemError("_plan_materialize: not a scatterlist field")
    Py_INCREF(<PyObject*>l)
    Py_DECREF(s.v[w])
    s.v[w] = <PyObject*>l
    _PLANS_MADE += 1
    return 0


cdef inline WSlot* _plan(object d, int w) noexcept:
    """d's slot when its field w is a lazy scatterlist, else NULL"""
    cdef WSlot* s = _wslot(d)
    if s != NULL and s.v[w] == <PyObject*>_LZP:
        return s
    return NULL


def plan_stats():
    """(map_data steps that kept the scatterlists in C, lists made from them, map_data steps of
    a stretch that made the list) (tests)"""
    return _PLANS, _PLANS_MADE, _PLANS_NOT


cdef inline object RG(object d, int w):
    """d[field w]"""
    cdef PyObject* p = _wfind(d, w)
    if p != NULL:
        return <object>p
    return DG(d, <object>_WBK[w])


cdef inline object RGET(object d, int w):
    """d.get(field w)"""
    cdef PyObject* p = _wfind(d, w)
    if p != NULL:
        return <object>p
    return DGET(d, <object>_WBK[w])


cdef inline object RGETD(object d, int w, object dflt):
    """d.get(field w, dflt)"""
    cdef PyObject* p = _wfind(d, w)
    if p != NULL:
        return <object>p
    return DGETD(d, <object>_WBK[w], dflt)


cdef inline bint RIN(object d, int w) except -1:
    """field w in d"""
    if _wfind(d, w) != NULL:
        return True
    return <object>_WBK[w] in d


cdef int RDEL(dict d, int w) except -1:
    """del d[field w]: a kept one is forgotten (never stored), and one the dict has is deleted
    there"""
    cdef WSlot* s = _wslot(d)
    cdef int i, j
    cdef bint kept = False
    cdef PyObject* x
    if s != NULL and s.v[w] != NULL:
        x = s.v[w]
        s.v[w] = NULL
        for i in range(s.n):
            if s.order[i] == w:
                for j in range(i, s.n - 1):
                    s.order[j] = s.order[j + 1]
                s.n -= 1
                break
        Py_DECREF(x)
        kept = True
    key = <object>_WBK[w]
    if not kept or key in d:
        del d[key]
    return 0


cdef int _wdrop(object d) except -1:
    """d (a request just freed) is dropped with its kept fields when only this handler and the
    slot hold it; else they are written"""
    global _WB_DROPPED
    cdef WSlot* s = _wslot(d)
    if s == NULL:
        return 0
    if Py_REFCNT(<PyObject*>d) <= 2:
        _WB_DROPPED += s.n
        _wclear(s)
    else:
        _wflush_slot(s)
    return 0


def wb_stats():
    """(fields written back, fields dropped with their freed request, add states made dicts)
    (tests)"""
    return _WB_WRITTEN, _WB_DROPPED, _WB_STORES


# == drivers/virtio/virtio_ring.c (emu/guest/vring.py) ==============================================

# The add state of the request being added (rq["add"]: indirect, table, k, i, head, used and,
# after the last descriptor, prev), kept here while it is lazy: rq's kept "add" field is then
# _LAZY, and the dict is made (_ad_materialize) only if the stretch ends or a path reads it
# before add_avail deletes it.
cdef i64 _ad_rid = -1
cdef bint _ad_lazy = False
cdef object _ad_rq = None, _ad_sgs = None, _ad_ind_o = None, _ad_i = None, _ad_table = None
cdef object _ad_head = None, _ad_used = None, _ad_prev = None
cdef i64 _ad_k = 0
cdef i64 _ad_ci = 0                 # "i" (an int in [0, 0xFFFF]; _ad_i is made from it)
cdef i64 _ad_ctable = -1            # "table" as a C int when it is one below 2**52, else -1
cdef bint _ad_ind = False
cdef long long _AD_HITS = 0         # add_desc/add_head/add_avail steps that took these


cdef inline void _ad_forget() noexcept:
    global _ad_rid, _ad_lazy, _ad_rq, _ad_sgs, _ad_ind_o, _ad_i, _ad_table, _ad_head, _ad_used
    global _ad_prev, _ad_ctable
    _ad_rid = -1
    _ad_lazy = False
    _ad_rq = _ad_sgs = _ad_ind_o = _ad_i = _ad_table = _ad_head = _ad_used = _ad_prev = None
    _ad_ctable = -1


cdef int _ad_materialize(WSlot* s, int at) except -1:
    """the lazy add state made the dict add_split/add_desc would have left (s.v[at] was _LAZY)"""
    global _WB_STORES
    cdef PyObject* v[6]
    cdef dict st
    cdef object k_o = _ad_k
    cdef object i_o = _ad_ci
    v[0] = <PyObject*>_ad_ind_o
    v[1] = <PyObject*>_ad_table
    v[2] = <PyObject*>k_o
    v[3] = <PyObject*>i_o
    v[4] = <PyObject*>_ad_head
    v[5] = <PyObject*>_ad_used
    st = _mk(_T_ADD, v, 6)      # {"indirect", "table", "k", "i", "head", "used"}
    if _ad_prev is not None:
        st["prev"] = _ad_prev
    Py_INCREF(<PyObject*>st)
    Py_DECREF(s.v[at])
    s.v[at] = <PyObject*>st
    _WB_STORES += 1
    _ad_forget()
    return 0


cdef int _ad_settle() except -1:
    """a lazy add state made a dict (another request's add begins)"""
    cdef WSlot* s
    cdef int i
    if not _ad_lazy:
        _ad_forget()
        return 0
    s = _wslot(_ad_rq)
    if s != NULL and s.v[W_add] == <PyObject*>_LAZY:
        return _ad_materialize(s, W_add)
    _ad_forget()
    return 0


cdef inline bint _ad_mine(i64 rid, dict rq) noexcept:
    """the lazy add state is rq's"""
    return _ad_lazy and rid == _ad_rid and rq is _ad_rq


def add_desc_hits():
    """add_desc, add_head and add_avail steps that used the lazy add state (tests)"""
    return _AD_HITS


cdef int h_add_split(Core* c, Frame* f) except -1:
    """emu.guest.vring.add_split (virtqueue_add_split: indirect or direct, take descriptors)"""
    global _ad_rid, _ad_lazy, _ad_rq, _ad_sgs, _ad_ind_o, _ad_i, _ad_table, _ad_head, _ad_used
    global _ad_prev, _ad_k, _ad_ind, _ad_ci, _ad_ctable
    cdef i64 rid = f.a[0], total, num_free, used
    cdef long long ct
    cdef dict rq, st
    cdef PyObject* v[6]
    cdef object i0, used_o
    cdef WSlot* ps
    if not _kok[K_vring_add_split]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    ps = _plan(rq, W_sgs)
    if ps != NULL:
        sgs = None                      # (the lazy scatterlist: the header, nd, the status)
        total = ps.nd + 2
    else:
        sgs = RGET(rq, W_sgs)
        if type(sgs) is not list:
            return BAIL
        total = len(<list>sgs)
    vq = _vq
    if not _bool(SG(vq, _VO[VQ_BROKEN])) or not _bool(SG(vq, _VO[VQ_INDIRECT])):
        return BAIL
    num_free = SI(vq, _VO[VQ_NUM_FREE])
    begin(c)
    _ad_settle()
    if _t(SG(vq, _VO[VQ_BROKEN])):
        RS(rq, W_add_err, "EIO")
        return 0
    indirect = SG(vq, _VO[VQ_INDIRECT]) and total > 1 and num_free > 0
    table = 0
    if indirect:
        table = _pa_kmalloc(DESC_SIZE * total) or 0
        if not _t(table):
            indirect = False
    used = 1 if indirect else total
    if num_free < used:
        RS(rq, W_add_err, "ENOSPC")
        if _t(RG(rq, W_out_sgs)):
            cont(c, F1(K_vring_notify, 1))
        return 0
    head = SG(vq, _VO[VQ_FREE_HEAD])
    i0 = 0 if indirect else head
    used_o = used
    if _wb_on and _u16(i0) and (sgs is not None or _plan(rq, W_sgs) != NULL):
        _ad_rid = rid
        _ad_rq = rq
        _ad_sgs = sgs
        _ad_ind_o = indirect
        _ad_ind = bool(indirect)
        _ad_table = table
        _ad_ctable = ct if _ll(table, &ct) else -1
        _ad_k = 0
        _ad_i = None
        _ad_ci = i0
        _ad_head = head
        _ad_used = used_o
        _ad_prev = None
        _ad_lazy = True
        RS(rq, W_add, _LAZY)
    else:
        v[0] = <PyObject*>indirect
        v[1] = <PyObject*>table
        v[2] = <PyObject*>_ZERO
        v[3] = <PyObject*>i0
        v[4] = <PyObject*>head
        v[5] = <PyObject*>used_o
        st = _mk(_T_ADD, v, 6)      # {"indirect", "table", "k": 0, "i", "head", "used"}
        RS(rq, W_add, st)
    RS(rq, W_table, table)
    cont(c, F1(K_vring_add_desc, rid))
    return 0


cdef int h_add_desc(Core* c, Frame* f) except -1:
    """emu.guest.vring.add_desc (virtqueue_add_desc_split: one descriptor of the chain)"""
    global _AD_HITS, _ad_k, _ad_i, _ad_prev, _ad_ci
    cdef i64 rid = f.a[0], k, ci, base, nsgs, flags, written, cnxt
    cdef int64_t cg, cl
    cdef bint ind, last, hit, c_in
    cdef dict rq, st
    cdef tuple sg
    cdef WSlot* ps = NULL
    if not _kok[K_vring_add_desc]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    st = None
    if _ad_mine(rid, rq):
        sgs = _ad_sgs                   # (the lazy state: checked as the dict's values are)
        if sgs is None:                 # (the lazy scatterlist, still in rq's slot)
            ps = _plan(rq, W_sgs)
            if ps == NULL:
                return BAIL
        k = _ad_k
        i = None
        ci = _ad_ci
        ind_o = _ad_ind
        hit = True
    else:
        st_o = RGET(rq, W_add)
        sgs = RGET(rq, W_sgs)
        if type(st_o) is not dict or type(sgs) is not list:
            return BAIL
        st = <dict>st_o
        k_o = DGET(st, "k")
        i = DGET(st, "i")
        ind_o = DGET(st, "indirect")
        if not _is_int(k_o) or not _u16(i) or not _bool(ind_o):
            return BAIL
        k = k_o
        ci = i
        hit = False
    if ps != NULL:
        nsgs = ps.nd + 2
        if not 0 <= k < nsgs:
            return BAIL
        if k == 0:
            cg, cl, c_in = ps.pdu, OUTHDR_SIZE, False
        elif k == nsgs - 1:
            cg, cl, c_in = ps.pdu + 16, 1, True
        else:
            cg, cl, c_in = ps.da[k - 1], ps.dn[k - 1], not ps.is_out
        if not 0 <= cl <= 0xFFFFFFFF:
            return BAIL
    else:
        nsgs = len(<list>sgs)
        if not 0 <= k < nsgs:
            return BAIL
        sg_o = (<list>sgs)[k]
        if type(sg_o) is not tuple or len(<tuple>sg_o) != 3:
            return BAIL
        sg = <tuple>sg_o
        gpa = sg[0]
        length = sg[1]
        is_in = sg[2]
        if not _u64(gpa) or not _u32(length):
            return BAIL
        cg = <uint64_t>gpa
        cl = <uint64_t>length
        c_in = bool(is_in)
    flags = F_NEXT | (F_WRITE if c_in else 0)
    ind = ind_o
    vq = _vq
    nxt = None
    if ind:
        if hit and _ad_ctable >= 0:
            base = _ad_ctable
        else:
            table = _ad_table if hit else DGET(st, "table")
            if not _small(table):
                return BAIL
            base = table
        cnxt = ci + 1
        if not hit:
            nxt = cnxt
    else:
        base = SI(vq, _VO[VQ_DESC])
        extra_next = SG(vq, _VO[VQ_EXTRA_NEXT])
        if type(extra_next) is not list or ci >= len(<list>extra_next):
            return BAIL
        nxt = (<list>extra_next)[ci]
        if (type(SG(vq, _VO[VQ_EXTRA_LEN])) is not list or type(SG(vq, _VO[VQ_EXTRA_FLAGS])) is not list
                or ci >= len(<list>SG(vq, _VO[VQ_EXTRA_LEN]))
                or ci >= len(<list>SG(vq, _VO[VQ_EXTRA_FLAGS]))):
            return BAIL
        if not _u16(nxt):
            return BAIL
        cnxt = nxt
    if not 0 <= cnxt <= 0xFFFF or not ram_ok(c, base + DESC_SIZE * ci, DESC_SIZE):
        return BAIL
    begin(c)
    if hit:
        _AD_HITS += 1
    last = k == nsgs - 1
    written = flags & ~F_NEXT if last else flags
    if not ind:
        (<list>SG(vq, _VO[VQ_EXTRA_LEN]))[ci] = length if ps == NULL else cl
        (<list>SG(vq, _VO[VQ_EXTRA_FLAGS]))[ci] = flags
    # (the Python handler writes the descriptor, then once more with NEXT cleared when it is
    # the last: one write of the final bytes leaves the same RAM, dirty marks and undo pages)
    _write_desc(c, base + DESC_SIZE * ci, <uint64_t>cg, <uint64_t>cl, <uint64_t>written,
                <uint64_t>cnxt)
    if last:
        if not ind:
            (<list>SG(vq, _VO[VQ_EXTRA_FLAGS]))[ci] = written
        if hit:
            _ad_prev = ci
        else:
            st["prev"] = i
        cont(c, F1(K_vring_add_head if ind else K_vring_add_avail, rid))
    else:
        if hit:
            _ad_k = k + 1
            _ad_ci = cnxt
        else:
            st["k"] = k + 1
            st["i"] = nxt
        cont(c, F1(K_vring_add_desc, rid))
    return 0


cdef int h_add_head(Core* c, Frame* f) except -1:
    """emu.guest.vring.add_head (the ring descriptor that points at the indirect table)"""
    global _AD_HITS
    cdef i64 rid = f.a[0], chead, length, desc, nsgs = -1
    cdef dict rq, st
    cdef bint hit
    cdef WSlot* ps
    if not _kok[K_vring_add_head]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    hit = _ad_mine(rid, rq)
    if hit:                             # (the lazy state)
        sgs = _ad_sgs
        head = _ad_head
        table = _ad_table
        if sgs is None:                 # (the lazy scatterlist, still in rq's slot)
            ps = _plan(rq, W_sgs)
            if ps == NULL:
                return BAIL
            nsgs = ps.nd + 2
    else:
        st_o = RGET(rq, W_add)
        sgs = RGET(rq, W_sgs)
        if type(st_o) is not dict or type(sgs) is not list:
            return BAIL
        st = <dict>st_o
        head = DGET(st, "head")
        table = DGET(st, "table")
    if not _u16(head) or not _u64(table):
        return BAIL
    chead = head
    vq = _vq
    extra_next = SG(vq, _VO[VQ_EXTRA_NEXT])
    extra_len = SG(vq, _VO[VQ_EXTRA_LEN])
    extra_flags = SG(vq, _VO[VQ_EXTRA_FLAGS])
    if (type(extra_next) is not list or type(extra_len) is not list or type(extra_flags) is not list
            or chead >= len(<list>extra_next) or chead >= len(<list>extra_len)
            or chead >= len(<list>extra_flags)):
        return BAIL
    length = DESC_SIZE * (nsgs if nsgs >= 0 else len(<list>sgs))
    nxt = (<list>extra_next)[chead]
    desc = SI(vq, _VO[VQ_DESC])
    if not _u16(nxt) or length > 0xFFFFFFFF or not ram_ok(c, desc + DESC_SIZE * chead, DESC_SIZE):
        return BAIL
    begin(c)
    if hit:
        _AD_HITS += 1
    _write_desc(c, desc + DESC_SIZE * chead, <uint64_t>table, <uint64_t>length, F_INDIRECT,
                <uint64_t>nxt)
    (<list>extra_len)[chead] = length
    (<list>extra_flags)[chead] = F_INDIRECT
    cont(c, F1(K_vring_add_avail, rid))
    return 0


cdef int h_add_avail(Core* c, Frame* f) except -1:
    """emu.guest.vring.add_avail (free list, desc_state, avail.ring[shadow % N] = head)"""
    global _AD_HITS
    cdef i64 rid = f.a[0], chead, num, slot, gpa, cprev
    cdef dict rq, st
    cdef bint hit
    if not _kok[K_vring_add_avail]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    hit = _ad_mine(rid, rq)
    if hit:                             # (the lazy state: it has "table")
        head = _ad_head
        used = _ad_used
        ind = _ad_ind
    else:
        st_o = RGET(rq, W_add)
        if type(st_o) is not dict:
            return BAIL
        st = <dict>st_o
        head = DGET(st, "head")
        used = DGET(st, "used")
        ind = DGET(st, "indirect")
    if not _u16(head) or not _is_int(used) or not _bool(ind):
        return BAIL
    chead = head
    vq = _vq
    extra_next = SG(vq, _VO[VQ_EXTRA_NEXT])
    desc_data = SG(vq, _VO[VQ_DESC_DATA])
    desc_indir = SG(vq, _VO[VQ_DESC_INDIR])
    if (type(extra_next) is not list or type(desc_data) is not list or type(desc_indir) is not list
            or chead >= len(<list>extra_next) or chead >= len(<list>desc_data)
            or chead >= len(<list>desc_indir) or (not hit and "table" not in st)):
        return BAIL
    if ind:
        cprev = chead
    else:
        prev = _ad_prev if hit else DGET(st, "prev")
        if not _u16(prev) or prev >= len(<list>extra_next):
            return BAIL
        cprev = prev
    num = SI(vq, _VO[VQ_NUM])
    slot = SI(vq, _VO[VQ_AVAIL_IDX_SHADOW]) & (num - 1)
    gpa = SI(vq, _VO[VQ_AVAIL]) + AVAIL_RING + 2 * slot
    if not ram_ok(c, gpa, 2) or not _is_int(SG(vq, _VO[VQ_NUM_FREE])):
        return BAIL
    begin(c)
    if hit:
        _AD_HITS += 1
        table = _ad_table
        _ad_forget()
    else:
        table = DG(st, "table")
    RDEL(rq, W_add)
    SS(vq, _VO[VQ_NUM_FREE], SG(vq, _VO[VQ_NUM_FREE]) - used)
    SS(vq, _VO[VQ_FREE_HEAD], (<list>extra_next)[cprev])
    (<list>desc_data)[chead] = rid
    (<list>desc_indir)[chead] = table
    RS(rq, W_head, head)
    ram_w16(c, gpa, <uint64_t>chead)
    cont(c, F1(K_vring_add_publish, rid))
    return 0


cdef int h_add_publish(Core* c, Frame* f) except -1:
    """emu.guest.vring.add_publish (virtio_wmb; avail.idx = ++avail_idx_shadow)"""
    cdef i64 rid = f.a[0], shadow, gpa
    cdef dict rq
    if not _kok[K_vring_add_publish]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    vq = _vq
    gpa = SI(vq, _VO[VQ_AVAIL]) + AVAIL_IDX
    if not ram_ok(c, gpa, 2) or not _is_int(SG(vq, _VO[VQ_NUM_ADDED])):
        return BAIL
    shadow = (SI(vq, _VO[VQ_AVAIL_IDX_SHADOW]) + 1) & 0xFFFF
    begin(c)
    SS(vq, _VO[VQ_AVAIL_IDX_SHADOW], shadow)
    ram_w16(c, gpa, <uint64_t>shadow)
    SS(vq, _VO[VQ_NUM_ADDED], SG(vq, _VO[VQ_NUM_ADDED]) + 1)
    RS(rq, W_stage, "avail")
    RS(rq, W_add_err, "")
    return 0


cdef int h_kick_prepare(Core* c, Frame* f) except -1:
    """emu.guest.vring.kick_prepare (virtqueue_kick_prepare_split)"""
    cdef i64 new, old, ev, flags, gpa
    cdef bint need, then_notify
    if not _kok[K_vring_kick_prepare] or not f.s[0]:
        return BAIL
    if f.a[0] == _S_EMPTY:
        then_notify = False
    else:
        then_notify = bool(arg_str(c, f.a[0]))
    vq = _vq
    ev_o = SG(vq, _VO[VQ_EVENT])
    if not _bool(ev_o) or not (_kc_ok[KC_SUPPRESSED] or "kicks_suppressed" in _counters):
        return BAIL
    if ev_o:
        gpa = SI(vq, _VO[VQ_USED]) + USED_RING + USED_ELEM_SIZE * SI(vq, _VO[VQ_NUM])
    else:
        gpa = SI(vq, _VO[VQ_USED]) + USED_FLAGS
    if not ram_ok(c, gpa, 2):
        return BAIL
    new = SI(vq, _VO[VQ_AVAIL_IDX_SHADOW])
    old = (new - SI(vq, _VO[VQ_NUM_ADDED])) & 0xFFFF
    begin(c)
    SS(vq, _VO[VQ_NUM_ADDED], 0)
    if ev_o:
        ev = ram_r16(c, gpa)
        need = ((new - ev - 1) & 0xFFFF) < ((new - old) & 0xFFFF)      # vring_need_event
    else:
        flags = ram_r16(c, gpa)
        need = not flags & USED_F_NO_NOTIFY
    SS(_g, _GO[G_KICK_NEEDED], need)
    if not need:
        _kc_bump(KC_SUPPRESSED)
    if then_notify and need:
        cont(c, F1(K_vring_notify, 0))
    return 0


cdef int h_notify(Core* c, Frame* f) except -1:
    """emu.guest.vring.notify (vp_notify: the doorbell write, VM exit to QEMU)"""
    cdef i64 off
    if not _kok[K_vring_notify] or not _notify_ok or c.qemu < 0:
        return BAIL
    vq = _vq
    broken = SG(vq, _VO[VQ_BROKEN])
    if not _bool(broken):
        return BAIL
    if broken:
        begin(c)
        return 0
    off_o = SG(vq, _VO[VQ_NOTIFY_OFF])
    if not _small(off_o) or not (_kc_ok[KC_KICKS] or "kicks" in _counters):
        return BAIL
    off = off_o
    # Transport.mmio_write: on the notify region it only logs (no state); elsewhere: compiled engine
    if COMMON_CFG <= off < COMMON_CFG + REGION_SIZE or DEVICE_CFG <= off < DEVICE_CFG + REGION_SIZE:
        return BAIL
    begin(c)
    _kc_bump(KC_KICKS)
    post(c, c.qemu, F1(K_vpci_notify, off), _vmexit_ns, False)
    block(c, F0(K_NONE))
    return 0


cdef int h_interrupt(Core* c, Frame* f) except -1:
    """emu.guest.vring.interrupt (vring_interrupt)"""
    cdef i64 gpa, used_idx
    if not _kok[K_vring_interrupt]:
        return BAIL
    vq = _vq
    gpa = SI(vq, _VO[VQ_USED]) + USED_IDX
    if not ram_ok(c, gpa, 2):
        return BAIL
    begin(c)
    used_idx = ram_r16(c, gpa)
    if used_idx == SI(vq, _VO[VQ_LAST_USED_IDX]):
        return 0
    if _t(SG(vq, _VO[VQ_BROKEN])):
        return 0
    if _t(SG(vq, _VO[VQ_EVENT])):
        SS(vq, _VO[VQ_EVENT_TRIGGERED], True)
    SS(_g, _GO[G_DONE_COUNT], 0)
    cont(c, F0(K_vblkd_done))
    return 0


cdef int h_disable_cb(Core* c, Frame* f) except -1:
    """emu.guest.vring.disable_cb (virtqueue_disable_cb_split)"""
    cdef i64 flags, avail, num
    if not _kok[K_vring_disable_cb]:
        return BAIL
    vq = _vq
    fl_o = SG(vq, _VO[VQ_AVAIL_FLAGS_SHADOW])
    if not _small(fl_o):
        return BAIL
    flags = fl_o
    avail = SI(vq, _VO[VQ_AVAIL])
    num = SI(vq, _VO[VQ_NUM])
    if not ram_ok(c, avail, AVAIL_RING + 2 * num + 2):
        return BAIL
    begin(c)
    cont(c, F0(K_vring_get_buf))
    if flags & AVAIL_F_NO_INTERRUPT:
        return 0
    flags |= AVAIL_F_NO_INTERRUPT
    SS(vq, _VO[VQ_AVAIL_FLAGS_SHADOW], flags)
    if _t(SG(vq, _VO[VQ_EVENT_TRIGGERED])):
        return 0
    if _t(SG(vq, _VO[VQ_EVENT])):
        ram_w16(c, avail + AVAIL_RING + 2 * num, 0)
        return 0
    ram_w16(c, avail + AVAIL_FLAGS, <uint64_t>flags)
    return 0


cdef int h_get_buf(Core* c, Frame* f) except -1:
    """emu.guest.vring.get_buf (virtqueue_get_buf_ctx_split + detach_buf_split)"""
    cdef i64 used, num, last, used_idx, slot, a, uid, ulen, desc, avail, i, n, fh
    cdef list desc_data, desc_indir, extra_next
    cdef dict rq
    if not _kok[K_vring_get_buf]:
        return BAIL
    vq = _vq
    broken = SG(vq, _VO[VQ_BROKEN])
    if not _bool(broken):
        return BAIL
    if broken:
        begin(c)
        cont(c, F0(K_vring_enable_cb))
        return 0
    used = SI(vq, _VO[VQ_USED])
    num = SI(vq, _VO[VQ_NUM])
    if num <= 0 or not ram_ok(c, used, USED_RING + USED_ELEM_SIZE * num):
        return BAIL
    used_idx = ram_r16(c, used + USED_IDX)
    last = SI(vq, _VO[VQ_LAST_USED_IDX])
    if last == used_idx:
        begin(c)
        cont(c, F0(K_vring_enable_cb))
        return 0
    slot = last & (num - 1)
    a = used + USED_RING + USED_ELEM_SIZE * slot
    uid = ram_r32(c, a)
    ulen = ram_r32(c, a + 4)
    if uid >= num:
        return BAIL                                     # BAD_RING: id out of range
    dd = SG(vq, _VO[VQ_DESC_DATA])
    di = SG(vq, _VO[VQ_DESC_INDIR])
    en = SG(vq, _VO[VQ_EXTRA_NEXT])
    if type(dd) is not list or type(di) is not list or type(en) is not list:
        return BAIL
    desc_data = <list>dd
    desc_indir = <list>di
    extra_next = <list>en
    if uid >= len(desc_data) or uid >= len(desc_indir) or len(extra_next) < num:
        return BAIL
    rid = desc_data[uid]
    if not _is_int(rid) or rid < 0:
        return BAIL                                     # BAD_RING: not a head
    rq = _rq(rid)
    if rq is None:
        return BAIL
    # detach_buf_split's walk (read-only here: a loop is BAD_RING, left to the compiled engine)
    desc = SI(vq, _VO[VQ_DESC])
    if not ram_ok(c, desc, DESC_SIZE * num):
        return BAIL
    i = uid
    n = 1
    while ram_r16(c, desc + DESC_SIZE * i + 12) & F_NEXT:
        nx = extra_next[i]
        if not _is_int(nx) or not 0 <= nx < num:
            return BAIL
        i = nx
        n += 1
        if n > num:
            return BAIL
    avail = SI(vq, _VO[VQ_AVAIL])
    fl_o = SG(vq, _VO[VQ_AVAIL_FLAGS_SHADOW])
    if (not _small(fl_o) or not ram_ok(c, avail + AVAIL_RING + 2 * num, 2)
            or not _is_int(SG(vq, _VO[VQ_NUM_FREE])) or not _is_int(SG(_g, _GO[G_DONE_COUNT]))):
        return BAIL
    begin(c)
    desc_data[uid] = -1
    extra_next[i] = SG(vq, _VO[VQ_FREE_HEAD])
    SS(vq, _VO[VQ_FREE_HEAD], uid)
    SS(vq, _VO[VQ_NUM_FREE], SG(vq, _VO[VQ_NUM_FREE]) + n)
    table = desc_indir[uid]
    if _t(table):
        _pa_kfree(table)
        desc_indir[uid] = 0
    last = (last + 1) & 0xFFFF
    SS(vq, _VO[VQ_LAST_USED_IDX], last)
    if not (<i64>fl_o) & AVAIL_F_NO_INTERRUPT:
        ram_w16(c, avail + AVAIL_RING + 2 * num, <uint64_t>last)
    SS(_g, _GO[G_DONE_COUNT], SG(_g, _GO[G_DONE_COUNT]) + 1)
    RS(rq, W_used_len, ulen)
    cont(c, F1(K_vblkd_request_done, <i64>rid))
    return 0


cdef int h_enable_cb(Core* c, Frame* f) except -1:
    """emu.guest.vring.enable_cb (enable_cb_prepare + poll)"""
    cdef i64 flags, avail, used, num, last, used_idx
    if not _kok[K_vring_enable_cb]:
        return BAIL
    vq = _vq
    fl_o = SG(vq, _VO[VQ_AVAIL_FLAGS_SHADOW])
    if not _small(fl_o):
        return BAIL
    flags = fl_o
    avail = SI(vq, _VO[VQ_AVAIL])
    used = SI(vq, _VO[VQ_USED])
    num = SI(vq, _VO[VQ_NUM])
    if not ram_ok(c, avail, AVAIL_RING + 2 * num + 2) or not ram_ok(c, used + USED_IDX, 2):
        return BAIL
    begin(c)
    SS(vq, _VO[VQ_EVENT_TRIGGERED], False)
    if flags & AVAIL_F_NO_INTERRUPT:
        flags &= ~AVAIL_F_NO_INTERRUPT
        SS(vq, _VO[VQ_AVAIL_FLAGS_SHADOW], flags)
        if not _t(SG(vq, _VO[VQ_EVENT])):
            ram_w16(c, avail + AVAIL_FLAGS, <uint64_t>flags)
    last = SI(vq, _VO[VQ_LAST_USED_IDX])
    ram_w16(c, avail + AVAIL_RING + 2 * num, <uint64_t>last)
    used_idx = ram_r16(c, used + USED_IDX)
    if used_idx != last and not SG(vq, _VO[VQ_BROKEN]):
        cont(c, F0(K_vring_disable_cb))
    else:
        cont(c, F0(K_vblkd_done_end))
    return 0


# == drivers/block/virtio_blk.c (emu/guest/virtio_blk.py) ===========================================

cdef int h_queue_rq(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.queue_rq (virtio_queue_rq)"""
    cdef i64 rid = f.a[0], last = f.a[1]
    cdef dict rq
    if not _kok[K_vblkd_queue_rq]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    begin(c)
    RS(rq, W_last, last != 0)
    SS(_g, _GO[G_KICK_NEEDED], False)
    cont(c, F1(K_vblkd_setup_cmd, rid))
    return 0


cdef int h_setup_cmd(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.setup_cmd (virtblk_setup_cmd: the out header)"""
    cdef i64 rid = f.a[0], pdu
    cdef dict rq
    cdef uint8_t buf[16]
    cdef bint rw, dwz
    if not _kok[K_vblkd_setup_cmd]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    op = DGET(rq, "op")
    tag = DGET(rq, "tag")
    base = SG(_g, _GO[G_PDU_BASE])
    if not _small(tag) or not _small(base) or type(op) is not str:
        return BAIL
    pdu = <i64>base + <i64>tag * PDU_SIZE
    rw = _eq(op, "READ") or _eq(op, "WRITE")
    if _eq(op, "DRV_IN"):
        begin(c)
        RS(rq, W_pdu, pdu)
        cont(c, F1(K_vblkd_map_data, rid))
        return 0
    dwz = _eq(op, "DISCARD") or _eq(op, "WRITE_ZEROES")
    if not rw and not dwz and not _eq(op, "FLUSH"):
        return BAIL                 # unknown: the compiled engine (its KeyError)
    typ = _TYPE_OF[op]
    sector = DGET(rq, "sector") if rw else 0
    if not _u64(sector) or not ram_ok(c, pdu, OUTHDR_SIZE):
        return BAIL
    if dwz:
        rsect = DGET(rq, "sector")
        nbytes = DGET(rq, "bytes")
        if not _u64(rsect) or not _small(nbytes) or not _u32(nbytes >> 9):
            return BAIL             # (struct.pack would refuse them)
    begin(c)
    RS(rq, W_pdu, pdu)
    _st(buf, <uint64_t><i64>typ, 4)
    _st(buf + 4, 0, 4)
    _st(buf + 8, <uint64_t>sector, 8)
    ram_write(c, pdu, buf, 16)
    if dwz:
        rng = _pa_kmalloc(DWZ_SEG_SIZE)
        if rng is None:
            # virtblk_prep_rq's BLK_STS_RESOURCE: blk-mq requeues and runs the queue later
            SS(_q, _QO[Q_LAST_RET], "RESOURCE")
            return 0
        _st(buf, <uint64_t>rsect, 8)
        _st(buf + 8, <uint64_t>(nbytes >> 9), 4)
        _st(buf + 12, 1 if DGET(rq, "unmap") else 0, 4)       # WRITE_ZEROES_FLAG_UNMAP
        if ram_ok(c, rng, DWZ_SEG_SIZE):
            ram_write(c, rng, buf, 16)
        else:
            _mem.write(rng, (<char*>buf)[:16])                   # (raises as Python does)
        rq["payload"] = rng
    cont(c, F1(K_vblkd_map_data, rid))
    return 0


cdef bint _map_plan(Core* c, dict rq, i64 rid, list bios) except -1:
    """map_data's scatterlist kept in rq's slot (True: the step ran), when it has at most
    PLAN_MAX segments and every segment is as the list's path needs (False: not changed)"""
    global _PLANS
    cdef int64_t da[PLAN_MAX]
    cdef int64_t dn[PLAN_MAX]
    cdef long long a, n
    cdef int nd = 0
    cdef WSlot* s
    for bio in bios:
        if type(bio) is not dict:
            return False
        segs = DGET(bio, "segs")
        if type(segs) is not list:
            return False
        for sg in <list>segs:
            if type(sg) is not tuple or len(<tuple>sg) != 2:
                return False
            if not _ll((<tuple>sg)[0], &a) or not _ll((<tuple>sg)[1], &n):
                return False
            if nd and da[nd - 1] + dn[nd - 1] == a:
                dn[nd - 1] += n
            else:
                if nd == PLAN_MAX:
                    return False
                da[nd] = a
                dn[nd] = n
                nd += 1
    begin(c)
    s = _wslot(rq)
    if s != NULL:                       # (sgs and roles still lazy: made from their segments)
        if s.v[W_sgs] == <PyObject*>_LZP:
            _plan_materialize(s, W_sgs)
        if s.v[W_roles] == <PyObject*>_LZP:
            _plan_materialize(s, W_roles)
    RS(rq, W_data_sgs, _LZP)
    s = _wslot(rq)
    s.nd = nd
    memcpy(s.da, da, nd * sizeof(int64_t))
    memcpy(s.dn, dn, nd * sizeof(int64_t))
    _PLANS += 1
    cont(c, F1(K_blkmq_start_request, rid))
    return True


cdef int h_map_data(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.map_data (blk_rq_map_sg: contiguous segments merge)"""
    global _PLANS_NOT
    cdef i64 rid = f.a[0]
    cdef dict rq
    cdef list sgs
    cdef bint have = False
    if not _kok[K_vblkd_map_data]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    payload = DGET(rq, "payload")
    if _t(payload):
        begin(c)
        RS(rq, W_data_sgs, [(payload, DWZ_SEG_SIZE)])
        cont(c, F1(K_blkmq_start_request, rid))
        return 0
    bios = DGET(rq, "bios")
    if type(bios) is not list:
        return BAIL
    if _wb_on and _map_plan(c, rq, rid, <list>bios):
        return 0
    # (the scatterlist is built before begin: nothing is changed until it is stored)
    sgs = []
    cur_a = cur_n = None
    for bio in <list>bios:
        if type(bio) is not dict:
            return BAIL
        segs = (<dict>bio).get("segs")
        if type(segs) is not list:
            return BAIL
        for sg in <list>segs:
            if type(sg) is not tuple or len(<tuple>sg) != 2:
                return BAIL
            gpa = (<tuple>sg)[0]
            n = (<tuple>sg)[1]
            if not _small(gpa) or not _small(n):
                return BAIL
            if have and cur_a + cur_n == gpa:
                cur_n += n
            else:
                if have:
                    sgs.append((cur_a, cur_n))
                cur_a = gpa
                cur_n = n
                have = True
    if have:
        sgs.append((cur_a, cur_n))
    begin(c)
    if _wb_on:
        _PLANS_NOT += 1
    RS(rq, W_data_sgs, sgs)
    cont(c, F1(K_blkmq_start_request, rid))
    return 0


cdef int _add_req_plan(Core* c, dict rq, i64 rid, WSlot* s) except -1:
    """add_req for a request whose data segments are kept in its slot s: sgs and roles kept
    there too (the header's pdu, the direction, the role)"""
    cdef long long cpdu
    cdef bint is_out
    pdu = RGET(rq, W_pdu)
    op = DGET(rq, "op")
    if not _ll(pdu, &cpdu) or type(op) is not str:
        return BAIL
    s = _wslot(rq)                      # (the same slot: nothing has run since _plan)
    begin(c)
    SS(_g, _GO[G_VQ_LOCKED], True)
    is_out = bool(DGETD(_TYPE_OF, op, _T_GET_ID_O) & T_OUT)
    s.rng = s.nd > 0 and bool(DGET(rq, "payload"))
    s.pdu = cpdu
    s.is_out = is_out
    RS(rq, W_sgs, _LZP)
    RS(rq, W_roles, _LZP)
    RS(rq, W_out_sgs, 2 if is_out and s.nd > 0 else 1)
    call(c, F1(K_vring_add_split, rid), F1(K_vblkd_add_ret, rid))
    return 0


cdef int h_add_req(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.add_req (virtblk_add_req: header, data, status sg entries)"""
    cdef i64 rid = f.a[0]
    cdef dict rq
    cdef list sgs, roles
    cdef bint is_out, has_payload
    cdef WSlot* ps
    if not _kok[K_vblkd_add_req]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    ps = _plan(rq, W_data_sgs)
    if ps != NULL:
        return _add_req_plan(c, rq, rid, ps)
    pdu = RGET(rq, W_pdu)
    data_sgs = RGET(rq, W_data_sgs)
    op = DGET(rq, "op")
    if not _small(pdu) or type(data_sgs) is not list or type(op) is not str:
        return BAIL
    for sg in <list>data_sgs:
        if type(sg) is not tuple or len(<tuple>sg) != 2:
            return BAIL
    begin(c)
    SS(_g, _GO[G_VQ_LOCKED], True)
    is_out = bool(DGETD(_TYPE_OF, op, _T_GET_ID_O) & T_OUT)
    sgs = [(pdu, OUTHDR_SIZE, False)]
    roles = ["request header"]
    role = "data" if not _t(DGET(rq, "payload")) else "range"      # (rq is not changed in the loop)
    for sg in <list>data_sgs:
        sgs.append(((<tuple>sg)[0], (<tuple>sg)[1], not is_out))
        roles.append(role)
    sgs.append((pdu + 16, 1, True))
    roles.append("status")
    RS(rq, W_sgs, sgs)
    RS(rq, W_roles, roles)
    RS(rq, W_out_sgs, 2 if is_out and _t(RG(rq, W_data_sgs)) else 1)
    call(c, F1(K_vring_add_split, rid), F1(K_vblkd_add_ret, rid))
    return 0


cdef inline Frame _kick_frame():
    cdef Frame k = F1(K_vring_kick_prepare, _S_EMPTY)
    k.s[0] = 1
    return k


cdef int h_add_ret(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.add_ret (virtio_queue_rq after virtblk_add_req)"""
    cdef i64 rid = f.a[0]
    cdef dict rq
    if not _kok[K_vblkd_add_ret]:
        return BAIL
    rq = _rq(rid)
    if rq is None or not RIN(rq, W_last):
        return BAIL
    begin(c)
    err = RGETD(rq, W_add_err, "")
    if _t(err):
        call(c, _kick_frame(), F1(K_vblkd_add_err_kick, rid))
        return 0
    if _t(RG(rq, W_last)):
        call(c, _kick_frame(), F1(K_vblkd_queue_rq_end, rid))
        return 0
    cont(c, F1(K_vblkd_queue_rq_end, rid))
    return 0


cdef int h_queue_rq_end(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.queue_rq_end (unlock; notify outside the lock)"""
    if not _kok[K_vblkd_queue_rq_end]:
        return BAIL
    begin(c)
    g = _g
    SS(g, _GO[G_VQ_LOCKED], False)
    SS(_q, _QO[Q_LAST_RET], "OK")
    if _t(SG(g, _GO[G_KICK_NEEDED])):
        SS(g, _GO[G_KICK_NEEDED], False)
        cont(c, F1(K_vring_notify, 0))
    return 0


cdef int h_done(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.done (virtblk_done: lock, then the disable_cb/get_buf loop)"""
    if not _kok[K_vblkd_done]:
        return BAIL
    begin(c)
    SS(_g, _GO[G_VQ_LOCKED], True)
    cont(c, F0(K_vring_disable_cb))
    return 0


cdef int h_request_done(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.request_done (virtblk_request_done: the status byte)"""
    cdef i64 rid = f.a[0], status
    cdef dict rq
    cdef Frame e
    if not _kok[K_vblkd_request_done]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    pdu = RGET(rq, W_pdu)
    if not _small(pdu) or not ram_ok(c, <i64>pdu + 16, 1):
        return BAIL
    begin(c)
    status = c.ram[<i64>pdu + 16]
    RS(rq, W_vstatus, status)
    payload = DGET(rq, "payload")
    if _t(payload):                                             # _cleanup_cmd
        _pa_kfree(payload)
        rq["payload"] = 0
    e = F3(K_blkmq_end_request, rid,
           _S_OK if status == S_OK else _S_NOTSUPP if status == S_UNSUPP else _S_IOERR, 1)
    e.s[1] = 1
    cont(c, e)
    return 0


cdef int h_done_end(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.done_end (virtblk_done: restart a stopped queue; unlock)"""
    if not _kok[K_vblkd_done_end]:
        return BAIL
    begin(c)
    g = _g
    q = _q
    if _t(SG(g, _GO[G_DONE_COUNT])) and _t(SG(q, _QO[Q_STOPPED])):
        SS(q, _QO[Q_STOPPED], False)
        if not _t(SG(q, _QO[Q_RUN_WORK_PENDING])):
            SS(q, _QO[Q_RUN_WORK_PENDING], True)
            post(c, c.vcpu, F0(K_blkmq_run_work), 0, False)
    SS(g, _GO[G_VQ_LOCKED], False)
    return 0


# == block/blk-mq.c (emu/guest/blk_mq.py) ===========================================================

cdef inline bint _mergeable(object op):
    return _eq(op, "READ") or _eq(op, "WRITE") or _eq(op, "DISCARD")


cdef inline int _rq_dir(object op):
    """rq_dir"""
    return 0 if (_eq(op, "READ") or _eq(op, "DRV_IN")) else 1


cdef int _wake(Core* c, str reason) except -1:
    """emu.guest.process._wake"""
    p = _p
    if _eq(SG(p, _PO[P_WAITING]), reason):
        # ("woken-" + reason: the same string, made once)
        if reason is "tag":
            w = "woken-tag"
        elif reason is "mem":
            w = "woken-mem"
        elif reason is "drain":
            w = "woken-drain"
        elif reason is "exit":
            w = "woken-exit"
        else:
            w = "woken-" + reason
        SS(p, _PO[P_WAITING], w)
        post(c, c.vcpu, F0(K_app_resume), 0, False)
    return 0


cdef int _put_tag(object q, object tag) except -1:
    """emu.guest.blk_mq.put_tag (an int tag within the tags bytearray: its byte cleared in
    place, compared in C)"""
    cdef long long t, nr
    tags = SG(q, _QO[Q_TAGS])
    if type(tags) is bytearray and vbg_ll(tag, &t) and 0 <= t < PyByteArray_GET_SIZE(tags):
        PyByteArray_AS_STRING(tags)[t] = 0
        nr_o = SG(q, _QO[Q_NR_REQUESTS])
        if vbg_ll(nr_o, &nr):
            if t < nr:
                SS(q, _QO[Q_ALLOC_HINT], tag)
            return 0
    else:
        tags[tag] = 0
    if tag < SG(q, _QO[Q_NR_REQUESTS]):
        SS(q, _QO[Q_ALLOC_HINT], tag)
    return 0


cdef int _free_request(Core* c, object rid) except -1:
    """emu.guest.blk_mq.free_request"""
    q = _q
    _rq_forget()
    rq = _rqs.pop(rid)
    _put_tag(q, DG(rq, "tag"))
    _wake(c, "tag")
    return 0


cdef long long _get_tag(object q) except -2:
    """emu.guest.blk_mq.get_tag (sbitmap_queue_get)"""
    cdef long long n = SG(q, _QO[Q_NR_REQUESTS])
    cdef long long hint = SG(q, _QO[Q_ALLOC_HINT])
    tags = SG(q, _QO[Q_TAGS])
    cdef char* t_
    cdef const void* z
    cdef long long k, t
    if type(tags) is not bytearray or hint < 0 or n <= 0 or n > PyByteArray_GET_SIZE(tags):
        return _Q.get_tag(q)
    t_ = PyByteArray_AS_STRING(tags)
    # (the first (hint + k) % n, k < n, whose byte is 0: from hint % n to n, then from 0)
    k = hint % n
    z = memchr(t_ + k, 0, <size_t>(n - k))
    if z == NULL:
        z = memchr(t_, 0, <size_t>k)
        if z == NULL:
            return -1
    t = <char*>z - t_
    t_[t] = 1
    if t == hint:
        SS(q, _QO[Q_ALLOC_HINT], (t + 1) % n)
    return t


cdef int _dd_insert(Core* c, object rid) except -1:
    """emu.guest.blk_mq.dd_insert (dd_insert_request)"""
    q = _q
    rqs = _rqs
    cdef dict rq = _rqo(rid)
    op = DG(rq, "op")
    cdef int d = _rq_dir(op)
    cdef dict other
    if _mergeable(op):
        lim = SG(q, _QO[Q_LIMITS])
        maxs = DG(lim, "max_discard_sectors") if _eq(op, "DISCARD") else DG(lim, "max_sectors")
        for oid in <list>(SG(q, _QO[Q_DD_FIFO])[d]):
            other = _rqo(oid)
            if DG(other, "op") == op and DG(other, "sector") + (DG(other, "bytes") >> 9) == DG(rq, "sector") \
                    and (DG(other, "bytes") >> 9) + (DG(rq, "bytes") >> 9) <= maxs \
                    and (_eq(op, "DISCARD") or DG(other, "nsegs") + DG(rq, "nsegs") <= DG(lim, "max_segments")):
                for bio in DG(rq, "bios"):
                    DG(other, "bios").append(bio)
                other["bytes"] += DG(rq, "bytes")
                other["nsegs"] += DG(rq, "nsegs") if not _eq(op, "DISCARD") else 0
                _free_request(c, rid)
                return 0
    RS(rq, W_stage, "queued")
    if _DD_EXP_C and 0 <= c.now < LIM:         # (small ints: added in C)
        RS(rq, W_deadline, c.now + (_DD_READ_C if d == 0 else _DD_WRITE_C))
    else:
        RS(rq, W_deadline, c.now + (DD_READ_EXPIRE_NS if d == 0 else DD_WRITE_EXPIRE_NS))
    SG(q, _QO[Q_DD_FIFO])[d].append(rid)
    return 0


cdef object _dd_next(object q, int d):
    """emu.guest.blk_mq._dd_next (deadline_next_request)"""
    cdef long long cpos = 0, cs, cbs = 0
    cdef bint cmp = True            # (the sectors compared in C while they are small ints)
    pos = SG(q, _QO[Q_DD_NEXT_SECTOR])[d]
    best = None
    bs = None
    rqs = _rqs
    if not _ll(pos, &cpos):
        cmp = False
    for rid in <list>(SG(q, _QO[Q_DD_FIFO])[d]):
        s = DG(_rqo(rid), "sector")
        if cmp and _ll(s, &cs):
            if cs >= cpos and (best is None or cs < cbs):
                best = rid
                bs = s
                cbs = cs
            continue
        cmp = False
        if s >= pos and (best is None or s < bs):
            best = rid
            bs = s
    return best


cdef object _dd_dispatch(Core* c, object q):
    """emu.guest.blk_mq.dd_dispatch (dd_dispatch_request)"""
    cdef int d
    cdef long long cs, cb
    cdef long long cb_, cld
    fifo = SG(q, _QO[Q_DD_FIFO])
    rqs = _rqs
    rid = None
    batching = SG(q, _QO[Q_DD_BATCHING])
    if (not _LIST_SIZE(<object>_LIST_ITEM(fifo, 0)) and not _LIST_SIZE(<object>_LIST_ITEM(fifo, 1))
            and vbg_ll(batching, &cb_) and vbg_ll(SG(q, _QO[Q_DD_LAST_DIR]), &cld) and 0 <= cld <= 1
            and type(SG(q, _QO[Q_DD_NEXT_SECTOR])) is list
            and _LIST_SIZE(SG(q, _QO[Q_DD_NEXT_SECTOR])) == 2):
        return None             # (both FIFOs empty: nothing to dispatch, and nothing read can raise)
    if (cb_ < DD_FIFO_BATCH) if vbg_ll(batching, &cb_) else (batching < DD_FIFO_BATCH):
        rid = _dd_next(q, SG(q, _QO[Q_DD_LAST_DIR]))
    if rid is None:
        reads = (<list>fifo)[0]         # (_q_ok: a list of two lists)
        writes = (<list>fifo)[1]
        if _t(reads) and not (_t(writes) and SG(q, _QO[Q_DD_STARVED]) >= DD_WRITES_STARVED):
            d = 0
            if _t(writes):
                SS(q, _QO[Q_DD_STARVED], SG(q, _QO[Q_DD_STARVED]) + 1)
        elif _t(writes):
            d = 1
            SS(q, _QO[Q_DD_STARVED], 0)
        else:
            return None
        nxt = _dd_next(q, d)
        head = fifo[d][0]
        rid = head if nxt is None or RG(_rqo(head), W_deadline) <= c.now else nxt
        SS(q, _QO[Q_DD_LAST_DIR], d)
        SS(q, _QO[Q_DD_BATCHING], 0)
    rq = _rqo(rid)
    d = _rq_dir(DG(rq, "op"))
    _remove(fifo[d], rid)
    r_sector = DG(rq, "sector")
    r_bytes = DG(rq, "bytes")
    if _ll(r_sector, &cs) and _ll(r_bytes, &cb):
        SG(q, _QO[Q_DD_NEXT_SECTOR])[d] = cs + (cb >> 9)
    else:
        SG(q, _QO[Q_DD_NEXT_SECTOR])[d] = r_sector + (r_bytes >> 9)
    SS(q, _QO[Q_DD_BATCHING], SG(q, _QO[Q_DD_BATCHING]) + 1)
    return rid


# Within a stretch only these handlers rebind those members, each time to a new list (the
# plug's rest, the batch, hctx->dispatch), and none rebinds the FIFOs: once _q_ok has found them
# lists in a stretch they stay so until it ends (_qok_known, cleared at load and store).


cdef bint _q_ok(object q) except -1:
    """The blk-mq lists these handlers walk are lists (and the FIFOs two lists)."""
    global _qok_known
    if _qok_known and q is _q:
        return True
    cdef bint ok = _q_ok_now(q)
    _qok_known = ok and _wb_on and q is _q
    return ok


cdef bint _q_ok_now(object q) except -1:
    """_q_ok, looked at now"""
    cdef PyObject* pl = vbs_peek(q, _QO[Q_PLUG])
    cdef PyObject* ba = vbs_peek(q, _QO[Q_BATCH])
    cdef PyObject* di = vbs_peek(q, _QO[Q_DISPATCH])
    cdef PyObject* ff = vbs_peek(q, _QO[Q_DD_FIFO])
    if pl != NULL and ba != NULL and di != NULL and ff != NULL:      # (all set: read in place)
        return (type(<object>pl) is list and type(<object>ba) is list and type(<object>di) is list
                and type(<object>ff) is list and _LIST_SIZE(<object>ff) == 2
                and type(<object>_LIST_ITEM(<object>ff, 0)) is list
                and type(<object>_LIST_ITEM(<object>ff, 1)) is list)
    fifo = SG(q, _QO[Q_DD_FIFO])
    return (type(SG(q, _QO[Q_PLUG])) is list and type(SG(q, _QO[Q_BATCH])) is list
            and type(SG(q, _QO[Q_DISPATCH])) is list and type(fifo) is list
            and len(<list>fifo) == 2 and type((<list>fifo)[0]) is list
            and type((<list>fifo)[1]) is list)


cdef int h_flush_plug(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.flush_plug (blk_mq_flush_plug_list)"""
    cdef i64 count = f.a[0]
    cdef Py_ssize_t n
    cdef list old, plug
    if not _kok[K_blkmq_flush_plug] or not _q_ok(_q):
        return BAIL
    begin(c)
    q = _q
    old = SG(q, _QO[Q_PLUG])
    n = len(old)
    if 0 <= count < n:
        n = count
    plug = old[:n]
    SS(q, _QO[Q_PLUG], old[n:])
    for rid in plug:
        _dd_insert(c, rid)
    cont(c, F0(K_blkmq_run_queue))
    return 0


cdef int h_run_queue(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.run_queue (blk_mq_run_hw_queue / blk_mq_sched_dispatch_requests)"""
    cdef long long cnr
    if not _kok[K_blkmq_run_queue] or not _q_ok(_q):
        return BAIL
    begin(c)
    q = _q
    if _t(SG(q, _QO[Q_STOPPED])):
        return 0
    if _LIST_SIZE(SG(q, _QO[Q_BATCH])):            # (_q_ok: the batch and dispatch are lists)
        return 0
    disp = SG(q, _QO[Q_DISPATCH])
    if _LIST_SIZE(disp):
        SS(q, _QO[Q_BATCH], disp)
        SS(q, _QO[Q_DISPATCH], [])
        SS(q, _QO[Q_BATCH_FROM], "dispatch")
    else:
        batch = SG(q, _QO[Q_BATCH])
        nr = SG(q, _QO[Q_NR_REQUESTS])
        if vbg_ll(nr, &cnr):            # (an int: compared in C)
            while _LIST_SIZE(batch) < cnr:
                rid = _dd_dispatch(c, q)
                if rid is None:
                    break
                (<list>batch).append(rid)
        else:
            while len(batch) < nr:
                rid = _dd_dispatch(c, q)
                if rid is None:
                    break
                batch.append(rid)
        SS(q, _QO[Q_BATCH_FROM], "sched")
    if not _t(SG(q, _QO[Q_BATCH])):
        return 0
    SS(q, _QO[Q_QUEUED], 0)
    cont(c, F0(K_blkmq_dispatch))
    return 0


cdef int h_dispatch(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.dispatch (blk_mq_dispatch_rq_list: .queue_rq)"""
    cdef list batch
    cdef bint last
    if not _kok[K_blkmq_dispatch] or not _q_ok(_q):
        return BAIL
    batch = SG(_q, _QO[Q_BATCH])
    if not batch:
        return BAIL
    rid = batch[0]
    if not _is_int(rid):
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    begin(c)
    last = len(batch) == 1
    RS(rq, W_stage, "dispatched")
    call(c, F2(K_vblkd_queue_rq, <i64>rid, 1 if last else 0), F1(K_blkmq_dispatch_ret, <i64>rid))
    return 0


cdef int h_dispatch_ret(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.dispatch_ret (blk_mq_dispatch_rq_list: the driver's answer)"""
    cdef i64 rid = f.a[0]
    cdef list batch
    cdef Frame e
    if not _kok[K_blkmq_dispatch_ret] or not _q_ok(_q):
        return BAIL
    q = _q
    ret = SG(q, _QO[Q_LAST_RET])
    batch = SG(q, _QO[Q_BATCH])
    if not batch:
        return BAIL
    if _eq(ret, "OK"):
        begin(c)
        _del0(batch)
        SS(q, _QO[Q_QUEUED], SG(q, _QO[Q_QUEUED]) + 1)
        if batch:
            cont(c, F0(K_blkmq_dispatch), -1, True)
        else:
            cont(c, F0(K_blkmq_run_queue), -1, True)
        return 0
    if _eq(ret, "IOERR") or _eq(ret, "NOTSUPP"):
        begin(c)
        _del0(batch)
        e = F3(K_blkmq_end_request, rid, _S_IOERR if _eq(ret, "IOERR") else _S_NOTSUPP, 0)
        e.s[1] = 1
        if batch:
            call(c, e, F0(K_blkmq_dispatch))
        else:
            call(c, e, F0(K_blkmq_run_queue))
        return 0
    if type(SG(q, _QO[Q_DISPATCH])) is not list:
        return BAIL
    # DEV_RESOURCE / RESOURCE: requeue the rest at the head of hctx->dispatch
    for r in batch:
        if type(_rqs.get(r)) is not dict:
            return BAIL
    begin(c)
    for r in batch:
        RS(_rqs[r], W_stage, "requeued")
    SS(q, _QO[Q_DISPATCH], batch + SG(q, _QO[Q_DISPATCH]))
    SS(q, _QO[Q_BATCH], [])
    if _eq(ret, "RESOURCE"):
        at(c, 3_000_000, F0(K_blkmq_delay_run))
    if _t(SG(q, _QO[Q_QUEUED])):
        cont(c, F0(K_vblkd_commit_rqs))
    return 0


cdef int h_start_request(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.start_request (blk_mq_start_request)"""
    cdef i64 rid = f.a[0]
    cdef dict rq
    if not _kok[K_blkmq_start_request]:
        return BAIL
    rq = _rq(rid)
    if rq is None:
        return BAIL
    begin(c)
    RS(rq, W_stage, "started")
    RS(rq, W_start_ns, c.now)
    cont(c, F1(K_vblkd_add_req, rid))
    return 0


# The process's op_state entries of a stretch (op_state[pc] = state at an operation's start,
# popped when it completes), kept in C in the order stored while only these handlers look at
# the dict (_os_*), as the allocator's entries are (see _po_set): an operation that completes
# in its stretch never reaches the dict, the rest are stored at its end (_os_flush) in order.
# An entry app.op makes is kept as a C record (_os_v NULL: its bios count, status and buf),
# made the dict {"bios", "status", "buf"} (_os_dict) only where it is stored into op_state or
# a path reads it as a dict (_split, a get-id's completion); end_request counts its bios down
# and _op_done reads it in C.
cdef enum:
    OS_MAX = 16
cdef int _os_n = 0
cdef int64_t _os_k[OS_MAX]
cdef PyObject* _os_v[OS_MAX]        # (references) the entry's dict, or NULL: a C record
cdef int64_t _os_nb[OS_MAX]         # a C record's "bios"
cdef PyObject* _os_st[OS_MAX]       # ... its "status" (a reference)
cdef PyObject* _os_bf[OS_MAX]       # ... its "buf" (a reference)
cdef dict _os_d = None              # the dict they belong to
cdef long long _OS_KEPT = 0, _OS_STORED = 0     # (tests: op_state_stats)
cdef long long _OS_REC = 0, _OS_MADE = 0, _OS_RDONE = 0    # (tests: op_state_records)


cdef object _os_dict(int j):
    """kept entry j as a dict (a C record made the dict app.op would have stored; borrowed)"""
    global _OS_MADE
    cdef PyObject* v[3]
    cdef PyObject* x
    cdef object nb
    if _os_v[j] == NULL:
        nb = _os_nb[j]
        v[0] = <PyObject*>nb
        v[1] = _os_st[j]
        v[2] = _os_bf[j]
        d = _mk(_T_OPST, v, 3)          # {"bios", "status", "buf"}
        Py_INCREF(<PyObject*>d)
        _os_v[j] = <PyObject*>d
        x = _os_st[j]
        _os_st[j] = NULL
        Py_DECREF(x)
        x = _os_bf[j]
        _os_bf[j] = NULL
        Py_DECREF(x)
        _OS_MADE += 1
    return <object>_os_v[j]


cdef void _os_release(int j) noexcept:
    """kept entry j's references dropped"""
    cdef PyObject* x
    x = _os_v[j]
    _os_v[j] = NULL
    if x != NULL:
        Py_DECREF(x)
    x = _os_st[j]
    _os_st[j] = NULL
    if x != NULL:
        Py_DECREF(x)
    x = _os_bf[j]
    _os_bf[j] = NULL
    if x != NULL:
        Py_DECREF(x)


cdef int _os_flush() except -1:
    """the kept entries stored into their dict, in order"""
    global _os_n, _os_d, _OS_STORED
    cdef int j, n = _os_n
    d = _os_d
    try:
        for j in range(n):
            if d is not None:
                PyDict_SetItem(<dict>d, _os_k[j], _os_dict(j))
                _OS_STORED += 1
    finally:
        _os_n = 0
        _os_d = None
        for j in range(n):
            _os_release(j)
    return 0


cdef int _os_set(object ost, object pc, Py_ssize_t nbios, object status, object buf) except -1:
    """ost[pc] = {"bios": nbios, "status": status, "buf": buf}"""
    global _os_n, _os_d, _OS_KEPT, _OS_REC
    cdef long long k
    cdef int j
    cdef PyObject* v[3]
    cdef object nb
    if type(ost) is not dict or not _wb_on or not vbg_ll(pc, &k):
        _os_flush()
        nb = nbios
        v[0] = <PyObject*>nb
        v[1] = <PyObject*>status
        v[2] = <PyObject*>buf
        ost[pc] = _mk(_T_OPST, v, 3)
        return 0
    if _os_n and ost is not _os_d:
        _os_flush()
    for j in range(_os_n):
        if _os_k[j] == k:               # (kept already: updated where it is)
            break
    else:
        if _os_n == OS_MAX or pc in <dict>ost:
            _os_flush()
            nb = nbios
            v[0] = <PyObject*>nb
            v[1] = <PyObject*>status
            v[2] = <PyObject*>buf
            PyDict_SetItem(<dict>ost, pc, _mk(_T_OPST, v, 3))
            return 0
        _os_d = <dict>ost
        j = _os_n
        _os_k[j] = k
        _os_v[j] = _os_st[j] = _os_bf[j] = NULL
        _os_n += 1
        _OS_KEPT += 1
    _os_release(j)
    _os_nb[j] = nbios
    Py_INCREF(<PyObject*>status)
    _os_st[j] = <PyObject*>status
    Py_INCREF(<PyObject*>buf)
    _os_bf[j] = <PyObject*>buf
    _OS_REC += 1
    return 0


cdef inline int _os_find(object ost, object idx) noexcept:
    """the index of idx's kept entry of ost, or -1"""
    cdef long long k
    cdef int j
    if _os_n and ost is _os_d and vbg_ll(idx, &k):
        for j in range(_os_n):
            if _os_k[j] == k:
                return j
    return -1


cdef object _os_get(object ost, object idx):
    """ost[idx]"""
    cdef int j = _os_find(ost, idx)
    if j >= 0:
        return _os_dict(j)
    if _os_n and ost is _os_d and type(idx) is not int:
        _os_flush()                     # (an equal key of another type: the dict decides)
    return ost[idx]


cdef void _os_drop(int j) noexcept:
    """kept entry j removed (its references dropped)"""
    global _os_n
    _os_release(j)
    _os_n -= 1
    if j < _os_n:
        memmove(&_os_k[j], &_os_k[j + 1], (_os_n - j) * sizeof(int64_t))
        memmove(&_os_v[j], &_os_v[j + 1], (_os_n - j) * sizeof(PyObject*))
        memmove(&_os_nb[j], &_os_nb[j + 1], (_os_n - j) * sizeof(int64_t))
        memmove(&_os_st[j], &_os_st[j + 1], (_os_n - j) * sizeof(PyObject*))
        memmove(&_os_bf[j], &_os_bf[j + 1], (_os_n - j) * sizeof(PyObject*))
    _os_v[_os_n] = _os_st[_os_n] = _os_bf[_os_n] = NULL
    if not _os_n:
        _os_d_clear()


cdef object _os_pop(object ost, object idx):
    """ost.pop(idx)"""
    cdef int j = _os_find(ost, idx)
    if j < 0:
        if _os_n and ost is _os_d and type(idx) is not int:
            _os_flush()
        return (<dict>ost).pop(idx) if type(ost) is dict else ost.pop(idx)
    v = _os_dict(j)
    _os_drop(j)
    return v


cdef inline void _os_d_clear() noexcept:
    global _os_d
    _os_d = None


def op_state_stats():
    """(op_state entries kept in C, stored into the dict at a stretch's end) (tests)"""
    return _OS_KEPT, _OS_STORED


def op_state_records():
    """(op_state entries kept as C records, records made dicts, operations completed from a
    record) (tests)"""
    return _OS_REC, _OS_MADE, _OS_RDONE


cdef int _op_done(Core* c, object idx) except -1:
    """emu.guest.process._op_done (the AIO completes)"""
    global _OS_RDONE
    p = _p
    cdef dict st = None
    cdef PyObject* v[4]
    cdef object o_n, o_line, s_status, s_buf, nb_rec = None
    cdef int j
    ost = SG(p, _PO[P_OP_STATE])
    j = _os_find(ost, idx)
    if j >= 0 and _os_v[j] == NULL:     # (a C record: popped, its status and buf read in C)
        s_status = <object>_os_st[j]
        s_buf = <object>_os_bf[j]
        nb_rec = _os_nb[j]
        _os_drop(j)
    else:
        st = _os_pop(ost, idx)
    ops = SG(p, _PO[P_OPS])
    cdef long long ci
    cdef dict op
    if type(ops) is list and vbg_ll(idx, &ci) and 0 <= ci < _LIST_SIZE(ops):
        op_o = <object>_LIST_ITEM(ops, ci)         # (ops[idx], read in place)
    else:
        op_o = ops[idx]
    op = op_o
    SS(p, _PO[P_INFLIGHT], SG(p, _PO[P_INFLIGHT]) - 1)
    opname = DG(op, "op")                   # (op is not changed below: one lookup of each key)
    if st is None:
        if _eq(opname, "get-id"):           # (it stores "serial" into the entry: the dict)
            v[0] = <PyObject*>nb_rec
            v[1] = <PyObject*>s_status
            v[2] = <PyObject*>s_buf
            st = _mk(_T_OPST, v, 3)
        else:
            _OS_RDONE += 1
    if st is not None:
        s_status = None
        s_buf = None
    if _eq(opname, "read"):
        data = _mem.read(DG(st, "buf") if st is not None else s_buf, DG(op, "length"))
        SG(p, _PO[P_READS]).append(
            {"n": DG(op, "n"), "offset": DG(op, "offset"), "length": DG(op, "length"),
             "sha256": _sha256(data).hexdigest(),
             "status": DG(st, "status") if st is not None else s_status, "line": DG(op, "line")})
    if _eq(opname, "get-id"):
        raw = _mem.read(DG(st, "buf"), _ID_BYTES)
        st["serial"] = raw.split(b"\0", 1)[0].decode("latin-1")
    buf = DGET(st, "buf") if st is not None else s_buf
    if _t(buf):
        _pa_free(buf)
    o_n = DG(op, "n")
    o_line = DG(op, "line")
    if st is not None:
        s_status = DG(st, "status")
    v[0] = <PyObject*>o_n
    v[1] = <PyObject*>o_line
    v[2] = <PyObject*>opname
    v[3] = <PyObject*>s_status
    res = _mk(_T_RES, v, 4)             # {"n", "line", "op", "status"}
    if st is not None and "serial" in st:
        res["serial"] = DG(st, "serial")
    SG(p, _PO[P_RESULTS]).append(res)
    _wake(c, "mem")
    if SG(p, _PO[P_INFLIGHT]) == 0:
        _wake(c, "drain")
        _wake(c, "exit")
    return 0


cdef int h_end_request(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.end_request (blk_mq_end_request: bio_endio, free the tag)"""
    cdef i64 rid = f.a[0], from_irq = f.a[2]
    cdef dict rq, st
    cdef list completed
    cdef PyObject* v[5]
    cdef object rid_o, r_op, r_sector, r_bytes
    cdef int j
    cdef PyObject* x
    if not _kok[K_blkmq_end_request] or not f.s[1]:
        return BAIL
    rq = _rq(rid)
    if rq is None or type(DGET(rq, "bios")) is not list:
        return BAIL
    completed_o = SG(_g, _GO[G_COMPLETED])
    if type(completed_o) is not list:
        return BAIL
    completed = <list>completed_o
    status = arg_str(c, f.a[1])
    p = _p
    begin(c)
    RS(rq, W_status, status)
    for bio in <list>DG(rq, "bios"):
        idx = DG(bio, "op_idx")                          # bio_done
        ost = SG(p, _PO[P_OP_STATE])
        j = _os_find(ost, idx)
        if j >= 0 and _os_v[j] == NULL:     # (a C record: counted down in C)
            _os_nb[j] -= 1
            if not _eq(status, "OK") and _eq(<object>_os_st[j], "OK"):
                x = _os_st[j]
                Py_INCREF(<PyObject*>status)
                _os_st[j] = <PyObject*>status
                Py_DECREF(x)
            if _os_nb[j] == 0:
                _op_done(c, idx)
            continue
        st = _os_get(ost, idx)
        nb = DG(st, "bios") - 1             # (st["bios"] -= 1 ... if st["bios"] == 0)
        st["bios"] = nb
        if not _eq(status, "OK") and _eq(DG(st, "status"), "OK"):
            st["status"] = status
        if nb == 0:
            _op_done(c, idx)
    rid_o = rid                 # (boxed once: the key popped from rqs and the entry's "id")
    _free_request(c, rid_o)
    r_op = DG(rq, "op")
    r_sector = DG(rq, "sector")
    r_bytes = DG(rq, "bytes")
    v[0] = <PyObject*>rid_o
    v[1] = <PyObject*>r_op
    v[2] = <PyObject*>r_sector
    v[3] = <PyObject*>r_bytes
    v[4] = <PyObject*>status
    completed.append(_pool_get(&_pl_done, _T_DONE, v, 5))  # {"id", "op", "sector", "bytes", "status"}
    if len(completed) > 64:
        old = completed[0]
        del completed[0]
        _pool_put(&_pl_done, old, _T_DONE, 5)       # (only old holds it: kept for the next)
        old = None
    if from_irq:
        cont(c, F0(K_vring_get_buf))
    _wdrop(rq)                  # (freed: its kept fields need not be written)
    bio = None                  # (the loop's last bio: only rq's list holds it now)
    _bios_put(rq)                               # (its bios, when only rq reaches them)
    _pool_put(&_pl_rq, rq, _T_RQ, 14)           # (only rq holds it: kept for the next)
    return 0


# == block/fops.c: the guest process (emu/guest/process.py) =========================================

cdef int _sleep(Core* c, str reason) except -1:
    """emu.guest.process._sleep (schedule() flushes the plug first)"""
    SS(_p, _PO[P_WAITING], reason)
    if _t(SG(_q, _QO[Q_PLUG])):
        cont(c, F1(K_blkmq_flush_plug, -1))
    return 0


cdef inline int _next(Core* c) except -1:
    """emu.guest.process._next"""
    if _t(SG(_p, _PO[P_PENDING_BIOS])):
        cont(c, F0(K_blkmq_submit_bio), -1, True)
    else:
        cont(c, F0(K_app_op), -1, True)
    return 0


cdef inline Frame _next_frame():
    """emu.guest.process._next_frame"""
    if _t(SG(_p, _PO[P_PENDING_BIOS])):
        return F0(K_blkmq_submit_bio)
    return F0(K_app_op)


cdef dict _bio(object p, str rq_op, object sector, object nbytes, list segs):
    """emu.guest.process._bio"""
    global _BIO_GOT, _BUILT
    cdef PyObject* v[6]
    cdef PyObject* x
    cdef object nb, pc
    nb = SG(p, _PO[P_NEXT_BIO])
    pc = SG(p, _PO[P_PC])
    v[0] = <PyObject*>nb
    v[1] = <PyObject*>pc
    v[2] = <PyObject*>rq_op
    v[3] = <PyObject*>sector
    v[4] = <PyObject*>nbytes
    v[5] = <PyObject*>segs
    cdef dict b
    if _pl_bio.n:               # (a kept bio shell refilled: _pool_get's)
        _pl_bio.n -= 1
        x = _pl_bio.d[_pl_bio.n]
        _pl_bio.d[_pl_bio.n] = NULL
        b = <dict>x
        Py_DECREF(x)            # (b holds it now)
        vbg_refill(b, v, 6)
        _BIO_GOT += 1
        _BUILT += 1
    else:
        b = _mk(_T_BIO, v, 6)   # {"id", "op_idx", "op", "sector", "bytes", "segs"}
    SS(p, _PO[P_NEXT_BIO], nb + 1)
    return b


cdef list _range_bios(object p, dict lim, dict op, str rq_op, object max_sectors, object unmap):
    """emu.guest.process._range_bios (discard / write-zeroes bios, cut at max_sectors)"""
    cdef list bios = []
    cdef dict b
    lbs_sect = DG(lim, "logical_block_size") >> 9
    step = max(lbs_sect, max_sectors - max_sectors % lbs_sect) << 9
    length = DG(op, "length")
    offset = DG(op, "offset")
    for pos in range(0, length, step):
        n = min(step, length - pos)
        b = _bio(p, rq_op, (offset + pos) >> 9, n, [])
        b["unmap"] = unmap
        bios.append(b)
    return bios


cdef list _zero_page_bios(object p, long long off, long long length):
    """emu.guest.process._make_bios's write-zeroes fallback: WRITE bios of the shared zero page"""
    cdef list bios = [], segs
    cdef long long pos, n, k, step = BIO_MAX_VECS * PAGE
    g = _g
    if not _t(SG(g, _GO[G_ZERO_PAGE])):
        SS(g, _GO[G_ZERO_PAGE], _pa_alloc(1) or 0)
    zero_page = SG(g, _GO[G_ZERO_PAGE])
    pos = 0
    while pos < length:
        n = min(step, length - pos)
        segs = []
        k = 0
        while k < n:
            segs.append((zero_page, min(PAGE, n - k)))
            k += PAGE
        bios.append(_bio(p, "WRITE", (off + pos) >> 9, n, segs))
        pos += step
    return bios


cdef int h_app_op(Core* c, Frame* f) except -1:
    """emu.guest.process.op_step (blkdev_write_iter etc.: the next workload operation)"""
    cdef list ops, bios
    cdef dict op
    cdef long long clen, coff, pos, n, step, npages, clbs, cn, cbuf, cpc
    cdef bint is_write
    cdef int rw
    cdef bytes data
    if not _kok[K_app_op] or not _q_ok(_q):
        return BAIL
    p = _p
    g = _g
    q = _q
    ops_o = SG(p, _PO[P_OPS])
    pc = SG(p, _PO[P_PC])
    if type(ops_o) is not list or not _small(pc) or type(SG(p, _PO[P_PENDING_BIOS])) is not list:
        return BAIL
    ops = <list>ops_o
    cpc = pc                    # (_small: an int in [0, 2**52), compared and indexed in C)
    if cpc >= _LIST_SIZE(ops):
        begin(c)
        if _t(SG(p, _PO[P_INFLIGHT])):
            _sleep(c, "exit")
            return 0
        cont(c, F0(K_app_exit))
        return 0
    op_o = <object>_LIST_ITEM(ops, cpc)
    if type(op_o) is not dict:
        return BAIL
    op = <dict>op_o
    kind = DGET(op, "op")
    # (an exact str kind is compared once with "write" and "read" first: its comparisons with
    # the other kinds are false and have no effect; any other kind takes the chain in order)
    rw = 0
    if type(kind) is str:
        if _eq(kind, "write"):
            rw = 1
        elif _eq(kind, "read"):
            rw = 2
    if rw:
        pass
    elif _eq(kind, "wait"):
        begin(c)
        if _t(SG(p, _PO[P_INFLIGHT])):
            _sleep(c, "drain")
            return 0
        SS(p, _PO[P_PC], pc + 1)
        cont(c, F0(K_app_op), -1, True)
        return 0
    elif _eq(kind, "at"):
        t = DGET(op, "time_ns")
        if not _small(t):
            return BAIL
        begin(c)
        SS(p, _PO[P_PC], pc + 1)
        if c.now < <i64>t:
            at(c, <i64>t - c.now, F0(K_app_hrtimer))
            _sleep(c, "timer")
            return 0
        cont(c, F0(K_app_op), -1, True)
        return 0
    elif _eq(kind, "queue-depth"):
        depth = DGET(op, "depth")
        if type(depth) is not int:
            return BAIL
        begin(c)
        nr = max(depth, BLKDEV_MIN_RQ)
        SS(p, _PO[P_PC], pc + 1)
        cont(c, F0(K_app_op), -1, True)
        if nr > SG(q, _QO[Q_DEPTH]):
            return 0
        SS(q, _QO[Q_NR_REQUESTS], nr)
        SS(q, _QO[Q_ALLOC_HINT], SG(q, _QO[Q_ALLOC_HINT]) % nr)
        return 0
    buf = 0
    err = ""
    if not rw and _eq(kind, "flush"):
        begin(c)
        if not _t(SG(q, _QO[Q_WRITE_CACHE])):
            bios = []
        else:
            bios = [_bio(p, "FLUSH", 0, 0, [])]
    elif rw or _eq(kind, "write") or _eq(kind, "read"):
        is_write = rw == 1 if rw else _eq(kind, "write")
        off = DGET(op, "offset")
        length = DGET(op, "length")
        lim_o = SG(q, _QO[Q_LIMITS])
        if _lim(lim_o) and _L_OK[L_LBS]:
            clbs = _L[L_LBS]
        elif not _ll(DGET(lim_o, "logical_block_size"), &clbs):
            return BAIL
        if not _ll(off, &coff) or not _ll(length, &clen) or not clbs:
            return BAIL
        if is_write:
            fill = DGET(op, "fill")
            if fill is not None and not (type(fill) is int and 0 <= fill <= 255):
                return BAIL
            if not _ll(DGET(op, "n"), &cn) or not _wp_ok:
                return BAIL
        begin(c)
        bios = []
        if coff % clbs or clen % clbs:
            err = "EINVAL"
        else:
            npages = (clen + PAGE - 1) // PAGE
            buf = _pa_alloc(npages)
            if buf is None:
                err = "ENOMEM"
                buf = 0
            else:
                cbuf = buf                  # (a page's address: below 2**52)
                if is_write:
                    _write_pattern_ram(c, cbuf, cn, coff, clen, fill)
                step = BIO_MAX_VECS * PAGE
                rq_op = "WRITE" if is_write else "READ"
                pos = 0
                while pos < clen:
                    n = min(step, clen - pos)
                    bios.append(_bio(p, rq_op, (coff + pos) >> 9, n, [(cbuf + pos, n)]))
                    pos += step
    elif _eq(kind, "discard") or _eq(kind, "write-zeroes"):
        off = DGET(op, "offset")
        length = DGET(op, "length")
        lim = SG(q, _QO[Q_LIMITS])
        if type(lim) is not dict:
            return BAIL
        lbs = (<dict>lim).get("logical_block_size")
        if not _small(off) or not _small(length) or not _small(lbs) or not lbs:
            return BAIL
        begin(c)
        bios = []
        if off % lbs or length % lbs:
            err = "EINVAL"
        elif _eq(kind, "discard"):
            mds = DG(lim, "max_discard_sectors")
            if not mds:
                err = "EOPNOTSUPP"
            else:
                bios = _range_bios(p, lim, op, "DISCARD", mds, False)
        else:
            mwz = DG(lim, "max_write_zeroes_sectors")
            if mwz:
                bios = _range_bios(p, lim, op, "WRITE_ZEROES", mwz, bool(DGET(op, "unmap")))
            elif DGET(op, "unmap"):
                err = "EOPNOTSUPP"
            else:
                bios = _zero_page_bios(p, off, length)
    elif _eq(kind, "get-id"):
        begin(c)
        buf = _pa_alloc(1)
        if buf is None:
            bios = []
            err = "ENOMEM"
            buf = 0
        else:
            bios = [_bio(p, "DRV_IN", 0, _ID_BYTES, [(buf, _ID_BYTES)])]
    else:
        return BAIL             # unknown: the compiled engine
    if _eq(err, "ENOMEM") and _t(SG(p, _PO[P_INFLIGHT])):
        _sleep(c, "mem")
        return 0
    SS(p, _PO[P_PC], pc + 1)
    if err:
        SG(p, _PO[P_RESULTS]).append({"n": DG(op, "n"), "line": DG(op, "line"), "op": kind, "status": err})
        cont(c, F0(K_app_op), -1, True)
        return 0
    if not bios:
        SG(p, _PO[P_RESULTS]).append({"n": DG(op, "n"), "line": DG(op, "line"), "op": kind, "status": "OK"})
        cont(c, F0(K_app_op), -1, True)
        return 0
    _os_set(SG(p, _PO[P_OP_STATE]), pc, len(bios), "OK", buf)     # {"bios", "status", "buf"}
    SS(p, _PO[P_INFLIGHT], SG(p, _PO[P_INFLIGHT]) + 1)
    (<list>SG(p, _PO[P_PENDING_BIOS])).extend(bios)       # (a list: checked before begin)
    cont(c, F0(K_blkmq_submit_bio), -1, True)
    return 0


cdef inline bint _ll(object o, long long* out) noexcept:
    """o is an int in [0, 2**52): *out = o"""
    return vbg_ll(o, out) and 0 <= out[0] < LIM


cdef str _try_merge(object q, dict rq, dict bio):
    """emu.guest.blk_mq.try_merge (sizes and sectors in C when they are ints below 2**52)"""
    cdef long long bb, rb, mx, rs, bs, ns, mseg
    cdef bint disc
    if (_ll(DGET(rq, "sector"), &rs) and _ll(DGET(bio, "sector"), &bs)
            and _ll(DGET(rq, "bytes"), &rb) and _ll(DGET(bio, "bytes"), &bb)
            and rs + (rb >> 9) != bs and bs + (bb >> 9) != rs):
        return ""       # (not adjacent: no merge, whatever the rest says; ints read, no error)
    op = DG(rq, "op")
    if op != DG(bio, "op") or not _mergeable(op) or DGET(rq, "nomerge"):
        return ""
    stage = RG(rq, W_stage)
    if not (_eq(stage, "plugged") or _eq(stage, "queued")):
        return ""
    lim = SG(q, _QO[Q_LIMITS])
    disc = _eq(op, "DISCARD")
    if (type(lim) is dict and _ll(DGET(bio, "bytes"), &bb) and _ll(DGET(rq, "bytes"), &rb)
            and _ll(DGET(rq, "sector"), &rs) and _ll(DGET(bio, "sector"), &bs)):
        if rs + (rb >> 9) != bs and bs + (bb >> 9) != rs:
            return ""                   # (not adjacent: the limits need not be looked at)
    if (type(lim) is dict and _ll(DGET(bio, "bytes"), &bb) and _ll(DGET(rq, "bytes"), &rb)
            and _ll((<dict>lim).get("max_discard_sectors" if disc else "max_sectors"), &mx)
            and _ll(DGET(rq, "sector"), &rs) and _ll(DGET(bio, "sector"), &bs)
            and (disc or (_ll(DGET(rq, "nsegs"), &ns) and _ll((<dict>lim).get("max_segments"), &mseg)
                          and type(DGET(bio, "segs")) is list))):
        if rs + (rb >> 9) != bs and bs + (bb >> 9) != rs:
            return ""                   # (not adjacent: the limits need not be looked at)
        if (rb >> 9) + (bb >> 9) > mx:
            return ""
        if not disc and ns + len(<list>DG(bio, "segs")) > mseg:
            return ""
        if rs + (rb >> 9) == bs:
            return "back"
        return "front"
    nsect = DG(bio, "bytes") >> 9
    if (DG(rq, "bytes") >> 9) + nsect > (DG(lim, "max_discard_sectors") if _eq(op, "DISCARD") else DG(lim, "max_sectors")):
        return ""
    if not _eq(op, "DISCARD") and DG(rq, "nsegs") + len(DG(bio, "segs")) > DG(lim, "max_segments"):
        return ""
    if DG(rq, "sector") + (DG(rq, "bytes") >> 9) == DG(bio, "sector"):
        return "back"
    if DG(bio, "sector") + nsect == DG(rq, "sector"):
        return "front"
    return ""


cdef bint _merge(Core* c, dict rq, dict bio, list pending) except -1:
    """try_merge + do_merge of bio into rq; on a merge the bio leaves pending and the task goes
    on (_next).  True when merged."""
    cdef str how = _try_merge(_q, rq, bio)
    if not how:
        return False
    if _eq(how, "back"):                       # do_merge
        (<list>DG(rq, "bios")).append(bio)
    else:
        (<list>DG(rq, "bios")).insert(0, bio)
        rq["sector"] = DG(bio, "sector")
    rq["bytes"] += DG(bio, "bytes")
    rq["nsegs"] += len(DG(bio, "segs")) if not _eq(DG(rq, "op"), "DISCARD") else 0
    _del0(pending)
    _next(c)
    return True


# The queue limits (blk-mq's limits dict) as C ints, read again when the dict is another one or
# has changed (its version tag); a limit that is not an int in [0, 2**52) is not cached (its
# _L_OK bit clear: the handlers look it up as before).
cdef enum:
    L_MAXS, L_MDS, L_MWZ, L_MSEG, L_LBS, L_N
cdef tuple _L_NAMES = ("max_sectors", "max_discard_sectors", "max_write_zeroes_sectors",
                       "max_segments", "logical_block_size")
cdef object _lim_obj = None
cdef unsigned long long _lim_ver = 0
cdef long long _L[L_N]
cdef bint _L_OK[L_N]


cdef bint _lim(object lim) except -1:
    """_L and _L_OK are lim's (a dict)"""
    global _lim_obj, _lim_ver
    cdef int j
    if lim is _lim_obj and VBG_HAVE_DICT_VERSION and VBG_DICT_VERSION(<dict>lim) == _lim_ver:
        return True
    if type(lim) is not dict:
        return False
    for j in range(L_N):
        _L_OK[j] = _ll(DGET(lim, _L_NAMES[j]), &_L[j])
    _lim_obj = lim
    _lim_ver = VBG_DICT_VERSION(<dict>lim)
    return True


cdef bint _split(object p, dict lim, dict bio, object op, list segs, object nbytes,
                 object sector) except -1:
    """emu.guest.process._split (bio_split_to_limits: cut at max_sectors / max_segments, the
    rest queued next); True when the bio was cut"""
    cdef list head, tail
    cdef long long cmaxs, cnb, cmseg
    cdef int w
    if _lim(lim) and _ll(nbytes, &cnb):
        w = L_MDS if _eq(op, "DISCARD") else (L_MWZ if _eq(op, "WRITE_ZEROES") else L_MAXS)
        if _L_OK[w] and cnb <= (_L[w] << 9) and (not segs or (_L_OK[L_MSEG] and len(segs) <= _L[L_MSEG])):
            return False        # (the common case, from the cached limits: no cut)
    maxs = DG(lim, "max_discard_sectors") if _eq(op, "DISCARD") else (
        DG(lim, "max_write_zeroes_sectors") if _eq(op, "WRITE_ZEROES") else DG(lim, "max_sectors"))
    if _ll(maxs, &cmaxs) and _ll(nbytes, &cnb) and cnb <= (cmaxs << 9):
        # the common case, in C: no cut by size; by segments only past max_segments
        if not segs or (_ll(DG(lim, "max_segments"), &cmseg) and len(segs) <= cmseg):
            return False
    cut = min(nbytes, maxs << 9)
    if segs:
        mseg = DG(lim, "max_segments")
        if len(segs) > mseg:
            cut = min(cut, sum([sg[1] for sg in segs[:mseg]]))
    if _eq(op, "FLUSH") or _eq(op, "DRV_IN") or cut >= nbytes:
        return False
    rest = dict(bio)
    nb = SG(p, _PO[P_NEXT_BIO])
    rest["id"] = nb
    rest["sector"] = sector + (cut >> 9)
    rest["bytes"] = nbytes - cut
    SS(p, _PO[P_NEXT_BIO], nb + 1)
    if segs:
        bio["segs"], rest["segs"] = _split_segs(segs, cut)
    bio["bytes"] = cut
    SG(p, _PO[P_PENDING_BIOS]).insert(1, rest)
    _os_get(SG(p, _PO[P_OP_STATE]), DG(bio, "op_idx"))["bios"] += 1
    return True


cdef int h_submit_bio(Core* c, Frame* f) except -1:
    """emu.guest.process.submit_bio (blk_mq_submit_bio: merge, else tag and plug)"""
    cdef list pending, cands, plug, segs
    cdef dict bio, rq
    cdef str how
    cdef long long tag
    cdef Py_ssize_t n_before
    cdef uint8_t hdr[16]
    cdef PyObject* v[14]
    cdef object tag_o, rbios, nsegs, nomerge, unmap
    if not _kok[K_blkmq_submit_bio] or not _q_ok(_q):
        return BAIL
    p = _p
    q = _q
    pend_o = SG(p, _PO[P_PENDING_BIOS])
    if type(pend_o) is not list or not _t(pend_o):
        return BAIL
    pending = <list>pend_o
    bio_o = pending[0]
    if type(bio_o) is not dict:
        return BAIL
    bio = <dict>bio_o
    bop = DGET(bio, "op")
    segs_o = DGET(bio, "segs")
    b_bytes = DGET(bio, "bytes")
    b_sector = DGET(bio, "sector")
    if type(bop) is not str or type(segs_o) is not list or not _small(b_bytes) \
            or not _small(b_sector):
        return BAIL
    segs = <list>segs_o
    lim = SG(q, _QO[Q_LIMITS])
    if type(lim) is not dict:
        return BAIL
    if _eq(bop, "DRV_IN") and not ram_ok(c, SI(_g, _GO[G_PDU_BASE]), PDU_SIZE * SI(q, _QO[Q_NR_REQUESTS])):
        return BAIL
    begin(c)
    if _split(p, <dict>lim, bio, bop, segs, b_bytes, b_sector):
        segs = DG(bio, "segs")
        b_bytes = DG(bio, "bytes")
    rqs = _rqs
    if _mergeable(bop):
        # the candidates: the plug's last request, then the scheduler FIFO of the bio's
        # direction (read in place: nothing changes them before a merge returns)
        plug = SG(q, _QO[Q_PLUG])
        if plug and _merge(c, _rqo(plug[len(plug) - 1]), bio, pending):
            return 0
        for rid in <list>(SG(q, _QO[Q_DD_FIFO])[_rq_dir(bop)]):
            if _merge(c, _rqo(rid), bio, pending):
                return 0
    tag = _get_tag(q)
    if tag < 0:
        _sleep(c, "tag")
        return 0
    _del0(pending)
    rid = SG(q, _QO[Q_NEXT_RQ])
    SS(q, _QO[Q_NEXT_RQ], rid + 1)
    tag_o = tag
    rbios = _list1(bio)
    nsegs = len(segs) or (1 if (_eq(bop, "DISCARD") or _eq(bop, "WRITE_ZEROES")) else 0)
    nomerge = not _mergeable(bop)
    unmap = DGETD(bio, "unmap", False)
    v[0] = <PyObject*>rid
    v[1] = <PyObject*>tag_o
    v[2] = <PyObject*>bop
    v[3] = <PyObject*>b_sector
    v[4] = <PyObject*>b_bytes
    v[5] = <PyObject*>rbios
    v[6] = <PyObject*>nsegs
    v[7] = <PyObject*>nomerge
    v[8] = <PyObject*>unmap
    v[9] = <PyObject*>"plugged"
    v[10] = <PyObject*>None
    v[11] = <PyObject*>_ZERO
    v[12] = <PyObject*>_ZERO
    v[13] = <PyObject*>None
    # {"id", "tag", "op", "sector", "bytes", "bios", "nsegs", "nomerge", "unmap", "stage",
    #  "head", "table", "payload", "status"}
    rq = _pool_get(&_pl_rq, _T_RQ, v, 14)
    _rq_forget()
    rqs[rid] = rq
    _rq_remember(rid, rq)       # (rqs[rid] is rq now)
    if _eq(bop, "FLUSH") or _eq(bop, "DRV_IN"):
        if _eq(bop, "DRV_IN"):                 # virtblk_get_id's GET_ID header in the tag's PDU
            _st(hdr, T_GET_ID, 4)
            _st(hdr + 4, 0, 4)
            _st(hdr + 8, 0, 8)
            ram_write(c, SI(_g, _GO[G_PDU_BASE]) + tag * PDU_SIZE, hdr, 16)
        RS(rq, W_stage, "queued")
        SG(q, _QO[Q_DISPATCH]).append(rid)
        call(c, F0(K_blkmq_run_queue), _next_frame())
        return 0
    plug = SG(q, _QO[Q_PLUG])
    n_before = len(plug)
    flush_first = n_before > 0 and (n_before >= BLK_MAX_REQUEST_COUNT or
                                    _rqo(plug[n_before - 1])["bytes"] >= BLK_PLUG_FLUSH_SIZE)
    plug.append(rid)
    if flush_first:
        call(c, F1(K_blkmq_flush_plug, n_before), _next_frame())
        return 0
    _next(c)
    return 0


cdef int h_app_resume(Core* c, Frame* f) except -1:
    """emu.guest.process.resume (schedule: the process wakes)"""
    if not _kok[K_app_resume]:
        return BAIL
    p = _p
    w = SG(p, _PO[P_WAITING])
    if type(w) is not str:
        return BAIL
    begin(c)
    if _eq(w, "woken-tag"):
        reason = "tag"
    elif _eq(w, "woken-drain"):
        reason = "drain"
    elif _eq(w, "woken-exit"):
        reason = "exit"
    else:
        reason = (<str>w).replace("woken-", "")
    SS(p, _PO[P_WAITING], "")
    if _eq(reason, "drain"):
        SS(p, _PO[P_PC], SG(p, _PO[P_PC]) + 1)
        cont(c, F0(K_app_op), -1, True)
    elif _eq(reason, "exit"):
        cont(c, F0(K_app_exit))
    elif _eq(reason, "tag"):
        cont(c, F0(K_blkmq_submit_bio), -1, True)
    else:
        cont(c, F0(K_app_op), -1, True)
    return 0


# == the rarer guest kinds ===========================================================================

cdef int h_add_err_kick(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.add_err_kick (virtqueue_kick after a failed add)"""
    cdef i64 rid = f.a[0]
    if not _kok[K_vblkd_add_err_kick]:
        return BAIL
    begin(c)
    if _t(SG(_g, _GO[G_KICK_NEEDED])):
        call(c, F1(K_vring_notify, 0), F1(K_vblkd_add_err_end, rid))
    else:
        cont(c, F1(K_vblkd_add_err_end, rid))
    return 0


cdef int h_add_err_end(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.add_err_end (unlock; BLK_STS_DEV_RESOURCE / IOERR / RESOURCE)"""
    cdef i64 rid = f.a[0]
    cdef dict rq
    if not _kok[K_vblkd_add_err_end]:
        return BAIL
    rq = _rq(rid)
    if rq is None or not RIN(rq, W_add_err):
        return BAIL
    begin(c)
    _wflush(rq)
    err = rq.pop("add_err")
    payload = DGET(rq, "payload")
    if _t(payload):                                             # _cleanup_cmd
        _pa_kfree(payload)
        rq["payload"] = 0
    SS(_g, _GO[G_VQ_LOCKED], False)
    q = _q
    if _eq(err, "ENOSPC"):
        SS(q, _QO[Q_STOPPED], True)
        SS(q, _QO[Q_LAST_RET], "DEV_RESOURCE")
    else:
        SS(q, _QO[Q_LAST_RET], "IOERR" if _eq(err, "EIO") else "RESOURCE")
    return 0


cdef int h_commit_rqs(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.commit_rqs (virtio_commit_rqs: kick what was queued)"""
    if not _kok[K_vblkd_commit_rqs]:
        return BAIL
    begin(c)
    call(c, _kick_frame(), F0(K_vblkd_commit_notify))
    return 0


cdef int h_commit_notify(Core* c, Frame* f) except -1:
    """emu.guest.virtio_blk.commit_notify"""
    if not _kok[K_vblkd_commit_notify]:
        return BAIL
    begin(c)
    if _t(SG(_g, _GO[G_KICK_NEEDED])):
        SS(_g, _GO[G_KICK_NEEDED], False)
        cont(c, F1(K_vring_notify, 0))
    return 0


cdef int h_run_work(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.run_work (blk_mq_run_work_fn: kblockd runs the queue)"""
    if not _kok[K_blkmq_run_work]:
        return BAIL
    begin(c)
    SS(_q, _QO[Q_RUN_WORK_PENDING], False)
    cont(c, F0(K_blkmq_run_queue))
    return 0


cdef int h_delay_run(Core* c, Frame* f) except -1:
    """emu.guest.blk_mq.delay_run (blk_mq_delay_run_hw_queue's timer)"""
    if not _kok[K_blkmq_delay_run]:
        return BAIL
    begin(c)
    post(c, c.vcpu, F0(K_blkmq_run_work), 0, False)
    return 0


cdef int h_hrtimer(Core* c, Frame* f) except -1:
    """emu.guest.process.hrtimer_wakeup (the sleep's timer expired)"""
    if not _kok[K_app_hrtimer]:
        return BAIL
    begin(c)
    _wake(c, "timer")
    return 0


cdef int h_app_exit(Core* c, Frame* f) except -1:
    """emu.guest.process.exit_ (do_exit: the plug is flushed)"""
    if not _kok[K_app_exit] or type(SG(_q, _QO[Q_PLUG])) is not list:
        return BAIL
    begin(c)
    SS(_p, _PO[P_WAITING], "done")
    if _t(SG(_q, _QO[Q_PLUG])):
        cont(c, F1(K_blkmq_flush_plug, -1))
    return 0


cdef int h_app_start(Core* c, Frame* f) except -1:
    """emu.guest.process.start (blkdev_open)"""
    if not _kok[K_app_start]:
        return BAIL
    begin(c)
    SS(_p, _PO[P_STARTED], True)
    cont(c, F0(K_app_op), -1, True)
    return 0


# == registration ====================================================================================
register_layer(_load, _store)
register_handler(K_vring_add_split, h_add_split)
register_handler(K_vring_add_desc, h_add_desc)
register_handler(K_vring_add_head, h_add_head)
register_handler(K_vring_add_avail, h_add_avail)
register_handler(K_vring_add_publish, h_add_publish)
register_handler(K_vring_kick_prepare, h_kick_prepare)
register_handler(K_vring_notify, h_notify)
register_handler(K_vring_interrupt, h_interrupt)
register_handler(K_vring_disable_cb, h_disable_cb)
register_handler(K_vring_get_buf, h_get_buf)
register_handler(K_vring_enable_cb, h_enable_cb)
register_handler(K_vblkd_queue_rq, h_queue_rq)
register_handler(K_vblkd_setup_cmd, h_setup_cmd)
register_handler(K_vblkd_map_data, h_map_data)
register_handler(K_vblkd_add_req, h_add_req)
register_handler(K_vblkd_add_ret, h_add_ret)
register_handler(K_vblkd_queue_rq_end, h_queue_rq_end)
register_handler(K_vblkd_done, h_done)
register_handler(K_vblkd_request_done, h_request_done)
register_handler(K_vblkd_done_end, h_done_end)
register_handler(K_blkmq_flush_plug, h_flush_plug)
register_handler(K_blkmq_run_queue, h_run_queue)
register_handler(K_blkmq_dispatch, h_dispatch)
register_handler(K_blkmq_dispatch_ret, h_dispatch_ret)
register_handler(K_blkmq_start_request, h_start_request)
register_handler(K_blkmq_end_request, h_end_request)
register_handler(K_blkmq_submit_bio, h_submit_bio)
register_handler(K_app_op, h_app_op)
register_handler(K_app_resume, h_app_resume)
register_handler(K_vblkd_add_err_kick, h_add_err_kick)
register_handler(K_vblkd_add_err_end, h_add_err_end)
register_handler(K_vblkd_commit_rqs, h_commit_rqs)
register_handler(K_vblkd_commit_notify, h_commit_notify)
register_handler(K_blkmq_run_work, h_run_work)
register_handler(K_blkmq_delay_run, h_delay_run)
register_handler(K_app_hrtimer, h_hrtimer)
register_handler(K_app_exit, h_app_exit)
register_handler(K_app_start, h_app_start)
