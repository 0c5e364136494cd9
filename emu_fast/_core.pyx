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

import copyreg as _copyreg
from heapq import heappop as _heappop, heappush as _heappush

from emu.mem.guest_memory import GuestMemory
from emu.sim.scheduler import Scheduler
from emu.sim.steps import REGISTRY, Step

CYTHON_VERSION_STR = CYTHON_VERSION     # set by setup.py (compile_time_env)
PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled

cdef object _Scheduler = Scheduler
cdef object _GuestMemory = GuestMemory
cdef object _Step = Step
cdef dict _REGISTRY = REGISTRY

# Step records are made field by field (what the dataclass __init__ does, without running its
# Python code) when Step has exactly the fields this module knows; otherwise by Step(...).
import dataclasses as _dc
cdef bint _STEP_DIRECT = tuple(f.name for f in _dc.fields(Step)) == (
    "n", "time_ns", "ctx", "kind", "layer", "function", "source", "detail", "effects", "caller",
    "facts") and hasattr(Step, "__slots__")
cdef object _step_new = Step.__new__


cdef inline object _make_step(object n, object time, object ctx, object kind, object info):
    if not _STEP_DIRECT:
        return _Step(n, time, ctx, kind, info.layer, info.function, info.source)
    rec = _step_new(_Step)
    rec.n = n
    rec.time_ns = time
    rec.ctx = ctx
    rec.kind = kind
    rec.layer = info.layer
    rec.function = info.function
    rec.source = info.source
    rec.detail = ""
    rec.effects = []
    rec.caller = ""
    rec.facts = []
    return rec


class _Info:
    layer = "l"
    function = "f"
    source = "s"


if _STEP_DIRECT:    # the defaults must be what the dataclass gives
    _STEP_DIRECT = _make_step(1, 2, "c", "k", _Info) == Step(1, 2, "c", "k", "l", "f", "s")


# == scheduler ================================================================================

cdef inline void _schedule(object sim, object delay, object ctx, object kind, object args) except *:
    seq = sim.seq + 1
    sim.seq = seq
    _heappush(sim.queue, (sim.now + delay, seq, ctx, kind, args))


cdef inline void _start_next(object sim, object ctx, object delay) except *:
    cdef list urgent = ctx.urgent
    if urgent:
        kind, args = urgent.pop(0)
    elif ctx.preempted:
        kind, args, ctx.stack = ctx.preempted.pop()
    elif ctx.fifo:
        kind, args = ctx.fifo.pop(0)
    else:
        ctx.busy = False
        return
    _schedule(sim, ctx.step_ns if delay is None else delay, ctx.name, kind, args)


cdef inline void _cont(object sim, object kind, object args, object delay, bint preemptible) except *:
    ctx = sim.ctxs[sim.cur]
    d = ctx.step_ns if delay is None else delay
    sim._decided = True
    if preemptible and ctx.urgent:
        ctx.preempted.append((kind, args, ctx.stack))
        ctx.stack = []
        k, a = ctx.urgent.pop(0)
        _schedule(sim, d, ctx.name, k, a)
        return
    _schedule(sim, d, ctx.name, kind, args)


cdef inline void _finish_step(object sim) except *:
    if not sim.cur or sim._decided:
        return
    ctx = sim.ctxs[sim.cur]
    stack = ctx.stack
    if stack:
        kind, args = stack.pop()
        _schedule(sim, ctx.step_ns, ctx.name, kind, args)
        return
    _start_next(sim, ctx, None)


