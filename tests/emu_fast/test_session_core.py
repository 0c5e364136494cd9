"""The debugger's bulk runs (continue, goto's and replays' re-runs) through the bulk core:
the session ends up exactly as on the Python engine -- machine, history (its last maxlen
records), s.last and last_by_side (also as saved in every checkpoint), the timeline's
checkpoints and counters, the inputs -- while the core ran most steps and made no record."""
from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu import engine
from emu.debug.breakpoints import BreakpointError
from emu.session import Session
from tests.emu_fast.test_differential import SETTINGS, configs, machine, snapshot, workloads

core = emu_fast.require()


@pytest.fixture(autouse=True)
def _window():
    old = core.session_core_config()
    yield
    core.session_core_config(*old)


def _rec(r) -> tuple:
    return (r.n, r.time_ns, r.ctx, r.kind, r.layer, r.function, r.source, r.detail,
            tuple(map(repr, r.effects)), r.caller, tuple(map(repr, r.facts)))


def seen(s: Session) -> tuple:
    """All a session shows of its records and its timeline."""
    tl = s.timeline
    cps = [(c.step, c.pinned, c.file, tl._thaw_extra(c.extra)["closed"],
            _rec(tl._thaw_extra(c.extra)["last"]) if tl._thaw_extra(c.extra)["last"] else None,
            [(k, _rec(v)) for k, v in tl._thaw_extra(c.extra)["last_by_side"].items()],
            sorted(c.ram), sorted(c.blocks)) for c in tl.checkpoints]
    return (snapshot(s.m), [_rec(r) for r in s.history], _rec(s.last) if s.last else None,
            [(k, _rec(v)) for k, v in s.last_by_side.items()], cps, tl.rewinds, tl.thinned,
            s.inputs, s.closed, sorted(s.m.mem.undo or {}), sorted(s.m.hostfile.undo or {}))


def pair(tmp, fmt, wl, cfg, interval, hist, max_cps=256):
    out = []
    for eng in ("py", "fast"):
        s = Session(machine(tmp, fmt, "", wl, cfg), checkpoint_interval=interval,
                    catch_errors=False)
        s.history = collections.deque(maxlen=hist)
        s.timeline.max_checkpoints = max_cps
        s.set_engine(eng)
        out.append(s)
    return out


def _stop(st_):
    return None if st_ is None else (st_.reason, st_.step)


@settings(**dict(SETTINGS, max_examples=15))
@given(fmt=st.sampled_from(["raw", "qcow2", "article"]), wl=workloads, cfg=configs,
       interval=st.sampled_from([5, 37, 200]), hist=st.sampled_from([3, 40, 400]),
       window=st.sampled_from([1, 4, 64]), back=st.integers(0, 400),
       max_cps=st.sampled_from([3, 256]))
