# cython: language_level=3
# The bulk core's contract (emu_fast/_bulk.pyx): what its layer modules (_bulk_*.pyx) cimport.
#
# A run with no observer (emu_fast._core.run without on_step) hands stretches of steps to the
# bulk core.  The core keeps the scheduler (the event heap, each context's stack, queues and
# blocked continuation, now/seq/cur) in C structures for the stretch, converted from m.sim when
# it starts and back when it stops; everything else stays the Python engine's own objects
# (guest RAM and the image bytes are shared bytearrays/files; per-request dicts stay dicts).
# A handler runs one event exactly as its Python original does, but keeps no record: no
# effects, facts or detail (nobody observes these steps).
#
# Handler protocol (handler_t): h(c, f) runs the event at the top of the heap (its frame f).
#   1. It may read anything, and must decide whether it can run the event here.  If not
#      (an error path, an unusual configuration, anything it does not model), it returns
#      BAIL having changed nothing at all: the core stops, stores the scheduler back, and the
#      compiled engine runs that event itself (then the core starts again).
#   2. Otherwise it calls begin(c) (pops the event: now/cur as Scheduler.pop), then does what
#      the Python handler does, in the same order, steering the scheduler with cont/call/
#      block/unblock/post/at below, and returns 0.  finish_step runs after it.
# Exceptions propagate (the scheduler is stored back first).
#
# During a stretch the Python m.sim and m.steps are stale: read the time as c.now (after
# begin: the running event's time), the step count as c.steps (steps done before this one:
# the Python handler's m.steps), the running context as c.cur, and never call Python code
# that reads or steers m.sim (Scheduler methods, m.raise_msi, Python handlers).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.object cimport PyObject

ctypedef int64_t i64

cdef extern from *:
    """
    #define VB_NARGS 3
    """
    const int VB_NARGS

cdef enum:
    BAIL = 1
    CTX_FREE = -1       # the context index of a free event (Scheduler.at: ctx "")

cdef enum:
    K_NONE = 0          # "" (block("", ()): resume by returning)
    K_app_exit
    K_app_hrtimer
    K_app_op
    K_app_resume
    K_app_start
    K_bdrv_co_done
    K_bdrv_co_entry
    K_blk_aio_complete
    K_blk_co_entry
    K_blkmq_delay_run
    K_blkmq_dispatch
    K_blkmq_dispatch_ret
    K_blkmq_end_request
    K_blkmq_flush_plug
    K_blkmq_run_queue
    K_blkmq_run_work
    K_blkmq_start_request
    K_blkmq_submit_bio
    K_file_aio_worker
    K_file_co_entry
    K_file_co_resume
    K_file_flush_done
    K_probe_ack
    K_probe_blk_start
    K_probe_capacity
    K_probe_config_changed
    K_probe_driver
    K_probe_driver_ok
    K_probe_enable_vq
    K_probe_features
    K_probe_features_ok
    K_probe_limits
    K_probe_msix
    K_probe_reset
    K_probe_setup_vq
    K_probe_tag_set
    K_qcow2_close
    K_qcow2_co_entry
    K_qcow2_compute
    K_qcow2_io
    K_qcow2_io_done
    K_qcow2_open
    K_qcow2_worker
    K_raw_co_entry
    K_vblk_dwz_complete
    K_vblk_flush
    K_vblk_flush_complete
    K_vblk_handle_request
    K_vblk_handle_vq
    K_vblk_mrb_add
    K_vblk_pass_end
    K_vblk_pop
    K_vblk_req_complete
    K_vblk_rw_complete
    K_vblk_submit_multireq
    K_vblk_submit_requests
    K_vblkd_add_err_end
    K_vblkd_add_err_kick
    K_vblkd_add_req
    K_vblkd_add_ret
    K_vblkd_commit_notify
    K_vblkd_commit_rqs
    K_vblkd_done
    K_vblkd_done_end
    K_vblkd_map_data
    K_vblkd_queue_rq
    K_vblkd_queue_rq_end
    K_vblkd_request_done
    K_vblkd_setup_cmd
    K_vpci_notify
    K_vpci_notify_done
    K_vq_fill
    K_vq_flush
    K_vq_irq
    K_vq_notify
    K_vring_add_avail
    K_vring_add_desc
    K_vring_add_head
    K_vring_add_publish
    K_vring_add_split
    K_vring_disable_cb
    K_vring_enable_cb
    K_vring_get_buf
    K_vring_interrupt
    K_vring_kick_prepare
    K_vring_notify
    NKINDS


