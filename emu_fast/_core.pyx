# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""The compiled engine: the run loop, the scheduler's queue and rules, guest-memory accessors.

Everything here operates on the Python engine's own objects (the Machine, its Scheduler, its
GuestMemory and the bytearray behind it); there is no second copy of any state.  Each function
is a line-for-line translation of the Python method it replaces (named in its docstring), with
the same argument handling; where an argument is of an unusual type or out of range, it calls
the Python method itself, so even errors are the same.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.dict cimport PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_LT
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE, PyTuple_GET_ITEM

import copyreg as _copyreg
from bisect import bisect_right as _bisect_right
from heapq import heappop as _py_heappop, heappush as _py_heappush

from emu.block.hostfile import HostFile
from emu.mem.guest_memory import GuestMemory
from emu_fast import _hostfile
from emu.sim.scheduler import Ctx, Scheduler
from emu.sim.steps import REGISTRY, EffectLog, Step, StepInfo
from emu_fast._slots cimport slot_offsets, sget, sset, vbs_member_offset, vbs_set
from emu_fast._bulk cimport bulk_run
from emu.machine import Machine

CYTHON_VERSION_STR = CYTHON_VERSION     # set by setup.py (compile_time_env)
PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled

cdef object _Scheduler = Scheduler
cdef object _GuestMemory = GuestMemory
cdef object _HostFileType = HostFile
cdef object _Step = Step
cdef dict _REGISTRY = REGISTRY

# Step records are made field by field (what the dataclass __init__ does, without running its
# Python code) when Step has exactly the fields this module knows; otherwise by Step(...).
# Each field is a __slots__ member: the record is allocated as Step.__new__(Step) does
# (Step's tp_new, object's) and each (still empty) slot is stored as object.__setattr__ stores
# it (PyMember_SetOne of a T_OBJECT_EX member), at the member's offset.
cdef extern from *:
    """
    static PyObject* vb_tp_new(PyObject* type, PyObject* args) {
        return ((PyTypeObject*)type)->tp_new((PyTypeObject*)type, args, NULL);
    }
    """
    object vb_tp_new(object type, object args)


import dataclasses as _dc
import types as _types

_STEP_FIELDS = ("n", "time_ns", "ctx", "kind", "layer", "function", "source", "detail", "effects",
                "caller", "facts")
cdef Py_ssize_t _OFF[11]


cdef bint _slot_offsets(object cls, tuple names, Py_ssize_t* out) except -1:
    """out[i] = the offset of member names[i] of cls, when each is a plain writable object
    slot set as object.__setattr__ sets it; else False."""
    cdef Py_ssize_t i
    if cls.__setattr__ is not object.__setattr__ or cls.__new__ is not object.__new__:
        return False
    for i in range(len(names)):
        d = vars(cls).get(names[i])
        if type(d) is not _types.MemberDescriptorType or not vbs_member_offset(d, &out[i]):
            return False
    return True


cdef bint _STEP_DIRECT = (tuple(f.name for f in _dc.fields(Step)) == _STEP_FIELDS
                          and hasattr(Step, "__slots__") and _slot_offsets(Step, _STEP_FIELDS, _OFF))


cdef inline object _make_step(object n, object time, object ctx, object kind, object layer,
                              object function, object source, object effects):
    """Step(n, time, ctx, kind, layer, function, source), its effects list being effects."""
    if not _STEP_DIRECT:
        rec = _Step(n, time, ctx, kind, layer, function, source)
        rec.effects = effects
        return rec
    rec = vb_tp_new(_Step, ())
    _fill_step(rec, n, time, ctx, kind, layer, function, source, effects, [])
    return rec


cdef inline void _fill_step(object rec, object n, object time, object ctx, object kind,
                            object layer, object function, object source, object effects,
                            object facts):
    """Every field of a Step record (_STEP_DIRECT), the defaults for detail and caller."""
    vbs_set(rec, _OFF[0], n)
    vbs_set(rec, _OFF[1], time)
    vbs_set(rec, _OFF[2], ctx)
    vbs_set(rec, _OFF[3], kind)
    vbs_set(rec, _OFF[4], layer)
    vbs_set(rec, _OFF[5], function)
    vbs_set(rec, _OFF[6], source)
    vbs_set(rec, _OFF[7], "")
    vbs_set(rec, _OFF[8], effects)
    vbs_set(rec, _OFF[9], "")
    vbs_set(rec, _OFF[10], facts)


if _STEP_DIRECT:    # the defaults must be what the dataclass gives
    _STEP_DIRECT = _make_step(1, 2, "c", "k", "l", "f", "s", []) == Step(1, 2, "c", "k", "l", "f", "s")


# == scheduler ================================================================================
# The Scheduler's and its Ctx's members are __slots__, read and written at their offsets
# (emu_fast/_slots.pxd: exactly what object.__getattribute__/__setattr__ do for them; on any
# other class, getattr/setattr, so even the errors are the same).  The event heap is heapq's
# algorithm (siftdown/siftup of Modules/_heapqmodule.c, same moves, same checks) with the
# queue's (time, seq, ...) tuples compared in C when both leading items are ints.

cdef extern from "Python.h":
    int PyList_SetSlice(object lst, Py_ssize_t low, Py_ssize_t high, PyObject* itemlist) except -1
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    object PyObject_Vectorcall(object fn, PyObject** args, size_t nargsf, PyObject* kwnames)
    PyObject** _PyList_ITEMS "PySequence_Fast_ITEMS" (object)


cdef object _Ctx = Ctx
cdef object _FastSched = None       # FastScheduler, once defined (below)
cdef enum:
    S_NOW, S_SEQ, S_QUEUE, S_CTXS, S_CUR, S_DECIDED
cdef tuple _SN = ("now", "seq", "queue", "ctxs", "cur", "_decided")
cdef Py_ssize_t _SO[6]
cdef enum:
    C_NAME, C_STEP_NS, C_BUSY, C_STACK, C_FIFO, C_URGENT, C_PREEMPTED, C_BLOCKED
cdef tuple _CN = ("name", "step_ns", "busy", "stack", "fifo", "urgent", "preempted", "blocked")
cdef Py_ssize_t _CO[8]
cdef bint _CTX_SLOTS = slot_offsets(_Ctx, _CN, _CO)
cdef bint _SCHED_SLOTS = False      # set once FastScheduler is defined


cdef inline object _sg(object sim, int i):
    """sim.<_SN[i]>"""
    return sget(sim, _FastSched, _SO[i], <str>_SN[i])


cdef inline int _ss(object sim, int i, object value) except -1:
    """sim.<_SN[i]> = value"""
    return sset(sim, _FastSched, _SO[i], <str>_SN[i], value)


cdef inline object _cg(object ctx, int i):
    """ctx.<_CN[i]>"""
    return sget(ctx, _Ctx, _CO[i], <str>_CN[i])


cdef inline int _cs(object ctx, int i, object value) except -1:
    """ctx.<_CN[i]> = value"""
    return sset(ctx, _Ctx, _CO[i], <str>_CN[i], value)


cdef extern from *:
    """
    /* (time, seq, ...) < (time', seq', ...) decided in C when both leading items are exact
       ints small enough to read without a call (CPython's compact ints): 1 or 0; -1 when
       it cannot tell that way (then _lt decides). */
    #if PY_VERSION_HEX >= 0x030C0000
    #define VB_COMPACT(x) PyUnstable_Long_IsCompact((PyLongObject*)(x))
    #define VB_CVAL(x) ((long long)PyUnstable_Long_CompactValue((PyLongObject*)(x)))
    #else
    #define VB_COMPACT(x) (Py_SIZE(x) >= -1 && Py_SIZE(x) <= 1)
    #define VB_CVAL(x) ((long long)Py_SIZE(x) * (long long)((PyLongObject*)(x))->ob_digit[0])
    #endif
    static CYTHON_INLINE int vb_lt_fast(PyObject* a, PyObject* b) {
        PyObject *x, *y;
        long long u, v;
        int i;
        if (!PyTuple_CheckExact(a) || !PyTuple_CheckExact(b)
                || PyTuple_GET_SIZE(a) < 2 || PyTuple_GET_SIZE(b) < 2)
            return -1;
        for (i = 0; i < 2; i++) {
            x = PyTuple_GET_ITEM(a, i);
            y = PyTuple_GET_ITEM(b, i);
            if (!PyLong_CheckExact(x) || !PyLong_CheckExact(y) || !VB_COMPACT(x) || !VB_COMPACT(y))
                return -1;
            u = VB_CVAL(x);
            v = VB_CVAL(y);
            if (u != v)
                return u < v;
        }
        return -1;
    }
    /* list.pop() of a non-empty list: its last item (the list's reference, handed over) */
    static CYTHON_INLINE PyObject* vb_list_pop_last(PyObject* l) {
        Py_ssize_t n = Py_SIZE(l);
        PyObject* it = PyList_GET_ITEM(l, n - 1);
        Py_SET_SIZE(l, n - 1);
        return it;
    }
    """
    int vb_lt_fast(PyObject* a, PyObject* b)
    object vb_list_pop_last(object l)


