"""`vblkdbg import FORMAT FILE -o WORKLOAD`: real I/O traces (fio, blkparse, MSR, QEMU log) as workloads."""
from __future__ import annotations

import argparse
import os
import sys

PROG = "vblkdbg"


def _size(text: str) -> int:
    from emu.workload import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _depth(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"queue depth must be a positive integer, not {text!r}")
    return int(text)


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `import` subcommand to an argparse subparsers object; returns its parser."""
    from emu.trace.importer import BEYOND, FORMATS, TIMING, UNALIGNED
    p = sub.add_parser("import", help="convert an I/O trace into a workload file",
                       description="Convert a real I/O trace into a vblkdbg workload "
                       "(see docs/importers.md for each format's mapping).")
    p.add_argument("format", choices=FORMATS, metavar="FORMAT",
                   help=f"the trace's format: {', '.join(FORMATS)}")
    p.add_argument("file", metavar="FILE", help="the trace")
    p.add_argument("-o", "--output", required=True, metavar="WORKLOAD",
                   help="the workload to write (replaced only when the import succeeds)")
    p.add_argument("--timing", choices=TIMING, default="asap",
                   help="asap: no `at` lines (default); honour: `at T` from the trace's "
                   "timestamps, relative to the first record")
    p.add_argument("--queue-depth", type=_depth, metavar="N",
                   help="start the workload with `queue-depth N`")
    p.add_argument("--beyond", choices=BEYOND, default="refuse",
                   help="an I/O past the end of the disk: refuse (default), clip, wrap")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--disk-size", type=_size, metavar="SIZE",
                      help="the disk's size for --beyond (e.g. 16M)")
    size.add_argument("--image", metavar="IMAGE", help="take the disk's size from this image")
    p.add_argument("--unaligned", choices=UNALIGNED, default="widen",
                   help="offsets/lengths not multiples of 512: widen to the enclosing sectors "
                   "(default, counted in a comment) or refuse")
    p.add_argument("--file", dest="trace_file", metavar="NAME|INDEX",
                   help="fio: the file of a multi-file iolog (name, or index from 0)")
    p.add_argument("--device", metavar="MAJ,MIN",
                   help="blkparse: the device (e.g. 8,0); qemu-log: the vdev pointer")
    p.add_argument("--disk", metavar="N", help="msr: the DiskNumber (or HOST:N)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed lines (counted on stderr) instead of stopping")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="a progress bar on stderr when it is a terminal (default on)")
    return p


def _disk_bytes(a) -> int | None:
    if a.disk_size is not None:
        return a.disk_size
    if a.image is None:
        return None
    from emu.block.image import open_image
    hf, fmt = open_image(a.image, "overlay")
    try:
        return fmt.virtual_size()
    finally:
        fmt.close()
        hf.close()


def _progress_bar(path: str, passes: int):
    """(callback, context manager) of a rich progress bar over the passes through path."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    total = max(os.path.getsize(path), 1) * passes
    prog = Progress(TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=Console(file=sys.stderr), transient=True)
    task = prog.add_task("import", total=total)

    def report(done: int) -> None:          # bytes read over all passes
        prog.update(task, completed=min(total, done))
    return report, prog


def run(args) -> int:
    """Run `vblkdbg import`; prints a one-line summary; returns the exit status."""
    from emu.errors import EmuError
    from emu.trace.importer import Options, import_trace, reader_class
    err = sys.stderr
    try:
        disk_bytes = _disk_bytes(args)
        if disk_bytes is None:
            print(f"{PROG}: note: no --disk-size or --image: I/O past the end of the disk is not "
                  "checked (--beyond does not apply)", file=err)
        opts = Options(timing=args.timing, queue_depth=args.queue_depth, beyond=args.beyond,
                       disk_bytes=disk_bytes, unaligned=args.unaligned, file=args.trace_file,
                       device=args.device, disk=args.disk, skip_bad=args.skip_bad)
        report, bar = None, None
        if args.progress and err.isatty() and os.path.isfile(args.file):
            passes = 2 if reader_class(args.format).two_pass else 1
            report, bar = _progress_bar(args.file, passes)
        if bar is not None:
            with bar:
                stats = import_trace(args.file, args.format, args.output, opts, report)
        else:
            stats = import_trace(args.file, args.format, args.output, opts)
    except EmuError as e:
        print(f"{PROG}: error: {e}", file=err)
        return 1
    if stats.skipped:
        print(f"{PROG}: note: skipped {stats.skipped} malformed line(s) (first: "
              f"{stats.first_skipped})", file=err)
    if stats.untimed:
        print(f"{PROG}: note: the trace carries no timestamps: --timing honour wrote no `at` "
              "lines", file=err)
    for what, n in sorted(stats.notes.items()):
        print(f"{PROG}: note: {n} {what}", file=err)
    extra = ""
    if stats.widened:
        extra += f", {stats.widened} widened to 512-byte alignment"
    if stats.clipped or stats.dropped:
        extra += f", {stats.clipped} clipped, {stats.dropped} dropped past the end of the disk"
    if stats.wrapped:
        extra += f", {stats.wrapped} wrapped"
    print(f"{args.file} -> {args.output}: {stats.summary()}{extra}")
    return 0
