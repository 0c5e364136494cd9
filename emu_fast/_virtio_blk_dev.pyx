# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""The QEMU device side of the virtio-blk request path compiled: hw/block/virtio-blk.c
(handle_vq, handle_request, the MultiReqBuffer, submit_multireq/submit_requests, completion),
hw/virtio/virtio.c (virtqueue_split_pop/fill/flush, virtio_split_should_notify, virtio_irq)
and hw/virtio/virtio-pci.c (the doorbell write), as modelled by emu/device/virtio_blk.py,
emu/device/virtio.py and emu/device/iov.py.

Every function is a line-for-line translation of the Python function named in its docstring,
over the same objects (VirtIOBlock, VirtIODevice, VirtQueue, the request dicts), with the same
side effects in the same order: RAM writes go through m.mem.write*, scheduler calls through
_core.sched_* (exactly the m.sim method each names), register effects and facts are appended
exactly where set_reg/add_fact append them.
Guest-RAM reads are done from the bytearray when the address is an int inside it (the bounds
GuestMemory's readers check); anything else calls m.mem's own reader, so even errors are the
same.  Every validation of virtqueue_pop is translated (with QEMU's messages, through the
emulator's own virtio_error); the request types other than IN/OUT run the Python
handle_request (nothing has changed when it is called).
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.unicode cimport PyUnicode_DecodeASCII
from emu_fast._core cimport sched_call, sched_cont, sched_unblock

from operator import itemgetter as _itemgetter

import emu.device.virtio as _VD
import emu.device.virtio_blk as _vb
from emu.spec import blk as _B
from emu.spec import virtio as _V

from emu.device.virtio import VirtIODevice, VirtQueue
from emu.machine import Machine
from emu.mem.guest_memory import GuestMemory
from emu.sim.steps import EffectLog, Step

from emu_fast import _support as _SUP
from emu_fast._fmt cimport _hex, _ll, _pdec, _phex, _pstr
from emu_fast._slots cimport slot_offsets, sget, sget_or, sset
from cpython.object cimport PyObject

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    unsigned long long PyLong_AsUnsignedLongLongMask(object) except? <unsigned long long>-1

# the constants the Python code uses (checked: this file hard-codes the layouts they imply)
assert (_V.VIRTQ_DESC_F_NEXT, _V.VIRTQ_DESC_F_WRITE, _V.VIRTQ_DESC_F_INDIRECT) == (1, 2, 4)
assert (_V.DESC_SIZE, _V.USED_ELEM_SIZE, _V.VIRTQUEUE_MAX_SIZE) == (16, 8, 1024)
assert (_V.AVAIL_FLAGS, _V.AVAIL_IDX, _V.AVAIL_RING, _V.USED_FLAGS, _V.USED_IDX, _V.USED_RING) == (
    0, 2, 4, 0, 2, 4)
assert (_V.VRING_AVAIL_F_NO_INTERRUPT, _V.VRING_USED_F_NO_NOTIFY) == (1, 1)
assert (_V.F_NOTIFY_ON_EMPTY, _V.F_INDIRECT_DESC, _V.F_EVENT_IDX) == (24, 28, 29)
assert (_B.T_IN, _B.T_OUT, _B.T_BARRIER, _B.OUTHDR_SIZE) == (0, 1, 0x80000000, 16)
assert (_B.S_OK, _B.S_IOERR, _B.MAX_MERGE_REQS, _B.IOV_MAX) == (0, 1, 32, 1024)

cdef object BDRV_REQUEST_MAX_SECTORS = _B.BDRV_REQUEST_MAX_SECTORS
cdef dict TYPE_NAMES = _B.TYPE_NAMES
cdef dict STATUS_NAMES = _B.STATUS_NAMES
cdef object _sector_key = _itemgetter("sector")
assert all(type(v) is str for v in TYPE_NAMES.values())     # .get(k) is None: k is not a key

# the Python handlers translated here (fallbacks and the HANDLERS pairs)
cdef object _py_handle_request = _vb.handle_request


# == the state members read and written at their __slots__ offsets (emu_fast/_slots.pxd) ==========
# `sget(o, _Cls, _TABLE[K], "name")` is o.name and `sset(o, _Cls, _TABLE[K], "name", v)` is
# o.name = v (getattr/setattr when o is not exactly _Cls).  The index names follow each table's
# names tuple below, in the same order.

cdef object _Machine = Machine
cdef object _GuestMemory = GuestMemory
cdef object _EffectLog = EffectLog
cdef object _Step = Step
cdef object _VirtIODevice = VirtIODevice
cdef object _VirtQueue = VirtQueue
cdef object _VirtIOBlock = _vb.VirtIOBlock

cdef enum:      # Machine
    M_MEM, M_VDEV, M_VBLK, M_SIM, M_LOG, M_CUR, M_TIMING, M_TRANSPORT, M_COUNTERS, M_N
cdef enum:      # GuestMemory
    GM_RAM, GM_SIZE, GM_N
cdef enum:      # EffectLog
    L_CUR, L_N
cdef enum:      # Step
    ST_FACTS, ST_N
cdef enum:      # VirtIODevice
    D_VQS, D_BROKEN, D_GUEST_FEATURES, D_ISR, D_ERRORS, D_GUEST_ERRORS, D_N
cdef enum:      # VirtQueue
    Q_NUM, Q_DESC, Q_AVAIL, Q_USED, Q_CACHES, Q_DESC_LEN, Q_LAST_AVAIL_IDX, Q_SHADOW_AVAIL_IDX,
    Q_USED_IDX, Q_SIGNALLED_USED, Q_SIGNALLED_USED_VALID, Q_NOTIFICATION, Q_INUSE, Q_VECTOR, Q_N
cdef enum:      # VirtIOBlock
    B_CAPACITY, B_LOGICAL_BLOCK_SIZE, B_REQUEST_MERGING, B_REQS, B_NEXT_ID, B_MRB, B_MRB_IS_WRITE,
    B_GROUPS, B_SUPPRESS, B_BY_TYPE, B_SUBMITTED, B_COMPLETED, B_ERRORS, B_MERGED, B_N

cdef Py_ssize_t _MO[M_N]
cdef Py_ssize_t _GM[GM_N]
cdef Py_ssize_t _LOG[L_N]
cdef Py_ssize_t _ST[ST_N]
cdef Py_ssize_t _DV[D_N]
cdef Py_ssize_t _VQ[Q_N]
cdef Py_ssize_t _BK[B_N]

# which classes' members this module reads at their offsets (emu_fast.slot_paths())
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("mem", "vdev", "vblk", "sim", "log", "cur", "timing",
                                       "transport", "counters"), _MO),
    "GuestMemory": slot_offsets(_GuestMemory, ("ram", "size"), _GM),
    "EffectLog": slot_offsets(_EffectLog, ("cur",), _LOG),
    "Step": slot_offsets(_Step, ("facts",), _ST),
    "VirtIODevice": slot_offsets(_VirtIODevice, ("vqs", "broken", "guest_features", "isr", "errors",
                                                 "guest_errors"), _DV),
    "VirtQueue": slot_offsets(_VirtQueue, ("num", "desc", "avail", "used", "caches", "desc_len",
                                           "last_avail_idx", "shadow_avail_idx", "used_idx",
                                           "signalled_used", "signalled_used_valid",
                                           "notification", "inuse", "vector"), _VQ),
    "VirtIOBlock": slot_offsets(_VirtIOBlock, ("capacity", "logical_block_size", "request_merging",
                                               "reqs", "next_id", "mrb", "mrb_is_write", "groups",
                                               "suppress", "by_type", "submitted", "completed",
                                               "errors", "merged"), _BK),
}


