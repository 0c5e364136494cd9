"""emu_fast/bench.py: the qemu-img peer is the command the issue names, at its defaults."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from emu_fast import bench as B
from tests.oracle import qemu_img, require


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_img_bench_runs_the_default_command_on_the_same_kind_of_image(tmp_path, fmt):
    require("qemu-img")
    img = B.make_image(str(tmp_path / f"q.{fmt}"), fmt)
    r = B.qemu_img_bench(img, fmt, 64)
    assert "error" not in r, r
    # qemu-img bench -d 1 with its own default cache mode: no -t, no O_DIRECT
    assert r["command"].split() == ["bench", "-w", "-d", "1", "-s", "4k", "-c", "64",
                                    "-f", fmt, f"q.{fmt}"]
    assert r["cache"] == "writeback" and r["requests"] == 64 and r["req_per_s"] > 0
    # it really wrote: 64 sequential 4 KiB writes of qemu-img bench's pattern (0 by default)
    # allocate the first 256 KiB of a qcow2 image, which qemu-img's own check accepts
    if fmt == "qcow2":
        qemu_img("check", "-f", "qcow2", img)
        info = qemu_img("map", "--output=json", "-f", "qcow2", img).stdout
        assert '"data": true' in info


def test_qemu_img_bench_without_qemu_img_is_none_and_a_failure_is_reported(tmp_path, monkeypatch):
    img = B.make_image(str(tmp_path / "q.raw"), "raw")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert B.qemu_img_bench(img, "raw", 4) is None
    monkeypatch.undo()
    require("qemu-img")
    r = B.qemu_img_bench(str(tmp_path / "missing.raw"), "raw", 4)
    assert set(r) == {"error"} and r["error"]
    assert not os.path.exists(tmp_path / "missing.raw")


def test_bench_works_in_the_directory_it_is_given_and_says_so(tmp_path):
    tmp_path = tmp_path / "bench"
    tmp_path.mkdir()
    """Images and the engines' overlays go into --dir; the run's own subdirectory is removed
    afterwards and the result names the directory and its file system."""
    res = B.run_bench(True, requests=4, workloads=("rand4k",), formats=("qcow2",),
                      engines=("py",), qemu=False, out=lambda *a: None, repeat=1,
                      dir=str(tmp_path))
    assert res["dir"] == str(tmp_path) and res["fs"] == B.fs_type(str(tmp_path))
    assert res["fs"] != "unknown" and os.listdir(tmp_path) == []
    img = B.make_image(str(tmp_path / "o.qcow2"), "qcow2")
    m = B._machine(img, B.workload("rand4k", 2))
    try:
        assert os.path.dirname(m.hostfile.ov_path) == str(tmp_path)
    finally:
        m.hostfile.close()


def test_bench_dir_defaults_to_tmpfs_and_rejects_what_it_cannot_use(tmp_path, monkeypatch):
    assert B.fs_type("/proc/self") == "proc"
    if os.path.isdir("/dev/shm") and B.fs_type("/dev/shm") == "tmpfs" \
            and os.access("/dev/shm", os.W_OK):
        assert B.bench_dir() == "/dev/shm"
        st = os.statvfs("/dev/shm")                 # too small for the run: not there
        assert B.bench_dir(need=st.f_bavail * st.f_frsize + (1 << 30)) == tempfile.gettempdir()
    monkeypatch.setattr(B, "fs_type", lambda path: "ext4")      # /dev/shm on a disk
    assert B.bench_dir() == tempfile.gettempdir()
    with pytest.raises(ValueError, match="not a directory"):
        B.bench_dir(str(tmp_path / "missing"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        B.bench_dir(str(tmp_path / "f"))


def test_host_calls_are_the_runs_own_image_io_and_bound_the_ratio(tmp_path):
    """host_calls notes the image file's system calls of a run: on a raw image, 4 KiB random
    writes are pwrites of 4 KiB at the workload's own offsets (and nothing is left patched);
    run_bench replays them and divides py's time by that."""
    from emu.block import hostfile
    wl = B.workload("rand4k", 12, seed=7)
    offsets = sorted(int(line.split()[1]) for line in wl.splitlines() if line.startswith("write"))
    calls = B.host_calls(B.make_image(str(tmp_path / "h.raw"), "raw"), wl)
    assert hostfile.os is os
    writes = [(n, off) for op, n, off in calls if op == "pwrite"]
    assert sorted(off for n, off in writes if n == 4096) == offsets
    assert B.replay_calls(calls, str(tmp_path)) > 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith("vblkdbg-io-")]
    res = B.run_bench(True, requests=6, workloads=("rand4k",), formats=("raw",), qemu=False,
                      out=lambda *a: None, repeat=1, dir=str(tmp_path))
    row = res["results"][0]
    assert row["host_io"]["calls"] >= 6
    assert row["ceiling"] == row["py"]["seconds"] / row["host_io"]["seconds"]


