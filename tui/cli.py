"""vblkdbg's command line: run, create (one-line errors, exit status, JSON for scripts)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from . import __version__

PROG = "vblkdbg"


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like argparse but without the usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _size(text: str) -> int:
    from emu.workload import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _inject(text: str) -> dict:
    """OP@OFFSET[+LEN][:ERRNO][*COUNT], e.g. write@0x10000+4096:EIO*1, flush:EIO."""
    from emu.workload import parse_size
    spec = text
    count = -1
    if "*" in spec:
        spec, c = spec.rsplit("*", 1)
        if not c.isdigit():
            raise argparse.ArgumentTypeError(f"bad count in --inject {text!r}")
        count = int(c)
    err = errno.EIO
    if ":" in spec:
        spec, name = spec.split(":", 1)
        err = getattr(errno, name.upper(), None) if not name.isdigit() else int(name)
        if not isinstance(err, int):
            raise argparse.ArgumentTypeError(f"unknown errno {name!r} in --inject {text!r}")
    op, _, where = spec.partition("@")
    ops = {"read": "read", "write": "write", "flush": "flush", "discard": "discard",
           "write-zeroes": "write_zeroes"}
    if op not in ops:
        raise argparse.ArgumentTypeError(
            f"--inject {text!r}: operation must be one of {', '.join(ops)}")
    start, end = 0, 1 << 62
    if where:
        off, _, ln = where.partition("+")
        try:
            start = parse_size(off)
            end = start + (parse_size(ln) if ln else 1)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--inject {text!r}: {e}") from None
    return {"op": ops[op], "start": start, "end": end, "errno": err, "count": count}


def _add_machine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("machine")
    g.add_argument("--seed", type=int, default=0, help="seed of the latency jitter (default 0)")
    g.add_argument("--queue-size", type=int, default=256, help="virtqueue size (default 256)")
    g.add_argument("--no-indirect", action="store_true", help="device does not offer INDIRECT_DESC")
    g.add_argument("--no-event-idx", action="store_true", help="device does not offer EVENT_IDX")
    g.add_argument("--ram-size", type=_size, default=64 << 20, help="guest RAM (default 64M)")
    g.add_argument("--cache", default="writeback", choices=("writeback", "writethrough", "unsafe"),
                   help="QEMU -drive cache= (default writeback)")
    g.add_argument("--discard", default="ignore", choices=("ignore", "unmap"),
                   help="QEMU -drive discard= (default ignore)")
    g.add_argument("--serial", default="", help="the disk's serial (GET_ID), at most 20 bytes")
    g.add_argument("--read-only", action="store_true", help="a read-only drive (offers VIRTIO_BLK_F_RO)")
    g.add_argument("--werror", default="report", choices=("report", "ignore"))
    g.add_argument("--rerror", default="report", choices=("report", "ignore"))
    g.add_argument("--jitter", type=int, default=10, metavar="PCT",
                   help="seeded latency jitter in percent (default 10)")
    g.add_argument("--inject", type=_inject, action="append", default=[], metavar="SPEC",
                   help="host I/O error: OP@OFFSET[+LEN][:ERRNO][*COUNT], e.g. write@0+4096:EIO")
    g.add_argument("--engine", default="auto", choices=("auto", "py", "fast"),
                   help="py: the Python engine; fast: the compiled one (emu_fast); auto "
                   "(default): fast for continue, goto, replay when it is compiled, py otherwise")
    g.add_argument("--allow-backing-outside", action="store_true",
                   help="allow a qcow2 backing file outside the image's folder")


def _add_workload_options(p: argparse.ArgumentParser) -> None:
    """How --workload is read when it is a trace of a real tool (see docs/importers.md)."""
    g = p.add_argument_group("workload traces (fio iolog, blkparse, MSR CSV, QEMU log)")
    g.add_argument("--workload-format", default="auto",
                   choices=("auto", "workload", "fio", "blkparse", "msr", "qemu-log"),
                   help="the --workload file's format (default: detected)")
    g.add_argument("--timing", default="asap", choices=("asap", "honour"),
                   help="a trace's timestamps: asap (default) or honour (virtual time)")
    g.add_argument("--beyond", default="refuse", choices=("refuse", "clip", "wrap"),
                   help="a trace's I/O past the end of the disk (default refuse)")
    g.add_argument("--iolog-file", metavar="NAME|INDEX",
                   help="fio: the file of a multi-file iolog")
    g.add_argument("--trace-queue-depth", type=int, metavar="N",
                   help="a trace's workload starts with `queue-depth N` (nr_requests)")


def load_workload_any(path: str, a, disk_bytes: int | None) -> tuple[str, list]:
    """(text, ops) of --workload: a vblkdbg workload as it is, a real tool's trace converted
    (the text is the converted workload, so that a recording can re-create it)."""
    from emu.trace.importer import detect_format, options_from, workload_lines
    from emu.workload import parse_workload
    from emu.trace.record import is_trace
    if is_trace(path):
        raise CliError(f"{path}: is a vblkdbg trace, not a workload: open it with `vblkdbg "
                       f"{path}` or `vblkdbg replay {path}`")
    fmt = getattr(a, "workload_format", "auto")
    if fmt == "auto":
        if not os.path.exists(path):
            raise CliError(f"{path}: no such workload file")
        fmt = detect_format(path) or "workload"
    if fmt == "workload":
        text = read_workload_text(path)
        return text, parse_workload(text, path)
    if a.trace_queue_depth is not None and a.trace_queue_depth < 1:
        raise CliError("--trace-queue-depth must be a positive integer")
    opts = options_from(disk_bytes, timing=a.timing, beyond=a.beyond, file=a.iolog_file,
                        queue_depth=a.trace_queue_depth)
    lines, _stats = workload_lines(path, fmt, opts)
    text = f"# {fmt} trace {os.path.basename(path)}, imported by vblkdbg\n" + "".join(
        t + "\n" for t, _ in lines)
    return text, parse_workload(text, path)


class _VersionAction(argparse.Action):
    """--version: one unwrapped line (argparse's own action wraps it to the terminal)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):  # noqa: A002  (argparse's name)
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    from emu.engine import version_line
    return f"{PROG} {__version__} ({version_line()})"