# == primitives ===================================================================================

cdef inline bint _addr(object x, long long* out) except -1:
    """x is an int in [0, 2**62) (an address or size C arithmetic can use as is)."""
    cdef int ovf = 0
    cdef long long v
    if type(x) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(x, &ovf)
    if ovf or v < 0 or v >= (<long long>1 << 62):
        return False
    out[0] = v
    return True


# == detail text in a C buffer (the int formatting: emu_fast/_fmt.pxd) =========================

cdef int _put_lens(char* p, object iov) except -2:
    """Write "+".join(str(n) for _a, n in iov) or "0" at p when iov is a list of at most 16
    2-tuples whose second items are plain ints (at most 16 * 21 chars); else return -1."""
    cdef int pos = 0
    cdef long long v
    cdef Py_ssize_t k, cnt
    if type(iov) is not list:
        return -1
    cnt = len(<list>iov)
    if cnt == 0:
        p[0] = 48       # '0'
        return 1
    if cnt > 16:
        return -1
    for k in range(cnt):
        t = (<list>iov)[k]
        if type(t) is not tuple or len(<tuple>t) != 2 or not _ll((<tuple>t)[1], &v):
            return -1
        if k:
            p[pos] = 43       # '+'
            pos += 1
        pos += _pdec(p + pos, v)
    return pos


cdef str _pop_detail(dict elem, object inuse):
    """pop's detail string when every part is a plain int (the indirect address >= 0) and the
    iovs fit _put_lens; else None."""
    cdef char buf[1024]
    cdef long long h, ai, iu, ia = 0
    cdef int n, w
    ind = elem["indirect"]
    if not (_ll(elem["index"], &h) and _ll(elem["avail_idx"], &ai) and _ll(inuse, &iu)):
        return None
    if ind is not None:
        if type(ind) is not tuple or len(<tuple>ind) < 1 or not _ll((<tuple>ind)[0], &ia) or ia < 0:
            return None
    n = _pstr(buf, "head ")
    n += _pdec(buf + n, h)
    n += _pstr(buf + n, " (avail idx ")
    n += _pdec(buf + n, ai)
    buf[n] = 41         # ')'
    n += 1
    if ind is not None:
        n += _pstr(buf + n, " via indirect table @")
        n += _phex(buf + n, <unsigned long long>ia)
    n += _pstr(buf + n, ": out ")
    w = _put_lens(buf + n, elem["out"])
    if w < 0:
        return None
    n += w
    n += _pstr(buf + n, " bytes, in ")
    w = _put_lens(buf + n, elem["in"])
    if w < 0:
        return None
    n += w
    n += _pstr(buf + n, " bytes; inuse=")
    n += _pdec(buf + n, iu)
    return PyUnicode_DecodeASCII(buf, n, NULL)


cdef str _join_lens(object iov):
    """"+".join(str(n) for _a, n in iov) or "0" (pop's detail): C formatting when iov is a
    list of at most 16 2-tuples whose second items are plain ints; else the Python expression."""
    cdef char buf[512]
    cdef int pos = 0
    cdef long long v
    cdef Py_ssize_t k, cnt
    buf[0] = 0
    if type(iov) is list:
        cnt = len(<list>iov)
        if cnt == 0:
            return "0"
        if cnt <= 16:
            for k in range(cnt):
                t = (<list>iov)[k]
                if type(t) is not tuple or len(<tuple>t) != 2 or not _ll((<tuple>t)[1], &v):
                    break
                if k:
                    buf[pos] = 43       # '+'
                    pos += 1
                pos += _pdec(buf + pos, v)
            else:
                return PyUnicode_DecodeASCII(buf, pos, NULL)
    return "+".join([str(n) for _a, n in iov]) or "0"


cdef inline uint64_t _ld(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef object _rd16(object mem, object gpa):
    """GuestMemory.read_u16"""
    cdef long long g
    cdef bytearray ram = sget(mem, _GuestMemory, _GM[GM_RAM], "ram")
    if _addr(gpa, &g) and g + 2 <= PyByteArray_GET_SIZE(ram):
        return <uint16_t>_ld(<const uint8_t*>PyByteArray_AS_STRING(ram) + g, 2)
    return mem.read_u16(gpa)


cdef object _read(object mem, object gpa, object length):
    """GuestMemory.read"""
    cdef long long g, n
    cdef bytearray ram = sget(mem, _GuestMemory, _GM[GM_RAM], "ram")
    if (_addr(gpa, &g) and _addr(length, &n) and g + n <= PyByteArray_GET_SIZE(ram)
            and g + n <= sget(mem, _GuestMemory, _GM[GM_SIZE], "size")):
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(ram) + g, n)
    return mem.read(gpa, length)


cdef tuple _read_desc(object mem, object base, object i):
    """emu.device.virtio._read_desc (mem is m.mem)"""
    cdef long long g
    cdef const uint8_t* p
    a = base + 16 * i
    cdef bytearray ram = sget(mem, _GuestMemory, _GM[GM_RAM], "ram")
    if _addr(a, &g) and g + 16 <= PyByteArray_GET_SIZE(ram):
        p = <const uint8_t*>PyByteArray_AS_STRING(ram) + g
        return (_ld(p, 8), <uint32_t>_ld(p + 8, 4), <uint16_t>_ld(p + 12, 2),
                <uint16_t>_ld(p + 14, 2))
    return mem.read_u64(a), mem.read_u32(a + 8), mem.read_u16(a + 12), mem.read_u16(a + 14)