class FastScheduler(Scheduler):
    """emu.sim.scheduler.Scheduler with its methods compiled.  The fast engine sets a
    machine's scheduler to this class while it runs; it pickles and copies as a plain
    Scheduler, so checkpoints taken on either engine are the same."""

    def __reduce_ex__(self, proto):
        # a plain Scheduler with this state (copyreg._reconstructor: object.__new__(Scheduler))
        return (_copyreg._reconstructor, (_Scheduler, object, None), self.__dict__)

    def _schedule(self, delay, ctx, kind, args):
        _schedule(self, delay, ctx, kind, args)

    def pop(self):
        """Scheduler.pop"""
        q = self.queue
        if not q:
            return None
        ev = _heappop(q)
        self.now = ev[0]
        self.cur = ev[2]
        self._decided = False
        return ev

    def cont(self, kind, args=(), delay=None, preemptible=False):
        """Scheduler.cont"""
        _cont(self, kind, args, delay, preemptible)

    def call(self, kind, args, ret_kind, ret_args=(), delay=None):
        """Scheduler.call"""
        self.ctxs[self.cur].stack.append((ret_kind, ret_args))
        _cont(self, kind, args, delay, False)

    def block(self, kind, args=()):
        """Scheduler.block"""
        ctx = self.ctxs[self.cur]
        ctx.blocked = (kind, args)
        self._decided = True

    def unblock(self, name, delay=0):
        """Scheduler.unblock"""
        ctx = self.ctxs[name]
        if ctx.blocked is None:
            return
        kind, args = ctx.blocked
        ctx.blocked = None
        if not kind:
            if not ctx.stack:
                _start_next(self, ctx, delay)
                return
            kind, args = ctx.stack.pop()
        _schedule(self, delay, name, kind, args)

    def post(self, name, kind, args=(), delay=0, urgent=False):
        """Scheduler.post"""
        ctx = self.ctxs[name]
        if not ctx.busy:
            ctx.busy = True
            _schedule(self, delay, name, kind, args)
        elif urgent:
            ctx.urgent.append((kind, args))
        else:
            ctx.fifo.append((kind, args))

    def at(self, delay, kind, args=()):
        """Scheduler.at"""
        _schedule(self, delay, "", kind, args)

    def finish_step(self):
        """Scheduler.finish_step"""
        _finish_step(self)

    def _start_next(self, ctx, delay=None):
        _start_next(self, ctx, delay)


# == guest memory ================================================================================
# Bound to one GuestMemory as instance attributes (attach()); each mirrors the method named.

cdef inline bint _in_ram(object mem, object gpa, Py_ssize_t n, Py_ssize_t* out) except -1:
    """gpa is an int with [gpa, gpa+n) inside RAM (and inside the bytearray)."""
    cdef Py_ssize_t g, size
    if type(gpa) is not int or n < 0:
        return False
    if gpa < 0:
        return False
    size = mem.size
    if gpa > size:
        return False
    g = gpa
    if g + n > size or g + n > PyByteArray_GET_SIZE(mem.ram):
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
    cdef bytearray ram = mem.ram
    cdef bytearray dirty
    cdef char* base
    undo = mem.undo
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
    dirty = mem._dirty
    p = g >> 12
    last = (g + n - 1) >> 12
    memset(PyByteArray_AS_STRING(dirty) + p, 1, last - p + 1)
    cur = mem.log.cur
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


# == the run loop ================================================================================

cdef object _step(object m):
    """Machine.step, with Scheduler.pop and Scheduler.finish_step inlined."""
    sim = m.sim
    cdef list q = sim.queue
    if not q:
        return None
    ev = _heappop(q)
    time, _seq, ctx, kind, args = <tuple>ev
    sim.now = time
    sim.cur = ctx
    sim._decided = False
    fn, info = <tuple>_REGISTRY[kind]
    rec = _make_step(m.steps + 1, time, ctx, kind, info)
    m.cur = rec
    log = m.log
    log.cur = rec.effects
    try:
        rec.detail = fn(m, *args) or ""
    finally:
        log.cur = None
    _finish_step(sim)
    m.steps += 1
    return rec


cdef inline void _ensure(object m) except *:
    sim = m.sim
    if type(sim) is not FastScheduler:
        if type(sim) is _Scheduler:
            sim.__class__ = FastScheduler
    mem = m.mem
    if mem.__dict__.get("write") is None:
        attach_memory(mem)


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


def attached(m):
    return type(m.sim) is FastScheduler and m.mem.__dict__.get("write") is not None


def step(m):
    """One step of m exactly as Machine.step; None when nothing is left."""
    _ensure(m)
    return _step(m)


def run(m, max_steps=None, on_step=None):
    """Machine.run on the compiled loop: 'end', 'steps' or 'stopped'."""
    cdef Py_ssize_t n = 0, limit = -1
    cdef bint has_cb = on_step is not None
    if max_steps is not None:
        limit = max_steps
        if limit < 0:
            limit = 0
    _ensure(m)
    while limit < 0 or n < limit:
        rec = _step(m)
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
