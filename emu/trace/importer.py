"""Trace import pipeline shared by the fio, blkparse, MSR and QEMU-log readers (`vblkdbg import`)."""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

from ..errors import WorkloadError
from ..spec.blk import SECTOR_SIZE

FORMATS = ("fio", "blkparse", "msr", "qemu-log")
TIMING = ("asap", "honour")
BEYOND = ("refuse", "clip", "wrap")
UNALIGNED = ("widen", "refuse")
DATA_OPS = ("read", "write", "discard", "write-zeroes")
MAX_LINE = 1 << 16               # longer lines are malformed (keeps memory bounded)


class TraceImportError(WorkloadError):
    """A trace that cannot be imported; the message starts with FILE:LINE (or FILE:)."""


class Rec(NamedTuple):
    """One thing a reader found in the trace.

    op is a workload operation (read, write, flush, discard, write-zeroes, get-id, wait) or
    "time" (a timestamp only: fio v2 `wait`). offset/length are bytes, not yet aligned;
    time_ns is the trace's clock (None when the trace has none); lineno/raw locate it.
    """
    op: str
    offset: int = 0
    length: int = 0
    time_ns: int | None = None
    lineno: int = 0
    raw: str = ""


@dataclass
class Options:
    timing: str = "asap"
    queue_depth: int | None = None
    beyond: str = "refuse"
    disk_bytes: int | None = None
    unaligned: str = "widen"
    file: str | None = None        # fio: NAME or INDEX
    device: str | None = None      # blkparse: MAJ,MIN; qemu-log: the vdev pointer
    disk: str | None = None        # msr: N or HOST:N
    skip_bad: bool = False

    def validate(self) -> None:
        for name, allowed in (("timing", TIMING), ("beyond", BEYOND), ("unaligned", UNALIGNED)):
            if getattr(self, name) not in allowed:
                raise TraceImportError(f"{name} must be one of {', '.join(allowed)}, "
                                       f"not {getattr(self, name)!r}")
        if self.queue_depth is not None and self.queue_depth < 1:
            raise TraceImportError("queue-depth must be a positive integer")
        if self.disk_bytes is not None and self.disk_bytes < SECTOR_SIZE:
            raise TraceImportError(f"disk size {self.disk_bytes} is smaller than one sector")


@dataclass
class Stats:
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    discards: int = 0
    write_zeroes: int = 0
    get_ids: int = 0
    waits: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_discarded: int = 0
    bytes_zeroed: int = 0
    ops: int = 0                 # operation lines written (incl. wait, at, queue-depth)
    skipped: int = 0             # malformed lines skipped (--skip-bad)
    first_skipped: str | None = None
    widened: int = 0             # records widened to 512-byte alignment
    clipped: int = 0             # records shortened at the end of the disk
    dropped: int = 0             # records wholly past the end of the disk (clip)
    wrapped: int = 0             # records moved by --beyond wrap
    untimed: bool = False        # --timing honour but the trace carries no clock
    notes: dict = field(default_factory=dict)    # reader-specific counts, e.g. ignored records

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + n

    def summary(self) -> str:
        return (f"{self.reads} reads ({self.bytes_read} bytes), {self.writes} writes "
                f"({self.bytes_written} bytes), {self.flushes} flushes, {self.discards} discards "
                f"({self.bytes_discarded} bytes), {self.write_zeroes} write-zeroes, "
                f"{self.skipped} lines skipped")


