"""fio iologs: real logs written by fio (--write_iolog) against fio's own JSON counts, plus v2 and bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from emu.trace.importer import Options, TraceImportError, import_trace, load_trace_workload


def fio_exe() -> str:
    exe = shutil.which("fio")
    if exe is None:
        raise AssertionError("fio is not installed: `apt-get install -y fio` (these tests check "
                             "the importer against logs the real fio writes)")
    return exe


def run_fio(tmp_path, *args, log: str | None = None) -> tuple[str, dict]:
    """Run fio with --write_iolog; (the log's path, jobs[0] of fio's JSON report)."""
    if log is None:
        n = len(list(tmp_path.glob("*.iolog")))
        log = str(tmp_path / (f"fio{n}.iolog" if n else "fio.iolog"))   # fio appends to a log
    r = subprocess.run([fio_exe(), "--name=t", f"--write_iolog={log}", "--output-format=json",
                        *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0, job
    return log, job


def _import(tmp_path, log, **opts):
    out = str(tmp_path / "out.wl")
    stats = import_trace(log, "fio", out, Options(**opts))
    with open(out) as f:
        return stats, f.read()


def test_real_fio_randrw_with_fsync_matches_fios_counts(tmp_path):
    data = tmp_path / "data"
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=1m", "--rw=randrw", "--bs=4k",
                       "--ioengine=psync", "--fsync=3")
    stats, text = _import(tmp_path, log)
    assert stats.reads == job["read"]["total_ios"] > 0
    assert stats.writes == job["write"]["total_ios"] > 0
    assert stats.bytes_read == job["read"]["io_bytes"]
    assert stats.bytes_written == job["write"]["io_bytes"]
    assert stats.flushes == job["sync"]["total_ios"] > 0
    assert stats.discards == 0
    assert text.startswith("# imported from fio iolog v3 fio.iolog by vblkdbg import\n")
    # fsync semantics: every flush waits for the writes before it
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert all(lines[i - 1] == "wait" for i, ln in enumerate(lines) if ln == "flush")
    ops = load_trace_workload(log, disk_bytes=1 << 20)
    assert sum(o["op"] == "write" for o in ops) == job["write"]["total_ios"]


def test_real_fio_fdatasync_and_libaio(tmp_path):
    data = tmp_path / "data"
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=1m", "--rw=randrw", "--bs=4k",
                       "--ioengine=psync", "--fdatasync=2")
    stats, _ = _import(tmp_path, log)
    assert (stats.reads, stats.writes) == (job["read"]["total_ios"], job["write"]["total_ios"])
    # fio counts fdatasync latencies in sync.lat_ns (its total_ios stays 0 for datasync)
    assert stats.flushes == job["sync"]["lat_ns"]["N"] > 0
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=1m", "--rw=randrw", "--bs=8k",
                       "--ioengine=libaio", "--iodepth=4", "--direct=1")
    stats, _ = _import(tmp_path, log)
    assert (stats.reads, stats.writes) == (job["read"]["total_ios"], job["write"]["total_ios"])
    assert (stats.bytes_read, stats.bytes_written) == (job["read"]["io_bytes"],
                                                       job["write"]["io_bytes"])


def test_real_fio_trims_become_discards(tmp_path):
    # fio's falloc engine punches holes for trims, so a plain file can be trimmed
    data = tmp_path / "data"
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=512k", "--rw=randtrim", "--bs=8k",
                       "--ioengine=falloc")
    stats, text = _import(tmp_path, log)
    assert stats.discards == job["trim"]["total_ios"] == 64
    assert stats.bytes_discarded == job["trim"]["io_bytes"]
    assert stats.reads == stats.writes == stats.flushes == 0
    assert "discard 0x" in text


def test_real_fio_several_files_need_a_choice(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    log, job = run_fio(tmp_path, f"--directory={d}", "--nrfiles=3", "--filesize=128k",
                       "--rw=randwrite", "--bs=4k", "--ioengine=psync")
    with pytest.raises(TraceImportError) as e:
        _import(tmp_path, log)
    msg = str(e.value)
    assert "3 files" in msg and "--file" in msg and "t.0.0" in msg and "t.0.2" in msg
    total = 0
    for i in range(3):
        by_index, _ = _import(tmp_path, log, file=str(i))
        by_name, _ = _import(tmp_path, log, file=str(d / f"t.0.{i}"))
        assert by_index.writes == by_name.writes == 32
        total += by_index.writes
    assert total == job["write"]["total_ios"]
    with pytest.raises(TraceImportError, match="no file 'nope'"):
        _import(tmp_path, log, file="nope")


def test_real_fio_unaligned_blocks_are_widened_or_refused(tmp_path):
    data = tmp_path / "data"
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=100000", "--rw=write", "--bs=1000",
                       "--ioengine=psync")
    stats, text = _import(tmp_path, log)
    assert stats.writes == job["write"]["total_ios"] == 100
    assert stats.widened > 0
    assert f"# {stats.widened} records widened to 512-byte alignment" in text
    # 0+1000 -> 0+1024, 1000+1000 -> 512+1536
    assert "write 0x0 1024\n" in text and "write 0x200 1536\n" in text
    with pytest.raises(TraceImportError, match=r"fio.iolog:4: write at 0\+1000 is not aligned"):
        _import(tmp_path, log, unaligned="refuse")


def test_real_fio_timestamps_are_microseconds(tmp_path):
    data = tmp_path / "data"
    log, job = run_fio(tmp_path, f"--filename={data}", "--size=256k", "--rw=read", "--bs=4k",
                       "--ioengine=psync", "--rate_iops=2000")
    _, text = _import(tmp_path, log, timing="honour")
    ats = [ln.split()[1] for ln in text.splitlines() if ln.startswith("at ")]
    from emu.workload import parse_time
    last = parse_time(ats[-1])
    # 64 reads at 2000 IOPS take ~31.5 ms of fio's run time: the log's clock is in microseconds
    assert 20_000_000 < last < 200_000_000, ats[-3:]
    assert job["read"]["total_ios"] == 64


def test_real_fio_appends_runs_to_one_log(tmp_path):
    data = tmp_path / "data"
    args = (f"--filename={data}", "--size=256k", "--rw=randrw", "--bs=4k", "--ioengine=psync")
    log, job1 = run_fio(tmp_path, *args, log=str(tmp_path / "both.iolog"))
    log, job2 = run_fio(tmp_path, *args, log=log)
    with open(log) as f:
        assert f.read().count("fio version 3 iolog") == 2
    stats, text = _import(tmp_path, log, timing="honour")
    assert stats.reads == job1["read"]["total_ios"] + job2["read"]["total_ios"]
    assert stats.writes == job1["write"]["total_ios"] + job2["write"]["total_ios"]
    from emu.workload import parse_time
    ats = [parse_time(ln.split()[1]) for ln in text.splitlines() if ln.startswith("at ")]
    assert ats == sorted(ats) and len(set(ats)) == len(ats)   # the second run continues the clock


def _v2(tmp_path, body: str, name="v2.log") -> str:
    p = tmp_path / name
    p.write_text("fio version 2 iolog\n" + body)
    return str(p)


def test_v2_log_with_wait_sync_and_trim(tmp_path):
    log = _v2(tmp_path, "/dev/vdb add\n/dev/vdb open\n/dev/vdb write 0 4096\n"
              "/dev/vdb wait 5 0\n/dev/vdb read 4096 8192\n/dev/vdb sync 4096 0\n"
              "/dev/vdb datasync 4096 0\n/dev/vdb trim 1048576 65536\n/dev/vdb close\n")
    stats, text = _import(tmp_path, log, timing="honour")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert body == ["write 0x0 4096", "at 5ms", "read 0x1000 8192", "wait", "flush", "wait",
                    "flush", "discard 0x100000 65536"]
    assert text.startswith("# imported from fio iolog v2 v2.log")
    _, asap = _import(tmp_path, log)
    assert "at " not in asap
    assert stats.flushes == 2 and stats.discards == 1


@pytest.mark.parametrize("line,what", [
    ("/dev/vdb write 0", "write needs OFFSET and LENGTH"),
    ("/dev/vdb write x 4096", "'x' is not a number of bytes"),
    ("/dev/vdb frob 0 4096", "unknown action 'frob'"),
    ("/dev/vdb add 0 1", "file action 'add' takes no OFFSET/LENGTH"),
    ("/dev/vdb", "expected FILENAME ACTION [OFFSET LENGTH]"),
    ("/dev/vdb read 0 0", "read of 0 bytes"),
])
def test_v2_bad_lines_name_file_line_and_text(tmp_path, line, what):
    log = _v2(tmp_path, f"/dev/vdb add\n/dev/vdb write 0 4096\n{line}\n/dev/vdb read 0 512\n")
    out = tmp_path / "out.wl"
    with pytest.raises(TraceImportError) as e:
        import_trace(log, "fio", str(out))
    msg = str(e.value)
    assert msg.startswith(f"{log}:4: {what}") and msg.endswith(f" (line: {line!r})"), msg
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["overlays", "v2.log"]   # no temporary file left
    stats = import_trace(log, "fio", str(out), Options(skip_bad=True))
    assert stats.skipped == 1 and stats.writes == 1 and stats.reads == 1
    assert stats.first_skipped == str(e.value)


def test_v3_bad_lines(tmp_path):
    p = tmp_path / "v3.log"
    p.write_text("fio version 3 iolog\n1 /f add\nabc /f read 0 512\n3 /f wait 10 0\n4 /f read 0 512\n")
    with pytest.raises(TraceImportError, match=r"v3.log:3: timestamp 'abc' is not a number"):
        import_trace(str(p), "fio", str(tmp_path / "o.wl"))
    stats = import_trace(str(p), "fio", str(tmp_path / "o.wl"), Options(skip_bad=True))
    assert stats.skipped == 2 and stats.reads == 1          # v3 forbids wait


def test_not_a_fio_log(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("fio version 1 iolog\n/f read 0 512\n")
    with pytest.raises(TraceImportError, match=r"x.log:1: not a fio iolog"):
        import_trace(str(p), "fio", str(tmp_path / "o.wl"))
    p.write_text("")
    with pytest.raises(TraceImportError, match=r"x.log: empty file"):
        import_trace(str(p), "fio", str(tmp_path / "o.wl"))
