"""`set engine py|fast|auto` on the `:` command line: which engine runs the machine."""
from __future__ import annotations

from .parser import CommandError, Spec, _at_most, _no_format, register

ENGINES = ("auto", "py", "fast")


def _p_set(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    usage = "set engine [py|fast|auto]"
    if not args or args[0] != "engine":
        got = f", not {args[0]!r}" if args else ""
        raise CommandError(f"{name}: expected 'engine'{got} (usage: {usage})", name)
    _at_most(name, args, 2, usage)
    if len(args) == 2 and args[1] not in ENGINES:
        raise CommandError(f"{name}: unknown engine {args[1]!r} (py, fast or auto)", name)
    return (args[1] if len(args) == 2 else None,)


register(Spec("set", _p_set, "set engine [py|fast|auto]",
              "choose the engine: py (Python), fast (compiled emu_fast), auto (fast for "
              "continue/goto/reverse re-runs when compiled, py for single steps)",
              ("Both engines give the same state at every step; without an argument it shows "
               "the engine in use.",),
              ("set engine fast", "set engine"), words=("engine",)))


def _handlers():
    from emu.errors import EmuError

    from .commands import Result, fail

    def do_set(cmd, session) -> Result:
        import emu_fast
        (name,) = cmd.args
        if name is not None:
            try:
                session.set_engine(name)
            except EmuError as e:
                return fail("set", f"set engine: {e}")
        return Result("set", True, (f"engine {session.engine} ({emu_fast.status()})",),
                      {"result": {"engine": session.engine, "compiled": emu_fast.available()}})

    return {"set": do_set}
