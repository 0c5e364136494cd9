"""Executing parsed commands against a `Session`, headless.

`execute(cmd, session)` answers every command that needs no UI (help, info, x) with lines
of text and structured data, and turns the rest into an `action` the app performs:

    ("goto", "host" | "ram", offset)   move the hex view
    ("run", "step", N)                 run in a worker with progress, then refresh
    ("run", "next")
    ("run", "finish", rid)             rid is resolved here (None only if nothing to finish)
    ("run", "continue")

`execute_run(cmd, session, cancelled=None, progress=None)` performs a run synchronously
(tests, batch mode, or the app's worker thread) and reports the `Stop` in `data`.  Nothing
here raises for bad user input: errors come back as `Result(ok=False, lines=(message,))`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from emu.session import Stop

from .parser import COMMANDS, INFO_TOPICS, Command, CommandError, parse

STEP_CHUNK = 1024          # step N runs in chunks of this many so a worker can cancel it
X_PER_LINE = 8             # QEMU's xp prints 8 bytes per line for the b size


@dataclass(frozen=True)
class Result:
    """What a command produced: text to show, structured data, and what the UI must do."""
    command: str
    ok: bool
    lines: tuple[str, ...] = ()
    data: dict | None = None
    action: tuple | None = None


def fail(command: str, message: str) -> Result:
    """An error result (one line)."""
    return Result(command, False, (message,))


def is_run(cmd: Command) -> bool:
    """True for commands that run the machine (the app runs them in a worker)."""
    spec = COMMANDS.get(cmd.name)
    return bool(spec and spec.run)


def execute_line(line: str, session) -> Result:
    """parse + execute: a parse error becomes an error Result too."""
    try:
        cmd = parse(line)
    except CommandError as e:
        return fail(e.command, str(e))
    return execute(cmd, session)


def execute(cmd: Command, session) -> Result:
    """Run a command that needs no UI; for goto and the run commands return the action."""
    handler = _HANDLERS.get(cmd.name)
    if handler is None:
        return fail(cmd.name, f"unknown command {cmd.name!r} (try 'help')")
    try:
        return handler(cmd, session)
    except ValueError as e:       # the session's own checks (RAM range, queue not set up, ...)
        return fail(cmd.name, f"{cmd.name}: {e}")


# -- help -----------------------------------------------------------------------------------------

def help_lines(name: str | None = None) -> tuple[str, ...]:
    """`help` (every command) or `help NAME`, generated from the parser's table."""
    if name is not None:
        spec = COMMANDS[name]
        alias = f"   (alias: {', '.join(spec.aliases)})" if spec.aliases else ""
        out = [spec.usage + alias, "  " + spec.summary]
        out += ["  " + d for d in spec.details]
        if spec.examples:
            out.append("  e.g. " + "; ".join(spec.examples))
        return tuple(out)
    specs = list(COMMANDS.values())
    width = max(len(s.usage) for s in specs)
    out = ["Commands (help COMMAND for more):"]
    for s in specs:
        alias = f" (alias: {', '.join(s.aliases)})" if s.aliases else ""
        out.append(f"  {s.usage:<{width}}  {s.summary}{alias}")
    return tuple(out)


def _help(cmd: Command, session) -> Result:
    name = cmd.args[0] if cmd.args else None
    if name is not None and name not in COMMANDS:
        return fail("help", f"help: unknown command {name!r} (try 'help')")
    return Result("help", True, help_lines(name))


# -- info -----------------------------------------------------------------------------------------

