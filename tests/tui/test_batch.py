"""vblkdbg batch: one JSON object per command, the keys scripts rely on, bad input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
SAMPLE = os.path.join(SAMPLES, "article.qcow2")
ARTICLE_WL = os.path.join(SAMPLES, "article.wl")


def batch(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "tui", "batch", *args], capture_output=True, text=True,
                       cwd=cwd or ROOT, timeout=600)
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    return r, lines


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_script_of_commands_gives_one_object_each_with_the_contract_keys(tmp_path):
    script = tmp_path / "cmds.gdb"
    script.write_text("# find the first pop of the first chain\n"
                      "break desc idx=0 on=pop\n\ncontinue\n"
                      "info virtio-queue-status\ninfo virtio-status\nx/16xb 0x10000\n")
    before = sha(SAMPLE)
    r, out = batch(SAMPLE, "--workload", ARTICLE_WL, "-x", str(script), "-ex", "when")
    assert r.returncode == 0, r.stderr
    assert [o["command"] for o in out] == ["break desc idx=0 on=pop", "continue",
                                           "info virtio-queue-status", "info virtio-status",
                                           "x/16xb 0x10000", "when"]
    for o in out:
        assert {"command", "ok", "step", "digest"} <= set(o) and o["ok"] is True
        assert len(o["digest"]) == 64
    brk, cont, qs, vs, x, when = out
    assert brk["result"]["id"] == 2                         # 1 is `catch error`
    assert cont["reason"] == "breakpoint" and cont["breakpoint"] == 2
    assert cont["match"]["idx"] == 0 and cont["match"]["q"] == 0 and cont["match"]["on"] == "pop"
    assert cont["step"] == when["result"]["step"] == when["step"]
    for k in ("last_avail_idx", "shadow_avail_idx", "used_idx", "signalled_used", "inuse",
              "desc", "avail", "used"):
        assert k in qs["result"], k
    assert qs["result"]["last_avail_idx"] == 1 and qs["result"]["inuse"] == 1   # it was just popped
    assert {"status", "broken", "guest_features", "host_features"} <= set(vs["result"])
    assert bytes.fromhex(x["result"]["bytes"])[:8] == (0x17000).to_bytes(8, "little")  # desc[0].addr
    assert sha(SAMPLE) == before


def test_poke_a_descriptor_and_watch_the_device_react():
    r, out = batch(SAMPLE, "--workload", ARTICLE_WL,
                   "-ex", "break step virtqueue_add_split", "-ex", "continue",
                   "-ex", "delete 2", "-ex", "tbreak step virtio_pci_notify_write", "-ex", "continue",
                   "-ex", "poke ram 0x10008 00000000", "-ex", "x/4xb 0x10008",
                   "-ex", "continue", "-ex", "info virtio-status")
    assert r.returncode == 0, r.stderr
    poke, x, cont, status = out[5:]
    assert poke["ok"] and x["result"]["bytes"] == "00000000"
    assert poke["digest"] != out[4]["digest"]               # the poke changed guest RAM
    assert cont["reason"] == "error" and cont["breakpoint"] == 1
    assert "indirect" in cont["message"].lower()             # QEMU's diagnostic
    assert status["result"]["broken"] is True


def test_a_watchpoint_reports_old_and_new_bytes(tmp_path):
    r, out = batch(SAMPLE, "--workload", ARTICLE_WL, "-ex", "watch host 0x8a000+16", "-ex", "continue",
                   "-ex", "x/16xb host 0x8a000")
    assert r.returncode == 0, r.stderr
    cont, x = out[1], out[2]
    assert cont["reason"] == "watchpoint" and cont["breakpoint"] == 2
    assert cont["new"] == x["result"]["bytes"][:len(cont["new"])]
    assert cont["old"] != cont["new"]


def test_reverse_commands_and_goto_in_batch():
    r, out = batch(SAMPLE, "--workload", ARTICLE_WL, "-ex", "step 120", "-ex", "reverse-step 20",
                   "-ex", "goto step 100", "-ex", "goto step 0", "-ex", "goto step 100000000")
    assert r.returncode == 0, r.stderr
    step120, back, at100, at0, past = out
    assert back["step"] == 100 and at100["step"] == 100 and back["digest"] == at100["digest"]
    assert at0["step"] == 0
    assert past["reason"] == "end" and "past the end" in past["message"]


def test_same_script_same_digests():
    cmds = ["-ex", "break req type=OUT stage=done", "-ex", "continue", "-ex", "continue"]
    a = [o["digest"] for o in batch(SAMPLE, "--workload", ARTICLE_WL, *cmds)[1]]
    b = [o["digest"] for o in batch(SAMPLE, "--workload", ARTICLE_WL, *cmds)[1]]
    assert a == b


@pytest.mark.parametrize("cmd, message", [
    ("break desc idx=300", "idx=300"),
    ("break desc on=sideways", "sideways"),
    ("break desc len=4 if len >", "end"),
    ("break ring q=3 wrap", "q=3"),
    ("watch ram 0x999999999", "outside"),
    ("frobnicate", "unknown command"),
    ("poke ram 0x10 zz", "not hex"),
])
def test_bad_commands_fail_alone_and_say_what(cmd, message):
    r, out = batch(SAMPLE, "--workload", ARTICLE_WL, "-ex", cmd, "-ex", "step 3")
    assert r.returncode == 1 and r.stderr == ""
    bad, ok = out
    assert bad["ok"] is False and message in bad["error"]
    assert ok["ok"] is True and ok["step"] == 3              # the next command still ran


def test_bad_invocations_are_one_line_errors(tmp_path):
    img = make_image(tmp_path / "d.raw", 1 << 20)
    for args, msg in [((img, "-x", str(tmp_path / "nope.gdb")), "no such command file"),
                      ((img,), "no commands"),
                      ((str(tmp_path / "missing.raw"), "-ex", "when"), "no such file")]:
        r, out = batch(*args)
        assert r.returncode != 0 and out == []
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
