"""The command-line contract: run/create, JSON keys, events, dumps, and clean one-line errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import make_image
from tui.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _wl(tmp_path, text, name="w.wl"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def run_cli(*args):
    """Run vblkdbg in a subprocess (a real exit status, real stdout/stderr)."""
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_run_json_has_the_contract_keys(tmp_path, image):
    r = run_cli("run", image, "--workload", _wl(tmp_path, "write 0 4k\nread 0 4k\nwait\nread 0 4k\n"),
                "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    for k in ("steps", "time_ns", "digest", "requests", "device", "queues", "kicks",
              "interrupts", "reads"):
        assert k in j
    assert set(j["requests"]) >= {"submitted", "completed", "errors", "by_type"}
    assert set(j["requests"]["by_type"]) == {"IN", "OUT", "FLUSH", "GET_ID", "DISCARD", "WRITE_ZEROES"}
    assert set(j["device"]) >= {"status", "status_names", "features_offered",
                                "features_negotiated", "broken", "error"}
    q = j["queues"][0]
    assert set(q) >= {"index", "size", "desc", "avail", "used", "avail_idx", "used_idx",
                      "last_avail_idx", "last_used_idx", "num_free", "inuse"}
    assert len(j["reads"]) == 2 and set(j["reads"][0]) >= {"offset", "length", "sha256"}
    assert j["device"]["status_names"] == ["ACKNOWLEDGE", "DRIVER", "DRIVER_OK", "FEATURES_OK"]
    assert "VIRTIO_RING_F_EVENT_IDX" in j["device"]["features_negotiated"]
    assert j["device"]["broken"] is False and j["device"]["error"] is None


def test_events_dump_ram_and_steps(tmp_path, image):
    ev = tmp_path / "ev.jsonl"
    ram = tmp_path / "ram.bin"
    assert main(["run", image, "--workload", _wl(tmp_path, "write 0 4k\n"), "--json",
                 "--events", str(ev), "--dump-ram", str(ram), "--ram-size", "8M"]) == 0
    lines = [json.loads(x) for x in ev.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, len(lines) + 1))
    assert set(lines[0]) == {"step", "time_ns", "layer", "function", "source", "detail"}
    assert os.path.getsize(ram) == 8 << 20
    r = run_cli("run", image, "--workload", _wl(tmp_path, "write 0 4k\n"), "--json", "--steps", "10")
    j = json.loads(r.stdout)
    assert j["steps"] == 10 and j["stop"] == "steps"


def test_no_indirect_no_event_idx_queue_size(tmp_path, image):
    r = run_cli("run", image, "--workload", _wl(tmp_path, "write 0 4k\n"), "--json",
                "--no-indirect", "--no-event-idx", "--queue-size", "16", "--seed", "3")
    j = json.loads(r.stdout)
    assert j["queues"][0]["size"] == 16
    neg = j["device"]["features_negotiated"]
    assert "VIRTIO_RING_F_INDIRECT_DESC" not in neg and "VIRTIO_RING_F_EVENT_IDX" not in neg


def test_image_untouched_by_default_write_and_save_as(tmp_path):
    img = make_image(tmp_path / "d.raw", 1 << 20)
    before = _sha(img)
    wl = _wl(tmp_path, "write 0 4k fill=0x11\n")
    assert main(["run", img, "--workload", wl, "--json"]) == 0
    assert _sha(img) == before
    out = tmp_path / "out.raw"
    assert main(["run", img, "--workload", wl, "--json", "--save-as", str(out)]) == 0
    assert _sha(img) == before
    with open(out, "rb") as f:
        assert f.read(4096) == b"\x11" * 4096
    assert os.path.getsize(out) == 1 << 20
    assert main(["run", img, "--workload", wl, "--json", "--write"]) == 0
    with open(img, "rb") as f:
        assert f.read(4096) == b"\x11" * 4096


def test_same_command_same_digest(tmp_path):
    wl = os.path.join(SAMPLES, "mixed.wl")
    img = os.path.join(SAMPLES, "article.qcow2")
    a = json.loads(run_cli("run", img, "--workload", wl, "--json").stdout)
    b = json.loads(run_cli("run", img, "--workload", wl, "--json").stdout)
    assert a["digest"] == b["digest"] and a["steps"] == b["steps"]


def test_samples_run_and_stay_pristine():
    img = os.path.join(SAMPLES, "article.qcow2")
    before = _sha(img)
    for wl in ("article.wl", "mixed.wl"):
        r = run_cli("run", img, "--workload", os.path.join(SAMPLES, wl), "--json")
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        assert j["requests"]["errors"] == 0 and j["guest"]["outstanding_ops"] == 0
        assert all(o["status"] == "OK" for o in j["ops"])
    assert _sha(img) == before
    r = run_cli("run", img, "--workload", os.path.join(SAMPLES, "article.wl"))
    assert r.returncode == 0 and "digest" in r.stdout


BAD = [
    (["run", "MISSING.raw", "--workload", "W"], "no such file"),
    (["run", "SMALL", "--workload", "W"], "too small to be a disk"),
    (["run", "IMG", "--workload", "BADWL"], "bad.wl:2: unknown operation 'scribble'"),
    (["run", "IMG", "--workload", "PASTEND"], "past.wl:1: write at 0x100000+0x1000 goes past the end"),
    (["run", "IMG", "--workload", "NOWL"], "no such workload file"),
    (["run", "IMG", "--workload", "W", "--queue-size", "3"], "invalid queue size 3"),
    (["run", "IMG", "--workload", "W", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["run", "IMG", "--workload", "W", "--inject", "scribble@0"], "operation must be one of"),
    (["run", "IMG", "--workload", "W", "--serial", "x" * 21], "serial is at most 20 bytes"),
    (["run", "IMG", "--workload", "BIN"], "not a text file"),
    (["run", "DIR", "--workload", "W"], "is a directory"),
    (["MISSING.raw"], "no such file"),                       # the debugger's own command line
    (["IMG", "--workload", "BADWL"], "bad.wl:2: unknown operation 'scribble'"),
    (["IMG", "--workload", "W", "--keys", "emacs"], "invalid choice: 'emacs'"),
    (["SMALL"], "too small to be a disk"),
    (["create", "IMG", "1M"], "already exists"),
    (["create", "NEW", "1000"], "positive multiple of 512"),
    (["create", "NEW", "lots"], "not a size"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_one_line_no_traceback_nothing_changed(tmp_path, args, message):
    img = make_image(tmp_path / "img.raw", 1 << 20, b"\xab" * 1024)
    small = make_image(tmp_path / "small.raw", 100)
    files = {"IMG": img, "SMALL": small, "MISSING.raw": str(tmp_path / "missing.raw"),
             "W": _wl(tmp_path, "write 0 4k\n"), "BADWL": _wl(tmp_path, "read 0 4k\nscribble 1 2\n", "bad.wl"),
             "PASTEND": _wl(tmp_path, "write 1M 4k\n", "past.wl"), "NOWL": str(tmp_path / "nope.wl"),
             "DIR": str(tmp_path), "NEW": str(tmp_path / "new.raw")}
    (tmp_path / "bin.wl").write_bytes(b"\xff\xfe\x00")
    files["BIN"] = str(tmp_path / "bin.wl")
    before = {p: _sha(p) for p in (img, small)}
    listing = sorted(os.listdir(tmp_path))
    r = run_cli(*[files.get(a, a) for a in args])
    assert r.returncode != 0
    err = r.stderr.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert r.stdout == ""
    assert {p: _sha(p) for p in (img, small)} == before
    assert sorted(os.listdir(tmp_path)) == listing


def test_create(tmp_path):
    p = tmp_path / "new.raw"
    assert main(["create", str(p), "64M"]) == 0
    assert os.path.getsize(p) == 64 << 20
    assert main(["create", str(p), "1M", "--force"]) == 0
    assert os.path.getsize(p) == 1 << 20


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("vblkdbg ")
    r = run_cli("run", "--help")
    assert r.returncode == 0 and "--workload" in r.stdout


def test_run_qcow2_and_explicit_formats(tmp_path):
    from tests.oracle import qemu_img
    img = str(tmp_path / "d.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "4M")
    r = run_cli("run", img, "--workload", _wl(tmp_path, "write 0 4k\nread 0 4k\n"), "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["image"]["format"] == "qcow2" and j["image"]["virtual_size"] == 4 << 20
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 100)
    r = run_cli("run", str(text), "-f", "qcow2", "--workload", _wl(tmp_path, "read 0 512\n"))
    assert r.returncode == 1 and "not a qcow2 image (bad magic" in r.stderr


def test_backing_file_outside_the_folder_needs_permission(tmp_path):
    from tests.oracle import qemu_img
    outside = tmp_path / "elsewhere"
    inside = tmp_path / "vm"
    outside.mkdir()
    inside.mkdir()
    base = str(outside / "base.raw")
    qemu_img("create", "-q", "-f", "raw", base, "4M")
    top = str(inside / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top)
    wl = _wl(tmp_path, "read 0 4k\n")
    r = run_cli("run", top, "--workload", wl)
    assert r.returncode == 1 and "backing file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", top, "--workload", wl, "--allow-backing-outside", "--json")
    assert r.returncode == 0, r.stderr
