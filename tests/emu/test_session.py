"""emu.session.Session: the stepping commands and the reads the panes make.

step(N) is N single steps, next() stops at the first change of layer, finish(rid) at that
request's blk_mq_end_request, cont() at the end or when cancelled; guest_to_host + read_host
find the bytes the guest wrote (a differential check against guest RAM).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu import views
from emu.block.qcow2.create import create_qcow2
from emu.session import Session, Stop
from tests.conftest import build, make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE_QCOW2 = os.path.join(SAMPLES, "article.qcow2")
MiB = 1 << 20
NO_FIXTURE_CHECK = [HealthCheck.function_scoped_fixture]


def workload(name: str) -> str:
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


def new_session(image: str = ARTICLE_QCOW2, text: str | None = None, **cfg) -> Session:
    return Session(build(image, workload("article.wl") if text is None else text, **cfg))


def singles(s: Session, n: int) -> None:
    for _ in range(n):
        if s.step().reason != "step":
            return


@pytest.fixture(scope="module")
def lengths():
    """Steps of a whole run of each sample workload (single steps until 'end')."""
    out = {}
    for wl in ("article.wl", "mixed.wl"):
        s = new_session(text=workload(wl))
        while s.step().reason == "step":
            pass
        out[wl] = (s.m.steps, s.m.digest())
        s.m.hostfile.close()
    return out


# -- step ---------------------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(wl=st.sampled_from(["article.wl", "mixed.wl"]), n=st.integers(1, 700), first=st.integers(0, 50))
def test_step_n_is_n_single_steps(wl, n, first):
    a, b = new_session(text=workload(wl)), new_session(text=workload(wl))
    singles(a, first)
    singles(b, first)
    stop = a.step(n)
    singles(b, n)
    assert a.m.digest() == b.m.digest()
    assert a.m.steps == b.m.steps and stop.step == a.m.steps
    assert stop.reason in ("step", "end")
    if stop.reason == "end":
        assert a.finished and b.finished
    assert [r.n for r in a.history] == [r.n for r in b.history]
    a.m.hostfile.close()
    b.m.hostfile.close()


def test_step_reports_the_end_and_stays_there(lengths):
    s = new_session()
    total, digest = lengths["article.wl"]
    stop = s.step(10 * total)
    assert stop.reason == "end" and s.finished
    assert s.m.steps == total and s.m.digest() == digest
    again = s.step()
    assert again.reason == "end" and s.m.steps == total and s.m.digest() == digest


def test_step_stops_at_a_device_error():
    s = new_session()
    while not (s.rings() and s.rings().avail_idx >= 1):
        s.step()
    head = s.rings().avail_ring[0][1]
    desc = s.rings().desc
    s.m.poke(desc + 16 * head + 8, (0).to_bytes(4, "little"))   # a zero-length buffer
    stop = s.step(1000)
    assert stop.reason == "error" and stop.step == s.last.n
    assert s.device().broken and stop.message == s.device().error["message"]
    assert s.device().error["step"] == stop.step
    assert s.last_step().error == stop.message


# -- next -----------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(wl=st.sampled_from(["article.wl", "mixed.wl"]), first=st.integers(0, 520))
def test_next_stops_at_the_first_step_in_another_layer(wl, first):
    s = new_session(text=workload(wl))
    singles(s, first)
    if s.finished:
        assert s.next().reason == "end"
        return
    start_layer = s.last.layer if s.last else None
    seen = len(s.history)
    stop = s.next()
    ran = list(s.history)[seen:]
    assert ran, "next runs at least one step"
    if stop.reason == "next":
        assert stop.step == ran[-1].n == s.m.steps
        assert start_layer is None or ran[-1].layer != start_layer
        assert all(r.layer == start_layer for r in ran[:-1]), \
            f"next ran past a change of layer: {[(r.n, r.layer) for r in ran]}"
    else:
        assert stop.reason == "end"
        assert all(r.layer == start_layer for r in ran), [(r.n, r.layer) for r in ran]


def next_stops(image: str, wl: str) -> tuple[list, list, int]:
    """(where repeated next() stops, the layer changes of a single-stepped run, the first step
    of the shutdown (qcow2_inactivate) or past the end)."""
    ref = new_session(image, workload(wl))
    while ref.step().reason == "step":
        pass
    layers = {r.n: r.layer for r in ref.history}
    assert sorted(layers) == list(range(1, ref.m.steps + 1))
    want = [n for n in sorted(layers) if n == 1 or layers[n] != layers[n - 1]]
    shutdown = next((r.n for r in ref.history if r.function == "qcow2_inactivate"), ref.m.steps + 1)
    s = new_session(image, workload(wl))
    got = []
    while (stop := s.next()).reason == "next":
        got.append(stop.step)
    assert stop.reason == "end" and s.m.digest() == ref.m.digest()
    return got, want, shutdown


@pytest.mark.parametrize("wl", ["article.wl", "mixed.wl"])
def test_repeated_next_visits_exactly_the_layer_changes(images, wl):
    got, want, _ = next_stops(images["raw"], wl)
    assert got == want
    got, want, shutdown = next_stops(ARTICLE_QCOW2, wl)
    assert [n for n in got if n < shutdown] == [n for n in want if n < shutdown]


def test_next_stops_inside_the_qcow2_shutdown():
    got, want, shutdown = next_stops(ARTICLE_QCOW2, "article.wl")
    assert [n for n in got if n >= shutdown] == [n for n in want if n >= shutdown]


def test_next_at_the_start_takes_one_step():
    s = new_session()
    stop = s.next()
    assert stop.reason == "next" and s.m.steps == 1 == stop.step


# -- finish ----------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(wl=st.sampled_from(["article.wl", "mixed.wl"]), first=st.integers(0, 450), pick=st.integers(0, 99))
def test_finish_stops_at_that_requests_end(wl, first, pick):
    s = new_session(text=workload(wl))
    singles(s, first)
    live = [r for r in s.requests() if r.stage != "done"]
    if not live:
        return
    rid = live[pick % len(live)].id
    seen = len(s.history)
    stop = s.finish(rid)
    assert stop.reason == "finish" and stop.step == s.last.n == s.m.steps
    assert s.last.function == "blk_mq_end_request"
    assert s.last.detail.startswith(f"request {rid} ")
    ends = [r for r in list(s.history)[seen:] if r.function == "blk_mq_end_request"
            and r.detail.startswith(f"request {rid} ")]
    assert len(ends) == 1, "it stops at the first (and only) end of that request"
    assert next(r for r in s.requests() if r.id == rid).stage == "done"


def test_finish_of_a_completed_or_unknown_request():
    s = new_session()
    while not any(r.stage == "done" for r in s.requests()):
        s.step()
    done = next(r for r in s.requests() if r.stage == "done")
    steps = s.m.steps
    stop = s.finish(done.id)
    assert stop.reason == "finish" and s.m.steps == steps, "nothing to run"
    with pytest.raises(ValueError):
        s.finish(10_000)


def test_finish_can_be_interrupted():
    s = new_session()
    while not any(r.stage != "done" for r in s.requests()):
        s.step()
    rid = next(r.id for r in s.requests() if r.stage != "done")
    steps = s.m.steps
    stop = s.finish(rid, cancelled=lambda: True)
    assert stop.reason == "interrupted" and s.m.steps == steps


# -- continue --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wl", ["article.wl", "mixed.wl"])
def test_cont_reaches_the_end_like_single_steps(wl, lengths):
    s = new_session(text=workload(wl))
    progress = []
    stop = s.cont(progress=lambda steps, inflight: progress.append((steps, inflight)), every=50)
    total, digest = lengths[wl]
    assert stop == Stop("end", total, "the workload finished")
    assert s.finished and s.m.digest() == digest
    assert progress and all(b - a >= 50 for (a, _), (b, _) in zip(progress, progress[1:]))
    assert all(steps <= total and inflight >= 0 for steps, inflight in progress)
    assert all(r.stage == "done" for r in s.requests())
    assert "stopped: end" in s.status_line() and f"step {total} " in s.status_line()


def test_cont_cancelled_stops_as_interrupted_and_resumes(lengths):
    s = new_session(text=workload("mixed.wl"))
    stop = s.cont(cancelled=lambda: True)
    assert stop.reason == "interrupted" and s.m.steps == 0 and not s.finished
    calls = []

    def cancel_later():
        calls.append(1)
        return len(calls) > 2

    stop = s.cont(cancelled=cancel_later)
    assert stop.reason == "interrupted" and 0 < s.m.steps < lengths["mixed.wl"][0]
    assert "interrupted" in s.status_line()
    stop = s.cont()
    assert stop.reason == "end" and s.m.digest() == lengths["mixed.wl"][1], \
        "an interrupted run resumes to the same end"


# -- reads: guest RAM, the host file, guest -> host ----------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("session-images")
    qcow = str(d / "fresh.qcow2")
    create_qcow2(qcow, 16 * MiB, cluster_size=4096)
    return {"article": ARTICLE_QCOW2, "raw": make_image(d / "disk.raw", 16 * MiB),
            "qcow2": qcow}


def check_written_bytes_reach_the_host(s: Session) -> int:
    """Run to the end; at each write's blk_mq_end_request, its data buffer (guest RAM) equals
    the host bytes guest_to_host maps its sectors to.  Returns how many writes were checked."""
    checked = 0
    pending = {}
    while True:
        for r in s.requests():
            if r.type == "OUT" and r.stage != "done" and r.data:
                pending[r.id] = r
        stop = s.step()
        assert stop.reason in ("step", "end"), stop
        rec = s.last
        if rec is not None and rec.function == "blk_mq_end_request":
            rid = int(rec.detail.split()[1])
            r = pending.pop(rid, None)
            if r is not None and "BLK_STS_OK" in rec.detail:
                guest = b"".join(s.read_ram(a, n) for a, n in r.data)
                assert len(guest) == r.length
                ranges = s.guest_to_host(r.sector * 512, r.length)
                assert sum(n for _h, n in ranges) == r.length, ranges
                host = b"".join(s.read_host(h, n) for h, n in ranges)
                assert host == guest, f"request {rid}: host bytes differ from guest RAM"
                checked += 1
        if stop.reason == "end":
            return checked


@pytest.mark.parametrize("image", ["article", "raw", "qcow2"])
@pytest.mark.parametrize("wl", ["article.wl", "mixed.wl"])
def test_guest_to_host_finds_what_the_guest_wrote(images, image, wl):
    s = new_session(images[image], workload(wl))
    assert check_written_bytes_reach_the_host(s) >= 2


@st.composite
def disjoint_writes(draw) -> list:
    """Writes to disjoint sector ranges (in flight together, so no order among them), shuffled."""
    pos, out = 0, []
    for gap, n, fill in draw(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 40),
                                                st.sampled_from(["", " fill=0x5a"])),
                                      min_size=1, max_size=6)):
        pos += gap
        out.append((pos, n, fill))
        pos += n
    return draw(st.permutations(out))


@settings(max_examples=10, deadline=None, suppress_health_check=NO_FIXTURE_CHECK)
@given(writes=disjoint_writes(), image=st.sampled_from(["raw", "qcow2"]))
def test_guest_to_host_on_random_writes(images, writes, image):
    text = "".join(f"write {sec * 512} {n * 512}{fill}\n" for sec, n, fill in writes) + "wait\n"
    s = new_session(images[image], text)
    assert check_written_bytes_reach_the_host(s) >= 1
    # at the end, every written sector reads back from the host as the last write left it
    from emu.workload import parse_workload, write_pattern
    want = {}
    for op in parse_workload(text):
        if op["op"] != "write":
            continue
        data = write_pattern(op["n"], op["offset"], op["length"], op.get("fill"))
        for k in range(op["length"] // 512):
            want[op["offset"] // 512 + k] = data[512 * k:512 * k + 512]
    for sector, data in want.items():
        (h, n), = s.guest_to_host(sector * 512, 512)
        assert n == 512 and s.read_host(h, 512) == data


@settings(max_examples=200, deadline=None)
@given(gpa=st.integers(-(1 << 40), 1 << 40), n=st.integers(-(1 << 20), 1 << 27))
def test_read_ram_clamped_in_and_below_ram(gpa, n):
    s = _small_session()
    gpa = min(gpa, s.ram_size())
    data = s.read_ram_clamped(gpa, n)
    start = max(0, gpa)
    assert data == bytes(s.m.mem.ram[start:start + max(0, min(n, s.ram_size() - start))])


@pytest.mark.parametrize("past, n", [(1, 16), (4096, 0), (1 << 40, 1 << 20), (7, -3)])
def test_read_ram_clamped_past_ram(past, n):
    s = _small_session()
    assert s.read_ram_clamped(s.ram_size() + past, n) == b""


_SMALL: list = []


def _small_session() -> Session:
    if not _SMALL:
        s = new_session(ram_size=1 << 20, queue_size=8)
        s.step(200)
        _SMALL.append(s)
    return _SMALL[0]


@settings(max_examples=100, deadline=None)
@given(gpa=st.integers(-(1 << 33), 1 << 33), n=st.integers(0, 1 << 22))
def test_read_ram_refuses_what_is_not_ram(gpa, n):
    s = _small_session()
    size = s.ram_size()
    if 0 <= gpa and gpa + n <= size:
        assert s.read_ram(gpa, n) == bytes(s.m.mem.ram[gpa:gpa + n])
    else:
        with pytest.raises(ValueError):
            s.read_ram(gpa, n)


@settings(max_examples=100, deadline=None)
@given(off=st.integers(0, 1 << 34), n=st.integers(0, 1 << 22))
def test_read_host_clamps_to_the_file(off, n):
    s = _small_session()
    size = s.host_size()
    data = s.read_host(off, n)
    assert len(data) == max(0, min(n, size - off))
    if data:
        assert data == s.m.hostfile.pread(off, len(data))
    with pytest.raises(ValueError):
        s.read_host(-1 - off, n)


# -- what the panes read -----------------------------------------------------------------------------------

def test_recent_steps_last_step_and_chains_follow_the_history():
    s = new_session()
    assert s.last_step() is None and s.recent_steps() == [] and s.chains() == {}
    assert "stopped: ready" in s.status_line()
    s.step(120)
    recent = s.recent_steps(30)
    assert [v.n for v in recent] == list(range(91, 121))
    assert s.last_step() == recent[-1] == views.step_view(s.last)
    chains = s.chains()
    for side, (n, chain) in chains.items():
        rec = next(r for r in reversed(s.history) if views.step_view(r).side == side)
        assert n == rec.n and chain[-1][0] == rec.function
    assert set(chains) == {v.side for v in s.recent_steps(120)}


def test_info_dispatches_to_introspection():
    s = new_session()
    s.step(150)
    assert s.info("virtio-status")["device_id"] == 2
    assert s.info("virtio-queue-status")["queue_index"] == 0
    assert s.info("virtio-queue-element")["index"] == s.info("virtio-queue-element", None)["index"]
    with pytest.raises(ValueError):
        s.info("virtio-nonsense")


def test_the_panes_views_are_the_machines():
    s = new_session()
    s.step(100)
    assert s.requests() == views.requests(s.m)
    assert s.descriptors() == views.descriptors(s.m)
    assert s.rings() == views.rings(s.m)
    assert s.device() == views.device(s.m)
    assert s.host_map() == views.host_map(s.m)
    assert s.ram_size() == s.m.mem.size and s.host_size() == s.m.hostfile.size
    digest = s.m.digest()
    for _ in range(3):                 # reading is not running: nothing changes
        s.requests(), s.descriptors(), s.rings(), s.device(), s.host_map(), s.chains()
        s.info("virtio-status"), s.info("virtio-queue-status"), s.info("virtio-queue-element")
    assert s.m.digest() == digest
