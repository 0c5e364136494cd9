"""Execution engines: the Python engine ('py', Machine.step) and the compiled one ('fast', emu_fast).

Both run the same Machine object with the same handlers to bit-identical results (the same
Step records, digest, guest RAM, image bytes and step count), so the engine can change
between any two steps; nothing is converted.  'fast' without the compiled extension raises
emu_fast.FastEngineMissing (an EmuError): there is no silent fallback.

What the session / CLI / TUI call
---------------------------------

* ``check_engine(name) -> str``: validate a ``--engine py|fast`` / ``set engine`` value (raises
  EngineError, an EmuError, for an unknown name and FastEngineMissing for 'fast' when it is
  not compiled).  Call it when the option is parsed, so the error comes before any run.
* ``stepper(machine, engine) -> step()``: the function to call instead of ``machine.step()``.
  The simplest complete wiring of Session is one line in ``Session._one``::

      rec = self._step()          # was: rec = self.m.step()  (both places in _one)

  with ``self._step = engine.stepper(self.m, self.engine)`` set in __init__ and again by
  ``set engine``.  Then step/next/finish/continue/goto/reverse-* (their re-execution goes
  through _one) all run on the chosen engine, through the session's own code, so the stop
  step is the same by construction.  Calling stepper(m, "py") also detaches the compiled
  methods, so 'py' is pure Python again.
* ``run_until(session, engine, limit=None, stop=None, progress=None, cancelled=None,
  every=500) -> Stop``: Session.cont on the given engine without editing Session (it
  repeats _one/_advance with the engine's step; it uses session._record,
  session.timeline.after_step, session.scheduled/_apply_scheduled, session.closed,
  session.breakpoints.check and session._done, exactly as Session does).  ``limit``: at
  most that many steps, then Stop('limit'); ``stop(rec) -> Stop | None`` ends the run after
  a step (e.g. `finish`); progress(steps, requests_in_flight) every `every` steps;
  cancelled() checked every 64 steps.
* ``replay_to(session, target, engine)``: Session._replay_to (quiet re-execution, no
  breakpoints) on the engine: goto / reverse execution's re-run.
* ``run(machine, engine, max_steps=None, on_step=None) -> str``: Machine.run on the engine
  (trace replays without a session, benchmarks).
* ``version_line() -> str``: "emu_fast: compiled (Cython X.Y)" / "emu_fast: not compiled"
  for ``vblkdbg --version``; ``emu_fast.bench.run_bench(as_json)`` for ``vblkdbg bench``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from .errors import EmuError

ENGINES = ("py", "fast")


class EngineError(EmuError):
    """An unknown engine name."""


def check_engine(name: str) -> str:
    """The engine name, validated; 'fast' must be compiled."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (py or fast)")
    if name == "fast":
        import emu_fast
        emu_fast.require()
    return name


def version_line() -> str:
    try:
        import emu_fast
    except ImportError:             # an install from before emu_fast existed
        return "emu_fast: not installed (reinstall vblkdbg with `pip install .`)"
    return emu_fast.status()


def set_engine(machine, engine: str) -> None:
    """Make the machine's helpers (scheduler, guest memory) those of the engine."""
    import emu_fast
    if check_engine(engine) == "fast":
        emu_fast.attach(machine)
    else:
        emu_fast.detach(machine)


def stepper(machine, engine: str) -> Callable:
    """step() -> Step | None for this machine on this engine (see the module doc)."""
    set_engine(machine, engine)
    if engine == "py":
        return machine.step
    import emu_fast
    return partial(emu_fast.require().step, machine)


def run(machine, engine: str, max_steps: int | None = None, on_step=None) -> str:
    """Machine.run on the engine: 'end', 'steps' or 'stopped'."""
    set_engine(machine, engine)
    if engine == "py":
        return machine.run(max_steps, on_step)
    import emu_fast
    return emu_fast.run(machine, max_steps, on_step)


# -- the session's loops, on an engine ------------------------------------------------------------

def _one(s, step):
    """Session._one with `step` for self.m.step."""
    rec = step()
    if rec is None and not s.closed:
        s.closed = True
        if s.m.begin_shutdown():
            rec = step()
    if rec is not None:
        s._record(rec)
        s.timeline.after_step()
        if s.m.steps in s.scheduled:
            s._apply_scheduled()
    return rec


def run_until(session, engine: str = "py", limit: int | None = None, stop=None, progress=None,
              cancelled=None, every: int = 500):
    """Session.cont on the engine (see the module doc); returns the session's Stop."""
    from .session import Stop
    step = stepper(session.m, engine)
    s = session
    m = s.m
    check = s.breakpoints.check
    k = 0
    while True:
        if limit is not None and k >= limit:
            return s._done(Stop("limit", m.steps, f"{limit} step(s) run"))
        if cancelled is not None and k % 64 == 0 and cancelled():
            return s._done(Stop("interrupted", m.steps, "stopped by the user (Esc)"))
        rec = _one(s, step)
        k += 1
        if rec is None:
            return s._done(Stop("end", m.steps, "the workload finished"))
        hit = check(m, rec)
        if hit is not None:
            return s._done(Stop(hit.reason, rec.n, hit.message, hit))
        if stop is not None:
            st = stop(rec)
            if st is not None:
                return s._done(st)
        if progress is not None and k % every == 0:
            progress(m.steps, len(m.guest.blkmq.rqs))


def replay_to(session, target: int, engine: str = "py") -> None:
    """Session._replay_to on the engine: re-run quietly (no breakpoints) up to step target."""
    step = stepper(session.m, engine)
    while session.m.steps < target:
        if _one(session, step) is None:
            break
    session.breakpoints.sync(session.m)
