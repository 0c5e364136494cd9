# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The bulk core's device side (contract: emu_fast/_bulk.pxd): QEMU's virtio-pci doorbell,
virtio-blk request handling (hw/block/virtio-blk.c) and the split virtqueue's pop/fill/flush/
notify (hw/virtio/virtio.c), as modelled by emu/device/virtio_blk.py, emu/device/virtio.py and
emu/transport/virtio_pci.py, run with no record.

Each handler does the common path(s) of its Python handler exactly (same mutations of the same
objects, same guest-RAM bytes, same scheduler calls in the same order) and bails, having changed
nothing, on anything else: virtio_error paths (a chain or header that would break the device),
an indirect table the driver did not negotiate, vq.flush on a broken device, an avail_event
write that would land on a descriptor table pop reads after it, values of unusual types, a
machine whose modelled Python code was replaced (REGISTRY, blk_aio_submit, msix_notify, ...).

The device's state is held in C for a stretch: loaded at the first device event of the
stretch, stored back (only what changed) when the stretch ends: VirtIODevice.isr, each
VirtQueue's fields, VirtIOBlock's counters, its MultiReqBuffer (mrb, mrb_is_write, groups) and
suppress dict, the increments of m.counters and vblk.by_type, and the requests of vblk.reqs
(C records: a request popped and completed in one stretch never gets its dict; see "the
requests held in C").  Nothing but these handlers touches those objects during a stretch (the
core runs no Python handler).  The block layer's request dicts (blk_aio_submit) are made as the
Python code makes them, except a raw image's reads and writes: _bulk_blk keeps those as C
records while the stretch runs (its VR_MAKE), and makes the dicts of the ones still alive
before this module puts another request's dict into block.reqs (its VR_FLUSH).
"""
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_DelItem, PyDict_Copy
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, memmove
from libc.stdlib cimport malloc, free

from emu_fast._bulk cimport *
from emu_fast._pydict311 cimport *
from emu_fast._slots cimport slot_offsets, sget, sset

import emu.block.backend as _BK
import emu.device.virtio_blk as _vb
from emu.device.virtio import VirtIODevice, VirtQueue
from emu.machine import Machine
from emu.sim.steps import REGISTRY
from emu.spec import blk as _B
from emu.spec import pci as _P
from emu.spec import virtio as _V
from emu.transport.virtio_pci import Transport

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

# the constants this file hard-codes (the layouts they imply)
assert (_V.VIRTQ_DESC_F_NEXT, _V.VIRTQ_DESC_F_WRITE, _V.VIRTQ_DESC_F_INDIRECT) == (1, 2, 4)
assert (_V.DESC_SIZE, _V.USED_ELEM_SIZE, _V.VIRTQUEUE_MAX_SIZE) == (16, 8, 1024)
assert (_V.AVAIL_FLAGS, _V.AVAIL_IDX, _V.AVAIL_RING, _V.USED_FLAGS, _V.USED_IDX, _V.USED_RING) == (
    0, 2, 4, 0, 2, 4)
assert _V.avail_used_event_off(7) == 4 + 2 * 7 and _V.used_avail_event_off(7) == 4 + 8 * 7
assert (_V.VRING_AVAIL_F_NO_INTERRUPT, _V.VRING_USED_F_NO_NOTIFY) == (1, 1)
assert (_V.F_NOTIFY_ON_EMPTY, _V.F_INDIRECT_DESC, _V.F_EVENT_IDX) == (24, 28, 29)
assert (_B.T_IN, _B.T_OUT, _B.T_FLUSH, _B.T_BARRIER, _B.OUTHDR_SIZE) == (0, 1, 4, 0x80000000, 16)
assert (_B.S_OK, _B.S_IOERR, _B.MAX_MERGE_REQS, _B.IOV_MAX) == (0, 1, 32, 1024)
assert _B.BDRV_REQUEST_MAX_SECTORS == 4194303
assert (_B.TYPE_NAMES[0], _B.TYPE_NAMES[1], _B.TYPE_NAMES[4], _B.TYPE_NAMES.get(5)) == (
    "IN", "OUT", "FLUSH", None)
assert (_P.NOTIFY_CFG, _P.NOTIFY_OFF_MULTIPLIER, _P.NO_VECTOR) == (0x3000, 4, 0xFFFF)
assert _vb.VD.VQ_MAX == 1024

cdef long long MSIX_ADDRESS = _P.MSIX_ADDRESS
assert (_B.T_DISCARD, _B.T_WRITE_ZEROES, _B.T_GET_ID, _B.T_SCSI_CMD, _B.S_UNSUPP) == (11, 13, 8, 2, 2)
assert _B.ID_BYTES == 20
assert (_B.DWZ_SEG_SIZE, _B.WRITE_ZEROES_FLAG_UNMAP, _BK.BDRV_REQ_MAY_UNMAP) == (16, 1, 4)

# the Python code these handlers stand for (a machine whose code is not this runs compiled)
cdef object _PY_SUBMIT = _BK.blk_aio_submit
cdef object _PY_ERROR_ACTION = _vb._error_action
cdef object _PY_MSIX_NOTIFY = Transport.msix_notify
cdef object _PY_NOTIFY_QUEUE = Transport.notify_queue
cdef object _PY_RAISE_MSI = Machine.raise_msi
cdef dict _REGISTRY = REGISTRY
cdef object _Transport = Transport

cdef object _Machine = Machine
cdef object _VirtIODevice = VirtIODevice
cdef object _VirtQueue = VirtQueue
cdef object _VirtIOBlock = _vb.VirtIOBlock
cdef object _BlockState = _BK.BlockState

cdef enum:      # Machine
    M_VDEV, M_VBLK, M_BLOCK, M_COUNTERS, M_TIMING, M_TRANSPORT, M_GUEST, M_N
cdef enum:      # VirtIODevice
    D_VQS, D_BROKEN, D_GUEST_FEATURES, D_ISR, D_N
cdef enum:      # VirtQueue
    Q_NUM, Q_DESC, Q_AVAIL, Q_USED, Q_CACHES, Q_DESC_LEN, Q_LAST_AVAIL_IDX, Q_SHADOW_AVAIL_IDX,
    Q_USED_IDX, Q_SIGNALLED_USED, Q_SIGNALLED_USED_VALID, Q_NOTIFICATION, Q_INUSE, Q_VECTOR, Q_N
cdef enum:      # VirtIOBlock
    B_CAPACITY, B_LOGICAL_BLOCK_SIZE, B_REQUEST_MERGING, B_REQS, B_NEXT_ID, B_MRB, B_MRB_IS_WRITE,
    B_GROUPS, B_SUPPRESS, B_BY_TYPE, B_SUBMITTED, B_COMPLETED, B_ERRORS, B_MERGED, B_MAX_DISCARD,
    B_MAX_WZ, B_SERIAL, B_N
cdef enum:      # BlockState
    K_NEXT_REQ, K_REQS, K_WERROR, K_RERROR, K_N

cdef Py_ssize_t _MO[M_N]
cdef Py_ssize_t _DV[D_N]
cdef Py_ssize_t _VQ[Q_N]
cdef Py_ssize_t _BK_[B_N]
cdef Py_ssize_t _BS[K_N]

SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("vdev", "vblk", "block", "counters", "timing", "transport",
                                       "guest"), _MO),
    "VirtIODevice": slot_offsets(_VirtIODevice, ("vqs", "broken", "guest_features", "isr"), _DV),
    "VirtQueue": slot_offsets(_VirtQueue, ("num", "desc", "avail", "used", "caches", "desc_len",
                                           "last_avail_idx", "shadow_avail_idx", "used_idx",
                                           "signalled_used", "signalled_used_valid",
                                           "notification", "inuse", "vector"), _VQ),
    "VirtIOBlock": slot_offsets(_VirtIOBlock, ("capacity", "logical_block_size", "request_merging",
                                               "reqs", "next_id", "mrb", "mrb_is_write", "groups",
                                               "suppress", "by_type", "submitted", "completed",
                                               "errors", "merged", "max_discard_sectors",
                                               "max_write_zeroes_sectors", "serial"), _BK_),
    "BlockState": slot_offsets(_BlockState, ("next_req", "reqs", "werror", "rerror"), _BS),
}

# the kinds handled here, with the Python handler each stands for
cdef tuple _KINDS = (
    (K_vpci_notify, "vpci.notify", _vb.notify_write),
    (K_vpci_notify_done, "vpci.notify_done", _vb.notify_done),
    (K_vblk_handle_vq, "vblk.handle_vq", _vb.handle_vq),
    (K_vblk_pop, "vblk.pop", _vb.pop),
    (K_vblk_handle_request, "vblk.handle_request", _vb.handle_request),
    (K_vblk_mrb_add, "vblk.mrb_add", _vb.mrb_add),
    (K_vblk_pass_end, "vblk.pass_end", _vb.pass_end),
    (K_vblk_submit_multireq, "vblk.submit_multireq", _vb.submit_multireq),
    (K_vblk_submit_requests, "vblk.submit_requests", _vb.submit_requests),
    (K_vblk_rw_complete, "vblk.rw_complete", _vb.rw_complete),
    (K_vblk_req_complete, "vblk.req_complete", _vb.req_complete),
    (K_vblk_flush, "vblk.flush", _vb.handle_flush),
    (K_vblk_flush_complete, "vblk.flush_complete", _vb.flush_complete),
    (K_vblk_dwz_complete, "vblk.dwz_complete", _vb.dwz_complete),
    (K_vq_fill, "vq.fill", _vb.fill),
    (K_vq_flush, "vq.flush", _vb.flush),
    (K_vq_notify, "vq.notify", _vb.notify),
    (K_vq_irq, "vq.irq", _vb.irq),
)


# == the device state held in C for a stretch =====================================================

cdef enum:
    MAXQ = 8            # queues held in C (a machine with more: its other queues' events bail)
    MAXV = 8            # MSI-X vectors held in C
    MAXREC = 1026       # descriptors of one chain (head, indirect table entries)

cdef struct VQ:         # emu.device.virtio.VirtQueue
    i64 num, desc, avail, used, desc_len
    i64 last_avail_idx, shadow_avail_idx, used_idx, signalled_used, inuse, vector
    bint caches, notification, signalled_used_valid

cdef struct Vec:        # one MSI-X vector as msix_notify -> raise_msi would deliver it
    bint masked
    int kind            # K_vring_interrupt / K_probe_config_changed; 0: the message is lost
    i64 data

cdef struct Dev:
    bint loaded         # _load ran in this stretch
    bint ok             # ... and the machine is one these handlers know
    bint irq_ok         # msix_notify / raise_msi are the Python ones and their state is held
    bint tr_ok          # Transport.notify_queue is the Python one
    bint msix_loaded    # _load_msix ran in this stretch
    uint64_t features   # vdev.guest_features (low 64 bits)
    bint broken
    i64 isr, isr0
    int nvq
    VQ q[MAXQ]
    VQ q0[MAXQ]         # as loaded (store writes back what differs)
    i64 next_id, submitted, completed, errors, merged
    i64 b0[5]
    i64 capacity, lbs, max_discard, max_wz
    i64 vmentry_ns, irq_ns
    bint msix_enabled
    i64 nvectors
    Vec vec[MAXV]

cdef Dev D
memset(&D, 0, sizeof(Dev))


cdef dict _template(tuple items):
    """A dict of these (key, value) items, in this order, with str keys, built key by key so
    that it has CPython's compact str-keys table (what a dict display makes; a presized dict
    has the general one): the dicts the handlers make are PyDict_Copy's of these (a copy of
    the table, then each value replaced), equal to and ordered as the Python code's displays."""
    cdef dict d = {}
    for k, v in items:
        assert type(k) is str
        d[k] = v
    return d


# the completion callbacks' kinds, interned (_bulk_blk's blk.aio_complete finds them by identity)
from sys import intern as _intern
cdef str S_RW_COMPLETE = _intern("vblk.rw_complete")
cdef str S_FLUSH_COMPLETE = _intern("vblk.flush_complete")
cdef str S_DWZ_COMPLETE = _intern("vblk.dwz_complete")


