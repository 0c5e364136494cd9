"""What every importer shares: --beyond, timing, determinism, atomic output, bounded memory, load/detect."""
from __future__ import annotations

import os
import random
import tracemalloc

import pytest

from emu.trace.importer import (Options, TraceImportError, detect_format, format_time,
                                import_trace, load_trace_workload)
from emu.workload import check_bounds, parse_workload
from tests.conftest import build, make_image, run_all

from .test_import_msr import render_msr
from .test_import_qemu_log import render_qemu

FIO = ("fio version 3 iolog\n10 /dev/vdb add\n20 /dev/vdb open\n"
       "100 /dev/vdb write 0 4096\n"              # line 4
       "150 /dev/vdb write 12288 8192\n"          # line 5: ends at 20 KiB
       "400 /dev/vdb read 16384 8192\n"           # line 6: ends at 24 KiB
       "2100 /dev/vdb sync 16384 0\n"             # line 7
       "2500 /dev/vdb trim 32768 4096\n"          # line 8: wholly past 16 KiB... and 32 KiB
       "2600 /dev/vdb close\n")


@pytest.fixture
def fio_log(tmp_path):
    p = tmp_path / "t.iolog"
    p.write_text(FIO)
    return str(p)


def _run(path, out, fmt="fio", **opts):
    stats = import_trace(path, fmt, str(out), Options(**opts))
    return stats, [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]


def test_beyond_refuse_names_the_first_offending_line(tmp_path, fio_log):
    out = tmp_path / "o.wl"
    with pytest.raises(TraceImportError) as e:
        _run(fio_log, out, disk_bytes=16384)
    assert str(e.value) == (f"{fio_log}:5: write at 0x3000+0x2000 goes past the end of the disk "
                            "(16384 bytes = 32 sectors; see --beyond) "
                            "(line: '150 /dev/vdb write 12288 8192')")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["overlays", "t.iolog"]


def test_beyond_clip_and_wrap(tmp_path, fio_log):
    out = tmp_path / "o.wl"
    st, body = _run(fio_log, out, disk_bytes=16384, beyond="clip")
    assert body == ["write 0x0 4096", "write 0x3000 4096", "wait", "flush"]
    assert (st.clipped, st.dropped) == (1, 2)
    assert "# 2 records dropped: wholly past the end of the disk" in out.read_text()
    st, body = _run(fio_log, out, disk_bytes=16384, beyond="wrap")
    assert body == ["write 0x0 4096", "write 0x3000 4096", "write 0x0 4096", "read 0x0 8192",
                    "wait", "flush", "discard 0x0 4096"]
    assert st.wrapped == 3 and st.bytes_written == 12288
    st, body = _run(fio_log, out, disk_bytes=4096, beyond="wrap")     # longer than the disk
    assert body[:4] == ["write 0x0 4096", "write 0x0 4096", "read 0x0 4096", "wait"]
    st, body = _run(fio_log, out, disk_bytes=1 << 20)                  # all inside: untouched
    assert (st.clipped, st.dropped, st.wrapped) == (0, 0, 0)


def test_timing_asap_and_honour(tmp_path, fio_log):
    out = tmp_path / "o.wl"
    _, asap = _run(fio_log, out)
    assert not any(ln.startswith("at ") for ln in asap)
    _, honour = _run(fio_log, out, timing="honour", queue_depth=16)
    assert honour == ["queue-depth 16", "write 0x0 4096", "at 50us", "write 0x3000 8192",
                      "at 300us", "read 0x4000 8192", "at 2ms", "wait", "flush", "at 2400us",
                      "discard 0x8000 4096"]
    assert [x for x in honour if not x.startswith(("at ", "queue-depth"))] == asap


def test_format_time():
    assert [format_time(n) for n in (1, 1500, 20_000, 3_000_000, 2_000_000_000, 2_500_000_000)] == \
        ["1ns", "1500ns", "20us", "3ms", "2s", "2500ms"]


@pytest.mark.parametrize("fmt", ["fio", "msr", "qemu-log"])
def test_same_input_gives_byte_identical_output(tmp_path, fmt):
    if fmt == "fio":
        src = tmp_path / "t.iolog"
        src.write_text(FIO)
    elif fmt == "msr":
        src = tmp_path / "t.csv"
        src.write_text(render_msr([("read", 1000, 3000), ("write", 8192, 4096)] * 50))
    else:
        src = render_qemu([("write", i * 8, 8) for i in range(40)] + [("flush", 0, 0)], "iso") \
            .write(tmp_path / "t.log")
    a, b = tmp_path / "a.wl", tmp_path / "b.wl"
    import_trace(str(src), fmt, str(a), Options(timing="honour"))
    import_trace(str(src), fmt, str(b), Options(timing="honour"))
    assert a.read_bytes() == b.read_bytes()


def test_output_is_replaced_only_on_success(tmp_path, fio_log):
    out = tmp_path / "o.wl"
    out.write_text("write 0 512\n")
    with pytest.raises(TraceImportError):
        import_trace(fio_log, "fio", str(out), Options(disk_bytes=4096))
    assert out.read_text() == "write 0 512\n"
    import_trace(fio_log, "fio", str(out))
    assert out.read_text().startswith("# imported from fio iolog v3 t.iolog")
    with pytest.raises(TraceImportError, match="refusing to overwrite the trace"):
        import_trace(fio_log, "fio", fio_log)
    with pytest.raises(TraceImportError, match="does not exist"):
        import_trace(fio_log, "fio", str(tmp_path / "nodir" / "o.wl"))
    with pytest.raises(TraceImportError, match="no such file"):
        import_trace(str(tmp_path / "missing"), "fio", str(out))


