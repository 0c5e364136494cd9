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

from emu.block.hostfile import HostFile
from emu.mem.guest_memory import GuestMemory
from emu_fast import _hostfile
from emu.sim.scheduler import Scheduler
from emu.sim.steps import REGISTRY, Step

CYTHON_VERSION_STR = CYTHON_VERSION     # set by setup.py (compile_time_env)
PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled

cdef object _Scheduler = Scheduler
cdef object _GuestMemory = GuestMemory
cdef object _HostFileType = HostFile
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


def compiled_kinds():
    """The step kinds whose handler runs compiled on the fast engine (sorted)."""
    return sorted(k for k, (fn, py) in _COMPILED.items() if _REGISTRY[k][0] is py)


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
    c = _COMPILED.get(kind)
    if c is not None and (<tuple>c)[1] is fn:     # (a replaced Python handler is used as is)
        fn = (<tuple>c)[0]
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

cdef inline bint _is(object a, str b):
    return a is b or (type(a) is str and <str>a == b)


cdef class _Prefilter:
    """Which steps could make some enabled breakpoint match (emu.debug.breakpoints matchers)."""
    cdef bint always            # check every step (request breakpoints, unknown kinds)
    cdef bint none              # nothing enabled: check() would return None at once
    cdef bint desc              # any "desc" fact
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
        self.steps, self.regs, self.rings = [], [], []
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

    cdef bint candidate(self, object m, object rec) except -1:
        cdef Py_ssize_t i
        cdef long long a, b
        if self.always:
            return True
        if self.none:
            return False
        if self.steps and self._step_matches(rec.function):
            return True
        if self.desc or self.ioerr:
            for f in <list>rec.facts:
                t = f[0]
                if self.desc and _is(t, _F_DESC):
                    return True
                if self.ioerr and _is(t, _F_STATUS) and f[2] == self.ioerr_status:
                    return True
        for e in <list>rec.effects:
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


def session_run(s, target=None, bint check=True, limit=None, stop=None, cancelled=None,
                progress=None, Py_ssize_t every=500):
    """Session._run on the compiled step (see the section comment)."""
    global _Stop
    if _Stop is None:
        from emu.session import Stop as _S
        _Stop = _S
    from emu.spec.blk import S_IOERR
    from emu.sim.steps import GUEST_LAYERS
    cdef frozenset guest = frozenset(GUEST_LAYERS)
    cdef Py_ssize_t k = 0, lim = -1, tgt = -1
    cdef bint has_target = target is not None
    m = s.m
    _ensure(m)
    if limit is not None:
        lim = limit
    if has_target:
        tgt = target
    table = s.breakpoints
    cdef _Prefilter pf = _Prefilter(table, S_IOERR) if check else None
    history_append = s.history.append
    last_by_side = s.last_by_side
    tl = s.timeline
    while not has_target or m.steps < tgt:
        if lim >= 0 and k >= lim:
            return _Stop("limit", m.steps, f"{limit} step(s) run")
        if cancelled is not None and k % 64 == 0 and cancelled():
            return _Stop("interrupted", m.steps, "stopped by the user (Esc)")
        # -- Session._one
        rec = _step(m)
        if rec is None and not s.closed:
            s.closed = True
            if m.begin_shutdown():
                rec = _step(m)
        k += 1
        if rec is None:
            return _Stop("end", m.steps, "the workload finished")
        history_append(rec)
        s.last = rec
        last_by_side["guest" if rec.layer in guest else "host"] = rec
        cps = tl.checkpoints
        if m.steps - cps[len(cps) - 1].step >= tl.interval:     # (no negative index: wraparound=False)
            tl.checkpoint()
        if s.scheduled and m.steps in s.scheduled:
            s._apply_scheduled()
            _ensure(m)
        # -- Session._advance
        if check and pf.candidate(m, rec):
            hit = table.check(m, rec)
            if hit is not None:
                return _Stop(hit.reason, rec.n, hit.message, hit)
        if stop is not None:
            st = stop(rec)
            if st is not None:
                return st
            _ensure(m)
        if progress is not None and k % every == 0:
            progress(m.steps, len(m.guest.blkmq.rqs))
    return None