cdef dict _REQ_T = _template((("id", None), ("qi", None), ("elem", None), ("type", None),
                              ("sector", 0), ("in_len", 0), ("status_gpa", 0), ("qiov", None),
                              ("mr_next", None), ("is_write", False), ("stage", "popped")))
cdef dict _ELEM_T = _template((("index", None), ("ndescs", 1), ("out", None), ("in", None),
                               ("descs", None), ("indirect", None), ("avail_idx", None)))
cdef dict _BREQ_T = _template((("id", None), ("op", None), ("cur_op", None), ("offset", None),
                               ("bytes", None), ("qiov", None), ("flags", None), ("cb", None),
                               ("ret", None), ("phase", "submit")))

# A dict just copied from a template gets its values put in place (vb_fill_values,
# _pydict311.pxd: the entries in the template's order) instead of key by key: the same dict.


cdef PyObject* _BREQ_KEYS[10]
for _k, _key in enumerate(_BREQ_T):
    _BREQ_KEYS[_k] = <PyObject*>_key         # (the template's keys: it keeps them alive)


cdef long long _RAN[NKINDS]       # events of each kind run here (counts())
memset(_RAN, 0, sizeof(_RAN))


def counts():
    """{kind: events run by these handlers} since reset_counts() (tests: the kinds ran here)."""
    names = {k: name for k, name, _fn in _KINDS}
    return {names[k]: _RAN[k] for k in names if _RAN[k]}


def reset_counts():
    global _NBORN, _NDECODED, _NMADE, _NWRITTEN, _NSETITEM, _NHEAP
    memset(_RAN, 0, sizeof(_RAN))
    _NBORN = _NDECODED = _NMADE = _NWRITTEN = _NSETITEM = _NHEAP = 0


cdef long long _NBORN = 0       # request records made by pop
cdef long long _NDECODED = 0    # ... decoded from a vblk.reqs dict
cdef long long _NMADE = 0       # dicts made for records when a stretch ended
cdef long long _NWRITTEN = 0    # dicts a record's changed fields were written back into
cdef long long _NSETITEM = 0    # block requests whose values were set key by key (not in place)
cdef long long _NHEAP = 0       # records of over INL entries (their arrays on the heap)


def records():
    """{what: n} since reset_counts(): the requests held in C (tests: both ways ran)"""
    return {"born": _NBORN, "decoded": _NDECODED, "made": _NMADE, "written": _NWRITTEN,
            "setitem": _NSETITEM, "heap": _NHEAP}

# the Python objects of the machine of the stretch (set by _load, dropped by _store)
cdef object _m = None
cdef object _vdev = None
cdef object _vblk = None
cdef object _block = None
cdef dict _counters = None
cdef dict _reqs = None          # vblk.reqs
cdef dict _breqs = None         # block.reqs
cdef dict _suppress = None
cdef dict _by_type = None
cdef list _vqobjs = None
cdef object _proxy = None

# Counters these handlers only ever increment, kept as C deltas for a stretch and added to the
# Python values when it ends (m.counters' and vblk.by_type's entries that hold exact ints; an
# entry that is missing or not an exact int is changed at once, as before).
cdef enum:
    C_NOTIFIES, C_INTERRUPTS, C_IRQS_SUPPRESSED, C_IRQS_LOST, BT_IN, BT_OUT, BT_FLUSH, NDEF
cdef tuple _DKEYS = ("notifies", "interrupts", "irqs_suppressed", "irqs_lost", "IN", "OUT", "FLUSH")
cdef i64 _dd[NDEF]          # the increments of the stretch
cdef bint _dok[NDEF]        # the entry holds an exact int: incremented in C
cdef bint _dabsent[NDEF]    # (by_type) the entry is missing: nothing counted

# vblk.mrb, vblk.mrb_is_write and vblk.groups held in C for a stretch (request ids), new lists
# stored back when it ends if they changed (the Python code replaces them too)
cdef enum:
    MAXM = 64
cdef i64 _mrb[MAXM]
cdef int _mrb_n = 0
cdef bint _miw = False
cdef i64 _gr[MAXM]          # the groups' ids, one after the other
cdef int _gn[MAXM]          # each group's size
cdef int _ng = 0            # groups
cdef int _ngr = 0           # ids in them
cdef bint _mrb_changed = False
cdef bint _groups_changed = False

# vblk.suppress held in C for a stretch (queue index -> bool, in the dict's order)
cdef bint _sup_has[MAXQ]
cdef bint _sup_val[MAXQ]
cdef int _sup_ord[MAXQ]     # the keys in insertion order
cdef int _sup_n = 0
cdef bint _sup_changed = False


cdef inline bint _ll(object o, i64* out) except -1:
    """o is an exact int that fits a C long long"""
    cdef int ovf = 0
    cdef long long v
    if not PyLong_CheckExact(o):
        return False
    v = PyLong_AsLongLongAndOverflow(o, &ovf)
    if ovf:
        return False
    out[0] = v
    return True


cdef inline bint _addr(object o, i64* out) except -1:
    """o is an exact int in [0, 2**62)"""
    return _ll(o, out) and 0 <= out[0] < (<i64>1 << 62)


cdef inline bint _bool(object o, bint* out) except -1:
    if o is True:
        out[0] = True
    elif o is False:
        out[0] = False
    else:
        return False
    return True


cdef bint _load_vq(object vq, VQ* q) except -1:
    """q = the VirtQueue's fields (False: one is not of the plain type it has)"""
    if type(vq) is not _VirtQueue:
        return False
    return (_ll(sget(vq, _VirtQueue, _VQ[Q_NUM], "num"), &q.num)
            and _addr(sget(vq, _VirtQueue, _VQ[Q_DESC], "desc"), &q.desc)
            and _addr(sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail"), &q.avail)
            and _addr(sget(vq, _VirtQueue, _VQ[Q_USED], "used"), &q.used)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_DESC_LEN], "desc_len"), &q.desc_len)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_LAST_AVAIL_IDX], "last_avail_idx"), &q.last_avail_idx)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_SHADOW_AVAIL_IDX], "shadow_avail_idx"),
                    &q.shadow_avail_idx)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx"), &q.used_idx)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED], "signalled_used"), &q.signalled_used)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse"), &q.inuse)
            and _ll(sget(vq, _VirtQueue, _VQ[Q_VECTOR], "vector"), &q.vector)
            and _bool(sget(vq, _VirtQueue, _VQ[Q_CACHES], "caches"), &q.caches)
            and _bool(sget(vq, _VirtQueue, _VQ[Q_NOTIFICATION], "notification"), &q.notification)
            and _bool(sget(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED_VALID], "signalled_used_valid"),
                      &q.signalled_used_valid)
            and 0 <= q.num <= 1024 and 0 <= q.last_avail_idx <= 0xFFFF
            and 0 <= q.shadow_avail_idx <= 0xFFFF and 0 <= q.used_idx <= 0xFFFF
            and 0 <= q.signalled_used <= 0xFFFF and 0 <= q.inuse < (<i64>1 << 40)
            and 0 <= q.desc_len < (<i64>1 << 40))


cdef int _load_msix(object m) except -1:
    """D.irq_ok and the vectors: msix_notify and raise_msi as their Python code would run
    (loaded at the stretch's first vq.irq)."""
    cdef i64 v, addr, nvec
    cdef int k
    D.msix_loaded = True
    D.irq_ok = False
    tr = sget(m, _Machine, _MO[M_TRANSPORT], "transport")
    if type(tr) is not _Transport or type(m) is not _Machine or not _MSI_CLASS_OK:
        return 0
    if _has_own(tr, "msix_notify") or _has_own(m, "raise_msi"):
        return 0
    px = tr.proxy
    en = px.msix_enabled
    if type(en) is not bool or not _ll(px.nvectors, &nvec) or nvec < 0:
        return 0
    table = px.msix_table
    if type(table) is not list or type(px.msix_pba) is not list:
        return 0
    vectors = sget(m, _Machine, _MO[M_GUEST], "guest").irq_vectors
    if type(vectors) is not dict:
        return 0
    D.msix_enabled = en
    D.nvectors = nvec
    for k in range(MAXV):
        D.vec[k].kind = -1            # not held: an interrupt on it bails
        if k >= nvec or k >= len(<list>table) or k >= len(<list>px.msix_pba):
            continue
        e = (<list>table)[k]
        masked = e.masked
        if type(masked) is not bool:
            continue
        D.vec[k].masked = masked
        if masked:
            D.vec[k].kind = 0
            continue
        if not (_ll(e.addr, &addr) and _ll(e.data, &v)):
            continue
        D.vec[k].data = v
        h = (<dict>vectors).get(e.data) if addr == MSIX_ADDRESS else None
        if h is None:
            D.vec[k].kind = 0
        elif type(h) is tuple and len(<tuple>h) >= 1 and type((<tuple>h)[0]) is str:
            D.vec[k].kind = K_vring_interrupt if (<tuple>h)[0] == "vq" else K_probe_config_changed
    global _proxy
    _proxy = px
    D.irq_ok = True
    return 0


cdef object _timing = None         # the Timing object last read, and whether its values fit
cdef bint _timing_ok = False
cdef i64 _vmentry_ns, _irq_ns


cdef int _load_timing(object timing) except -1:
    global _timing, _timing_ok, _vmentry_ns, _irq_ns
    _timing = timing
    _timing_ok = (_ll(timing.vmentry_ns, &_vmentry_ns) and _ll(timing.irq_ns, &_irq_ns)
                  and _vmentry_ns >= 0 and _irq_ns >= 0)
    return 0


cdef extern from "Python.h":
    object PyObject_GenericGetDict(object o, void* context)
    int _list_set_slice "PyList_SetSlice"(object l, Py_ssize_t lo, Py_ssize_t hi,
                                          PyObject* v) except -1


cdef bint _has_own(object o, str name) except -1:
    """o's instance dict has name (an instance override of a method)"""
    d = PyObject_GenericGetDict(o, NULL)
    return type(d) is dict and PyDict_GetItemWithError(<dict>d, name) != NULL


