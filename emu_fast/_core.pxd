# The compiled scheduler's C entry points, for the handler modules (cimport emu_fast._core).
# Each is exactly the emu.sim.scheduler.Scheduler method it names (on a FastScheduler it runs
# the compiled rules; on any other scheduler object it calls that object's own method), so a
# compiled handler's `sched_cont(m.sim, ...)` is its Python original's `m.sim.cont(...)`.

cdef int sched_cont(object sim, object kind, object args=*, object delay=*,
                    bint preemptible=*) except -1
cdef int sched_call(object sim, object kind, object args, object ret_kind, object ret_args=*,
                    object delay=*) except -1
cdef int sched_block(object sim, object kind, object args=*) except -1
cdef int sched_unblock(object sim, object name, object delay=*) except -1
cdef int sched_post(object sim, object name, object kind, object args=*, object delay=*,
                    bint urgent=*) except -1
cdef int sched_at(object sim, object delay, object kind, object args=*) except -1
