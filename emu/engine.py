"""Execution engines: the Python engine ('py', Machine.step) and the compiled one ('fast', emu_fast).

Both run the same Machine object with the same handlers to bit-identical results (the same
Step records, digest, guest RAM, image bytes and step count), so the engine can change
between any two steps; nothing is converted.  'fast' without the compiled extension raises
emu_fast.FastEngineMissing (an EmuError): there is no silent fallback.

How it is wired
---------------

* ``check_engine(name) -> str`` validates ``--engine py|fast`` / ``set engine`` (EngineError
  for an unknown name, FastEngineMissing for 'fast' when it is not compiled).
* ``stepper(machine, engine) -> step()``: what Session._one calls instead of Machine.step;
  Session.set_engine / Session._use choose it per command, so step, next, finish, continue,
  goto and the reverse commands' re-runs go through the session's own code on either engine
  and stop at the same step by construction.
* ``run_until(session, engine, limit=None, stop=None, progress=None, cancelled=None,
  every=500) -> Stop`` and ``replay_to(session, target, engine)``: Session.cont (with a step
  limit and a stop test) and Session._replay_to on a given engine, through _advance / _one.
* ``run(machine, engine, max_steps=None, on_step=None) -> str``: Machine.run on the engine
  (headless runs, benchmarks).
* ``version_line() -> str`` for ``vblkdbg --version``; ``emu_fast.bench.run_bench`` for
  ``vblkdbg bench``.
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

def run_until(session, engine: str = "py", limit: int | None = None, stop=None, progress=None,
              cancelled=None, every: int = 500):
    """Session.cont on the engine, through the session's own _advance (see the module doc),
    with a step limit and a stop(rec) -> Stop | None test; returns the session's Stop."""
    from .session import Stop
    s = session
    s._step = stepper(s.m, engine)
    k = 0
    while True:
        if limit is not None and k >= limit:
            return s._done(Stop("limit", s.m.steps, f"{limit} step(s) run"))
        if cancelled is not None and k % 64 == 0 and cancelled():
            return s._done(Stop("interrupted", s.m.steps, "stopped by the user (Esc)"))
        rec, st = s._advance()
        k += 1
        if st is not None:
            return s._done(st)
        if stop is not None:
            st = stop(rec)
            if st is not None:
                return s._done(st)
        if progress is not None and k % every == 0:
            progress(s.m.steps, len(s.m.guest.blkmq.rqs))


def replay_to(session, target: int, engine: str = "py") -> None:
    """Session._replay_to on the engine: re-run quietly (no breakpoints) up to step target."""
    session._step = stepper(session.m, engine)
    while session.m.steps < target:
        if session._one() is None:
            break
    session.breakpoints.sync(session.m)
