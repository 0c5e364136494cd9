"""Discrete-event scheduler with serial execution contexts (virtual ns; ties broken by sequence).

Each context (the guest vCPU, QEMU's main loop) runs one task at a time; a task is a chain
of steps written in continuation-passing style, so its whole state is plain data: the
next (kind, args) and a stack of return frames.  Free events (a thread-pool pwrite finishing,
an interrupt message in flight) belong to no context.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from heapq import heappop, heappush

Frame = tuple  # (kind: str, args: tuple)


@dataclass(slots=True)
class Ctx:
    """One serial executor: the running task's return stack and the tasks waiting their turn."""
    name: str
    step_ns: int
    busy: bool = False
    stack: list = field(default_factory=list)      # return frames of the running task
    fifo: list = field(default_factory=list)       # queued tasks (kind, args)
    urgent: list = field(default_factory=list)     # queued interrupts (kind, args)
    preempted: list = field(default_factory=list)  # [(kind, args, stack)] tasks an interrupt preempted
    blocked: tuple | None = None                   # continuation of a task that waits (e.g. MMIO exit)

    def state(self) -> dict:
        return {"name": self.name, "busy": self.busy, "stack": list(self.stack),
                "fifo": list(self.fifo), "urgent": list(self.urgent),
                "preempted": [list(p) for p in self.preempted], "blocked": self.blocked}


class Scheduler:
    """The event queue and the context rules; handlers steer it with cont/call/post/block."""

    __slots__ = ("now", "seq", "queue", "ctxs", "cur", "_decided")   # (the compiled engine reads them at their offsets)

    def __init__(self) -> None:
        self.now = 0
        self.seq = 0
        # a binary heap of (time, seq, ctx, kind, args): (time, seq) is unique, so the heap
        # pops exactly the order a sorted list would; state() lists it sorted
        self.queue: list = []
        self.ctxs: dict[str, Ctx] = {}
        self.cur: str = ""          # context of the step being executed
        self._decided = False

    # -- set-up -------------------------------------------------------------------
    def add_ctx(self, name: str, step_ns: int) -> None:
        self.ctxs[name] = Ctx(name, step_ns)

    def _schedule(self, delay: int, ctx: str, kind: str, args: tuple) -> None:
        self.seq += 1
        heappush(self.queue, (self.now + delay, self.seq, ctx, kind, args))

    def pop(self):
        """Remove and return the earliest event, or None when nothing is left."""
        if not self.queue:
            return None
        ev = heappop(self.queue)
        self.now = ev[0]
        self.cur = ev[2]
        self._decided = False
        return ev

    def peek_time(self) -> int | None:
        return self.queue[0][0] if self.queue else None

    # -- what a step can do next ------------------------------------------------------
    def cont(self, kind: str, args: tuple = (), delay: int | None = None,
             preemptible: bool = False) -> None:
        """The running task continues with (kind, args); an interrupt may cut in if preemptible."""
        ctx = self.ctxs[self.cur]
        d = ctx.step_ns if delay is None else delay
        self._decided = True
        if preemptible and ctx.urgent:
            ctx.preempted.append((kind, args, ctx.stack))
            ctx.stack = []
            k, a = ctx.urgent.pop(0)
            self._schedule(d, ctx.name, k, a)
            return
        self._schedule(d, ctx.name, kind, args)

    def call(self, kind: str, args: tuple, ret_kind: str, ret_args: tuple = (),
             delay: int | None = None) -> None:
        """Run (kind, args) as a callee; when it returns, continue with (ret_kind, ret_args)."""
        self.ctxs[self.cur].stack.append((ret_kind, ret_args))
        self.cont(kind, args, delay)

    def block(self, kind: str, args: tuple = ()) -> None:
        """Suspend the running task (its context stays busy) until unblock()."""
        ctx = self.ctxs[self.cur]
        ctx.blocked = (kind, args)
        self._decided = True

    def unblock(self, name: str, delay: int = 0) -> None:
        """Resume a blocked task: at its stored continuation, or (kind "") by returning."""
        ctx = self.ctxs[name]
        if ctx.blocked is None:
            return
        kind, args = ctx.blocked
        ctx.blocked = None
        if not kind:
            if not ctx.stack:
                self._start_next(ctx, delay)
                return
            kind, args = ctx.stack.pop()
        self._schedule(delay, name, kind, args)

    def post(self, name: str, kind: str, args: tuple = (), delay: int = 0,
             urgent: bool = False) -> None:
        """Queue a new task on a context; it starts now+delay if the context is idle."""
        ctx = self.ctxs[name]
        if not ctx.busy:
            ctx.busy = True
            self._schedule(delay, name, kind, args)
        elif urgent:
            ctx.urgent.append((kind, args))
        else:
            ctx.fifo.append((kind, args))

    def at(self, delay: int, kind: str, args: tuple = ()) -> None:
        """A free event, outside every context (timers, I/O completions, messages in flight)."""
        self._schedule(delay, "", kind, args)

    def finish_step(self) -> None:
        """After a handler: an undecided step returns to its caller frame, or ends the task."""
        if not self.cur or self._decided:
            return
        ctx = self.ctxs[self.cur]
        if ctx.stack:
            kind, args = ctx.stack.pop()
            self._schedule(ctx.step_ns, ctx.name, kind, args)
            return
        self._start_next(ctx)

    def _start_next(self, ctx: Ctx, delay: int | None = None) -> None:
        if ctx.urgent:
            kind, args = ctx.urgent.pop(0)
        elif ctx.preempted:
            kind, args, ctx.stack = ctx.preempted.pop()
        elif ctx.fifo:
            kind, args = ctx.fifo.pop(0)
        else:
            ctx.busy = False
            return
        self._schedule(ctx.step_ns if delay is None else delay, ctx.name, kind, args)

    # -- state --------------------------------------------------------------------
    def state(self) -> dict:
        return {"now": self.now, "seq": self.seq, "queue": sorted(self.queue),
                "ctxs": [self.ctxs[k].state() for k in sorted(self.ctxs)]}