cdef bint _load(Core* c) except -1:
    """The machine's device state into D (D.ok: it is one these handlers know)."""
    global _m, _vdev, _vblk, _block, _counters, _reqs, _breqs, _suppress, _by_type, _vqobjs
    cdef int i
    cdef i64 v
    D.loaded = True
    D.ok = False
    m = <object>c.m
    if type(m) is not _Machine:
        return False
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    vblk = sget(m, _Machine, _MO[M_VBLK], "vblk")
    block = sget(m, _Machine, _MO[M_BLOCK], "block")
    counters = sget(m, _Machine, _MO[M_COUNTERS], "counters")
    timing = sget(m, _Machine, _MO[M_TIMING], "timing")
    if (type(vdev) is not _VirtIODevice or type(vblk) is not _VirtIOBlock
            or type(block) is not _BlockState or type(counters) is not dict):
        return False
    if timing is not _timing:                   # (a frozen dataclass: read once per object)
        _load_timing(timing)
    if not _timing_ok or not _code_ok():
        return False
    D.vmentry_ns = _vmentry_ns
    D.irq_ns = _irq_ns
    tr = sget(m, _Machine, _MO[M_TRANSPORT], "transport")
    D.tr_ok = type(tr) is _Transport and _TR_CLASS_OK and not _has_own(tr, "notify_queue")
    D.msix_loaded = False
    # VirtIODevice
    if not _ll(sget(vdev, _VirtIODevice, _DV[D_GUEST_FEATURES], "guest_features"), &v) or v < 0:
        return False
    D.features = <uint64_t>v
    if not _bool(sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken"), &D.broken):
        return False
    if not _ll(sget(vdev, _VirtIODevice, _DV[D_ISR], "isr"), &D.isr):
        return False
    D.isr0 = D.isr
    vqs = sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")
    if type(vqs) is not list:
        return False
    D.nvq = min(len(<list>vqs), MAXQ)
    for i in range(D.nvq):
        if not _load_vq((<list>vqs)[i], &D.q[i]):
            return False
        D.q0[i] = D.q[i]
    # VirtIOBlock
    reqs = sget(vblk, _VirtIOBlock, _BK_[B_REQS], "reqs")
    suppress = sget(vblk, _VirtIOBlock, _BK_[B_SUPPRESS], "suppress")
    by_type = sget(vblk, _VirtIOBlock, _BK_[B_BY_TYPE], "by_type")
    if type(reqs) is not dict or type(suppress) is not dict or type(by_type) is not dict:
        return False
    if not (_ll(sget(vblk, _VirtIOBlock, _BK_[B_NEXT_ID], "next_id"), &D.next_id)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_SUBMITTED], "submitted"), &D.submitted)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_COMPLETED], "completed"), &D.completed)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_ERRORS], "errors"), &D.errors)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_MERGED], "merged"), &D.merged)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_CAPACITY], "capacity"), &D.capacity)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_LOGICAL_BLOCK_SIZE], "logical_block_size"),
                    &D.lbs)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_MAX_DISCARD], "max_discard_sectors"),
                    &D.max_discard)
            and _ll(sget(vblk, _VirtIOBlock, _BK_[B_MAX_WZ], "max_write_zeroes_sectors"),
                    &D.max_wz)):
        return False
    if not (0 <= D.next_id < (<i64>1 << 60) and 0 <= D.submitted < (<i64>1 << 60)
            and 0 <= D.completed < (<i64>1 << 60) and 0 <= D.errors < (<i64>1 << 60)
            and 0 <= D.merged < (<i64>1 << 60) and 0 <= D.capacity < (<i64>1 << 53)
            and D.lbs >= 512):
        return False
    D.b0[0] = D.next_id
    D.b0[1] = D.submitted
    D.b0[2] = D.completed
    D.b0[3] = D.errors
    D.b0[4] = D.merged
    breqs = sget(block, _BlockState, _BS[K_REQS], "reqs")
    if type(breqs) is not dict:
        return False
    if not _load_suppress(<dict>suppress):
        return False
    if not _load_mrb(vblk):
        return False
    _load_fresh(<dict>reqs)
    _load_deferred(<dict>counters, <dict>by_type)
    _m = m
    _vdev = vdev
    _vblk = vblk
    _block = block
    _counters = counters
    _reqs = reqs
    _breqs = breqs
    _suppress = suppress
    _by_type = by_type
    _vqobjs = vqs
    D.ok = True
    return True


cdef bint _load_suppress(dict suppress) except -1:
    """vblk.suppress into _sup_* (False: a key that is not a held queue's index, or a value that
    is not a bool)"""
    global _sup_n, _sup_changed
    cdef i64 qi
    _sup_n = 0
    _sup_changed = False
    memset(_sup_has, 0, sizeof(_sup_has))
    for k, v in suppress.items():
        if not _ll(k, &qi) or not 0 <= qi < D.nvq or type(v) is not bool:
            return False
        _sup_has[qi] = True
        _sup_val[qi] = v is True
        _sup_ord[_sup_n] = <int>qi
        _sup_n += 1
    return True


cdef inline void _sup_set(int qi, bint v) noexcept:
    """suppress[qi] = v"""
    global _sup_n, _sup_changed
    if not _sup_has[qi]:
        _sup_has[qi] = True
        _sup_ord[_sup_n] = qi
        _sup_n += 1
    _sup_val[qi] = v
    _sup_changed = True


cdef inline void _sup_del(int qi) noexcept:
    """suppress.pop(qi, None)"""
    global _sup_n, _sup_changed
    cdef int k, j = 0
    if not _sup_has[qi]:
        return
    _sup_has[qi] = False
    for k in range(_sup_n):
        if _sup_ord[k] != qi:
            _sup_ord[j] = _sup_ord[k]
            j += 1
    _sup_n = j
    _sup_changed = True


cdef bint _load_mrb(object vblk) except -1:
    """vblk.mrb, mrb_is_write and groups into C (False: not lists of ids of the usual sizes)"""
    global _mrb_n, _miw, _ng, _ngr, _mrb_changed, _groups_changed
    cdef Py_ssize_t k, j
    cdef i64 v
    _mrb_changed = _groups_changed = False
    mrb = sget(vblk, _VirtIOBlock, _BK_[B_MRB], "mrb")
    groups = sget(vblk, _VirtIOBlock, _BK_[B_GROUPS], "groups")
    if type(mrb) is not list or PyList_GET_SIZE(mrb) > MAXM or type(groups) is not list \
            or not _bool(sget(vblk, _VirtIOBlock, _BK_[B_MRB_IS_WRITE], "mrb_is_write"), &_miw):
        return False
    for k in range(PyList_GET_SIZE(mrb)):
        if not _ll(<object>PyList_GET_ITEM(mrb, k), &_mrb[k]):
            return False
    _mrb_n = <int>PyList_GET_SIZE(mrb)
    _ng = _ngr = 0
    for g in <list>groups:
        if type(g) is not list or _ng == MAXM or _ngr + PyList_GET_SIZE(g) > MAXM:
            return False
        for j in range(PyList_GET_SIZE(g)):
            if not _ll(<object>PyList_GET_ITEM(g, j), &_gr[_ngr + j]):
                return False
        _gn[_ng] = <int>PyList_GET_SIZE(g)
        _ng += 1
        _ngr += <int>PyList_GET_SIZE(g)
    return True


cdef bint _fresh = False       # vblk.reqs' keys were all ints below next_id when the stretch began


cdef int _load_fresh(dict reqs) except -1:
    """_fresh: pop's new ids cannot be in vblk.reqs (its ids grow; the stretch only removes)"""
    global _fresh
    cdef i64 v
    _fresh = False
    for k in reqs:
        if not _ll(k, &v) or v >= D.next_id:
            return 0
    _fresh = True
    return 0


cdef int _store_mrb() except -1:
    cdef int k, j, o = 0
    if _mrb_changed:
        sset(_vblk, _VirtIOBlock, _BK_[B_MRB], "mrb", [_mrb[k] for k in range(_mrb_n)])
        sset(_vblk, _VirtIOBlock, _BK_[B_MRB_IS_WRITE], "mrb_is_write", _miw == 1)
    if _groups_changed:
        groups = []
        for k in range(_ng):
            groups.append([_gr[o + j] for j in range(_gn[k])])
            o += _gn[k]
        sset(_vblk, _VirtIOBlock, _BK_[B_GROUPS], "groups", groups)
    return 0


cdef inline void _mrb_append(i64 rid, bint is_write) noexcept:
    """_mrb_append: mrb.append(rid); mrb_is_write = is_write (the caller checks the room)"""
    global _mrb_n, _miw, _mrb_changed
    _mrb[_mrb_n] = rid
    _mrb_n += 1
    _miw = is_write
    _mrb_changed = True


cdef int _store_suppress() except -1:
    """_sup_* back into vblk.suppress (rebuilt in the order the Python code leaves)"""
    cdef int k
    if not _sup_changed:
        return 0
    _suppress.clear()
    for k in range(_sup_n):
        _suppress[_sup_ord[k]] = _sup_val[_sup_ord[k]] == 1
    return 0


cdef int _load_deferred(dict counters, dict by_type) except -1:
    cdef int i
    cdef PyObject* p
    for i in range(NDEF):
        _dd[i] = 0
        p = PyDict_GetItemWithError(counters if i < BT_IN else by_type, _DKEYS[i])
        _dabsent[i] = p == NULL
        _dok[i] = p != NULL and PyLong_CheckExact(<object>p)
    return 0


cdef int _store_deferred() except -1:
    cdef int i
    for i in range(NDEF):
        if _dd[i]:
            d = _counters if i < BT_IN else _by_type
            k = _DKEYS[i]
            d[k] = d[k] + _dd[i]
            _dd[i] = 0
    return 0


cdef inline int _bump(int i) except -1:
    """counters[key] += 1 (by_type: if the key is there)"""
    if _dok[i]:
        _dd[i] += 1
    elif i < BT_IN:
        _inc(_counters, _DKEYS[i])
    elif not _dabsent[i]:
        _by_type[_DKEYS[i]] = _by_type[_DKEYS[i]] + 1
    return 0


cdef int _layer_load(Core* c) except -1:
    """register_layer's load: the state is loaded at the stretch's first device event."""
    cdef Py_ssize_t k
    if _nlive:                          # (a stretch that ended in an exception: drop them)
        for k in range(HS):
            if _R[k].rid >= 0:
                _rec_free(&_R[k])
    D.loaded = False
    D.ok = False
    return 1


cdef int _layer_store(Core* c) except -1:
    """register_layer's store: the fields that changed back into the Python objects."""
    global _m, _vdev, _vblk, _block, _counters, _reqs, _breqs, _suppress, _by_type, _vqobjs, _proxy
    cdef int i
    cdef VQ* q
    cdef VQ* q0
    if D.loaded and D.ok:
        _store_reqs()
        _store_mrb()
        _store_deferred()
        _store_suppress()
        if D.isr != D.isr0:
            sset(_vdev, _VirtIODevice, _DV[D_ISR], "isr", D.isr)
        for i in range(D.nvq):
            q = &D.q[i]
            q0 = &D.q0[i]
            vq = _vqobjs[i]
            if q.last_avail_idx != q0.last_avail_idx:
                sset(vq, _VirtQueue, _VQ[Q_LAST_AVAIL_IDX], "last_avail_idx", q.last_avail_idx)
            if q.shadow_avail_idx != q0.shadow_avail_idx:
                sset(vq, _VirtQueue, _VQ[Q_SHADOW_AVAIL_IDX], "shadow_avail_idx", q.shadow_avail_idx)
            if q.used_idx != q0.used_idx:
                sset(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx", q.used_idx)
            if q.signalled_used != q0.signalled_used:
                sset(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED], "signalled_used", q.signalled_used)
            if q.inuse != q0.inuse:
                sset(vq, _VirtQueue, _VQ[Q_INUSE], "inuse", q.inuse)
            if q.notification != q0.notification:
                sset(vq, _VirtQueue, _VQ[Q_NOTIFICATION], "notification", bool(q.notification))
            if q.signalled_used_valid != q0.signalled_used_valid:
                sset(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED_VALID], "signalled_used_valid",
                     bool(q.signalled_used_valid))
        if D.next_id != D.b0[0]:
            sset(_vblk, _VirtIOBlock, _BK_[B_NEXT_ID], "next_id", D.next_id)
        if D.submitted != D.b0[1]:
            sset(_vblk, _VirtIOBlock, _BK_[B_SUBMITTED], "submitted", D.submitted)
        if D.completed != D.b0[2]:
            sset(_vblk, _VirtIOBlock, _BK_[B_COMPLETED], "completed", D.completed)
        if D.errors != D.b0[3]:
            sset(_vblk, _VirtIOBlock, _BK_[B_ERRORS], "errors", D.errors)
        if D.merged != D.b0[4]:
            sset(_vblk, _VirtIOBlock, _BK_[B_MERGED], "merged", D.merged)
    D.loaded = False
    D.ok = False
    _m = _vdev = _vblk = _block = _proxy = None
    _counters = _reqs = _breqs = _suppress = _by_type = None
    _vqobjs = None
    return 0


