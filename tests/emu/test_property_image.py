"""Random workloads leave the image exactly as a plain model of the same operations would.

Operations inside one epoch (between two `wait`s) never overlap, because the block layer
promises no order between concurrent overlapping requests; reads therefore see the image as
it was when their epoch began.  Everything else is random: sizes, alignment, request types,
queue size, INDIRECT_DESC / EVENT_IDX, cache and discard modes, the latency seed.
"""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.workload import write_pattern
from tests.conftest import build, make_image, run_all

DISK = 4 << 20
SECT = 512


@st.composite
def epochs(draw):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        used: list = []
        ops = []
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(["write", "write", "read", "discard", "write-zeroes",
                                         "flush", "get-id"]))
            if kind in ("flush", "get-id"):
                ops.append((kind,))
                continue
            big = draw(st.integers(0, 9)) == 0
            nsect = draw(st.integers(1, 3000 if big else 136))
            off = draw(st.integers(0, DISK // SECT - nsect)) * SECT
            ln = nsect * SECT
            if any(off < e and s < off + ln for s, e in used):
                continue
            used.append((off, off + ln))
            extra = ()
            if kind == "write":
                extra = (draw(st.one_of(st.none(), st.integers(0, 255))),)
            elif kind == "write-zeroes":
                extra = (draw(st.booleans()),)
            ops.append((kind, off, ln) + extra)
        out.append(ops)
    return out


def _render(eps) -> str:
    lines = []
    for ops in eps:
        for op in ops:
            if op[0] == "write":
                lines.append(f"write {op[1]} {op[2]}" + (f" fill={op[3]}" if op[3] is not None else ""))
            elif op[0] == "write-zeroes":
                lines.append(f"write-zeroes {op[1]} {op[2]}" + (" unmap" if op[3] else ""))
            elif op[0] in ("read", "discard"):
                lines.append(f"{op[0]} {op[1]} {op[2]}")
            else:
                lines.append(op[0])
        lines.append("wait")
    return "\n".join(lines) + "\n"


def _model(initial: bytes, eps, discard_unmap: bool):
    disk = bytearray(initial)
    reads = []
    n = 0
    for ops in eps:
        snapshot = bytes(disk)
        for op in ops:
            n += 1
            kind = op[0]
            if kind == "read":
                reads.append(hashlib.sha256(snapshot[op[1]:op[1] + op[2]]).hexdigest())
            elif kind == "write":
                disk[op[1]:op[1] + op[2]] = write_pattern(n, op[1], op[2], op[3])
            elif kind == "write-zeroes" or (kind == "discard" and discard_unmap):
                disk[op[1]:op[1] + op[2]] = bytes(op[2])
        n += 1          # the wait line
    return bytes(disk), reads


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(eps=epochs(), qsize=st.sampled_from([4, 8, 256]), indirect=st.booleans(),
       event_idx=st.booleans(), cache=st.sampled_from(["writeback", "writethrough", "unsafe"]),
       discard=st.sampled_from(["ignore", "unmap"]), seed=st.integers(0, 1000))
def test_image_matches_plain_model(tmp_path_factory, eps, qsize, indirect, event_idx, cache,
                                   discard, seed):
    initial = bytes((i * 7 + 3) & 0xFF for i in range(256 * 1024)) + bytes(DISK - 256 * 1024)
    img = make_image(tmp_path_factory.mktemp("p") / "p.raw", DISK, initial)
    m = build(img, _render(eps), queue_size=qsize, indirect=indirect, event_idx=event_idx,
              cache=cache, discard=discard, seed=seed)
    run_all(m)
    expect, reads = _model(initial, eps, discard == "unmap")
    assert m.vdev.error is None
    assert m.guest.proc.inflight == 0
    assert all(r["status"] == "OK" for r in m.guest.proc.results), m.guest.proc.results
    assert m.hostfile.pread(0, DISK) == expect
    got = sorted(m.guest.proc.reads, key=lambda r: r["n"])     # completion order may differ
    assert [r["sha256"] for r in got] == reads
    with open(img, "rb") as f:                  # the overlay kept the image itself pristine
        assert f.read() == initial