cdef inline void _log(object m, tuple eff) except *:
    """EffectLog.add"""
    cur = sget(sget(m, _Machine, _MO[M_LOG], "log"), _EffectLog, _LOG[L_CUR], "cur")
    if cur is not None:
        cur.append(eff)


cdef inline object _machine_cur(object m):
    """getattr(m, "cur", None)"""
    return sget_or(m, _Machine, _MO[M_CUR], "cur", None)


cdef inline list _facts(object m):
    """Where add_fact appends (None: facts are not recorded now)."""
    rec = _machine_cur(m)
    if rec is not None and sget(sget(m, _Machine, _MO[M_LOG], "log"), _EffectLog, _LOG[L_CUR],
                                "cur") is not None:
        return sget(rec, _Step, _ST[ST_FACTS], "facts")
    return None


cdef inline bint _has(object vdev, int bit) except -1:
    """VirtIODevice.has_feature (an int's bit 0..63 is bit of its low 64 two's-complement bits,
    negative ints included: the C test; other types: the Python expression)"""
    f = sget(vdev, _VirtIODevice, _DV[D_GUEST_FEATURES], "guest_features")
    if type(f) is int:
        return (PyLong_AsUnsignedLongLongMask(f) >> bit) & 1
    return bool(f >> bit & 1)


cdef inline void _set_reg(object m, object obj, object cls, Py_ssize_t off, str attr, str name,
                          object value) except *:
    """emu.device.virtio.set_reg (obj.<attr> is the member at offset off of class cls)"""
    old = sget(obj, cls, off, attr)
    if old != value:
        sset(obj, cls, off, attr, value)
        _log(m, ("reg", name, old, value))


cdef inline object _vq(object m, object qi):
    """m.vdev.vqs[qi]"""
    return sget(sget(m, _Machine, _MO[M_VDEV], "vdev"), _VirtIODevice, _DV[D_VQS], "vqs")[qi]


cdef inline str _vqreg(object qi, str name0, str attr):
    """f"vq{qi}.{attr}" (name0 is the one of queue 0)"""
    if type(qi) is int and qi == 0:
        return name0
    return f"vq{qi}.{attr}"


cdef object _iov_size(list iov):
    """emu.device.iov.iov_size"""
    total = 0
    for a, n in iov:
        total = total + n
    return total


# == emu/device/virtio.py ==========================================================================

cdef object _vring_avail_idx(object m, object vq):
    """vring_avail_idx"""
    v = _rd16(sget(m, _Machine, _MO[M_MEM], "mem"),
              sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail") + 2)
    sset(vq, _VirtQueue, _VQ[Q_SHADOW_AVAIL_IDX], "shadow_avail_idx", v)
    return v


cdef void _vring_set_avail_event(object m, object vq, object val) except *:
    """vring_set_avail_event"""
    if not sget(vq, _VirtQueue, _VQ[Q_NOTIFICATION], "notification"):
        return
    sget(m, _Machine, _MO[M_MEM], "mem").write_u16(
        sget(vq, _VirtQueue, _VQ[Q_USED], "used")
        + (4 + 8 * sget(vq, _VirtQueue, _VQ[Q_NUM], "num")), val)


cdef void _set_notification(object m, object qi, bint enable) except *:
    """virtio_queue_set_notification"""
    vq = _vq(m, qi)
    sset(vq, _VirtQueue, _VQ[Q_NOTIFICATION], "notification", enable)
    if (not sget(vq, _VirtQueue, _VQ[Q_DESC], "desc")
            or not sget(vq, _VirtQueue, _VQ[Q_CACHES], "caches")):
        return
    if _has(sget(m, _Machine, _MO[M_VDEV], "vdev"), 29):
        _vring_set_avail_event(m, vq, _vring_avail_idx(m, vq))
    else:
        flags = _rd16(sget(m, _Machine, _MO[M_MEM], "mem"),
                      sget(vq, _VirtQueue, _VQ[Q_USED], "used") + 0)
        new = flags & ~1 if enable else flags | 1
        if new != flags:
            sget(m, _Machine, _MO[M_MEM], "mem").write_u16(
                sget(vq, _VirtQueue, _VQ[Q_USED], "used") + 0, new)


cdef bint _queue_empty(object m, object qi) except -1:
    """virtio_queue_empty"""
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    return _queue_empty_v(m, vdev, sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi])


