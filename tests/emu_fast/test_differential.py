"""The compiled engine against the Python engine: same steps, same state, same stops.

Random workloads (raw and qcow2 images, odd sizes, flushes, discards, write-zeroes, queue
depth changes), random configurations (queue size, indirect, event_idx, cache modes) and
injected device errors (Config(faults=...)); each is run on both engines from the same
start and must give equal Step records (detail, effects, facts), equal machine digests,
guest RAM, image bytes and step counts.  Engines switched at random points mid-run must
give the same as either alone; breakpoints must stop at the same steps.
"""
from __future__ import annotations

import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.block.qcow2.create import create_qcow2
from emu.session import Session
from tests.conftest import build, make_image

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

MiB = 1 << 20
DISK = 4 * MiB
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTICLE = os.path.join(ROOT, "sample_images", "article.qcow2")
SETTINGS = dict(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------

_sectors = st.integers(0, DISK // 512 - 1)
_lens = st.sampled_from([512, 1024, 4096, 8192, 12288, 65536])


@st.composite
def op_line(draw) -> str:
    kind = draw(st.sampled_from(["write", "write", "write", "read", "read", "flush", "discard",
                                 "write-zeroes", "wait", "queue-depth"]))
    if kind in ("flush", "wait"):
        return kind
    if kind == "queue-depth":
        return f"queue-depth {draw(st.integers(1, 8))}"
    length = draw(_lens)
    off = min(draw(_sectors) * 512, DISK - length)
    line = f"{kind} {off} {length}"
    if kind == "write" and draw(st.booleans()):
        line += f" fill={draw(st.integers(0, 255)):#x}"
    if kind == "write-zeroes" and draw(st.booleans()):
        line += " unmap"
    return line


workloads = st.lists(op_line(), min_size=1, max_size=14).map(lambda ls: "\n".join(ls) + "\n")

faults = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["read", "write", "flush", "discard", "write_zeroes"]),
    "start": st.sampled_from([0, 4096, 65536, MiB]),
    "end": st.sampled_from([8192, MiB, 1 << 62]),
    "errno": st.sampled_from([errno.EIO, errno.ENOSPC]),
    "count": st.sampled_from([-1, 1, 2])}), max_size=2).map(tuple)

configs = st.fixed_dictionaries({
    "queue_size": st.sampled_from([4, 16, 256]),
    "indirect": st.booleans(),
    "event_idx": st.booleans(),
    "cache": st.sampled_from(["writeback", "writethrough", "unsafe"]),
    "discard": st.sampled_from(["ignore", "unmap"]),
    "seed": st.integers(0, 3),
    "faults": faults})


def new_image(tmp_path, fmt: str, name: str) -> str:
    """The image both engines open (as overlays: the file itself is never written; its path
    appears in Step effects such as fsync, so both runs must use the same one)."""
    small = name.endswith("s")
    path = str(tmp_path / f"disk{'s' if small else ''}.{fmt}")
    if os.path.exists(path):
        return path
    if fmt == "article":
        return ARTICLE               # opened as an overlay: never written
    if fmt == "qcow2":
        create_qcow2(path, DISK, cluster_size=4096 if small else 65536)
        return path
    return make_image(path, DISK, content=bytes(range(256)) * 64)


def machine(tmp_path, fmt, name, wl, cfg):
    return build(new_image(tmp_path, fmt, name), wl, ram_size=4 * MiB, **cfg)


def image_bytes(m) -> bytes:
    return m.hostfile.pread(0, m.hostfile.size)


def snapshot(m) -> tuple:
    return (m.steps, m.digest(), bytes(m.mem.ram), image_bytes(m), m.sim.now)


def run_with(m, eng: str, records: list) -> str:
    reason = engine.run(m, eng, None, lambda rec: records.append(rec) and False)
    if m.begin_shutdown():                        # qcow2_close etc., on the same engine
        engine.run(m, eng, None, lambda rec: records.append(rec) and False)
    return reason


# -- tests ---------------------------------------------------------------------------------------------

