"""The `:` command line, headless: grammar, execution on a real Session, completion, history."""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys

import pytest

from emu.session import Session
from tests.conftest import build
from tui.cmdline import commands as C
from tui.cmdline.commands import Result, execute, execute_line, execute_run, is_run
from tui.cmdline.completer import CommandSuggester, History, complete
from tui.cmdline.parser import (ALIASES, COMMANDS, INFO_TOPICS, Command, CommandError, Spec,
                                canonical, parse, register)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = os.path.join(ROOT, "sample_images", "article.qcow2")
WORKLOAD = os.path.join(ROOT, "sample_images", "article.wl")


@pytest.fixture
def session():
    with open(WORKLOAD) as f:
        return Session(build(IMAGE, f.read()))


def step_until(s: Session, pred, limit: int = 10000) -> None:
    for _ in range(limit):
        if pred(s):
            return
        assert s.step().reason == "step", "the run ended before the condition held"
    raise AssertionError("condition not reached")


def published(s: Session) -> bool:
    """The driver has published the first request in the avail ring."""
    r = s.rings()
    return r is not None and r.avail_idx >= 1


# -- parsing: every command and alias ----------------------------------------------------------

@pytest.mark.parametrize("line, name, args", [
    ("", "", ()),
    ("   ", "", ()),
    ("step", "step", (1,)),
    ("s", "step", (1,)),
    ("step 10", "step", (10,)),
    ("s 0x10", "step", (16,)),
    (":step 3", "step", (3,)),
    ("next", "next", ()),
    ("n", "next", ()),
    ("finish", "finish", (None,)),
    ("f", "finish", (None,)),
    ("finish 3", "finish", (3,)),
    ("f 0", "finish", (0,)),
    ("continue", "continue", ()),
    ("c", "continue", ()),
    ("cont", "continue", ()),
    ("goto host 0x48a000", "goto", ("host", 0x48A000)),
    ("goto host 4759552", "goto", ("host", 0x48A000)),
    ("goto host 64k", "goto", ("host", 65536)),
    ("goto host 1M", "goto", ("host", 1 << 20)),
    ("goto host 1G", "goto", ("host", 1 << 30)),
    ("goto host s:9296", "goto", ("host", 9296 * 512)),
    ("goto host s:0x10", "goto", ("host", 16 * 512)),
    ("g ram 0x10000", "goto", ("ram", 0x10000)),
    ("g ram 0x1_0000", "goto", ("ram", 0x10000)),
    ("goto ram 4k", "goto", ("ram", 4096)),
    ("info virtio-status", "info", ("virtio-status", None)),
    ("i virtio-status", "info", ("virtio-status", None)),
    ("info virtio-queue-status", "info", ("virtio-queue-status", None)),
    ("info virtio-queue-s", "info", ("virtio-queue-status", None)),
    ("info virtio-queue-element", "info", ("virtio-queue-element", None)),
    ("info virtio-queue-e", "info", ("virtio-queue-element", None)),
    ("i virtio-queue-element 5", "info", ("virtio-queue-element", 5)),
    ("info virtio-s", "info", ("virtio-status", None)),
    ("x/16xb 0x10000", "x", ("ram", 0x10000, 16)),
    ("x/16bx 0x10000", "x", ("ram", 0x10000, 16)),
    ("x 0x10000", "x", ("ram", 0x10000, 16)),
    ("x/4xb 64k", "x", ("ram", 0x10000, 4)),
    ("x/xb 0x10", "x", ("ram", 0x10, 16)),
    ("x/32 0x10", "x", ("ram", 0x10, 32)),
    ("x/4096xb 0", "x", ("ram", 0, 4096)),
    ("x/1xb 0", "x", ("ram", 0, 1)),
    ("x/8xb host 0", "x", ("host", 0, 8)),
    ("x host s:1", "x", ("host", 512, 16)),
    ("x/8xb ram 0x20", "x", ("ram", 0x20, 8)),
    ("xp /16bx 0x10000", "x", ("ram", 0x10000, 16)),
    ("x /8xb host 0", "x", ("host", 0, 8)),
    ("help", "help", (None,)),
    ("help step", "help", ("step",)),
    ("help s", "help", ("step",)),
    ("help cont", "help", ("continue",)),
    ("help x/16xb", "help", ("x",)),
    ("h info", "help", ("info",)),
])
def test_parse(line, name, args):
    cmd = parse(line)
    assert cmd == Command(name, args, line)
    assert cmd.raw == line