# Whether the Python code these handlers model is the code in place: REGISTRY's entries for the
# kinds (a test may replace one: that kind then runs compiled, with the replacement) and the
# module functions the handlers call.  Checked again only when REGISTRY or one of the modules'
# dicts changed (CPython's dict version tags, 3.6 to 3.13; later: at every stretch).
cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030E0000
    #define VBD_HAVE_DICT_VERSION 1
    #define VBD_DICT_VERSION(d) ((unsigned long long)((PyDictObject*)(d))->ma_version_tag)
    #else
    #define VBD_HAVE_DICT_VERSION 0
    #define VBD_DICT_VERSION(d) 0ULL
    #endif
    """
    bint VBD_HAVE_DICT_VERSION
    unsigned long long VBD_DICT_VERSION(dict d)

cdef dict _BK_DICT = vars(_BK)
cdef dict _VB_DICT = vars(_vb)
cdef extern from *:
    """
    #define VBD_TYPE_DICT(t) (((PyTypeObject*)(t))->tp_dict)
    """
    dict VBD_TYPE_DICT(object t)
cdef dict _TR_DICT = VBD_TYPE_DICT(Transport)       # the classes' own dicts (what vars() shows)
cdef dict _MACHINE_DICT = VBD_TYPE_DICT(Machine)
cdef bint _TR_CLASS_OK = False      # Transport.notify_queue is the Python one
cdef bint _MSI_CLASS_OK = False     # Transport.msix_notify and Machine.raise_msi are
cdef bint _KIND_OK[NKINDS]
cdef bint _FNS_OK = False
cdef bint _CODE_KNOWN = False
cdef unsigned long long _VERSIONS[5]


cdef bint _code_ok() except -1:
    """REGISTRY's entries and the module functions checked (see above); False: none of the
    handlers runs (blk_aio_submit or _error_action replaced)"""
    global _FNS_OK, _CODE_KNOWN, _TR_CLASS_OK, _MSI_CLASS_OK
    cdef object k
    if (_CODE_KNOWN and VBD_HAVE_DICT_VERSION and VBD_DICT_VERSION(_REGISTRY) == _VERSIONS[0]
            and VBD_DICT_VERSION(_BK_DICT) == _VERSIONS[1]
            and VBD_DICT_VERSION(_VB_DICT) == _VERSIONS[2]
            and VBD_DICT_VERSION(_TR_DICT) == _VERSIONS[3]
            and VBD_DICT_VERSION(_MACHINE_DICT) == _VERSIONS[4]):
        return _FNS_OK
    memset(_KIND_OK, 0, sizeof(_KIND_OK))
    for k, name, fn in _KINDS:
        entry = _REGISTRY.get(name)
        _KIND_OK[<int>k] = (type(entry) is tuple and len(<tuple>entry) >= 1
                            and (<tuple>entry)[0] is fn)
    _FNS_OK = (_BK_DICT.get("blk_aio_submit") is _PY_SUBMIT
               and _VB_DICT.get("blk_aio_submit") is _PY_SUBMIT
               and _VB_DICT.get("_error_action") is _PY_ERROR_ACTION)
    _TR_CLASS_OK = _TR_DICT.get("notify_queue") is _PY_NOTIFY_QUEUE
    _MSI_CLASS_OK = (_TR_DICT.get("msix_notify") is _PY_MSIX_NOTIFY
                     and _MACHINE_DICT.get("raise_msi") is _PY_RAISE_MSI)
    _VERSIONS[3] = VBD_DICT_VERSION(_TR_DICT)
    _VERSIONS[4] = VBD_DICT_VERSION(_MACHINE_DICT)
    _VERSIONS[0] = VBD_DICT_VERSION(_REGISTRY)
    _VERSIONS[1] = VBD_DICT_VERSION(_BK_DICT)
    _VERSIONS[2] = VBD_DICT_VERSION(_VB_DICT)
    _CODE_KNOWN = True
    return _FNS_OK


cdef inline bint _ready(Core* c, int kind) except -1:
    """The device state is in D and this kind's Python handler is the one modelled."""
    if not D.loaded:
        _load(c)
    return D.ok and _KIND_OK[kind]


# == small helpers ================================================================================

cdef inline bint _has(int bit) noexcept nogil:
    """VirtIODevice.has_feature"""
    return (D.features >> bit) & 1


cdef inline object _get(dict d, object key):
    """d[key] (None when missing: the callers check the keys they need first)"""
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    if p == NULL:
        return None
    return <object>p


cdef inline int _inc(dict d, str key) except -1:
    """d[key] += 1"""
    d[key] = d[key] + 1
    return 0


cdef inline int _queue_empty(Core* c, VQ* q, bint* set_shadow, i64* aidx) noexcept nogil:
    """virtio_queue_empty, without its mutation: 1 (empty) or 0, and whether vring_avail_idx
    would set shadow_avail_idx to *aidx; 2: its read is outside RAM (the caller bails)"""
    set_shadow[0] = False
    if D.broken or not q.avail:
        return 1
    if q.shadow_avail_idx != q.last_avail_idx:
        return 0
    aidx[0] = 0
    if q.caches:
        if not ram_ok(c, q.avail + 2, 2):
            return 2
        aidx[0] = ram_r16(c, q.avail + 2)
        set_shadow[0] = True
    return 1 if aidx[0] == q.last_avail_idx else 0


cdef inline bint _no_overlap(i64 a, i64 n, i64 b, i64 m) noexcept nogil:
    return a + n <= b or b + m <= a


# == the processing pass ==========================================================================

cdef int h_notify(Core* c, Frame* f) except -1:
    """vpci.notify: notify_write (QEMU virtio_pci_notify_write -> virtio_queue_notify)"""
    cdef i64 off = f.a[0], qi = -1
    if not _ready(c, K_vpci_notify) or f.n != 1 or f.s[0] or c.vcpu < 0 or not D.tr_ok:
        return BAIL
    if off >= 0x3000 and (off - 0x3000) // 4 < 1024:
        qi = (off - 0x3000) // 4
    if qi >= 0 and qi < len(_vqobjs) and qi >= D.nvq:
        return BAIL
    begin(c)
    _RAN[K_vpci_notify] += 1
    _bump(C_NOTIFIES)
    if qi < 0 or qi >= D.nvq or not D.q[qi].desc or D.broken:
        unblock(c, c.vcpu, D.vmentry_ns)
        return 0
    call(c, F2(K_vblk_handle_vq, qi, 0), F0(K_vpci_notify_done))
    return 0


cdef int h_notify_done(Core* c, Frame* f) except -1:
    """vpci.notify_done: notify_done (QEMU virtio_pci_notify_write returns)"""
    if not _ready(c, K_vpci_notify_done) or c.vcpu < 0:
        return BAIL
    begin(c)
    _RAN[K_vpci_notify_done] += 1
    unblock(c, c.vcpu, D.vmentry_ns)
    return 0


cdef int _set_notification(Core* c, VQ* q, bint enable) except -1:
    """virtio_queue_set_notification (ram checked by the caller: _notification_ok)"""
    cdef uint16_t flags, new
    q.notification = enable
    if not q.desc or not q.caches:
        return 0
    if _has(29):
        q.shadow_avail_idx = ram_r16(c, q.avail + 2)          # vring_avail_idx
        if q.notification:                                     # vring_set_avail_event
            ram_w16(c, q.used + 4 + 8 * q.num, q.shadow_avail_idx)
    else:
        flags = ram_r16(c, q.used)
        new = (flags & ~1) if enable else (flags | 1)
        if new != flags:
            ram_w16(c, q.used, new)
    return 0


cdef inline bint _notification_ok(Core* c, VQ* q, bint enable) noexcept nogil:
    """_set_notification's RAM accesses are inside RAM"""
    if not q.desc or not q.caches:
        return True
    if _has(29):
        return ram_ok(c, q.avail + 2, 2) and (not enable or ram_ok(c, q.used + 4 + 8 * q.num, 2))
    return ram_ok(c, q.used, 2)


cdef int h_handle_vq(Core* c, Frame* f) except -1:
    """vblk.handle_vq: handle_vq (QEMU virtio_blk_handle_vq)"""
    cdef i64 qi = f.a[0], again = f.a[1]
    cdef VQ* q
    if not _ready(c, K_vblk_handle_vq) or f.n != 2 or f.s[0] or f.s[1] or not 0 <= qi < D.nvq:
        return BAIL
    q = &D.q[qi]
    if not _notification_ok(c, q, False):
        return BAIL
    if again and not _sup_has[qi]:
        return BAIL
    begin(c)
    _RAN[K_vblk_handle_vq] += 1
    if not again:
        _sup_set(<int>qi, q.notification)
    if _sup_val[qi]:
        _set_notification(c, q, False)
    cont(c, F1(K_vblk_pop, qi))
    return 0


# the chain virtqueue_pop reads (static: one handler runs at a time)
cdef i64 _rbase[MAXREC]
cdef i64 _ri[MAXREC]
cdef uint64_t _raddr[MAXREC]
cdef uint32_t _rlen[MAXREC]
cdef uint16_t _rflags[MAXREC]
cdef uint16_t _rnext[MAXREC]
cdef int _rout[MAXREC]
cdef int _rin[MAXREC]


cdef inline void _rd_desc(Core* c, int k, i64 base, i64 i) noexcept nogil:
    cdef i64 a = base + 16 * i
    _rbase[k] = base
    _ri[k] = i
    _raddr[k] = ram_r64(c, a)
    _rlen[k] = ram_r32(c, a + 8)
    _rflags[k] = ram_r16(c, a + 12)
    _rnext[k] = ram_r16(c, a + 14)


cdef inline bint _mapped(Core* c, uint64_t addr, uint64_t n) noexcept nogil:
    """GuestMemory.is_mapped for a u64 address"""
    return addr <= <uint64_t>c.ram_size and n <= <uint64_t>c.ram_size - addr


cdef int h_pop(Core* c, Frame* f) except -1:
    """vblk.pop: pop -> virtqueue_pop (QEMU virtio_blk_get_request -> virtqueue_split_pop)"""
    global _nlive, _NBORN
    cdef Req* r
    cdef i64 qi = f.a[0], aidx = 0, num, idx, nidx, ha, wa = 0, base, max_, i, rid
    cdef i64 itab = 0, ilen = 0
    cdef VQ* q
    cdef bint set_shadow = False, evw, ind = False
    cdef int empty, nrec, k, nout = 0, nin = 0, entries = 0
    cdef uint16_t head, flags
    cdef uint32_t length
    cdef uint64_t addr
    if not _ready(c, K_vblk_pop) or f.n != 1 or f.s[0] or not 0 <= qi < D.nvq:
        return BAIL
    q = &D.q[qi]
    if D.broken:
        empty = True
    else:
        empty = _queue_empty(c, q, &set_shadow, &aidx)
        if empty == 2:
            return BAIL
    if empty:
        begin(c)
        _RAN[K_vblk_pop] += 1
        if set_shadow:
            q.shadow_avail_idx = aidx
        cont(c, F1(K_vblk_pass_end, qi))
        return 0
    num = q.num
    if num <= 0 or q.inuse >= num:
        return BAIL
    idx = q.last_avail_idx
    nidx = (idx + 1) & 0xFFFF
    ha = q.avail + 4 + 2 * (idx % num)
    if not ram_ok(c, ha, 2):
        return BAIL
    head = ram_r16(c, ha)
    if head >= num:
        return BAIL
    evw = _has(29) and q.notification
    if evw:
        wa = q.used + 4 + 8 * num
        if not ram_ok(c, wa, 2):
            return BAIL
    if not q.caches or q.desc_len < num * 16:
        return BAIL
    base = q.desc
    if not ram_ok(c, base + 16 * <i64>head, 16):
        return BAIL
    _rd_desc(c, 0, base, head)
    nrec = 1
    max_ = num
    if _rflags[0] & 4:
        length = _rlen[0]
        addr = _raddr[0]
        if not length or length % 16 or not _has(28) or not _mapped(c, addr, length):
            return BAIL
        max_ = length // 16
        base = <i64>addr
        ind = True
        itab = base
        ilen = length
        _rd_desc(c, 1, base, 0)
        nrec = 2
    k = nrec - 1
    while True:
        flags = _rflags[k]
        length = _rlen[k]
        addr = _raddr[k]
        if not length or not _mapped(c, addr, length):
            return BAIL
        if flags & 2:
            if nin == 1024 - nout:
                return BAIL
            _rin[nin] = k
            nin += 1
        else:
            if nin or nout == 1024:
                return BAIL
            _rout[nout] = k
            nout += 1
        entries += 1
        if entries > max_:
            return BAIL
        if not flags & 1:
            break
        i = _rnext[k]
        if i >= max_ or nrec == MAXREC or not ram_ok(c, base + 16 * i, 16):
            return BAIL
        _rd_desc(c, nrec, base, i)
        k = nrec
        nrec += 1
    if evw and not (_no_overlap(wa, 2, q.desc, 16 * num)
                    and (not ind or _no_overlap(wa, 2, itab, ilen))):
        return BAIL         # (the avail_event write would change descriptors read after it)
    rid = D.next_id
    r = &_R[rid & (HS - 1)]
    if r.rid >= 0 or (not _fresh and PyDict_GetItemWithError(_reqs, rid) != NULL):
        return BAIL
    _room(r, nrec)
    begin(c)
    _RAN[K_vblk_pop] += 1
    if set_shadow:
        q.shadow_avail_idx = aidx
    q.last_avail_idx = nidx
    if evw:
        ram_w16(c, wa, nidx)
    # the request: a record (its dict is made if it outlives the stretch: _make_req)
    r.rid = rid
    r.qi = <int>qi
    r.born = True
    r.d = NULL
    r.dirty = 0
    r.has_type = False
    r.typ = 0
    r.sector = 0
    r.in_len = 0
    r.status_gpa = 0
    r.mr_next = -1
    r.is_write = False
    r.stage = ST_POPPED
    r.has_status = False
    r.status = 0
    r.index = head
    r.avail_idx = idx
    r.ring = q.desc
    r.ind = ind
    r.itab = itab
    r.ilen = ilen
    r.nrec = nrec
    for k in range(nrec):
        r.ri[k] = _ri[k]
        r.raddr[k] = _raddr[k]
        r.rlen[k] = _rlen[k]
        r.rflags[k] = _rflags[k]
        r.rnext[k] = _rnext[k]
    for k in range(nout):
        r.va[k] = <i64>_raddr[_rout[k]]
        r.vn[k] = _rlen[_rout[k]]
    for k in range(nin):
        r.va[nout + k] = <i64>_raddr[_rin[k]]
        r.vn[nout + k] = _rlen[_rin[k]]
    r.nout = nout
    r.nin = nin
    r.nq = 0
    _nlive += 1
    _NBORN += 1
    q.inuse += 1
    D.next_id += 1
    cont(c, F2(K_vblk_handle_request, qi, rid))
    return 0