class Context:
    """What a reader needs: the path, the options, the statistics and the bad-line policy."""

    def __init__(self, path: str, options: Options, stats: Stats,
                 progress: Callable[[int], None] | None = None):
        self.path = path
        self.options = options
        self.stats = stats
        self.progress = progress
        self.passes = 0
        self.consumed = 0            # bytes read, over every pass

    def error(self, lineno: int | None, what: str, raw: str | None = None) -> TraceImportError:
        where = f"{self.path}:{lineno}" if lineno else self.path
        tail = f" (line: {raw.strip()!r})" if raw is not None else ""
        return TraceImportError(f"{where}: {what}{tail}")

    def bad(self, lineno: int, raw: str, what: str) -> None:
        """A malformed line: an error, or with skip_bad counted and skipped (the caller continues)."""
        err = self.error(lineno, what, raw)
        if not self.options.skip_bad:
            raise err
        self.stats.skipped += 1
        if self.stats.first_skipped is None:
            self.stats.first_skipped = str(err)

    def lines(self, scan: bool = False) -> Iterator[tuple[int, str]]:
        """(lineno, text without the line end), read one line at a time (bounded memory).

        progress, if given, is called with the bytes read so far over every pass. With scan
        (a reader's first pass) unreadable lines are passed over: the second pass reports them.
        """
        bad = (lambda lineno, raw, what: None) if scan else self.bad
        self.passes += 1
        report = self.progress
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise TraceImportError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise TraceImportError(f"{self.path}: is a directory, not a trace file") from None
        except OSError as e:
            raise TraceImportError(f"{self.path}: cannot read: {e.strerror}") from None
        with f:
            lineno = 0
            readline = f.readline
            while True:
                data = readline(MAX_LINE)
                if not data:
                    break
                lineno += 1
                self.consumed += len(data)
                if report is not None and lineno % 4096 == 0:
                    report(self.consumed)
                if len(data) == MAX_LINE and not data.endswith(b"\n"):
                    while True:             # skip the rest of an overlong line
                        more = readline(MAX_LINE)
                        self.consumed += len(more)
                        if not more or more.endswith(b"\n"):
                            break
                    bad(lineno, data[:80].decode("utf-8", "replace") + "...",
                             f"line longer than {MAX_LINE} bytes")
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad(lineno, data.decode("utf-8", "replace").rstrip("\r\n"),
                             f"not UTF-8 text (byte {e.start} of the line)")
                    continue
                yield lineno, text.rstrip("\r\n")
        if report is not None:
            report(self.consumed)


class Reader:
    """One trace format. scan() is an optional first pass; records() yields Recs in order."""
    name = ""
    label = ""
    two_pass = False
    time_origin: int | None = None     # None: times are relative to the first record

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def scan(self) -> None:
        """First pass (readers with two_pass): learn what selection needs (files, devices)."""

    def records(self) -> Iterator[Rec]:
        raise NotImplementedError

    def choose(self, what: str, option: str, found: list[str], wanted: str | None,
               match: Callable[[str, str], bool] | None = None) -> str:
        """Pick one of found (in order of appearance) by the option's value, or the only one."""
        path = self.ctx.path
        listed = ", ".join(repr(f) for f in found[:20]) + (
            f", ... ({len(found)} in all)" if len(found) > 20 else "")
        if wanted is not None:
            for item in found:
                if (match or (lambda a, b: a == b))(item, wanted):
                    return item
            raise TraceImportError(f"{path}: no {what} {wanted!r} in the trace (it has: "
                                   f"{listed or 'none'})")
        if not found:
            raise TraceImportError(f"{path}: the trace has no {what} with I/O")
        if len(found) > 1:
            raise TraceImportError(f"{path}: the trace has {len(found)} {what}s ({listed}): "
                                   f"choose one with {option}")
        return found[0]


def reader_class(fmt: str):
    if fmt == "fio":
        from .fio_log import FioReader
        return FioReader
    if fmt == "blkparse":
        from .blkparse import BlkparseReader
        return BlkparseReader
    if fmt == "msr":
        from .msr import MsrReader
        return MsrReader
    if fmt == "qemu-log":
        from .qemu_log import QemuLogReader
        return QemuLogReader
    raise TraceImportError(f"unknown trace format {fmt!r} (expected one of: {', '.join(FORMATS)})")


def format_time(ns: int) -> str:
    """The shortest exact `at` time: 2s, 3ms, 20us or 1500ns."""
    for unit, mult in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1000)):
        if ns and ns % mult == 0:
            return f"{ns // mult}{unit}"
    return f"{ns}ns"


