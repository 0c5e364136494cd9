"""Synthesizes binary blktrace streams (struct blk_io_trace of blktrace_api.h) for real blkparse."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field

# blktrace_api.h: trace categories (the upper 16 bits of .action) ...
TC_READ = 1 << 0
TC_WRITE = 1 << 1
TC_FLUSH = 1 << 2
TC_SYNC = 1 << 3
TC_QUEUE = 1 << 4
TC_REQUEUE = 1 << 5
TC_ISSUE = 1 << 6
TC_COMPLETE = 1 << 7
TC_FS = 1 << 8
TC_PC = 1 << 9
TC_NOTIFY = 1 << 10
TC_AHEAD = 1 << 11
TC_META = 1 << 12
TC_DISCARD = 1 << 13
TC_DRV_DATA = 1 << 14
TC_FUA = 1 << 15
TC_SHIFT = 16

# ... and the basic actions (the lower 16 bits)
TA_QUEUE = 1
TA_BACKMERGE = 2
TA_FRONTMERGE = 3
TA_GETRQ = 4
TA_SLEEPRQ = 5
TA_REQUEUE = 6
TA_ISSUE = 7
TA_COMPLETE = 8
TA_PLUG = 9
TA_UNPLUG_IO = 10
TA_UNPLUG_TIMER = 11
TA_INSERT = 12
TA_SPLIT = 13
TA_BOUNCE = 14
TA_REMAP = 15

TN_PROCESS = 0

MAGIC = 0x65617400
VERSION = 0x07
MINORBITS = 20       # blktrace.h: MAJOR(dev) = dev >> 20 (the kernel's internal dev_t)

# struct blk_io_trace: magic, sequence, time, sector, bytes, action, pid, device, cpu, error,
# pdu_len — native byte order, 48 bytes.
HEADER = struct.Struct("=IIQQIIIIIHH")
assert HEADER.size == 48


def act(ta: int, *tcs: int) -> int:
    """BLK_TC_ACT(category) | __BLK_TA_* code."""
    bits = 0
    for tc in tcs:
        bits |= tc
    return (bits << TC_SHIFT) | ta


def dev_t(major: int, minor: int) -> int:
    return (major << MINORBITS) | minor


@dataclass
class Request:
    """One request as the submitter sees it: kind is read, write, flush or discard."""
    kind: str
    sector: int = 0
    nsectors: int = 0
    time_ns: int = 0
    pid: int = 1234
    cpu: int = 0
    device: tuple = (8, 0)
    sync: bool = False
    merged: bool = False     # merged into an earlier request: Q + M, no G/I/D/C of its own
    preflush: bool = False   # a write with REQ_PREFLUSH (RWBS "FW...")
    fua: bool = False        # a write with REQ_FUA (RWBS "WF...")


@dataclass
class _Stream:
    events: list = field(default_factory=list)


def _dir_bits(r: Request) -> tuple:
    if r.kind == "read":
        return (TC_READ,) + ((TC_SYNC,) if r.sync else ())
    if r.kind == "write":
        return ((TC_WRITE,) + ((TC_SYNC,) if r.sync else ()) + ((TC_FLUSH,) if r.preflush else ())
                + ((TC_FUA,) if r.fua else ()))
    if r.kind == "discard":
        return (TC_WRITE, TC_DISCARD)
    if r.kind == "flush":        # an empty REQ_OP_WRITE | REQ_PREFLUSH | REQ_SYNC bio (fsync)
        return (TC_WRITE, TC_FLUSH, TC_SYNC)
    raise ValueError(r.kind)


def events_for(r: Request) -> list:
    """(time, cpu, action, sector, bytes, pid, device, error, pdu) of one request's life."""
    dev = dev_t(*r.device)
    nbytes = 0 if r.kind == "flush" else r.nsectors * 512
    sector = 0 if r.kind == "flush" else r.sector
    bits = _dir_bits(r)
    t = r.time_ns
    out = [(t, r.cpu, act(TA_QUEUE, TC_QUEUE, *bits), sector, nbytes, r.pid, dev, 0, b"")]
    if r.merged:
        out.append((t + 100, r.cpu, act(TA_BACKMERGE, TC_QUEUE, *bits), sector, nbytes, r.pid, dev, 0, b""))
        return out
    if r.kind == "flush":
        # the flush machinery issues a REQ_OP_FLUSH request: only BLK_TC_FLUSH, no data
        rq_bits = (TC_FLUSH,)
    else:
        rq_bits = bits
    out.append((t + 100, r.cpu, act(TA_GETRQ, TC_QUEUE, *bits), sector, nbytes, r.pid, dev, 0, b""))
    out.append((t + 200, r.cpu, act(TA_PLUG, TC_QUEUE), 0, 0, r.pid, dev, 0, b""))
    out.append((t + 300, r.cpu, act(TA_INSERT, TC_QUEUE, *rq_bits), sector, nbytes, r.pid, dev, 0, b""))
    out.append((t + 400, r.cpu, act(TA_UNPLUG_IO, TC_QUEUE), 0, 0, r.pid, dev, 0,
                struct.pack(">Q", 1)))
    out.append((t + 500, r.cpu, act(TA_ISSUE, TC_ISSUE, *rq_bits), sector, nbytes, r.pid, dev, 0, b""))
    out.append((t + 50_000, r.cpu, act(TA_COMPLETE, TC_COMPLETE, *rq_bits), sector, nbytes, 0, dev, 0,
                b""))
    return out