# the iovecs handle_request reads (static)
cdef i64 _oa[1024]
cdef i64 _on[1024]
cdef i64 _ia[1024]
cdef i64 _in[1024]


cdef int _iov_in(object lst, i64* a, i64* n) except -2:
    """The (gpa, len) pairs of an iovec list into a and n: their number, or -1 (not a list of
    at most 1024 pairs of exact ints with gpa in [0, 2**62) and 0 <= len < 2**40)"""
    cdef Py_ssize_t k, cnt
    if type(lst) is not list:
        return -1
    cnt = PyList_GET_SIZE(lst)
    if cnt > 1024:
        return -1
    for k in range(cnt):
        t = <object>PyList_GET_ITEM(lst, k)
        if type(t) is not tuple or PyTuple_GET_SIZE(t) != 2:
            return -1
        if not _addr(<object>PyTuple_GET_ITEM(t, 0), &a[k]):
            return -1
        if not _ll(<object>PyTuple_GET_ITEM(t, 1), &n[k]) or not 0 <= n[k] < (<i64>1 << 40):
            return -1
    return <int>cnt


# == the requests held in C for a stretch =========================================================
#
# vblk.reqs' requests are held in C records during a stretch (indexed by rid % HS): a request
# popped in the stretch ("born") has no dict until the stretch ends, when it is made as the
# Python code would have left it (elem, descs, iovecs, qiov, ... in the same key order) and put
# into vblk.reqs after the requests already there (rids grow: the Python engine's order); one
# completed in the stretch never gets one.  A request that was in vblk.reqs when the stretch
# began is decoded from its dict at its first event (a dict of another shape: the event bails)
# and the fields changed are written back into that dict when the stretch ends.  Nothing but
# these handlers reads vblk.reqs during a stretch.

cdef enum:
    HS = 1024           # records (a rid whose record slot is taken: its event bails)
    INL = 32            # descriptors / iovecs / qiov entries a record holds inline (more: on
                        # the heap, _room)

cdef enum:              # Req.stage
    ST_POPPED, ST_MRB, ST_SUBMITTED, ST_FLUSH, ST_COMPLETING
cdef tuple _STAGES = ("popped", "mrb", "submitted", "flush", "completing")

cdef enum:              # Req.dirty: the fields changed in the stretch (a request with a dict)
    F_TYPE = 1
    F_SECTOR = 2
    F_IN_LEN = 4
    F_STATUS_GPA = 8
    F_QIOV = 16
    F_MR_NEXT = 32
    F_IS_WRITE = 64
    F_STAGE = 128
    F_STATUS = 256

cdef struct Req:        # a VirtIOBlockReq (vblk.reqs[rid])
    i64 rid             # -1: free
    int qi
    bint born           # popped in this stretch: no dict yet
    PyObject* d         # (not born) its dict (a reference held)
    unsigned dirty
    bint has_type       # "type" (None until handle_request)
    uint32_t typ
    uint64_t sector
    i64 in_len, status_gpa
    i64 mr_next         # -1: None
    bint is_write
    int stage
    bint has_status
    i64 status
    # the elem (born: all of it; decoded: index and the iovecs)
    i64 index, avail_idx, ring, itab, ilen
    bint ind
    int nrec, nout, nin
    i64* ri             # (these arrays: cap entries, the b_* below or a heap block)
    uint64_t* raddr
    uint32_t* rlen
    uint16_t* rflags
    uint16_t* rnext
    i64* va             # the out iovecs [0, nout), then the in iovecs [nout, nout + nin)
    i64* vn
    int nq              # qiov
    i64* qa
    i64* qn
    Py_ssize_t cap
    void* heap
    i64 b_ri[INL]
    uint64_t b_raddr[INL]
    uint32_t b_rlen[INL]
    uint16_t b_rflags[INL]
    uint16_t b_rnext[INL]
    i64 b_va[INL]
    i64 b_vn[INL]
    i64 b_qa[INL]
    i64 b_qn[INL]

cdef Req _R[HS]


cdef void _inline_arrays(Req* r) noexcept:
    r.ri = r.b_ri
    r.raddr = r.b_raddr
    r.rlen = r.b_rlen
    r.rflags = r.b_rflags
    r.rnext = r.b_rnext
    r.va = r.b_va
    r.vn = r.b_vn
    r.qa = r.b_qa
    r.qn = r.b_qn
    r.cap = INL
    r.heap = NULL


cdef int _room(Req* r, Py_ssize_t n) except -1:
    """r's arrays hold n entries (a heap block, kept for the slot's later records)"""
    global _NHEAP
    cdef char* h
    if n > INL:
        _NHEAP += 1
    cdef size_t per = 8 + 8 + 4 + 2 + 2 + 8 + 8 + 8 + 8
    if n <= r.cap:
        return 0
    n = max(n, 2 * r.cap)
    h = <char*>malloc(n * per)
    if h == NULL:
        raise MemoryError()
    free(r.heap)
    r.heap = h
    r.cap = n
    r.ri = <i64*>h
    r.raddr = <uint64_t*>(h + 8 * n)
    r.va = <i64*>(h + 16 * n)
    r.vn = <i64*>(h + 24 * n)
    r.qa = <i64*>(h + 32 * n)
    r.qn = <i64*>(h + 40 * n)
    r.rlen = <uint32_t*>(h + 48 * n)
    r.rflags = <uint16_t*>(h + 52 * n)
    r.rnext = <uint16_t*>(h + 54 * n)
    return 0


cdef Py_ssize_t _kk
for _kk in range(HS):
    _R[_kk].rid = -1
    _R[_kk].d = NULL
    _inline_arrays(&_R[_kk])
cdef int _nlive = 0     # records in use


cdef dict _REQ_KEYS = dict.fromkeys(("id", "qi", "elem", "type", "sector", "in_len", "status_gpa",
                                     "qiov", "mr_next", "is_write", "stage"))


cdef inline void _rec_free(Req* r) noexcept:
    global _nlive
    cdef PyObject* d = r.d
    r.rid = -1
    r.d = NULL
    _nlive -= 1
    if d != NULL:
        Py_DECREF(<object>d)


cdef i64 _tqa[1024]
cdef i64 _tqn[1024]


cdef bint _decode(object o, Req* r, i64 rid) except -1:
    """r = the request dict o (False: not of the shape the Python code makes)"""
    cdef dict d
    cdef i64 v
    cdef int no, ni, nq, k
    cdef Py_ssize_t n
    if type(o) is not dict:
        return False
    d = <dict>o
    n = len(d)
    for key in _REQ_KEYS:
        if PyDict_GetItemWithError(d, key) == NULL:
            return False
    st = _get(d, "status")
    if n != 11 + (st is not None):
        return False                    # ("dropped", or keys of another kind)
    if st is not None and not (_ll(st, &r.status) and 0 <= r.status < 256):
        return False
    r.has_status = st is not None
    if not (_ll(d["id"], &v) and v == rid and _ll(d["qi"], &v) and 0 <= v < D.nvq):
        return False
    r.qi = <int>v
    elem = d["elem"]
    if type(elem) is not dict or PyDict_GetItemWithError(<dict>elem, "index") == NULL:
        return False
    if not _ll((<dict>elem)["index"], &r.index) or not 0 <= r.index <= <i64>0xFFFFFFFF:
        return False
    no = _iov_in(_get(<dict>elem, "out"), _oa, _on)
    ni = _iov_in(_get(<dict>elem, "in"), _ia, _in)
    nq = _iov_in(d["qiov"], _tqa, _tqn)
    if no < 0 or ni < 0 or nq < 0:
        return False
    _room(r, max(no + ni, nq))
    for k in range(nq):
        r.qa[k] = _tqa[k]
        r.qn[k] = _tqn[k]
    if not (_ll(d["sector"], &v) and v >= 0):
        return False
    r.sector = <uint64_t>v
    if not (_ll(d["in_len"], &r.in_len) and _ll(d["status_gpa"], &r.status_gpa)):
        return False
    mn = d["mr_next"]
    if mn is None:
        r.mr_next = -1
    elif not (_ll(mn, &r.mr_next) and 0 <= r.mr_next < (<i64>1 << 62)):
        return False
    if not _bool(d["is_write"], &r.is_write):
        return False
    for k in range(no):
        r.va[k] = _oa[k]
        r.vn[k] = _on[k]
    for k in range(ni):
        r.va[no + k] = _ia[k]
        r.vn[no + k] = _in[k]
    r.nout = no
    r.nin = ni
    r.nq = nq
    r.born = False
    r.dirty = 0
    r.has_type = False
    r.stage = ST_POPPED
    return True


cdef int _rec(i64 rid, Req** out) except -2:
    """vblk.reqs[rid]'s record: 1 (out set), 0 (no such request), -1 (it cannot be held)"""
    global _nlive, _NDECODED
    cdef Req* r = &_R[rid & (HS - 1)]
    cdef PyObject* p
    if r.rid == rid:
        out[0] = r
        return 1
    p = PyDict_GetItemWithError(_reqs, rid)
    if p == NULL:
        return 0
    if r.rid >= 0 or rid < 0 or not _decode(<object>p, r, rid):
        return -1
    r.rid = rid
    Py_INCREF(<object>p)
    r.d = p
    _nlive += 1
    _NDECODED += 1
    out[0] = r
    return 1


cdef list _qiov_list(Req* r):
    return [(r.qa[k], r.qn[k]) for k in range(r.nq)]


