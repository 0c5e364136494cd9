"""vblkdbg's own traces: record -> replay gives identical digests; tampering is caught at
the step it changes; corrupted, truncated and future-version files get clear messages."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.block.qcow2.create import create_qcow2
from emu.config import Config
from emu.errors import EmuError
from emu.session import Session
from emu.trace.record import TraceError, file_identity, load, open_origin, record
from emu.trace.replay import replay
from tests.conftest import build, make_image
from tests.strategies import io_ops, workload_text

MiB = 1 << 20
_names = iter(range(10 ** 9))
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

ops = io_ops(6, (1, 2, 8))


RAM = 2 * MiB


def origin(img: str, text: str, fmt: str = "auto", **cfg) -> dict:
    cfg.setdefault("ram_size", RAM)
    return {"image": img, "format": fmt, "identity": None, "config": Config(**cfg),
            "workload_name": "t.wl", "workload_text": text, "write": False}


def new_image(tmp_path, kind: str) -> str:
    img = str(tmp_path / f"d{next(_names)}.{kind}")
    if kind == "raw":
        make_image(img, 1 * MiB)
    else:
        create_qcow2(img, 1 * MiB)
    return img


def fresh_digest(img, text, k, pokes=()) -> str:
    """An independent forward run: Machine.step and Machine.poke, no session, no timeline."""
    m = build(img, text, ram_size=RAM)
    closed = False
    by_step: dict = {}
    for p in pokes:
        by_step.setdefault(p[0], []).append(p)
    for _s, addr, data in by_step.get(0, []):
        m.poke(addr, data)
    while m.steps < k:
        rec = m.step()
        if rec is None and not closed:
            closed = True
            if m.begin_shutdown():
                rec = m.step()
        assert rec is not None
        for _s, addr, data in by_step.get(m.steps, []):
            m.poke(addr, data)
    d = m.digest()
    m.fmt.close()
    m.hostfile.close()
    return d


@settings(max_examples=25, deadline=None, suppress_health_check=HEALTH)
@given(items=ops, kind=st.sampled_from(["raw", "qcow2"]), interval=st.sampled_from([1, 9, 1000]),
       data=st.data())
def test_record_then_replay_reproduces_every_digest(tmp_path, items, kind, interval, data):
    img = new_image(tmp_path, kind)
    text = workload_text(items)
    o = origin(img, text)
    s = open_origin(o)
    s.goto(1 << 62)
    n = s.m.steps
    pokes = []
    for _ in range(data.draw(st.integers(0, 3), label="pokes")):
        k = data.draw(st.integers(0, n), label="at")
        addr = data.draw(st.integers(0, s.m.mem.size - 8), label="addr")
        val = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        pokes.append((k, addr, val))
    pokes.sort(key=lambda p: p[0])
    s.goto(0)
    for k, addr, val in pokes:           # poke on the way forward, as a person would
        s.goto(k)
        s.poke(addr, val)
    s.goto(1 << 62)
    end = s.m.steps
    want = s.m.digest()
    out = str(tmp_path / f"t{next(_names)}.trace")
    t = record(o, s.inputs, end, out, interval, expect_digest=want)
    s.timeline.close()
    s.m.fmt.close()
    s.m.hostfile.close()
    assert t.end["step"] == end and t.end["digest"] == want
    assert [(i["step"], i["addr"], bytes.fromhex(i["bytes"])) for i in t.inputs] == pokes
    # every stored digest is what an independent forward run gives at that step
    for p in t.digests[:3] + t.digests[-2:]:
        assert p["digest"] == fresh_digest(img, text, p["step"], pokes)
    res = replay(load(out), check=True)
    assert res.ok and res.steps == end and res.digest == want
    assert res.checked == len(t.digests) + 1


def test_going_back_past_a_poke_drops_it_from_the_recording(tmp_path):
    img = new_image(tmp_path, "raw")
    o = origin(img, "write 0 4k\nwait\nread 0 4k\nwait\n")
    s = open_origin(o)
    s.goto(40)
    s.poke(0x20000, b"\xff" * 4)
    s.goto(60)
    s.poke(0x20004, b"\xee")
    assert [i["step"] for i in s.inputs] == [40, 60]
    s.goto(50)                                    # before the second poke, after the first
    assert [i["step"] for i in s.inputs] == [40]
    s.goto(40)                                    # at the first: kept
    assert [i["step"] for i in s.inputs] == [40]
    s.goto(39)
    assert s.inputs == []
    s.m.fmt.close()
    s.m.hostfile.close()


def test_recorded_inputs_come_back_when_the_run_passes_their_step_again(tmp_path):
    img = new_image(tmp_path, "raw")
    text = "write 0 8k\nwait\n"
    o = origin(img, text)
    s = open_origin(o)
    s.schedule([{"step": 30, "input": "poke", "space": "ram", "addr": 0x30000, "bytes": "abcd"}])
    s.goto(45)
    with_poke = s.m.digest()
    assert s.m.mem.read(0x30000, 2) == b"\xab\xcd"
    s.goto(10)
    assert s.m.mem.read(0x30000, 2) != b"\xab\xcd" and s.inputs == []
    s.goto(45)
    assert s.m.digest() == with_poke and len(s.inputs) == 1
    assert with_poke == fresh_digest(img, text, 45, [(30, 0x30000, b"\xab\xcd")])
    s.m.fmt.close()
    s.m.hostfile.close()


# -- tampering ---------------------------------------------------------------------------------

@pytest.fixture
def recorded(tmp_path):
    img = new_image(tmp_path, "qcow2")
    text = "write 0 64k\nwait\nflush\nread 0 4k\nwait\nwrite 128k 4k\nwait\n"
    o = origin(img, text)
    s = open_origin(o)
    s.goto(70)
    s.poke(0x40000, b"\x12\x34")
    s.goto(1 << 62)
    out = tmp_path / "r.trace"
    record(o, s.inputs, s.m.steps, str(out), 25, expect_digest=s.m.digest())
    s.m.fmt.close()
    s.m.hostfile.close()
    return out, img


def _rewrite(path, fn):
    lines = path.read_text().splitlines()
    fn(lines)
    path.write_text("\n".join(lines) + "\n")


def test_a_tampered_poke_is_caught_at_its_step(recorded):
    out, _img = recorded

    def change(lines):
        for i, ln in enumerate(lines):
            if '"input"' in ln:
                d = json.loads(ln)
                d["bytes"] = "ffff"
                lines[i] = json.dumps(d)
    _rewrite(out, change)
    res = replay(load(str(out)), check=True)
    assert not res.ok and res.divergence.step == 70 and res.divergence.differs == ["ram"]


@pytest.mark.parametrize("k", [1, 3])
def test_a_tampered_digest_is_caught_at_that_step(recorded, k):
    out, _img = recorded
    steps = []

    def change(lines):
        idx = [i for i, ln in enumerate(lines) if '"digest"' in ln and '"end"' not in ln][k]
        d = json.loads(lines[idx])
        d["digest"] = "0" * 64
        steps.append(d["step"])
        lines[idx] = json.dumps(d)
    _rewrite(out, change)
    res = replay(load(str(out)), check=True)
    assert not res.ok and res.divergence.step == steps[0]
    # without --check only the end is compared: still fine
    assert replay(load(str(out))).ok


def test_a_tampered_configuration_diverges(recorded):
    out, _img = recorded

    def change(lines):
        h = json.loads(lines[0])
        h["config"]["latency"]["write_ns"] += 1
        lines[0] = json.dumps(h)
    _rewrite(out, change)
    res = replay(load(str(out)), check=True)
    assert not res.ok and res.divergence.step > 0      # timing differs only once a write runs


def test_another_image_is_refused(recorded):
    out, img = recorded
    with open(img, "r+b") as f:
        f.seek(0, 2)
        f.write(b"\0" * 512)
    with pytest.raises(TraceError, match="not the image the trace was recorded on"):
        replay(load(str(out)))


@pytest.mark.parametrize("mutate,message", [
    (lambda ls: ls.__setitem__(0, "hello"), "not a vblkdbg trace"),
    (lambda ls: ls.__setitem__(0, json.dumps({"x": 1})), "not a vblkdbg trace"),
    (lambda ls: ls.__setitem__(0, ls[0].replace('"vblkdbg-trace": 1', '"vblkdbg-trace": 9')),
     "version 9 is newer"),
    (lambda ls: ls.__delitem__(-1), "truncated: no end record"),
    (lambda ls: ls.__delitem__(2), "lines are missing or extra"),
    (lambda ls: ls.__setitem__(2, ls[2][:40]), ":3: not JSON"),
    (lambda ls: ls.insert(3, ls[1]), ":4: step 0 comes after step"),
    (lambda ls: ls.__setitem__(0, ls[0].replace('"queue_size": 256', '"queue_size": 7')),
     ":1: header: invalid queue size 7"),
    (lambda ls: ls.__setitem__(0, ls[0].replace('"seed": 0', '"sed": 0')),
     ":1: header: config: unknown setting 'sed'"),
    (lambda ls: ls.append("{}"), "followed by 1 more line"),
])
def test_corrupted_traces_say_what_and_where(recorded, mutate, message):
    out, _img = recorded
    _rewrite(out, mutate)
    with pytest.raises(TraceError, match=message.replace("(", r"\(")):
        load(str(out))


def test_a_session_that_does_not_reproduce_is_not_written(tmp_path):
    img = new_image(tmp_path, "raw")
    o = origin(img, "write 0 4k\nwait\n")
    out = tmp_path / "x.trace"
    with pytest.raises(EmuError, match="determinism bug"):
        record(o, [], 30, str(out), expect_digest="0" * 64)
    assert not out.exists() and os.listdir(tmp_path) == [os.path.basename(img), "overlays"] or \
        sorted(os.listdir(tmp_path)) == sorted([os.path.basename(img), "overlays"])


def test_file_identity_follows_the_content(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"a" * 3000)
    a = file_identity(str(p))
    p.write_bytes(b"a" * 2999 + b"b")
    assert a["size"] == 3000 and file_identity(str(p))["sha256"] != a["sha256"]


def test_session_without_timeline_state_leak(tmp_path):
    """The recording re-run starts from a fresh machine: a session's breakpoints or position
    do not leak into it."""
    img = new_image(tmp_path, "raw")
    text = "write 0 4k\nwait\n"
    o = origin(img, text)
    s = Session(build(img, text, ram_size=RAM))
    s.origin = o
    s.add_breakpoint("break", "desc idx=0 on=pop")
    s.cont()
    out = tmp_path / "b.trace"
    t = record(o, s.inputs, s.m.steps, str(out), 10, expect_digest=s.m.digest())
    assert t.end["step"] == s.m.steps
    s.m.fmt.close()
    s.m.hostfile.close()