cdef bint _queue_empty_v(object m, object vdev, object vq) except -1:
    """virtio_queue_empty, vdev (m.vdev) and vq (vdev.vqs[qi]) looked up by the caller;
    last_avail_idx read once (vring_avail_idx sets only shadow_avail_idx)"""
    if (sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken")
            or not sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail")):
        return True
    last = sget(vq, _VirtQueue, _VQ[Q_LAST_AVAIL_IDX], "last_avail_idx")
    if sget(vq, _VirtQueue, _VQ[Q_SHADOW_AVAIL_IDX], "shadow_avail_idx") != last:
        return False
    avail_idx = _vring_avail_idx(m, vq) if sget(vq, _VirtQueue, _VQ[Q_CACHES], "caches") else 0
    return avail_idx == last


cdef bint _map_desc(object m, list iov, object max_num_sg, object pa, object sz) except -1:
    """_map_desc (virtqueue_map_desc)"""
    cdef long long p, s, size
    mem = sget(m, _Machine, _MO[M_MEM], "mem")
    if not sz:
        _VD.virtio_error(m, "virtio: zero sized buffers are not allowed", "2.7.5 (len of a buffer)")
        return False
    if not (_addr(pa, &p) and _addr(sz, &s)
            and _addr(sget(mem, _GuestMemory, _GM[GM_SIZE], "size"), &size)):
        return _map_desc_py(m, iov, max_num_sg, pa, sz)
    while s:
        if len(iov) == max_num_sg:
            _VD.virtio_error(m, "virtio: too many write descriptors in indirect table",
                             "2.7.5.3.1 (chain longer than the queue allows)")
            return False
        if not p + 1 <= size:
            _VD.virtio_error(m, "virtio: bogus descriptor or out of resources",
                             "2.7.5 (addr is a guest-physical address of a buffer)")
            return False
        length = min(s, size - p)
        iov.append((p, length))
        s -= length
        p += length
    return True


cdef bint _map_desc_py(object m, list iov, object max_num_sg, object pa, object sz) except -1:
    """_map_desc with Python ints (addresses beyond 2**62)."""
    while sz:
        if len(iov) == max_num_sg:
            _VD.virtio_error(m, "virtio: too many write descriptors in indirect table",
                             "2.7.5.3.1 (chain longer than the queue allows)")
            return False
        if not sget(m, _Machine, _MO[M_MEM], "mem").is_mapped(pa, 1):
            _VD.virtio_error(m, "virtio: bogus descriptor or out of resources",
                             "2.7.5 (addr is a guest-physical address of a buffer)")
            return False
        length = min(sz, sget(sget(m, _Machine, _MO[M_MEM], "mem"), _GuestMemory, _GM[GM_SIZE],
                              "size") - pa)
        iov.append((pa, length))
        sz -= length
        pa += length
    return True


cdef object _virtqueue_pop(object m, object qi):
    """virtqueue_pop (virtqueue_split_pop)"""
    cdef int flags
    cdef Py_ssize_t entries
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    if sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken"):
        return None
    vq = sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi]
    if _queue_empty_v(m, vdev, vq):
        return None
    num = sget(vq, _VirtQueue, _VQ[Q_NUM], "num")   # (nothing below rebinds vq.num, m.mem,
    mem = sget(m, _Machine, _MO[M_MEM], "mem")      # vq.last_avail_idx but the _set_reg: nidx
    max_ = num                                      # is the value it stores)
    if sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse") >= num:
        _VD.virtio_error(m, "Virtqueue size exceeded",
                         "2.7.13.3 (driver made more buffers available than the queue size)")
        return None
    idx = sget(vq, _VirtQueue, _VQ[Q_LAST_AVAIL_IDX], "last_avail_idx")
    nidx = (idx + 1) & 0xFFFF
    _set_reg(m, vq, _VirtQueue, _VQ[Q_LAST_AVAIL_IDX], "last_avail_idx",
             _vqreg(qi, "vq0.last_avail_idx", "last_avail_idx"), nidx)
    head = _rd16(mem, sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail") + 4 + 2 * (idx % num))
    if head >= num:
        _VD.virtio_error(m, f"Guest says index {head} is available",
                         "2.7.6 (avail ring entries are heads of descriptor chains < queue size)")
        return None
    if _has(vdev, 29):
        _vring_set_avail_event(m, vq, nidx)
    if not sget(vq, _VirtQueue, _VQ[Q_CACHES], "caches"):
        _VD.virtio_error(m, "Region caches not initialized", "4.1.4.3 (queue not set up)")
        return None
    if sget(vq, _VirtQueue, _VQ[Q_DESC_LEN], "desc_len") < max_ * 16:
        _VD.virtio_error(m, "Cannot map descriptor ring", "2.7.5 (descriptor table in RAM)")
        return None
    facts = _facts(m)
    base = sget(vq, _VirtQueue, _VQ[Q_DESC], "desc")
    i = head
    descs = []
    addr, length, flags_o, nxt = _read_desc(mem, base, i)
    flags = flags_o
    descs.append((base, i, addr, length, flags_o, nxt))
    if facts is not None:
        facts.append(("desc", "pop", qi, i, None, None, head, addr, length, flags_o, nxt, None))
    indirect_table = None
    if flags & 4:
        if not length or length % 16:
            _VD.virtio_error(m, "Invalid size for indirect buffer table",
                             "2.7.5.3.1 (indirect table len is a multiple of 16)")
            return None
        if not _has(vdev, 28):
            sget(vdev, _VirtIODevice, _DV[D_GUEST_ERRORS], "guest_errors").append(
                "Device virtio-blk: indirect_desc was not negotiated!")
            _log(m, ("guest-error", "indirect_desc was not negotiated!"))
        if not (0 <= addr and length >= 0                                   # is_mapped
                and addr + length <= sget(mem, _GuestMemory, _GM[GM_SIZE], "size")):
            _VD.virtio_error(m, "Cannot map indirect buffer",
                             "2.7.5.3.1 (indirect table in RAM)")
            return None
        max_ = length // 16
        base = addr
        indirect_table = (addr, length)
        i = 0
        addr, length, flags_o, nxt = _read_desc(mem, base, i)
        flags = flags_o
        descs.append((base, i, addr, length, flags_o, nxt))
        if facts is not None:
            facts.append(("desc", "pop", qi, None, base, i, head, addr, length, flags_o, nxt, None))
    out_iov = []
    in_iov = []
    entries = 0
    while True:
        if flags & 2:
            ok = _map_desc(m, in_iov, 1024 - len(out_iov), addr, length)
        else:
            if in_iov:
                _VD.virtio_error(m, "Incorrect order for descriptors",
                                 "2.7.4.2 (device-writable buffers after device-readable ones)")
                return None
            ok = _map_desc(m, out_iov, 1024, addr, length)
        if not ok:
            return None
        entries += 1
        if entries > max_:
            _VD.virtio_error(m, "Looped descriptor", "2.7.5.2 (a chain must not loop)")
            return None
        if not flags & 1:
            break
        if nxt >= max_:
            _VD.virtio_error(m, f"Desc next is {nxt}", "2.7.5.2 (next < queue size / table entries)")
            return None
        i = nxt
        addr, length, flags_o, nxt = _read_desc(mem, base, i)
        flags = flags_o
        descs.append((base, i, addr, length, flags_o, nxt))
        if facts is not None:
            if indirect_table is None:
                facts.append(("desc", "pop", qi, i, None, None, head, addr, length, flags_o, nxt,
                              None))
            else:
                facts.append(("desc", "pop", qi, None, base, i, head, addr, length, flags_o, nxt,
                              None))
    _set_reg(m, vq, _VirtQueue, _VQ[Q_INUSE], "inuse", _vqreg(qi, "vq0.inuse", "inuse"),
             sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse") + 1)
    return {"index": head, "ndescs": 1, "out": out_iov, "in": in_iov,
            "descs": descs, "indirect": indirect_table, "avail_idx": idx}


cdef bint _virtqueue_fill(object m, object vdev, object vq, object qi, dict elem,
                          object length) except -1:
    """virtqueue_fill (virtqueue_split_fill), idx 0 (vdev is m.vdev, vq vdev.vqs[qi])"""
    cdef long long h, ln
    cdef uint8_t buf[8]
    cdef int k
    if (sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken")
            or not sget(vq, _VirtQueue, _VQ[Q_USED], "used")):
        return False
    slot = (sget(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx")
            % sget(vq, _VirtQueue, _VQ[Q_NUM], "num"))
    a = sget(vq, _VirtQueue, _VQ[Q_USED], "used") + 4 + 8 * slot
    index = elem["index"]
    if _addr(index, &h) and h <= 0xFFFFFFFF and type(length) is int:
        ln = length & 0xFFFFFFFF
        for k in range(4):
            buf[k] = <uint8_t>(h >> (8 * k))
            buf[4 + k] = <uint8_t>(ln >> (8 * k))
        data = PyBytes_FromStringAndSize(<char*>buf, 8)
    else:
        data = index.to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little")
    sget(m, _Machine, _MO[M_MEM], "mem").write(a, data)
    head = elem["index"]
    facts = _facts(m)
    k = 0
    for d in elem.get("descs", ()):
        base, i, daddr, dlen, dflags, dnext = d
        if facts is not None:
            if k == 0 or not elem.get("indirect"):
                facts.append(("desc", "used", qi, i, None, None, head, daddr, dlen, dflags, dnext,
                              None))
            else:
                facts.append(("desc", "used", qi, None, base, i, head, daddr, dlen, dflags, dnext,
                              None))
        k += 1
    return True


cdef bint _virtqueue_flush(object m, object qi) except -1:
    """virtqueue_flush (virtqueue_split_flush), count 1"""
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    vq = sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi]
    if sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken"):
        _set_reg(m, vq, _VirtQueue, _VQ[Q_INUSE], "inuse", _vqreg(qi, "vq0.inuse", "inuse"),
                 sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse") - 1)
        return False
    if not sget(vq, _VirtQueue, _VQ[Q_USED], "used"):
        return False
    old = sget(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx")
    new = (old + 1) & 0xFFFF
    sget(m, _Machine, _MO[M_MEM], "mem").write_u16(sget(vq, _VirtQueue, _VQ[Q_USED], "used") + 2,
                                                   new)
    _set_reg(m, vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx",
             _vqreg(qi, "vq0.used_idx", "used_idx"), new)
    _set_reg(m, vq, _VirtQueue, _VQ[Q_INUSE], "inuse", _vqreg(qi, "vq0.inuse", "inuse"),
             sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse") - 1)
    diff = (new - sget(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED], "signalled_used")) & 0xFFFF
    if (diff - 0x10000 if diff >= 0x8000 else diff) < ((new - old) & 0xFFFF):
        sset(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED_VALID], "signalled_used_valid", False)
    return True


cdef tuple _should_notify(object m, object qi):
    """virtio_should_notify (virtio_split_should_notify)"""
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    vq = sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi]
    if (_has(vdev, 24) and not sget(vq, _VirtQueue, _VQ[Q_INUSE], "inuse")
            and _queue_empty_v(m, vdev, vq)):
        return True, "NOTIFY_ON_EMPTY and the queue is empty"
    if not _has(vdev, 29):
        flags = _rd16(sget(m, _Machine, _MO[M_MEM], "mem"),
                      sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail") + 0)
        if flags & 1:
            return False, "avail.flags has NO_INTERRUPT"
        return True, "avail.flags allows interrupts"
    v = sget(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED_VALID], "signalled_used_valid")
    sset(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED_VALID], "signalled_used_valid", True)
    old = sget(vq, _VirtQueue, _VQ[Q_SIGNALLED_USED], "signalled_used")
    new = sget(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx")
    _set_reg(m, vq, _VirtQueue, _VQ[Q_SIGNALLED_USED], "signalled_used",
             _vqreg(qi, "vq0.signalled_used", "signalled_used"), new)
    event = _rd16(sget(m, _Machine, _MO[M_MEM], "mem"), sget(vq, _VirtQueue, _VQ[Q_AVAIL], "avail")
                  + (4 + 2 * sget(vq, _VirtQueue, _VQ[Q_NUM], "num")))
    if not v:
        return True, f"first notification (signalled_used was not valid), used_event={event}"
    need = ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
    return need, _need_event_why(event, new, old, need)


cdef str _need_event_why(object event, object new, object old, bint need):
    """f"vring_need_event(used_event={event}, new={new}, old={old}) = {'true' if need else
    'false'}" (C buffer for plain ints)"""
    cdef char buf[160]
    cdef long long e, nw, od
    cdef int n
    if _ll(event, &e) and _ll(new, &nw) and _ll(old, &od):
        n = _pstr(buf, "vring_need_event(used_event=")
        n += _pdec(buf + n, e)
        n += _pstr(buf + n, ", new=")
        n += _pdec(buf + n, nw)
        n += _pstr(buf + n, ", old=")
        n += _pdec(buf + n, od)
        n += _pstr(buf + n, ") = true" if need else ") = false")
        return PyUnicode_DecodeASCII(buf, n, NULL)
    return (f"vring_need_event(used_event={event}, new={new}, old={old}) = "
            f"{'true' if need else 'false'}")


# == emu/device/iov.py ==============================================================================

cdef object _iov_to_buf(object m, list iov, Py_ssize_t nbytes):
    """iov_to_buf"""
    out = bytearray()
    mem = sget(m, _Machine, _MO[M_MEM], "mem")
    for gpa, n in iov:
        take = min(n, nbytes - len(out))
        if take <= 0:
            break
        out += _read(mem, gpa, take)
    return bytes(out)


cdef list _iov_discard_front(list iov, object nbytes):
    """iov_discard_front"""
    out = []
    for gpa, n in iov:
        if nbytes >= n:
            nbytes -= n
            continue
        out.append((gpa + nbytes, n - nbytes))
        nbytes = 0
    return out


cdef list _iov_discard_back(list iov, object nbytes):
    """iov_discard_back"""
    out = list(iov)
    while out and nbytes:
        gpa, n = out[len(out) - 1]
        if nbytes >= n:
            nbytes -= n
            out.pop()
        else:
            out[len(out) - 1] = (gpa, n - nbytes)
            nbytes = 0
    return out


# == emu/device/virtio_blk.py: the processing pass =================================================

def notify_write(m, off):
    """notify_write (vpci.notify)"""
    qi = sget(m, _Machine, _MO[M_TRANSPORT], "transport").notify_queue(off)
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    sget(m, _Machine, _MO[M_COUNTERS], "counters")["notifies"] += 1
    if (qi is None or qi >= len(sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs"))
            or not sget(sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi], _VirtQueue, _VQ[Q_DESC],
                        "desc")
            or sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken")):
        why = ("device is broken (needs reset)"
               if sget(vdev, _VirtIODevice, _DV[D_BROKEN], "broken") else f"queue {qi} has no ring")
        sched_unblock(sget(m, _Machine, _MO[M_SIM], "sim"), "vcpu",
                      sget(m, _Machine, _MO[M_TIMING], "timing").vmentry_ns)
        return f"virtio_queue_notify ignores the kick: {why}"
    sched_call(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.handle_vq", (qi, 0), "vpci.notify_done",
               ())
    return f"kick for queue {qi}: virtio_queue_notify -> virtio_blk_handle_output"


def notify_done(m):
    """notify_done (vpci.notify_done)"""
    sched_unblock(sget(m, _Machine, _MO[M_SIM], "sim"), "vcpu",
                  sget(m, _Machine, _MO[M_TIMING], "timing").vmentry_ns)
    return "the MMIO write returns; the vCPU re-enters the guest"


def handle_vq(m, qi, again):
    """handle_vq (vblk.handle_vq)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    if not again:
        sget(s, _VirtIOBlock, _BK[B_SUPPRESS], "suppress")[qi] = sget(
            _vq(m, qi), _VirtQueue, _VQ[Q_NOTIFICATION], "notification")
    if sget(s, _VirtIOBlock, _BK[B_SUPPRESS], "suppress")[qi]:
        _set_notification(m, qi, False)
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.pop", (qi,))
    how = ("EVENT_IDX: avail_event goes stale" if _has(sget(m, _Machine, _MO[M_VDEV], "vdev"), 29)
           else "used.flags |= NO_NOTIFY")
    return (("again: " if again else "") +
            (f"virtio_queue_set_notification(vq, 0) ({how})"
             if sget(s, _VirtIOBlock, _BK[B_SUPPRESS], "suppress")[qi]
             else "notifications already off"))


def pop(m, qi):
    """pop (vblk.pop)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    before = len(sget(sget(m, _Machine, _MO[M_VDEV], "vdev"), _VirtIODevice, _DV[D_ERRORS],
                      "errors"))
    elem = _virtqueue_pop(m, qi)
    if elem is None:
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.pass_end", (qi,))
        errors = sget(sget(m, _Machine, _MO[M_VDEV], "vdev"), _VirtIODevice, _DV[D_ERRORS],
                      "errors")
        if len(errors) > before:
            return f"virtio_error: {errors[len(errors) - 1]['message']}"
        return "avail ring empty (last_avail_idx == avail.idx)"
    rid = sget(s, _VirtIOBlock, _BK[B_NEXT_ID], "next_id")
    sset(s, _VirtIOBlock, _BK[B_NEXT_ID], "next_id", rid + 1)       # s.next_id += 1
    sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")[rid] = {
        "id": rid, "qi": qi, "elem": elem, "type": None, "sector": 0, "in_len": 0,
        "status_gpa": 0, "qiov": [], "mr_next": None, "is_write": False, "stage": "popped"}
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.handle_request", (qi, rid))
    detail = _pop_detail(elem, sget(_vq(m, qi), _VirtQueue, _VQ[Q_INUSE], "inuse"))
    if detail is not None:
        return detail
    out = _join_lens(elem["out"])
    inn = _join_lens(elem["in"])
    via = f" via indirect table @{_hex(elem['indirect'][0])}" if elem["indirect"] else ""
    return (f"head {elem['index']} (avail idx {elem['avail_idx']}){via}: "
            f"out {out} bytes, in {inn} bytes; "
            f"inuse={sget(_vq(m, qi), _VirtQueue, _VQ[Q_INUSE], 'inuse')}")


def handle_request(m, qi, rid):
    """handle_request (vblk.handle_request): IN and OUT here, every other type (and every
    malformed request) by the Python function, called before anything has changed."""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    req = sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")[rid]
    elem = req["elem"]
    out_iov, in_iov = elem["out"], elem["in"]
    if type(out_iov) is not list or type(in_iov) is not list or len(out_iov) < 1 or len(in_iov) < 1:
        return _py_handle_request(m, qi, rid)
    hdr = _iov_to_buf(m, out_iov, 16)
    if len(hdr) != 16:
        return _py_handle_request(m, qi, rid)
    if in_iov[len(in_iov) - 1][1] < 1:
        return _py_handle_request(m, qi, rid)
    cdef const uint8_t* h = <const uint8_t*><char*>hdr
    cdef uint32_t typ_c = <uint32_t>_ld(h, 4)
    if typ_c & ~<uint32_t>0x80000001:        # masked != T_IN
        return _py_handle_request(m, qi, rid)
    typ = typ_c
    sector = _ld(h + 8, 8)
    out_iov = _iov_discard_front(out_iov, 16)
    req["in_len"] = _iov_size(in_iov)
    gpa, n = in_iov[len(in_iov) - 1]
    req["status_gpa"] = gpa + n - 1
    in_iov = _iov_discard_back(in_iov, 1)
    req["type"] = typ
    tname = TYPE_NAMES.get(typ_c & ~<uint32_t>0x80000000)
    if tname is None:
        tname = f"type {typ:#x}"
    by_type = sget(s, _VirtIOBlock, _BK[B_BY_TYPE], "by_type")
    if tname in by_type:
        by_type[tname] += 1
    sset(s, _VirtIOBlock, _BK[B_SUBMITTED], "submitted",
         sget(s, _VirtIOBlock, _BK[B_SUBMITTED], "submitted") + 1)
    return _handle_rw(m, s, req, qi, rid, typ, sector, out_iov, in_iov)


cdef object _sector_mask(object s):
    """VirtIOBlock.sector_mask (a property: its body when s is exactly a VirtIOBlock, else
    getattr)"""
    if type(s) is _VirtIOBlock:
        return sget(s, _VirtIOBlock, _BK[B_LOGICAL_BLOCK_SIZE], "logical_block_size") // 512 - 1
    return s.sector_mask


cdef bint _sect_range_ok(object s, object sector, object size) except -1:
    """sect_range_ok"""
    nb = size >> 9
    if (nb > BDRV_REQUEST_MAX_SECTORS or sector & _sector_mask(s)
            or size % sget(s, _VirtIOBlock, _BK[B_LOGICAL_BLOCK_SIZE], "logical_block_size")):
        return False
    capacity = sget(s, _VirtIOBlock, _BK[B_CAPACITY], "capacity")
    return not (sector > capacity or nb > capacity - sector)


cdef object _handle_rw(object m, object s, dict req, object qi, object rid, object typ,
                       object sector, list out_iov, list in_iov):
    """_handle_rw (s is m.vblk and req is s.reqs[rid]: handle_request looked them up)"""
    cdef char buf[80]
    cdef long long sc, sz
    cdef int n
    is_write = bool(typ & 1)
    qiov = out_iov if is_write else in_iov
    req["sector"] = sector
    req["is_write"] = is_write
    req["qiov"] = qiov
    size = _iov_size(qiov)
    if _ll(sector, &sc) and _ll(size, &sz):
        n = _pstr(buf, "OUT sector " if is_write else "IN sector ")
        n += _pdec(buf + n, sc)
        buf[n] = 32         # ' '
        buf[n + 1] = 40     # '('
        n += 2
        n += _pdec(buf + n, sz)
        n += _pstr(buf + n, " bytes)")
        what = PyUnicode_DecodeASCII(buf, n, NULL)
    else:
        what = f"{'OUT' if is_write else 'IN'} sector {sector} ({size} bytes)"
    if not _sect_range_ok(s, sector, size):
        sched_call(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.req_complete", (rid, 1),
                   "vblk.pop", (qi,))
        return (f"{what}: virtio_blk_sect_range_ok fails "
                f"(capacity {sget(s, _VirtIOBlock, _BK[B_CAPACITY], 'capacity')} sectors, "
                f"block {sget(s, _VirtIOBlock, _BK[B_LOGICAL_BLOCK_SIZE], 'logical_block_size')})"
                f": IOERR")
    mrb = sget(s, _VirtIOBlock, _BK[B_MRB], "mrb")
    if mrb and (len(mrb) == 32
                or is_write != sget(s, _VirtIOBlock, _BK[B_MRB_IS_WRITE], "mrb_is_write")
                or not sget(s, _VirtIOBlock, _BK[B_REQUEST_MERGING], "request_merging")):
        sched_call(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.submit_multireq", (qi,),
                   "vblk.mrb_add", (qi, rid))
        return f"{what}: submit the MultiReqBuffer first"
    mrb.append(rid)                 # _mrb_append(s, rid, is_write): mrb is s.mrb, req s.reqs[rid]
    sset(s, _VirtIOBlock, _BK[B_MRB_IS_WRITE], "mrb_is_write", is_write)
    req["stage"] = "mrb"
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.pop", (qi,))
    return f"{what}: appended to the MultiReqBuffer ({len(mrb)} queued)"


cdef inline void _mrb_append(object s, object rid, object is_write) except *:
    """_mrb_append"""
    sget(s, _VirtIOBlock, _BK[B_MRB], "mrb").append(rid)
    sset(s, _VirtIOBlock, _BK[B_MRB_IS_WRITE], "mrb_is_write", is_write)
    sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")[rid]["stage"] = "mrb"


def mrb_add(m, qi, rid):
    """mrb_add (vblk.mrb_add)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    _mrb_append(s, rid, sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")[rid]["is_write"])
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.pop", (qi,))
    return (f"request appended to the MultiReqBuffer "
            f"({len(sget(s, _VirtIOBlock, _BK[B_MRB], 'mrb'))} queued)")


def pass_end(m, qi):
    """pass_end (vblk.pass_end)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    msg = ""
    if sget(s, _VirtIOBlock, _BK[B_SUPPRESS], "suppress").get(qi):
        _set_notification(m, qi, True)
        vq = _vq(m, qi)
        msg = (f"virtio_queue_set_notification(vq, 1): avail_event = "
               f"{sget(vq, _VirtQueue, _VQ[Q_SHADOW_AVAIL_IDX], 'shadow_avail_idx')}; "
               if _has(sget(m, _Machine, _MO[M_VDEV], "vdev"), 29)
               else "used.flags NO_NOTIFY cleared; ")
    if not _queue_empty(m, qi):
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.handle_vq", (qi, 1))
        return msg + "virtio_queue_empty: more buffers arrived, loop"
    if sget(s, _VirtIOBlock, _BK[B_MRB], "mrb"):
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.submit_multireq", (qi,))
        return msg + (f"queue empty; submit the MultiReqBuffer "
                      f"({len(sget(s, _VirtIOBlock, _BK[B_MRB], 'mrb'))} requests)")
    sget(s, _VirtIOBlock, _BK[B_SUPPRESS], "suppress").pop(qi, None)
    return msg + "queue empty; pass ends"


def submit_multireq(m, qi):
    """submit_multireq (vblk.submit_multireq)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    reqs_d = sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")
    reqs = [reqs_d[r] for r in sget(s, _VirtIOBlock, _BK[B_MRB], "mrb")]
    if len(reqs) > 1:
        reqs.sort(key=_sector_key)
    max_transfer = 0x7FFFFFFF
    groups = []
    cur = []
    sector = nb = niov = 0
    for r in reqs:
        qiov = r["qiov"]
        size = _iov_size(qiov)
        if cur and (sector + nb != r["sector"] or niov > 1024 - len(qiov)
                    or size > max_transfer or nb > (max_transfer - size) // 512):
            groups.append(cur)
            cur = []
        if not cur:
            sector, nb, niov = r["sector"], 0, 0
        cur.append(r["id"])
        nb += size // 512
        niov += len(qiov)
    if cur:
        groups.append(cur)
    sset(s, _VirtIOBlock, _BK[B_MRB], "mrb", [])
    sset(s, _VirtIOBlock, _BK[B_GROUPS], "groups", groups)
    sset(s, _VirtIOBlock, _BK[B_MERGED], "merged",
         sget(s, _VirtIOBlock, _BK[B_MERGED], "merged") + sum([len(g) - 1 for g in groups]))
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.submit_requests", (qi,))
    reqs_d = sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")
    shown = ", ".join(["[" + " ".join([str(reqs_d[r]["sector"]) for r in g]) + "]" for g in groups])
    return f"{len(reqs)} requests -> {len(groups)} group(s) by sector: {shown}"


def submit_requests(m, qi):
    """submit_requests (vblk.submit_requests)"""
    cdef Py_ssize_t k
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    group = sget(s, _VirtIOBlock, _BK[B_GROUPS], "groups").pop(0)
    reqs_d = sget(s, _VirtIOBlock, _BK[B_REQS], "reqs")
    first = reqs_d[group[0]]
    qiov = []
    for k in range(len(group) - 1):
        reqs_d[group[k]]["mr_next"] = group[k + 1]
    for r in group:
        req = reqs_d[r]
        qiov.extend(req["qiov"])
        req["stage"] = "submitted"
    op = "write" if first["is_write"] else "read"
    then = (("vblk.submit_requests", (qi,)) if sget(s, _VirtIOBlock, _BK[B_GROUPS], "groups")
            else None)
    _SUP.blk_aio_submit(m, op, first["sector"] << 9, 0, qiov, 0, ("vblk.rw_complete", (group[0],)),
                       then)
    return (f"blk_aio_p{'writev' if op == 'write' else 'readv'}(offset {_hex(first['sector'] << 9)}, "
            f"{_iov_size(qiov)} bytes, {len(qiov)} iovecs) for {len(group)} request(s)")


# == completion ======================================================================================

def rw_complete(m, rid, ret):
    """rw_complete (vblk.rw_complete)"""
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    req = sget(s, _VirtIOBlock, _BK[B_REQS], "reqs").get(rid)
    if req is None or req.get("dropped"):
        sget(s, _VirtIOBlock, _BK[B_REQS], "reqs").pop(rid, None)
        return "request was dropped by a device reset"
    status = 0
    why = "ok"
    if ret:
        action = _vb._error_action(m, ret, not req["is_write"])
        status = 0 if action == "ignore" else 1
        why = f"error {ret}: {action} policy"
    nxt = req["mr_next"]
    if nxt is not None:
        sched_call(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.req_complete", (rid, status),
                   "vblk.rw_complete", (nxt, ret))
    else:
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vblk.req_complete", (rid, status))
    return f"sector {req['sector']}: {why}"


def req_complete(m, rid, status):
    """req_complete (vblk.req_complete)"""
    req = sget(sget(m, _Machine, _MO[M_VBLK], "vblk"), _VirtIOBlock, _BK[B_REQS], "reqs")[rid]
    sget(m, _Machine, _MO[M_MEM], "mem").write(req["status_gpa"], bytes([status]))
    req["status"] = status
    facts = _facts(m)
    if facts is not None:
        facts.append(("req-status", rid, status, req["status_gpa"]))
    req["stage"] = "completing"
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vq.fill", (rid,))
    return f"status {STATUS_NAMES.get(status, status)} -> status byte @{_hex(req['status_gpa'])}"


def fill(m, rid):
    """fill (vq.fill)"""
    cdef char buf[96]
    cdef long long ui, nm, ix, ln
    cdef int n
    req = sget(sget(m, _Machine, _MO[M_VBLK], "vblk"), _VirtIOBlock, _BK[B_REQS], "reqs")[rid]
    qi = req["qi"]
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    vq = sget(vdev, _VirtIODevice, _DV[D_VQS], "vqs")[qi]
    if not _virtqueue_fill(m, vdev, vq, qi, req["elem"], req["in_len"]):
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vq.flush", (rid,))
        return "device broken: buffers unmapped, nothing written to the used ring"
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vq.flush", (rid,))
    used_idx = sget(vq, _VirtQueue, _VQ[Q_USED_IDX], "used_idx")
    num = sget(vq, _VirtQueue, _VQ[Q_NUM], "num")
    index = req['elem']['index']
    in_len = req['in_len']
    if (_ll(used_idx, &ui) and ui >= 0 and _ll(num, &nm) and nm > 0 and _ll(index, &ix)
            and _ll(in_len, &ln)):
        n = _pstr(buf, "used.ring[")
        n += _pdec(buf + n, ui % nm)
        n += _pstr(buf + n, "] = {id ")
        n += _pdec(buf + n, ix)
        n += _pstr(buf + n, ", len ")
        n += _pdec(buf + n, ln)
        buf[n] = 125        # '}'
        return PyUnicode_DecodeASCII(buf, n + 1, NULL)
    return f"used.ring[{used_idx % num}] = {{id {index}, len {in_len}}}"


def flush(m, rid):
    """flush (vq.flush)"""
    req = sget(sget(m, _Machine, _MO[M_VBLK], "vblk"), _VirtIOBlock, _BK[B_REQS], "reqs")[rid]
    qi = req["qi"]
    vq = _vq(m, qi)
    published = _virtqueue_flush(m, qi)
    s = sget(m, _Machine, _MO[M_VBLK], "vblk")
    if not published:
        sget(s, _VirtIOBlock, _BK[B_REQS], "reqs").pop(rid)
        return (f"device broken: inuse -> {sget(vq, _VirtQueue, _VQ[Q_INUSE], 'inuse')}, "
                f"used.idx not published")
    sset(s, _VirtIOBlock, _BK[B_COMPLETED], "completed",
         sget(s, _VirtIOBlock, _BK[B_COMPLETED], "completed") + 1)
    if req.get("status"):
        sset(s, _VirtIOBlock, _BK[B_ERRORS], "errors",
             sget(s, _VirtIOBlock, _BK[B_ERRORS], "errors") + 1)
    sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vq.notify", (rid,))
    return (f"smp_wmb; used.idx = {sget(vq, _VirtQueue, _VQ[Q_USED_IDX], 'used_idx')}; "
            f"inuse = {sget(vq, _VirtQueue, _VQ[Q_INUSE], 'inuse')}")


def notify(m, rid):
    """notify (vq.notify)"""
    req = sget(sget(m, _Machine, _MO[M_VBLK], "vblk"), _VirtIOBlock, _BK[B_REQS], "reqs").pop(rid)
    qi = req["qi"]
    need, why = _should_notify(m, qi)
    if need:
        sched_cont(sget(m, _Machine, _MO[M_SIM], "sim"), "vq.irq", (qi,))
        return f"virtio_should_notify: yes ({why})"
    sget(m, _Machine, _MO[M_COUNTERS], "counters")["irqs_suppressed"] += 1
    return f"virtio_should_notify: no ({why}); no interrupt"


def irq(m, qi):
    """irq (vq.irq)"""
    vdev = sget(m, _Machine, _MO[M_VDEV], "vdev")
    _set_reg(m, vdev, _VirtIODevice, _DV[D_ISR], "isr", "isr",
             sget(vdev, _VirtIODevice, _DV[D_ISR], "isr") | 1)
    vec = sget(_vq(m, qi), _VirtQueue, _VQ[Q_VECTOR], "vector")
    sent = _SUP.msix_notify(sget(m, _Machine, _MO[M_TRANSPORT], "transport"), m, vec)
    return f"ISR |= 1; msix_notify(vector {vec})" + ("" if sent else " (masked or no vector)")


HANDLERS = {
    "vblk.pop": (pop, _vb.pop),
    "vblk.handle_request": (handle_request, _vb.handle_request),
    "vblk.submit_multireq": (submit_multireq, _vb.submit_multireq),
    "vblk.submit_requests": (submit_requests, _vb.submit_requests),
    "vblk.pass_end": (pass_end, _vb.pass_end),
    "vblk.handle_vq": (handle_vq, _vb.handle_vq),
    "vblk.req_complete": (req_complete, _vb.req_complete),
    "vblk.rw_complete": (rw_complete, _vb.rw_complete),
    "vblk.mrb_add": (mrb_add, _vb.mrb_add),
    "vq.fill": (fill, _vb.fill),
    "vq.flush": (flush, _vb.flush),
    "vq.notify": (notify, _vb.notify),
    "vq.irq": (irq, _vb.irq),
    "vpci.notify": (notify_write, _vb.notify_write),
    "vpci.notify_done": (notify_done, _vb.notify_done),
}
