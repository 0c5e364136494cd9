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
  Session.set_engine / Session._use choose it per command (single steps, next and finish
  go through the session's own code on either engine).
* ``bulk_runner(engine)``: what Session._run (continue, goto's re-runs, replays, recording)
  delegates to: None for 'py', emu_fast.session_run for 'fast' -- the same loop compiled, with
  the breakpoint check run only at steps a C prefilter finds could match (a superset).
* ``run_until(session, engine, limit=None, stop=None, progress=None, cancelled=None,
  every=500) -> Stop`` and ``replay_to(session, target, engine)``: Session.cont (with a step
  limit and a stop test) and Session._replay_to on a given engine.
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

def bulk_runner(engine: str) -> Callable | None:
    """What Session._run delegates to on this engine: None for 'py' (its own loop), the
    compiled loop (emu_fast.session_run) for 'fast'."""
    if check_engine(engine) == "py":
        return None
    import emu_fast
    return emu_fast.require().session_run


def run_until(session, engine: str = "py", limit: int | None = None, stop=None, progress=None,
              cancelled=None, every: int = 500):
    """Session.cont on the engine, with a step limit and a stop(rec) -> Stop | None test;
    returns the session's Stop."""
    s = session
    s._step = stepper(s.m, engine)
    s._bulk = bulk_runner(engine)
    return s._done(s._run(None, True, limit, stop, cancelled, progress, every))


def replay_to(session, target: int, engine: str = "py") -> None:
    """Session._replay_to on the engine: re-run quietly (no breakpoints) up to step target."""
    session._step = stepper(session.m, engine)
    session._bulk = bulk_runner(engine)
    session._run(target, check=False)
    session.breakpoints.sync(session.m)