def test_overlong_and_non_utf8_lines(tmp_path):
    src = tmp_path / "t.csv"
    src.write_bytes(b"1,hm,0,Read,0,512,1\n" + b"9" * 70_000 + b"\n2,hm,0,Write,\xff512,512,1\n"
                    b"3,hm,0,Write,512,512,1\n")
    out = tmp_path / "o.wl"
    with pytest.raises(TraceImportError, match=r"t.csv:2: line longer than 65536 bytes"):
        import_trace(str(src), "msr", str(out))
    st, body = _run(str(src), out, "msr", skip_bad=True)
    assert st.skipped == 2 and body == ["read 0x0 512", "write 0x200 512"]
    assert "t.csv:2: line longer" in st.first_skipped


def test_load_trace_workload_matches_parse_workload(tmp_path, fio_log):
    ops = load_trace_workload(fio_log, timing="honour")
    out = tmp_path / "o.wl"
    import_trace(fio_log, "fio", str(out), Options(timing="honour"))
    parsed = parse_workload(out.read_text(), str(out))
    assert [{k: v for k, v in d.items() if k != "line"} for d in ops] == \
        [{k: v for k, v in d.items() if k != "line"} for d in parsed]
    # "line" is the trace's line each op came from
    assert [d["line"] for d in ops] == [4, 5, 5, 6, 6, 7, 7, 7, 8, 8]
    assert [d["n"] for d in ops] == list(range(1, 11))
    with pytest.raises(TraceImportError, match=r"t.iolog:5: write at 0x3000\+0x2000 goes past"):
        load_trace_workload(fio_log, disk_bytes=16384)
    # check_bounds (what `vblkdbg run` applies) then also points into the trace
    with pytest.raises(Exception, match=r"t.iolog:5: write at 0x3000\+0x2000 goes past"):
        check_bounds(load_trace_workload(fio_log), 16384, fio_log)
    wl = tmp_path / "plain.wl"
    wl.write_text("write 0 4k\nflush\n")
    assert load_trace_workload(str(wl)) == parse_workload("write 0 4k\nflush\n", str(wl))


def test_detect_format(tmp_path, fio_log):
    assert detect_format(fio_log) == "fio"
    msr = tmp_path / "m.csv"
    msr.write_text(render_msr([("read", 0, 512)] * 3))
    assert detect_format(str(msr)) == "msr"
    q = render_qemu([("write", 0, 8)], "pid").write(tmp_path / "q.log")
    assert detect_format(q) == "qemu-log"
    b = tmp_path / "b.txt"
    b.write_text("  8,0    3        1     0.000000000  1234  Q  WS 2048 + 8 [fio]\n")
    assert detect_format(str(b)) == "blkparse"
    wl = tmp_path / "w.wl"
    wl.write_text("# a workload\nwrite 0 4k\nwait\nat 2ms\nread 0 4k\n")
    assert detect_format(str(wl)) == "workload"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\xff\xfe garbage\n")
    assert detect_format(str(junk)) is None
    assert detect_format(str(tmp_path / "missing")) is None
    with pytest.raises(TraceImportError, match="not a workload nor a trace format"):
        load_trace_workload(str(junk))


def test_an_imported_trace_runs_in_the_emulator(tmp_path):
    src = tmp_path / "q.log"
    render_qemu([("write", 0, 8), ("write", 8, 8), ("flush", 0, 0), ("read", 0, 16),
                 ("get-id", 0, 0)], "pid", gap_us=200).write(src)
    out = tmp_path / "o.wl"
    import_trace(str(src), "qemu-log", str(out), Options(timing="honour", queue_depth=8,
                                                          disk_bytes=1 << 20))
    image = make_image(tmp_path / "disk.raw", 1 << 20)
    m = build(image, out.read_text())
    run_all(m)
    res = sorted(m.guest.proc.results, key=lambda r: r["n"])
    assert [r["op"] for r in res if r["op"] in ("write", "read", "flush", "get-id")] == \
        ["write", "write", "flush", "read", "get-id"]
    assert all(r["status"] == "OK" for r in res)


def _big_fio(path, n):
    rnd = random.Random(n)
    with open(path, "w") as f:
        f.write("fio version 3 iolog\n0 /d add\n1 /d open\n")
        for i in range(n):
            kind = ("read", "write", "sync", "trim")[rnd.randrange(4)]
            f.write(f"{i * 7} /d {kind} {rnd.randrange(1 << 20) * 512} "
                    f"{0 if kind == 'sync' else rnd.randrange(1, 64) * 512}\n")


def _big_qemu(path, n):
    kinds = ("read", "write", "flush", "write", "read")
    reqs = [(kinds[i % 5], i * 8 % (1 << 24), 8) for i in range(n // 7)]
    render_qemu(reqs, "pid", depth=8).write(path)


def _peak(fn, src, fmt, out):
    tracemalloc.start()
    try:
        stats = import_trace(str(src), fmt, str(out), Options(timing="honour"))
        return tracemalloc.get_traced_memory()[1], stats
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("fmt,gen", [("fio", _big_fio), ("qemu-log", _big_qemu)])
def test_memory_does_not_grow_with_the_input(tmp_path, fmt, gen):
    small, large = tmp_path / "small", tmp_path / "large"
    gen(small, 25_000)        # lines; tracemalloc slows the import ~15x, so keep them few
    gen(large, 100_000)
    p_small, s_small = _peak(gen, small, fmt, tmp_path / "s.wl")
    p_large, s_large = _peak(gen, large, fmt, tmp_path / "l.wl")
    assert s_large.ops > 3.5 * s_small.ops
    assert p_large < 1.3 * p_small + 64 * 1024, (p_small, p_large)
    assert p_large < 2 * 1024 * 1024, p_large
