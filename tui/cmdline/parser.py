"""The `:` command line's grammar: one line of text -> a canonical `Command`.

Pure Python (no Textual, no Rich, no `eval`).  gdb words where gdb has them (step, next,
finish, continue, x), QEMU's HMP names for introspection (info virtio-status, ...).

Every command is one row of `COMMANDS` (its argument parser, usage and help text); aliases
are the one dict `ALIASES`.  Adding a command later (break, watch, reverse-*, ...) is one
`register(Spec(...), aliases=(...))` call: help, completion and the dispatcher in
`commands.py` pick it up from the table.

Canonical arguments (`Command.args`):

    step      (N,)                      N >= 1, default 1
    next      ()
    finish    (rid,) or (None,)         None: let `commands` pick the default request
    continue  ()
    goto      ("host" | "ram", offset)
    info      (topic, head-or-None)     topic is a full name from INFO_TOPICS
    x         ("ram" | "host", addr, count)
    help      (name,) or (None,)        name is canonical
    ""        ()                        a blank line
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

from emu.workload import parse_size

SECTOR_SIZE = 512
X_DEFAULT_COUNT = 16
X_MAX_COUNT = 4096


@dataclass(frozen=True)
class Command:
    """One parsed line: the canonical command name, its canonical arguments, the text typed."""
    name: str
    args: tuple = ()
    raw: str = ""


class CommandError(Exception):
    """A malformed line; str(e) is one line saying what is wrong and where."""

    def __init__(self, message: str, command: str = "") -> None:
        super().__init__(message)
        self.command = command


ArgParser = Callable[[str, "str | None", "list[str]"], tuple]


@dataclass(frozen=True)
class Spec:
    """One command: how to parse its arguments and how to explain it."""
    name: str
    parse: ArgParser            # (name, "/fmt" or None, argument tokens) -> canonical args
    usage: str                  # e.g. "step [N]"
    summary: str                # one line for `help`
    details: tuple = ()         # more lines for `help NAME`
    examples: tuple = ()
    run: bool = False           # runs the machine: the app does it in a worker
    takes_format: bool = False  # accepts NAME/FMT (x/16xb)
    words: tuple = ()           # keywords completed after the command name
    aliases: tuple = field(default=())


COMMANDS: dict[str, Spec] = {}
ALIASES: dict[str, str] = {}


def register(spec: Spec, aliases: tuple = ()) -> Spec:
    """Add a command (and its aliases) to the table; names and aliases must be new."""
    for word in (spec.name, *aliases):
        if word in COMMANDS or word in ALIASES:
            raise ValueError(f"command word {word!r} is already taken")
    spec = replace(spec, aliases=tuple(aliases))
    COMMANDS[spec.name] = spec
    for a in aliases:
        ALIASES[a] = spec.name
    return spec


def canonical(word: str) -> str | None:
    """The canonical command name for a name or alias, or None."""
    if word in COMMANDS:
        return word
    return ALIASES.get(word)


# -- numbers ----------------------------------------------------------------------------------

_INT = re.compile(r"^(0x[0-9a-fA-F]+|\d+)$")


def _clean(tok: str) -> str:
    """Allow '_' as a digit separator (0x0048_a000)."""
    return tok.replace("_", "") if re.fullmatch(r"[0-9A-Za-z]+(_[0-9A-Za-z]+)+", tok) else tok


def parse_count(cmd: str, tok: str, what: str = "N") -> int:
    """A positive count: decimal or 0x hex."""
    t = _clean(tok)
    if t.startswith("-") and _INT.match(t[1:]):
        raise CommandError(f"{cmd}: {what} must be a positive number, not {tok!r}", cmd)
    if not _INT.match(t):
        raise CommandError(f"{cmd}: {tok!r} is not a number", cmd)
    n = int(t, 0)
    if n < 1:
        raise CommandError(f"{cmd}: {what} must be at least 1, not {tok!r}", cmd)
    return n


def parse_index(cmd: str, tok: str, what: str) -> int:
    """A non-negative integer (request id, descriptor head): decimal or 0x hex."""
    t = _clean(tok)
    if t.startswith("-") and _INT.match(t[1:]):
        raise CommandError(f"{cmd}: {what} must not be negative ({tok!r})", cmd)
    if not _INT.match(t):
        raise CommandError(f"{cmd}: {what} {tok!r} is not a number", cmd)
    return int(t, 0)


def parse_offset(cmd: str, tok: str, what: str, sectors: bool = False) -> int:
    """An address or offset: decimal, 0x hex, k/M/G suffixes; with sectors also s:SECTOR."""
    t = _clean(tok)
    if t.lower().startswith("s:"):
        if not sectors:
            raise CommandError(f"{cmd}: s:SECTOR is only for host offsets ({tok!r})", cmd)
        sector = t[2:]
        if not sector.startswith("-") and not re.match(r"^(0x[0-9a-fA-F]+|\d+)[kKmMgG]?$", sector):
            raise CommandError(f"{cmd}: SECTOR {sector!r} is not a number (e.g. s:9296)", cmd)
        return parse_offset(cmd, sector, "SECTOR") * SECTOR_SIZE
    if t.startswith("-"):
        raise CommandError(f"{cmd}: {what} must not be negative ({tok!r})", cmd)
    try:
        return parse_size(t)
    except ValueError:
        hint = ", s:SECTOR" if sectors else ""
        raise CommandError(f"{cmd}: {what} {tok!r} is not a number "
                           f"(use e.g. 65536, 0x10000, 64k{hint})", cmd) from None


def _no_format(name: str, fmt: str | None) -> None:
    if fmt is not None:
        raise CommandError(f"{name}: takes no /FORMAT ({name}{fmt})", name)


def _at_most(name: str, args: list[str], n: int, usage: str) -> None:
    if len(args) > n:
        raise CommandError(f"{name}: unexpected {args[n]!r} (usage: {usage})", name)


# -- argument parsers ---------------------------------------------------------------------------

def _p_step(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    _at_most(name, args, 1, "step [N]")
    return (parse_count(name, args[0]) if args else 1,)


def _p_none(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if args:
        raise CommandError(f"{name}: takes no arguments (got {args[0]!r})", name)
    return ()


def _p_finish(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    _at_most(name, args, 1, "finish [REQUEST_ID]")
    return (parse_index(name, args[0], "REQUEST_ID") if args else None,)


GOTO_USAGE = "goto host OFFSET | goto ram ADDR | goto step N"


def _p_goto(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if not args:
        raise CommandError(f"{name}: expected where to go (usage: {GOTO_USAGE}, "
                           "e.g. goto host s:9296)", name)
    space = args[0]
    if space == "step":
        if len(args) < 2:
            raise CommandError(f"{name}: missing N (usage: goto step N; 0 is the start)", name)
        _at_most(name, args, 2, "goto step N")
        return ("step", parse_index(name, args[1], "step N"))
    if space not in ("host", "ram"):
        raise CommandError(f"{name}: expected 'host', 'ram' or 'step', not {space!r} "
                           f"(usage: {GOTO_USAGE})", name)
    what = "OFFSET" if space == "host" else "ADDR"
    if len(args) < 2:
        raise CommandError(f"{name}: missing {what} (usage: goto {space} {what})", name)
    _at_most(name, args, 2, f"goto {space} {what}")
    return (space, parse_offset(name, args[1], what, sectors=space == "host"))


@dataclass(frozen=True)
class InfoTopic:
    """One `info` subcommand."""
    name: str
    arg: str | None     # the optional argument's name, e.g. "HEAD"
    summary: str


INFO_TOPICS: dict[str, InfoTopic] = {t.name: t for t in (
    InfoTopic("virtio-status", None,
              "the device: status bits, features (guest/host), broken, isr (QEMU field names)"),
    InfoTopic("virtio-queue-status", None,
              "queue 0: inuse, used_idx, last_avail_idx, shadow_avail_idx, the ring addresses"),
    InfoTopic("virtio-queue-element", "HEAD",
              "the descriptor chain at HEAD (default: the next one the device pops)"),
)}


def resolve_topic(word: str) -> str:
    """The full topic name for a name or an unambiguous prefix of one."""
    if word in INFO_TOPICS:
        return word
    found = [t for t in INFO_TOPICS if t.startswith(word)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(INFO_TOPICS)
    if found:
        raise CommandError(f"info: {word!r} is ambiguous ({', '.join(found)})", "info")
    raise CommandError(f"info: unknown topic {word!r} (topics: {names})", "info")


def _p_info(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    if not args:
        raise CommandError(f"info: expected a topic ({', '.join(INFO_TOPICS)})", name)
    topic = INFO_TOPICS[resolve_topic(args[0])]
    rest = args[1:]
    if topic.arg is None:
        if rest:
            raise CommandError(f"info {topic.name}: takes no argument (got {rest[0]!r})", name)
        return (topic.name, None)
    _at_most(f"info {topic.name}", rest, 1, f"info {topic.name} [{topic.arg}]")
    return (topic.name, parse_index(f"info {topic.name}", rest[0], topic.arg) if rest else None)


X_USAGE = "x/Nxb ADDR | x/Nxb host OFFSET"
_XFMT = re.compile(r"^/(\d*)([a-z]*)$")


def _x_count(fmt: str) -> int:
    m = _XFMT.match(fmt)
    if not m or not (m.group(1) or m.group(2)):
        raise CommandError(f"x: bad format {fmt!r}: expected x/Nxb ADDR, e.g. x/16xb 0x10000", "x")
    letters = m.group(2)
    for ch in letters:
        if ch not in "xb":
            raise CommandError(f"x: format {ch!r} is not supported, only xb (hex bytes), "
                               "e.g. x/16xb 0x10000", "x")
    if len(set(letters)) != len(letters):
        raise CommandError(f"x: bad format {fmt!r}: expected x/Nxb ADDR, e.g. x/16xb 0x10000", "x")
    if not m.group(1):
        return X_DEFAULT_COUNT
    n = int(m.group(1))
    if not 1 <= n <= X_MAX_COUNT:
        raise CommandError(f"x: count must be 1..{X_MAX_COUNT}, not {n}", "x")
    return n


def _p_x(name: str, fmt: str | None, args: list[str]) -> tuple:
    if fmt is None and args and args[0].startswith("/"):     # QEMU style: xp /16bx ADDR
        fmt, args = args[0], args[1:]
    count = _x_count(fmt) if fmt is not None else X_DEFAULT_COUNT
    space = "ram"
    if args and args[0] in ("host", "ram"):
        space, args = args[0], args[1:]
    what = "OFFSET" if space == "host" else "ADDR"
    if not args:
        eg = "x/16xb host 0" if space == "host" else "x/16xb 0x10000"
        raise CommandError(f"x: expected x/Nxb {'host ' if space == 'host' else ''}{what}, "
                           f"e.g. {eg}", "x")
    if len(args) > 1:
        raise CommandError(f"x: unexpected {args[1]!r} after the "
                           f"{'offset' if space == 'host' else 'address'} "
                           f"(usage: {X_USAGE})", "x")
    return (space, parse_offset("x", args[0], what, sectors=space == "host"), count)


def _p_help(name: str, fmt: str | None, args: list[str]) -> tuple:
    _no_format(name, fmt)
    _at_most(name, args, 1, "help [COMMAND]")
    if not args:
        return (None,)
    word = args[0].split("/", 1)[0]
    target = canonical(word)
    if target is None:
        raise CommandError(f"help: unknown command {args[0]!r} (try 'help')", name)
    return (target,)


# -- the table ------------------------------------------------------------------------------------

register(Spec("step", _p_step, "step [N]", "run N steps (default 1); a device error stops early",
              ("One step is one action of one layer: write a descriptor, kick, pop a chain,",
               "pwrite to the host file, ..."), ("step", "s 10"), run=True), aliases=("s",))
register(Spec("next", _p_none, "next", "run until the next step is in another layer",
              ("e.g. from the guest's virtio_ring to virtio-pci, or from qcow2 to file.",),
              ("next", "n"), run=True), aliases=("n",))
register(Spec("finish", _p_finish, "finish [REQUEST_ID]",
              "run until the guest request completes (default: the oldest in flight)",
              ("Stops at blk_mq_end_request of that request, at a device error, or at the end.",),
              ("finish", "f 3"), run=True), aliases=("f",))
register(Spec("continue", _p_none, "continue", "run to the end of the workload or a device error",
              ("Esc interrupts a long run.",), ("continue", "c"), run=True),
         aliases=("c", "cont"))
register(Spec("goto", _p_goto, GOTO_USAGE,
              "show the host image at OFFSET (or s:SECTOR) or guest RAM at ADDR; or travel to step N",
              ("OFFSET and ADDR: decimal, 0x hex or with a k/M/G suffix; s:SECTOR = SECTOR*512.",
               "goto step N: the state right after step N (0: before anything ran), backward or",
               "forward; past the end it runs to the end and says so."),
              ("goto host 0x48a000", "g host s:9296", "goto ram 64k", "goto step 120"),
              words=("host", "ram", "step")),
         aliases=("g",))
register(Spec("info", _p_info, "info TOPIC [ARG]",
              "QEMU's introspection: " + ", ".join(INFO_TOPICS),
              tuple(f"info {t.name}{f' [{t.arg}]' if t.arg else ''}: {t.summary}"
                    for t in INFO_TOPICS.values())
              + ("Unambiguous prefixes work: info virtio-queue-e.",),
              ("info virtio-status", "i virtio-queue-status", "info virtio-queue-element 0"),
              words=tuple(INFO_TOPICS)), aliases=("i",))
register(Spec("x", _p_x, "x/Nxb ADDR | x/Nxb host OFFSET",
              "examine N bytes (default 16, at most 4096) of guest RAM or of the host image",
              ("Like QEMU's xp /Nbx (x/Nbx and xp are accepted too); ADDR is guest-physical.",),
              ("x/16xb 0x10000", "x/8xb host 0", "x host s:9296"), takes_format=True,
              words=("host", "ram")), aliases=("xp",))
register(Spec("backtrace", _p_none, "backtrace",
              "the full guest and host call chains of the latest step on each side",
              ("Each frame is a real Linux or QEMU function with its source file; the Steps pane",
               "shows the innermost frames of the same chains."), ("backtrace", "bt")),
         aliases=("bt", "where"))
register(Spec("help", _p_help, "help [COMMAND]", "list the commands, or explain one",
              (), ("help", "help x")), aliases=("h",))


# -- the entry point ------------------------------------------------------------------------------

def parse(line: str) -> Command:
    """Parse one command line; raise CommandError with a one-line message if it is malformed."""
    text = line.strip()
    if text.startswith(":"):
        text = text[1:].strip()
    if not text:
        return Command("", (), line)
    tokens = text.split()
    head, fmt = tokens[0], None
    if "/" in head:
        head, rest = head.split("/", 1)
        fmt = "/" + rest
    name = canonical(head)
    if name is None:
        word = head or tokens[0]
        raise CommandError(f"unknown command {word!r} (try 'help')")
    spec = COMMANDS[name]
    if fmt is not None and not spec.takes_format:
        raise CommandError(f"{name}: takes no /FORMAT ({tokens[0]})", name)
    return Command(name, spec.parse(name, fmt, tokens[1:]), line)
