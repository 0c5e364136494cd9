"""The session picks its engine per command (set engine / --engine): same stops, same state."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu_fast
from emu.session import Session
from tests.conftest import build, make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE = os.path.join(SAMPLES, "article.qcow2")
MIXED = open(os.path.join(SAMPLES, "mixed.wl")).read()


def session(engine: str, **cfg) -> Session:
    s = Session(build(ARTICLE, MIXED, ram_size=4 << 20, **cfg), checkpoint_interval=37)
    s.set_engine(engine)
    return s


def test_auto_runs_single_steps_in_python_and_continue_compiled():
    s = session("auto")
    s.step(5)
    assert s.engine_in_use == "py"
    s.add_breakpoint("break", "step virtqueue_fill")
    s.cont()
    assert s.engine_in_use == ("fast" if emu_fast.available() else "py")
    s.set_engine("py")
    s.cont()
    assert s.engine_in_use == "py"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from(["desc on=used", "req type=IN stage=done", "step qcow2_co_pwritev_task",
                             "ring inuse>=3"]),
       back=st.integers(1, 300), queue_size=st.sampled_from([16, 256]))
def test_set_engine_gives_the_same_stops_and_states(spec, back, queue_size):
    if not emu_fast.available():
        pytest.fail("emu_fast is not compiled: build it with `pip install .`")
    runs = {}
    for eng in ("py", "fast", "auto"):
        s = session(eng, queue_size=queue_size)
        s.add_breakpoint("break", spec)
        stops = []
        while True:
            st_ = s.cont()
            stops.append((st_.reason, st_.step))
            if st_.reason == "end" or len(stops) > 12:
                break
        k = max(0, s.m.steps - back)
        s.goto(k)                           # re-execution from a checkpoint on that engine
        runs[eng] = (stops, s.m.digest(), s.reverse_step(1).step, s.m.digest())
        s.m.fmt.close()
        s.m.hostfile.close()
    assert runs["py"] == runs["fast"] == runs["auto"]


def test_set_engine_fast_without_the_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(emu_fast, "_core", None)
    monkeypatch.setattr(emu_fast, "_IMPORT_ERROR", "No module named 'emu_fast._core'")
    s = session("auto")
    with pytest.raises(emu_fast.FastEngineMissing, match="pip install"):
        s.set_engine("fast")
    assert s.engine == "auto"
    s.cont()                                   # auto: Python when nothing is compiled
    assert s.engine_in_use == "py" and s.stop.reason == "end"


def _seen(s: Session) -> tuple:
    """What the session shows of its last steps: s.last and last_by_side, in key order."""
    return (s.last.n if s.last else None, [(k, r.n) for k, r in s.last_by_side.items()])


@pytest.mark.parametrize("image", ["article", "raw"])
@pytest.mark.parametrize("every_step", [True, False])
def test_the_session_shows_its_last_steps_whenever_python_code_looks(tmp_path, monkeypatch, image,
                                                                      every_step):
    """session_run writes s.last and last_by_side late (emu_fast._core._Pending), but every
    Python callback (a breakpoint check, stop, progress, cancelled, a checkpoint saving the
    session) sees them as Session._record leaves them, and so does the caller afterwards --
    whichever side appears first (the dict's key order: qcow2 opens the image on the host
    first, a raw image has no such step)."""
    from emu import engine
    from emu.debug import breakpoints as BP
    seen, checked = {}, {}
    real = BP.BreakpointTable.check
    for eng in ("py", "fast"):
        log = seen[eng] = []
        at_check = checked[eng] = {}
        if image == "raw":
            path = str(tmp_path / f"{eng}.img")
            make_image(path, 4 << 20, content=bytes(range(256)) * 64)
            s = Session(build(path, MIXED, ram_size=4 << 20), checkpoint_interval=37)
            s.set_engine(eng)
        else:
            s = session(eng)
        s.add_breakpoint("break", "desc on=used if len == 3")     # candidates, never a stop

        def checking(self, m, rec, dry=False, _d=at_check, _s=s):
            _d[rec.n] = _seen(_s)       # (the fast engine checks only candidate steps)
            return real(self, m, rec, dry)
        monkeypatch.setattr(BP.BreakpointTable, "check", checking)
        stop = (lambda rec, _log=log, _s=s:
                _log.append(("stop", rec.n) + _seen(_s)) if rec.n % 97 == 0 else None)
        # (with a stop callback, Python code runs at every step; without one, only at the
        # checkpoints, candidate steps, every 64th (cancelled) and 50th (progress) step)
        engine.run_until(s, eng, limit=900, stop=stop if every_step else None,
                         progress=lambda n, live, _log=log, _s=s: _log.append(("progress", n) + _seen(_s)),
                         cancelled=lambda _log=log, _s=s: _log.append(("cancelled",) + _seen(_s)),
                         every=50)
        log.append(("after",) + _seen(s))
        # each checkpoint saved the session as it was at its step
        for cp in s.timeline.checkpoints:
            if cp.extra is not None:
                d = s.timeline._thaw_extra(cp.extra)
                log.append(("checkpoint", cp.step, d["last"].n if d["last"] else None,
                            [(k, r.n) for k, r in d["last_by_side"].items()]))
        s.m.fmt.close()
        s.m.hostfile.close()
    assert seen["fast"] == seen["py"]
    assert {e[0] for e in seen["py"]} == ({"stop"} if every_step else set()) | {
        "progress", "cancelled", "after", "checkpoint"}
    assert checked["fast"] and checked["fast"].items() <= checked["py"].items()