cdef inline int _lt(PyObject* a, PyObject* b) except -1:
    """a < b (PyObject_RichCompareBool(a, b, Py_LT)) for queue entries."""
    cdef PyObject *x
    cdef PyObject *y
    cdef long long u, v
    cdef int o1 = 0, o2 = 0
    if (PyTuple_CheckExact(<object>a) and PyTuple_CheckExact(<object>b)
            and PyTuple_GET_SIZE(<object>a) >= 2 and PyTuple_GET_SIZE(<object>b) >= 2):
        # tuple order: the first items that differ decide; exact ints differ iff their values do
        x = PyTuple_GET_ITEM(<object>a, 0)
        y = PyTuple_GET_ITEM(<object>b, 0)
        if PyLong_CheckExact(<object>x) and PyLong_CheckExact(<object>y):
            u = PyLong_AsLongLongAndOverflow(<object>x, &o1)
            v = PyLong_AsLongLongAndOverflow(<object>y, &o2)
            if not o1 and not o2:
                if u != v:
                    return u < v
                x = PyTuple_GET_ITEM(<object>a, 1)
                y = PyTuple_GET_ITEM(<object>b, 1)
                if PyLong_CheckExact(<object>x) and PyLong_CheckExact(<object>y):
                    u = PyLong_AsLongLongAndOverflow(<object>x, &o1)
                    v = PyLong_AsLongLongAndOverflow(<object>y, &o2)
                    if not o1 and not o2 and u != v:
                        return u < v
    return PyObject_RichCompareBool(<object>a, <object>b, Py_LT)


cdef inline int _heap_lt(list heap, PyObject* a, PyObject* b, Py_ssize_t size) except -1:
    """a < b for two entries of heap (of size items): inline for (time, seq) ints, else with
    heapq's guards (the comparison may run Python code: both kept alive, the heap's size
    checked after it).  The caller reads the heap's item array again afterwards."""
    cdef int cmp = vb_lt_fast(a, b)
    if cmp >= 0:
        return cmp
    Py_INCREF(<object>a)
    Py_INCREF(<object>b)
    try:
        cmp = _lt(a, b)
    finally:
        Py_DECREF(<object>a)
        Py_DECREF(<object>b)
    if size != PyList_GET_SIZE(heap):
        raise RuntimeError("list changed size during iteration")
    return cmp


cdef int _siftdown(list heap, Py_ssize_t startpos, Py_ssize_t pos) except -1:
    """heapq's siftdown (Modules/_heapqmodule.c)."""
    cdef Py_ssize_t parentpos, size = PyList_GET_SIZE(heap)
    cdef PyObject** arr
    cdef PyObject* newitem
    cdef PyObject* parent
    cdef int cmp
    if pos >= size:
        raise IndexError("index out of range")
    arr = _PyList_ITEMS(heap)
    newitem = arr[pos]
    while pos > startpos:
        parentpos = (pos - 1) >> 1
        parent = arr[parentpos]
        cmp = _heap_lt(heap, newitem, parent, size)
        if cmp == 0:
            break
        arr = _PyList_ITEMS(heap)
        parent = arr[parentpos]
        newitem = arr[pos]
        arr[parentpos] = newitem
        arr[pos] = parent
        pos = parentpos
    return 0


cdef int _siftup(list heap, Py_ssize_t pos) except -1:
    """heapq's siftup (Modules/_heapqmodule.c)."""
    cdef Py_ssize_t startpos = pos, endpos = PyList_GET_SIZE(heap), childpos, limit
    cdef PyObject** arr
    cdef PyObject* a
    cdef int cmp
    if pos >= endpos:
        raise IndexError("index out of range")
    arr = _PyList_ITEMS(heap)
    limit = endpos >> 1
    while pos < limit:
        childpos = 2 * pos + 1
        if childpos + 1 < endpos:
            cmp = _heap_lt(heap, arr[childpos], arr[childpos + 1], endpos)
            arr = _PyList_ITEMS(heap)
            childpos += (<unsigned>cmp) ^ 1
        a = arr[childpos]
        arr[childpos] = arr[pos]
        arr[pos] = a
        pos = childpos
    return _siftdown(heap, startpos, pos)


cdef inline int _heappush(object heap, object item) except -1:
    """heapq.heappush"""
    if type(heap) is not list:
        _py_heappush(heap, item)        # (its TypeError)
        return 0
    (<list>heap).append(item)
    return _siftdown(<list>heap, 0, PyList_GET_SIZE(heap) - 1)


cdef inline object _heappop(object heap):
    """heapq.heappop"""
    cdef Py_ssize_t n
    if type(heap) is not list:
        return _py_heappop(heap)
    n = PyList_GET_SIZE(heap)
    if n == 0:
        raise IndexError("index out of range")
    lastelt = vb_list_pop_last(heap)       # (<list>heap).pop()
    n -= 1
    if n == 0:
        return lastelt
    returnitem = (<list>heap)[0]
    (<list>heap)[0] = lastelt
    _siftup(<list>heap, 0)
    return returnitem


cdef inline int _schedule(object sim, object delay, object ctx, object kind,
                          object args) except -1:
    """Scheduler._schedule"""
    seq = _sg(sim, S_SEQ) + 1
    _ss(sim, S_SEQ, seq)
    q = _sg(sim, S_QUEUE)
    return _heappush(q, (_sg(sim, S_NOW) + delay, seq, ctx, kind, args))


cdef int _start_next(object sim, object ctx, object delay) except -1:
    """Scheduler._start_next"""
    urgent = _cg(ctx, C_URGENT)
    if urgent:
        kind, args = urgent.pop(0)
    elif _cg(ctx, C_PREEMPTED):
        kind, args, stack = _cg(ctx, C_PREEMPTED).pop()
        _cs(ctx, C_STACK, stack)
    elif _cg(ctx, C_FIFO):
        kind, args = _cg(ctx, C_FIFO).pop(0)
    else:
        _cs(ctx, C_BUSY, False)
        return 0
    return _schedule(sim, _cg(ctx, C_STEP_NS) if delay is None else delay,
                     _cg(ctx, C_NAME), kind, args)


cdef int _cont(object sim, object kind, object args, object delay,
               bint preemptible) except -1:
    """Scheduler.cont"""
    ctx = _sg(sim, S_CTXS)[_sg(sim, S_CUR)]
    d = _cg(ctx, C_STEP_NS) if delay is None else delay
    _ss(sim, S_DECIDED, True)
    if preemptible and _cg(ctx, C_URGENT):
        _cg(ctx, C_PREEMPTED).append((kind, args, _cg(ctx, C_STACK)))
        _cs(ctx, C_STACK, [])
        k, a = _cg(ctx, C_URGENT).pop(0)
        return _schedule(sim, d, _cg(ctx, C_NAME), k, a)
    return _schedule(sim, d, _cg(ctx, C_NAME), kind, args)


cdef int _call(object sim, object kind, object args, object ret_kind, object ret_args,
               object delay) except -1:
    """Scheduler.call"""
    ctx = _sg(sim, S_CTXS)[_sg(sim, S_CUR)]
    _cg(ctx, C_STACK).append((ret_kind, ret_args))
    return _cont(sim, kind, args, delay, False)


cdef int _block(object sim, object kind, object args) except -1:
    """Scheduler.block"""
    ctx = _sg(sim, S_CTXS)[_sg(sim, S_CUR)]
    _cs(ctx, C_BLOCKED, (kind, args))
    return _ss(sim, S_DECIDED, True)


