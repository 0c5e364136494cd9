"""blkparse text: binary blktrace streams we synthesize, turned into text by the real blkparse, imported."""
from __future__ import annotations

import pytest

from emu.trace.blkparse import parse_rwbs
from emu.trace.importer import Options, TraceImportError, import_trace

from .blktrace_bin import Request, run_blkparse, synthesize


def _blkparse(tmp_path, requests, name="trace", *extra) -> str:
    synthesize(requests, str(tmp_path / name))
    out = str(tmp_path / f"{name}.txt")
    run_blkparse(str(tmp_path / name), out, *extra)
    return out


def _import(tmp_path, path, **opts):
    out = tmp_path / "out.wl"
    stats = import_trace(path, "blkparse", str(out), Options(**opts))
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    return stats, body


MIXED = [
    Request("write", 2048, 8, 1_000, sync=True),
    Request("write", 2056, 8, 2_000, merged=True),           # a back merge: counted once, at Q
    Request("read", 4096, 16, 200_000, cpu=1),
    Request("flush", time_ns=300_000),
    Request("discard", 8192, 64, 400_000),
    Request("read", 0, 256, 500_000, cpu=2, pid=77),
    Request("write", 100_000, 128, 600_000, cpu=1),
    Request("write", 5000, 8, 700_000, preflush=True, fua=True, sync=True),   # FWFS
]


def test_real_blkparse_text_counts_match_what_was_traced(tmp_path):
    text = _blkparse(tmp_path, MIXED)
    with open(text) as f:
        content = f.read()
    assert "Q FWS [fio]" in content and "Total (trace):" in content     # the real tool's output
    stats, body = _import(tmp_path, text)
    assert stats.reads == 2 and stats.bytes_read == (16 + 256) * 512
    assert stats.writes == 4 and stats.bytes_written == (8 + 8 + 128 + 8) * 512
    assert stats.flushes == 2          # the fsync flush and the PREFLUSH of FWFS
    assert stats.discards == 1 and stats.bytes_discarded == 64 * 512
    assert stats.skipped == 0
    assert body == ["write 0x100000 4096", "write 0x101000 4096", "read 0x200000 8192", "flush",
                    "discard 0x400000 32768", "read 0x0 131072", "write 0x30d4000 65536",
                    "flush", "write 0x271000 4096"]


def test_per_process_statistics_and_elapsed_times(tmp_path):
    # blkparse -s adds "COMM (PID)" statistics blocks; -t adds "(ELAPSED)" to Q/D/C lines
    text = _blkparse(tmp_path, MIXED, "trace", "-s", "-t")
    content = open(text).read()
    assert "\nfio (1234)\n" in content
    stats, body = _import(tmp_path, text)
    assert (stats.reads, stats.writes, stats.flushes, stats.discards) == (2, 4, 2, 1)


def test_several_devices_need_a_choice(tmp_path):
    reqs = [Request("write", 8, 8, 1000), Request("read", 16, 8, 2000, device=(8, 16)),
            Request("read", 24, 8, 3000, device=(253, 1)), Request("write", 32, 16, 4000)]
    text = _blkparse(tmp_path, reqs)
    with pytest.raises(TraceImportError) as e:
        _import(tmp_path, text)
    assert "3 devices ('8,0', '8,16', '253,1')" in str(e.value) and "--device" in str(e.value)
    st, body = _import(tmp_path, text, device="8,0")
    assert (st.writes, st.reads) == (2, 0) and body == ["write 0x1000 4096", "write 0x4000 8192"]
    st, body = _import(tmp_path, text, device="253,1")
    assert body == ["read 0x3000 4096"]
    with pytest.raises(TraceImportError, match="no device '9,9'"):
        _import(tmp_path, text, device="9,9")


