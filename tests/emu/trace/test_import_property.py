"""Property tests: random request lists rendered in every trace format import back to the same requests."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.trace.importer import Options, import_trace
from emu.workload import parse_time, parse_workload

from .blktrace_bin import Request, run_blkparse, synthesize
from .test_import_msr import render_msr
from .test_import_qemu_log import render_qemu

# (kind, sector, nsectors, microseconds since the previous request)
request = st.tuples(st.sampled_from(["read", "write", "flush", "discard"]),
                    st.integers(0, 1 << 24), st.integers(1, 2048), st.integers(1, 5000))
requests = st.lists(request, min_size=1, max_size=40)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def expected(reqs, kinds):
    out = []
    for kind, sector, n, _dt in reqs:
        if kind not in kinds:
            continue
        out.append((kind,) if kind == "flush" else (kind, sector * 512, n * 512))
    return out


def imported(path, fmt, **opts):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "o.wl"
        stats = import_trace(str(path), fmt, str(out), Options(**opts))
        ops = parse_workload(out.read_text(), str(out))
    got = []
    for o in ops:
        if o["op"] in ("wait", "at"):
            continue
        got.append((o["op"],) if o["op"] == "flush" else (o["op"], o["offset"], o["length"]))
    return got, ops, stats


def times_us(reqs):
    t, out = 0, []
    for *_x, dt in reqs:
        t += dt
        out.append(t)
    return out


@SETTINGS
@given(reqs=requests)
def test_fio_v3(reqs):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.iolog"
        lines = ["fio version 3 iolog", "0 /dev/vdb add", "0 /dev/vdb open"]
        last_off = 0
        for (kind, sector, n, _dt), t in zip(reqs, times_us(reqs)):
            if kind == "flush":         # fio logs a sync with the previous offset and length 0
                lines.append(f"{t} /dev/vdb sync {last_off} 0")
            else:
                act = "trim" if kind == "discard" else kind
                lines.append(f"{t} /dev/vdb {act} {sector * 512} {n * 512}")
                last_off = sector * 512
        p.write_text("\n".join(lines) + "\n")
        got, ops, _ = imported(p, "fio", timing="honour")
    assert got == expected(reqs, ("read", "write", "flush", "discard"))
    ats = [o["time_ns"] for o in ops if o["op"] == "at"]
    t = times_us(reqs)
    assert ats == sorted({(x - t[0]) * 1000 for x in t} - {0})


@SETTINGS
@given(reqs=requests)
def test_msr(reqs):
    rows = [(k, s * 512, n * 512) for k, s, n, _ in reqs if k in ("read", "write")]
    if not rows:
        return
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.csv"
        p.write_text(render_msr(rows))
        got, _, _ = imported(p, "msr")
    assert got == expected(reqs, ("read", "write"))


@SETTINGS
@given(reqs=requests, prefix=st.sampled_from(["none", "pid", "iso"]), depth=st.integers(1, 8))
def test_qemu_log(reqs, prefix, depth):
    as_qemu = [("flush", 0, 0) if k == "flush" else (k, s, n) for k, s, n, _ in reqs]
    with tempfile.TemporaryDirectory() as d:
        p = render_qemu(as_qemu, prefix, depth=depth).write(Path(d) / "q.log")
        got, _, stats = imported(p, "qemu-log")
    assert got == expected(reqs, ("read", "write", "flush"))
    assert stats.notes.get("discard/write-zeroes requests skipped (no trace event carries their "
                           "range)", 0) == sum(k == "discard" for k, *_ in reqs)
    assert set(stats.notes) <= {"discard/write-zeroes requests skipped (no trace event carries "
                                "their range)"}


@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=requests, cpus=st.integers(1, 3))
def test_blkparse_through_the_real_tool(reqs, cpus):
    t, synth = 0, []
    for i, (kind, sector, n, dt) in enumerate(reqs):
        t += dt * 1000
        synth.append(Request(kind, sector, n, t, cpu=i % cpus, sync=i % 2 == 1))
    with tempfile.TemporaryDirectory() as d:
        synthesize(synth, f"{d}/t")
        run_blkparse(f"{d}/t", f"{d}/t.txt")
        got, ops, _ = imported(f"{d}/t.txt", "blkparse", timing="honour")
    assert got == expected(reqs, ("read", "write", "flush", "discard"))
    ats = [o["time_ns"] for o in ops if o["op"] == "at"]
    tt = times_us(reqs)
    assert ats == sorted({(x - tt[0]) * 1000 for x in tt} - {0})
    assert all(parse_time(f"{a}ns") == a for a in ats)
