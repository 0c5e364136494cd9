"""`vblkdbg record`, `replay` and `export`: vblkdbg's own traces on the command line."""
from __future__ import annotations

import json
import os
import sys
import tempfile


class _Progress:
    """A progress line on stderr when it is a terminal (nothing otherwise)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.on = sys.stderr.isatty()
        self.shown = False

    def __call__(self, n: int, total: int) -> None:
        if self.on:
            pct = 100 * n // max(total, 1)
            sys.stderr.write(f"\r{self.what}: step {n}/{total} ({pct}%)")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def add_parsers(sub, add_machine_options, add_workload_options) -> None:
    from .batch import add_batch_arguments
    r = sub.add_parser("record", help="run a workload (or debugger commands) and save a trace")
    add_batch_arguments(r)
    r.add_argument("-o", "--output", required=True, metavar="TRACE", help="the trace file to write")
    r.add_argument("--digest-interval", type=int, default=None, metavar="N",
                   help="store a state digest every N steps (default 1000)")
    add_machine_options(r)
    add_workload_options(r)
    p = sub.add_parser("replay", help="re-execute a trace; --check verifies every stored digest")
    p.add_argument("trace")
    p.add_argument("--check", action="store_true", help="compare every stored digest, not only the end")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--engine", default="auto", choices=("auto", "py", "fast"),
                   help="the engine that re-executes it (default: fast when compiled)")
    p.add_argument("--image", metavar="PATH", help="the recorded image, if it has moved; for a "
                   "real tool's trace (fio, blkparse, msr, qemu-log) the image to run it on")
    e = sub.add_parser("export", help="export a trace's step timeline (Chrome trace events for Perfetto)")
    e.add_argument("trace")
    e.add_argument("--perfetto", required=True, metavar="OUT", help="write Chrome trace-event JSON here")
    e.add_argument("--image", metavar="PATH", help="the recorded image, if it has moved")
    e.add_argument("--engine", default="auto", choices=("auto", "py", "fast"),
                   help="the engine that re-executes it (default: fast when compiled)")


def cmd_record(a) -> int:
    from emu.trace.record import DIGEST_INTERVAL, record

    from .batch import read_script, run_batch
    from .cli import CliError, open_session
    if a.write:
        raise CliError("record: --write changes the image the trace must start from; record "
                       "works on an overlay")
    if a.digest_interval is not None and a.digest_interval < 1:
        raise CliError("--digest-interval must be at least 1")
    out = a.output
    if os.path.isdir(out):
        raise CliError(f"{out}: is a directory (give the trace file's name)")
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise CliError(f"{out}: directory {d} does not exist")
    if os.path.exists(out) and os.path.exists(a.image) and os.path.samefile(out, a.image):
        raise CliError(f"{out}: refusing to overwrite the image with the trace")

    def error(msg: str):
        raise CliError(msg)
    script = read_script(a.script, error)
    s = open_session(a)
    try:
        failed = 0
        if script:
            failed = run_batch(s, script)
        else:
            s.breakpoints.delete()
            s.goto(1 << 62)                 # to the end of the workload (and the image's close)
        prog = _Progress("recording")
        try:
            t = record(s.origin, s.inputs, s.m.steps, out, a.digest_interval or DIGEST_INTERVAL,
                       expect_digest=s.m.digest(), progress=prog, engine=a.engine)
        finally:
            prog.done()
    finally:
        s.m.fmt.close()
        s.m.hostfile.close()
    print(f"recorded steps 0..{t.end['step']} to {out}: {len(t.inputs)} input(s), "
          f"{len(t.digests) + 1} digest(s); final digest {t.end['digest']}",
          file=sys.stderr if script else sys.stdout)
    return 1 if failed else 0


def cmd_replay(a) -> int:
    from emu.trace.importer import detect_format
    from emu.trace.record import is_trace, load
    from emu.trace.replay import replay

    from .cli import CliError
    if os.path.isfile(a.trace) and not is_trace(a.trace) and \
            detect_format(a.trace) not in (None, "workload"):
        # a real tool's trace: run it as the guest's workload on --image
        if not a.image:
            raise CliError(f"{a.trace}: a {detect_format(a.trace)} trace has no image: give "
                           "--image IMAGE to run it on")
        from .cli import build_parser, cmd_run
        argv = ["run", a.image, "--workload", a.trace, "--engine", a.engine] + (
            ["--json"] if a.json else [])
        return cmd_run(build_parser().parse_args(argv))
    from .cli import check_engine_arg
    check_engine_arg(a)
    t = load(a.trace)
    prog = _Progress("replaying")
    try:
        res = replay(t, a.image, check=a.check, progress=prog, engine=a.engine)
    finally:
        prog.done()
    if a.json:
        print(json.dumps(res.to_json(), indent=2))
    elif res.ok:
        what = f"all {res.checked} digest(s)" if a.check else "the end digest"
        print(f"{a.trace}: replayed {res.steps} steps: {what} match the recording "
              f"(final digest {res.digest})")
    else:
        print(f"{a.trace}: {res.divergence.describe()}")
    return 0 if res.ok else 1


def cmd_export(a) -> int:
    from emu.trace.perfetto import PerfettoWriter
    from emu.trace.record import close_session, load, open_origin, origin_of_trace

    from .cli import CliError
    t = load(a.trace)
    out = a.perfetto
    if os.path.isdir(out):
        raise CliError(f"{out}: is a directory (give the output file's name)")
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise CliError(f"{out}: directory {d} does not exist")
    s = open_origin(origin_of_trace(t, a.image))
    fd, tmp = tempfile.mkstemp(prefix=".vblkdbg-export-", dir=d)
    prog = _Progress("exporting")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            w = PerfettoWriter(f)
            s.set_engine(a.engine)
            s._use(bulk=True)
            s.schedule(t.inputs)
            while s.m.steps < t.end["step"]:
                rec = s._one()
                if rec is None:
                    break
                w.feed(rec)
                if rec.n % 1000 == 0:
                    prog(rec.n, t.end["step"])
            w.close()
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        prog.done()
        close_session(s)
    print(f"wrote {s.m.steps} steps of {a.trace} to {out} (Chrome trace-event JSON: open it "
          "in https://ui.perfetto.dev)")
    return 0