def check_engine_arg(a) -> None:
    """--engine fast without the compiled extension: say so before anything runs."""
    from emu.engine import check_engine
    if getattr(a, "engine", "auto") != "auto":
        check_engine(a.engine)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="A debugger for the whole virtio-blk path. Without a "
                "subcommand, `vblkdbg [IMAGE [--workload FILE]]` opens the debugger.")
    p.add_argument("--version", action=_VersionAction, help="show the version and whether "
                   "the compiled engine is built, then exit")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    r = sub.add_parser("run", help="run a workload headless and print a summary")
    r.add_argument("image")
    r.add_argument("-f", "--format", default="auto", choices=("auto", "raw", "qcow2"),
                   help="image format (default: detected from the magic)")
    r.add_argument("--workload", required=True, metavar="FILE")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--events", metavar="FILE", help="write one JSON line per step")
    r.add_argument("--dump-ram", metavar="FILE", help="write guest RAM (gpa = file offset)")
    r.add_argument("--steps", type=int, metavar="N", help="stop after N steps")
    w = r.add_mutually_exclusive_group()
    w.add_argument("--write", action="store_true", help="write to IMAGE itself")
    w.add_argument("--save-as", metavar="FILE", help="keep the resulting image in FILE")
    _add_machine_options(r)
    _add_workload_options(r)
    c = sub.add_parser("create", help="create a raw or qcow2 image (like qemu-img create)")
    c.add_argument("-f", "--format", default="raw", choices=("raw", "qcow2"),
                   help="image format (default raw)")
    c.add_argument("image")
    c.add_argument("size", type=_size, nargs="?",
                   help="virtual size (qcow2 with -b: default the backing file's size)")
    c.add_argument("--cluster-size", type=_size, metavar="N",
                   help="qcow2 cluster size (default 64k)")
    c.add_argument("--refcount-bits", type=int, metavar="N",
                   help="qcow2 refcount width (default 16)")
    c.add_argument("-b", "--backing", metavar="BACKING", help="qcow2 backing file")
    c.add_argument("-F", "--backing-format", choices=("raw", "qcow2"),
                   help="format of the backing file (default: probed)")
    c.add_argument("--lazy-refcounts", action="store_true", help="qcow2 lazy refcounts")
    c.add_argument("--compat", choices=("0.10", "1.1"), help="qcow2 version: 0.10 = v2, 1.1 = v3")
    c.add_argument("--force", action="store_true", help="overwrite an existing file")
    mp = sub.add_parser("map", help="classify every range of an image's host file")
    mp.add_argument("image")
    mp.add_argument("--json", action="store_true", help="print the ranges as a JSON list")
    from .batch import add_batch_arguments
    b = sub.add_parser("batch", help="run debugger commands non-interactively, one JSON line each")
    add_batch_arguments(b)
    _add_machine_options(b)
    _add_workload_options(b)
    from . import cli_import, trace_cli
    trace_cli.add_parsers(sub, _add_machine_options, _add_workload_options)
    cli_import.add_parser(sub)
    bp = sub.add_parser("bench", help="requests/s of both engines (and qemu-img bench) on standard workloads")
    bp.add_argument("--json", action="store_true", help="print one JSON object")
    bp.add_argument("--requests", type=int, default=2000, metavar="N",
                    help="requests per workload (default 2000)")
    bp.add_argument("--repeat", type=int, default=3, metavar="N", help="best of N runs (default 3)")
    bp.add_argument("--dir", metavar="DIR", default=None,
                    help="where images and overlays go (default /dev/shm when it is tmpfs, "
                         "else the temporary directory)")
    return p