cdef int _unblock(object sim, object name, object delay) except -1:
    """Scheduler.unblock"""
    ctx = _sg(sim, S_CTXS)[name]
    blocked = _cg(ctx, C_BLOCKED)
    if blocked is None:
        return 0
    kind, args = blocked
    _cs(ctx, C_BLOCKED, None)
    if not kind:
        stack = _cg(ctx, C_STACK)
        if not stack:
            return _start_next(sim, ctx, delay)
        kind, args = stack.pop()
    return _schedule(sim, delay, name, kind, args)


cdef int _post(object sim, object name, object kind, object args, object delay,
               bint urgent) except -1:
    """Scheduler.post"""
    ctx = _sg(sim, S_CTXS)[name]
    if not _cg(ctx, C_BUSY):
        _cs(ctx, C_BUSY, True)
        return _schedule(sim, delay, name, kind, args)
    elif urgent:
        _cg(ctx, C_URGENT).append((kind, args))
    else:
        _cg(ctx, C_FIFO).append((kind, args))
    return 0


cdef int _finish_step(object sim) except -1:
    """Scheduler.finish_step"""
    if not _sg(sim, S_CUR) or _sg(sim, S_DECIDED):
        return 0
    ctx = _sg(sim, S_CTXS)[_sg(sim, S_CUR)]
    stack = _cg(ctx, C_STACK)
    if stack:
        kind, args = stack.pop()
        return _schedule(sim, _cg(ctx, C_STEP_NS), _cg(ctx, C_NAME), kind, args)
    return _start_next(sim, ctx, None)


# -- the C entry points for the handler modules (_core.pxd) ------------------------------------

cdef int sched_cont(object sim, object kind, object args=(), object delay=None,
                    bint preemptible=False) except -1:
    """Scheduler.cont"""
    if type(sim) is not _FastSched:
        sim.cont(kind, args, delay, preemptible)
        return 0
    return _cont(sim, kind, args, delay, preemptible)


cdef int sched_call(object sim, object kind, object args, object ret_kind, object ret_args=(),
                    object delay=None) except -1:
    """Scheduler.call"""
    if type(sim) is not _FastSched:
        sim.call(kind, args, ret_kind, ret_args, delay)
        return 0
    return _call(sim, kind, args, ret_kind, ret_args, delay)


cdef int sched_block(object sim, object kind, object args=()) except -1:
    """Scheduler.block"""
    if type(sim) is not _FastSched:
        sim.block(kind, args)
        return 0
    return _block(sim, kind, args)


cdef int sched_unblock(object sim, object name, object delay=0) except -1:
    """Scheduler.unblock"""
    if type(sim) is not _FastSched:
        sim.unblock(name, delay)
        return 0
    return _unblock(sim, name, delay)


cdef int sched_post(object sim, object name, object kind, object args=(), object delay=0,
                    bint urgent=False) except -1:
    """Scheduler.post"""
    if type(sim) is not _FastSched:
        sim.post(name, kind, args, delay, urgent)
        return 0
    return _post(sim, name, kind, args, delay, urgent)


cdef int sched_at(object sim, object delay, object kind, object args=()) except -1:
    """Scheduler.at"""
    if type(sim) is not _FastSched:
        sim.at(delay, kind, args)
        return 0
    return _schedule(sim, delay, "", kind, args)


def sched_op(sim, op, tuple a):
    """For tests: the C entry point sched_<op>(sim, *a), called as the handler modules call it
    (positional arguments, defaults for the rest); "finish_step" and "pop" run the run loop's
    own versions."""
    cdef Py_ssize_t n = len(a)
    if op == "cont":
        if n == 1:
            sched_cont(sim, a[0])
        elif n == 2:
            sched_cont(sim, a[0], a[1])
        elif n == 3:
            sched_cont(sim, a[0], a[1], a[2])
        else:
            sched_cont(sim, a[0], a[1], a[2], a[3])
    elif op == "call":
        if n == 3:
            sched_call(sim, a[0], a[1], a[2])
        elif n == 4:
            sched_call(sim, a[0], a[1], a[2], a[3])
        else:
            sched_call(sim, a[0], a[1], a[2], a[3], a[4])
    elif op == "block":
        if n == 1:
            sched_block(sim, a[0])
        else:
            sched_block(sim, a[0], a[1])
    elif op == "unblock":
        if n == 1:
            sched_unblock(sim, a[0])
        else:
            sched_unblock(sim, a[0], a[1])
    elif op == "post":
        if n == 2:
            sched_post(sim, a[0], a[1])
        elif n == 3:
            sched_post(sim, a[0], a[1], a[2])
        elif n == 4:
            sched_post(sim, a[0], a[1], a[2], a[3])
        else:
            sched_post(sim, a[0], a[1], a[2], a[3], a[4])
    elif op == "at":
        if n == 2:
            sched_at(sim, a[0], a[1])
        else:
            sched_at(sim, a[0], a[1], a[2])
    elif op == "finish_step":
        _finish_step(sim)
    elif op == "pop":
        return _pop(sim)
    else:
        raise ValueError(f"unknown scheduler op {op!r}")


cdef object _pop(object sim):
    """Scheduler.pop"""
    q = _sg(sim, S_QUEUE)
    if not q:
        return None
    ev = _heappop(q)
    _ss(sim, S_NOW, ev[0])
    _ss(sim, S_CUR, ev[2])
    _ss(sim, S_DECIDED, False)
    return ev


class FastScheduler(Scheduler):
    """emu.sim.scheduler.Scheduler with its methods compiled.  The fast engine sets a
    machine's scheduler to this class while it runs; it pickles and copies as a plain
    Scheduler, so checkpoints taken on either engine are the same."""

    __slots__ = ()

    def __reduce_ex__(self, proto):
        # a plain Scheduler with this state (copyreg._reconstructor: object.__new__(Scheduler),
        # then its slots set from the (None, {slot: value}) state)
        slots = {n: getattr(self, n) for n in _Scheduler.__slots__ if hasattr(self, n)}
        return (_copyreg._reconstructor, (_Scheduler, object, None), (None, slots))

    def _schedule(self, delay, ctx, kind, args):
        """Scheduler._schedule"""
        _schedule(self, delay, ctx, kind, args)

    def pop(self):
        """Scheduler.pop"""
        return _pop(self)

    def cont(self, kind, args=(), delay=None, preemptible=False):
        """Scheduler.cont"""
        _cont(self, kind, args, delay, preemptible)

    def call(self, kind, args, ret_kind, ret_args=(), delay=None):
        """Scheduler.call"""
        _call(self, kind, args, ret_kind, ret_args, delay)

    def block(self, kind, args=()):
        """Scheduler.block"""
        _block(self, kind, args)

    def unblock(self, name, delay=0):
        """Scheduler.unblock"""
        _unblock(self, name, delay)

    def post(self, name, kind, args=(), delay=0, urgent=False):
        """Scheduler.post"""
        _post(self, name, kind, args, delay, urgent)

    def at(self, delay, kind, args=()):
        """Scheduler.at"""
        _schedule(self, delay, "", kind, args)

    def finish_step(self):
        """Scheduler.finish_step"""
        _finish_step(self)

    def _start_next(self, ctx, delay=None):
        """Scheduler._start_next"""
        _start_next(self, ctx, delay)


_FastSched = FastScheduler
_SCHED_SLOTS = slot_offsets(FastScheduler, _SN, _SO)


# == guest memory ================================================================================
# Bound to one GuestMemory as instance attributes (attach()); each mirrors the method named.

# GuestMemory's and Machine's members, read at their offsets (emu_fast/_slots.pxd)
cdef object _EffectLog = EffectLog
cdef Py_ssize_t _LOG_OFF[1]
cdef bint _LOG_SLOT = _slot_offsets(EffectLog, ("cur",), _LOG_OFF)
cdef Py_ssize_t _GM[5]
cdef object _Machine = Machine
cdef Py_ssize_t _MO[4]
# which classes' members this module reads at their offsets (emu_fast.slot_paths())
SLOT_PATHS = {
    "GuestMemory": slot_offsets(_GuestMemory, ("size", "ram", "undo", "_dirty", "log"), _GM),
    "Machine": slot_offsets(_Machine, ("sim", "steps", "cur", "log"), _MO),
}