def test_commands_are_frozen():
    with pytest.raises(AttributeError):
        parse("step").name = "next"


def test_aliases_all_resolve_to_table_entries():
    assert ALIASES == {"s": "step", "n": "next", "f": "finish", "c": "continue", "cont": "continue",
                       "g": "goto", "i": "info", "xp": "x", "h": "help",
                       "bt": "backtrace", "where": "backtrace", "b": "break", "br": "break",
                       "tb": "tbreak", "d": "delete", "rs": "reverse-step", "rn": "reverse-next",
                       "rf": "reverse-finish", "rc": "reverse-continue"}
    for alias, name in ALIASES.items():
        assert canonical(alias) == name and alias in COMMANDS[name].aliases
    assert canonical("frob") is None


@pytest.mark.parametrize("line, message", [
    ("frob", "unknown command 'frob' (try 'help')"),
    ("frob 1 2", "unknown command 'frob' (try 'help')"),
    ("/16xb 0", "unknown command '/16xb' (try 'help')"),
    ("STEP", "unknown command 'STEP' (try 'help')"),
    ("step x", "step: 'x' is not a number"),
    ("step 1.5", "step: '1.5' is not a number"),
    ("step 4k", "step: '4k' is not a number"),
    ("step -1", "step: N must be a positive number, not '-1'"),
    ("step 0", "step: N must be at least 1, not '0'"),
    ("step 1 2", "step: unexpected '2' (usage: step [N])"),
    ("step/5", "step: takes no /FORMAT (step/5)"),
    ("next 3", "next: takes no arguments (got '3')"),
    ("continue now", "continue: takes no arguments (got 'now')"),
    ("c 1", "continue: takes no arguments (got '1')"),
    ("finish x", "finish: REQUEST_ID 'x' is not a number"),
    ("finish -1", "finish: REQUEST_ID must not be negative ('-1')"),
    ("finish 1 2", "finish: unexpected '2' (usage: finish [REQUEST_ID])"),
    ("goto", "goto: expected where to go (usage: goto host OFFSET | goto ram ADDR | goto step N, "
             "e.g. goto host s:9296)"),
    ("goto nowhere 5", "goto: expected 'host', 'ram' or 'step', not 'nowhere' "
                       "(usage: goto host OFFSET | goto ram ADDR | goto step N)"),
    ("goto 0x1000", "goto: expected 'host', 'ram' or 'step', not '0x1000' "
                    "(usage: goto host OFFSET | goto ram ADDR | goto step N)"),
    ("goto step", "goto: missing N (usage: goto step N; 0 is the start)"),
    ("goto step -1", "goto: step N must not be negative ('-1')"),
    ("goto host", "goto: missing OFFSET (usage: goto host OFFSET)"),
    ("goto ram", "goto: missing ADDR (usage: goto ram ADDR)"),
    ("goto host -5", "goto: OFFSET must not be negative ('-5')"),
    ("goto ram -0x10", "goto: ADDR must not be negative ('-0x10')"),
    ("goto host zz", "goto: OFFSET 'zz' is not a number (use e.g. 65536, 0x10000, 64k, s:SECTOR)"),
    ("goto ram 0xg", "goto: ADDR '0xg' is not a number (use e.g. 65536, 0x10000, 64k)"),
    ("goto ram 4T", "goto: ADDR '4T' is not a number (use e.g. 65536, 0x10000, 64k)"),
    ("goto ram s:5", "goto: s:SECTOR is only for host offsets ('s:5')"),
    ("goto host s:", "goto: SECTOR '' is not a number (e.g. s:9296)"),
    ("goto host s:x", "goto: SECTOR 'x' is not a number (e.g. s:9296)"),
    ("goto host s:-1", "goto: SECTOR must not be negative ('-1')"),
    ("goto host 1 2", "goto: unexpected '2' (usage: goto host OFFSET)"),
    ("info", "info: expected a topic (virtio-status, virtio-queue-status, virtio-queue-element, "
             "breakpoints, checkpoints)"),
    ("info frob", "info: unknown topic 'frob' (topics: virtio-status, virtio-queue-status, "
                  "virtio-queue-element, breakpoints, checkpoints)"),
    ("info virtio-queue", "info: 'virtio-queue' is ambiguous "
                          "(virtio-queue-status, virtio-queue-element)"),
    ("info virtio", "info: 'virtio' is ambiguous "
                    "(virtio-status, virtio-queue-status, virtio-queue-element)"),
    ("info virtio-status 1", "info virtio-status: takes no argument (got '1')"),
    ("info virtio-queue-status 0", "info virtio-queue-status: takes no argument (got '0')"),
    ("info virtio-queue-element x", "info virtio-queue-element: HEAD 'x' is not a number"),
    ("info virtio-queue-element -2", "info virtio-queue-element: HEAD must not be negative ('-2')"),
    ("info virtio-queue-element 1 2",
     "info virtio-queue-element: unexpected '2' (usage: info virtio-queue-element [HEAD])"),
    ("info/x virtio-status", "info: takes no /FORMAT (info/x)"),
    ("x", "x: expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/16xb", "x: expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/16xb host", "x: expected x/Nxb host OFFSET, e.g. x/16xb host 0"),
    ("x/0xb 0", "x: count must be 1..4096, not 0"),
    ("x/99999xb 0", "x: count must be 1..4096, not 99999"),
    ("x/4097xb 0", "x: count must be 1..4096, not 4097"),
    ("x/16w 0", "x: format 'w' is not supported, only xb (hex bytes), e.g. x/16xb 0x10000"),
    ("x/16xd 0", "x: format 'd' is not supported, only xb (hex bytes), e.g. x/16xb 0x10000"),
    ("x/ 0", "x: bad format '/': expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/16xbx 0", "x: bad format '/16xbx': expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/-1xb 0", "x: bad format '/-1xb': expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/16xb0x10", "x: bad format '/16xb0x10': expected x/Nxb ADDR, e.g. x/16xb 0x10000"),
    ("x/16xb -1", "x: ADDR must not be negative ('-1')"),
    ("x/16xb host -1", "x: OFFSET must not be negative ('-1')"),
    ("x/16xb foo", "x: ADDR 'foo' is not a number (use e.g. 65536, 0x10000, 64k)"),
    ("x/16xb 0x10 0x20", "x: unexpected '0x20' after the address (usage: x/Nxb ADDR | "
                         "x/Nxb host OFFSET)"),
    ("x host 0 1", "x: unexpected '1' after the offset (usage: x/Nxb ADDR | x/Nxb host OFFSET)"),
    ("x s:1", "x: s:SECTOR is only for host offsets ('s:1')"),
    ("help frob", "help: unknown command 'frob' (try 'help')"),
    ("help step next", "help: unexpected 'next' (usage: help [COMMAND])"),
])
def test_parse_errors(line, message):
    with pytest.raises(CommandError) as ei:
        parse(line)
    assert str(ei.value) == message
    assert "\n" not in str(ei.value)


