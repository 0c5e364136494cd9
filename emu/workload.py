"""The workload format: one guest I/O operation per line (see README, "Workload format")."""
from __future__ import annotations

import re

from .errors import WorkloadError
from .spec.blk import SECTOR_SIZE

OPS = ("write", "read", "flush", "discard", "write-zeroes", "get-id", "wait", "queue-depth", "at")
_TIME = re.compile(r"^(\d+)(ns|us|ms|s)?$")
_TIME_MULT = {None: 1, "ns": 1, "us": 1000, "ms": 1000_000, "s": 1000_000_000}
_SIZE = re.compile(r"^(0x[0-9a-fA-F]+|\d+)([kKmMgG]?)$")
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
RECORD = 16      # bytes per pattern record


def parse_size(text: str) -> int:
    """'4k', '0x1000', '1M', '2G' -> bytes (binary multiples); ValueError if malformed."""
    mt = _SIZE.match(text)
    if not mt:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 0x1000, 4k, 1M, 2G)")
    return int(mt.group(1), 0) * _MULT[mt.group(2).lower()]


def parse_time(text: str) -> int:
    """'1500', '1500ns', '20us', '3ms', '2s' -> nanoseconds of virtual time."""
    mt = _TIME.match(text)
    if not mt:
        raise ValueError(f"not a time: {text!r} (use e.g. 1500, 1500ns, 20us, 3ms, 2s)")
    return int(mt.group(1)) * _TIME_MULT[mt.group(2)]


def parse_workload(text: str, path: str = "<workload>") -> list[dict]:
    """Parse the whole text; the first malformed line raises WorkloadError('FILE:LINE: ...')."""
    ops = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ops.append(_parse_line(line, lineno, len(ops) + 1))
        except ValueError as e:
            text = raw.strip()
            text = text if len(text) <= 100 else text[:100] + "…"
            raise WorkloadError(f"{path}:{lineno}: {e} (line: {text!r})") from None
    return ops


def _parse_line(line: str, lineno: int, n: int) -> dict:
    toks = line.split()
    op, args = toks[0], toks[1:]
    if op not in OPS:
        shown = op if len(op) <= 40 else op[:40] + '…'
        raise ValueError(f"unknown operation {shown!r} (expected one of: {', '.join(OPS)})")
    d: dict = {"op": op, "line": lineno, "n": n}
    if op in ("flush", "get-id", "wait"):
        if args:
            raise ValueError(f"{op} takes no arguments")
        return d
    if op == "queue-depth":
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise ValueError("queue-depth takes one positive integer")
        d["depth"] = int(args[0])
        return d
    if op == "at":
        if len(args) != 1:
            raise ValueError("at takes one time (virtual time since the start, e.g. 20us)")
        d["time_ns"] = parse_time(args[0])
        return d
    if len(args) < 2:
        raise ValueError(f"{op} needs OFFSET and LEN")
    d["offset"] = parse_size(args[0])
    d["length"] = parse_size(args[1])
    if d["offset"] % SECTOR_SIZE:
        raise ValueError(f"OFFSET {args[0]} is not a multiple of {SECTOR_SIZE}")
    if d["length"] <= 0 or d["length"] % SECTOR_SIZE:
        raise ValueError(f"LEN {args[1]} must be a positive multiple of {SECTOR_SIZE}")
    for extra in args[2:]:
        if op == "write" and extra.startswith("fill="):
            try:
                val = int(extra[5:], 0)
            except ValueError:
                val = -1
            if not 0 <= val <= 255:
                raise ValueError(f"fill must be a byte value 0..0xff, not {extra[5:]!r}")
            d["fill"] = val
        elif op == "write-zeroes" and extra == "unmap":
            d["unmap"] = True
        else:
            raise ValueError(f"unexpected argument {extra!r} for {op}")
    return d


def check_bounds(ops: list[dict], disk_bytes: int, path: str) -> None:
    """Refuse, at its line, the first operation that reaches past the end of the disk."""
    for d in ops:
        if "offset" in d and d["offset"] + d["length"] > disk_bytes:
            raise WorkloadError(
                f"{path}:{d['line']}: {d['op']} at {d['offset']:#x}+{d['length']:#x} goes past the "
                f"end of the disk ({disk_bytes} bytes = {disk_bytes // SECTOR_SIZE} sectors)")


def write_pattern(n: int, offset: int, length: int, fill: int | None = None) -> bytes:
    """The bytes a `write` carries: fill=, or 16-byte records 'wNNNNNN:SSSSSSSS'.

    NNNNNN is the operation's ordinal in the workload (decimal, mod 10**6) and SSSSSSSS the
    disk sector the record lands in (hex, mod 2**32); each 512-byte sector holds 32 copies.
    """
    if fill is not None:
        return bytes([fill]) * length
    first = offset // SECTOR_SIZE
    out = bytearray()
    for s in range(first, first + length // SECTOR_SIZE):
        out += (f"w{n % 1000000:06d}:{s & 0xFFFFFFFF:08x}".encode()) * (SECTOR_SIZE // RECORD)
    return bytes(out)