def test_continue_and_goto_leave_the_python_engines_session(tmp_path_factory, fmt, wl, cfg,
                                                            interval, hist, window, back, max_cps):
    core.session_core_config(window=window, min_stretch=1)
    tmp = tmp_path_factory.mktemp("sc")
    s_py, s_fast = pair(tmp, fmt, wl, cfg, interval, hist, max_cps)
    core.reset_session_core_stats()
    a = s_py.cont()
    b = engine.run_until(s_fast, "fast")
    assert _stop(a) == _stop(b)
    assert seen(s_py) == seen(s_fast)
    # going back: goto's re-run from a checkpoint, then a long replay forward
    k = max(0, s_py.m.steps - back)
    s_py.goto(k)
    s_fast.goto(k)
    assert seen(s_py) == seen(s_fast)
    s_py.goto(s_py.m.steps // 2)
    s_fast.goto(s_fast.m.steps // 2)
    end = s_py.m.steps + (s_py.m.steps + 1) // 2
    s_py._replay_to(end)
    engine.replay_to(s_fast, end, "fast")
    assert seen(s_py) == seen(s_fast)


def test_long_runs_go_through_the_core_and_regenerate_rarely(tmp_path):
    wl = "queue-depth 4\n" + "".join(f"write {(i * 7919) % 900 * 4096} 4k\n" for i in range(300))
    s_py, s_fast = pair(tmp_path, "qcow2", wl, {}, 1000, 5000)
    core.reset_session_core_stats()
    assert _stop(s_py.cont()) == _stop(engine.run_until(s_fast, "fast"))
    stats = core.session_core_stats()
    assert seen(s_py) == seen(s_fast)
    assert stats["steps"] > 0.5 * s_fast.m.steps
    assert stats["regens"] <= 1                # only the tail, at the end


def test_a_one_step_window_forces_regeneration_and_stays_exact(tmp_path):
    wl = "queue-depth 2\n" + "".join(f"write {i * 65536} 4k\nread {i * 65536} 4k\n"
                                     for i in range(40))
    core.session_core_config(window=1, min_stretch=1)
    s_py, s_fast = pair(tmp_path, "raw", wl, {}, 50, 100)
    core.reset_session_core_stats()
    assert _stop(s_py.cont()) == _stop(engine.run_until(s_fast, "fast"))
    assert core.session_core_stats()["regens"] > 1
    assert seen(s_py) == seen(s_fast)


def test_limit_progress_cancel_and_scheduled_inputs(tmp_path):
    wl = "queue-depth 8\n" + "".join(f"write {i * 131072} 4k\n" for i in range(60)) + "flush\n"
    s_py, s_fast = pair(tmp_path, "qcow2", wl, {}, 100, 50)
    pokes = [{"step": n, "input": "poke", "space": "ram", "addr": 0x1000 + n, "bytes": "abcd"}
             for n in (350, 351, 900)]
    for s in (s_py, s_fast):
        s.schedule(pokes)
    for eng, s in (("py", s_py), ("fast", s_fast)):
        prog = []
        st1 = engine.run_until(s, eng, limit=1234, progress=lambda n, r: prog.append(n), every=200)
        assert (st1.reason, st1.step) == ("limit", 1234)
        assert prog == [200, 400, 600, 800, 1000, 1200]
    assert seen(s_py) == seen(s_fast)
    # a cancelled run stops where its poll says; the Python engine run to the same step agrees
    calls = []
    st2 = engine.run_until(s_fast, "fast", cancelled=lambda: calls.append(1) or len(calls) > 1)
    assert st2.reason == "interrupted"
    assert _stop(engine.run_until(s_py, "py", limit=st2.step - s_py.m.steps)) == ("limit", st2.step)
    assert seen(s_py) == seen(s_fast)
    assert _stop(s_py.cont()) == _stop(engine.run_until(s_fast, "fast"))
    assert seen(s_py) == seen(s_fast)


@pytest.mark.parametrize("verb,spec,in_core", [("break", "req stage=done if id == 1000000", False),
                                               ("watch", "ram 0x0+16", True)])
def test_request_breakpoints_keep_the_recorded_loop(tmp_path, verb, spec, in_core):
    """A request breakpoint follows stages across steps (any step's record could match it):
    nothing runs in the core; a watchpoint, as a control, lets the core run."""
    core.session_core_config(window=1, min_stretch=1)
    wl = "".join(f"write {i * 4096} 4k\n" for i in range(20))
    s_py, s_fast = pair(tmp_path, "raw", wl, {}, 37, 5000)
    for s in (s_py, s_fast):
        s.add_breakpoint(verb, spec)
    core.reset_session_core_stats()
    assert _stop(s_py.cont()) == _stop(engine.run_until(s_fast, "fast"))
    assert (core.session_core_stats()["steps"] > 0) == in_core
    assert seen(s_py) == seen(s_fast)


def test_compiled_methods_bound_to_an_object_pickle_as_its_attribute(tmp_path):
    """A checkpoint may hold a bound hf.pread (the qcow2 engine's pread_file, set while the
    compiled one is attached): it must load again (getattr(hf, "pread"))."""
    import pickle
    m = machine(tmp_path, "raw", "", "write 0 4k\n", {})
    emu_fast.attach(m)
    for obj, name in ((m.hostfile, "pread"), (m.hostfile, "pwrite"), (m.mem, "read"),
                      (m.mem, "write_u64")):
        bound = getattr(obj, name)
        assert type(bound).__name__ == "method" and bound.__func__ is not getattr(type(obj), name)
        blob = pickle.dumps(bound)
        assert name.encode() in blob and b"hf_" not in blob and b"mem_" not in blob


def _stops(s: Session, eng: str) -> list:
    out = []
    while True:
        st_ = engine.run_until(s, eng)
        out.append((st_.reason, st_.step, st_.message))
        if st_.reason == "end" or len(out) > 30:
            return out


@settings(**dict(SETTINGS, max_examples=15))
@given(fmt=st.sampled_from(["raw", "qcow2", "article"]), wl=workloads, cfg=configs,
       interval=st.sampled_from([5, 37, 1000]), hist=st.sampled_from([3, 400]))
def test_error_catchpoints_stop_where_python_does_with_the_core(tmp_path_factory, fmt, wl, cfg,
                                                                interval, hist):
    """A session's default catchpoint (catch error: virtio, qcow2, guest, ioerr) lets the core
    run, in its strict mode: every step that could match still runs recorded."""
    tmp = tmp_path_factory.mktemp("se")
    sessions = []
    for eng in ("py", "fast"):
        s = Session(machine(tmp, fmt, "", wl, cfg), checkpoint_interval=interval)
        s.history = collections.deque(maxlen=hist)
        s.set_engine(eng)
        sessions.append(s)
    s_py, s_fast = sessions
    assert _stops(s_py, "py") == _stops(s_fast, "fast")
    assert seen(s_py) == seen(s_fast)


def test_error_catchpoints_with_faults_use_the_core_and_stop_on_each_error(tmp_path):
    """Injected write errors (IOERR completions, qcow2 metadata failures) among many good
    requests: the core runs most steps, every error still stops the run."""
    wl = "queue-depth 4\n" + "".join(f"write {(i * 7919) % 900 * 4096} 4k\n" for i in range(200))
    cfg = {"faults": ({"op": "write", "start": 3 << 20, "end": 3 << 20 | 65536, "errno": 5,
                       "count": -1},)}
    s_py, s_fast = (Session(machine(tmp_path, "qcow2", "", wl, cfg)) for _ in range(2))
    s_py.set_engine("py")
    s_fast.set_engine("fast")
    core.reset_session_core_stats()
    stops = _stops(s_fast, "fast")
    assert stops == _stops(s_py, "py")
    assert len(stops) > 2 and core.session_core_stats()["steps"] > 0.5 * s_fast.m.steps
    assert seen(s_py) == seen(s_fast)


def test_error_catchpoints_see_a_qcow2_engine_error_among_core_steps(tmp_path):
    """An L1 entry with an unaligned L2 offset makes qcow2's engine signal corruption (a
    Qcow2Error, an "error" effect) in the middle of writes the core runs: `catch error` stops
    there on both engines."""
    from emu.block.qcow2.create import create_qcow2
    from tests.conftest import build
    path = str(tmp_path / "bad-l1.qcow2")
    create_qcow2(path, 8 << 20, cluster_size=4096)
    wl = "".join(f"write {i * 16384} 4k fill=0x{i:02x}\n" for i in range(100)) + \
        "write 4194304 4096\n" + "".join(f"write {i * 4096} 4k\n" for i in range(50))
    s_py, s_fast = (Session(build(path, wl, ram_size=4 << 20), checkpoint_interval=200)
                    for _ in range(2))
    for s in (s_py, s_fast):    # (qcow2_do_open rejects it in the file: corrupt the engine's copy)
        s.m.fmt.engine.l1_table[2] = (1 << 63) | 0x30200      # guest 4..6 MiB
        s.timeline.note_external_write()        # (a change between steps, as a poke)
    s_py.set_engine("py")
    s_fast.set_engine("fast")
    core.reset_session_core_stats()
    stops = _stops(s_fast, "fast")
    assert stops == _stops(s_py, "py")
    assert any(r == "error" and "unaligned" in m for r, _n, m in stops)
    assert core.session_core_stats()["steps"] > 0.5 * s_fast.m.steps
    assert seen(s_py) == seen(s_fast)


CORE_SPECS = [("break", "desc"), ("break", "desc on=used"), ("break", "desc on=add q=0"),
              ("break", "desc on=pop len=512..8192"), ("break", "desc on=used if len == 3"),
              ("break", "desc on=pop if req % 7 == 3"), ("break", "desc indirect=yes"),
              ("break", "desc on=add|used head=2"), ("watch", "host 0x0..0xfffff"),
              ("watch", "host 0x30000+4096 if new != 0"), ("break", "ring inuse>=2"),
              ("break", "ring wrap"), ("break", "ring avail_idx=5"), ("break", "ring used_idx=3"),
              ("break", "step virtqueue_notify"), ("break", "step *flush*"),
              ("break", "step handle_aiocb_rw if side == 'host'"), ("break", "step blk_mq_*"),
              ("watch", "ram 0x10000+4096"), ("watch", "ram 0x0..0x3fffff if new == 0"),
              ("watch", "reg vq0.*"), ("watch", "reg isr")]


@settings(**dict(SETTINGS, max_examples=15))
@given(fmt=st.sampled_from(["raw", "qcow2", "article"]), wl=workloads, cfg=configs,
       specs=st.lists(st.sampled_from(CORE_SPECS), min_size=1, max_size=2, unique=True),
       ignore=st.integers(0, 3), interval=st.sampled_from([5, 37, 200]),
       window=st.sampled_from([1, 4]), hist=st.sampled_from([3, 400]), catch=st.booleans())
def test_breakpoints_the_core_stops_for_stop_where_python_does(tmp_path_factory, fmt, wl, cfg,
                                                               specs, ignore, interval, window,
                                                               hist, catch):
    """With desc and ring breakpoints and host watchpoints (and the default catch error, or
    not) the core runs the steps none of them can match and stops before the others
    (DESC_STEPS, HOST_WRITE_STEPS, RING_STEPS), which run recorded and are checked: the same
    stops, hit counts and session as on the Python engine."""
    core.session_core_config(window=window, min_stretch=1)
    tmp = tmp_path_factory.mktemp("sd")
    sessions = []
    for eng in ("py", "fast"):
        s = Session(machine(tmp, fmt, "", wl, cfg), checkpoint_interval=interval,
                    catch_errors=catch)
        s.history = collections.deque(maxlen=hist)
        s.set_engine(eng)
        for verb, spec in specs:
            try:
                bp = s.add_breakpoint(verb, spec)
            except BreakpointError:         # a host range past a small image's end
                continue
            s.breakpoints.ignore(bp, ignore)
        sessions.append(s)
    s_py, s_fast = sessions
    assert _stops(s_py, "py") == _stops(s_fast, "fast")
    assert [b.hits for b in s_py.breakpoints] == [b.hits for b in s_fast.breakpoints]
    assert seen(s_py) == seen(s_fast)


@pytest.mark.parametrize("verb,spec,kind,hits,share", [
    ("break", "desc on=used if req % 50 == 7", "vq.fill", 3, 0.5),
    ("watch", "host 0x0..0x30007", "qcow2.worker", 1, 0.5),
    ("break", "ring used_idx=100", "vq.flush", 1, 0.5),
    ("break", "step qcow2_co_flush_to_os", "qcow2.co_entry", 3, 0.5),
    ("watch", "reg vq0.used_idx if new % 64 == 0", "vq.flush", 3, 0.5),
    ("watch", "ram 0x16000+4096", "blkmq.submit_bio", 3, 0.3)])
def test_breakpoints_the_core_stops_for_use_it_and_stop_on_each_hit(tmp_path, verb, spec, kind,
                                                                    hits, share):
    """A long qcow2 run with a breakpoint that matches now and then: the core runs most
    steps (with ten RAM watchpoint stops less: each continue runs recorded until its first
    checkpoint), stops before each step the breakpoint could match, and every hit stops the
    run; after the run the core stops before nothing again."""
    from emu_fast import _bulk
    wl = "queue-depth 4\n" + "".join(f"write {(i * 7919) % 900 * 4096} 4k\n"
                                     + ("flush\n" if i % 50 == 49 else "") for i in range(200))
    s_py, s_fast = (Session(machine(tmp_path, "qcow2", "", wl, {}), checkpoint_interval=500)
                    for _ in range(2))
    for eng, s in (("py", s_py), ("fast", s_fast)):
        s.set_engine(eng)
        s.add_breakpoint(verb, spec)
    core.reset_session_core_stats()
    _bulk.reset_stats()
    stops = _stops(s_fast, "fast")
    assert stops == _stops(s_py, "py")
    assert [r for r, _n, _m in stops].count("breakpoint") + \
        [r for r, _n, _m in stops].count("watchpoint") >= hits, stops
    assert core.session_core_stats()["steps"] > share * s_fast.m.steps
    assert _bulk.stats()["stopped"].get(kind, 0) >= 150
    assert seen(s_py) == seen(s_fast)
    assert _bulk.stop_before(()) == frozenset()      # put back when the run ended