cdef inline bint _in_ram(object mem, object gpa, Py_ssize_t n, Py_ssize_t* out) except -1:
    """gpa is an int with [gpa, gpa+n) inside RAM (and inside the bytearray)."""
    cdef Py_ssize_t g, size
    if type(gpa) is not int or n < 0:
        return False
    if gpa < 0:
        return False
    size = sget(mem, _GuestMemory, _GM[0], "size")
    if gpa > size:
        return False
    g = gpa
    if g + n > size or g + n > PyByteArray_GET_SIZE(sget(mem, _GuestMemory, _GM[1], "ram")):
        return False
    out[0] = g
    return True


cdef inline uint64_t _ld(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v


cdef object _write(object mem, Py_ssize_t g, object data, Py_ssize_t n):
    """The body of GuestMemory.write for an in-RAM range, n > 0, data bytes or bytearray."""
    cdef Py_ssize_t p, last, PS = 4096
    cdef bytearray ram = sget(mem, _GuestMemory, _GM[1], "ram")
    cdef bytearray dirty
    cdef char* base
    undo = sget(mem, _GuestMemory, _GM[2], "undo")
    if undo is not None:
        p = g >> 12
        last = (g + n - 1) >> 12
        while True:
            if p not in undo:
                undo[p] = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(ram) + (p << 12), PS)
            if p == last:
                break
            p += 1
    base = PyByteArray_AS_STRING(ram)
    old = PyBytes_FromStringAndSize(base + g, n)
    new = data if type(data) is bytes else bytes(data)
    memcpy(base + g, PyBytes_AS_STRING(new), n)
    dirty = sget(mem, _GuestMemory, _GM[3], "_dirty")
    p = g >> 12
    last = (g + n - 1) >> 12
    memset(PyByteArray_AS_STRING(dirty) + p, 1, last - p + 1)
    cur = sget(sget(mem, _GuestMemory, _GM[4], "log"), _EffectLog, _LOG_OFF[0], "cur")
    if cur is not None:
        cur.append(("ram", g, old, new))


def mem_read(self, gpa, length):
    """GuestMemory.read"""
    cdef Py_ssize_t g
    if type(length) is int and 0 <= length <= self.size and _in_ram(self, gpa, length, &g):
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.ram) + g, <Py_ssize_t>length)
    return _GuestMemory.read(self, gpa, length)


def mem_read_u16(self, gpa):
    """GuestMemory.read_u16"""
    cdef Py_ssize_t g
    if _in_ram(self, gpa, 2, &g):
        return <uint16_t>_ld(<const uint8_t*>PyByteArray_AS_STRING(self.ram) + g, 2)
    return _GuestMemory.read_u16(self, gpa)


def mem_read_u32(self, gpa):
    """GuestMemory.read_u32"""
    cdef Py_ssize_t g
    if _in_ram(self, gpa, 4, &g):
        return <uint32_t>_ld(<const uint8_t*>PyByteArray_AS_STRING(self.ram) + g, 4)
    return _GuestMemory.read_u32(self, gpa)


def mem_read_u64(self, gpa):
    """GuestMemory.read_u64"""
    cdef Py_ssize_t g
    if _in_ram(self, gpa, 8, &g):
        return _ld(<const uint8_t*>PyByteArray_AS_STRING(self.ram) + g, 8)
    return _GuestMemory.read_u64(self, gpa)


def mem_write(self, gpa, data):
    """GuestMemory.write"""
    cdef Py_ssize_t g, n
    t = type(data)
    if t is bytes or t is bytearray:
        n = len(data)
        if n > 0 and _in_ram(self, gpa, n, &g):
            _write(self, g, data, n)
            return None
    return _GuestMemory.write(self, gpa, data)


cdef object _write_uint(object mem, object gpa, object val, object mask, int n):
    cdef Py_ssize_t g
    cdef uint64_t v
    cdef uint8_t buf[8]
    cdef int i
    masked = val & mask
    if type(masked) is int and _in_ram(mem, gpa, n, &g):
        v = masked
        for i in range(n):
            buf[i] = <uint8_t>(v >> (8 * i))
        _write(mem, g, PyBytes_FromStringAndSize(<char*>buf, n), n)
        return None
    return NotImplemented


def mem_write_u16(self, gpa, val):
    """GuestMemory.write_u16"""
    if _write_uint(self, gpa, val, 0xFFFF, 2) is NotImplemented:
        _GuestMemory.write_u16(self, gpa, val)


def mem_write_u32(self, gpa, val):
    """GuestMemory.write_u32"""
    if _write_uint(self, gpa, val, 0xFFFFFFFF, 4) is NotImplemented:
        _GuestMemory.write_u32(self, gpa, val)


def mem_write_u64(self, gpa, val):
    """GuestMemory.write_u64"""
    if _write_uint(self, gpa, val, 0xFFFFFFFFFFFFFFFF, 8) is NotImplemented:
        _GuestMemory.write_u64(self, gpa, val)


MEM_METHODS = {"read": mem_read, "read_u16": mem_read_u16, "read_u32": mem_read_u32,
               "read_u64": mem_read_u64, "write": mem_write, "write_u16": mem_write_u16,
               "write_u32": mem_write_u32, "write_u64": mem_write_u64}
for _name, _fn in MEM_METHODS.items():
    _fn.__name__ = _name    # a bound method pickles as getattr(self, __name__): the attribute's


# == compiled handlers ===========================================================================
# The emu_fast handler modules (emu_fast/__init__.py MODULES) each export HANDLERS =
# {kind: (compiled function, the emu Python handler it translates)}; _step runs the compiled
# one while REGISTRY[kind] still holds that Python function.

cdef dict _COMPILED = {}


def register(handlers):
    """Add a module's HANDLERS (see above); a kind registered twice is an error."""
    for kind, pair in handlers.items():
        fn, py = pair
        if kind not in _REGISTRY:
            raise ValueError(f"compiled handler for unknown step kind {kind!r}")
        if kind in _COMPILED and _COMPILED[kind] != pair:
            raise ValueError(f"two compiled handlers for step kind {kind!r}")
        _COMPILED[kind] = (fn, py)
    _RESOLVED.clear()


def compiled_kinds():
    """The step kinds whose handler runs compiled on the fast engine (sorted)."""
    return sorted(k for k, (fn, py) in _COMPILED.items() if _REGISTRY[k][0] is py)


# == the run loop ================================================================================

cdef object _StepInfo = StepInfo


cdef class _Kind:
    """What the run loop needs for one event kind, resolved from its REGISTRY entry (the
    handler to run: the compiled one while the entry holds the Python function it translates;
    the StepInfo's fields)."""
    cdef object entry       # the REGISTRY[kind] tuple this was resolved from
    cdef object fn
    cdef object layer, function, source