def test_without_q_events_requests_are_counted_at_d(tmp_path):
    reqs = [Request("write", 8, 8, 1000), Request("flush", time_ns=2000), Request("read", 64, 8, 3000),
            Request("discard", 128, 16, 4000)]
    text = _blkparse(tmp_path, reqs)
    lines = open(text).read().splitlines(keepends=True)
    no_q = tmp_path / "noq.txt"
    no_q.write_text("".join(ln for ln in lines if "  Q " not in ln))
    st, body = _import(tmp_path, str(no_q))
    assert body == ["write 0x1000 4096", "flush", "read 0x8000 4096", "discard 0x10000 8192"]
    assert any("counted at D" in k for k in st.notes)


def test_timing_honour_uses_blkparse_timestamps(tmp_path):
    reqs = [Request("write", 8, 8, 5_000_000), Request("read", 64, 8, 5_250_000),
            Request("read", 72, 8, 7_000_000)]
    text = _blkparse(tmp_path, reqs)
    _, body = _import(tmp_path, text, timing="honour")
    assert body == ["write 0x1000 4096", "at 250us", "read 0x8000 4096", "at 2ms",
                    "read 0x9000 4096"]


def test_bad_event_line_before_the_summary(tmp_path):
    text = _blkparse(tmp_path, [Request("write", 8, 8, 1000), Request("read", 64, 8, 3000)])
    lines = open(text).read().splitlines(keepends=True)
    lines.insert(3, "  8,0    0        4     0.0000 oops\n")
    lines.insert(5, "  8,0    0        9     0.000000900  1234  Q  WS eight + 8 [fio]\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    out = tmp_path / "out.wl"
    with pytest.raises(TraceImportError) as e:
        import_trace(str(bad), "blkparse", str(out))
    assert str(e.value).startswith(f"{bad}:4: not a blkparse event line")
    assert str(e.value).endswith("(line: '8,0    0        4     0.0000 oops')")
    assert not out.exists()
    st = import_trace(str(bad), "blkparse", str(out), Options(skip_bad=True))
    assert st.skipped == 2 and st.writes == 1 and st.reads == 1


@pytest.mark.parametrize("rwbs,expected", [
    ("WS", (False, "W", False)), ("FWS", (True, "W", False)), ("FWFS", (True, "W", True)),
    ("WFS", (False, "W", True)), ("FN", (True, "N", False)), ("N", (False, "N", False)),
    ("D", (False, "D", False)), ("DE", (False, "D", False)), ("RA", (False, "R", False)),
    ("RM", (False, "R", False)), ("WZ", (False, "WZ", False)), ("ZR", (False, "ZR", False)),
    ("F", (False, "F", False)), ("X", None), ("WQ", None), ("Z", None),
])
def test_rwbs(rwbs, expected):
    assert parse_rwbs(rwbs) == expected


def test_hand_written_kinds(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(
        "  8,0    0        1     0.000000000  1 Q  WZ 0 + 8 [mkfs]\n"       # extended blktrace
        "  8,0    0        2     0.000001000  1 Q   F [kworker]\n"          # ftrace-style flush
        "  8,0    0        3     0.000002000  1 Q   N [kworker]\n"          # no data: skipped
        "  8,0    0        4     0.000003000  1 Q   R 96 (cdb) [sg_inq]\n"   # pc request
        "  8,0    0        5     0.000004000  1 Q  RA 64 + 8 (   12345) [cat]\n"   # blkparse -t
        "  8,0    0        0     0.000005000     0  m   N some message\n"
        "\nReads Queued: 1\nCPU0 (8,0):\n")
    with pytest.raises(TraceImportError, match=r"t.txt:8: not a blkparse event line"):
        _import(tmp_path, str(p))
    p.write_text(p.read_text().replace("\nReads Queued: 1\n",
                                       "\nThroughput (R/W): 0KiB/s / 0KiB/s\nReads Queued: 1\n"))
    st, body = _import(tmp_path, str(p))
    assert body == ["write-zeroes 0x0 4096", "flush", "read 0x8000 4096"]
    assert st.write_zeroes == 1 and st.notes
