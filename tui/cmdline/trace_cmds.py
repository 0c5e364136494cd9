"""`record FILE [EVERY]` on the `:` command line: save the session as a vblkdbg trace."""
from __future__ import annotations

from .parser import CommandError, Spec, _at_most, _no_format, parse_count, register


def _p_record(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if not args:
        raise CommandError(f"{name}: expected the trace file to write (usage: record FILE [EVERY])",
                           name)
    _at_most(name, args, 2, "record FILE [EVERY]")
    return (args[0], parse_count(name, args[1]) if len(args) > 1 else None)


register(Spec("record", _p_record, "record FILE [EVERY]",
              "save the session so far as a trace (inputs + digests every EVERY steps)",
              ("The trace ends at the current step and holds the configuration, the image's "
               "identity, the workload and every poke in effect; `vblkdbg replay FILE --check` "
               "re-executes it, `vblkdbg FILE` opens it in the debugger.",
               "The session is re-run from the start to take the digests (and checked to reach "
               "this very state)."),
              ("record /tmp/session.trace", "record /tmp/session.trace 100")))


def _handlers():
    from emu.errors import EmuError
    from emu.trace.record import DIGEST_INTERVAL, record

    from .commands import Result, fail

    def do_record(cmd, session) -> Result:
        import os
        path, every = cmd.args
        if os.path.isdir(path):
            return fail("record", f"record: {path}: is a directory (give the trace file's name)")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return fail("record", f"record: {path}: directory {os.path.dirname(os.path.abspath(path))} "
                        "does not exist")
        if not session.origin:
            return fail("record", "record: this session was not opened from an image and a "
                        "workload file, so there is nothing to re-run")
        if session.origin.get("write"):
            return fail("record", "record: the session writes to the image itself (--write): "
                        "the content it started from is gone; record from an overlay session")
        try:
            t = record(session.origin, session.inputs, session.m.steps, path,
                       every or DIGEST_INTERVAL, expect_digest=session.m.digest())
        except (EmuError, OSError, ValueError) as e:
            msg = getattr(e, "strerror", None) or str(e)
            return fail("record", f"record: {path}: {msg}" if isinstance(e, OSError) else f"record: {e}")
        return Result("record", True,
                      (f"recorded steps 0..{t.end['step']} to {path}: {len(t.inputs)} input(s), "
                       f"{len(t.digests) + 1} digest(s)",),
                      {"result": {"file": path, "steps": t.end["step"], "inputs": len(t.inputs),
                                  "digests": len(t.digests) + 1, "digest": t.end["digest"]}})

    return {"record": do_record}