cdef dict _make_req(Req* r):
    """the dict of a request born in the stretch, as pop and the later handlers leave it"""
    cdef int k
    cdef dict elem, d
    ring_o = r.ring
    tab_o = r.itab if r.ind else None
    descs = []
    for k in range(r.nrec):
        descs.append((tab_o if r.ind and k else ring_o, r.ri[k], r.raddr[k], r.rlen[k],
                      r.rflags[k], r.rnext[k]))
    elem = PyDict_Copy(_ELEM_T)     # {"index": head, "ndescs": 1, "out": out_iov, "in": in_iov,
    PyDict_SetItem(elem, "index", r.index)  # "descs": descs, "indirect": .., "avail_idx": idx}
    PyDict_SetItem(elem, "out", [(r.va[k], r.vn[k]) for k in range(r.nout)])
    PyDict_SetItem(elem, "in", [(r.va[k], r.vn[k]) for k in range(r.nout, r.nout + r.nin)])
    PyDict_SetItem(elem, "descs", descs)
    if r.ind:
        PyDict_SetItem(elem, "indirect", (tab_o, r.ilen))
    PyDict_SetItem(elem, "avail_idx", r.avail_idx)
    d = PyDict_Copy(_REQ_T)
    PyDict_SetItem(d, "id", r.rid)
    PyDict_SetItem(d, "qi", r.qi)
    PyDict_SetItem(d, "elem", elem)
    if r.has_type:
        PyDict_SetItem(d, "type", r.typ)
    if r.sector:
        PyDict_SetItem(d, "sector", r.sector)
    if r.in_len:
        PyDict_SetItem(d, "in_len", r.in_len)
    if r.status_gpa:
        PyDict_SetItem(d, "status_gpa", r.status_gpa)
    PyDict_SetItem(d, "qiov", _qiov_list(r))
    if r.mr_next >= 0:
        PyDict_SetItem(d, "mr_next", r.mr_next)
    if r.is_write:
        PyDict_SetItem(d, "is_write", True)
    if r.stage != ST_POPPED:
        PyDict_SetItem(d, "stage", _STAGES[r.stage])
    if r.has_status:
        PyDict_SetItem(d, "status", r.status)
    return d


cdef int _write_back(Req* r) except -1:
    """the fields changed in the stretch into the request's dict"""
    cdef dict d = <dict>r.d
    cdef unsigned f = r.dirty
    if f & F_TYPE:
        d["type"] = r.typ
    if f & F_SECTOR:
        d["sector"] = r.sector
    if f & F_IN_LEN:
        d["in_len"] = r.in_len
    if f & F_STATUS_GPA:
        d["status_gpa"] = r.status_gpa
    if f & F_QIOV:
        d["qiov"] = _qiov_list(r)
    if f & F_MR_NEXT:
        d["mr_next"] = None if r.mr_next < 0 else r.mr_next
    if f & F_IS_WRITE:
        d["is_write"] = bool(r.is_write)
    if f & F_STAGE:
        d["stage"] = _STAGES[r.stage]
    if f & F_STATUS:
        d["status"] = r.status
    return 0


cdef i64 _born[HS]


cdef int _store_reqs() except -1:
    """every record back into vblk.reqs (see above), and the records freed"""
    global _NWRITTEN, _NMADE
    cdef Py_ssize_t k, j, nb = 0
    cdef i64 t
    cdef Req* r
    if not _nlive:
        return 0
    for k in range(HS):
        r = &_R[k]
        if r.rid < 0:
            continue
        if r.born:
            _born[nb] = r.rid
            nb += 1
        else:
            if r.dirty:
                _write_back(r)
                _NWRITTEN += 1
            _rec_free(r)
    for k in range(1, nb):              # (rid order: the order pop put them in vblk.reqs)
        t = _born[k]
        j = k - 1
        while j >= 0 and _born[j] > t:
            _born[j + 1] = _born[j]
            j -= 1
        _born[j + 1] = t
    for k in range(nb):
        r = &_R[_born[k] & (HS - 1)]
        _reqs[r.rid] = _make_req(r)
        _rec_free(r)
        _NMADE += 1
    return 0


cdef dict _TYPE_NAMES = _B.TYPE_NAMES
assert all(type(k) is int and type(v) is str for k, v in _TYPE_NAMES.items())


cdef inline object _type_name(uint32_t typ):
    """B.TYPE_NAMES.get(typ & ~T_BARRIER, f"type {typ:#x}")"""
    cdef uint32_t t = typ & ~<uint32_t>0x80000000
    if t == 0:
        return "IN"
    if t == 1:
        return "OUT"
    cdef PyObject* p = PyDict_GetItemWithError(_TYPE_NAMES, t)
    if p != NULL:
        return <object>p
    return f"type {typ:#x}"


