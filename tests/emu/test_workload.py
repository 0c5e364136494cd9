"""The workload format: sizes, every op, the FILE:LINE errors, the write pattern."""
from __future__ import annotations

import pytest

from emu.errors import WorkloadError
from emu.workload import check_bounds, parse_size, parse_workload, write_pattern


@pytest.mark.parametrize("text,val", [("4096", 4096), ("0x1000", 4096), ("4k", 4096),
                                      ("4K", 4096), ("1M", 1 << 20), ("2G", 2 << 30),
                                      ("0x10k", 16 << 10)])
def test_sizes(text, val):
    assert parse_size(text) == val


@pytest.mark.parametrize("text", ["", "4kb", "-1", "1.5M", "k", "0x", "4 k", "1T"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_every_operation_parses():
    ops = parse_workload(
        "# comment\nqueue-depth 8\nwrite 0 4k fill=0xab\nread 4k 8k # trailing\nflush\n"
        "discard 1M 64k\nwrite-zeroes 2M 64k unmap\nwrite-zeroes 3M 4k\nget-id\n\nwait\n", "w.wl")
    assert [o["op"] for o in ops] == ["queue-depth", "write", "read", "flush", "discard",
                                      "write-zeroes", "write-zeroes", "get-id", "wait"]
    assert ops[1] == {"op": "write", "line": 3, "n": 2, "offset": 0, "length": 4096, "fill": 0xAB}
    assert ops[5]["unmap"] is True and "unmap" not in ops[6]
    assert ops[0]["depth"] == 8


@pytest.mark.parametrize("line,what", [
    ("frobnicate 0 4k", "unknown operation 'frobnicate'"),
    ("write 0", "needs OFFSET and LEN"),
    ("write 100 4k", "OFFSET 100 is not a multiple of 512"),
    ("read 0 0", "LEN 0 must be a positive multiple of 512"),
    ("read 0 1000", "LEN 1000 must be a positive multiple of 512"),
    ("write 0 4k fill=0x100", "fill must be a byte value"),
    ("write 0 4k fill=zz", "fill must be a byte value"),
    ("read 0 4k unmap", "unexpected argument 'unmap' for read"),
    ("flush now", "flush takes no arguments"),
    ("queue-depth 0", "queue-depth takes one positive integer"),
    ("write x 4k", "not a size: 'x'"),
])
def test_errors_name_file_line_and_text(line, what):
    with pytest.raises(WorkloadError) as ei:
        parse_workload(f"write 0 4k\n\n{line}\n", "dir/w.wl")
    msg = str(ei.value)
    assert msg.startswith("dir/w.wl:3: ")
    assert what in msg
    assert repr(line) in msg
    assert "\n" not in msg


def test_bounds_refuse_first_offending_line():
    ops = parse_workload("write 0 4k\nread 512k 4k\nwrite 1020k 8k\n", "w")
    check_bounds(ops, 2 << 20, "w")
    with pytest.raises(WorkloadError, match=r"^w:3: write at 0xff000\+0x2000 goes past the end"):
        check_bounds(ops, 1 << 20, "w")


def test_pattern_identifies_write_and_sector():
    p = write_pattern(7, 1024, 1024)
    assert len(p) == 1024
    assert p[:16] == b"w000007:00000002" and p[512:528] == b"w000007:00000003"
    assert p[:512] == b"w000007:00000002" * 32
    assert write_pattern(1, 0, 512, fill=0x5A) == b"\x5a" * 512