def cmd_bench(a) -> int:
    from emu_fast.bench import run_bench
    from emu_fast.bench import bench_bytes, bench_dir
    if a.requests < 1 or a.repeat < 1:
        raise CliError("--requests and --repeat must be at least 1")
    try:
        where = bench_dir(a.dir, bench_bytes(a.requests))
    except ValueError as e:
        raise CliError(str(e)) from None
    if a.json:
        res = run_bench(True, requests=a.requests, repeat=a.repeat, out=lambda *x, **k: None,
                        dir=where)
        print(json.dumps(res, indent=2))
    else:
        run_bench(False, requests=a.requests, repeat=a.repeat, dir=where)
    return 0


def config_from_args(a):
    from emu.block.latency import LatencyModel
    from emu.config import Config
    if not 0 <= a.jitter <= 100:
        raise CliError("--jitter must be between 0 and 100")
    return Config(ram_size=a.ram_size, queue_size=a.queue_size, indirect=not a.no_indirect,
                  event_idx=not a.no_event_idx, seed=a.seed, cache=a.cache, discard=a.discard,
                  serial=a.serial, read_only=a.read_only, werror=a.werror, rerror=a.rerror,
                  latency=LatencyModel(jitter_pct=a.jitter), faults=tuple(a.inject))


def read_workload_text(path: str) -> str:
    """The workload file's text (FILE:problem errors)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CliError(f"{path}: no such workload file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not a workload file") from None
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None


def load_workload(path: str) -> list:
    from emu.workload import parse_workload
    return parse_workload(read_workload_text(path), path)


def _check_output(path: str | None, image: str) -> None:
    if not path:
        return
    if os.path.exists(path) and os.path.samefile(path, image):
        raise CliError(f"{path}: refusing to overwrite the image with another output")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise CliError(f"{path}: directory {d} does not exist")


def cmd_run(a) -> int:
    from emu.block.image import open_image
    from emu.machine import Machine
    from emu.summary import summary
    from emu.workload import check_bounds
    cfg = config_from_args(a)
    cfg.validate()
    check_engine_arg(a)
    for out in (a.events, a.dump_ram, a.save_as):
        _check_output(out, a.image)
    hf, fmt = open_image(a.image, "write" if a.write else "overlay",
                         discard_unmap=cfg.discard == "unmap",
                         allow_backing_outside=a.allow_backing_outside, fmt=a.format)
    for w in fmt.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    try:
        _text, ops = load_workload_any(a.workload, a, fmt.virtual_size())
        check_bounds(ops, fmt.virtual_size(), a.workload)
        m = Machine(hf, fmt, cfg, ops)
        events = open(a.events, "w", encoding="utf-8") if a.events else None
        try:
            on_step = None
            if events is not None:
                def on_step(rec):
                    events.write(json.dumps(rec.event_json()) + "\n")
                    return False
            from emu import engine
            import emu_fast
            name = a.engine if a.engine != "auto" else ("fast" if emu_fast.available() else "py")
            stop = engine.run(m, name, a.steps, on_step)
            if stop == "end":
                m.shutdown(on_step)      # close the image as QEMU's exit does
        finally:
            if events is not None:
                events.close()
        if a.dump_ram:
            with open(a.dump_ram, "wb") as f:
                f.write(m.mem.ram)
        result = summary(m, stop)
        if a.save_as:
            hf.save_as(a.save_as)
    finally:
        fmt.close()
        hf.close()
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        from .report import print_summary
        print_summary(result, a.image, a.workload)
    return 0


SUBCOMMANDS = ("run", "create", "map", "batch", "record", "replay", "export", "import", "bench")


def build_tui_parser() -> argparse.ArgumentParser:
    """vblkdbg [IMAGE [--workload FILE]] [machine options]: the debugger itself."""
    p = _Parser(prog=PROG, description="Open the debugger (default: the bundled sample).")
    p.add_argument("image", nargs="?", help="raw or qcow2 image (default: the bundled sample)")
    p.add_argument("-f", "--format", default="auto", choices=("auto", "raw", "qcow2"))
    p.add_argument("--workload", metavar="FILE", help="the guest's workload (default: the "
                   "article's scenario with the bundled sample, none otherwise)")
    p.add_argument("--keys", default="letters", choices=("letters", "fkeys"),
                   help="key profile: letters (s n f c) or fkeys (also F5 F10 F11 Shift+F11)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--write", action="store_true", help="write to IMAGE itself")
    _add_machine_options(p)
    _add_workload_options(p)
    return p


def open_session(a):
    """The Session the debugger works on (the image behind a private overlay unless --write);
    IMAGE may also be a vblkdbg trace, which brings its own configuration and workload."""
    from emu.block.image import open_image
    from emu.machine import Machine
    from emu.session import Session
    from emu.trace.record import file_identity, is_trace
    from emu.workload import check_bounds
    import sample_images
    image, workload = a.image, a.workload
    check_engine_arg(a)
    if image is not None and is_trace(image):
        s = open_trace_session(a)
        s.set_engine(getattr(a, "engine", "auto"))
        return s
    if image is None:
        image = str(sample_images.path("article.qcow2"))
        workload = workload or str(sample_images.path("article.wl"))
    cfg = config_from_args(a)
    cfg.validate()
    ident = file_identity(image) if a.write and os.path.isfile(image) else None  # before any write
    hf, fmt = open_image(image, "write" if a.write else "overlay",
                         discard_unmap=cfg.discard == "unmap",
                         allow_backing_outside=a.allow_backing_outside, fmt=a.format)
    try:
        text, ops = load_workload_any(workload, a, fmt.virtual_size()) if workload else ("", [])
        check_bounds(ops, fmt.virtual_size(), workload or "")
        m = Machine(hf, fmt, cfg, ops)
    except BaseException:
        fmt.close()
        hf.close()
        raise
    s = Session(m, os.path.basename(image), os.path.basename(workload) if workload else "no workload")
    s.origin = {"image": os.path.abspath(image), "format": a.format, "identity": ident,
                "config": cfg, "workload_name": os.path.basename(workload) if workload else "",
                "workload_text": text, "write": bool(a.write),
                "allow_backing_outside": bool(a.allow_backing_outside)}
    s.set_engine(a.engine)
    return s


def open_trace_session(a, image_override: str | None = None):
    """A session on a recorded trace: its image, configuration and workload; its inputs
    are applied when the run reaches their steps."""
    from emu.trace.record import load, open_origin, origin_of_trace
    if getattr(a, "workload", None):
        raise CliError(f"{a.image}: a trace carries its own workload (drop --workload)")
    if getattr(a, "write", False):
        raise CliError(f"{a.image}: a trace is replayed on an overlay (drop --write)")
    t = load(a.image)
    origin = origin_of_trace(t, image_override or getattr(a, "trace_image", None))
    s = open_origin(origin, catch_errors=True)
    s.workload = f"{origin['workload_name']} (trace {os.path.basename(a.image)})"
    s.trace = t
    s.schedule(t.inputs)
    return s


def cmd_tui(argv: list[str]) -> int:
    a = build_tui_parser().parse_args(argv)
    session = open_session(a)
    for w in session.m.fmt.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    from .app import DebuggerApp
    try:
        DebuggerApp(session, keys=a.keys).run()
    finally:
        session.m.fmt.close()
        session.m.hostfile.close()
    return 0


def cmd_batch(a) -> int:
    from .batch import read_script, run_batch

    def error(msg: str):
        raise CliError(msg)
    script = read_script(a.script, error)
    if not script:
        raise CliError("batch: no commands (give -x FILE or -ex CMD)")
    session = open_session(a)
    for w in session.m.fmt.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    try:
        return run_batch(session, script)
    finally:
        session.m.fmt.close()
        session.m.hostfile.close()


def main(argv: list[str] | None = None) -> int:
    from emu.errors import EmuError
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        try:
            return cmd_tui(argv)
        except (CliError, EmuError) as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        from . import cli_import, image_cmds, trace_cli
        return {"import": cli_import.run, "bench": cmd_bench, "run": cmd_run, "create": image_cmds.cmd_create,
                "map": image_cmds.cmd_map, "batch": cmd_batch, "record": trace_cli.cmd_record,
                "replay": trace_cli.cmd_replay, "export": trace_cli.cmd_export}[a.cmd](a)
    except (CliError, EmuError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:                 # a file the user named cannot be read or written
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