# kind -> _Kind, for entries whose StepInfo is a StepInfo (frozen: its fields never change).
# An entry is used while REGISTRY[kind] is still the same tuple (a tuple: what it holds never
# changes) and until register() adds compiled handlers.  Where CPython keeps a version tag in
# each dict (changed by every insertion, replacement and deletion; 3.6 to 3.13), the whole
# cache is dropped when REGISTRY's tag changes, and an entry found is used without looking
# REGISTRY[kind] up again.
cdef dict _RESOLVED = {}

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030E0000
    #define VB_HAVE_DICT_VERSION 1
    #define VB_DICT_VERSION(d) ((unsigned long long)((PyDictObject*)(d))->ma_version_tag)
    #else
    #define VB_HAVE_DICT_VERSION 0
    #define VB_DICT_VERSION(d) 0ULL
    #endif
    """
    bint VB_HAVE_DICT_VERSION
    unsigned long long VB_DICT_VERSION(dict d)

cdef unsigned long long _registry_version = 0   # REGISTRY's tag when _RESOLVED was last valid


cdef _Kind _resolve(object kind, object entry):
    fn, info = <tuple>entry
    c = _COMPILED.get(kind)
    if c is not None and (<tuple>c)[1] is fn:     # (a replaced Python handler is used as is)
        fn = (<tuple>c)[0]
    cdef _Kind r = _Kind.__new__(_Kind)
    r.entry = entry
    r.fn = fn
    r.layer = info.layer
    r.function = info.function
    r.source = info.source
    if type(info) is _StepInfo and type(entry) is tuple:
        _RESOLVED[kind] = r
    return r


# EffectLog.cur is stored at its slot's offset (as _make_step stores Step's).  (The Machine's
# attributes stay getattr/setattr: reading them from a materialized __dict__ made the handlers'
# own m.<attr> lookups slower than it saved here.)


cdef inline int _log_cur(object log, object value) except -1:
    """log.cur = value"""
    if _LOG_SLOT and type(log) is _EffectLog:
        vbs_set(log, _LOG_OFF[0], value)
    else:
        log.cur = value
    return 0


cdef inline object _vcall(object fn, object m, object args):
    """fn(m, *args)"""
    cdef PyObject* argv[9]
    cdef Py_ssize_t i, n
    if type(args) is tuple:
        n = PyTuple_GET_SIZE(args)
        if n <= 8:
            argv[0] = <PyObject*>m
            for i in range(n):
                argv[i + 1] = PyTuple_GET_ITEM(args, i)
            return PyObject_Vectorcall(fn, argv, n + 1, NULL)
    return fn(m, *args)


cdef object _step(object m):
    """Machine.step, with Scheduler.pop and Scheduler.finish_step inlined."""
    return _step_into(m, None)


cdef class _Scratch:
    """The one Step record a run with no observer refills at every step (see run)."""
    cdef object rec
    cdef list effects
    cdef list facts


cdef object _step_into(object m, _Scratch scratch):
    """_step; with a scratch record (run() without on_step: no one else can hold a record),
    that record is refilled, field by field as _make_step fills a new one, instead of a new
    one being made."""
    global _registry_version
    cdef PyObject* o
    cdef _Kind r
    cdef unsigned long long v
    sim = sget(m, _Machine, _MO[0], "sim")
    q = _sg(sim, S_QUEUE)
    if not q:
        return None
    ev = _heappop(q)
    time, _seq, ctx, kind, args = <tuple>ev
    _ss(sim, S_NOW, time)
    _ss(sim, S_CUR, ctx)
    _ss(sim, S_DECIDED, False)
    if VB_HAVE_DICT_VERSION:
        v = VB_DICT_VERSION(_REGISTRY)
        if v != _registry_version:
            _RESOLVED.clear()
            _registry_version = v
        o = PyDict_GetItemWithError(_RESOLVED, kind)
        if o != NULL:
            r = <_Kind>o
        else:
            r = _resolve(kind, _REGISTRY[kind])
    else:
        entry = _REGISTRY[kind]
        o = PyDict_GetItemWithError(_RESOLVED, kind)
        if o != NULL and (<_Kind>o).entry is entry:
            r = <_Kind>o
        else:
            r = _resolve(kind, entry)
    steps = sget(m, _Machine, _MO[1], "steps")
    n = steps + 1
    if scratch is None:
        effects = []
        rec = _make_step(n, time, ctx, kind, r.layer, r.function, r.source, effects)
    else:
        effects = scratch.effects
        if PyList_GET_SIZE(effects):
            PyList_SetSlice(effects, 0, PyList_GET_SIZE(effects), NULL)     # del effects[:]
        if PyList_GET_SIZE(scratch.facts):
            PyList_SetSlice(scratch.facts, 0, PyList_GET_SIZE(scratch.facts), NULL)
        rec = scratch.rec
        _fill_step(rec, n, time, ctx, kind, r.layer, r.function, r.source, effects, scratch.facts)
    sset(m, _Machine, _MO[2], "cur", rec)
    log = sget(m, _Machine, _MO[3], "log")
    _log_cur(log, effects)
    try:
        detail = _vcall(r.fn, m, args) or ""
        if _STEP_DIRECT:
            vbs_set(rec, _OFF[7], detail)
        else:
            rec.detail = detail
    finally:
        _log_cur(log, None)
    _finish_step(sim)
    now = sget(m, _Machine, _MO[1], "steps")         # (self.steps += 1: read again)
    sset(m, _Machine, _MO[1], "steps", n if now is steps else now + 1)
    return rec


cdef inline void _ensure(object m) except *:
    sim = m.sim
    if type(sim) is not FastScheduler:
        if type(sim) is _Scheduler:
            sim.__class__ = FastScheduler
    mem = m.mem
    if mem.__dict__.get("write") is None:
        attach_memory(mem)
    hf = m.hostfile
    if type(hf) is _HostFileType and hf.__dict__.get("pwrite") is None:
        _hostfile.attach(hf)


def attach_memory(mem):
    """Bind the compiled accessors to this GuestMemory (instance attributes)."""
    if type(mem) is not _GuestMemory:
        return
    d = mem.__dict__
    for name, fn in MEM_METHODS.items():
        d[name] = fn.__get__(mem, type(mem))


def detach_memory(mem):
    d = mem.__dict__
    for name in MEM_METHODS:
        d.pop(name, None)


def attach(m):
    """Make m's scheduler and memory use the compiled methods (state is untouched)."""
    _ensure(m)


def detach(m):
    """Back to the pure-Python methods (state is untouched)."""
    if type(m.sim) is FastScheduler:
        m.sim.__class__ = _Scheduler
    detach_memory(m.mem)
    _hostfile.detach(m.hostfile)


def attached(m):
    return (type(m.sim) is FastScheduler and m.mem.__dict__.get("write") is not None
            and (type(m.hostfile) is not _HostFileType or _hostfile.attached(m.hostfile)))


def step(m):
    """One step of m exactly as Machine.step; None when nothing is left."""
    _ensure(m)
    return _step(m)


def run(m, max_steps=None, on_step=None):
    """Machine.run on the compiled loop: 'end', 'steps' or 'stopped'.

    Without on_step no one sees a step's record but its handlers (through m.cur, during the
    step): the bulk core (emu_fast._bulk) runs the steps it can with no record at all, the
    others refill one record (_step_into); the run's last step is never the core's, so m.cur
    is left holding the last step's record, with the fields, effects and facts a new record
    would have."""
    cdef Py_ssize_t n = 0, limit = -1
    cdef bint has_cb = on_step is not None
    cdef _Scratch scratch = None
    if max_steps is not None:
        limit = max_steps
        if limit < 0:
            limit = 0
    _ensure(m)
    if not has_cb and _STEP_DIRECT:
        scratch = _Scratch.__new__(_Scratch)
        scratch.effects = []
        scratch.facts = []
        scratch.rec = vb_tp_new(_Step, ())
    while limit < 0 or n < limit:
        if scratch is not None:
            # no one observes these steps: the bulk core runs what it can of them, all but
            # the last this budget allows (that one is ours, with its record)
            n += bulk_run(m, limit - n - 1 if limit >= 0 else -1)
        rec = _step_into(m, scratch)
        if rec is None:
            return "end"
        n += 1
        if has_cb:
            if on_step(rec):
                return "stopped"
            _ensure(m)          # the callback may have restored a checkpoint (a new Scheduler)
    return "steps"


def run_count(m, max_steps=None, on_step=None):
    """run(), also returning the number of steps taken: (reason, n)."""
    cdef Py_ssize_t n0 = m.steps
    reason = run(m, max_steps, on_step)
    return reason, m.steps - n0


# == the session's bulk loop, with breakpoint prefilters =========================================
# Session._run (emu/session.py) on the compiled step: the same per-step work (_one: record the
# step, periodic checkpoints, scheduled inputs; _advance: the breakpoint check) in the same
# order.  BreakpointTable.check (Python) runs only at candidate steps: those where a cheap test
# in C says some enabled breakpoint *could* match (a superset of the steps where one does), so
# hit counts, ignore counts, conditions and temporaries behave exactly as when check() runs at
# every step.  Request breakpoints track stages across steps, so with one enabled check() runs
# at every step, as in Python.

from libc.stdlib cimport malloc, free

cdef str _E_RAM = "ram"
cdef str _E_FILE = "file"
cdef str _E_REG = "reg"
cdef str _E_ERROR = "error"
cdef str _E_GERROR = "guest-error"
cdef str _F_DESC = "desc"
cdef str _F_STATUS = "req-status"