def test_host_calls_put_the_os_module_back_when_the_run_fails(tmp_path, monkeypatch):
    from emu import engine as E
    from emu.block import hostfile

    def boom(m, eng):
        assert isinstance(hostfile.os, B._SyscallLog)
        raise RuntimeError("boom")
    monkeypatch.setattr(E, "run", boom)
    with pytest.raises(RuntimeError):
        B.host_calls(B.make_image(str(tmp_path / "h.raw"), "raw"), B.workload("rand4k", 2))
    assert hostfile.os is os


def _row(wl, fmt, over_py, ceiling=None, over_qemu=None):
    r = {"workload": wl, "format": fmt, "py": {}, "fast": {}, "fast_over_py": over_py}
    if ceiling is not None:
        r["ceiling"] = ceiling
    if over_qemu is not None:
        r["engine_over_qemu"] = over_qemu
    return r


def test_targets_say_which_rows_meet_them_and_which_the_ceiling_rules_out():
    """Each target is met only when every row it covers meets it; a row whose host I/O ceiling
    is under 50x is named as out of reach; the qemu-img target covers qcow2 rand4k alone."""
    rows = [_row("rand4k", "raw", 60.0, 70.0, 9.0), _row("rand4k", "qcow2", 18.0, 112.0, 2.3),
            _row("seq64k", "raw", 5.3, 8.0)]
    py, qemu = B.targets(rows)
    assert py["goal"] == 50 and not py["met"]
    assert [(x["workload"], x["format"], x["met"], x["reachable"]) for x in py["rows"]] == \
        [("rand4k", "raw", True, True), ("rand4k", "qcow2", False, True), ("seq64k", "raw", False, False)]
    assert qemu["met"] and [(x["format"], x["measured"]) for x in qemu["rows"]] == [("qcow2", 2.3)]
    lines = B._target_lines([py, qemu])
    assert lines[0].startswith("target fast/py >= 50x: NOT met (1 of 3 rows; best 60.00x, rand4k raw")
    assert lines[0].endswith("out of reach by the host I/O ceiling: seq64k raw)")
    assert lines[1].startswith("target fast/qemu-img bench -d 1, qcow2 rand4k >= 1x: met (1 of 1 rows")
    rows[1]["fast_over_py"], rows[2]["fast_over_py"] = 50.0, 51.0       # all rows: met
    rows[1]["engine_over_qemu"] = 0.99
    py, qemu = B.targets(rows)
    assert py["met"] and not qemu["met"]
    py, qemu = B.targets([_row("rand4k", "raw", 60.0)])                  # nothing to judge qemu by
    assert "reachable" not in py["rows"][0] and qemu["rows"] == [] and not qemu["met"]
    assert B._target_lines([qemu]) == [
        "target fast/qemu-img bench -d 1, qcow2 rand4k >= 1x: not measured in this run"]


def test_a_bench_run_reports_its_targets_from_its_own_rows(tmp_path):
    res = B.run_bench(True, requests=4, workloads=("rand4k",), formats=("raw", "qcow2"),
                      qemu=False, out=lambda *a: None, repeat=1, dir=str(tmp_path))
    py, qemu = res["targets"]
    assert [(x["workload"], x["format"], x["measured"]) for x in py["rows"]] == \
        [(r["workload"], r["format"], r["fast_over_py"]) for r in res["results"]]
    assert py["met"] == all(r["fast_over_py"] >= 50 for r in res["results"])
    assert qemu["rows"] == []
    printed = []
    B.run_bench(False, requests=2, workloads=("rand4k",), formats=("raw",), qemu=False,
                out=printed.append, repeat=1, dir=str(tmp_path))
    assert "target fast/py >= 50x: " in printed[0]
