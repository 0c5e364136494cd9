# cython: language_level=3, binding=True
"""The guest driver's step handlers compiled: Linux drivers/virtio/virtio_ring.c (split ring:
emu.guest.vring) and drivers/block/virtio_blk.c (virtio_queue_rq / virtblk_done:
emu.guest.virtio_blk).

Each handler is a line-for-line translation of the Python handler named in its docstring, over
the same objects (the guest's DriverVq, the blk-mq request dicts, the scheduler, the page
allocator), with the same reads, writes, facts, scheduling calls and detail strings in the
same order.  Guest RAM is read directly from the GuestMemory's bytearray when the access lies
inside RAM (otherwise, or for a memory object of another type, with its own method, so even
the error is the same); every write goes through m.mem.write / write_u16 (undo journal,
dirty pages, the step's "ram" effect).  Values a Python struct.pack would refuse go to
struct.pack.  The error paths that stay Python (add_err_kick,
add_err_end, BAD_RING's _bad_ring) are called or scheduled exactly as the Python code does.

Integers are C integers where Python's could not differ: what is read from guest RAM (u16,
u32, a status byte) and the ring indices and guest addresses the driver keeps in its own state
(DriverVq, the request dicts: the emulator makes them); everything else stays a Python object.
Detail strings format ints in C (format(x, '#x') and str(x) exactly) and other values with
format().  Bounds and wraparound checks stay on: list indexing behaves as in Python
(IndexError, negative indices).
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint64_t
from emu_fast._core cimport sched_block, sched_call, sched_cont, sched_post
from emu_fast._slots cimport slot_offsets, sget, sget_or, sset

import struct as _struct

from emu.guest import virtio_blk as _vb
from emu.guest import vring as _vr
from emu.guest.state import VBLK_PDU_SIZE as _PDU_SIZE_PY, BlkMq, DriverVq, Guest
from emu.machine import Machine
from emu.mem.guest_memory import GuestMemory, PAGE_SHIFT as _GM_PAGE_SHIFT
from emu.spec import blk as B
from emu.spec import virtio as V
from emu.sim.steps import EffectLog, Step

from emu_fast import _support as _SUP
from emu_fast._fmt cimport _dec, _hex, _hexll, _ll, _pdec, _phex, _pstr

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef object _GuestMemory = GuestMemory

# The emulator state's members, read and written at their __slots__ offsets
# (emu_fast/_slots.pxd): sget(o, cls, table[index], "name") is o.name, sset(...) o.name = v.
cdef object _Machine = Machine
cdef object _Guest = Guest
cdef object _DriverVq = DriverVq
cdef object _BlkMq = BlkMq
cdef object _EffectLog = EffectLog
cdef object _Step = Step
cdef enum:      # Machine, in the order of the names given to slot_offsets below
    M_GUEST, M_MEM, M_SIM, M_PAGES, M_COUNTERS, M_TRANSPORT, M_TIMING, M_CUR, M_LOG, M_NMEMB
cdef enum:      # Guest
    G_VQ, G_BLKMQ, G_KICK_NEEDED, G_DONE_COUNT, G_PDU_BASE, G_VQ_LOCKED, G_NMEMB
cdef enum:      # DriverVq
    VQ_INDEX, VQ_NUM, VQ_DESC, VQ_AVAIL, VQ_USED, VQ_NOTIFY_OFF, VQ_FREE_HEAD, VQ_NUM_FREE,
    VQ_NUM_ADDED, VQ_LAST_USED_IDX, VQ_AVAIL_IDX_SHADOW, VQ_AVAIL_FLAGS_SHADOW, VQ_EVENT,
    VQ_INDIRECT, VQ_BROKEN, VQ_EVENT_TRIGGERED, VQ_DESC_DATA, VQ_DESC_INDIR, VQ_EXTRA_NEXT,
    VQ_EXTRA_LEN, VQ_EXTRA_FLAGS, VQ_NMEMB
cdef enum:      # BlkMq
    Q_RQS, Q_STOPPED, Q_LAST_RET, Q_RUN_WORK_PENDING, Q_NMEMB
cdef enum:      # GuestMemory
    GM_SIZE, GM_RAM, GM_NMEMB
cdef Py_ssize_t _M[M_NMEMB]
cdef Py_ssize_t _G[G_NMEMB]
cdef Py_ssize_t _VQ[VQ_NMEMB]
cdef Py_ssize_t _Q[Q_NMEMB]
cdef Py_ssize_t _GM[GM_NMEMB]
cdef Py_ssize_t _LOG[1]         # EffectLog.cur
cdef Py_ssize_t _STEP[1]        # Step.facts
_M_NAMES = ("guest", "mem", "sim", "pages", "counters", "transport", "timing", "cur", "log")
_G_NAMES = ("vq", "blkmq", "kick_needed", "done_count", "pdu_base", "vq_locked")
_VQ_NAMES = ("index", "num", "desc", "avail", "used", "notify_off", "free_head", "num_free",
             "num_added", "last_used_idx", "avail_idx_shadow", "avail_flags_shadow", "event",
             "indirect", "broken", "event_triggered", "desc_data", "desc_indir", "extra_next",
             "extra_len", "extra_flags")
_Q_NAMES = ("rqs", "stopped", "last_ret", "run_work_pending")
_GM_NAMES = ("size", "ram")
assert (len(_M_NAMES), len(_G_NAMES), len(_VQ_NAMES), len(_Q_NAMES), len(_GM_NAMES)) == (
    M_NMEMB, G_NMEMB, VQ_NMEMB, Q_NMEMB, GM_NMEMB)
# which classes' members this module reads at their offsets (emu_fast.slot_paths())
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, _M_NAMES, _M),
    "Guest": slot_offsets(_Guest, _G_NAMES, _G),
    "DriverVq": slot_offsets(_DriverVq, _VQ_NAMES, _VQ),
    "BlkMq": slot_offsets(_BlkMq, _Q_NAMES, _Q),
    "GuestMemory": slot_offsets(_GuestMemory, _GM_NAMES, _GM),
    "EffectLog": slot_offsets(_EffectLog, ("cur",), _LOG),
    "Step": slot_offsets(_Step, ("facts",), _STEP),
}

cdef object _DESC_PACK = _vr._DESC.pack        # "<QIHH"
cdef object _bad_ring = _vr._bad_ring
cdef object _desc_flag_names = V.desc_flag_names
cdef object _HDR_PACK = _struct.Struct("<IIQ").pack
cdef object _DWZ_PACK = _struct.Struct("<QII").pack
cdef dict _TYPE_OF = _vb.TYPE_OF
cdef dict _TYPE_NAMES = B.TYPE_NAMES
cdef dict _STATUS_NAMES = B.STATUS_NAMES

# the constants, checked against the Python modules they come from
cdef enum:
    PAGE_SHIFT = 12
cdef long long DESC_SIZE = V.DESC_SIZE
cdef long long F_NEXT = V.VIRTQ_DESC_F_NEXT
cdef long long F_WRITE = V.VIRTQ_DESC_F_WRITE
cdef long long F_INDIRECT = V.VIRTQ_DESC_F_INDIRECT
cdef long long AVAIL_F_NO_INTERRUPT = V.VRING_AVAIL_F_NO_INTERRUPT
cdef long long USED_F_NO_NOTIFY = V.VRING_USED_F_NO_NOTIFY
cdef long long AVAIL_FLAGS = V.AVAIL_FLAGS
cdef long long AVAIL_IDX = V.AVAIL_IDX
cdef long long AVAIL_RING = V.AVAIL_RING
cdef long long USED_FLAGS = V.USED_FLAGS
cdef long long USED_IDX = V.USED_IDX
cdef long long USED_RING = V.USED_RING
cdef long long USED_ELEM_SIZE = V.USED_ELEM_SIZE
cdef long long PDU_SIZE = _PDU_SIZE_PY
cdef long long OUTHDR_SIZE = B.OUTHDR_SIZE
cdef long long DWZ_SEG_SIZE = B.DWZ_SEG_SIZE
cdef long long WZ_FLAG_UNMAP = B.WRITE_ZEROES_FLAG_UNMAP
cdef long long T_OUT = B.T_OUT
cdef long long T_GET_ID = B.T_GET_ID
cdef long long S_OK = B.S_OK
cdef long long S_UNSUPP = B.S_UNSUPP
assert (DESC_SIZE, F_NEXT, F_WRITE, F_INDIRECT) == (16, 1, 2, 4)
assert _vr._DESC.format == "<QIHH" and _vr._DESC.size == DESC_SIZE
assert all(V.avail_used_event_off(n) == AVAIL_RING + 2 * n and
           V.used_avail_event_off(n) == USED_RING + USED_ELEM_SIZE * n for n in (1, 256, 1024))
assert (V.DESC_FLAG_NAMES == ((1, "NEXT"), (2, "WRITE"), (4, "INDIRECT")))
assert OUTHDR_SIZE == 16 and _GM_PAGE_SHIFT == PAGE_SHIFT

# desc_flag_names(f) for f in 0..7 (other values: the Python function)
cdef tuple _FLAG_NAMES = tuple(V.desc_flag_names(f) for f in range(8))


cdef inline str _flag_names(long long flags):
    if 0 <= flags < 8:
        return <str>_FLAG_NAMES[flags]
    return _desc_flag_names(flags)


# == guest memory ===============================================================================
# Reads: GuestMemory.read_u16/read_u32/read on the bytearray (as emu_fast._core's accessors);
# outside RAM or on another memory type: the object's own method.  Writes: the object's own.

cdef inline object _ram(object mem, long long g, long long n):
    """mem.ram when mem is a GuestMemory and [g, g+n) lies inside RAM (and inside the
    bytearray, whole pages of it); else None."""
    cdef long long size
    if type(mem) is not _GuestMemory or g < 0:
        return None
    size = sget(mem, _GuestMemory, _GM[GM_SIZE], "size")
    if g + n > size:
        return None
    ram = sget(mem, _GuestMemory, _GM[GM_RAM], "ram")
    if (type(ram) is not bytearray
            or ((((g + n - 1) >> PAGE_SHIFT) + 1) << PAGE_SHIFT) > PyByteArray_GET_SIZE(ram)):
        return None
    return ram


cdef inline uint64_t _ld(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef long long _rd(object mem, long long gpa, int n) except? -1:
    """mem.read_u16(gpa) (n 2), mem.read_u32(gpa) (n 4), mem.read(gpa, 1)[0] (n 1)."""
    ram = _ram(mem, gpa, n)
    if ram is not None:
        return <long long>_ld(<const uint8_t*>PyByteArray_AS_STRING(ram) + gpa, n)
    if n == 2:
        return mem.read_u16(gpa)
    if n == 4:
        return mem.read_u32(gpa)
    return mem.read(gpa, 1)[0]


cdef inline int _wr(object mem, long long gpa, bytes new) except -1:
    """mem.write(gpa, new): every RAM write goes through the memory object's own write (on
    the fast engine _core's compiled GuestMemory.write: undo journal, dirty pages, the "ram"
    effect)."""
    mem.write(gpa, new)
    return 0


cdef inline void _st(uint8_t* p, uint64_t v, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        p[i] = <uint8_t>(v >> (8 * i))


cdef inline int _wr16(object mem, long long gpa, object val) except -1:
    """mem.write_u16(gpa, val)"""
    mem.write_u16(gpa, val)
    return 0


# == descriptors and their text (the int formatting: emu_fast/_fmt.pxd) ========================

cdef bytes _desc_bytes(object addr, object length, long long flags, object nxt):
    """emu.guest.vring._DESC.pack(addr, length, flags, nxt): struct virtq_desc ("<QIHH")."""
    cdef uint8_t buf[16]
    if (type(addr) is int and type(length) is int and type(nxt) is int
            and 0 <= addr <= 0xFFFFFFFFFFFFFFFF and 0 <= length <= 0xFFFFFFFF
            and 0 <= flags <= 0xFFFF and 0 <= nxt <= 0xFFFF):
        _st(buf, <uint64_t>addr, 8)
        _st(buf + 8, <uint64_t><long long>length, 4)
        _st(buf + 12, <uint64_t>flags, 2)
        _st(buf + 14, <uint64_t><long long>nxt, 2)
        return PyBytes_FromStringAndSize(<char*>buf, 16)
    return _DESC_PACK(addr, length, flags, nxt)         # raises struct.error as Python does


cdef extern from "Python.h":
    int PyUnicode_IS_ASCII(object o)

# desc_flag_names(f) for f in 0..7 as C strings (checked against the Python function below)
cdef const char* _FLAG_NAMES_C[8]
_FLAG_NAMES_C[0] = "0"
_FLAG_NAMES_C[1] = "NEXT"
_FLAG_NAMES_C[2] = "WRITE"
_FLAG_NAMES_C[3] = "NEXT|WRITE"
_FLAG_NAMES_C[4] = "INDIRECT"
_FLAG_NAMES_C[5] = "NEXT|INDIRECT"
_FLAG_NAMES_C[6] = "WRITE|INDIRECT"
_FLAG_NAMES_C[7] = "NEXT|WRITE|INDIRECT"
assert all(V.desc_flag_names(f).encode() == _FLAG_NAMES_C[f] for f in range(8))


cdef str _desc_detail(bint ind, long long ci, object gpa, object length, long long written,
                      object nxt, object role, bint last):
    """add_desc's detail string: f"{where} = {{addr {gpa:#x}, len {length}, {shown}, next {nxt}}}
    ({role})" + ("; last: NEXT cleared" if last else ""), written into a C buffer when every
    part is a plain int (gpa >= 0) or an ASCII str (else by the f-string)."""
    cdef long long a, ln, nx
    cdef char buf[400]
    cdef Py_ssize_t rl = 0, j
    cdef const char* rp
    cdef int n
    if (_ll(gpa, &a) and a >= 0 and _ll(length, &ln) and _ll(nxt, &nx) and 0 <= written < 8
            and type(role) is str and PyUnicode_IS_ASCII(role)):
        rp = PyUnicode_AsUTF8AndSize(role, &rl)
        if rl <= 200:
            n = _pstr(buf, "table[" if ind else "desc[")
            n += _pdec(buf + n, ci)
            n += _pstr(buf + n, "] = {addr ")
            n += _phex(buf + n, <unsigned long long>a)
            n += _pstr(buf + n, ", len ")
            n += _pdec(buf + n, ln)
            n += _pstr(buf + n, ", ")
            n += _pstr(buf + n, _FLAG_NAMES_C[written])
            n += _pstr(buf + n, ", next ")
            n += _pdec(buf + n, nx)
            n += _pstr(buf + n, "} (")
            for j in range(rl):
                buf[n + j] = rp[j]
            n += <int>rl
            buf[n] = 41     # ')'
            n += 1
            if last:
                n += _pstr(buf + n, "; last: NEXT cleared")
            return PyUnicode_DecodeASCII(buf, n, NULL)
    where = f"table[{ci}]" if ind else f"desc[{ci}]"
    return (f"{where} = {{addr {_hex(gpa)}, len {_dec(length)}, {_flag_names(written)}, "
            f"next {_dec(nxt)}}} ({role})" + ("; last: NEXT cleared" if last else ""))


def format_int(o):
    """(format(o, '#x'), format(o, '')) as the handlers make them (for the tests)."""
    return _hex(o), _dec(o)


def pack_desc(addr, length, flags, nxt):
    """A descriptor's bytes as the handlers make them (for the tests); flags is a C integer
    here as in the handlers."""
    return _desc_bytes(addr, length, flags, nxt)


cdef inline object _machine_cur(object m):
    """getattr(m, "cur", None)"""
    return sget_or(m, _Machine, _M[M_CUR], "cur", None)


cdef inline void _add_fact(object m, tuple fact) except *:
    """emu.sim.steps.add_fact"""
    rec = _machine_cur(m)
    if (rec is not None and
            sget(sget(m, _Machine, _M[M_LOG], "log"), _EffectLog, _LOG[0], "cur") is not None):
        sget(rec, _Step, _STEP[0], "facts").append(fact)


# == drivers/virtio/virtio_ring.c ===============================================================

def add_split(m, rid):
    """emu.guest.vring.add_split"""
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    sgs = rq["sgs"]
    total = len(sgs)
    if sget(vq, _DriverVq, _VQ[VQ_BROKEN], "broken"):
        rq["add_err"] = "EIO"
        return "queue is broken: -EIO"
    indirect = (sget(vq, _DriverVq, _VQ[VQ_INDIRECT], "indirect") and total > 1
                and sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free") > 0)
    table = 0
    note = ""
    if indirect:
        table = _SUP.kmalloc(sget(m, _Machine, _M[M_PAGES], "pages"), DESC_SIZE * total) or 0
        if not table:
            indirect = False
            note = "kmalloc of the indirect table failed: falling back to direct descriptors; "
    used = 1 if indirect else total
    if sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free") < used:
        rq["add_err"] = "ENOSPC"
        if rq["out_sgs"]:
            sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.notify", (1,))
            return (note + f"need {_dec(used)} descriptors, "
                    f"{_dec(sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], 'num_free'))} free: forced notify "
                    "('for historical reasons'), then -ENOSPC")
        return (note + f"need {_dec(used)} descriptors, "
                f"{_dec(sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], 'num_free'))} free: -ENOSPC")
    head = sget(vq, _DriverVq, _VQ[VQ_FREE_HEAD], "free_head")
    rq["add"] = {"indirect": indirect, "table": table, "k": 0, "i": 0 if indirect else head,
                 "head": head, "used": used}
    rq["table"] = table
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.add_desc", (rid,))
    if indirect:
        return note + f"{total} sg entries -> indirect table of {total} descriptors at {_hex(table)}"
    return note + f"{total} sg entries -> {total} ring descriptors from free_head {_dec(head)}"


def add_desc(m, rid):
    """emu.guest.vring.add_desc (write_desc inlined)"""
    cdef long long flags, written, base, ci
    cdef bint ind, last
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    st = rq["add"]
    k = st["k"]
    sgs = rq["sgs"]
    gpa, length, is_in = sgs[k]
    flags = F_NEXT | (F_WRITE if is_in else 0)
    i = st["i"]
    ci = i
    ind = bool(st["indirect"])
    if ind:
        table = st["table"]
        base = table
        nxt = i + 1
    else:
        base = sget(vq, _DriverVq, _VQ[VQ_DESC], "desc")
        nxt = sget(vq, _DriverVq, _VQ[VQ_EXTRA_NEXT], "extra_next")[i]
        sget(vq, _DriverVq, _VQ[VQ_EXTRA_LEN], "extra_len")[i] = length
        sget(vq, _DriverVq, _VQ[VQ_EXTRA_FLAGS], "extra_flags")[i] = flags
    mem = sget(m, _Machine, _M[M_MEM], "mem")
    _wr(mem, base + DESC_SIZE * ci, _desc_bytes(gpa, length, flags, nxt))
    last = k == len(sgs) - 1
    role = rq["roles"][k]
    if last:
        written = flags & ~F_NEXT
        _wr(mem, base + DESC_SIZE * ci, _desc_bytes(gpa, length, written, nxt))
        if not ind:
            sget(vq, _DriverVq, _VQ[VQ_EXTRA_FLAGS], "extra_flags")[i] = written
        st["prev"] = i
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"),
                   "vring.add_head" if ind else "vring.add_avail", (rid,))
    else:
        written = flags
        st["k"] = k + 1
        st["i"] = nxt
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.add_desc", (rid,))
    # for breakpoints: the descriptor as this step left it (ring slot i, or entry i of the table)
    if ind:
        _add_fact(m, ("desc", "add", sget(vq, _DriverVq, _VQ[VQ_INDEX], "index"), None, table, i,
                      st["head"], gpa, length, written, nxt, rid))
    else:
        _add_fact(m, ("desc", "add", sget(vq, _DriverVq, _VQ[VQ_INDEX], "index"), i, None, None,
                      st["head"], gpa, length, written, nxt, rid))
    return _desc_detail(ind, ci, gpa, length, written, nxt, role, last)


def add_head(m, rid):
    """emu.guest.vring.add_head"""
    cdef long long length, chead, ta, nx
    cdef char buf[128]
    cdef int n
    g = sget(m, _Machine, _M[M_GUEST], "guest")             # m.guest, read once for both
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    st = rq["add"]
    head = st["head"]
    chead = head
    length = DESC_SIZE * len(rq["sgs"])
    nxt = sget(vq, _DriverVq, _VQ[VQ_EXTRA_NEXT], "extra_next")[head]
    table = st["table"]
    _wr(sget(m, _Machine, _M[M_MEM], "mem"),
        sget(vq, _DriverVq, _VQ[VQ_DESC], "desc") + DESC_SIZE * chead,
        _desc_bytes(table, length, F_INDIRECT, nxt))
    _add_fact(m, ("desc", "add", sget(vq, _DriverVq, _VQ[VQ_INDEX], "index"), head, None, None,
                  head, table, length, F_INDIRECT, nxt, rid))
    sget(vq, _DriverVq, _VQ[VQ_EXTRA_LEN], "extra_len")[head] = length
    sget(vq, _DriverVq, _VQ[VQ_EXTRA_FLAGS], "extra_flags")[head] = F_INDIRECT
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.add_avail", (rid,))
    if _ll(table, &ta) and ta >= 0 and _ll(nxt, &nx):
        n = _pstr(buf, "desc[")
        n += _pdec(buf + n, chead)
        n += _pstr(buf + n, "] = {addr ")
        n += _phex(buf + n, <unsigned long long>ta)
        n += _pstr(buf + n, ", len ")
        n += _pdec(buf + n, length)
        n += _pstr(buf + n, ", INDIRECT, next ")
        n += _pdec(buf + n, nx)
        buf[n] = 125        # '}'
        return PyUnicode_DecodeASCII(buf, n + 1, NULL)
    return f"desc[{chead}] = {{addr {_hex(table)}, len {length}, INDIRECT, next {_dec(nxt)}}}"


def add_avail(m, rid):
    """emu.guest.vring.add_avail (the num_free and free_head it stores kept in locals)"""
    cdef long long slot, h, nf, fh
    cdef char buf[96]
    cdef int n
    g = sget(m, _Machine, _M[M_GUEST], "guest")             # m.guest, read once for both
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    st = rq.pop("add")
    head = st["head"]
    num_free = sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free") - st["used"]
    sset(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free", num_free)
    extra_next = sget(vq, _DriverVq, _VQ[VQ_EXTRA_NEXT], "extra_next")
    free_head = extra_next[head] if st["indirect"] else extra_next[st["prev"]]
    sset(vq, _DriverVq, _VQ[VQ_FREE_HEAD], "free_head", free_head)
    sget(vq, _DriverVq, _VQ[VQ_DESC_DATA], "desc_data")[head] = rid
    sget(vq, _DriverVq, _VQ[VQ_DESC_INDIR], "desc_indir")[head] = st["table"]
    rq["head"] = head
    slot = (sget(vq, _DriverVq, _VQ[VQ_AVAIL_IDX_SHADOW], "avail_idx_shadow")
            & (sget(vq, _DriverVq, _VQ[VQ_NUM], "num") - 1))
    _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
          sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_RING + 2 * slot, head)
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.add_publish", (rid,))
    if _ll(head, &h) and _ll(num_free, &nf) and _ll(free_head, &fh):
        n = _pstr(buf, "avail.ring[")
        n += _pdec(buf + n, slot)
        n += _pstr(buf + n, "] = ")
        n += _pdec(buf + n, h)
        n += _pstr(buf + n, "; num_free ")
        n += _pdec(buf + n, nf)
        n += _pstr(buf + n, ", free_head ")
        n += _pdec(buf + n, fh)
        return PyUnicode_DecodeASCII(buf, n, NULL)
    return (f"avail.ring[{slot}] = {_dec(head)}; num_free {_dec(num_free)}, "
            f"free_head {_dec(free_head)}")


def add_publish(m, rid):
    """emu.guest.vring.add_publish (avail_idx_shadow: the value it stores)"""
    cdef long long sh, h
    cdef char buf[128]
    cdef int n
    g = sget(m, _Machine, _M[M_GUEST], "guest")             # m.guest, read once for both
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    shadow = (sget(vq, _DriverVq, _VQ[VQ_AVAIL_IDX_SHADOW], "avail_idx_shadow") + 1) & 0xFFFF
    sset(vq, _DriverVq, _VQ[VQ_AVAIL_IDX_SHADOW], "avail_idx_shadow", shadow)
    _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
          sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_IDX, shadow)
    sset(vq, _DriverVq, _VQ[VQ_NUM_ADDED], "num_added",
         sget(vq, _DriverVq, _VQ[VQ_NUM_ADDED], "num_added") + 1)
    rq["stage"] = "avail"
    rq["add_err"] = ""
    head = rq['head']
    if _ll(shadow, &sh) and _ll(head, &h):
        n = _pstr(buf, "virtio_wmb; avail.idx = ")
        n += _pdec(buf + n, sh)
        n += _pstr(buf + n, " (head ")
        n += _pdec(buf + n, h)
        n += _pstr(buf + n, " is now visible to the device)")
        return PyUnicode_DecodeASCII(buf, n, NULL)
    return (f"virtio_wmb; avail.idx = {_dec(shadow)} (head {_dec(head)} is now "
            "visible to the device)")


def kick_prepare(m, then_notify):
    """emu.guest.vring.kick_prepare"""
    cdef long long new, old, ev, flags
    cdef bint need
    vq = sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ], "vq")
    new = sget(vq, _DriverVq, _VQ[VQ_AVAIL_IDX_SHADOW], "avail_idx_shadow")
    old = (new - sget(vq, _DriverVq, _VQ[VQ_NUM_ADDED], "num_added")) & 0xFFFF
    sset(vq, _DriverVq, _VQ[VQ_NUM_ADDED], "num_added", 0)
    if sget(vq, _DriverVq, _VQ[VQ_EVENT], "event"):
        ev = _rd(sget(m, _Machine, _M[M_MEM], "mem"),
                 sget(vq, _DriverVq, _VQ[VQ_USED], "used") + USED_RING
                 + USED_ELEM_SIZE * sget(vq, _DriverVq, _VQ[VQ_NUM], "num"), 2)
        need = ((new - ev - 1) & 0xFFFF) < ((new - old) & 0xFFFF)      # vring_need_event
        why = f"vring_need_event(avail_event={ev}, new={new}, old={old}) = {'true' if need else 'false'}"
    else:
        flags = _rd(sget(m, _Machine, _M[M_MEM], "mem"),
                    sget(vq, _DriverVq, _VQ[VQ_USED], "used") + USED_FLAGS, 2)
        need = not flags & USED_F_NO_NOTIFY
        why = f"used.flags = {_hexll(flags)}: " + ("notify" if need else "NO_NOTIFY")
    sset(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_KICK_NEEDED], "kick_needed", need)
    if not need:
        sget(m, _Machine, _M[M_COUNTERS], "counters")["kicks_suppressed"] += 1
    if then_notify and need:
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.notify", (0,))
    return why + ("" if need else "; no kick needed")


def notify(m, forced):
    """emu.guest.vring.notify"""
    vq = sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ], "vq")
    if sget(vq, _DriverVq, _VQ[VQ_BROKEN], "broken"):
        return "virtqueue_notify: queue broken, no notify"
    _SUP.mmio_write(sget(m, _Machine, _M[M_TRANSPORT], "transport"), m,
                    sget(vq, _DriverVq, _VQ[VQ_NOTIFY_OFF], "notify_off"), 2,
                    sget(vq, _DriverVq, _VQ[VQ_INDEX], "index"))
    sget(m, _Machine, _M[M_COUNTERS], "counters")["kicks"] += 1
    sched_post(sget(m, _Machine, _M[M_SIM], "sim"), "qemu", "vpci.notify",
               (sget(vq, _DriverVq, _VQ[VQ_NOTIFY_OFF], "notify_off"),),
               sget(m, _Machine, _M[M_TIMING], "timing").vmexit_ns)
    sched_block(sget(m, _Machine, _M[M_SIM], "sim"), "", ())
    return (("forced " if forced else "") +
            f"iowrite16({_dec(sget(vq, _DriverVq, _VQ[VQ_INDEX], 'index'))}, "
            f"BAR4+{_hex(sget(vq, _DriverVq, _VQ[VQ_NOTIFY_OFF], 'notify_off'))}): VM exit to QEMU")


def interrupt(m, vector):
    """emu.guest.vring.interrupt"""
    cdef long long used_idx
    vq = sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ], "vq")
    used_idx = _rd(sget(m, _Machine, _M[M_MEM], "mem"),
                   sget(vq, _DriverVq, _VQ[VQ_USED], "used") + USED_IDX, 2)
    if used_idx == sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], "last_used_idx"):
        return f"vector {_dec(vector)}: no new used buffers (last_used_idx {used_idx}): IRQ_NONE"
    if sget(vq, _DriverVq, _VQ[VQ_BROKEN], "broken"):
        return "queue broken: interrupt ignored"
    if sget(vq, _DriverVq, _VQ[VQ_EVENT], "event"):
        sset(vq, _DriverVq, _VQ[VQ_EVENT_TRIGGERED], "event_triggered", True)
    sset(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_DONE_COUNT], "done_count", 0)
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.done")
    return (f"vector {_dec(vector)}: used.idx {used_idx} != last_used_idx "
            f"{_dec(sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], 'last_used_idx'))}: "
            "callback virtblk_done")


def disable_cb(m):
    """emu.guest.vring.disable_cb"""
    vq = sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ], "vq")
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.get_buf")
    if sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow") & AVAIL_F_NO_INTERRUPT:
        return "callbacks already disabled"
    sset(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow",
         sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow")
         | AVAIL_F_NO_INTERRUPT)
    if sget(vq, _DriverVq, _VQ[VQ_EVENT_TRIGGERED], "event_triggered"):
        return "shadow NO_INTERRUPT; event already triggered: no memory write"
    if sget(vq, _DriverVq, _VQ[VQ_EVENT], "event"):
        _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
              sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_RING
              + 2 * sget(vq, _DriverVq, _VQ[VQ_NUM], "num"), 0)
        return "used_event = 0 (\"a hack\")"
    _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
          sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_FLAGS,
          sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow"))
    return "avail.flags = NO_INTERRUPT"


def get_buf(m):
    """emu.guest.vring.get_buf (vq.used, vq.num, m.mem, m.sim read once: nothing here rebinds
    them; last_used_idx kept in a C local after it is stored)"""
    cdef long long used_idx, slot, a, uid, ulen, freed, last, num, r, nf
    cdef char buf[320]
    cdef int n
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    vq = sget(g, _Guest, _G[G_VQ], "vq")
    sim = sget(m, _Machine, _M[M_SIM], "sim")
    if sget(vq, _DriverVq, _VQ[VQ_BROKEN], "broken"):
        sched_cont(sim, "vring.enable_cb")
        return "queue broken: NULL"
    mem = sget(m, _Machine, _M[M_MEM], "mem")
    used = sget(vq, _DriverVq, _VQ[VQ_USED], "used")
    used_idx = _rd(mem, used + USED_IDX, 2)
    last = sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], "last_used_idx")
    if last == used_idx:
        sched_cont(sim, "vring.enable_cb")
        return f"last_used_idx == used.idx ({used_idx}): NULL"
    num = sget(vq, _DriverVq, _VQ[VQ_NUM], "num")
    slot = last & (num - 1)
    a = used + USED_RING + USED_ELEM_SIZE * slot
    uid = _rd(mem, a, 4)
    ulen = _rd(mem, a + 4, 4)
    if uid >= num:
        _bad_ring(m, f"id {uid} out of range")
        sched_cont(sim, "vring.enable_cb")
        return f"used.ring[{slot}].id = {uid}: BAD_RING: id {uid} out of range (queue broken)"
    rid = sget(vq, _DriverVq, _VQ[VQ_DESC_DATA], "desc_data")[uid]
    if rid < 0:
        _bad_ring(m, f"id {uid} is not a head!")
        sched_cont(sim, "vring.enable_cb")
        return f"used.ring[{slot}].id = {uid}: BAD_RING: id {uid} is not a head! (queue broken)"
    freed = _detach_buf_split(m, vq, uid)
    last = (last + 1) & 0xFFFF
    sset(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], "last_used_idx", last)
    note = ""
    if not sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow") & AVAIL_F_NO_INTERRUPT:
        _wr16(mem, sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_RING + 2 * num, last)
        note = f"; used_event = {last}"
    sset(g, _Guest, _G[G_DONE_COUNT], "done_count",
         sget(g, _Guest, _G[G_DONE_COUNT], "done_count") + 1)
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    rq["used_len"] = ulen
    sched_cont(sim, "vblkd.request_done", (rid,))
    nf_o = sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free")
    if _ll(rid, &r) and _ll(nf_o, &nf):
        n = _pstr(buf, "used.ring[")
        n += _pdec(buf + n, slot)
        n += _pstr(buf + n, "] = {id ")
        n += _pdec(buf + n, uid)
        n += _pstr(buf + n, ", len ")
        n += _pdec(buf + n, ulen)
        n += _pstr(buf + n, "}: request ")
        n += _pdec(buf + n, r)
        n += _pstr(buf + n, "; detach_buf_split freed ")
        n += _pdec(buf + n, freed)
        n += _pstr(buf + n, " descriptor(s), num_free ")
        n += _pdec(buf + n, nf)
        n += _pstr(buf + n, "; last_used_idx ")
        n += _pdec(buf + n, last)
        return PyUnicode_DecodeASCII(buf, n, NULL) + note
    return (f"used.ring[{slot}] = {{id {uid}, len {ulen}}}: request {_dec(rid)}; detach_buf_split "
            f"freed {freed} descriptor(s), num_free {_dec(nf_o)}; last_used_idx "
            f"{last}{note}")


cdef long long _detach_buf_split(object m, object vq, long long head) except -1:
    """emu.guest.vring.detach_buf_split (vq is m.guest.vq; its lists and num read once)"""
    cdef long long n, desc, num
    sget(vq, _DriverVq, _VQ[VQ_DESC_DATA], "desc_data")[head] = -1
    i = head
    n = 1
    mem = sget(m, _Machine, _M[M_MEM], "mem")
    desc = sget(vq, _DriverVq, _VQ[VQ_DESC], "desc")
    extra_next = sget(vq, _DriverVq, _VQ[VQ_EXTRA_NEXT], "extra_next")
    num = sget(vq, _DriverVq, _VQ[VQ_NUM], "num")
    while _rd(mem, desc + DESC_SIZE * i + 12, 2) & F_NEXT:
        i = extra_next[i]
        n += 1
        if n > num:
            _bad_ring(m, f"detach_buf_split: chain from {head} loops (shared NEXT flags corrupted)")
            break
    extra_next[i] = sget(vq, _DriverVq, _VQ[VQ_FREE_HEAD], "free_head")
    sset(vq, _DriverVq, _VQ[VQ_FREE_HEAD], "free_head", head)
    sset(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free",
         sget(vq, _DriverVq, _VQ[VQ_NUM_FREE], "num_free") + n)
    desc_indir = sget(vq, _DriverVq, _VQ[VQ_DESC_INDIR], "desc_indir")
    table = desc_indir[head]
    if table:
        _SUP.kfree(sget(m, _Machine, _M[M_PAGES], "pages"), table)
        desc_indir[head] = 0
    return n


def enable_cb(m):
    """emu.guest.vring.enable_cb"""
    cdef long long used_idx
    vq = sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ], "vq")
    sset(vq, _DriverVq, _VQ[VQ_EVENT_TRIGGERED], "event_triggered", False)
    note = ""
    if sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow") & AVAIL_F_NO_INTERRUPT:
        sset(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow",
             sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow")
             & ~AVAIL_F_NO_INTERRUPT)
        if not sget(vq, _DriverVq, _VQ[VQ_EVENT], "event"):
            _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
                  sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_FLAGS,
                  sget(vq, _DriverVq, _VQ[VQ_AVAIL_FLAGS_SHADOW], "avail_flags_shadow"))
            note = "avail.flags = 0; "
    _wr16(sget(m, _Machine, _M[M_MEM], "mem"),
          sget(vq, _DriverVq, _VQ[VQ_AVAIL], "avail") + AVAIL_RING
          + 2 * sget(vq, _DriverVq, _VQ[VQ_NUM], "num"),
          sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], "last_used_idx"))
    used_idx = _rd(sget(m, _Machine, _M[M_MEM], "mem"),
                   sget(vq, _DriverVq, _VQ[VQ_USED], "used") + USED_IDX, 2)
    if (used_idx != sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], "last_used_idx")
            and not sget(vq, _DriverVq, _VQ[VQ_BROKEN], "broken")):
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.disable_cb")
        return (note + f"used_event = {_dec(sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], 'last_used_idx'))}; "
                f"virtio_mb; used.idx {used_idx}: more work, loop")
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.done_end")
    return (note + f"used_event = {_dec(sget(vq, _DriverVq, _VQ[VQ_LAST_USED_IDX], 'last_used_idx'))}; "
            f"virtio_mb; used.idx {used_idx}: done")


# == drivers/block/virtio_blk.c =================================================================

def queue_rq(m, rid, last):
    """emu.guest.virtio_blk.queue_rq"""
    rq = sget(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
              _BlkMq, _Q[Q_RQS], "rqs")[rid]
    rq["last"] = bool(last)
    sset(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_KICK_NEEDED], "kick_needed", False)
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.setup_cmd", (rid,))
    return (f"request {_dec(rid)} (tag {_dec(rq['tag'])}, {rq['op']} sector {_dec(rq['sector'])}), "
            f"bd->last = {'True' if last else 'False'}")


def setup_cmd(m, rid):
    """emu.guest.virtio_blk.setup_cmd"""
    rq = sget(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
              _BlkMq, _Q[Q_RQS], "rqs")[rid]
    pdu = (sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_PDU_BASE], "pdu_base")
           + rq["tag"] * PDU_SIZE)                                  # pdu_of
    rq["pdu"] = pdu
    op = rq["op"]
    if op == "DRV_IN":
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.map_data", (rid,))
        return "REQ_OP_DRV_IN: out header already prepared by virtblk_get_id"
    typ = _TYPE_OF[op]
    sector = rq["sector"] if op in ("READ", "WRITE") else 0
    _wr(sget(m, _Machine, _M[M_MEM], "mem"), pdu, _HDR_PACK(typ, 0, sector))
    detail = f"out_hdr @{_hex(pdu)} = {{type {_TYPE_NAMES[typ]}, ioprio 0, sector {_dec(sector)}}}"
    if op in ("DISCARD", "WRITE_ZEROES"):
        rng = _SUP.kmalloc(sget(m, _Machine, _M[M_PAGES], "pages"), DWZ_SEG_SIZE)
        if rng is None:
            sset(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
                 _BlkMq, _Q[Q_LAST_RET], "last_ret", "RESOURCE")
            return detail + "; kmalloc of the range failed: BLK_STS_RESOURCE"
        flags = WZ_FLAG_UNMAP if rq.get("unmap") else 0
        _wr(sget(m, _Machine, _M[M_MEM], "mem"), rng, _DWZ_PACK(rq["sector"], rq["bytes"] >> 9, flags))
        rq["payload"] = rng
        detail += (f"; range @{_hex(rng)} = {{sector {_dec(rq['sector'])}, {_dec(rq['bytes'] >> 9)} sectors, "
                   f"flags {flags}}}")
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.map_data", (rid,))
    return detail


def map_data(m, rid):
    """emu.guest.virtio_blk.map_data: the scatterlist is built as tuples directly (the Python
    code merges into lists and converts them at the end: the same values)."""
    cdef list sgs = []
    cdef Py_ssize_t n_sgs
    cdef bint have = False               # sgs[-1] of the Python code is (cur_a, cur_n)
    rq = sget(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
              _BlkMq, _Q[Q_RQS], "rqs")[rid]
    if rq.get("payload"):
        sgs = [(rq["payload"], DWZ_SEG_SIZE)]
    else:
        cur_a = cur_n = None
        for bio in rq["bios"]:
            for gpa, n in bio["segs"]:
                if have and cur_a + cur_n == gpa:
                    cur_n += n
                else:
                    if have:
                        sgs.append((cur_a, cur_n))
                    cur_a, cur_n = gpa, n
                    have = True
        if have:
            sgs.append((cur_a, cur_n))
    rq["data_sgs"] = sgs
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "blkmq.start_request", (rid,))
    n_sgs = len(sgs)
    if not n_sgs:
        return "0 data segment(s)"
    return f"{n_sgs} data segment(s): " + ", ".join([_hex(a) + "+" + _dec(n) for a, n in sgs])


def add_req(m, rid):
    """emu.guest.virtio_blk.add_req"""
    cdef Py_ssize_t n_out = 1, n_in = 1
    cdef bint is_out
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    rq = sget(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_RQS], "rqs")[rid]
    sset(g, _Guest, _G[G_VQ_LOCKED], "vq_locked", True)
    pdu = rq["pdu"]
    is_out = bool(_TYPE_OF.get(rq["op"], T_GET_ID) & T_OUT)
    sgs = [(pdu, OUTHDR_SIZE, False)]
    roles = ["request header"]
    data_sgs = rq["data_sgs"]
    for gpa, n in data_sgs:
        sgs.append((gpa, n, not is_out))
        if is_out:
            n_out += 1
        else:
            n_in += 1
        roles.append("data" if not rq.get("payload") else "range")
    sgs.append((pdu + 16, 1, True))
    roles.append("status")
    rq["sgs"] = sgs
    rq["roles"] = roles
    rq["out_sgs"] = 2 if is_out and rq["data_sgs"] else 1
    sched_call(sget(m, _Machine, _M[M_SIM], "sim"), "vring.add_split", (rid,), "vblkd.add_ret", (rid,))
    return f"spin_lock_irqsave(vq lock); virtqueue_add_sgs: {n_out} out, {n_in} in"


def add_ret(m, rid):
    """emu.guest.virtio_blk.add_ret"""
    rq = sget(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
              _BlkMq, _Q[Q_RQS], "rqs")[rid]
    err = rq.get("add_err", "")
    if err:
        sched_call(sget(m, _Machine, _M[M_SIM], "sim"), "vring.kick_prepare", ("",),
                   "vblkd.add_err_kick", (rid,))
        return f"virtblk_add_req failed: -{err}: virtqueue_kick anyway"
    if rq["last"]:
        sched_call(sget(m, _Machine, _M[M_SIM], "sim"), "vring.kick_prepare", ("",),
                   "vblkd.queue_rq_end", (rid,))
        return "added; bd->last: virtqueue_kick_prepare"
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vblkd.queue_rq_end", (rid,))
    return "added; not the last request of the batch: no kick yet"


def queue_rq_end(m, rid):
    """emu.guest.virtio_blk.queue_rq_end"""
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    sset(g, _Guest, _G[G_VQ_LOCKED], "vq_locked", False)
    sset(sget(g, _Guest, _G[G_BLKMQ], "blkmq"), _BlkMq, _Q[Q_LAST_RET], "last_ret", "OK")
    if sget(g, _Guest, _G[G_KICK_NEEDED], "kick_needed"):
        sset(g, _Guest, _G[G_KICK_NEEDED], "kick_needed", False)
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.notify", (0,))
        return "spin_unlock_irqrestore; notify outside the lock"
    return "spin_unlock_irqrestore; BLK_STS_OK"


def commit_rqs(m):
    """emu.guest.virtio_blk.commit_rqs"""
    sched_call(sget(m, _Machine, _M[M_SIM], "sim"), "vring.kick_prepare", ("",),
               "vblkd.commit_notify", ())
    return "dispatch stopped early: kick what was queued"


def commit_notify(m):
    """emu.guest.virtio_blk.commit_notify"""
    if sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_KICK_NEEDED], "kick_needed"):
        sset(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_KICK_NEEDED], "kick_needed",
             False)
        sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.notify", (0,))
        return "notify"
    return "no notify needed"


def done(m):
    """emu.guest.virtio_blk.done"""
    sset(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_VQ_LOCKED], "vq_locked", True)
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "vring.disable_cb")
    return ("spin_lock_irqsave(vq lock); do { virtqueue_disable_cb; while (get_buf) complete; } "
            "while (!enable_cb)")


def request_done(m, rid):
    """emu.guest.virtio_blk.request_done"""
    cdef long long status
    rq = sget(sget(sget(m, _Machine, _M[M_GUEST], "guest"), _Guest, _G[G_BLKMQ], "blkmq"),
              _BlkMq, _Q[Q_RQS], "rqs")[rid]
    status = _rd(sget(m, _Machine, _M[M_MEM], "mem"), rq["pdu"] + 16, 1)
    rq["vstatus"] = status
    sts = "OK" if status == S_OK else "NOTSUPP" if status == S_UNSUPP else "IOERR"
    if rq.get("payload"):                                   # _cleanup_cmd
        _SUP.kfree(sget(m, _Machine, _M[M_PAGES], "pages"), rq["payload"])
        rq["payload"] = 0
    sched_cont(sget(m, _Machine, _M[M_SIM], "sim"), "blkmq.end_request", (rid, sts, 1))
    return f"status byte {status} ({_STATUS_NAMES.get(status, 'unknown')}) -> BLK_STS_{sts}"


def done_end(m):
    """emu.guest.virtio_blk.done_end"""
    g = sget(m, _Machine, _M[M_GUEST], "guest")
    q = sget(g, _Guest, _G[G_BLKMQ], "blkmq")
    note = ""
    if sget(g, _Guest, _G[G_DONE_COUNT], "done_count") and sget(q, _BlkMq, _Q[Q_STOPPED], "stopped"):
        sset(q, _BlkMq, _Q[Q_STOPPED], "stopped", False)
        if not sget(q, _BlkMq, _Q[Q_RUN_WORK_PENDING], "run_work_pending"):
            sset(q, _BlkMq, _Q[Q_RUN_WORK_PENDING], "run_work_pending", True)
            sched_post(sget(m, _Machine, _M[M_SIM], "sim"), "vcpu", "blkmq.run_work")
        note = "blk_mq_start_stopped_hw_queues(async): kblockd will run the queue; "
    sset(g, _Guest, _G[G_VQ_LOCKED], "vq_locked", False)
    return (note + f"{_dec(sget(g, _Guest, _G[G_DONE_COUNT], 'done_count'))} request(s) completed; "
            "spin_unlock_irqrestore")


# == registration ===============================================================================

HANDLERS = {
    "vring.add_split": (add_split, _vr.add_split),
    "vring.add_desc": (add_desc, _vr.add_desc),
    "vring.add_head": (add_head, _vr.add_head),
    "vring.add_avail": (add_avail, _vr.add_avail),
    "vring.add_publish": (add_publish, _vr.add_publish),
    "vring.kick_prepare": (kick_prepare, _vr.kick_prepare),
    "vring.notify": (notify, _vr.notify),
    "vring.interrupt": (interrupt, _vr.interrupt),
    "vring.disable_cb": (disable_cb, _vr.disable_cb),
    "vring.get_buf": (get_buf, _vr.get_buf),
    "vring.enable_cb": (enable_cb, _vr.enable_cb),
    "vblkd.queue_rq": (queue_rq, _vb.queue_rq),
    "vblkd.setup_cmd": (setup_cmd, _vb.setup_cmd),
    "vblkd.map_data": (map_data, _vb.map_data),
    "vblkd.add_req": (add_req, _vb.add_req),
    "vblkd.add_ret": (add_ret, _vb.add_ret),
    "vblkd.queue_rq_end": (queue_rq_end, _vb.queue_rq_end),
    "vblkd.commit_rqs": (commit_rqs, _vb.commit_rqs),
    "vblkd.commit_notify": (commit_notify, _vb.commit_notify),
    "vblkd.done": (done, _vb.done),
    "vblkd.request_done": (request_done, _vb.request_done),
    "vblkd.done_end": (done_end, _vb.done_end),
}