cdef inline object _rec_field(object rec, int i, str name):
    """rec.<_STEP_FIELDS[i]> (name), read at its slot's offset"""
    return sget(rec, _Step, _OFF[i] if _STEP_DIRECT else -1, name)


cdef inline bint _is(object a, str b):
    return a is b or (type(a) is str and <str>a == b)


cdef class _Prefilter:
    """Which steps could make some enabled breakpoint match (emu.debug.breakpoints matchers)."""
    cdef bint always            # check every step (request breakpoints, unknown kinds)
    cdef bint none              # nothing enabled: check() would return None at once
    cdef bint desc              # any "desc" fact that could match a desc breakpoint (descs)
    cdef list descs             # the desc breakpoints' params dicts (_match_desc's filters)
    cdef bint error             # an "error" or "guest-error" effect
    cdef bint ioerr             # a "req-status" fact with status IOERR
    cdef int ioerr_status
    cdef Py_ssize_t nram, nhost
    cdef long long* ram         # [lo, hi) pairs
    cdef long long* host
    cdef list steps             # step patterns (callables on the function name)
    cdef dict step_cache        # function name -> any pattern matches
    cdef list regs              # reg patterns
    cdef dict reg_cache         # register name -> any pattern matches
    cdef set inuse_names        # "vqN.inuse" of ring inuse>= breakpoints
    cdef list rings             # queue numbers of ring avail_idx/used_idx/wrap breakpoints

    def __cinit__(self):
        self.ram = NULL
        self.host = NULL

    def __dealloc__(self):
        free(self.ram)
        free(self.host)

    def __init__(self, table, int ioerr_status):
        self.ioerr_status = ioerr_status
        self.steps, self.regs, self.rings, self.descs = [], [], [], []
        self.step_cache, self.reg_cache = {}, {}
        self.inuse_names = set()
        enabled = table._enabled
        self.always = bool(table._has_req)
        self.none = not enabled and not self.always
        rams, hosts = [], []
        for bp in enabled:
            k = bp.kind
            p = bp.params
            if k == "desc":
                self.desc = True
                self.descs.append(p)
            elif k == "step":
                self.steps.append(bp.pattern)
            elif k == "reg":
                self.regs.append(bp.pattern)
            elif k == "ram":
                rams.append((p["addr"], p["addr"] + p["len"]))
            elif k == "host":
                hosts.append((p["addr"], p["addr"] + p["len"]))
            elif k == "error":
                self.error = True
                if "ioerr" in p["kinds"]:
                    self.ioerr = True
            elif k == "ring":
                q = p["q"] or 0
                if p["what"] == "inuse":
                    self.inuse_names.add(f"vq{q}.inuse")
                else:
                    self.rings.append(q)
            else:
                self.always = True
        self.nram = len(rams)
        self.nhost = len(hosts)
        self.ram = self._pairs(rams)
        self.host = self._pairs(hosts)

    cdef long long* _pairs(self, list spans) except? NULL:
        cdef Py_ssize_t i
        cdef long long* out
        if not spans:
            return NULL
        out = <long long*>malloc(2 * len(spans) * sizeof(long long))
        if out == NULL:
            raise MemoryError()
        for i in range(len(spans)):
            out[2 * i] = spans[i][0]
            out[2 * i + 1] = spans[i][1]
        return out

    cdef bint _step_matches(self, object function) except -1:
        hit = self.step_cache.get(function)
        if hit is None:
            hit = any(pat(function) for pat in self.steps)
            self.step_cache[function] = hit
        return hit

    cdef bint _reg_matches(self, object name) except -1:
        if name in self.inuse_names:
            return True
        if not self.regs:
            return False
        hit = self.reg_cache.get(name)
        if hit is None:
            hit = any(pat(name) for pat in self.regs)
            self.reg_cache[name] = hit
        return hit

    cdef bint _ring_hit(self, object m, long long a, long long b) except -1:
        """A RAM write [a, b) touches a ring index some ring breakpoint reads (_match_ring)."""
        cdef long long x
        gvq = m.guest.vq
        vqs = m.vdev.vqs
        for q in self.rings:
            if q >= len(vqs):
                continue
            if gvq.num and gvq.index == q:
                x = gvq.avail + 2
                if a < x + 2 and b > x:
                    return True
            dvq = vqs[q]
            if dvq.used and dvq.num:
                x = dvq.used + 2
                if a < x + 2 and b > x:
                    return True
        return False

    cdef bint _desc_could_match(self, object f) except -1:
        """Some desc breakpoint's filters (_match_desc's, before its condition) pass fact f;
        True as well where _match_desc would fail on it (then check() raises as in Python)."""
        try:
            _t, on, q, slot, table, entry, head, addr, ln, flags, nxt, req = f
            for p in self.descs:
                ons = p["on"]
                if ons is not None and on not in ons:
                    continue
                if p["q"] is not None and q != p["q"]:
                    continue
                if p["idx"] is not None and slot != p["idx"]:
                    continue
                if p["head"] is not None and head != p["head"]:
                    continue
                ind = table is not None
                if p["indirect"] is not None and ind != p["indirect"]:
                    continue
                r = p["addr"]
                if r is not None and not (r[0] <= addr <= r[1]):
                    continue
                r = p["len"]
                if r is not None and not (r[0] <= ln <= r[1]):
                    continue
                if flags & p["flags"] != p["flags"]:
                    continue
                return True
            return False
        except Exception:
            return True

    cdef object core_stops(self):
        """The events the bulk core must stop before, so that every step whose record could
        make an enabled breakpoint match runs recorded and is checked: empty with only error
        catchpoints (which no step the core runs natively matches, in strict mode) or nothing
        enabled; for desc breakpoints the steps of their `on` (DESC_STEPS), for host
        watchpoints the file writes (HOST_WRITE_STEPS), for ring breakpoints the ring index
        and inuse steps (RING_STEPS), for step breakpoints the steps whose function could
        match (FUNCTION_STEPS, and those whose kind's registered function does), for RAM and
        register watchpoints the steps that write RAM (RAM_STEPS) or registers (REG_STEPS);
        None with a request breakpoint or one of an unknown kind (the core is not used)."""
        if self.always:
            return None
        from emu.debug.breakpoints import (DESC_STEPS, FUNCTION_STEPS, HOST_WRITE_STEPS,
                                           RAM_STEPS, REG_STEPS, RING_STEPS)
        kinds = set()
        if self.nram:
            kinds.update(RAM_STEPS)
        if self.regs:
            kinds.update(REG_STEPS)
        if self.steps:
            from emu.sim.steps import REGISTRY
            from emu_fast import _bulk
            known = set(_bulk.kind_names())
            for kind, entry in REGISTRY.items():
                if kind in known and (kind in FUNCTION_STEPS
                                      or self._step_matches(entry[1].function)):
                    kinds.add(kind)
        for p in self.descs:
            ons = p["on"]
            for on, events in DESC_STEPS.items():
                if ons is None or on in ons:
                    kinds.update(events)
        if self.nhost:
            kinds.update(HOST_WRITE_STEPS)
        if self.rings:
            kinds.update(RING_STEPS["avail"])
            kinds.update(RING_STEPS["used"])
        if self.inuse_names:
            kinds.update(RING_STEPS["inuse"])
        return frozenset(kinds)

    cdef bint candidate(self, object m, object rec) except -1:
        cdef Py_ssize_t i
        cdef long long a, b
        if self.always:
            return True
        if self.none:
            return False
        if self.steps and self._step_matches(_rec_field(rec, 5, "function")):
            return True
        if self.desc or self.ioerr:
            for f in <list>_rec_field(rec, 10, "facts"):
                t = f[0]
                if self.desc and _is(t, _F_DESC) and self._desc_could_match(f):
                    return True
                if self.ioerr and _is(t, _F_STATUS) and f[2] == self.ioerr_status:
                    return True
        for e in <list>_rec_field(rec, 8, "effects"):
            t = e[0]
            if _is(t, _E_RAM):
                if self.nram or self.rings:
                    a = e[1]
                    b = a + len(e[3])
                    for i in range(self.nram):
                        if a < self.ram[2 * i + 1] and b > self.ram[2 * i]:
                            return True
                    if self.rings and self._ring_hit(m, a, b):
                        return True
            elif _is(t, _E_FILE):
                if self.nhost:
                    a = e[1]
                    b = a + len(e[3])
                    for i in range(self.nhost):
                        if a < self.host[2 * i + 1] and b > self.host[2 * i]:
                            return True
            elif _is(t, _E_REG):
                if (self.regs or self.inuse_names) and self._reg_matches(e[1]):
                    return True
            elif _is(t, _E_ERROR) or _is(t, _E_GERROR):
                if self.error:
                    return True
        return False


