"""Breakpoints, watchpoints, reverse execution and poke on the `:` command line (gdb's words).

Registered into the parser's table and the executor's dispatch on import (tui.cmdline's
__init__ imports commands, which imports this module last).  Headless, like the rest.
"""
from __future__ import annotations

import re
from dataclasses import replace

from emu.debug.breakpoints import BreakpointError

from .parser import (COMMANDS, INFO_TOPICS, CommandError, InfoTopic, Spec, _at_most, _no_format, _p_none, parse_count,
                     parse_index, parse_offset, register)

# -- parsing ------------------------------------------------------------------------------------


def _p_spec(name: str, fmt: str | None, args: list[str]) -> tuple:
    """Everything after the command word, as text (checked against the machine when run)."""
    _no_format(name, fmt)
    if not args:
        raise CommandError(f"{name}: expected what to stop on (help {name} shows the forms)", name)
    return (" ".join(args),)


def _p_ids(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    return tuple(parse_index(name, a, "breakpoint number") for a in args)


def _p_ignore(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if len(args) != 2:
        raise CommandError(f"{name}: expected a breakpoint number and a count (usage: ignore N COUNT)", name)
    return (parse_index(name, args[0], "breakpoint number"), parse_index(name, args[1], "COUNT"))


def _p_condition(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if not args:
        raise CommandError(f"{name}: expected a breakpoint number (usage: condition N [EXPR])", name)
    return (parse_index(name, args[0], "breakpoint number"), " ".join(args[1:]) or None)


def _p_count(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    _at_most(name, args, 1, f"{name} [N]")
    return (parse_count(name, args[0]) if args else 1,)


def _p_rfinish(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    _at_most(name, args, 1, f"{name} [REQUEST_ID]")
    return (parse_index(name, args[0], "REQUEST_ID") if args else None,)


_HEX = re.compile(r"^(0x)?([0-9a-fA-F]{2})+$")


def _p_poke(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    usage = "poke ram ADDR HEXBYTES (e.g. poke ram 0x10008 00000000)"
    if not args or args[0] != "ram":
        got = f", not {args[0]!r}" if args else ""
        raise CommandError(f"{name}: expected 'ram'{got} (usage: {usage})", name)
    if len(args) < 3:
        raise CommandError(f"{name}: expected an address and the bytes (usage: {usage})", name)
    _at_most(name, args, 3, usage)
    hexs = args[2].replace("_", "")
    if not _HEX.match(hexs):
        raise CommandError(f"{name}: {args[2]!r} is not hex bytes (an even number of hex digits, "
                           "e.g. 00000000)", name)
    data = bytes.fromhex(hexs[2:] if hexs.lower().startswith("0x") else hexs)
    return ("ram", parse_offset(name, args[1], "ADDR"), data)


for topic in (InfoTopic("breakpoints", None, "the breakpoints, watchpoints and catchpoints, with hits"),
              InfoTopic("checkpoints", None, "the checkpoints reverse execution starts from")):
    INFO_TOPICS[topic.name] = topic
_info = COMMANDS["info"]
COMMANDS["info"] = replace(
    _info, summary="QEMU's introspection and the debugger's tables: " + ", ".join(INFO_TOPICS),
    details=tuple(f"info {t.name}{f' [{t.arg}]' if t.arg else ''}: {t.summary}"
                  for t in INFO_TOPICS.values()) + ("Unambiguous prefixes work: info virtio-queue-e.",),
    examples=_info.examples + ("info breakpoints",), words=tuple(INFO_TOPICS))

SPEC_DETAILS = (
    "desc [q=Q] [idx=N] [head=N] [addr=A[..B]] [len=N|A..B] [flags=NEXT|WRITE|INDIRECT]",
    "     [on=add|pop|used] [indirect=yes|no]    a descriptor the driver writes (add), the",
    "     device reads in virtqueue_pop (pop), or whose chain comes back through the used ring",
    "req [type=IN|OUT|...] [sector=A..B] [len=..] [stage=NAME]   a request entering a stage",
    "step FUNCTION                               any step modelling that real function",
    "ring [q=Q] avail_idx=N | used_idx=N | inuse>=K | wrap     ring conditions",
    "Any of them may end with `if EXPR` over the match's fields (e.g. if len > 512).",
)
register(Spec("break", _p_spec, "break SPEC [if EXPR]", "stop when SPEC matches (desc, req, step, ring)",
              SPEC_DETAILS, ("break desc idx=3 on=pop", "b req type=OUT stage=done",
                             "break step virtqueue_split_pop if step > 100")), aliases=("b", "br"))
register(Spec("tbreak", _p_spec, "tbreak SPEC [if EXPR]", "a breakpoint deleted after its first stop",
              SPEC_DETAILS, ("tbreak desc on=used",)), aliases=("tb",))
register(Spec("watch", _p_spec, "watch ram ADDR[+LEN] | host OFFSET[+LEN] | reg NAME",
              "stop on a write to guest RAM, the image file or a device register (old and new bytes)",
              ("reg names: device_status, isr, vq0.last_avail_idx, vq0.inuse, ... (globs: vq0.*)",),
              ("watch ram 0x10000+16", "watch host 0x8a000+512", "watch reg device_status")))
register(Spec("catch", _p_spec, "catch error [virtio] [qcow2] [guest] [ioerr]",
              "stop on device errors (virtio_error), qcow2 corruption, guest errors, IOERR",
              ("`catch error` is on from the start (breakpoint 1); delete or disable it to run on.",),
              ("catch error", "catch error ioerr")))
register(Spec("delete", _p_ids, "delete [N ...]", "delete breakpoints (all without N)", (),
              ("delete 2", "delete")), aliases=("d",))
register(Spec("enable", _p_ids, "enable [N ...]", "enable breakpoints (all without N)", (), ("enable 2",)))
register(Spec("disable", _p_ids, "disable [N ...]", "disable breakpoints (all without N)", (),
              ("disable 1",)))
register(Spec("ignore", _p_ignore, "ignore N COUNT", "skip the next COUNT hits of breakpoint N", (),
              ("ignore 2 5",)))
register(Spec("condition", _p_condition, "condition N [EXPR]",
              "stop at breakpoint N only when EXPR holds (no EXPR: always)", (),
              ("condition 2 len > 4096", "condition 2")))
register(Spec("reverse-step", _p_count, "reverse-step [N]", "go back N steps (default 1)",
              ("The state is exactly what running forward to that step gives: guest RAM, registers,",
               "the image file on disk."), ("reverse-step", "rs 10"), run=True), aliases=("rs",))
register(Spec("reverse-next", _p_none, "reverse-next",
              "go back to before the current layer's run of steps began", (), ("rn",), run=True),
         aliases=("rn",))
register(Spec("reverse-finish", _p_rfinish, "reverse-finish [REQUEST_ID]",
              "go back to just before the request was created (default: the newest in flight)",
              (), ("reverse-finish 3",), run=True), aliases=("rf",))
register(Spec("reverse-continue", _p_none, "reverse-continue",
              "go back to the previous breakpoint hit (or the start)", (), ("rc",), run=True),
         aliases=("rc",))
register(Spec("when", _p_none, "when", "the current step number", (), ("when",)))
register(Spec("checkpoint", _p_none, "checkpoint",
              "take a checkpoint now (going back to here or later starts from it)", (), ("checkpoint",)))
register(Spec("poke", _p_poke, "poke ram ADDR HEXBYTES",
              "write bytes into guest RAM between steps (then step and watch the device react)",
              ("Going back past this step undoes it.",), ("poke ram 0x10008 00000000",)))


# -- executing -----------------------------------------------------------------------------------

def _handlers():
    from .commands import Result, fail

    def bp_error(name: str, e: BreakpointError, text: str = "") -> Result:
        msg = e.message
        if e.position and text and msg.endswith(f" at column {e.position}"):
            msg = msg[: -len(f" at column {e.position}")]
        where = f" (at column {e.position} of {text!r})" if e.position and text else ""
        return fail(name, f"{name}: {msg}{where}")

    def add(cmd, session) -> Result:
        text = cmd.args[0]
        verb = {"break": "break", "tbreak": "tbreak", "watch": "watch", "catch": "catch"}[cmd.name]
        try:
            bp_id = session.add_breakpoint(verb, text)
        except BreakpointError as e:
            return bp_error(cmd.name, e, text)
        row = session.breakpoints.get(bp_id).row()
        return Result(cmd.name, True, (f"{row['type'].capitalize()} {bp_id}: {text}",), {"result": row})

    def edit(cmd, session) -> Result:
        table = session.breakpoints
        ids = list(cmd.args) or [None]
        try:
            done = []
            for i in ids:
                done += getattr(table, cmd.name)(i)
        except BreakpointError as e:
            return bp_error(cmd.name, e)
        verb = {"delete": "deleted", "enable": "enabled", "disable": "disabled"}[cmd.name]
        text = f"{verb} {', '.join(map(str, done))}" if done else "no breakpoints"
        return Result(cmd.name, True, (text,), {"result": {"ids": done}})

    def ignore(cmd, session) -> Result:
        bp_id, n = cmd.args
        try:
            session.breakpoints.ignore(bp_id, n)
        except BreakpointError as e:
            return bp_error("ignore", e)
        return Result("ignore", True, (f"will ignore the next {n} hit(s) of breakpoint {bp_id}",),
                      {"result": {"id": bp_id, "ignore": n}})

    def condition(cmd, session) -> Result:
        bp_id, text = cmd.args
        try:
            session.breakpoints.condition(bp_id, text)
        except BreakpointError as e:
            return bp_error("condition", e, text or "")
        msg = f"breakpoint {bp_id} now stops only if {text}" if text else \
            f"breakpoint {bp_id} is now unconditional"
        return Result("condition", True, (msg,), {"result": {"id": bp_id, "condition": text}})

    def when(cmd, session) -> Result:
        n = session.when()
        return Result("when", True, (f"at step {n}",), {"result": {"step": n}})

    def checkpoint(cmd, session) -> Result:
        n = session.checkpoint()
        return Result("checkpoint", True, (f"checkpoint at step {n}",), {"result": {"step": n}})

    def poke(cmd, session) -> Result:
        _space, addr, data = cmd.args
        session.poke(addr, data)
        return Result("poke", True, (f"wrote {len(data)} byte(s) at guest RAM {addr:#x}",),
                      {"result": {"addr": addr, "len": len(data), "bytes": data.hex()}})

    def reverse(cmd, session) -> Result:
        if cmd.name == "reverse-finish":
            rid = cmd.args[0]
            if rid is None:
                live = [r.id for r in session.requests() if r.stage != "done"]
                rid = max(live) if live else None
                if rid is None:
                    return fail(cmd.name, f"{cmd.name}: no request is in flight (give a REQUEST_ID)")
            if not any(r.id == rid for r in session.requests()):
                return fail(cmd.name, f"{cmd.name}: no request {rid}")
            return Result(cmd.name, True, action=("run", cmd.name, rid))
        return Result(cmd.name, True, action=("run", cmd.name, *cmd.args))

    return {"break": add, "tbreak": add, "watch": add, "catch": add, "delete": edit,
            "enable": edit, "disable": edit, "ignore": ignore, "condition": condition,
            "when": when, "checkpoint": checkpoint, "poke": poke, "reverse-step": reverse,
            "reverse-next": reverse, "reverse-finish": reverse, "reverse-continue": reverse}


def format_breakpoints(rows: list) -> list[str]:
    """gdb's `info breakpoints` table."""
    if not rows:
        return ["No breakpoints, watchpoints or catchpoints."]
    out = ["Num  Type        Disp  Enb  Hits  What"]
    for r in rows:
        disp = "del" if r["temporary"] else "keep"
        extra = []
        if r["condition"]:
            extra.append(f"        stop only if {r['condition']}")
        if r["ignore"]:
            extra.append(f"        will ignore next {r['ignore']} hit(s)")
        out.append(f"{r['id']:<4} {r['type']:<11} {disp:<5} {'y' if r['enabled'] else 'n':<4} "
                   f"{r['hits']:<5} {r['spec']}")
        out += extra
    return out


def format_checkpoints(st: dict) -> list[str]:
    mib = st["total_bytes"] / (1 << 20)
    return [f"{st['checkpoints']} checkpoint(s) every {st['interval']} steps (at most "
            f"{st['max_checkpoints']}): steps {', '.join(map(str, st['steps'][:12]))}"
            + (" ..." if len(st["steps"]) > 12 else ""),
            f"kept: {st['ram_pages']} RAM page(s), {st['file_blocks']} file block(s), "
            f"{st['state_bytes']} bytes of component state; {mib:.1f} MiB in all"]
