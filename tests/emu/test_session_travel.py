"""emu.session.Session: breakpoints in the run commands, and travel back in time.

Going back to step K must give exactly the state a fresh forward run to K gives (the
machine digest: guest RAM, every component, the image file); each reverse command must land
where an independent forward scan says it should.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.block.qcow2.create import create_qcow2
from emu.session import Session
from tests.conftest import build, make_image
from tests.strategies import io_ops, workload_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE = os.path.join(SAMPLES, "article.qcow2")
MiB = 1 << 20
NO_FIXTURE_CHECK = [HealthCheck.function_scoped_fixture]


def text(name: str) -> str:
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


def session(image: str = ARTICLE, wl: str | None = None, interval: int = 50, **cfg) -> Session:
    return Session(build(image, text("mixed.wl") if wl is None else wl, **cfg),
                   checkpoint_interval=interval)


def fresh_digest(image: str, wl: str | None, k: int, **cfg) -> str:
    s = Session(build(image, text("mixed.wl") if wl is None else wl, **cfg), catch_errors=False)
    for _ in range(k):
        assert s._one() is not None
    return s.m.digest()


_names = iter(range(10 ** 9))
ops = io_ops(8, (1, 2, 8, 9))


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(items=ops, fmt=st.sampled_from(["raw", "qcow2"]), interval=st.sampled_from([1, 7, 40, 1000]),
       data=st.data())
def test_goto_back_equals_a_fresh_run_to_the_same_step(tmp_path, items, fmt, interval, data):
    img = str(tmp_path / f"d{next(_names)}.{fmt}")
    if fmt == "raw":
        make_image(img, 1 * MiB)
    else:
        create_qcow2(img, 1 * MiB)
    wl = workload_text(items)
    s = session(img, wl, interval=interval)
    s.breakpoints.delete()                        # run to the end whatever happens
    assert s.cont().reason == "end"
    n = s.m.steps
    k = data.draw(st.integers(0, n))
    assert s.goto(k).step == k and s.m.steps == k
    assert s.m.digest() == fresh_digest(img, wl, k)
    # and forward again to the end: the same end state
    s.goto(n)
    assert s.m.digest() == fresh_digest(img, wl, n)


def test_reverse_step_then_step_returns_to_the_same_state():
    s = session()
    s.step(300)
    for back in (1, 1, 5, 120):
        want = s.m.digest()
        n = s.m.steps
        assert s.reverse_step(back).step == n - back
        s.step(back)
        assert s.m.steps == n and s.m.digest() == want


@settings(max_examples=12, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(items=ops, interval=st.sampled_from([1, 13, 1000]), data=st.data())
def test_reverse_step_then_step_is_the_identity_for_random_workloads(tmp_path, items, interval, data):
    img = str(tmp_path / f"r{next(_names)}.raw")
    make_image(img, 1 * MiB)
    s = session(img, workload_text(items), interval=interval, queue_size=16)
    s.breakpoints.delete()
    assert s.cont().reason == "end"
    k = data.draw(st.integers(1, s.m.steps), label="k")
    back = data.draw(st.integers(1, k), label="back")
    s.goto(k)
    want = s.m.digest()
    assert s.reverse_step(back).step == k - back
    s.step(back)
    assert s.m.steps == k and s.m.digest() == want


def test_goto_zero_is_the_state_before_anything_ran_and_past_the_end_says_so():
    s = session(wl=text("article.wl"))
    start = s.m.digest()
    s.step(100)
    assert s.goto(0).step == 0 and s.m.digest() == start
    stop = s.goto(10 ** 9)
    assert stop.reason == "end" and "past the end" in stop.message
    with pytest.raises(ValueError):
        s.goto(-1)


def _desc_slot_written(rec, desc_base: int, slot: int) -> bool:
    lo, hi = desc_base + 16 * slot, desc_base + 16 * slot + 16
    return any(e[0] == "ram" and e[1] < hi and e[1] + len(e[3]) > lo for e in rec.effects)


@pytest.mark.parametrize("slot", [0, 1, 3])
def test_a_desc_breakpoint_stops_at_the_first_matching_step_and_no_earlier(slot):
    # the oracle: the first step whose RAM writes touch that slot of the descriptor table
    ref = Session(build(ARTICLE, text("mixed.wl")), catch_errors=False)
    first = None
    while first is None:
        rec = ref._one()
        assert rec is not None
        vq = ref.m.guest.vq
        if vq.num and _desc_slot_written(rec, vq.desc, slot):
            first = rec.n
    s = session()
    s.add_breakpoint("break", f"desc idx={slot} on=add")
    stop = s.cont()
    assert stop.reason == "breakpoint" and stop.step == first
    assert stop.hit.match["idx"] == slot and stop.hit.match["on"] == "add"


@settings(max_examples=15, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(items=ops, slot=st.integers(0, 15), indirect=st.booleans())
def test_a_desc_breakpoint_stops_at_the_first_match_for_random_workloads(tmp_path, items, slot, indirect):
    img = str(tmp_path / f"b{next(_names)}.raw")
    make_image(img, 1 * MiB)
    wl = workload_text(items)
    ref = Session(build(img, wl, queue_size=16, indirect=indirect), catch_errors=False)
    first = None
    while first is None and (rec := ref._one()) is not None:
        vq = ref.m.guest.vq
        if vq.num and _desc_slot_written(rec, vq.desc, slot):
            first = rec.n
    ref.m.hostfile.close()
    s = session(img, wl, queue_size=16, indirect=indirect)
    s.add_breakpoint("break", f"desc idx={slot} on=add")
    stop = s.cont()
    if first is None:
        assert stop.reason == "end"
    else:
        assert stop.reason == "breakpoint" and stop.step == first
        assert stop.hit.match["idx"] == slot


def test_reverse_continue_goes_back_to_the_previous_hit_exactly():
    s = session()
    s.add_breakpoint("break", "step virtqueue_split_pop")
    hits = []
    for _ in range(3):
        stop = s.cont()
        assert stop.reason == "breakpoint"
        hits.append((stop.step, s.m.digest()))
    for step, digest in reversed(hits[:-1]):
        stop = s.reverse_cont()
        assert stop.reason == "breakpoint" and stop.step == step and s.m.digest() == digest
        assert s.last.function == "virtqueue_split_pop"
    assert s.reverse_cont().reason == "start"


def test_reverse_next_goes_back_to_where_the_layer_run_began():
    s = session(wl=text("article.wl"))
    s.step(45)
    layers = {rec.n: rec.layer for rec in s.history}
    layer = layers[45]
    begin = 45
    while begin - 1 in layers and layers[begin - 1] == layer:
        begin -= 1
    stop = s.reverse_next()
    assert stop.step == begin - 1 and s.m.steps == begin - 1
    assert s.m.digest() == fresh_digest(ARTICLE, text("article.wl"), begin - 1)


def test_reverse_finish_goes_back_to_just_before_the_request_was_created():
    s = session()
    s.step(400)
    rid = max(s.m.guest.blkmq.rqs) if s.m.guest.blkmq.rqs else s.m.guest.blkmq.next_rq - 1
    stop = s.reverse_finish(rid)
    assert stop.step == s.m.steps < 400
    assert s.m.guest.blkmq.next_rq <= rid            # not created yet...
    s.step(1)
    assert s.m.guest.blkmq.next_rq > rid             # ...and the next step creates it


def test_a_poke_is_undone_by_going_back_past_it_and_kept_otherwise():
    s = session(wl=text("article.wl"))
    s.step(200)
    addr = 0x200000
    s.poke(addr, b"\xde\xad\xbe\xef")
    s.step(20)
    s.goto(205)
    assert s.read_ram(addr, 4) == b"\xde\xad\xbe\xef"
    s.goto(150)
    assert s.read_ram(addr, 4) == bytes(4)


def test_catch_error_is_on_from_the_start_and_stops_continue():
    s = session(wl=text("article.wl"))
    while not (s.last and s.last.kind == "vring.add_publish"):
        s.step()
    vq = s.m.guest.vq
    head = s.m.mem.read_u16(vq.avail + 4)
    s.poke(vq.desc + 16 * head + 8, bytes(4))          # the head descriptor's len = 0
    stop = s.cont()
    assert stop.reason == "error" and stop.hit.id == 1
    assert "Invalid size for indirect buffer table" in stop.message
    assert s.m.vdev.broken


def test_breakpoints_do_not_change_where_the_machine_goes():
    plain = Session(build(ARTICLE, text("mixed.wl")), catch_errors=False)
    plain.breakpoints.delete()
    plain.cont()
    s = session()
    for spec in ("desc on=pop", "req type=OUT stage=done", "step qcow2_*", "ring inuse>=2"):
        s.add_breakpoint("break", spec)
    s.add_breakpoint("watch", "ram 0x10000+64")
    stops = 0
    while s.cont().reason != "end":
        stops += 1
    assert stops > 10 and s.m.digest() == plain.m.digest()