def prefilter_candidates(table, m, recs, int ioerr_status):
    """For tests: which of these step records the prefilter passes to check()."""
    pf = _Prefilter(table, ioerr_status)
    return [bool(pf.candidate(m, r)) for r in recs]


cdef object _Stop = None


cdef class _Pending:
    """What Session._one/_record would have written into the session by now and session_run
    has not yet: s.last and last_by_side's two entries.  flush() writes them, before any
    Python code that could read them runs (a checkpoint saves them, a breakpoint condition,
    the caller's callbacks) and when the loop ends, however it ends."""
    cdef object s
    cdef object last
    cdef object guest
    cdef object host
    cdef dict by_side           # s.last_by_side when it already has both keys (else None)
    cdef bint fresh             # nothing but the loop has run since refresh()

    cdef int handoff(self) except -1:
        """Python code is about to run: write what is pending; read everything again after."""
        self.fresh = False
        return self.flush()

    cdef int refresh(self) except -1:
        """After Python code ran (the loop reads its own attributes again too)."""
        self.fresh = True
        return self.refresh_sides()

    cdef int refresh_sides(self) except -1:
        d = self.s.last_by_side
        self.by_side = <dict>d if (type(d) is dict and len(<dict>d) == 2 and "guest" in d
                                   and "host" in d) else None
        return 0

    cdef int flush(self) except -1:
        if self.last is not None:
            self.s.last = self.last
            self.last = None
        if self.guest is not None:
            self.by_side["guest"] = self.guest
            self.guest = None
        if self.host is not None:
            self.by_side["host"] = self.host
            self.host = None
        return 0


# -- the bulk core under the session loop ---------------------------------------------------------
# Where no step's record is looked at as it is made (no breakpoint could match: none enabled, or a
# quiet re-run; no stop test), the loop hands stretches to the bulk core (emu_fast._bulk), which
# makes no records.  What the session keeps of records stays exactly the Python engine's:
#   * the history (the last `maxlen` records): a run with a known end leaves its last maxlen
#     steps to the recorded loop; otherwise, when the run ends with records missing from that
#     tail, _regen makes them again: it restores the checkpoint before the tail, re-runs
#     recorded to the same step, and puts the timeline's own bookkeeping (checkpoint list,
#     counters) and the session's inputs back as they were;
#   * s.last / last_by_side, which checkpoints save: the core stops _WINDOW steps before a
#     checkpoint (or a scheduled input, which pins one), and the recorded steps in between must
#     show both sides; where they do not, _regen makes the records again first.
# The rewinds _regen does are not the user's: Timeline.rewinds and its checkpoints are put back.
# They never go back past the run's first checkpoint, and the core waits for that one: a change
# made between steps without a checkpoint (Machine.poke from a script) is in no earlier one.

cdef Py_ssize_t _WINDOW = 64        # recorded steps before each checkpoint
cdef Py_ssize_t _MIN_STRETCH = 8    # fewer steps are not worth the core's conversions
cdef Py_ssize_t _CORE_POLL = 64     # cancelled() is asked this often while the core runs (as in Python)
cdef long long _REGENS = 0          # _regen calls (for tests and bench)
cdef long long _CORE_STEPS = 0      # steps session loops gave the core

cdef enum:
    RERUN_TO = 0            # re-run to step E (a checkpoint and scheduled inputs at E included)
    RERUN_BEFORE = 1        # re-run to step E, leaving E's checkpoint and inputs to the caller
    RERUN_END = 2           # re-run to the workload's end (E)


cdef class _Gaps:
    """Which records of this run the core did not make."""
    cdef long long lo           # the first step the core ran (0: none is missing)
    cdef long long hi           # no record is missing after this step
    cdef bint seen_guest        # a record of each side made after hi
    cdef bint seen_host
    cdef long long floor        # the first checkpoint this run took (-1: none yet): no re-run
                                # restores one before it (unless the timeline thinned it away),
                                # and the core waits for it, since a change made between steps
                                # without a checkpoint (Machine.poke) is in no checkpoint before


def session_core_stats():
    """{'steps': steps session loops ran in the bulk core, 'regens': re-runs made to make
    missing records} since the last reset (for tests and bench)."""
    return {"steps": _CORE_STEPS, "regens": _REGENS}


def session_core_config(window=None, min_stretch=None, poll=None):
    """Set the session loop's core parameters (for tests: a window of 1 makes _regen run
    often); returns the previous (window, min_stretch, poll)."""
    global _WINDOW, _MIN_STRETCH, _CORE_POLL
    old = (_WINDOW, _MIN_STRETCH, _CORE_POLL)
    if window is not None:
        _WINDOW = max(1, window)
    if min_stretch is not None:
        _MIN_STRETCH = max(1, min_stretch)
    if poll is not None:
        _CORE_POLL = max(1, poll)
    return old


def reset_session_core_stats():
    global _REGENS, _CORE_STEPS
    _REGENS = 0
    _CORE_STEPS = 0


cdef object _regen(object s, _Pending p, _Gaps g, long long lo, long long E, int mode,
                   frozenset guest):
    """Make the records of the steps after lo (up to E) again, by re-running them recorded
    from the checkpoint at or before lo; the run is left at step E with the timeline as it
    was.  Returns the re-run's Stop (RERUN_END) or None."""
    global _REGENS
    cdef long long base
    cdef _Pending q
    m = s.m
    p.handoff()
    tl = s.timeline
    if lo < g.floor:
        lo = g.floor
    cps = tl.checkpoints
    saved = list(cps)
    rewinds, thinned = tl.rewinds, tl.thinned
    inputs = list(s.inputs)
    base = tl.rewind(lo)
    hist = s.history
    while hist and hist[len(hist) - 1].n > base:
        hist.pop()
    s.inputs = [i for i in s.inputs if i["step"] <= base]
    _REGENS += 1
    q = _Pending.__new__(_Pending)
    q.s = s
    try:
        st = _session_loop(s, q, None, None if mode == RERUN_END else E, False, None, None, None,
                           None, 500, mode == RERUN_BEFORE, guest)
    finally:
        q.flush()
    if m.steps != E:
        raise RuntimeError(f"re-running steps {base}..{E} to make their records ended at step "
                           f"{m.steps}: the machine is not deterministic")
    cps[:] = saved
    tl.rewinds, tl.thinned = rewinds, thinned
    s.inputs = inputs
    if base < g.lo:
        g.lo = g.hi = 0
    else:
        g.hi = base
    # each side's last record is exact now: the checkpoint restored holds them as they were
    # (the recorded loop took it, or the core stopped before it until both sides were seen)
    # and the re-run recorded every step after it
    g.seen_guest = g.seen_host = True
    p.refresh()
    return st