cdef inline bint _sect_range_ok(uint64_t sector, i64 size) noexcept nogil:
    """sect_range_ok (size >= 0)"""
    return not ((size >> 9) > 4194303 or sector & <uint64_t>(D.lbs // 512 - 1) or size % D.lbs
                or sector > <uint64_t>D.capacity or (size >> 9) > D.capacity - <i64>sector)


cdef int h_handle_request(Core* c, Frame* f) except -1:
    """vblk.handle_request: handle_request (QEMU virtio_blk_handle_request): every type;
    malformed requests (virtio_error) bail"""
    cdef i64 qi = f.a[0], rid = f.a[1], take, got = 0, nb, in_len = 0, status_gpa, size = 0
    cdef i64 mask, cnt, out_len = 0
    cdef int nout, nin, k, first = 0, status = 0
    cdef uint8_t hdr[16]
    cdef uint8_t seg[16]
    cdef uint32_t typ, masked, num = 0, dflags = 0
    cdef uint64_t sector, dsector = 0
    cdef bint is_write, range_ok, w, is_wz = False
    cdef Req* r
    if not _ready(c, K_vblk_handle_request) or f.n != 2 or f.s[0] or f.s[1]:
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    nout = r.nout
    nin = r.nin
    if nout < 1 or nin < 1:
        return BAIL
    for k in range(nout):
        _oa[k] = r.va[k]
        _on[k] = r.vn[k]
    for k in range(nin):
        _ia[k] = r.va[nout + k]
        _in[k] = r.vn[nout + k]
    for k in range(nout):                   # iov_to_buf(m, out_iov, 16)
        take = min(_on[k], 16 - got)
        if take <= 0:
            break
        if not ram_ok(c, _oa[k], take):
            return BAIL
        memcpy(hdr + got, c.ram + _oa[k], take)
        got += take
    if got != 16 or _in[nin - 1] < 1:
        return BAIL
    memcpy(&typ, hdr, 4)
    memcpy(&sector, hdr + 8, 8)
    masked = typ & ~<uint32_t>0x80000001
    for k in range(nin):
        in_len += _in[k]
    status_gpa = _ia[nin - 1] + _in[nin - 1] - 1
    if _mrb_n >= MAXM:
        return BAIL
    is_write = typ & 1
    if masked == 0:
        # iov_discard_front(out_iov, 16) / iov_discard_back(in_iov, 1): qiov's size
        if is_write:
            nb = 16
            for k in range(nout):
                if nb >= _on[k]:
                    nb -= _on[k]
                    continue
                size += _on[k] - nb
                nb = 0
        else:
            for k in range(nin - 1):
                size += _in[k]
            size += _in[nin - 1] - 1
        range_ok = _sect_range_ok(sector, size)
    elif masked == 10 or masked == 12:
        # _handle_dwz: status 2 (UNSUPP) / 1 (IOERR) / 0 (submit), decided before anything
        is_wz = typ & ~<uint32_t>0x80000000 == 13
        nb = 16                         # iov_discard_front(out_iov, 16), then its size
        for k in range(nout):
            if nb >= _on[k]:
                nb -= _on[k]
                _on[k] = 0
                continue
            _oa[k] += nb
            _on[k] -= nb
            nb = 0
            out_len += _on[k]
        if not typ & 1 or out_len > 16:
            status = 2
        else:
            got = 0                     # iov_to_buf(m, out_iov, 16)
            for k in range(nout):
                if not _on[k]:
                    continue            # (dropped by iov_discard_front)
                take = min(_on[k], 16 - got)
                if take <= 0:
                    break
                if not ram_ok(c, _oa[k], take):
                    return BAIL
                memcpy(seg + got, c.ram + _oa[k], take)
                got += take
            if got != 16:
                return BAIL             # _fatal: the discard/write_zeroes header is short
            memcpy(&dsector, seg, 8)
            memcpy(&num, seg + 8, 4)
            memcpy(&dflags, seg + 12, 4)
            if num > (D.max_wz if is_wz else D.max_discard) or not _sect_range_ok(dsector, (<i64>num) << 9):
                status = 1
            elif dflags & ~<uint32_t>1 or (not is_wz and dflags & 1):
                status = 2
            elif not _next_req_ok():
                return BAIL
    elif masked == 8:
        # GET_ID: the serial into in_iov (after iov_discard_back(in_iov, 1)), then OK
        serial = sget(_vblk, _VirtIOBlock, _BK_[B_SERIAL], "serial")
        if type(serial) is not str:
            return BAIL
        sb = (<str>serial).encode()[:20]
        if _in[nin - 1] > 1:
            _in[nin - 1] -= 1           # (the status byte dropped; a 1-byte iovec goes)
        else:
            nin -= 1
        size = 0
        for k in range(nin):
            size += _in[k]
        got = min(len(sb) + 1, size, 20)
        idbuf = (sb + b"\0")[:got]
        nb = 0                          # iov_from_buf's writes: inside RAM?
        for k in range(nin):
            take = min(_in[k], got - nb)
            if take <= 0:
                break
            if not ram_ok(c, _ia[k], take):
                return BAIL
            nb += take
    elif masked == 2:
        # SCSI_CMD: IOERR with too few segments, else 255 at the second-to-last in iovec, UNSUPP
        if nout < 2 or nin < 3:
            status = 1
        elif not ram_ok(c, _ia[nin - 2], 4):
            return BAIL
        else:
            status = 2
    elif masked != 4:
        status = 2                      # not supported by this device: UNSUPP
    begin(c)
    _RAN[K_vblk_handle_request] += 1
    r.in_len = in_len
    r.status_gpa = status_gpa
    r.has_type = True
    r.typ = typ
    r.dirty |= F_IN_LEN | F_STATUS_GPA | F_TYPE
    k = typ & ~<uint32_t>0x80000000
    if k == 0:
        _bump(BT_IN)
    elif k == 1:
        _bump(BT_OUT)
    elif k == 4:
        _bump(BT_FLUSH)
    else:
        tname = _type_name(typ)
        if PyDict_GetItemWithError(_by_type, tname) != NULL:
            _by_type[tname] = _by_type[tname] + 1
    D.submitted += 1
    if masked == 10 or masked == 12:
        if typ & 1 and out_len <= 16:
            r.sector = dsector
            r.dirty |= F_SECTOR
        if status:
            call(c, F2(K_vblk_req_complete, rid, status), F1(K_vblk_pop, qi))
            return 0
        r.stage = ST_SUBMITTED
        r.dirty |= F_STAGE
        if is_wz:
            _aio_submit(c, "write_zeroes", dsector << 9, None, (<i64>num) << 9,
                        4 if dflags & 1 else 0, (S_DWZ_COMPLETE, (rid,)), True, F1(K_vblk_pop, qi))
        else:
            _aio_submit(c, "discard", dsector << 9, None, (<i64>num) << 9, 0,
                        (S_DWZ_COMPLETE, (rid,)), True, F1(K_vblk_pop, qi))
        return 0
    if masked == 8:
        nb = 0
        for k in range(nin):
            take = min(_in[k], got - nb)
            if take <= 0:
                break
            ram_write(c, _ia[k], <const char*>idbuf + nb, take)
            nb += take
        call(c, F2(K_vblk_req_complete, rid, 0), F1(K_vblk_pop, qi))
        return 0
    if masked == 2 and status == 2:
        ram_w32(c, _ia[nin - 2], 255)
    if masked != 0 and masked != 4:
        call(c, F2(K_vblk_req_complete, rid, status), F1(K_vblk_pop, qi))
        return 0
    if masked == 4:
        r.stage = ST_FLUSH
        r.dirty |= F_STAGE
        if _mrb_n and _miw:
            call(c, F1(K_vblk_submit_multireq, qi), F2(K_vblk_flush, qi, rid))
        else:
            cont(c, F2(K_vblk_flush, qi, rid))
        return 0
    # _handle_rw
    cnt = 0
    if is_write:
        nb = 16
        for k in range(nout):
            if nb >= _on[k]:
                nb -= _on[k]
                continue
            r.qa[cnt] = _oa[k] + nb
            r.qn[cnt] = _on[k] - nb
            cnt += 1
            nb = 0
    else:
        for k in range(nin - 1):
            r.qa[cnt] = _ia[k]
            r.qn[cnt] = _in[k]
            cnt += 1
        if _in[nin - 1] > 1:
            r.qa[cnt] = _ia[nin - 1]
            r.qn[cnt] = _in[nin - 1] - 1
            cnt += 1
    r.nq = <int>cnt
    r.sector = sector
    r.is_write = is_write
    r.dirty |= F_QIOV | F_SECTOR | F_IS_WRITE
    if not range_ok:
        call(c, F2(K_vblk_req_complete, rid, 1), F1(K_vblk_pop, qi))
        return 0
    if _mrb_n:
        if (_mrb_n == 32 or is_write != _miw
                or not sget(_vblk, _VirtIOBlock, _BK_[B_REQUEST_MERGING], "request_merging")):
            call(c, F1(K_vblk_submit_multireq, qi), F2(K_vblk_mrb_add, qi, rid))
            return 0
    _mrb_append(rid, is_write)
    r.stage = ST_MRB
    r.dirty |= F_STAGE
    cont(c, F1(K_vblk_pop, qi))
    return 0


cdef int h_mrb_add(Core* c, Frame* f) except -1:
    """vblk.mrb_add: mrb_add (QEMU virtio_blk_handle_request's virtio_blk_submit_multireq)"""
    cdef i64 qi = f.a[0], rid = f.a[1]
    cdef Req* r
    if not _ready(c, K_vblk_mrb_add) or f.n != 2 or f.s[0] or f.s[1]:
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    if _mrb_n >= MAXM:
        return BAIL
    begin(c)
    _RAN[K_vblk_mrb_add] += 1
    _mrb_append(rid, r.is_write)
    r.stage = ST_MRB
    r.dirty |= F_STAGE
    cont(c, F1(K_vblk_pop, qi))
    return 0


cdef int h_pass_end(Core* c, Frame* f) except -1:
    """vblk.pass_end: pass_end (QEMU virtio_blk_handle_vq: notification back on, re-check)"""
    cdef i64 qi = f.a[0], aidx = 0
    cdef VQ* q
    cdef bint sup, set_shadow
    cdef int empty
    if not _ready(c, K_vblk_pass_end) or f.n != 1 or f.s[0] or not 0 <= qi < D.nvq:
        return BAIL
    q = &D.q[qi]
    sup = _sup_has[qi] and _sup_val[qi]
    if sup and not _notification_ok(c, q, True):
        return BAIL
    if q.avail and q.caches and not ram_ok(c, q.avail + 2, 2):
        return BAIL
    begin(c)
    _RAN[K_vblk_pass_end] += 1
    if sup:
        _set_notification(c, q, True)
    empty = _queue_empty(c, q, &set_shadow, &aidx)
    if set_shadow:
        q.shadow_avail_idx = aidx
    if not empty:
        cont(c, F2(K_vblk_handle_vq, qi, 1))
        return 0
    if _mrb_n:
        cont(c, F1(K_vblk_submit_multireq, qi))
        return 0
    _sup_del(<int>qi)
    return 0


# submit_multireq's requests (static)
cdef i64 _ms[64]          # sector
cdef i64 _msz[64]         # iov_size(qiov)
cdef i64 _mn[64]          # len(qiov)
cdef int _mord[64]
cdef i64 _mid[64]         # id
cdef Req* _grec[64]       # submit_requests' records


cdef int h_submit_multireq(Core* c, Frame* f) except -1:
    """vblk.submit_multireq: submit_multireq (QEMU virtio_blk_submit_multireq: sort, merge)"""
    global _ng, _ngr, _mrb_n, _mrb_changed, _groups_changed
    cdef int ncur = 0
    cdef i64 qi = f.a[0], sector = 0, nb = 0, niov = 0, size, ngroups = 0, merged = 0, v
    cdef Py_ssize_t n, k, j
    cdef int t
    cdef Req* r
    if not _ready(c, K_vblk_submit_multireq) or f.n != 1 or f.s[0]:
        return BAIL
    n = _mrb_n
    for k in range(n):
        if _rec(_mrb[k], &r) != 1:
            return BAIL
        if r.sector >= (<uint64_t>1 << 60):
            return BAIL
        _ms[k] = <i64>r.sector
        _mn[k] = r.nq
        _msz[k] = 0
        for j in range(r.nq):
            _msz[k] += r.qn[j]
        _mid[k] = r.rid
        _mord[k] = <int>k
    # list.sort(key=sector): stable; insertion sort of the indices
    if n > 1:
        for k in range(1, n):
            t = _mord[k]
            j = k - 1
            while j >= 0 and _ms[_mord[j]] > _ms[t]:
                _mord[j + 1] = _mord[j]
                j -= 1
            _mord[j + 1] = t
    begin(c)
    _RAN[K_vblk_submit_multireq] += 1
    _ng = _ngr = 0                  # (groups = [...]: the old ones are dropped)
    for j in range(n):
        k = _mord[j]
        size = _msz[k]
        if _ngr > ncur and (sector + nb != _ms[k] or niov > 1024 - _mn[k]
                            or size > 0x7FFFFFFF or nb > (0x7FFFFFFF - size) // 512):
            _gn[_ng] = _ngr - ncur
            merged += _gn[_ng] - 1
            _ng += 1
            ncur = _ngr
        if _ngr == ncur:
            sector = _ms[k]
            nb = 0
            niov = 0
        _gr[_ngr] = _mid[k]
        _ngr += 1
        nb += size // 512
        niov += _mn[k]
    if _ngr > ncur:
        _gn[_ng] = _ngr - ncur
        merged += _gn[_ng] - 1
        _ng += 1
    _mrb_n = 0
    _mrb_changed = _groups_changed = True
    D.merged += merged
    cont(c, F1(K_vblk_submit_requests, qi))
    return 0


# _bulk_blk keeps a raw image's read and write requests as C records during the stretch
# (_bulk_blk._vr_make; _vr_flush puts the ones alive into block.reqs, before any dict is put
# there): its two functions, by pointer (VR_MAKE, VR_FLUSH capsules), bound at first use
ctypedef int (*vr_make_t)(Core* c, object blk, i64 bid, object op, object offset, object qiov,
                          i64 nbytes, i64 rid) except -1
ctypedef int (*vr_flush_t)() except -1
cdef vr_make_t _VR_MAKE = NULL
cdef vr_flush_t _VR_FLUSH = NULL
cdef bint _vr_bound = False


cdef int _vr_bind() except -1:
    global _VR_MAKE, _VR_FLUSH, _vr_bound
    from emu_fast import _bulk_blk as bb
    _VR_MAKE = <vr_make_t>PyCapsule_GetPointer(bb.VR_MAKE, "emu_fast._bulk_blk.vr_make")
    _VR_FLUSH = <vr_flush_t>PyCapsule_GetPointer(bb.VR_FLUSH, "emu_fast._bulk_blk.vr_flush")
    _vr_bound = True
    return 0


cdef int _aio_submit_rw(Core* c, str op, object offset, object qiov, i64 nbytes, i64 rid,
                        bint then, Frame then_f) except -1:
    """emu.block.backend.blk_aio_submit of a read or write (flags 0, cb
    ("vblk.rw_complete", (rid,))): kept as _bulk_blk's record when it takes it"""
    cdef i64 bid
    if not _vr_bound:
        _vr_bind()
    blk = _block
    bid_o = sget(blk, _BlockState, _BS[K_NEXT_REQ], "next_req")
    bid = bid_o
    if _VR_MAKE(c, blk, bid, op, offset, qiov, nbytes, rid) != 1:
        return _aio_submit(c, op, offset, qiov, nbytes, 0, (S_RW_COMPLETE, (rid,)), then, then_f)
    sset(blk, _BlockState, _BS[K_NEXT_REQ], "next_req", bid_o + 1)
    if not then:
        cont(c, F1(K_blk_co_entry, bid))
    else:
        call(c, F1(K_blk_co_entry, bid), then_f)
    return 0


cdef int _aio_submit(Core* c, str op, object offset, object qiov, i64 nbytes, i64 flags,
                     object cb, bint then, Frame then_f) except -1:
    """emu.block.backend.blk_aio_submit (qiov: its iov_size is nbytes)"""
    global _NSETITEM
    cdef i64 bid
    blk = _block
    bid_o = sget(blk, _BlockState, _BS[K_NEXT_REQ], "next_req")
    bid = bid_o
    sset(blk, _BlockState, _BS[K_NEXT_REQ], "next_req", bid_o + 1)
    d = PyDict_Copy(_BREQ_T)         # {"id": bid, "op": op, "cur_op": op, "offset": offset,
    cdef object nbytes_o = nbytes    #  "bytes": nbytes, "qiov": qiov, "flags": flags, "cb": cb,
    cdef object flags_o = flags      #  "ret": None, "phase": "submit"}
    cdef PyObject* v[8]
    v[0] = <PyObject*>bid_o
    v[1] = <PyObject*>op
    v[2] = <PyObject*>op
    v[3] = <PyObject*>offset
    v[4] = <PyObject*>nbytes_o
    v[5] = <PyObject*>qiov
    v[6] = <PyObject*>flags_o
    v[7] = <PyObject*>cb
    if vb_fill_values(d, NULL, _BREQ_KEYS, v, 8) != 0:
        _NSETITEM += 1
        PyDict_SetItem(d, "id", bid_o)
        PyDict_SetItem(d, "op", op)
        PyDict_SetItem(d, "cur_op", op)
        PyDict_SetItem(d, "offset", offset)
        PyDict_SetItem(d, "bytes", nbytes_o)
        PyDict_SetItem(d, "qiov", qiov)
        PyDict_SetItem(d, "flags", flags_o)
        PyDict_SetItem(d, "cb", cb)
    if not _vr_bound:
        _vr_bind()
    _VR_FLUSH()                         # (the kept requests are older)
    _breqs[bid_o] = d
    if not then:
        cont(c, F1(K_blk_co_entry, bid))
    else:
        call(c, F1(K_blk_co_entry, bid), then_f)
    return 0


cdef inline bint _next_req_ok() except -1:
    cdef i64 v
    return _ll(sget(_block, _BlockState, _BS[K_NEXT_REQ], "next_req"), &v) and \
        0 <= v < (<i64>1 << 60)


cdef int h_submit_requests(Core* c, Frame* f) except -1:
    """vblk.submit_requests: submit_requests (QEMU submit_requests -> blk_aio_pwritev/preadv)"""
    global _ng, _ngr, _groups_changed
    cdef i64 qi = f.a[0], sector = 0, nbytes = 0, v
    cdef Py_ssize_t n, k, j
    cdef Req* r
    if not _ready(c, K_vblk_submit_requests) or f.n != 1 or f.s[0] or not _next_req_ok():
        return BAIL
    if not _ng or not _gn[0]:
        return BAIL
    n = _gn[0]
    for k in range(n):
        if _rec(_gr[k], &r) != 1:
            return BAIL
        for j in range(r.nq):
            nbytes += r.qn[j]
        _grec[k] = r
    r = _grec[0]
    if r.sector >= (<uint64_t>1 << 50):
        return BAIL
    sector = <i64>r.sector
    begin(c)
    _RAN[K_vblk_submit_requests] += 1
    _ng -= 1                                      # groups.pop(0)
    _ngr -= <int>n
    memmove(_gn, _gn + 1, _ng * sizeof(int))
    memmove(_gr, _gr + n, _ngr * sizeof(i64))
    _groups_changed = True
    cdef list qiov = []
    for k in range(n - 1):
        r = _grec[k]
        r.mr_next = _grec[k + 1].rid
        r.dirty |= F_MR_NEXT
    for k in range(n):
        r = _grec[k]
        for j in range(r.nq):
            qiov.append((r.qa[j], r.qn[j]))
        r.stage = ST_SUBMITTED
        r.dirty |= F_STAGE
    op = "write" if _grec[0].is_write else "read"
    _aio_submit_rw(c, op, sector << 9, qiov, nbytes, _grec[0].rid, _ng != 0,
                   F1(K_vblk_submit_requests, qi))
    return 0


cdef int h_flush(Core* c, Frame* f) except -1:
    """vblk.flush: handle_flush (QEMU virtio_blk_handle_flush -> blk_aio_flush)"""
    cdef i64 qi = f.a[0], rid = f.a[1]
    cdef Req* r
    if not _ready(c, K_vblk_flush) or f.n != 2 or f.s[0] or f.s[1] or not _next_req_ok():
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    begin(c)
    _RAN[K_vblk_flush] += 1
    r.stage = ST_SUBMITTED
    r.dirty |= F_STAGE
    _aio_submit(c, "flush", 0, None, 0, 0, (S_FLUSH_COMPLETE, (rid,)), True,
                F1(K_vblk_pop, qi))
    return 0


# == completion ===================================================================================

cdef int _error_status(bint is_read) except -1:
    """the status of a failed request: _error_action's policy ("ignore": OK)"""
    pol = sget(_block, _BlockState, _BS[K_RERROR] if is_read else _BS[K_WERROR],
               "rerror" if is_read else "werror")
    return 0 if pol == "ignore" else 1


cdef int h_rw_complete(Core* c, Frame* f) except -1:
    """vblk.rw_complete: rw_complete (QEMU virtio_blk_rw_complete); a request dropped by a reset:
    bail"""
    cdef i64 rid = f.a[0], ret = f.a[1], status = 0, nxt
    cdef int res
    cdef Req* r
    if not _ready(c, K_vblk_rw_complete) or f.n != 2 or f.s[0] or f.s[1]:
        return BAIL
    res = _rec(rid, &r)
    if res < 0:
        return BAIL
    if res == 0:
        begin(c)
        _RAN[K_vblk_rw_complete] += 1
        return 0
    if ret:
        pol = sget(_block, _BlockState, _BS[K_WERROR], "werror")
        if type(pol) is not str or type(sget(_block, _BlockState, _BS[K_RERROR], "rerror")) is not str:
            return BAIL
    begin(c)
    _RAN[K_vblk_rw_complete] += 1
    if ret:
        status = _error_status(not r.is_write)
    nxt = r.mr_next
    if nxt >= 0:
        call(c, F2(K_vblk_req_complete, rid, status), F2(K_vblk_rw_complete, nxt, ret))
    else:
        cont(c, F2(K_vblk_req_complete, rid, status))
    return 0


cdef int _simple_complete(Core* c, Frame* f, int kind) except -1:
    """_simple_complete (QEMU virtio_blk_flush_complete / discard_write_zeroes_complete): a
    missing request is forgotten, an error becomes the error action's status, then
    req_complete (a request dropped by a reset: bail)"""
    cdef i64 rid = f.a[0], ret = f.a[1], status = 0
    cdef int res
    cdef Req* r
    if not _ready(c, kind) or f.n != 2 or f.s[0] or f.s[1]:
        return BAIL
    res = _rec(rid, &r)
    if res < 0:
        return BAIL
    if ret and type(sget(_block, _BlockState, _BS[K_WERROR], "werror")) is not str:
        return BAIL
    begin(c)
    _RAN[kind] += 1
    if res == 0:
        return 0
    if ret:
        status = _error_status(False)
    cont(c, F2(K_vblk_req_complete, rid, status))
    return 0


cdef int h_flush_complete(Core* c, Frame* f) except -1:
    """vblk.flush_complete: flush_complete -> _simple_complete (QEMU virtio_blk_flush_complete)"""
    return _simple_complete(c, f, K_vblk_flush_complete)


cdef int h_dwz_complete(Core* c, Frame* f) except -1:
    """vblk.dwz_complete: dwz_complete -> _simple_complete
    (QEMU virtio_blk_discard_write_zeroes_complete)"""
    return _simple_complete(c, f, K_vblk_dwz_complete)


cdef bint _STRICT = False      # see set_strict


def set_strict(bint on):
    """While on, a request completing with status IOERR is given back to the compiled loop (with
    its record and its req-status fact): a session loop whose breakpoints only catch errors
    turns it on (emu_fast._bulk_blk.set_strict)."""
    global _STRICT
    _STRICT = on


cdef int h_req_complete(Core* c, Frame* f) except -1:
    """vblk.req_complete: req_complete (QEMU virtio_blk_req_complete: the status byte)"""
    cdef i64 rid = f.a[0], status = f.a[1], gpa
    cdef uint8_t b
    cdef Req* r
    if not _ready(c, K_vblk_req_complete) or f.n != 2 or f.s[0] or f.s[1] or not 0 <= status < 256:
        return BAIL
    if status == 1 and _STRICT:     # IOERR: its req-status fact is what `catch error` matches
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    gpa = r.status_gpa
    if not ram_ok(c, gpa, 1):
        return BAIL
    begin(c)
    _RAN[K_vblk_req_complete] += 1
    b = <uint8_t>status
    ram_write(c, gpa, &b, 1)
    r.has_status = True
    r.status = status
    r.stage = ST_COMPLETING
    r.dirty |= F_STATUS | F_STAGE
    cont(c, F1(K_vq_fill, rid))
    return 0


cdef int h_fill(Core* c, Frame* f) except -1:
    """vq.fill: fill -> virtqueue_fill (QEMU virtqueue_split_fill)"""
    cdef i64 rid = f.a[0], a = 0
    cdef VQ* q
    cdef bint filled
    cdef uint32_t e[2]
    cdef Req* r
    if not _ready(c, K_vq_fill) or f.n != 1 or f.s[0]:
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    q = &D.q[r.qi]
    filled = not D.broken and q.used
    if filled:
        if q.num <= 0:
            return BAIL
        a = q.used + 4 + 8 * (q.used_idx % q.num)
        if not ram_ok(c, a, 8):
            return BAIL
    begin(c)
    _RAN[K_vq_fill] += 1
    if filled:
        e[0] = <uint32_t>r.index
        e[1] = <uint32_t>(<uint64_t>r.in_len)          # (the low 32 bits)
        ram_write(c, a, e, 8)
    cont(c, F1(K_vq_flush, rid))
    return 0


cdef int h_flush_used(Core* c, Frame* f) except -1:
    """vq.flush: flush -> virtqueue_flush (QEMU virtqueue_split_flush); broken device: bail"""
    cdef i64 rid = f.a[0], old, new, diff
    cdef VQ* q
    cdef Req* r
    if not _ready(c, K_vq_flush) or f.n != 1 or f.s[0]:
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    q = &D.q[r.qi]
    if D.broken or not q.used or not ram_ok(c, q.used + 2, 2):
        return BAIL
    begin(c)
    _RAN[K_vq_flush] += 1
    old = q.used_idx
    new = (old + 1) & 0xFFFF
    ram_w16(c, q.used + 2, new)
    q.used_idx = new
    q.inuse -= 1
    diff = (new - q.signalled_used) & 0xFFFF
    if (diff - 0x10000 if diff >= 0x8000 else diff) < ((new - old) & 0xFFFF):
        q.signalled_used_valid = False
    D.completed += 1
    if r.has_status and r.status:
        D.errors += 1
    cont(c, F1(K_vq_notify, rid))
    return 0


cdef int h_notify_used(Core* c, Frame* f) except -1:
    """vq.notify: notify -> virtio_should_notify (QEMU virtio_notify / virtio_split_should_notify)"""
    cdef i64 rid = f.a[0], aidx = 0, old, new, event
    cdef int qi, empty = 0
    cdef VQ* q
    cdef bint set_shadow = False, need, v
    cdef Req* r
    if not _ready(c, K_vq_notify) or f.n != 1 or f.s[0]:
        return BAIL
    if _rec(rid, &r) != 1:
        return BAIL
    qi = r.qi
    q = &D.q[qi]
    if _has(24) and not q.inuse:
        empty = _queue_empty(c, q, &set_shadow, &aidx)
        if empty == 2:
            return BAIL
    if not empty:
        if not _has(29):
            if not ram_ok(c, q.avail, 2):
                return BAIL
        elif not ram_ok(c, q.avail + 4 + 2 * q.num, 2):
            return BAIL
    begin(c)
    _RAN[K_vq_notify] += 1
    if not r.born:
        PyDict_DelItem(_reqs, rid)          # vblk.reqs.pop(rid)
    _rec_free(r)
    if set_shadow:
        q.shadow_avail_idx = aidx
    if empty:
        need = True
    elif not _has(29):
        need = not (ram_r16(c, q.avail) & 1)
    else:
        v = q.signalled_used_valid
        q.signalled_used_valid = True
        old = q.signalled_used
        new = q.used_idx
        q.signalled_used = new
        event = ram_r16(c, q.avail + 4 + 2 * q.num)
        need = (not v) or (((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF))
    if need:
        cont(c, F1(K_vq_irq, qi))
    else:
        _bump(C_IRQS_SUPPRESSED)
    return 0


cdef int h_irq(Core* c, Frame* f) except -1:
    """vq.irq: irq (QEMU virtio_irq -> virtio_pci_notify -> msix_notify -> the MSI message)"""
    cdef i64 qi = f.a[0], vec
    cdef Vec* e
    if not _ready(c, K_vq_irq) or f.n != 1 or f.s[0] or not 0 <= qi < D.nvq:
        return BAIL
    if not D.msix_loaded:
        _load_msix(_m)
    if not D.irq_ok:
        return BAIL
    vec = D.q[qi].vector
    e = NULL
    if D.msix_enabled and vec != 0xFFFF and vec < D.nvectors:
        if not 0 <= vec < MAXV or D.vec[vec].kind < 0 or c.vcpu < 0:
            return BAIL
        e = &D.vec[vec]
    begin(c)
    _RAN[K_vq_irq] += 1
    D.isr |= 1
    if e == NULL:
        return 0
    if e.masked:
        _proxy.msix_pba[vec] = True
        return 0
    _bump(C_INTERRUPTS)
    if e.kind == 0:
        _bump(C_IRQS_LOST)
        return 0
    post(c, c.vcpu, F1(e.kind, e.data), D.irq_ns, True)
    return 0


# == registration =================================================================================

register_layer(_layer_load, _layer_store)
register_handler(K_vpci_notify, h_notify)
register_handler(K_vpci_notify_done, h_notify_done)
register_handler(K_vblk_handle_vq, h_handle_vq)
register_handler(K_vblk_pop, h_pop)
register_handler(K_vblk_handle_request, h_handle_request)
register_handler(K_vblk_mrb_add, h_mrb_add)
register_handler(K_vblk_pass_end, h_pass_end)
register_handler(K_vblk_submit_multireq, h_submit_multireq)
register_handler(K_vblk_submit_requests, h_submit_requests)
register_handler(K_vblk_flush, h_flush)
register_handler(K_vblk_flush_complete, h_flush_complete)
register_handler(K_vblk_dwz_complete, h_dwz_complete)
register_handler(K_vblk_rw_complete, h_rw_complete)
register_handler(K_vblk_req_complete, h_req_complete)
register_handler(K_vq_fill, h_fill)
register_handler(K_vq_flush, h_flush_used)
register_handler(K_vq_notify, h_notify_used)
register_handler(K_vq_irq, h_irq)
