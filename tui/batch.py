"""vblkdbg batch: the `:` command line's commands, non-interactively, one JSON object each.

    vblkdbg batch IMAGE --workload FILE -x COMMANDS [-ex CMD]... [machine options]

-x FILE and -ex CMD may be repeated and mixed; the commands run in the order given (like
gdb -batch).  Each command prints one line of JSON with at least `command`, `ok`, `step` and
`digest` (the machine's sha256 after it); a run that stops adds `reason`, `message`,
`breakpoint` and `match` (and `old`/`new` for a watchpoint); `info`, `x`, `break`, ... put
their structured result under `result`; a failed command has `ok: false` and `error`.
Every command runs even after a failed one; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import sys


class _Append(argparse.Action):
    """-x FILE and -ex CMD into one ordered list of (kind, value)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "script", None) or [])
        items.append(("x" if option_string == "-x" else "ex", values))
        namespace.script = items


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="raw or qcow2 image (opened behind a private overlay unless --write)")
    p.add_argument("-f", "--format", default="auto", choices=("auto", "raw", "qcow2"))
    p.add_argument("--workload", metavar="FILE", help="the guest's workload")
    p.add_argument("-x", metavar="FILE", action=_Append, dest="script",
                   help="a file of commands, one per line (# comments, blank lines skipped)")
    p.add_argument("-ex", metavar="CMD", action=_Append, dest="script", help="one command")
    p.add_argument("--write", action="store_true", help="write to IMAGE itself")


def read_script(items: list, error) -> list[tuple[str, str]]:
    """[(where, line)]: the commands in order; where is FILE:LINE or -ex."""
    out = []
    for kind, value in items or []:
        if kind == "ex":
            out.append(("-ex", value))
            continue
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            error(f"{value}: no such command file")
        except IsADirectoryError:
            error(f"{value}: is a directory, not a command file")
        except UnicodeDecodeError:
            error(f"{value}: not a text file")
        except OSError as e:
            error(f"{value}: cannot read: {e.strerror}")
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s and not s.startswith("#"):
                out.append((f"{value}:{n}", s))
    return out


def result_json(line: str, res, session) -> dict:
    """One command's JSON object (the batch contract)."""
    d = {"command": line, "ok": res.ok, "step": session.m.steps, "digest": session.m.digest()}
    data = dict(res.data or {})
    if not res.ok:
        d["error"] = res.lines[0] if res.lines else "failed"
    if "reason" in data:                     # a run
        for k in ("reason", "message", "breakpoint", "match", "old", "new", "steps", "request"):
            if k in data:
                d[k] = data[k]
    elif "result" in data:
        d["result"] = data["result"]
    elif data:
        d["result"] = data
    if res.lines:
        d["output"] = list(res.lines)
    return d


def run_batch(session, script: list[tuple[str, str]], out=None) -> int:
    from .cmdline.commands import execute_run, fail
    from .cmdline.parser import CommandError, parse
    out = sys.stdout if out is None else out
    failed = 0
    for _where, line in script:
        try:
            cmd = parse(line)
            res = execute_run(cmd, session)
        except CommandError as e:
            res = fail(e.command or "", str(e))
        failed += not res.ok
        out.write(json.dumps(result_json(line, res, session), separators=(",", ":")) + "\n")
        out.flush()
    return 1 if failed else 0