def test_parser_and_commands_do_not_import_textual_or_rich():
    code = ("import sys, tui.cmdline, tui.cmdline.parser, tui.cmdline.commands; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_parser_has_no_eval():
    for mod in ("parser", "commands", "completer"):
        src = open(os.path.join(ROOT, "tui", "cmdline", f"{mod}.py")).read()
        assert "eval(" not in src and "exec(" not in src


def test_register_adds_a_command_everywhere():
    spec = Spec("frobnicate", lambda name, fmt, args: tuple(args), "frobnicate [ARG]",
                "a test command")
    try:
        register(spec, aliases=("frob",))
        assert parse("frob 1") == Command("frobnicate", ("1",), "frob 1")
        assert any(line.lstrip().startswith("frobnicate [ARG]") for line in C.help_lines())
        assert complete("frobn") == ["frobnicate"]
        with pytest.raises(ValueError):
            register(spec)
        with pytest.raises(ValueError):
            register(Spec("other", spec.parse, "other", "x"), aliases=("s",))
    finally:
        COMMANDS.pop("frobnicate", None)
        ALIASES.pop("frob", None)


# -- execute: help, info, x, goto ---------------------------------------------------------------

def test_every_command_has_a_handler():
    assert set(COMMANDS) <= set(C._HANDLERS)


def test_blank_line_is_a_no_op(session):
    r = execute(parse(""), session)
    assert r == Result("", True, (), None, None)
    assert session.m.steps == 0


def test_help_lists_every_command(session):
    r = execute(parse("help"), session)
    assert r.ok and r.data is None and r.action is None
    text = "\n".join(r.lines)
    for name, spec in COMMANDS.items():
        assert any(line.lstrip().startswith(spec.usage) and spec.summary in line
                   for line in r.lines), name
        for alias in spec.aliases:
            assert alias in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_for_one_command(session, name):
    spec = COMMANDS[name]
    r = execute(parse(f"help {name}"), session)
    assert r.ok
    assert r.lines[0].startswith(spec.usage)
    assert spec.summary in r.lines[1]
    for alias in spec.aliases:
        assert alias in r.lines[0]
        assert execute(parse(f"help {alias}"), session).lines == r.lines


def test_help_for_an_unknown_command_built_by_hand(session):
    r = execute(Command("help", ("frob",)), session)
    assert r == Result("help", False, ("help: unknown command 'frob' (try 'help')",))


def test_help_info_lists_the_topics(session):
    text = "\n".join(execute(parse("help info"), session).lines)
    for topic in INFO_TOPICS:
        assert f"info {topic}" in text


def _field(lines, key):
    """The value printed after 'key:' (aligned like QEMU's HMP)."""
    for line in lines:
        k, sep, v = line.strip().partition(":")
        if sep and k == key:
            return v.strip()
    raise AssertionError(f"{key} not in {lines}")


def test_info_virtio_queue_status_matches_the_device(session):
    step_until(session, lambda s: published(s) and s.m.vdev.vqs[0].inuse >= 1)
    r = execute(parse("info virtio-queue-status"), session)
    assert r.ok and r.command == "info" and r.action is None
    assert r.data == session.info("virtio-queue-status")
    q = session.m.vdev.vqs[0]
    d = r.data
    assert (d["queue_index"], d["inuse"], d["last_avail_idx"], d["shadow_avail_idx"],
            d["used_idx"], d["signalled_used"], d["signalled_used_valid"]) == \
        (0, q.inuse, q.last_avail_idx, q.shadow_avail_idx, q.used_idx, q.signalled_used,
         q.signalled_used_valid)
    assert (d["vring_num"], d["vring_desc"], d["vring_avail"], d["vring_used"]) == \
        (q.num, q.desc, q.avail, q.used)
    assert d["inuse"] == 1 and d["last_avail_idx"] == 1
    assert _field(r.lines, "queue_index") == "0"
    assert _field(r.lines, "inuse") == "1"
    assert _field(r.lines, "last_avail_idx") == "1"
    assert _field(r.lines, "signalled_used_valid") in ("true", "false")
    assert _field(r.lines, "desc") == f"0x{q.desc:016x}"
    assert _field(r.lines, "used") == f"0x{q.used:016x}"
    assert "VRing:" in r.lines
    # aligned: the values start in one column
    top = [ln for ln in r.lines if not ln.startswith(" ") and ln.endswith(tuple("0123456789e"))]
    assert len({len(ln) - len(ln.split(":", 1)[1].lstrip()) for ln in top}) == 1


def test_info_virtio_status(session):
    step_until(session, published)
    r = execute(parse("i virtio-status"), session)
    assert r.ok and r.data == session.info("virtio-status")
    assert _field(r.lines, "device_name") == "virtio-blk"
    assert _field(r.lines, "broken") == "false"
    assert _field(r.lines, "status") == f"{session.m.vdev.status:#x}"
    for name in r.data["status_names"] + r.data["guest_features"]:
        assert f"    {name}" in r.lines
    assert "Guest features:" in r.lines and "Host features:" in r.lines


def test_info_virtio_queue_element_decodes_the_first_chain(session):
    step_until(session, published)
    r = execute(parse("info virtio-queue-e"), session)
    assert r.ok and r.data == session.info("virtio-queue-element", None)
    d = r.data
    rq = next(rv for rv in session.requests() if rv.id == 1)
    assert d["index"] == rq.head == 0
    assert d["ndescs"] == 4
    indirect, hdr, data, status = d["descs"]
    assert indirect["flags"] == ["indirect"] and indirect["len"] == 3 * 16
    assert hdr["len"] == 16 and hdr["flags"] == ["next"]
    assert (data["addr"], data["len"]) == rq.data[0] and data["flags"] == ["next"]
    assert status["len"] == 1 and status["flags"] == ["write"]
    # cross-check against guest RAM: the indirect table holds the three entries
    table = session.read_ram(indirect["addr"], indirect["len"])
    for k, desc in enumerate((hdr, data, status)):
        a, ln, _fl, _nx = struct.unpack_from("<QIHH", table, 16 * k)
        assert (a, ln) == (desc["addr"], desc["len"])
    assert d["avail"]["idx"] == 1
    assert f"  addr 0x{indirect['addr']:x} len 48 (indirect)" in r.lines
    assert f"    addr 0x{data['addr']:x} len 4096 (next)" in r.lines
    assert _field(r.lines, "ndescs") == "4"
    same = execute(parse("info virtio-queue-element 0"), session)
    assert same.data == d


def test_info_errors_are_results(session):
    r = execute(parse("info virtio-queue-element"), session)
    assert not r.ok and r.lines == ("info virtio-queue-element: the queue is not set up yet",)
    step_until(session, published)
    r = execute(parse("info virtio-queue-element 999"), session)
    assert not r.ok and len(r.lines) == 1 and "out of range" in r.lines[0]


def test_x_reads_guest_ram(session):
    step_until(session, published)
    gpa = session.m.vdev.vqs[0].desc or session.rings().desc
    r = execute(parse(f"x/16xb {gpa:#x}"), session)
    want = bytes(session.m.mem.ram[gpa:gpa + 16])
    assert r.ok and r.action is None
    assert r.data == {"space": "ram", "addr": gpa, "bytes": want.hex()}
    assert r.lines == (f"{gpa:016x}: " + " ".join(f"0x{b:02x}" for b in want[:8]),
                       f"{gpa + 8:016x}: " + " ".join(f"0x{b:02x}" for b in want[8:]))
    assert want != bytes(16)            # the first descriptor is written
    r = execute(parse(f"x/3xb {gpa + 1:#x}"), session)
    assert r.data["bytes"] == want[1:4].hex() and len(r.lines) == 1


def test_x_reads_the_host_image(session):
    r = execute(parse("x/8xb host 0"), session)
    assert r.ok and r.data == {"space": "host", "addr": 0, "bytes": "514649fb00000003"}
    assert r.lines == ("0000000000000000: 0x51 0x46 0x49 0xfb 0x00 0x00 0x00 0x03",)
    assert bytes.fromhex(r.data["bytes"])[:4] == b"QFI\xfb"


def test_x_default_count_and_max(session):
    assert len(bytes.fromhex(execute(parse("x 0"), session).data["bytes"])) == 16
    r = execute(parse("x/4096xb 0"), session)
    assert r.ok and len(r.lines) == 512 and len(r.data["bytes"]) == 2 * 4096


def test_x_errors(session):
    ram, host = session.ram_size(), session.host_size()
    r = execute(parse(f"x/16xb {ram:#x}"), session)
    assert not r.ok and r.lines == (f"x: {ram:#x}+16 is outside guest RAM (0..{ram:#x})",)
    r = execute(parse(f"x/16xb {ram - 8:#x}"), session)
    assert not r.ok and "outside guest RAM" in r.lines[0]
    r = execute(parse("x/16xb 16G"), session)
    assert not r.ok
    r = execute(parse(f"x/8xb host {host:#x}"), session)
    assert not r.ok
    assert r.lines == (f"x: host offset {host:#x} is past the end of the image ({host:#x} bytes)",)
    r = execute(parse(f"x/16xb host {host - 4:#x}"), session)     # truncated at the end
    assert r.ok and len(r.data["bytes"]) == 8 and "the image ends" in r.lines[-1]


def test_goto_returns_an_action(session):
    r = execute(parse("goto host s:2"), session)
    assert r.ok and r.action == ("goto", "host", 1024)
    assert r.data == {"space": "host", "offset": 1024}
    r = execute(parse("g ram 0x10000"), session)
    assert r.ok and r.action == ("goto", "ram", 0x10000)


def test_goto_errors(session):
    ram, host = session.ram_size(), session.host_size()
    r = execute(parse(f"goto ram {ram:#x}"), session)
    assert r == Result("goto", False, (f"goto: {ram:#x} is outside guest RAM (0..{ram:#x})",))
    r = execute(parse("goto host 1G"), session)
    assert not r.ok and r.action is None
    assert r.lines == (f"goto: host offset 0x40000000 is past the end of the image "
                       f"({host:#x} bytes)",)
    assert execute(parse(f"goto host {host - 1}"), session).ok


def test_execute_line_turns_parse_errors_into_results(session):
    r = execute_line("step x", session)
    assert r == Result("step", False, ("step: 'x' is not a number",))
    r = execute_line("frob", session)
    assert not r.ok and r.lines == ("unknown command 'frob' (try 'help')",)
    assert execute_line("x/8xb host 0", session).ok


# -- run commands ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line, action", [
    ("step", ("run", "step", 1)), ("s 5", ("run", "step", 5)), ("next", ("run", "next")),
    ("c", ("run", "continue")), ("continue", ("run", "continue")),
])
def test_run_commands_return_actions_without_running(session, line, action):
    r = execute(parse(line), session)
    assert r.ok and r.action == action and r.lines == ()
    assert is_run(parse(line))
    assert session.m.steps == 0