def _align(ctx: Context, rec: Rec) -> tuple[int, int]:
    off, length = rec.offset, rec.length
    if off % SECTOR_SIZE == 0 and length % SECTOR_SIZE == 0:
        return off, length
    if ctx.options.unaligned == "refuse":
        raise ctx.error(rec.lineno, f"{rec.op} at {off}+{length} is not aligned to "
                        f"{SECTOR_SIZE} bytes (use --unaligned widen)", rec.raw)
    ctx.stats.widened += 1
    start = off - off % SECTOR_SIZE
    end = -(-(off + length) // SECTOR_SIZE) * SECTOR_SIZE
    return start, end - start


def _place(ctx: Context, rec: Rec, off: int, length: int) -> list[tuple[int, int]]:
    """Apply --beyond: the (offset, length) pieces to emit (none when clipped away)."""
    disk = ctx.options.disk_bytes
    if disk is None or off + length <= disk:
        return [(off, length)]
    disk -= disk % SECTOR_SIZE
    policy = ctx.options.beyond
    if policy == "refuse":
        raise ctx.error(rec.lineno, f"{rec.op} at {off:#x}+{length:#x} goes past the end of the "
                        f"disk ({disk} bytes = {disk // SECTOR_SIZE} sectors; see --beyond)", rec.raw)
    if policy == "clip":
        if off >= disk:
            ctx.stats.dropped += 1
            return []
        ctx.stats.clipped += 1
        return [(off, disk - off)]
    ctx.stats.wrapped += 1               # wrap: offset modulo the disk, split at the end
    if length > disk:
        length = disk
    off %= disk
    if off + length <= disk:
        return [(off, length)]
    return [(off, disk - off), (0, off + length - disk)]


def convert(reader: Reader, emit: Callable[[str, int], None], source_name: str) -> Stats:
    """Run the reader and write the workload through emit(text, input_lineno), line by line."""
    ctx = reader.ctx
    o, st = ctx.options, ctx.stats
    if reader.two_pass:
        reader.scan()
    records = reader.records()
    first = next(records, None)          # lets the reader settle its label (fio v2/v3) first
    emit(f"# imported from {reader.label} {source_name} by vblkdbg import", 0)
    opts = f"# timing {o.timing}; unaligned {o.unaligned}"
    if o.disk_bytes is not None:
        opts += f"; disk {o.disk_bytes} bytes, beyond {o.beyond}"
    emit(opts, 0)
    for sel in ("file", "device", "disk"):
        if getattr(o, sel) is not None:
            emit(f"# {sel} {getattr(o, sel)}", 0)
    if o.queue_depth is not None:
        emit(f"queue-depth {o.queue_depth}", 0)
        st.ops += 1
    honour = o.timing == "honour"
    t0 = reader.time_origin
    last_at = 0
    timed = False
    rec = first
    while rec is not None:
        if honour and rec.time_ns is not None:
            timed = True
            if t0 is None:
                t0 = rec.time_ns
            t = rec.time_ns - t0
            if t > last_at:
                emit(f"at {format_time(t)}", rec.lineno)
                st.ops += 1
                last_at = t
        op = rec.op
        if op in DATA_OPS:
            if rec.length <= 0:
                raise ctx.error(rec.lineno, f"{op} of {rec.length} bytes", rec.raw)
            off, length = _align(ctx, rec)
            for off, length in _place(ctx, rec, off, length):
                emit(f"{op} {off:#x} {length}", rec.lineno)
                st.ops += 1
                if op == "read":
                    st.reads += 1
                    st.bytes_read += length
                elif op == "write":
                    st.writes += 1
                    st.bytes_written += length
                elif op == "discard":
                    st.discards += 1
                    st.bytes_discarded += length
                else:
                    st.write_zeroes += 1
                    st.bytes_zeroed += length
        elif op in ("flush", "get-id", "wait"):
            emit(op, rec.lineno)
            st.ops += 1
            if op == "flush":
                st.flushes += 1
            elif op == "get-id":
                st.get_ids += 1
            else:
                st.waits += 1
        elif op != "time":
            raise AssertionError(f"reader produced {op!r}")
        rec = next(records, None)
    if honour and not timed:
        st.untimed = True
    emit(f"# {st.summary()}", 0)
    if st.widened:
        emit(f"# {st.widened} records widened to {SECTOR_SIZE}-byte alignment", 0)
    for what, n in ((st.clipped, "clipped at the end of the disk"),
                    (st.dropped, "dropped: wholly past the end of the disk"),
                    (st.wrapped, "wrapped around the end of the disk")):
        if what:
            emit(f"# {what} records {n}", 0)
    for what, n in sorted(st.notes.items()):
        emit(f"# {n} {what}", 0)
    return st


def _make(path: str, fmt: str, options: Options,
          progress: Callable[[int], None] | None) -> tuple[Reader, Stats]:
    options.validate()
    if fmt not in FORMATS:
        raise TraceImportError(f"unknown trace format {fmt!r} (expected one of: "
                               f"{', '.join(FORMATS)})")
    stats = Stats()
    ctx = Context(path, options, stats, progress)
    return reader_class(fmt)(ctx), stats


def import_trace(path: str, fmt: str, output: str, options: Options | None = None,
                 progress: Callable[[int], None] | None = None) -> Stats:
    """Convert path to the workload file output, atomically: nothing is left behind on error."""
    options = options or Options()
    reader, _ = _make(path, fmt, options, progress)
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise TraceImportError(f"{output}: directory {out_dir} does not exist")
    if os.path.exists(output) and os.path.exists(path) and os.path.samefile(output, path):
        raise TraceImportError(f"{output}: refusing to overwrite the trace with the workload")
    if os.path.isdir(output):
        raise TraceImportError(f"{output}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(output) + ".", suffix=".tmp",
                                   dir=out_dir)
    except OSError as e:
        raise TraceImportError(f"{output}: cannot write in {out_dir}: {e.strerror}") from None
    ok = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            write = out.write

            def emit(text: str, lineno: int) -> None:
                write(text + "\n")
            stats = convert(reader, emit, os.path.basename(path))
        try:
            os.replace(tmp, output)
        except OSError as e:
            raise TraceImportError(f"{output}: cannot write: {e.strerror}") from None
        ok = True
        return stats
    except OSError as e:
        raise TraceImportError(f"{output}: cannot write: {e.strerror}") from None
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def workload_lines(path: str, fmt: str, options: Options | None = None) -> tuple[list, Stats]:
    """The workload text of a trace as (text, input_lineno) pairs, in memory."""
    options = options or Options()
    reader, _ = _make(path, fmt, options, None)
    out: list = []
    stats = convert(reader, lambda text, lineno: out.append((text, lineno)),
                    os.path.basename(path))
    return out, stats


def options_from(disk_bytes: int | None = None, **options) -> Options:
    known = set(Options.__dataclass_fields__)
    extra = set(options) - known
    if extra:
        raise TypeError(f"unknown trace option(s): {', '.join(sorted(extra))}")
    return Options(disk_bytes=disk_bytes, **options)


def load_trace_workload(path: str, fmt: str | None = None, disk_bytes: int | None = None,
                        **options) -> list[dict]:
    """The workload ops (as emu.workload.parse_workload returns them) of a trace or workload.

    fmt None: detect_format(path). A vblkdbg workload is parsed as it is. For a trace, each
    op's "line" is the line of the trace it came from and "n" its ordinal in the workload.
    options: timing, queue_depth, beyond, unaligned, file, device, disk, skip_bad.
    """
    from ..workload import parse_workload
    if fmt is None:
        fmt = detect_format(path)
        if fmt is None:
            raise TraceImportError(f"{path}: not a workload nor a trace format vblkdbg knows "
                                   f"({', '.join(FORMATS)})")
    if fmt == "workload":
        try:
            with open(path, encoding="utf-8") as f:
                return parse_workload(f.read(), path)
        except FileNotFoundError:
            raise TraceImportError(f"{path}: no such workload file") from None
        except UnicodeDecodeError as e:
            raise TraceImportError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
        except OSError as e:
            raise TraceImportError(f"{path}: cannot read: {e.strerror}") from None
    lines, _ = workload_lines(path, fmt, options_from(disk_bytes, **options))
    ops: list[dict] = []
    for text, lineno in lines:
        if text.startswith("#"):
            continue
        (d,) = parse_workload(text, path)
        d["line"] = lineno
        d["n"] = len(ops) + 1
        ops.append(d)
    return ops


_BLKPARSE = re.compile(r"^\s*\d+,\d+\s+\d+\s+\d+\s+\d+\.\d{9}\s+\d+\s+[A-Za-z]{1,2}\s+[A-Z]{1,7}\b")
_MSR = re.compile(r"^\d+,[^,]*,\d+,(?i:read|write),\d+,\d+,\d+\s*$")
_QEMU = re.compile(r"^(?:\d+@\d+\.\d+:|\d{4}-\d\d-\d\dT\S+ )?(?:virtio_blk_|virtqueue_)\w+ ")


def detect_format(path: str) -> str | None:
    """Sniff the first lines: 'fio', 'blkparse', 'msr', 'qemu-log', 'workload', or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:          # not just a character cut at the 64 KiB mark
            return None
        text = head[:e.start].decode("utf-8")
    lines = text.splitlines()
    if len(head) == 64 * 1024 and lines:
        lines = lines[:-1]                   # possibly cut
    lines = [ln for ln in lines[:200] if ln.strip()]
    if not lines:
        return None
    if lines[0].startswith(("fio version 2 iolog", "fio version 3 iolog")):
        return "fio"
    body = lines[1:] if lines[0].lower().startswith("timestamp,hostname,") else lines
    if body and all(_MSR.match(ln) for ln in body[:20]):
        return "msr"
    events = [ln for ln in lines if not ln.startswith("Input file ")]
    if events and _BLKPARSE.match(events[0]):
        return "blkparse"
    if any(_QEMU.match(ln) for ln in lines):
        return "qemu-log"
    from ..workload import parse_workload
    try:
        parse_workload("\n".join(lines[:50]), path)
    except WorkloadError:
        return None
    return "workload"