def session_run(s, target=None, bint check=True, limit=None, stop=None, cancelled=None,
                progress=None, Py_ssize_t every=500):
    """Session._run on the compiled step (see the section comments)."""
    from emu.sim.steps import GUEST_LAYERS
    cdef frozenset guest = frozenset(GUEST_LAYERS)
    cdef _Pending p = _Pending.__new__(_Pending)
    cdef _Gaps g = _Gaps.__new__(_Gaps)
    cdef long long E, H
    p.s = s
    g.floor = -1
    # with only error catchpoints (and desc breakpoints, whose steps the core stops before),
    # the core runs no step whose record could match them
    from emu.spec.blk import S_IOERR
    cdef _Prefilter pf = _Prefilter(s.breakpoints, S_IOERR)
    stops = pf.core_stops() if check and stop is None else None
    strict = stops is not None and pf.error
    prev_stops = None
    if strict:
        for mod in _strict_modules():
            mod.set_strict(True)
    if stops:
        from emu_fast import _bulk
        prev_stops = _bulk.stop_before(stops)
    # checkpoints find the proxy's idle queues compiled (the same pickle)
    from emu.transport.virtio_pci import VirtioPciProxy
    from emu_fast._support import reduce_proxy
    tl = s.timeline
    prev_reducer = tl.reducer(VirtioPciProxy, reduce_proxy)
    try:
        st = _session_loop(s, p, g, target, check, limit, stop, cancelled, progress, every,
                           False, guest)
        if g.lo:
            # the records the core did not make, where the session keeps them: the history's
            # tail and each side's last record
            E = s.m.steps
            H = s.history.maxlen
            mode = RERUN_END if st is not None and st.reason == "end" else RERUN_TO
            if g.hi > E - H:
                _regen(s, p, g, E - H, E, mode, guest)
            if g.lo and not (g.seen_guest and g.seen_host):
                cps = s.timeline.checkpoints
                _regen(s, p, g, cps[len(cps) - 1].step, E, mode, guest)
        return st
    finally:
        tl.reducer(VirtioPciProxy, prev_reducer)
        if strict:
            for mod in _strict_modules():
                mod.set_strict(False)
        if prev_stops is not None:
            from emu_fast import _bulk
            _bulk.stop_before(prev_stops)
        p.flush()


cdef tuple _STRICT_MODS = None


cdef tuple _strict_modules():
    """The bulk layers with a strict mode (set_strict): where the core could otherwise run a
    step with an error effect or an IOERR fact (which it would not record)."""
    global _STRICT_MODS
    if _STRICT_MODS is None:
        from emu_fast import _bulk_blk, _bulk_dev
        _STRICT_MODS = (_bulk_blk, _bulk_dev)
    return _STRICT_MODS


cdef object _session_loop(s, _Pending p, _Gaps g, target, bint check, limit, stop, cancelled,
                          progress, Py_ssize_t every, bint leave_last, frozenset guest):
    """The loop; g is None for a recorded re-run (no core); leave_last: the last step's
    checkpoint and scheduled inputs are the caller's."""
    global _Stop, _CORE_STEPS
    if _Stop is None:
        from emu.session import Stop as _S
        _Stop = _S
    from emu.spec.blk import S_IOERR
    cdef Py_ssize_t k = 0, lim = -1, tgt = -1, poll = 0, poll_every = 64, H = 0
    cdef long long b, n, st0, nxt
    cdef bint has_target = target is not None
    cdef bint core
    cdef list sched_steps = None
    m = s.m
    _ensure(m)
    if limit is not None:
        lim = limit
    if has_target:
        tgt = target
    table = s.breakpoints
    cdef _Prefilter pf = _Prefilter(table, S_IOERR) if check else None
    hist = s.history
    history_append = hist.append
    if hist.maxlen is not None:
        H = hist.maxlen
    core = g is not None and stop is None and (pf is None or pf.core_stops() is not None) and H > 0
    if core:
        poll_every = _CORE_POLL
    tl = s.timeline
    cdef Py_ssize_t layer_off = _OFF[4] if _STEP_DIRECT else -1     # Step.layer's offset
    cdef str side
    while not has_target or sget(m, _Machine, _MO[1], "steps") < tgt:
        if not p.fresh:     # read again after any Python code ran (it may change them)
            p.refresh()
            cps = tl.checkpoints
            cp_step = cps[len(cps) - 1].step                     # (no negative index: wraparound=False)
            interval = tl.interval
            scheduled = s.scheduled
            sched_steps = sorted(scheduled) if (core and scheduled) else None
        if lim >= 0 and k >= lim:
            return _Stop("limit", m.steps, f"{limit} step(s) run")
        if cancelled is not None and k >= poll:
            poll = k + poll_every
            p.handoff()
            if cancelled():
                return _Stop("interrupted", m.steps, "stopped by the user (Esc)")
        if core and g.floor >= 0:
            # a stretch for the core: up to _WINDOW steps before the next checkpoint or
            # scheduled input, the last H steps of a run with a known end, the next progress
            # call or poll of cancelled
            st0 = sget(m, _Machine, _MO[1], "steps")
            b = cp_step + interval - _WINDOW - st0
            if has_target and tgt - H - st0 < b:
                b = tgt - H - st0
            if lim >= 0 and lim - k - H < b:
                b = lim - k - H
            if sched_steps:
                i = _bisect_right(sched_steps, st0)
                if i < len(sched_steps):
                    nxt = sched_steps[i]
                    if nxt - _WINDOW - st0 < b:
                        b = nxt - _WINDOW - st0
            if progress is not None and every > 0 and every - k % every < b:
                b = every - k % every
            if cancelled is not None and poll - k < b:
                b = poll - k
            if b >= _MIN_STRETCH:
                n = bulk_run(m, b)
                if n:
                    _CORE_STEPS += n
                    k += n
                    if g.lo == 0:
                        g.lo = st0 + 1
                    g.hi = st0 + n
                    g.seen_guest = g.seen_host = False
                    if progress is not None and every > 0 and k % every == 0:
                        p.handoff()
                        progress(m.steps, len(m.guest.blkmq.rqs))
                    continue
        # -- Session._one
        rec = _step(m)
        if rec is None and not s.closed:
            p.handoff()
            s.closed = True
            if m.begin_shutdown():
                rec = _step(m)
        k += 1
        if rec is None:
            return _Stop("end", m.steps, "the workload finished")
        history_append(rec)
        side = "guest" if sget(rec, _Step, layer_off, "layer") in guest else "host"
        if p.by_side is None:       # (a side's first record: the dict's key order is Python's)
            s.last = rec
            s.last_by_side[side] = rec
            p.refresh_sides()
        else:
            p.last = rec
            if side == "guest":
                p.guest = rec
            else:
                p.host = rec
        steps = sget(m, _Machine, _MO[1], "steps")
        if g is not None and g.lo:
            if side == "guest":
                g.seen_guest = True
            else:
                g.seen_host = True
        if leave_last and steps == tgt:
            continue            # (the loop ends: this step's checkpoint and inputs are the caller's)
        if g is not None and g.lo and not (g.seen_guest and g.seen_host) and (
                steps - cp_step >= interval or (scheduled and steps in scheduled)):
            # a checkpoint will save s.last and last_by_side: each side's last record must be
            # there
            _regen(s, p, g, cp_step, steps, RERUN_BEFORE, guest)
            cps = tl.checkpoints
            cp_step = cps[len(cps) - 1].step
            interval = tl.interval
            scheduled = s.scheduled
        if steps - cp_step >= interval:
            p.handoff()
            tl.checkpoint()
            steps = sget(m, _Machine, _MO[1], "steps")
            if g is not None and g.floor < 0:
                g.floor = steps
        if scheduled and steps in scheduled:
            p.handoff()
            s._apply_scheduled()
            _ensure(m)
        # -- Session._advance
        if check and pf.candidate(m, rec):
            p.handoff()
            hit = table.check(m, rec)
            if hit is not None:
                return _Stop(hit.reason, rec.n, hit.message, hit)
        if stop is not None:
            p.handoff()
            st = stop(rec)
            if st is not None:
                return st
            _ensure(m)
        if progress is not None and k % every == 0:
            p.handoff()
            progress(m.steps, len(m.guest.blkmq.rqs))
    return None


def fast_paths():
    """Which exact shortcuts this build takes (all True unless emu's classes changed shape):
    Step records and EffectLog.cur stored slot by slot, Scheduler and Ctx attributes read from
    their __dict__."""
    return {"step_slots": bool(_STEP_DIRECT), "scheduler_slots": bool(_SCHED_SLOTS),
            "ctx_slots": bool(_CTX_SLOTS), "effectlog_slot": bool(_LOG_SLOT)}


def slot_access(cls, tuple names, obj, Py_ssize_t i, *value):
    """For tests: resolve cls's member offsets for names (_slots.slot_offsets) and read
    obj.<names[i]> (sget) or, given a value, write it (sset).  Returns (resolved, result)."""
    cdef Py_ssize_t* off = <Py_ssize_t*>malloc(len(names) * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    try:
        ok = slot_offsets(cls, names, off)
        if value:
            sset(obj, cls, off[i], names[i], value[0])
            return ok, None
        return ok, sget(obj, cls, off[i], names[i])
    finally:
        free(off)