def test_finish_action_resolves_the_request(session):
    r = execute(parse("finish"), session)
    assert not r.ok and r.lines == ("finish: no request is in flight (give a REQUEST_ID)",)
    r = execute(parse("finish 7"), session)
    assert not r.ok and r.lines == ("finish: no request 7 (no requests yet)",)
    step_until(session, published)
    assert execute(parse("f"), session).action == ("run", "finish", 1)
    assert execute(parse("f 1"), session).action == ("run", "finish", 1)
    r = execute(parse("f 99"), session)
    assert not r.ok and r.lines == ("finish: no request 99 (known: 1..1)",)
    assert not is_run(parse("info virtio-status")) and not is_run(parse("goto host 0"))


def test_execute_run_step(session):
    r = execute_run(parse("step"), session)
    assert r.ok and r.action is None
    assert r.data == {"reason": "step", "step": 1, "message": "1 step(s)", "steps": 1}
    assert session.m.steps == 1
    r = execute_run(parse("s 10"), session)
    assert r.data["steps"] == 10 and session.m.steps == 11
    assert r.lines[0] == "stopped: step (10 step(s)) at step 11, 10 step(s) run"
    last = session.last_step()
    assert r.lines[1].startswith(f"  #11 {last.layer} {last.function}")


def test_execute_run_step_in_chunks_matches_one_run(session, monkeypatch):
    with open(WORKLOAD) as f:
        other = Session(build(IMAGE, f.read()))
    other.step(200)
    monkeypatch.setattr(C, "STEP_CHUNK", 64)
    seen = []
    r = execute_run(parse("step 200"), session, progress=lambda st, n: seen.append(st))
    assert r.data == {"reason": "step", "step": 200, "message": "200 step(s)", "steps": 200}
    assert seen == [64, 128, 192, 200]
    assert session.m.digest() == other.m.digest()