cdef struct Frame:
    int kind            # K_*
    int n               # number of arguments
    i64 a[3]            # the arguments: ints, or (s[i]) an index into Core.strs
    uint8_t s[3]        # 1: a[i] is a str argument (arg_str/str_arg)


cdef struct Ev:
    i64 time
    i64 seq
    int ctx             # index into Core.ctx, or CTX_FREE
    Frame f


cdef struct HeapEnt:    # an entry of the event heap (Core.hq): the event's key and its slot in Core.evs
    i64 time
    i64 seq
    Py_ssize_t slot


cdef struct Pre:        # a preempted task: (kind, args, stack)
    Frame f
    Frame* stack
    Py_ssize_t nstack
    Py_ssize_t cap


cdef struct FrameList:  # a list of (kind, args)
    Frame* v
    Py_ssize_t n
    Py_ssize_t cap


cdef struct CtxS:       # emu.sim.scheduler.Ctx
    PyObject* obj       # the Ctx (borrowed: m keeps it alive)
    PyObject* name      # its name (str, borrowed)
    i64 step_ns
    bint busy
    FrameList stack
    FrameList fifo
    FrameList urgent
    Pre* pre
    Py_ssize_t npre
    Py_ssize_t cappre
    bint has_blocked
    Frame blocked


cdef struct Core:
    PyObject* m         # the Machine (borrowed for the run)
    PyObject* sim       # m.sim
    PyObject* strs      # list: the str arguments of frames (Frame.s)
    # scheduler
    i64 now
    i64 seq
    Ev* heap            # (unused: the events are in evs, the heap order in hq)
    Py_ssize_t nheap    # the number of events (entries of hq)
    Py_ssize_t capheap  # (unused)
    CtxS ctx[8]
    int nctx
    int vcpu            # index of context "vcpu" (-1 if none)
    int qemu            # index of context "qemu" (-1 if none)
    int cur             # context of the running step (CTX_FREE for a free event)
    bint decided
    bint begun          # the running handler called begin()
    Ev ev               # the running event (set by begin)
    i64 steps           # m.steps
    # guest RAM (m.mem)
    PyObject* mem
    uint8_t* ram
    i64 ram_size
    uint8_t* dirty      # mem._dirty (one byte per 4 KiB page)
    PyObject* undo      # mem.undo (a dict; NULL when it is None)
    # the event heap: hq[0:nheap] in heapq's order over (time, seq); each entry's event is
    # evs[entry.slot]; free slots are freeslot[0:nfree]; the three arrays hold capev entries
    HeapEnt* hq
    Ev* evs
    Py_ssize_t* freeslot
    Py_ssize_t nfree
    Py_ssize_t nev      # slots handed out so far (evs[0:nev])
    Py_ssize_t capev


ctypedef int (*handler_t)(Core* c, Frame* f) except -1
ctypedef int (*load_t)(Core* c) except -1       # 1: ready; 0: this machine is not for the core
ctypedef int (*store_t)(Core* c) except -1
# continues_t(c, f): True when the Python handler, run on frame f in the present state, surely
# schedules an event (so the step cannot be a run's last; see _bulk.pyx _may_end)
ctypedef bint (*continues_t)(Core* c, Frame* f) noexcept


# -- the entry (emu_fast._core.run) -----------------------------------------------------------
cdef long long bulk_run(object m, long long limit) except -1

# -- registration (a layer module, at import) --------------------------------------------------
cdef int register_handler(int kind, handler_t fn) except -1
cdef int register_layer(load_t load, store_t store) except -1
cdef int register_continues(int kind, continues_t fn) except -1