def _b(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _aligned(pairs: list[tuple[str, str]], indent: str = "") -> list[str]:
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return [f"{indent}{k + ':':<{width}} {v}" for k, v in pairs]


def _names(title: str, names: list) -> list[str]:
    return [f"{title}:"] + ([f"    {n}" for n in names] or ["    (none)"])


def format_virtio_status(d: dict) -> list[str]:
    """Like QEMU's `info virtio-status` (hmp_virtio_status)."""
    keys = ("device_name", "device_id", "vhost_started", "bus_name", "broken", "disabled",
            "started", "start_on_kick", "num_vqs", "queue_sel", "isr", "endianness",
            "config_generation")
    out = _aligned([(k, _b(d[k])) for k in keys if k in d] + [("status", f"{d['status']:#x}")])
    out += [f"    {n}" for n in d.get("status_names", [])]
    out += _names("Guest features", d.get("guest_features", []))
    out += _names("Host features", d.get("host_features", []))
    out += _names("Backend features", d.get("backend_features", []))
    err = d.get("error")
    if err:
        out.append(f"error: {err.get('message')} (virtio spec {err.get('spec')}, "
                   f"step {err.get('step')})")
    return out


def format_virtio_queue_status(d: dict) -> list[str]:
    """Like QEMU's `info virtio-queue-status` (hmp_virtio_queue_status)."""
    keys = ("queue_index", "inuse", "used_idx", "signalled_used", "signalled_used_valid",
            "last_avail_idx", "shadow_avail_idx")
    out = _aligned([(k, _b(d[k])) for k in keys])
    out.append("VRing:")
    ring = [("num", str(d["vring_num"])), ("num_default", str(d["vring_num_default"])),
            ("align", str(d["vring_align"]))]
    ring += [(k, f"0x{d['vring_' + k]:016x}") for k in ("desc", "avail", "used")]
    return out + _aligned(ring, "  ")


def format_virtio_queue_element(d: dict) -> list[str]:
    """Like QEMU's `info virtio-queue-element` (hmp_virtio_queue_element); the entries of an
    indirect table are indented under the descriptor that points at it."""
    out = _aligned([("index", str(d["index"])), ("ndescs", str(d["ndescs"]))])
    out.append("descs:")
    indent = "  "
    for desc in d["descs"]:
        flags = f" ({', '.join(desc['flags'])})" if desc["flags"] else ""
        out.append(f"{indent}addr 0x{desc['addr']:x} len {desc['len']}{flags}")
        if "indirect" in desc["flags"]:
            indent = "    "
    out.append("avail:")
    out += _aligned([(k, str(d["avail"][k])) for k in ("flags", "idx", "ring")], "  ")
    out.append("used:")
    out += _aligned([(k, str(d["used"][k])) for k in ("flags", "idx")], "  ")
    return out


FORMATTERS: dict[str, Callable[[dict], list[str]]] = {
    "virtio-status": format_virtio_status,
    "virtio-queue-status": format_virtio_queue_status,
    "virtio-queue-element": format_virtio_queue_element,
    "breakpoints": lambda d: format_breakpoints(d["breakpoints"]),
    "checkpoints": lambda d: format_checkpoints(d),
}


def _info(cmd: Command, session) -> Result:
    topic, arg = cmd.args
    if topic not in INFO_TOPICS:
        return fail("info", f"info: unknown topic {topic!r}")
    try:
        data = session.info(topic, arg)
    except ValueError as e:
        return fail("info", f"info {topic}: {e}")
    return Result("info", True, tuple(FORMATTERS[topic](data)), data)


# -- x --------------------------------------------------------------------------------------------

def format_bytes(addr: int, data: bytes, per_line: int = X_PER_LINE) -> list[str]:
    """QEMU's xp layout: '0000000000010000: 0x01 0x02 ...'."""
    return [f"{addr + i:016x}: " + " ".join(f"0x{b:02x}" for b in data[i:i + per_line])
            for i in range(0, len(data), per_line)]


def _x(cmd: Command, session) -> Result:
    space, addr, count = cmd.args
    note = []
    if space == "ram":
        data = session.read_ram(addr, count)       # ValueError names the RAM range
    else:
        size = session.host_size()
        if addr >= size:
            return fail("x", f"x: host offset {addr:#x} is past the end of the image "
                             f"({size:#x} bytes)")
        data = session.read_host(addr, count)
        if len(data) < count:
            note = [f"(the image ends at {size:#x}: {len(data)} of {count} bytes)"]
    lines = format_bytes(addr, data) + note
    return Result("x", True, tuple(lines), {"space": space, "addr": addr, "bytes": data.hex()})


# -- goto -----------------------------------------------------------------------------------------

def _goto(cmd: Command, session) -> Result:
    space, off = cmd.args
    if space == "step":
        return Result("goto", True, action=("run", "goto", off))
    if space == "ram":
        size = session.ram_size()
        if off >= size:
            return fail("goto", f"goto: {off:#x} is outside guest RAM (0..{size:#x})")
        text = f"guest RAM {off:#x}"
    else:
        size = session.host_size()
        if off >= size:
            return fail("goto", f"goto: host offset {off:#x} is past the end of the image "
                                f"({size:#x} bytes)")
        text = f"host image {off:#x} (sector {off // 512})"
    return Result("goto", True, (text,), {"space": space, "offset": off},
                  ("goto", space, off))


# -- running --------------------------------------------------------------------------------------

def default_request(session) -> int | None:
    """The request `finish` without an id finishes: the oldest one still in flight."""
    live = [r.id for r in session.requests() if not r.status and r.stage != "done"]
    return min(live) if live else None


def _finish_target(cmd: Command, session) -> int | Result:
    rid = cmd.args[0] if cmd.args else None
    if rid is None:
        rid = default_request(session)
        if rid is None:
            return fail("finish", "finish: no request is in flight (give a REQUEST_ID)")
        return rid
    known = [r.id for r in session.requests()]
    if rid not in known:
        have = f"known: {min(known)}..{max(known)}" if known else "no requests yet"
        return fail("finish", f"finish: no request {rid} ({have})")
    return rid


def _run(cmd: Command, session) -> Result:
    if cmd.name == "step":
        return Result("step", True, action=("run", "step", cmd.args[0] if cmd.args else 1))
    if cmd.name == "finish":
        rid = _finish_target(cmd, session)
        if isinstance(rid, Result):
            return rid
        return Result("finish", True, action=("run", "finish", rid))
    return Result(cmd.name, True, action=("run", cmd.name))


def _steps(session) -> int:
    return session.m.steps


def _inflight(session) -> int:
    return sum(1 for r in session.requests() if not r.status and r.stage != "done")


def _step_n(session, n: int, cancelled, progress) -> Stop:
    if n <= STEP_CHUNK:
        return session.step(n)
    done = 0
    while done < n:
        if cancelled is not None and cancelled():
            session.stop = Stop("interrupted", _steps(session), "stopped by the user")
            return session.stop
        k = min(STEP_CHUNK, n - done)
        stop = session.step(k)
        if stop.reason != "step":
            return stop
        done += k
        if progress is not None:
            progress(_steps(session), _inflight(session))
    session.stop = Stop("step", _steps(session), f"{n} step(s)")
    return session.stop


def run_action(session, action: tuple, cancelled: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> Stop:
    """Perform a ("run", ...) action on the session; returns the session's Stop.

    cancelled() is polled (step N, finish, continue); progress(step, inflight) is called now
    and then during step N and continue.  Raises ValueError for finish of an unknown id.
    """
    kind = action[1]
    if kind == "step":
        return _step_n(session, action[2], cancelled, progress)
    if kind == "next":
        return session.next()
    if kind == "finish":
        return session.finish(action[2], cancelled=cancelled)
    if kind == "continue":
        return session.cont(cancelled=cancelled, progress=progress)
    if kind == "goto":
        return session.goto(action[2])
    if kind == "reverse-step":
        return session.reverse_step(action[2] if len(action) > 2 else 1)
    if kind == "reverse-next":
        return session.reverse_next()
    if kind == "reverse-finish":
        return session.reverse_finish(action[2])
    if kind == "reverse-continue":
        return session.reverse_cont()
    raise ValueError(f"unknown run action {action!r}")


def stop_lines(session, stop: Stop, ran: int) -> tuple[str, ...]:
    """Text for a finished run: why it stopped, and the step it stopped at."""
    msg = f" ({stop.message})" if stop.message else ""
    moved = f"{ran} step(s) run" if ran >= 0 else f"{-ran} step(s) back"
    out = [f"stopped: {stop.reason}{msg} at step {stop.step}, {moved}"]
    last = session.last_step()
    if last is not None:
        detail = f"  {last.detail}" if last.detail else ""
        out.append(f"  #{last.n} {last.layer} {last.function}{detail}")
        if last.error:
            out.append(f"  error: {last.error}")
    return tuple(out)


def execute_run(cmd: Command, session, cancelled: Callable[[], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Result:
    """Execute any command; run commands run here, synchronously, and report their Stop.

    data = {"reason", "step", "message", "steps" (how many ran), "request" (finish only)}.
    A stop at a device error is still ok=True: the command worked, data["reason"] says why.
    """
    first = execute(cmd, session)
    if not first.ok or first.action is None or first.action[0] != "run":
        return first
    before = _steps(session)
    try:
        stop = run_action(session, first.action, cancelled, progress)
    except ValueError as e:
        return fail(cmd.name, f"{cmd.name}: {e}")
    ran = _steps(session) - before
    data = {**stop.to_json(), "steps": ran}
    if first.action[1] == "finish":
        data["request"] = first.action[2]
    return Result(cmd.name, True, stop_lines(session, stop, ran), data)


def _backtrace(cmd: Command, session) -> Result:
    chains = session.chains()
    lines: list[str] = []
    data: dict = {}
    for side in ("guest", "host"):
        if side not in chains:
            lines.append(f"{side}: no step yet")
            continue
        n, chain = chains[side]
        data[side] = {"step": n, "frames": [{"function": f, "source": src} for f, src in chain]}
        lines.append(f"{side} (step {n}):")
        # innermost first, numbered like gdb's bt
        for i, (fn, src) in enumerate(reversed(chain)):
            lines.append(f"  #{i:<2} {fn}  {src}")
    return Result("backtrace", True, tuple(lines), data)


_HANDLERS: dict[str, Callable[[Command, object], Result]] = {
    "backtrace": _backtrace,
    "": lambda cmd, session: Result("", True),
    "help": _help,
    "info": _info,
    "x": _x,
    "goto": _goto,
    "step": _run,
    "next": _run,
    "finish": _run,
    "continue": _run,
}


from . import debug_cmds  # noqa: E402  (registers break, watch, reverse-*, ... and their handlers)
from .debug_cmds import format_breakpoints, format_checkpoints  # noqa: E402

_HANDLERS.update(debug_cmds._handlers())

from . import trace_cmds  # noqa: E402  (registers record)

_HANDLERS.update(trace_cmds._handlers())

from . import engine_cmds  # noqa: E402  (registers set engine)

_HANDLERS.update(engine_cmds._handlers())