def test_execute_run_step_can_be_cancelled(session, monkeypatch):
    monkeypatch.setattr(C, "STEP_CHUNK", 10)
    calls = []
    r = execute_run(parse("step 100"), session, cancelled=lambda: len(calls) > 2 or calls.append(1))
    assert r.ok and r.data["reason"] == "interrupted" and r.data["steps"] == 30
    assert session.stop.reason == "interrupted"


def test_execute_run_step_past_the_end(session):
    r = execute_run(parse("step 100000"), session)
    assert r.data["reason"] == "end" and session.finished
    assert r.data["steps"] == session.m.steps


def test_execute_run_next_changes_layer(session):
    execute_run(parse("s 3"), session)
    before = session.last_step().layer
    r = execute_run(parse("n"), session)
    assert r.ok and r.data["reason"] == "next" and r.data["steps"] >= 1
    assert session.last_step().layer != before
    assert r.data["step"] == session.m.steps


def test_execute_run_finish(session):
    step_until(session, published)
    assert 1 in session.m.guest.blkmq.rqs
    r = execute_run(parse("finish"), session)
    assert r.ok
    assert r.data["reason"] == "finish" and r.data["request"] == 1 and r.data["steps"] > 0
    assert r.data["message"] == "request 1 completed"
    assert 1 not in session.m.guest.blkmq.rqs
    done = next(rv for rv in session.requests() if rv.id == 1)
    assert done.stage == "done" and done.status == "OK"
    assert session.last_step().function == "blk_mq_end_request"
    again = execute_run(parse("finish 1"), session)
    assert again.ok and again.data["steps"] == 0
    assert again.data["message"] == "request 1 had already completed"
    bad = execute_run(parse("finish 42"), session)
    assert not bad.ok and bad.lines[0].startswith("finish: no request 42")