@settings(**SETTINGS)
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s", "article"]), wl=workloads, cfg=configs)
def test_same_run_on_both_engines(tmp_path_factory, fmt, wl, cfg):
    tmp = tmp_path_factory.mktemp("diff")
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    name = "s" if fmt == "qcow2s" else ""
    m_py = machine(tmp, kind, name, wl, cfg)
    m_fast = machine(tmp, kind, name, wl, cfg)
    py_recs: list = []
    fast_recs: list = []
    assert run_with(m_py, "py", py_recs) == run_with(m_fast, "fast", fast_recs)
    assert len(py_recs) == len(fast_recs) == m_py.steps
    for a, b in zip(py_recs, fast_recs):
        assert a == b, f"step {a.n}: {a.kind} {a.detail!r} != {b.kind} {b.detail!r}"
    assert snapshot(m_py) == snapshot(m_fast)
    assert type(m_py.sim).__name__ == "Scheduler"      # the Python engine stayed pure Python
    assert "write" not in vars(m_py.mem) and "pwrite" not in vars(m_py.hostfile)
    assert emu_fast.attached(m_fast)


@settings(**SETTINGS)
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=workloads, cfg=configs,
       chunks=st.lists(st.integers(1, 60), min_size=1, max_size=12))
def test_switching_engines_mid_run(tmp_path_factory, fmt, wl, cfg, chunks):
    tmp = tmp_path_factory.mktemp("switch")
    ref = machine(tmp, fmt, "", wl, cfg)
    ref_recs: list = []
    run_with(ref, "py", ref_recs)
    m = machine(tmp, fmt, "", wl, cfg)
    recs: list = []
    i = 0
    while True:
        eng = ("fast", "py")[i % 2]
        reason = engine.run(m, eng, chunks[i % len(chunks)], lambda rec: recs.append(rec) and False)
        i += 1
        if reason == "end":
            break
    if m.begin_shutdown():
        engine.run(m, "py", None, lambda rec: recs.append(rec) and False)
    assert recs == ref_recs
    assert snapshot(m) == snapshot(ref)


@settings(**SETTINGS)
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=workloads, cfg=configs,
       chunks=st.lists(st.integers(1, 80), min_size=1, max_size=6))
def test_runs_without_an_observer_leave_the_same_last_record(tmp_path_factory, fmt, wl, cfg, chunks):
    """run() with no on_step refills one record (emu_fast._core.run): after each run m.cur is
    the record Machine.run leaves, field for field (detail, effects, facts, caller)."""
    tmp = tmp_path_factory.mktemp("quiet")
    a = machine(tmp, fmt, "", wl, cfg)
    b = machine(tmp, fmt, "", wl, cfg)
    for k in chunks + [None]:
        assert engine.run(a, "py", k) == engine.run(b, "fast", k)
        assert b.cur == a.cur and b.log.cur is None
        assert snapshot(a) == snapshot(b)
    if a.cur is not None:
        assert type(b.cur) is type(a.cur) and type(b.cur.effects) is list


def test_single_steps_and_stop_callback(tmp_path):
    """emu_fast.step is Machine.step; run(on_step) stops at the same record."""
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 8k\n" for i in range(8))
    a = machine(tmp_path, "qcow2", "", wl, {})
    b = machine(tmp_path, "qcow2", "", wl, {})
    while True:
        ra, rb = a.step(), emu_fast.step(b)
        assert ra == rb
        if ra is None:
            break
    assert snapshot(a) == snapshot(b)
    c = machine(tmp_path, "raw", "", wl, {})
    d = machine(tmp_path, "raw", "", wl, {})

    def stop(rec):
        return rec.kind == "vq.fill" and rec.n > 300
    assert c.run(None, stop) == emu_fast.run(d, None, stop) == "stopped"
    assert c.steps == d.steps and snapshot(c) == snapshot(d)
    assert c.run(7) == emu_fast.run(d, 7) == "steps"
    assert emu_fast.run_count(d, 5) == ("steps", 5)
    c.run(5)
    assert snapshot(c) == snapshot(d)


BREAKS = [("break", "desc on=pop"), ("break", "req type=OUT stage=done"), ("break", "step qcow2_*"),
          ("break", "ring inuse>=2"), ("watch", "ram 0x10000+64"), ("tbreak", "step virtqueue_fill"),
          ("break", "desc on=add if len == 1 and flags & WRITE"), ("catch", "error"),
          ("watch", "host 0x0+512"), ("watch", "reg vq0.*"), ("break", "ring wrap"),
          ("break", "ring used_idx=3"), ("catch", "error ioerr"),
          ("break", "desc on=used q=0 if req > 1")]


