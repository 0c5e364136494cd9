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