def test_execute_run_continue(session):
    r = execute_run(parse("continue"), session)
    assert r.ok and r.data["reason"] == "end" and session.finished
    assert r.data["steps"] == session.m.steps > 100
    assert all(rv.stage == "done" for rv in session.requests())
    again = execute_run(parse("c"), session)
    assert again.data == {"reason": "end", "step": session.m.steps,
                          "message": "the workload finished", "steps": 0}


def test_execute_run_continue_cancelled(session):
    r = execute_run(parse("c"), session, cancelled=lambda: True)
    assert r.ok and r.data["reason"] == "interrupted" and r.data["steps"] == 0


def test_execute_run_stops_at_a_device_error(session):
    step_until(session, published)
    head = session.info("virtio-queue-element")
    desc = session.rings().desc + 16 * head["index"]
    session.m.poke(desc + 8, struct.pack("<I", 17))      # indirect table length not 16-aligned
    r = execute_run(parse("c"), session)
    assert r.ok and r.data["reason"] == "error"
    assert any(line.startswith("  error: ") for line in r.lines)
    assert session.info("virtio-status")["broken"] is True
    st = execute(parse("info virtio-status"), session)
    assert any(line.startswith("error: ") for line in st.lines)


def test_execute_run_passes_other_commands_through(session):
    assert execute_run(parse("x/8xb host 0"), session) == execute(parse("x/8xb host 0"), session)
    assert execute_run(parse("goto host 0"), session).action == ("goto", "host", 0)


