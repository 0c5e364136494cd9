"""MSR Cambridge CSV traces (SNIA IOTTA): volumes, FILETIME timestamps, alignment, bad rows."""
from __future__ import annotations

import pytest

from emu.trace.importer import Options, TraceImportError, import_trace

T0 = 128166372003061629          # a FILETIME of the traces' week in February 2007


def render_msr(rows, host="hm", disk=0, t0=T0, step=10_000) -> str:
    """rows: [(kind, offset, size)] -> CSV lines, one every step ticks (100 ns)."""
    out = []
    for i, (kind, off, size) in enumerate(rows):
        out.append(f"{t0 + i * step},{host},{disk},{kind.capitalize()},{off},{size},{1000 + i}")
    return "\n".join(out) + "\n"


def _import(tmp_path, text, **opts):
    p = tmp_path / "hm_0.csv"
    p.write_text(text)
    out = tmp_path / "out.wl"
    stats = import_trace(str(p), "msr", str(out), Options(**opts))
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    return stats, body, out.read_text()


def test_reads_and_writes(tmp_path):
    text = render_msr([("read", 3608064, 4096), ("write", 0, 65536), ("read", 1 << 33, 512)])
    st, body, full = _import(tmp_path, text)
    assert body == ["read 0x370e00 4096", "write 0x0 65536", "read 0x200000000 512"]
    assert (st.reads, st.writes, st.bytes_read, st.bytes_written) == (2, 1, 4608, 65536)
    assert full.startswith("# imported from MSR Cambridge trace hm_0.csv by vblkdbg import\n")


def test_header_line_is_allowed(tmp_path):
    text = "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n" + render_msr(
        [("write", 512, 512)])
    _, body, _ = _import(tmp_path, text)
    assert body == ["write 0x200 512"]


def test_filetime_ticks_are_100ns(tmp_path):
    text = render_msr([("read", 0, 4096), ("read", 4096, 4096), ("read", 8192, 4096)], step=15)
    _, body, _ = _import(tmp_path, text, timing="honour")
    assert body == ["read 0x0 4096", "at 1500ns", "read 0x1000 4096", "at 3us", "read 0x2000 4096"]


def test_unaligned_rows_widen_or_refuse(tmp_path):
    text = render_msr([("read", 1000, 100), ("write", 4096, 4096), ("write", 512, 1000)])
    st, body, full = _import(tmp_path, text)
    assert body == ["read 0x200 1024", "write 0x1000 4096", "write 0x200 1024"]
    assert st.widened == 2 and "# 2 records widened to 512-byte alignment" in full
    with pytest.raises(TraceImportError, match=r"hm_0.csv:1: read at 1000\+100 is not aligned"):
        _import(tmp_path, text, unaligned="refuse")


def test_several_volumes(tmp_path):
    text = (render_msr([("write", 0, 512)], host="hm", disk=0)
            + render_msr([("read", 512, 512)], host="hm", disk=1)
            + render_msr([("read", 1024, 512)], host="prxy", disk=1))
    with pytest.raises(TraceImportError) as e:
        _import(tmp_path, text)
    assert "3 volumes ('hm:0', 'hm:1', 'prxy:1')" in str(e.value) and "--disk" in str(e.value)
    _, body, _ = _import(tmp_path, text, disk="0")
    assert body == ["write 0x0 512"]
    with pytest.raises(TraceImportError, match="2 volumes .* --disk HOST:N"):
        _import(tmp_path, text, disk="1")
    _, body, _ = _import(tmp_path, text, disk="prxy:1")
    assert body == ["read 0x400 512"]
    with pytest.raises(TraceImportError, match="no volume '7'"):
        _import(tmp_path, text, disk="7")


@pytest.mark.parametrize("row,what", [
    ("128166372003061629,hm,0,Read,4096", "expected 7 comma-separated fields"),
    ("128166372003061629,hm,0,Trim,4096,512,10", "Type 'Trim' is neither Read nor Write"),
    ("128166372003061629,hm,0,Read,-4096,512,10", "Offset '-4096' is not a non-negative integer"),
    ("12816637200306162x,hm,0,Read,4096,512,10", "Timestamp '12816637200306162x' is not"),
    ("128166372003061629,hm,0,Read,4096,0,10", "Size 0"),
])
def test_bad_rows(tmp_path, row, what):
    text = render_msr([("write", 0, 512)]) + row + "\n" + render_msr([("read", 0, 512)])
    with pytest.raises(TraceImportError) as e:
        _import(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'hm_0.csv'}:2: {what}")
    assert str(e.value).endswith(f"(line: {row!r})")
    assert not (tmp_path / "out.wl").exists()
    st, body, _ = _import(tmp_path, text, skip_bad=True)
    assert st.skipped == 1 and body == ["write 0x0 512", "read 0x0 512"]