def synthesize(requests: list[Request], base: str, comm: str = "fio") -> list[str]:
    """Write BASE.blktrace.CPU files (one per CPU, 0..max) as blktrace does; return their paths."""
    per_cpu: dict[int, list] = {}
    pids = sorted({(r.pid, r.cpu, dev_t(*r.device)) for r in requests})
    ncpu = max([r.cpu for r in requests] + [0]) + 1
    for cpu in range(ncpu):
        per_cpu[cpu] = []
    for pid, cpu, dev in pids:      # the process-name notify blkparse resolves "[comm]" from
        per_cpu[cpu].append((0, cpu, act(TN_PROCESS, TC_NOTIFY), 0, 0, pid, dev, 0,
                             comm.encode() + b"\0"))
    for r in requests:
        for ev in events_for(r):
            per_cpu[ev[1]].append(ev)
    paths = []
    for cpu in range(ncpu):
        evs = sorted(per_cpu[cpu], key=lambda e: e[0])
        path = f"{base}.blktrace.{cpu}"
        with open(path, "wb") as f:
            seq = 0
            for time, c, action, sector, nbytes, pid, dev, err, pdu in evs:
                is_notify = (action >> TC_SHIFT) & TC_NOTIFY
                if not is_notify:
                    seq += 1
                f.write(HEADER.pack(MAGIC | VERSION, 0 if is_notify else seq, time, sector, nbytes,
                                    action, pid, dev, c, err, len(pdu)))
                f.write(pdu)
        paths.append(path)
    return paths


def blkparse_binary() -> str:
    """The real blkparse; a clear failure (not a skip) when it is missing."""
    exe = shutil.which("blkparse")
    if exe is None:
        raise AssertionError("blkparse is not installed: `apt-get install -y blktrace` "
                             "(the blkparse oracle tests need the real tool)")
    return exe


def run_blkparse(base: str, out_path: str, *extra: str) -> str:
    """blkparse [EXTRA] -i BASE > OUT (default text format); returns the text."""
    exe = blkparse_binary()
    d, name = os.path.split(base)
    with open(out_path, "w", encoding="utf-8") as out:
        r = subprocess.run([exe, *extra, "-D", d or ".", "-i", name], stdout=out, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"blkparse failed ({r.returncode}): {r.stderr}")
    with open(out_path, encoding="utf-8") as f:
        return f.read()