# -- completion, suggester, history ----------------------------------------------------------------

@pytest.mark.parametrize("prefix, want", [
    ("", sorted(COMMANDS)),
    ("s", ["set", "step"]),
    ("st", ["step"]),
    ("co", ["condition", "continue"]),
    ("cont", ["continue"]),
    ("i", ["ignore", "info"]),
    ("h", ["help"]),
    ("zz", []),
    ("info ", ["info breakpoints", "info checkpoints", "info virtio-queue-element",
               "info virtio-queue-status", "info virtio-status"]),
    ("info virtio-q", ["info virtio-queue-element", "info virtio-queue-status"]),
    ("i virtio-s", ["i virtio-status"]),
    ("info virtio-queue-element ", []),
    ("goto ", ["goto host", "goto ram", "goto step"]),
    ("g h", ["g host"]),
    ("x/16xb h", ["x/16xb host"]),
    ("xp /16bx r", ["xp /16bx ram"]),
    ("help n", ["help next"]),
    ("step 1", []),
    ("goto host 1", []),
    ("frob ", []),
    ("x/16", []),
])
def test_complete(prefix, want):
    got = complete(prefix)
    assert got == want
    assert all(c.startswith(prefix) for c in got)


def test_info_and_help_completions_parse():
    for line in complete("info ") + complete("help "):
        parse(line)


