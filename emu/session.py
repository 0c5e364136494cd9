"""The debugger's session: one machine plus the stepping commands a person uses.

step (one event), next (until the layer changes), finish (until a request completes),
continue (to the end, an error, or a cancel).  It keeps a bounded history of executed
steps for the event log and knows why the last run stopped.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from . import introspect, views
from .sim.steps import Step

HISTORY = 5000


@dataclass
class Stop:
    """Why a run ended: reason is 'step', 'next', 'finish', 'end', 'error', 'interrupted', 'limit'."""
    reason: str
    step: int
    message: str = ""


class Session:
    """Drives one Machine; every method is deterministic and usable without a UI."""

    def __init__(self, machine, image: str = "", workload: str = "") -> None:
        self.m = machine
        self.image = image
        self.workload = workload
        self.history: deque = deque(maxlen=HISTORY)
        self.last: Step | None = None
        self.last_by_side: dict = {}
        self.stop = Stop("ready", 0, "nothing run yet")
        self.closed = False

    # -- running ------------------------------------------------------------------------------
    def _one(self) -> Step | None:
        rec = self.m.step()
        if rec is None and not self.closed:
            # the workload is done: QEMU's exit closes the image (qcow2_close), step by step
            self.closed = True
            if self.m.begin_shutdown():
                rec = self.m.step()
        if rec is not None:
            self._record(rec)
        return rec

    def _record(self, rec: Step) -> bool:
        self.history.append(rec)
        self.last = rec
        self.last_by_side[views.step_view(rec).side] = rec
        return False

    @property
    def finished(self) -> bool:
        return self.closed and not self.m.sim.queue

    def _error_in(self, rec: Step) -> str:
        return next((e[1] for e in rec.effects if e[0] == "error"), "")

    def step(self, n: int = 1) -> Stop:
        """n single events (an error stops early)."""
        done = 0
        for _ in range(max(1, n)):
            rec = self._one()
            if rec is None:
                self.stop = Stop("end", self.m.steps, "the workload finished")
                return self.stop
            done += 1
            err = self._error_in(rec)
            if err:
                self.stop = Stop("error", rec.n, err)
                return self.stop
        self.stop = Stop("step", self.m.steps, f"{done} step(s)")
        return self.stop

    def next(self, limit: int = 100000) -> Stop:
        """Run until the next step is in another layer than the current one."""
        start_layer = self.last.layer if self.last else None
        for _ in range(limit):
            rec = self._one()
            if rec is None:
                self.stop = Stop("end", self.m.steps, "the workload finished")
                return self.stop
            err = self._error_in(rec)
            if err:
                self.stop = Stop("error", rec.n, err)
                return self.stop
            if start_layer is None or rec.layer != start_layer:
                self.stop = Stop("next", rec.n, f"now in layer {rec.layer}")
                return self.stop
        self.stop = Stop("limit", self.m.steps, f"no layer change in {limit} steps")
        return self.stop

    def finish(self, rid: int, cancelled=None, limit: int = 10_000_000) -> Stop:
        """Run until guest request rid has completed (blk_mq_end_request)."""
        if not any(r.id == rid for r in views.requests(self.m)):
            raise ValueError(f"no request {rid}")
        if rid not in self.m.guest.blkmq.rqs:
            self.stop = Stop("finish", self.m.steps, f"request {rid} had already completed")
            return self.stop
        for k in range(limit):
            if cancelled is not None and k % 256 == 0 and cancelled():
                self.stop = Stop("interrupted", self.m.steps, "stopped by the user")
                return self.stop
            rec = self._one()
            if rec is None:
                self.stop = Stop("end", self.m.steps, f"the run ended before request {rid} completed")
                return self.stop
            err = self._error_in(rec)
            if err:
                self.stop = Stop("error", rec.n, err)
                return self.stop
            if rid not in self.m.guest.blkmq.rqs:
                self.stop = Stop("finish", rec.n, f"request {rid} completed")
                return self.stop
        self.stop = Stop("limit", self.m.steps, "step limit reached")
        return self.stop

    def cont(self, cancelled=None, progress=None, every: int = 500) -> Stop:
        """Continue to the end, a device error, or until cancelled() says so."""
        k = 0
        while True:
            if cancelled is not None and k % 64 == 0 and cancelled():
                self.stop = Stop("interrupted", self.m.steps, "stopped by the user (Esc)")
                return self.stop
            rec = self._one()
            k += 1
            if rec is None:
                self.stop = Stop("end", self.m.steps, "the workload finished")
                return self.stop
            err = self._error_in(rec)
            if err:
                self.stop = Stop("error", rec.n, err)
                return self.stop
            if progress is not None and k % every == 0:
                progress(self.m.steps, len(self.m.guest.blkmq.rqs))

    # -- what the panes show --------------------------------------------------------------------
    def requests(self):
        return views.requests(self.m)

    def descriptors(self):
        return views.descriptors(self.m)

    def rings(self):
        return views.rings(self.m)

    def device(self):
        return views.device(self.m)

    def host_map(self):
        return views.host_map(self.m)

    def host_size(self) -> int:
        return self.m.hostfile.size

    def ram_size(self) -> int:
        return self.m.mem.size

    def read_host(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise ValueError("negative offset or length")
        return self.m.hostfile.pread(offset, max(0, min(n, self.host_size() - offset)))

    def read_ram(self, gpa: int, n: int) -> bytes:
        if not self.m.mem.is_mapped(gpa, n):
            raise ValueError(f"{gpa:#x}+{n} is outside guest RAM (0..{self.m.mem.size:#x})")
        return self.m.mem.read(gpa, n)

    def read_ram_clamped(self, gpa: int, n: int) -> bytes:
        """Guest RAM bytes for a viewer: clamped to the end of RAM instead of refused."""
        gpa = min(max(0, gpa), self.m.mem.size)
        return self.m.mem.read(gpa, max(0, min(n, self.m.mem.size - gpa)))

    def guest_to_host(self, offset: int, length: int):
        return views.guest_to_host(self.m, offset, length)

    def last_step(self):
        return views.step_view(self.last) if self.last else None

    def recent_steps(self, n: int = 200) -> list:
        return [views.step_view(r) for r in list(self.history)[-n:]]

    def chains(self) -> dict:
        """The call chain of the latest step on each side (guest, host)."""
        from .callchain import call_chain
        return {side: (rec.n, call_chain(rec.function, rec.source, rec.caller))
                for side, rec in self.last_by_side.items()}

    def info(self, what: str, arg: int | None = None) -> dict:
        if what == "virtio-status":
            return introspect.virtio_status(self.m)
        if what == "virtio-queue-status":
            return introspect.virtio_queue_status(self.m, 0)
        if what == "virtio-queue-element":
            return introspect.virtio_queue_element(self.m, arg)
        raise ValueError(f"unknown info {what!r}")

    def status_line(self) -> str:
        t = self.m.sim.now
        return (f"step {self.m.steps}  t={t / 1000:.3f} µs  stopped: {self.stop.reason}"
                + (f" ({self.stop.message})" if self.stop.message else ""))