def _stops(s: Session, eng: str | None) -> list:
    out = []
    while True:
        st_ = s.cont() if eng is None else engine.run_until(s, eng)
        out.append((st_.reason, st_.step, st_.message))
        if st_.reason == "end":
            return out


@settings(**dict(SETTINGS, max_examples=25))
@given(fmt=st.sampled_from(["raw", "qcow2", "article"]), wl=workloads, cfg=configs,
       bps=st.lists(st.sampled_from(BREAKS), min_size=1, max_size=3, unique=True),
       interval=st.sampled_from([7, 50, 1000]))
def test_breakpoints_stop_at_the_same_steps(tmp_path_factory, fmt, wl, cfg, bps, interval):
    tmp = tmp_path_factory.mktemp("bp")
    sessions = []
    for _ in ("py", "fast"):
        s = Session(machine(tmp, fmt, "", wl, cfg), checkpoint_interval=interval)
        for verb, text in bps:
            s.add_breakpoint(verb, text)
        sessions.append(s)
    s_py, s_fast = sessions
    assert _stops(s_py, None) == _stops(s_fast, "fast")
    assert snapshot(s_py.m) == snapshot(s_fast.m)
    # going back (re-execution) after a fast run lands on the state the Python engine had
    k = max(1, s_py.m.steps // 3)
    s_py.goto(k)
    s_fast.goto(k)
    assert snapshot(s_py.m) == snapshot(s_fast.m)
    engine.replay_to(s_fast, 2 * k, "fast")
    s_py.goto(2 * k)
    assert snapshot(s_py.m) == snapshot(s_fast.m)


def test_run_until_limit_stop_progress_and_cancel(tmp_path):
    wl = "queue-depth 8\n" + "".join(f"write {i * 131072} 4k\n" for i in range(30)) + "flush\n"
    s_py = Session(machine(tmp_path, "qcow2", "", wl, {}))
    s_fast = Session(machine(tmp_path, "qcow2", "", wl, {}))
    for eng, s in (("py", s_py), ("fast", s_fast)):
        seen = []
        st1 = engine.run_until(s, eng, limit=123, progress=lambda n, r: seen.append((n, r)), every=50)
        assert (st1.reason, st1.step) == ("limit", 123) and [n for n, _ in seen] == [50, 100]
        st2 = engine.run_until(s, eng, stop=lambda rec: s.stop.__class__("finish", rec.n, "x")
                               if rec.kind == "vq.flush" else None)
        assert st2.reason == "finish"
        calls = []
        st3 = engine.run_until(s, eng, cancelled=lambda: calls.append(1) or len(calls) > 2)
        assert st3.reason == "interrupted" and s.m.steps == st2.step + 128
    assert s_py.m.digest() == s_fast.m.digest()
    assert s_py.cont().step == engine.run_until(s_fast, "fast").step
    assert snapshot(s_py.m) == snapshot(s_fast.m)


def test_bench_runs_and_both_engines_agree():
    from emu_fast.bench import run_bench
    printed: list = []
    res = run_bench(as_json=True, requests=30, qemu=False, out=printed.append, repeat=1)
    assert len(res["results"]) == 6 and all(r["identical"] for r in res["results"])
    assert all(r["fast"]["req_per_s"] > 0 and r["py"]["req_per_s"] > 0 for r in res["results"])
    assert len(res["continue"]) == 4 and all(r["identical"] for r in res["continue"])
    assert sorted(r["breakpoint"] for r in res["continue"]) == \
        ["break desc on=used if len == 3"] * 2 + ["catch error"] * 2
    # the session's catch error, and the desc breakpoint too (the core stops before each
    # vq.fill), let the bulk core run steps of a continue (after the run's first checkpoint,
    # at step 1000: 30 requests are ~1700 steps)
    assert all(r["fast"]["core_steps"] > 0 for r in res["continue"])
    assert all(r[e]["reason"] == "end" and r[e]["steps"] > 30 for r in res["continue"]
               for e in ("py", "fast"))
    import json
    assert json.loads(printed[0])["requests"] == 30