def test_suggester():
    sug = CommandSuggester()
    assert asyncio.run(sug.get_suggestion("info virtio-queue-s")) == "info virtio-queue-status"
    assert asyncio.run(sug.get_suggestion("fin")) == "finish"
    assert asyncio.run(sug.get_suggestion("frob")) is None
    assert sug.case_sensitive


def test_history_navigation_with_draft():
    h = History()
    for line in ("step", "x 0", "x 0", "", "   ", "info virtio-status"):
        h.add(line)
    assert h.entries == ("step", "x 0", "info virtio-status")
    assert h.down("typed") == "typed"                 # not navigating: unchanged
    assert h.up("draft") == "info virtio-status"
    assert h.up("info virtio-status") == "x 0"
    assert h.up("x 0") == "step"
    assert h.up("step") == "step"                     # stays at the oldest
    assert h.down("step") == "x 0"
    assert h.down("x 0") == "info virtio-status"
    assert h.down("info virtio-status") == "draft"    # back to the draft, navigation ends
    assert not h.navigating
    assert h.down("draft") == "draft"


def test_history_bounded_and_add_resets():
    h = History(maxlen=3)
    for i in range(5):
        h.add(f"step {i}")
    assert h.entries == ("step 2", "step 3", "step 4") and len(h) == 3
    h.up("")
    h.add("step 4")                                   # repeat of the newest: ignored
    assert not h.navigating and len(h) == 3
    h.add("step 2")                                   # not the newest: kept
    assert h.entries == ("step 3", "step 4", "step 2")
    assert History().up("x") == "x"
    with pytest.raises(ValueError):
        History(maxlen=0)


def test_backtrace_frames_start_at_the_latest_step_of_each_side(session):
    assert execute_line("bt", session).lines == ("guest: no step yet", "host: no step yet")
    step_until(session, lambda s: len(s.chains()) == 2)
    res = execute_line("where", session)
    assert res.ok
    steps = session.recent_steps(200)
    for side in ("guest", "host"):
        latest = [st for st in steps if st.n == res.data[side]["step"]]
        assert latest and res.data[side]["frames"][-1]["function"] == latest[0].function
        lines = res.lines[res.lines.index(f"{side} (step {latest[0].n}):") + 1:]
        assert lines[0].split()[:2] == ["#0", latest[0].function]
    # each chain reaches back to an entry point: a function the table knows no caller of
    from emu.callchain import _CALLERS
    for side in ("guest", "host"):
        outer = res.data[side]["frames"][0]["function"]
        assert _CALLERS[outer][0] == ""
