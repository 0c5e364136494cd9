"""The debugger's session: one machine plus the commands a person uses to travel in it.

Forward: step (one event), next (until the layer changes), finish (until a request
completes), continue (to the end or a stop).  Every executed step is checked against the
breakpoints, watchpoints and catchpoints (`catch error` is on from the start).  Backward:
goto step N, reverse-step, reverse-next, reverse-finish, reverse-continue — through the
Timeline's checkpoints, re-running forward from the nearest one (the machine is
deterministic, so the state reached is exactly the state the forward run had).  It keeps a
bounded history of executed steps for the event log and knows why the last run stopped.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from . import introspect, views
from .debug.breakpoints import BreakpointTable, Hit, parse_command
from .debug.timeline import Timeline
from .sim.steps import GUEST_LAYERS, Step

HISTORY = 5000
CHECKPOINT_INTERVAL = 1000


@dataclass
class Stop:
    """Why a run ended.  reason: 'step', 'next', 'finish', 'end', 'error', 'breakpoint',
    'watchpoint', 'interrupted', 'limit', 'goto', 'reverse', 'start' (and 'ready')."""
    reason: str
    step: int
    message: str = ""
    hit: Hit | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        d = {"reason": self.reason, "step": self.step, "message": self.message}
        if self.hit is not None:
            d["breakpoint"] = self.hit.id
            d["match"] = self.hit.match
            for k in ("old", "new"):
                if k in self.hit.match:
                    d[k] = self.hit.match[k]
        return d


class Session:
    """Drives one Machine; every method is deterministic and usable without a UI."""

    def __init__(self, machine, image: str = "", workload: str = "",
                 checkpoint_interval: int = CHECKPOINT_INTERVAL, catch_errors: bool = True) -> None:
        self.m = machine
        self.image = image
        self.workload = workload
        self.history: deque = deque(maxlen=HISTORY)
        self.last: Step | None = None
        self.last_by_side: dict = {}
        self.stop = Stop("ready", 0, "nothing run yet")
        self.closed = False
        self.breakpoints = BreakpointTable()
        if catch_errors:
            self.breakpoints.add(parse_command("catch", "error", machine=machine), machine)
        self.timeline = Timeline(machine, interval=checkpoint_interval,
                                 extra=(self._save, self._load))
        # where the machine came from (set by whoever builds the session; a trace records it)
        self.origin: dict = {}
        # state-changing inputs in effect on the current timeline, in step order:
        # {"step": n, "input": "poke", "space": "ram", "addr": a, "bytes": hex}
        self.inputs: list[dict] = []
        # inputs a replayed trace applies whenever the run reaches their step
        self.scheduled: dict[int, list[dict]] = {}
        # the engine: "auto" runs continue, goto and reverse execution's re-runs on the
        # compiled engine when it is built and single steps in Python; "py" / "fast" force one
        self.engine = "auto"
        self._step = machine.step
        self._bulk = None           # the compiled Session._run when the engine is 'fast'

    def set_engine(self, name: str) -> None:
        """py | fast | auto (fast raises FastEngineMissing when emu_fast is not compiled)."""
        from . import engine
        if name != "auto":
            engine.check_engine(name)
        self.engine = name

    def _use(self, bulk: bool) -> None:
        """Pick the step function for the command about to run (see set_engine)."""
        from . import engine
        name = self.engine
        if name == "auto":
            import emu_fast
            name = "fast" if bulk and emu_fast.available() else "py"
        self._step = engine.stepper(self.m, name)
        self._bulk = engine.bulk_runner(name) if bulk else None

    @property
    def engine_in_use(self) -> str:
        return "py" if self._step == self.m.step else "fast"

    # -- the session's own state, checkpointed with the machine ------------------------------------
    def _save(self) -> dict:
        return {"closed": self.closed, "last": self.last, "last_by_side": dict(self.last_by_side)}

    def _load(self, d: dict) -> None:
        self.closed = d["closed"]
        self.last = d["last"]
        self.last_by_side = dict(d["last_by_side"])

    # -- running ------------------------------------------------------------------------------
    def _one(self) -> Step | None:
        rec = self._step()
        if rec is None and not self.closed:
            # the workload is done: QEMU's exit closes the image (qcow2_close), step by step
            self.closed = True
            if self.m.begin_shutdown():
                rec = self._step()
        if rec is not None:
            self._record(rec)
            self.timeline.after_step()
            if self.m.steps in self.scheduled:
                self._apply_scheduled()
        return rec

    def schedule(self, inputs: list[dict]) -> None:
        """A trace's recorded inputs: each is applied when the run reaches its step (again
        after going back before it); those of the current step are applied now."""
        self.scheduled = {}
        for i in inputs:
            self.scheduled.setdefault(i["step"], []).append(i)
        if self.m.steps in self.scheduled:
            self._apply_scheduled()

    def _apply_scheduled(self) -> None:
        for i in self.scheduled[self.m.steps]:
            if i["input"] == "poke" and i["space"] == "ram":
                self.poke(i["addr"], bytes.fromhex(i["bytes"]))
            else:
                raise ValueError(f"step {i['step']}: unknown input {i['input']} {i.get('space')}")

    def _record(self, rec: Step) -> bool:
        self.history.append(rec)
        self.last = rec
        self.last_by_side["guest" if rec.layer in GUEST_LAYERS else "host"] = rec
        return False

    def _advance(self) -> tuple[Step | None, Stop | None]:
        """One step, checked against the breakpoints: (record, stop or None)."""
        rec = self._one()
        if rec is None:
            return None, Stop("end", self.m.steps, "the workload finished")
        hit = self.breakpoints.check(self.m, rec)
        if hit is not None:
            return rec, Stop(hit.reason, rec.n, hit.message, hit)
        return rec, None

    def _done(self, stop: Stop) -> Stop:
        self.stop = stop
        return stop

    @property
    def finished(self) -> bool:
        return self.closed and not self.m.sim.queue

    def step(self, n: int = 1) -> Stop:
        """n single events (a breakpoint or an error stops early)."""
        self._use(bulk=False)
        done = 0
        for _ in range(max(1, n)):
            _rec, stop = self._advance()
            if stop is not None:
                return self._done(stop)
            done += 1
        return self._done(Stop("step", self.m.steps, f"{done} step(s)"))

    def next(self, limit: int = 100000) -> Stop:
        """Run until the next step is in another layer than the current one."""
        self._use(bulk=False)
        start_layer = self.last.layer if self.last else None
        for _ in range(limit):
            rec, stop = self._advance()
            if stop is not None:
                return self._done(stop)
            if start_layer is None or rec.layer != start_layer:
                return self._done(Stop("next", rec.n, f"now in layer {rec.layer}"))
        return self._done(Stop("limit", self.m.steps, f"no layer change in {limit} steps"))

    def finish(self, rid: int, cancelled=None, limit: int = 10_000_000) -> Stop:
        """Run until guest request rid has completed (blk_mq_end_request)."""
        self._use(bulk=False)
        if not any(r.id == rid for r in views.requests(self.m)):
            raise ValueError(f"no request {rid}")
        if rid not in self.m.guest.blkmq.rqs:
            return self._done(Stop("finish", self.m.steps, f"request {rid} had already completed"))
        for k in range(limit):
            if cancelled is not None and k % 256 == 0 and cancelled():
                return self._done(Stop("interrupted", self.m.steps, "stopped by the user"))
            rec, stop = self._advance()
            if stop is not None:
                if stop.reason == "end":
                    stop.message = f"the run ended before request {rid} completed"
                return self._done(stop)
            if rid not in self.m.guest.blkmq.rqs:
                return self._done(Stop("finish", rec.n, f"request {rid} completed"))
        return self._done(Stop("limit", self.m.steps, "step limit reached"))

    def cont(self, cancelled=None, progress=None, every: int = 500) -> Stop:
        """Continue to the end, a breakpoint, a device error, or until cancelled() says so."""
        self._use(bulk=True)
        return self._done(self._run(cancelled=cancelled, progress=progress, every=every))

    def _run(self, target: int | None = None, check: bool = True, limit: int | None = None,
             stop=None, cancelled=None, progress=None, every: int = 500) -> Stop | None:
        """The bulk loop under continue, goto's re-runs and replays: step (_one) until step
        `target` (None: no end; then None is returned), checking the breakpoints (_advance)
        when `check`; stop early after `limit` steps, when stop(rec) returns a Stop, or when
        cancelled() (asked every 64 steps) is true; progress(steps, live requests) every
        `every` steps.  With the fast engine, emu_fast runs this same loop compiled."""
        if self._bulk is not None:
            return self._bulk(self, target, check, limit, stop, cancelled, progress, every)
        m = self.m
        k = 0
        while target is None or m.steps < target:
            if limit is not None and k >= limit:
                return Stop("limit", m.steps, f"{limit} step(s) run")
            if cancelled is not None and k % 64 == 0 and cancelled():
                return Stop("interrupted", m.steps, "stopped by the user (Esc)")
            if check:
                rec, st = self._advance()
            else:
                rec = self._one()
                st = None if rec is not None else Stop("end", m.steps, "the workload finished")
            k += 1
            if st is not None:
                return st
            if stop is not None:
                st = stop(rec)
                if st is not None:
                    return st
            if progress is not None and k % every == 0:
                progress(m.steps, len(m.guest.blkmq.rqs))
        return None

    # -- breakpoints --------------------------------------------------------------------------------
    def add_breakpoint(self, verb: str, text: str) -> int:
        """break / tbreak / watch / twatch / catch / tcatch TEXT: the new breakpoint's id.
        Raises BreakpointError (a message naming the bad token) for a bad or impossible one."""
        return self.breakpoints.add(parse_command(verb, text, machine=self.m), self.m)

    # -- going back in time ---------------------------------------------------------------------------
    def _replay_to(self, target: int) -> None:
        """Re-run quietly (no breakpoints) from the restored checkpoint up to step target."""
        self._use(bulk=True)
        self._run(target, check=False)
        self.breakpoints.sync(self.m)

    def _rewind(self, target: int) -> None:
        base = self.timeline.rewind(target)
        while self.history and self.history[-1].n > base:
            self.history.pop()
        # inputs after the restored checkpoint are gone with it (recorded ones come back
        # when the re-run reaches their step)
        self.inputs = [i for i in self.inputs if i["step"] <= base]
        self._replay_to(target)

    def goto(self, target: int) -> Stop:
        """The state after step `target` (0: before anything ran).  Going forward runs without
        stopping at breakpoints; past the end it runs to the end and says so."""
        if target < 0:
            raise ValueError(f"step {target}: steps are numbered from 1 (0 is the start)")
        now = self.m.steps
        if target < now:
            self._rewind(target)
            return self._done(Stop("goto", target, f"back at step {target}"))
        self._replay_to(target)
        if self.m.steps < target:
            return self._done(Stop("end", self.m.steps, f"step {target} is past the end: the "
                                   f"workload finished at step {self.m.steps}"))
        return self._done(Stop("goto", target, f"at step {target}"))

    def when(self) -> int:
        """The current step number (gdb's `when` in record mode)."""
        return self.m.steps

    def checkpoint(self) -> int:
        """Take a checkpoint now (going back to here or later starts from it)."""
        return self.timeline.checkpoint().step

    def poke(self, gpa: int, data: bytes) -> None:
        """Write guest RAM between steps (scripts corrupt memory to watch the device react).
        Going back past this step undoes it; going back to here or later keeps it."""
        if not self.m.mem.is_mapped(gpa, len(data)):
            raise ValueError(f"{gpa:#x}+{len(data)} is outside guest RAM (0..{self.m.mem.size:#x})")
        self.timeline.poke(gpa, data)
        self.inputs.append({"step": self.m.steps, "input": "poke", "space": "ram", "addr": gpa,
                            "bytes": bytes(data).hex()})

    def _scan_back(self, want, before: int) -> int | None:
        """The largest step n < before for which want(rec) holds (rec: the Step record of step
        n, evaluated on the machine as it was right after step n), or None.  Replays earlier
        intervals from their checkpoints as needed, then leaves the machine at `before`."""
        hi = before - 1                              # the newest step to look at
        found = None
        while hi > self.timeline.checkpoints[0].step and found is None:
            base = self.timeline.base_for(hi - 1)
            self._rewind(base)
            while self.m.steps < hi:
                rec = self._one()
                if rec is None:
                    break
                if want(rec):
                    found = rec.n
            self.breakpoints.sync(self.m)
            hi = base
        return found

    def reverse_step(self, n: int = 1) -> Stop:
        target = max(0, self.m.steps - max(1, n))
        if self.m.steps == 0:
            return self._done(Stop("start", 0, "already at the start: nothing ran before"))
        self._rewind(target)
        return self._done(Stop("reverse", target, f"back {n} step(s), at step {target}"))

    def reverse_next(self) -> Stop:
        """Back to where the current layer's run of steps began (the state before its first step)."""
        if self.last is None or self.m.steps == 0:
            return self._done(Stop("start", 0, "already at the start: nothing ran before"))
        layer, now = self.last.layer, self.m.steps
        other = self._scan_back(lambda rec: rec.layer != layer, now)
        target = other if other is not None else self.timeline.checkpoints[0].step
        self._rewind(target)
        return self._done(Stop("reverse", target, f"back to before the {layer} steps, at step {target}"))

    def reverse_finish(self, rid: int) -> Stop:
        """Back to just before guest request rid was created."""
        if not any(r.id == rid for r in views.requests(self.m)):
            raise ValueError(f"no request {rid}")
        now = self.m.steps
        made = self._scan_back(lambda rec: self.m.guest.blkmq.next_rq <= rid, now)
        target = made if made is not None else self.timeline.checkpoints[0].step
        self._rewind(target)
        return self._done(Stop("reverse", target, f"before request {rid} was created, at step {target}"))

    def reverse_cont(self) -> Stop:
        """Back to the previous breakpoint hit (the state after the step that hit), or the start."""
        now = self.m.steps
        hits: dict = {}

        def hit(rec) -> bool:
            h = self.breakpoints.check(self.m, rec, dry=True)
            if h is not None:
                hits[rec.n] = h
            return h is not None
        found = self._scan_back(hit, now)
        if found is None:
            self._rewind(self.timeline.checkpoints[0].step)
            return self._done(Stop("start", self.m.steps, "no earlier breakpoint hit: at the start"))
        self._rewind(found)
        h = hits[found]
        return self._done(Stop(h.reason, found, h.message, h))

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
        if what == "breakpoints":
            return {"breakpoints": self.breakpoints.list()}
        if what == "checkpoints":
            return self.timeline.stats()
        raise ValueError(f"unknown info {what!r}")

    def status_line(self) -> str:
        t = self.m.sim.now
        return (f"step {self.m.steps}  t={t / 1000:.3f} µs  stopped: {self.stop.reason}"
                + (f" ({self.stop.message})" if self.stop.message else "")
                + f"  · engine {self.engine_in_use}" + ("" if self.engine == "auto" else " (set)"))
