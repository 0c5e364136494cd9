"""vblkdbg record / replay / export, `record` on the command line, and a trace in the TUI."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

from tui.app import DebuggerApp
from tui.cli import build_tui_parser, open_session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
SMALL = ["--ram-size", "4M"]


def vblkdbg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))


def setup(tmp_path):
    for f in ("article.qcow2", "mixed.wl", "article.wl"):
        shutil.copy(os.path.join(SAMPLES, f), tmp_path / f)


def test_record_then_replay_check_and_json(tmp_path):
    setup(tmp_path)
    r = vblkdbg("record", "article.qcow2", "--workload", "mixed.wl", "-o", "m.trace",
                "--digest-interval", "50", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "recorded steps 0.." in r.stdout
    header = json.loads((tmp_path / "m.trace").read_text().splitlines()[0])
    assert header["vblkdbg-trace"] == 1 and header["image"]["path"] == "article.qcow2"
    assert header["workload"]["text"] == (tmp_path / "mixed.wl").read_text()
    r = vblkdbg("replay", "m.trace", "--check", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["checked"] > 5 and res["divergence"] is None
    # the trace moves with its image; elsewhere --image finds it
    os.mkdir(tmp_path / "elsewhere")
    shutil.move(tmp_path / "m.trace", tmp_path / "elsewhere" / "m.trace")
    r = vblkdbg("replay", "elsewhere/m.trace", cwd=tmp_path)
    assert r.returncode == 1 and "is not at" in r.stderr and "--image" in r.stderr
    r = vblkdbg("replay", "elsewhere/m.trace", "--image", "article.qcow2", cwd=tmp_path)
    assert r.returncode == 0 and "match the recording" in r.stdout


def test_a_tampered_trace_fails_replay_check_at_the_step(tmp_path):
    setup(tmp_path)
    r = vblkdbg("record", "article.qcow2", "--workload", "article.wl", "-o", "a.trace",
                "--digest-interval", "20", *SMALL, "-ex", "goto step 100",
                "-ex", "poke ram 0x10008 00000000", "-ex", "continue", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "a.trace").read_text().splitlines()
    (poke,) = [json.loads(ln) for ln in lines if '"input"' in ln]
    assert poke["step"] == 100 and poke["addr"] == "0x10008"
    lines = [ln.replace('"bytes": "00000000"', '"bytes": "00000001"') for ln in lines]
    (tmp_path / "t.trace").write_text("\n".join(lines) + "\n")
    r = vblkdbg("replay", "t.trace", "--check", cwd=tmp_path)
    assert r.returncode == 1 and "diverges at step 100: ram differ" in r.stdout


def test_bad_trace_files_are_one_line_errors(tmp_path):
    setup(tmp_path)
    (tmp_path / "junk.trace").write_bytes(b"\x00\xffnot json\n")
    (tmp_path / "empty.trace").write_bytes(b"")
    for name, msg in (("junk.trace", "not a vblkdbg trace"), ("empty.trace", "empty file"),
                      ("missing.trace", "no such trace file")):
        r = vblkdbg("replay", name, cwd=tmp_path)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_export_writes_chrome_trace_events(tmp_path):
    setup(tmp_path)
    assert vblkdbg("record", "article.qcow2", "--workload", "mixed.wl", "-o", "m.trace", *SMALL,
                   cwd=tmp_path).returncode == 0
    r = vblkdbg("export", "m.trace", "--perfetto", "out.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "out.json").read_text())
    ev = d["traceEvents"]
    slices = [e for e in ev if e["ph"] == "X"]
    end = json.loads((tmp_path / "m.trace").read_text().splitlines()[-1])["end"]
    assert [e["args"]["step"] for e in slices] == list(range(1, end + 1))
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    for e in slices:
        assert (e["pid"], e["tid"]) in names and e["dur"] > 0
    by_thread: dict = {}
    for e in slices:
        by_thread.setdefault((e["pid"], e["tid"]), []).append(e["ts"])
    assert all(ts == sorted(ts) for ts in by_thread.values())
    begins = [e for e in ev if e["ph"] == "b"]
    ends = {e["id"]: e for e in ev if e["ph"] == "e"}
    assert begins and len(begins) >= len(ends) > 0
    for b in begins:
        if b["id"] in ends:
            assert ends[b["id"]]["ts"] >= b["ts"]
    assert {e["cat"] for e in slices} >= {"virtio_ring", "virtio_blk"}


def test_record_on_the_command_line_and_open_the_trace_in_the_debugger(tmp_path, monkeypatch):
    setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    a = build_tui_parser().parse_args(["article.qcow2", "--workload", "article.wl", *SMALL])

    async def record_it():
        app = DebuggerApp(open_session(a))
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("colon", *"step 60", "enter")
            await pilot.press("colon", *"poke ram 0x20000 cafe", "enter")
            await pilot.press("colon", *"step 40", "enter")
            await pilot.press("colon", *"record s.trace 10", "enter")
            return app.session.m.digest(), app.session.m.steps

    digest, steps = asyncio.run(record_it())
    assert steps == 100
    t = open_session(build_tui_parser().parse_args(["s.trace"]))
    assert t.scheduled and t.m.steps == 0

    async def open_it():
        app = DebuggerApp(t)
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("colon", *"goto step 100", "enter")
            assert app.session.m.digest() == digest          # the poke came back at step 60
            await pilot.press("S")                            # reverse-step works on a trace
            assert app.session.m.steps == 99
            await pilot.press("colon", *"goto step 59", "enter")
            assert app.session.read_ram(0x20000, 2) != b"\xca\xfe"
            await pilot.press("colon", *"goto step 61", "enter")
            assert app.session.read_ram(0x20000, 2) == b"\xca\xfe"
    asyncio.run(open_it())
    t.m.fmt.close()
    t.m.hostfile.close()


def test_a_trace_refuses_workload_and_write(tmp_path):
    setup(tmp_path)
    assert vblkdbg("record", "article.qcow2", "--workload", "article.wl", "-o", "a.trace",
                   *SMALL, cwd=tmp_path).returncode == 0
    r = vblkdbg("batch", "a.trace", "--workload", "mixed.wl", "-ex", "when", cwd=tmp_path)
    assert r.returncode == 1 and "carries its own workload" in r.stderr
    r = vblkdbg("batch", "a.trace", "-ex", "continue", "-ex", "when", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.splitlines()[-1])
    end = json.loads((tmp_path / "a.trace").read_text().splitlines()[-1])
    assert last["step"] == end["end"] and last["digest"] == end["digest"]


def _fio_log(tmp_path) -> str:
    r = subprocess.run(["fio", "--name=t", "--filename=f.dat", "--size=512k", "--rw=randrw",
                        "--bs=4k", "--ioengine=psync", "--fsync=4", "--write_iolog=f.log",
                        "--output-format=json", "--randseed=7"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"fio is needed (apt-get install fio): {r.stderr}"
    return json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]


def test_run_batch_record_and_replay_take_a_fio_log_directly(tmp_path):
    setup(tmp_path)
    job = _fio_log(tmp_path)
    r = vblkdbg("run", "article.qcow2", "--workload", "f.log", "--json", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    by_type = res["requests"]["by_type"] if "requests" in res else res["by_type"]
    assert by_type["IN"] <= job["read"]["total_ios"]           # reads may merge, never grow
    assert by_type["OUT"] <= job["write"]["total_ios"] and by_type["OUT"] > 0
    # replay takes it too (with the image to run on) and reaches the same state
    r2 = vblkdbg("replay", "f.log", "--image", "article.qcow2", "--json", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    r3 = vblkdbg("run", "article.qcow2", "--workload", "f.log", "--json", cwd=tmp_path)
    assert json.loads(r2.stdout)["digest"] == json.loads(r3.stdout)["digest"]
    # a session on it records and replays like any other
    r = vblkdbg("record", "article.qcow2", "--workload", "f.log", "-o", "f.trace", *SMALL,
                "--digest-interval", "500", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "f.trace").read_text().splitlines()[-1])["digest"] == res["digest"]
    r = vblkdbg("replay", "f.trace", "--check", cwd=tmp_path)
    assert r.returncode == 0 and "match the recording" in r.stdout, r.stdout + r.stderr
    r = vblkdbg("replay", "f.log", cwd=tmp_path)
    assert r.returncode == 1 and "--image" in r.stderr


def test_outputs_that_are_directories_and_traces_given_as_workloads(tmp_path):
    setup(tmp_path)
    os.mkdir(tmp_path / "d")
    r = vblkdbg("record", "article.qcow2", "--workload", "article.wl", "-o", "d", *SMALL, cwd=tmp_path)
    assert r.returncode == 1 and "d: is a directory" in r.stderr and "Traceback" not in r.stderr
    assert vblkdbg("record", "article.qcow2", "--workload", "article.wl", "-o", "a.trace", *SMALL,
                   cwd=tmp_path).returncode == 0
    r = vblkdbg("export", "a.trace", "--perfetto", "d", cwd=tmp_path)
    assert r.returncode == 1 and "is a directory" in r.stderr
    r = vblkdbg("run", "article.qcow2", "--workload", "a.trace", cwd=tmp_path)
    assert r.returncode == 1 and "is a vblkdbg trace, not a workload" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    r = vblkdbg("batch", "article.qcow2", "--workload", "article.wl", *SMALL,
                "-ex", "record d", "-ex", "record nowhere/x.trace", cwd=tmp_path)
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["ok"] for o in out] == [False, False]
    assert "is a directory" in out[0]["error"] and "does not exist" in out[1]["error"]
    assert os.listdir(tmp_path / "d") == []


def test_trace_options_on_run_timing_and_queue_depth(tmp_path):
    setup(tmp_path)
    _fio_log(tmp_path)
    last_us = max(int(ln.split()[0]) for ln in (tmp_path / "f.log").read_text().splitlines()[1:]
                  if ln.split()[2] in ("read", "write"))
    runs = {}
    for extra in ([], ["--timing", "honour"], ["--trace-queue-depth", "1"]):
        r = vblkdbg("run", "article.qcow2", "--workload", "f.log", "--json", *SMALL, *extra,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        runs[tuple(extra)] = json.loads(r.stdout)
    # honour: fio's timestamps (microseconds since fio started, relative to the first record)
    # become virtual time, so the run lasts at least as long as the traced span
    first_us = min(int(ln.split()[0]) for ln in (tmp_path / "f.log").read_text().splitlines()[1:]
                   if ln.split()[2] in ("read", "write"))
    assert runs[("--timing", "honour")]["time_ns"] >= (last_us - first_us) * 1000
    assert runs[()]["time_ns"] < runs[("--timing", "honour")]["time_ns"]
    # queue depth 1 serialises the requests: another run (nr_requests is guest state)
    assert runs[("--trace-queue-depth", "1")]["digest"] != runs[()]["digest"]
    r = vblkdbg("run", "article.qcow2", "--workload", "f.log", "--trace-queue-depth", "0",
                cwd=tmp_path)
    assert r.returncode == 1 and "positive" in r.stderr