# -- the scheduler (emu.sim.scheduler.Scheduler, same rules) -----------------------------------
# begin and cont (every step calls them) are inline below; the rest are calls
cdef int call(Core* c, Frame f, Frame ret, i64 delay=*) except -1
cdef int block(Core* c, Frame f) except -1
cdef int unblock(Core* c, int ctx, i64 delay=*) except -1
cdef int post(Core* c, int ctx, Frame f, i64 delay=*, bint urgent=*) except -1
cdef int at(Core* c, i64 delay, Frame f) except -1
cdef i64 str_arg(Core* c, object s) except -1           # a str argument's index (Frame.s)
cdef object arg_str(Core* c, i64 i)                     # ... and back

# -- guest RAM (emu.mem.guest_memory.GuestMemory; no effect records) ---------------------------
# ram_write (GuestMemory.write) is inline below: in place when there is no undo journal
cdef int bk_ram_write_slow(Core* c, i64 gpa, const void* src, i64 n) except -1   # ram_write, every case

# -- the core's own (the inline functions below call them; not for the layers) ------------------
cdef int bk_grow(Core* c) except -1                     # room for twice as many events
cdef int bk_begun_twice() except -1                     # raises SystemError
cdef int bk_cont_slow(Core* c, Frame* f, i64 delay, bint preemptible) except -1   # cont, every case


cdef inline Frame F0(int kind) noexcept nogil:
    cdef Frame f
    f.kind = kind
    f.n = 0
    f.s[0] = 0
    f.s[1] = 0
    f.s[2] = 0
    return f


cdef inline Frame F1(int kind, i64 a0) noexcept nogil:
    cdef Frame f = F0(kind)
    f.n = 1
    f.a[0] = a0
    return f


cdef inline Frame F2(int kind, i64 a0, i64 a1) noexcept nogil:
    cdef Frame f = F0(kind)
    f.n = 2
    f.a[0] = a0
    f.a[1] = a1
    return f


cdef inline Frame F3(int kind, i64 a0, i64 a1, i64 a2) noexcept nogil:
    cdef Frame f = F0(kind)
    f.n = 3
    f.a[0] = a0
    f.a[1] = a1
    f.a[2] = a2
    return f


cdef inline bint ram_ok(Core* c, i64 gpa, i64 n) noexcept nogil:
    """GuestMemory.is_mapped"""
    return 0 <= gpa and n >= 0 and gpa + n <= c.ram_size


cdef inline uint16_t ram_r16(Core* c, i64 gpa) noexcept nogil:     # (caller checks ram_ok)
    cdef uint16_t v
    memcpy(&v, c.ram + gpa, 2)
    return v


cdef inline uint32_t ram_r32(Core* c, i64 gpa) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, c.ram + gpa, 4)
    return v


cdef inline uint64_t ram_r64(Core* c, i64 gpa) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, c.ram + gpa, 8)
    return v


cdef inline int ram_write(Core* c, i64 gpa, const void* src, i64 n) except -1:
    """GuestMemory.write (no effect record): in place when there is no undo journal"""
    cdef i64 p, last
    if c.undo != NULL or not (0 <= gpa and 0 < n and gpa + n <= c.ram_size):
        return bk_ram_write_slow(c, gpa, src, n)
    memcpy(c.ram + gpa, src, n)
    p = gpa >> 12
    last = (gpa + n - 1) >> 12
    while True:
        c.dirty[p] = 1
        if p == last:
            return 0
        p += 1


cdef inline int bk_ram_put(Core* c, i64 gpa, const void* src, i64 n) except -1:
    """GuestMemory.write of a small n (2, 4, 8): in place when there is no undo journal"""
    if c.undo != NULL or gpa < 0 or gpa + n > c.ram_size:
        return bk_ram_write_slow(c, gpa, src, n)
    memcpy(c.ram + gpa, src, n)
    c.dirty[gpa >> 12] = 1
    c.dirty[(gpa + n - 1) >> 12] = 1
    return 0


cdef inline int ram_w16(Core* c, i64 gpa, uint64_t v) except -1:
    cdef uint16_t x = <uint16_t>v
    return bk_ram_put(c, gpa, &x, 2)


