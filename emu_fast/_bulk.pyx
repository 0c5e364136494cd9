# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The bulk core: stretches of an unobserved run with the scheduler in C (contract: _bulk.pxd).

emu_fast._core.run (no on_step) calls run(m, limit) before each step it would take itself; run
converts m.sim into the C structures below, runs events while the event at the top of the heap
has a bulk handler that takes it, and converts the scheduler back.  The heap is heapq's
algorithm over (time, seq) (unique keys: the order heapq keeps for the queue's tuples), and
every scheduler rule is emu.sim.scheduler.Scheduler's, so the stored-back m.sim is the one the
Python engine would have after the same steps.

The core never runs the last step of a run (nor the last step a max_steps budget allows): the
compiled engine runs those with a record, so m.cur after run() is what Machine.run leaves.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_Contains

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove, memset

from emu.errors import EmuError
from emu.mem.guest_memory import GuestMemory
from emu.machine import Machine
from emu.sim.scheduler import Ctx, Scheduler
from emu_fast._slots cimport slot_offsets, sget

CYTHON_VERSION_STR = CYTHON_VERSION     # set by setup.py (compile_time_env)
PYX_SHA256 = PYX_HASH

cdef object _GuestMemory = GuestMemory
cdef object _Ctx = Ctx
cdef object _Machine = Machine
cdef object _Scheduler = Scheduler
cdef object _EmuError = EmuError

_KIND_NAMES = (
    '',
    'app.exit',
    'app.hrtimer',
    'app.op',
    'app.resume',
    'app.start',
    'bdrv.co_done',
    'bdrv.co_entry',
    'blk.aio_complete',
    'blk.co_entry',
    'blkmq.delay_run',
    'blkmq.dispatch',
    'blkmq.dispatch_ret',
    'blkmq.end_request',
    'blkmq.flush_plug',
    'blkmq.run_queue',
    'blkmq.run_work',
    'blkmq.start_request',
    'blkmq.submit_bio',
    'file.aio_worker',
    'file.co_entry',
    'file.co_resume',
    'file.flush_done',
    'probe.ack',
    'probe.blk_start',
    'probe.capacity',
    'probe.config_changed',
    'probe.driver',
    'probe.driver_ok',
    'probe.enable_vq',
    'probe.features',
    'probe.features_ok',
    'probe.limits',
    'probe.msix',
    'probe.reset',
    'probe.setup_vq',
    'probe.tag_set',
    'qcow2.close',
    'qcow2.co_entry',
    'qcow2.compute',
    'qcow2.io',
    'qcow2.io_done',
    'qcow2.open',
    'qcow2.worker',
    'raw.co_entry',
    'vblk.dwz_complete',
    'vblk.flush',
    'vblk.flush_complete',
    'vblk.handle_request',
    'vblk.handle_vq',
    'vblk.mrb_add',
    'vblk.pass_end',
    'vblk.pop',
    'vblk.req_complete',
    'vblk.rw_complete',
    'vblk.submit_multireq',
    'vblk.submit_requests',
    'vblkd.add_err_end',
    'vblkd.add_err_kick',
    'vblkd.add_req',
    'vblkd.add_ret',
    'vblkd.commit_notify',
    'vblkd.commit_rqs',
    'vblkd.done',
    'vblkd.done_end',
    'vblkd.map_data',
    'vblkd.queue_rq',
    'vblkd.queue_rq_end',
    'vblkd.request_done',
    'vblkd.setup_cmd',
    'vpci.notify',
    'vpci.notify_done',
    'vq.fill',
    'vq.flush',
    'vq.irq',
    'vq.notify',
    'vring.add_avail',
    'vring.add_desc',
    'vring.add_head',
    'vring.add_publish',
    'vring.add_split',
    'vring.disable_cb',
    'vring.enable_cb',
    'vring.get_buf',
    'vring.interrupt',
    'vring.kick_prepare',
    'vring.notify',
)

cdef dict _KIND_ID = {name: i for i, name in enumerate(_KIND_NAMES)}
assert len(_KIND_NAMES) == NKINDS

# kind str -> K_*: a direct-mapped cache keyed by the str object's address (each entry holds
# a reference, so no other object can take that address while it is cached), then the dict
cdef PyObject* _KC_OBJ[256]
cdef int _KC_ID[256]
memset(_KC_OBJ, 0, sizeof(_KC_OBJ))


cdef int _kind_id(object kind) except -2:
    """K_* of kind, or -1 when it is not a known kind (a str in _KIND_NAMES)"""
    cdef size_t h = (<size_t><PyObject*>kind >> 4) & 255
    cdef PyObject* o
    if _KC_OBJ[h] == <PyObject*>kind:
        return _KC_ID[h]
    if type(kind) is not str:
        return -1
    o = PyDict_GetItemWithError(_KIND_ID, kind)
    if o == NULL:
        return -1
    Py_INCREF(kind)
    Py_XDECREF(_KC_OBJ[h])
    _KC_OBJ[h] = <PyObject*>kind
    _KC_ID[h] = <int><object>o
    return _KC_ID[h]


cdef handler_t _HANDLERS[NKINDS]
memset(_HANDLERS, 0, sizeof(_HANDLERS))
# the handlers a stretch runs: _HANDLERS but for the kinds set by stop_before (NULL: the core
# stops before such an event, and the caller runs it, recorded)
cdef handler_t _ACTIVE[NKINDS]
memset(_ACTIVE, 0, sizeof(_ACTIVE))
cdef bint _STOP[NKINDS]
memset(_STOP, 0, sizeof(_STOP))
cdef continues_t _CONTINUES[NKINDS]
memset(_CONTINUES, 0, sizeof(_CONTINUES))
cdef load_t _LOADS[8]
cdef store_t _STORES[8]
cdef int _NLAYERS = 0
cdef bint _ENABLED = True

# statistics (stats()): steps run in the core, stretches, why stretches ended
cdef long long _ST_STEPS = 0
cdef long long _ST_RUNS = 0
cdef long long _ST_REFUSED = 0        # a layer's load said this machine is not for the core
cdef long long _ST_MAY_END = 0        # the next event could have been the run's last (_may_end)
cdef long long _BAILS[NKINDS]         # a handler returned BAIL for an event of this kind
cdef long long _UNHANDLED[NKINDS]     # the next event's kind has no bulk handler
cdef long long _STOPPED[NKINDS]       # ... is one stop_before names
memset(_STOPPED, 0, sizeof(_STOPPED))
cdef long long _MAYEND[NKINDS]        # ... could be the run's last (_may_end)
memset(_MAYEND, 0, sizeof(_MAYEND))
memset(_BAILS, 0, sizeof(_BAILS))
memset(_UNHANDLED, 0, sizeof(_UNHANDLED))


cdef int register_handler(int kind, handler_t fn) except -1:
    if kind <= 0 or kind >= NKINDS:
        raise ValueError(f"register_handler: kind {kind} out of range")
    _HANDLERS[kind] = fn
    _ACTIVE[kind] = NULL if _STOP[kind] else fn
    return 0


cdef int register_continues(int kind, continues_t fn) except -1:
    if kind <= 0 or kind >= NKINDS:
        raise ValueError(f"register_continues: kind {kind} out of range")
    _CONTINUES[kind] = fn
    return 0


cdef int register_layer(load_t load, store_t store) except -1:
    global _NLAYERS
    if _NLAYERS >= 8:
        raise ValueError("register_layer: too many layers")
    _LOADS[_NLAYERS] = load
    _STORES[_NLAYERS] = store
    _NLAYERS += 1
    return 0


def handled_kinds():
    """The kinds (names) that have a bulk handler."""
    return [_KIND_NAMES[i] for i in range(1, NKINDS) if _HANDLERS[i] != NULL]


def kind_names():
    return _KIND_NAMES


def stop_before(kinds):
    """Make stretches stop before every event of these kinds (names, as the scheduler's: a
    session's breakpoint prefilter names the events whose records could match); the previous
    set is returned (a frozenset), to be put back when the caller is done."""
    cdef int i
    ids = set()
    for name in kinds:
        i = _kind_id(name)
        if i <= 0:
            raise ValueError(f"stop_before: {name!r} is not an event kind")
        ids.add(i)
    prev = frozenset(_KIND_NAMES[i] for i in range(1, NKINDS) if _STOP[i])
    for i in range(NKINDS):
        _STOP[i] = i in ids
        _ACTIVE[i] = NULL if _STOP[i] else _HANDLERS[i]
    return prev


def set_enabled(bint on):
    """Turn the core on or off (off: run() returns 0 at once; for comparisons and benchmarks)."""
    global _ENABLED
    _ENABLED = on


def enabled():
    return _ENABLED


def stats():
    """{'steps': steps run in the core, 'runs': stretches, 'refused': loads a layer refused,
    'bails': {kind: n}, 'unhandled': {kind: n}} since the last reset_stats()."""
    return {"steps": _ST_STEPS, "runs": _ST_RUNS, "refused": _ST_REFUSED, "may_end": _ST_MAY_END,
            "bails": {_KIND_NAMES[i]: _BAILS[i] for i in range(NKINDS) if _BAILS[i]},
            "unhandled": {_KIND_NAMES[i]: _UNHANDLED[i] for i in range(NKINDS) if _UNHANDLED[i]},
            "stopped": {_KIND_NAMES[i]: _STOPPED[i] for i in range(NKINDS) if _STOPPED[i]},
            "may_end_kinds": {_KIND_NAMES[i]: _MAYEND[i] for i in range(NKINDS) if _MAYEND[i]}}


def reset_stats():
    global _ST_STEPS, _ST_RUNS, _ST_REFUSED, _ST_MAY_END
    _ST_STEPS = _ST_RUNS = _ST_REFUSED = _ST_MAY_END = 0
    memset(_BAILS, 0, sizeof(_BAILS))
    memset(_UNHANDLED, 0, sizeof(_UNHANDLED))
    memset(_STOPPED, 0, sizeof(_STOPPED))
    memset(_MAYEND, 0, sizeof(_MAYEND))


# == frames ======================================================================================

cdef i64 str_arg(Core* c, object s) except -1:
    cdef list strs = <list>c.strs
    strs.append(s)
    return len(strs) - 1


cdef object arg_str(Core* c, i64 i):
    return (<list>c.strs)[i]


cdef int _frame_from(Core* c, object kind, object args, Frame* f) except -1:
    """Frame of (kind, args): 1; 0 when not representable (an unknown kind, an argument that is
    not an exact int in range or an exact str, more than VB_NARGS arguments)."""
    cdef PyObject* o
    cdef Py_ssize_t i, n
    cdef int ovf = 0, k = _kind_id(kind)
    cdef long long v
    if k < 0 or type(args) is not tuple:
        return 0
    n = PyTuple_GET_SIZE(args)
    if n > VB_NARGS:
        return 0
    f[0] = F0(k)
    f.n = <int>n
    for i in range(n):
        a = <object>PyTuple_GET_ITEM(args, i)
        if PyLong_CheckExact(a):
            v = PyLong_AsLongLongAndOverflow(a, &ovf)
            if ovf:
                return 0
            f.a[i] = v
        elif type(a) is str:
            f.a[i] = str_arg(c, a)
            f.s[i] = 1
        else:
            return 0
    return 1


cdef tuple _args_of(Core* c, Frame* f):
    cdef Py_ssize_t i
    if f.n == 0:
        return ()
    if f.n == 1:
        return (arg_str(c, f.a[0]) if f.s[0] else f.a[0],)
    return tuple([arg_str(c, f.a[i]) if f.s[i] else f.a[i] for i in range(f.n)])


cdef tuple _pair(Core* c, Frame* f):
    """(kind, args)"""
    return (<str>_KIND_NAMES[f.kind], _args_of(c, f))


# == frame lists =================================================================================

cdef int _fl_push(FrameList* l, Frame f) except -1:
    cdef Frame* v
    cdef Py_ssize_t cap
    if l.n == l.cap:
        cap = 8 if l.cap == 0 else 2 * l.cap
        v = <Frame*>realloc(l.v, cap * sizeof(Frame))
        if v == NULL:
            raise MemoryError()
        l.v = v
        l.cap = cap
    l.v[l.n] = f
    l.n += 1
    return 0


cdef inline Frame _fl_pop_last(FrameList* l) noexcept nogil:
    l.n -= 1
    return l.v[l.n]


cdef inline Frame _fl_pop_first(FrameList* l) noexcept nogil:
    cdef Frame f = l.v[0]
    l.n -= 1
    memmove(l.v, l.v + 1, l.n * sizeof(Frame))
    return f


cdef int _fl_load(Core* c, object lst, FrameList* l) except -1:
    """l = the (kind, args) pairs of lst: 1, or 0 when one is not representable"""
    cdef Frame f
    l.n = 0
    if type(lst) is not list:
        return 0
    for item in <list>lst:
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
            return 0
        if not _frame_from(c, <object>PyTuple_GET_ITEM(item, 0), <object>PyTuple_GET_ITEM(item, 1), &f):
            return 0
        _fl_push(l, f)
    return 1


cdef list _frames(Core* c, Frame* v, Py_ssize_t n):
    cdef Py_ssize_t i
    return [_pair(c, &v[i]) for i in range(n)]


cdef inline list _fl_list(Core* c, FrameList* l):
    return _frames(c, l.v, l.n)


cdef int _pre_push(CtxS* x, Frame f, FrameList* stack) except -1:
    """ctx.preempted.append((kind, args, stack)), the stack's frames moved into the entry"""
    cdef Pre* v
    cdef Py_ssize_t cap
    if x.npre == x.cappre:
        cap = 4 if x.cappre == 0 else 2 * x.cappre
        v = <Pre*>realloc(x.pre, cap * sizeof(Pre))
        if v == NULL:
            raise MemoryError()
        x.pre = v
        x.cappre = cap
    x.pre[x.npre].f = f
    x.pre[x.npre].stack = stack.v
    x.pre[x.npre].nstack = stack.n
    x.pre[x.npre].cap = stack.cap
    x.npre += 1
    stack.v = NULL
    stack.n = 0
    stack.cap = 0
    return 0


cdef void _ctx_free(CtxS* x) noexcept nogil:
    cdef Py_ssize_t i
    free(x.stack.v)
    free(x.fifo.v)
    free(x.urgent.v)
    for i in range(x.npre):
        free(x.pre[i].stack)
    free(x.pre)
    memset(x, 0, sizeof(CtxS))


# == the heap (heapq over (time, seq)) ============================================================

cdef int bk_grow(Core* c) except -1:
    """Room for twice as many events (hq, evs and freeslot)"""
    cdef Py_ssize_t cap = 16 if c.capev == 0 else 2 * c.capev
    cdef HeapEnt* hq = <HeapEnt*>realloc(c.hq, cap * sizeof(HeapEnt))
    if hq == NULL:
        raise MemoryError()
    c.hq = hq
    cdef Ev* evs = <Ev*>realloc(c.evs, cap * sizeof(Ev))
    if evs == NULL:
        raise MemoryError()
    c.evs = evs
    cdef Py_ssize_t* fs = <Py_ssize_t*>realloc(c.freeslot, cap * sizeof(Py_ssize_t))
    if fs == NULL:
        raise MemoryError()
    c.freeslot = fs
    c.capev = cap
    return 0


# heapq.heappush and heapq.heappop are bk_push and bk_pop (_bulk.pxd: inline in every handler)


cdef inline Ev* _top(Core* c) noexcept nogil:
    """the event at the top of the heap (c.nheap > 0)"""
    return &c.evs[c.hq[0].slot]


# == Scheduler's rules ===========================================================================

cdef inline int _schedule(Core* c, i64 delay, int ctx, Frame* f) except -1:
    """Scheduler._schedule"""
    return bk_push(c, c.now + delay, ctx, f)


cdef CtxS* _no_ctx() except NULL:
    raise KeyError("")


cdef inline CtxS* _cur_ctx(Core* c) except NULL:
    """self.ctxs[self.cur]"""
    if c.cur < 0:
        return _no_ctx()
    return &c.ctx[c.cur]


cdef int bk_begun_twice() except -1:
    raise SystemError("bulk core: begin() called twice in one step")


# begin (Scheduler.pop) is inline (_bulk.pxd)


cdef int _start_next(Core* c, int i, i64 delay) except -1:
    """Scheduler._start_next (delay < 0: None)"""
    cdef CtxS* x = &c.ctx[i]
    cdef Frame f
    cdef Pre* p
    if x.urgent.n:
        f = _fl_pop_first(&x.urgent)
    elif x.npre:
        x.npre -= 1
        p = &x.pre[x.npre]
        f = p.f
        free(x.stack.v)
        x.stack.v = p.stack
        x.stack.n = p.nstack
        x.stack.cap = p.cap
    elif x.fifo.n:
        f = _fl_pop_first(&x.fifo)
    else:
        x.busy = False
        return 0
    return _schedule(c, x.step_ns if delay < 0 else delay, i, &f)


cdef int bk_cont_slow(Core* c, Frame* f, i64 delay, bint preemptible) except -1:
    """Scheduler.cont (delay < 0: None); cont (_bulk.pxd, inline) calls it for a free event's
    step and a preemptible cont with urgent work queued"""
    cdef CtxS* x = _cur_ctx(c)
    cdef i64 d = x.step_ns if delay < 0 else delay
    cdef Frame k
    c.decided = True
    if preemptible and x.urgent.n:
        _pre_push(x, f[0], &x.stack)
        k = _fl_pop_first(&x.urgent)
        return _schedule(c, d, c.cur, &k)
    return _schedule(c, d, c.cur, f)


cdef int call(Core* c, Frame f, Frame ret, i64 delay=-1) except -1:
    """Scheduler.call"""
    _fl_push(&_cur_ctx(c).stack, ret)
    return cont(c, f, delay, False)


cdef int block(Core* c, Frame f) except -1:
    """Scheduler.block"""
    cdef CtxS* x = _cur_ctx(c)
    x.has_blocked = True
    x.blocked = f
    c.decided = True
    return 0


cdef int unblock(Core* c, int i, i64 delay=0) except -1:
    """Scheduler.unblock"""
    cdef CtxS* x
    cdef Frame f
    if i < 0 or i >= c.nctx:
        raise KeyError(i)
    x = &c.ctx[i]
    if not x.has_blocked:
        return 0
    f = x.blocked
    x.has_blocked = False
    if f.kind == K_NONE:
        if not x.stack.n:
            return _start_next(c, i, delay)
        f = _fl_pop_last(&x.stack)
    return _schedule(c, delay, i, &f)


cdef int post(Core* c, int i, Frame f, i64 delay=0, bint urgent=False) except -1:
    """Scheduler.post"""
    cdef CtxS* x
    if i < 0 or i >= c.nctx:
        raise KeyError(i)
    x = &c.ctx[i]
    if not x.busy:
        x.busy = True
        return _schedule(c, delay, i, &f)
    if urgent:
        return _fl_push(&x.urgent, f)
    return _fl_push(&x.fifo, f)


cdef int at(Core* c, i64 delay, Frame f) except -1:
    """Scheduler.at"""
    return _schedule(c, delay, CTX_FREE, &f)


cdef int _finish_step(Core* c) except -1:
    """Scheduler.finish_step"""
    cdef CtxS* x
    if c.cur < 0 or c.decided:
        return 0
    x = &c.ctx[c.cur]
    if x.stack.n:
        x.stack.n -= 1
        return _schedule(c, x.step_ns, c.cur, &x.stack.v[x.stack.n])
    return _start_next(c, c.cur, -1)


# == guest RAM ===================================================================================

cdef int bk_ram_write_slow(Core* c, i64 gpa, const void* src, i64 n) except -1:
    """GuestMemory.write (no effect record), every case (ram_write: _bulk.pxd, inline)"""
    cdef i64 p, last
    if not ram_ok(c, gpa, n):
        raise _EmuError(f"guest write outside RAM: {gpa:#x}+{n}")
    if n == 0:
        return 0
    p = gpa >> 12
    last = (gpa + n - 1) >> 12
    if c.undo != NULL:
        undo = <dict>c.undo
        while True:
            if not PyDict_Contains(undo, p):
                PyDict_SetItem(undo, p, PyBytes_FromStringAndSize(<char*>c.ram + (p << 12), 4096))
            if p == last:
                break
            p += 1
        p = gpa >> 12
    memcpy(c.ram + gpa, src, n)
    while p <= last:
        c.dirty[p] = 1
        p += 1
    return 0


# == load and store ==============================================================================

cdef bint _as_i64(object o, i64* out) except -1:
    """*out = o when o is an exact int that fits 64 bits (True); False otherwise"""
    cdef int ovf = 0
    if not PyLong_CheckExact(o):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(o, &ovf)
    return not ovf


cdef bint _ctx_of(dict index, object name, int* out) except -1:
    """*out = the index of context `name` ("": CTX_FREE) (True); False for anything else"""
    if type(name) is not str:
        return False
    if not name:
        out[0] = CTX_FREE
        return True
    if name not in index:
        return False
    out[0] = index[name]
    return True


cdef int _load_sched(Core* c, object sim) except -1:
    """C state of m.sim: 1, or 0 when something in it is not representable"""
    cdef Ev e
    cdef CtxS* x
    cdef int i
    cdef dict index = {}
    ctxs = sim.ctxs
    if type(ctxs) is not dict or len(<dict>ctxs) > 8:
        return 0
    i = 0
    c.vcpu = -1
    c.qemu = -1
    for name, ctx in (<dict>ctxs).items():
        if type(ctx) is not _Ctx or type(name) is not str or ctx.name != name or not name:
            return 0
        x = &c.ctx[i]
        c.nctx = i + 1
        x.obj = <PyObject*>ctx
        x.name = <PyObject*>name
        busy = ctx.busy
        if not _as_i64(ctx.step_ns, &x.step_ns) or x.step_ns < 0 or type(busy) is not bool:
            return 0
        x.busy = busy
        if not (_fl_load(c, ctx.stack, &x.stack) and _fl_load(c, ctx.fifo, &x.fifo)
                and _fl_load(c, ctx.urgent, &x.urgent)):
            return 0
        pre = ctx.preempted
        if type(pre) is not list:
            return 0
        for item in <list>pre:
            if type(item) is not tuple or len(<tuple>item) != 3:
                return 0
            if not _frame_from(c, item[0], item[1], &e.f):
                return 0
            stack = _FrameBuf()
            if not _fl_load(c, item[2], &stack.l):
                return 0
            _pre_push(x, e.f, &stack.l)
        blocked = ctx.blocked
        if blocked is None:
            x.has_blocked = False
        elif type(blocked) is tuple and len(<tuple>blocked) == 2 \
                and _frame_from(c, blocked[0], blocked[1], &x.blocked):
            x.has_blocked = True
        else:
            return 0
        index[name] = i
        if name == "vcpu":
            c.vcpu = i
        elif name == "qemu":
            c.qemu = i
        i += 1
    cur, decided = sim.cur, sim._decided
    if not (_as_i64(sim.now, &c.now) and _as_i64(sim.seq, &c.seq) and type(decided) is bool
            and _ctx_of(index, cur, &c.cur)):
        return 0
    c.decided = decided
    q = sim.queue
    if type(q) is not list:
        return 0
    c.nheap = 0
    for ev in <list>q:
        if type(ev) is not tuple or len(<tuple>ev) != 5:
            return 0
        if not (_as_i64(ev[0], &e.time) and _as_i64(ev[1], &e.seq)
                and _ctx_of(index, ev[2], &e.ctx) and _frame_from(c, ev[3], ev[4], &e.f)):
            return 0
        # appended in list order: the list is already a heap, the array is the same heap
        if c.nev == c.capev:
            bk_grow(c)
        c.evs[c.nev] = e
        c.hq[c.nheap].time = e.time
        c.hq[c.nheap].seq = e.seq
        c.hq[c.nheap].slot = c.nev
        c.nev += 1
        c.nheap += 1
    return 1


cdef class _FrameBuf:
    """An owner for a FrameList being loaded (its frames move into a Pre)."""
    cdef FrameList l

    def __dealloc__(self):
        free(self.l.v)


cdef object _name(Core* c, int i):
    return "" if i < 0 else <object>c.ctx[i].name


cdef int _store_sched(Core* c, object sim) except -1:
    """m.sim = the C state (the lists are refilled in place)"""
    cdef CtxS* x
    cdef Ev* e
    cdef Py_ssize_t i, j
    for i in range(c.nctx):
        x = &c.ctx[i]
        ctx = <object>x.obj
        ctx.busy = bool(x.busy)
        ctx.stack[:] = _fl_list(c, &x.stack)
        ctx.fifo[:] = _fl_list(c, &x.fifo)
        ctx.urgent[:] = _fl_list(c, &x.urgent)
        pre = []
        for j in range(x.npre):
            pre.append((<str>_KIND_NAMES[x.pre[j].f.kind], _args_of(c, &x.pre[j].f),
                        _frames(c, x.pre[j].stack, x.pre[j].nstack)))
        ctx.preempted[:] = pre
        ctx.blocked = _pair(c, &x.blocked) if x.has_blocked else None
    q = []
    for i in range(c.nheap):
        e = &c.evs[c.hq[i].slot]
        q.append((e.time, e.seq, _name(c, e.ctx), <str>_KIND_NAMES[e.f.kind], _args_of(c, &e.f)))
    sim.queue[:] = q
    sim.now = c.now
    sim.seq = c.seq
    sim.cur = _name(c, c.cur)
    sim._decided = bool(c.decided)
    return 0


cdef int _load_mem(Core* c, object m) except -1:
    return _load_guest_memory(c, m.mem)


cdef int _load_guest_memory(Core* c, object mem) except -1:
    if type(mem) is not _GuestMemory:
        return 0
    ram = mem.ram
    dirty = mem._dirty
    undo = mem.undo
    if type(ram) is not bytearray or type(dirty) is not bytearray:
        return 0
    if undo is not None and type(undo) is not dict:
        return 0
    if PyByteArray_GET_SIZE(dirty) * 4096 < PyByteArray_GET_SIZE(ram):
        return 0
    c.mem = <PyObject*>mem
    c.ram = <uint8_t*>PyByteArray_AS_STRING(ram)
    c.ram_size = PyByteArray_GET_SIZE(ram)
    c.dirty = <uint8_t*>PyByteArray_AS_STRING(dirty)
    c.undo = NULL if undo is None else <PyObject*>undo
    return 1


# == the run =====================================================================================

cdef class _Run:
    """One stretch's Core (freed with it)."""
    cdef Core c
    cdef list strs

    def __cinit__(self):
        memset(&self.c, 0, sizeof(Core))
        self.strs = []
        self.c.strs = <PyObject*>self.strs

    def __dealloc__(self):
        cdef int i
        for i in range(8):
            _ctx_free(&self.c.ctx[i])
        free(self.c.heap)
        free(self.c.hq)
        free(self.c.evs)
        free(self.c.freeslot)


cdef inline bint _may_end(Core* c) noexcept:
    """The event at the top could be the last of the run (then the compiled engine runs it):
    it is the only one, it is free or its context has nothing to go on with, and its kind's
    continues predicate (if any) does not promise a next event."""
    cdef CtxS* x
    cdef continues_t p
    cdef Ev* top
    if c.nheap != 1:
        return False
    top = _top(c)
    p = _CONTINUES[top.f.kind]
    if p != NULL and p(c, &top.f):
        return False
    if top.ctx < 0:
        return True
    x = &c.ctx[top.ctx]
    return not (x.stack.n or x.urgent.n or x.npre or x.fifo.n)


# Kinds whose Python handler always schedules an event (emu/block/qcow2/driver.py): qcow2.io
# ends in _next_item's cont or sim.at; qcow2.io_done in _next_item's cont or cont(compute);
# qcow2.compute in cont(io), cont(compute) or _finish, which ends in cont(bdrv.co_done) for
# every request but the close's (bid 0); qcow2.worker posts io_done to "qemu", which schedules
# it when that context is idle.
cdef bint _always(Core* c, Frame* f) noexcept:
    return True


cdef bint _compute_continues(Core* c, Frame* f) noexcept:
    return f.n == 1 and not f.s[0] and f.a[0] != 0


cdef bint _worker_continues(Core* c, Frame* f) noexcept:
    return c.qemu >= 0 and not c.ctx[c.qemu].busy


_CONTINUES[K_qcow2_io] = _always
_CONTINUES[K_qcow2_io_done] = _always
_CONTINUES[K_qcow2_compute] = _compute_continues
_CONTINUES[K_qcow2_worker] = _worker_continues


cdef Py_ssize_t _MO[2]        # Machine.sim, Machine.steps
cdef Py_ssize_t _SO[2]        # Scheduler.queue, Scheduler.ctxs
cdef Py_ssize_t _CO[4]        # Ctx.stack, .urgent, .preempted, .fifo
slot_offsets(_Machine, ("sim", "steps"), _MO)
slot_offsets(_Scheduler, ("queue", "ctxs"), _SO)
slot_offsets(_Ctx, ("stack", "urgent", "preempted", "fifo"), _CO)


cdef object _sim_cls = None
cdef Py_ssize_t _sim_off = -1


cdef bint _quick_no(object m) except -1:
    """Without converting anything: the core would run no step of m now."""
    cdef int k
    global _sim_cls, _sim_off, _ST_MAY_END
    sim = sget(m, _Machine, _MO[0], "sim")
    cls = type(sim)
    if cls is not _sim_cls:     # Scheduler, or emu_fast's FastScheduler (its slots are these)
        _sim_off = _SO[0] if cls is _Scheduler or cls.__base__ is _Scheduler else -1
        _sim_cls = cls
    q = sget(sim, cls, _sim_off, "queue")
    if type(q) is not list or not q:
        return True
    top = (<list>q)[0]
    if type(top) is not tuple or PyTuple_GET_SIZE(top) != 5:
        return True
    k = _kind_id(<object>PyTuple_GET_ITEM(top, 3))
    if k < 0:
        return True
    if _ACTIVE[k] == NULL:
        if _STOP[k]:
            _STOPPED[k] += 1
        else:
            _UNHANDLED[k] += 1
        return True
    if len(<list>q) == 1 and _CONTINUES[k] == NULL:     # (else _may_end decides, loaded)
        name = <object>PyTuple_GET_ITEM(top, 2)
        if not name:
            _ST_MAY_END += 1
            _MAYEND[k] += 1
            return True
        ctx = sim.ctxs.get(name)
        if type(ctx) is not _Ctx:
            return True
        if not (sget(ctx, _Ctx, _CO[0], "stack") or sget(ctx, _Ctx, _CO[1], "urgent")
                or sget(ctx, _Ctx, _CO[2], "preempted") or sget(ctx, _Ctx, _CO[3], "fifo")):
            _ST_MAY_END += 1
            _MAYEND[k] += 1
            return True
    return False


def run(m, long long limit=-1):
    """Run at most limit steps of m (limit < 0: no limit) in the core; the number run."""
    return bulk_run(m, limit)


cdef long long bulk_run(object m, long long limit) except -1:
    """Run at most limit steps of m (limit < 0: no limit) in the core; the number run.

    Stops before an event without a bulk handler (or of a kind stop_before names), one its
    handler bails on, and one that could be the run's last (see _may_end); the scheduler and
    m.steps are then stored back."""
    global _ST_STEPS, _ST_RUNS, _ST_REFUSED, _ST_MAY_END
    cdef _Run r
    cdef Core* c
    cdef long long n = 0
    cdef int i, nloaded = 0, res
    cdef handler_t fn
    cdef Ev* top
    cdef long long end = limit if limit >= 0 else 0x7fffffffffffffff
    if not _ENABLED or limit == 0 or _quick_no(m):
        return 0
    r = _Run()
    c = &r.c
    c.m = <PyObject*>m
    sim = m.sim
    c.sim = <PyObject*>sim
    if not _as_i64(m.steps, &c.steps):
        return 0
    if not _load_sched(c, sim) or not _load_mem(c, m):
        _ST_REFUSED += 1
        return 0
    try:
        while nloaded < _NLAYERS:
            if not _LOADS[nloaded](c):
                _ST_REFUSED += 1
                break
            nloaded += 1
        else:
            _ST_RUNS += 1
            while n < end:
                if c.nheap <= 1:
                    if c.nheap == 0:
                        break
                    if _may_end(c):
                        _ST_MAY_END += 1
                        _MAYEND[_top(c).f.kind] += 1
                        break
                top = _top(c)
                fn = _ACTIVE[top.f.kind]
                if fn == NULL:
                    if _STOP[top.f.kind]:
                        _STOPPED[top.f.kind] += 1
                    else:
                        _UNHANDLED[top.f.kind] += 1
                    break
                # the handler's frame is c.ev.f: begin() pops this event (its slot may be
                # reused by the step's pushes), and c.ev is the running event from then on
                c.ev = top[0]
                c.begun = False
                res = fn(c, &c.ev.f)
                if res != 0 or not c.begun:
                    if not c.begun:
                        if res == BAIL:
                            _BAILS[c.ev.f.kind] += 1
                            break
                        raise SystemError(f"bulk handler of {_KIND_NAMES[c.ev.f.kind]} returned "
                                          "without begin()")
                    if res == BAIL:
                        raise SystemError(f"bulk handler of {_KIND_NAMES[c.ev.f.kind]} bailed "
                                          "after begin()")
                if c.cur >= 0 and not c.decided:
                    _finish_step(c)
                c.steps += 1
                n += 1
    finally:
        for i in range(nloaded - 1, -1, -1):
            _STORES[i](c)
        if n or c.begun:
            _store_sched(c, sim)
            m.steps = c.steps
            _ST_STEPS += n
    return n


# == a test hook: the scheduler's rules on the C state ===========================================

cdef i64 _delay(object d) except? -2:
    return -1 if d is None else <i64>d


def sched_ops(sim, ops):
    """Apply scheduler operations to the C state of sim, then store it back into sim (for tests
    against emu.sim.scheduler.Scheduler doing the same).  ops: ("pop",), ("finish",),
    ("cont", kind, args, delay, preemptible), ("call", kind, args, ret_kind, ret_args, delay),
    ("block", kind, args), ("unblock", name, delay), ("post", name, kind, args, delay, urgent),
    ("at", delay, kind, args).  False (sim untouched) when sim is not representable."""
    cdef _Run r = _Run()
    cdef Core* c = &r.c
    cdef Frame f, g
    c.sim = <PyObject*>sim
    if not _load_sched(c, sim):
        return False
    names = {(<object>c.ctx[i].name): i for i in range(c.nctx)}
    try:
        for op in ops:
            name = op[0]
            if name == "pop":
                c.begun = False
                if c.nheap:
                    c.ev = _top(c)[0]
                begin(c)
            elif name == "finish":
                _finish_step(c)
            elif name == "cont":
                if not _frame_from(c, op[1], op[2], &f):
                    raise ValueError(op)
                cont(c, f, _delay(op[3]), op[4])
            elif name == "call":
                if not (_frame_from(c, op[1], op[2], &f) and _frame_from(c, op[3], op[4], &g)):
                    raise ValueError(op)
                call(c, f, g, _delay(op[5]))
            elif name == "block":
                if not _frame_from(c, op[1], op[2], &f):
                    raise ValueError(op)
                block(c, f)
            elif name == "unblock":
                unblock(c, names[op[1]], op[2])
            elif name == "post":
                if not _frame_from(c, op[2], op[3], &f):
                    raise ValueError(op)
                post(c, names[op[1]], f, op[4], op[5])
            elif name == "at":
                if not _frame_from(c, op[2], op[3], &f):
                    raise ValueError(op)
                at(c, op[1], f)
            else:
                raise ValueError(op)
    finally:
        _store_sched(c, sim)
    return True


# == a test hook: guest-RAM writes through the core's accessors ==================================

def ram_ops(mem, ops):
    """Apply writes to mem (a GuestMemory) through the core's accessors: ops are (2|4|8, gpa,
    value) (ram_w16/32/64) and (0, gpa, bytes) (ram_write); for tests against GuestMemory's
    write_u16/32/64 and write (which also log an effect record: these do not).  False (mem
    untouched) when mem is not one the core can take."""
    cdef _Run r = _Run()
    cdef Core* c = &r.c
    cdef const unsigned char[:] data
    if not _load_guest_memory(c, mem):
        return False
    for width, gpa, v in ops:
        if width == 2:
            ram_w16(c, gpa, v)
        elif width == 4:
            ram_w32(c, gpa, v)
        elif width == 8:
            ram_w64(c, gpa, v)
        elif width == 0:
            data = bytes(v)
            ram_write(c, gpa, &data[0] if len(data) else NULL, len(data))
        else:
            raise ValueError(width)
    return True