cdef inline int ram_w32(Core* c, i64 gpa, uint64_t v) except -1:
    cdef uint32_t x = <uint32_t>v
    return bk_ram_put(c, gpa, &x, 4)


cdef inline int ram_w64(Core* c, i64 gpa, uint64_t v) except -1:
    cdef uint64_t x = v
    return bk_ram_put(c, gpa, &x, 8)



# -- the event heap (heapq over (time, seq)) and the scheduler's per-step rules, inline ----------

cdef inline bint bk_key_lt(i64 time, i64 seq, HeapEnt* b) noexcept nogil:
    """(time, seq) < (b.time, b.seq)"""
    return time < b.time or (time == b.time and seq < b.seq)


cdef inline int bk_push(Core* c, i64 time, int ctx, Frame* f) except -1:
    """heapq.heappush of (time, ++seq, ctx, kind, args)"""
    cdef Py_ssize_t slot, pos, parentpos
    cdef HeapEnt* hq
    cdef Ev* e
    cdef i64 seq
    if c.nfree:
        c.nfree -= 1
        slot = c.freeslot[c.nfree]
    else:
        if c.nev == c.capev:
            bk_grow(c)
        slot = c.nev
        c.nev += 1
    c.seq += 1
    seq = c.seq
    e = &c.evs[slot]
    e.time = time
    e.seq = seq
    e.ctx = ctx
    e.f = f[0]
    # heapq._siftdown(heap, 0, len(heap) - 1) of the new entry, held in registers
    hq = c.hq
    pos = c.nheap
    c.nheap = pos + 1
    while pos > 0:
        parentpos = (pos - 1) >> 1
        if bk_key_lt(time, seq, &hq[parentpos]):
            hq[pos] = hq[parentpos]
            pos = parentpos
            continue
        break
    hq[pos].time = time
    hq[pos].seq = seq
    hq[pos].slot = slot
    return 0


cdef inline Py_ssize_t bk_pop(Core* c) noexcept nogil:
    """heapq.heappop: the popped event's slot (the caller frees it)"""
    # heapq.heappop's last-item-to-the-root and heapq._siftup(heap, 0), the moving item held
    # in registers (the same moves, the same comparisons)
    cdef HeapEnt* hq = c.hq
    cdef Py_ssize_t endpos = c.nheap - 1, pos = 0, childpos = 1, rightpos, parentpos
    cdef Py_ssize_t ret
    cdef HeapEnt last = hq[endpos]
    c.nheap = endpos
    if endpos == 0:
        return last.slot
    ret = hq[0].slot
    while childpos < endpos:
        rightpos = childpos + 1
        if rightpos < endpos and not bk_key_lt(hq[childpos].time, hq[childpos].seq, &hq[rightpos]):
            childpos = rightpos
        hq[pos] = hq[childpos]
        pos = childpos
        childpos = 2 * pos + 1
    while pos > 0:
        parentpos = (pos - 1) >> 1
        if bk_key_lt(last.time, last.seq, &hq[parentpos]):
            hq[pos] = hq[parentpos]
            pos = parentpos
            continue
        break
    hq[pos] = last
    return ret


cdef inline int begin(Core* c) except -1:
    """Scheduler.pop, for the event the running handler takes"""
    cdef Py_ssize_t slot
    if c.begun:
        return bk_begun_twice()
    slot = bk_pop(c)
    # c.ev already holds the event (bulk_run and sched_ops copy the top there before the handler)
    c.freeslot[c.nfree] = slot
    c.nfree += 1
    c.now = c.ev.time
    c.cur = c.ev.ctx
    c.decided = False
    c.begun = True
    return 0


cdef inline int cont(Core* c, Frame f, i64 delay=-1, bint preemptible=False) except -1:
    """Scheduler.cont (delay < 0: None)"""
    cdef CtxS* x
    if c.cur < 0 or (preemptible and c.ctx[c.cur].urgent.n):
        return bk_cont_slow(c, &f, delay, preemptible)
    x = &c.ctx[c.cur]
    c.decided = True
    return bk_push(c, c.now + (x.step_ns if delay < 0 else delay), c.cur, &f)
