"""Reverse execution: going back to step K through the Timeline gives exactly the state a
fresh machine has after K steps (digest, guest RAM, image bytes, the file on disk)."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.block.hostfile import BLOCK, HostFile
from emu.block.qcow2.create import create_qcow2
from emu.debug.timeline import Timeline
from emu.machine import Machine
from emu.mem.guest_memory import PAGE_SIZE, GuestMemory
from emu.sim.steps import EffectLog
from tests.conftest import build, make_image

MiB = 1 << 20
DISK = 1 * MiB
SECTORS = DISK // 512
RAM = 2 * MiB
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "sample_images")
ARTICLE = os.path.join(SAMPLES, "article.qcow2")
ARTICLE_WL = open(os.path.join(SAMPLES, "article.wl")).read()
MIXED_WL = open(os.path.join(SAMPLES, "mixed.wl")).read()
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
          HealthCheck.data_too_large]


# -- a driver that runs a machine step by step, closing the block layer at the end ------------

class Driver:
    """One step per call, like the debugger's session: when the queue runs dry the format
    driver is closed (qcow2 writes back its caches) one step at a time too.  `closed` is
    the driver's own state: the Timeline keeps it through `extra`."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.closed = False
        self.calls = 0

    def step(self):
        self.calls += 1
        rec = self.m.step()
        if rec is None and not self.closed:
            self.closed = True
            kind = self.m.fmt.close_kind
            if kind:
                self.m.sim.post("qemu", kind)
                rec = self.m.step()
        return rec

    def run(self, n: int, tl: Timeline | None = None) -> None:
        for _ in range(n):
            assert self.step() is not None, "the run ended early"
            if tl is not None:
                tl.after_step()

    def run_to_end(self) -> int:
        while self.step() is not None:
            pass
        return self.m.steps

    @property
    def extra(self):
        return (lambda: {"closed": self.closed},
                lambda s: setattr(self, "closed", s["closed"]))


def snapshot(m: Machine) -> dict:
    """Everything a rewind must get back (the digest covers the component state too)."""
    hf = m.hostfile
    return {"steps": m.steps, "ram": hashlib.sha256(m.mem.ram).hexdigest(), "size": hf.size,
            "file": hashlib.sha256(hf.pread(0, hf.size)).hexdigest(), "digest": m.digest(),
            "io": (hf.writes, hf.syncs), "machine": m}


def assert_same(got: dict, want: dict) -> None:
    for key in ("steps", "ram", "size", "file", "io"):
        assert got[key] == want[key], f"{key} differs after the rewind"
    if got["digest"] != want["digest"]:                 # name the component that differs
        a, b = got["machine"].state(), want["machine"].state()
        assert a == b, [k for k in a if a[k] != b.get(k)]
        raise AssertionError("the digest differs")


def on_disk(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Reference:
    """Fresh machines run to step k (with the same pokes at the same steps), cached."""

    def __init__(self, image: str, wl: str, cfg: dict, pokes: dict | None = None) -> None:
        self.image, self.wl, self.cfg, self.pokes = image, wl, cfg, pokes or {}
        self.cache: dict = {}
        self.machines: list = []

    def fresh(self, mode: str = "overlay", image: str | None = None) -> Machine:
        m = build(image or self.image, self.wl, mode=mode, **self.cfg)
        self.machines.append(m)
        return m

    def at(self, k: int) -> dict:
        if k not in self.cache:
            m = self.fresh()
            d = Driver(m)
            for step in range(k + 1):
                for gpa, data in self.pokes.get(step, ()):
                    m.poke(gpa, data)
                if step < k:
                    assert d.step() is not None
            self.cache[k] = snapshot(m)
        return self.cache[k]

    def total(self) -> int:
        """Steps to the end, with the pokes applied at their steps."""
        m = self.fresh()
        d = Driver(m)
        while True:
            for gpa, data in self.pokes.get(m.steps, ()):
                m.poke(gpa, data)
            if d.step() is None:
                return m.steps

    def close(self) -> None:
        for m in self.machines:
            m.fmt.close()
            m.hostfile.close()


# -- images and workloads ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("tl")
    pattern = bytes((i * 7 + (i >> 9)) & 0xFF for i in range(DISK))
    raw = make_image(d / "small.raw", DISK, pattern)
    qcow = str(d / "small.qcow2")
    create_qcow2(qcow, DISK, cluster_size=4096)
    backing = make_image(d / "backing.raw", DISK, pattern)
    over_raw = str(d / "over-raw.qcow2")
    create_qcow2(over_raw, None, cluster_size=4096, backing_file="backing.raw",
                 backing_format="raw")
    over_qcow = str(d / "over-qcow.qcow2")
    create_qcow2(over_qcow, None, cluster_size=65536, backing_file="over-raw.qcow2",
                 backing_format="qcow2")
    return {"raw": raw, "qcow2": qcow, "backing": backing, "over-raw": over_raw,
            "over-qcow2": over_qcow}


BACKING_FILES = {"over-raw": ["backing.raw"], "over-qcow2": ["over-raw.qcow2", "backing.raw"]}


def _range(draw_off, draw_len):
    off = draw_off
    return off * 512, max(1, min(draw_len, SECTORS - off)) * 512


@st.composite
def workloads(draw, max_ops: int = 12) -> str:
    ops = draw(st.lists(st.tuples(
        st.sampled_from(["write", "write", "read", "flush", "discard", "write-zeroes",
                         "wait", "get-id"]),
        st.integers(0, SECTORS - 1), st.integers(1, 24), st.integers(0, 255),
        st.booleans()), min_size=1, max_size=max_ops))
    lines = []
    for op, off, n, fill, flag in ops:
        o, ln = _range(off, n)
        if op == "write":
            lines.append(f"write {o} {ln}" + (f" fill={fill}" if flag else ""))
        elif op == "write-zeroes":
            lines.append(f"write-zeroes {o} {ln}" + (" unmap" if flag else ""))
        elif op in ("read", "discard"):
            lines.append(f"{op} {o} {ln}")
        else:
            lines.append(op)
    return "\n".join(lines) + "\n"


configs = st.fixed_dictionaries({
    "ram_size": st.just(RAM),
    "queue_size": st.sampled_from([8, 256]),
    "discard": st.sampled_from(["ignore", "unmap"]),
    "cache": st.sampled_from(["writeback", "writethrough"]),
    "seed": st.integers(0, 3),
})
intervals = st.one_of(st.sampled_from([1, 2, 3, 100_000]), st.integers(1, 60))
max_cps = st.sampled_from([2, 3, 5, 256])


def _check_travel(tl: Timeline, drv: Driver, ref: Reference, k: int, write_path: str | None):
    """Go back to step k, checking what rewind promises, then compare with a fresh run."""
    m = drv.m
    before = tl.steps
    thinned = tl.thinned
    calls = drv.calls
    base = tl.rewind(k)
    assert drv.calls == calls                               # rewinding executes no step
    assert base == max(s for s in before if s <= k)         # the latest checkpoint <= k
    assert tl.steps == [s for s in before if s <= base]     # later ones are dropped
    assert m.steps == base
    drv.run(k - base, tl)
    assert drv.calls - calls == k - base                    # only the steps since it re-run
    if thinned == 0:
        assert k - base < tl.interval
    got = snapshot(m)
    want = ref.at(k)
    assert_same(got, want)
    if write_path is not None:                              # the user's file itself
        assert on_disk(write_path) == want["file"]
        assert os.path.getsize(write_path) == want["size"]


def _travel_case(tmp_path_factory, images, data, kind: str, mode: str, max_ops: int):
    wl = data.draw(workloads(max_ops), label="workload")
    cfg = data.draw(configs, label="config")
    interval = data.draw(intervals, label="interval")
    maxcp = data.draw(max_cps, label="max_checkpoints")
    ref = Reference(images[kind], wl, cfg)
    try:
        total = ref.total()
        n = data.draw(st.integers(1, total), label="N")
        image, write_path = images[kind], None
        if mode == "write":                 # a copy of the image (and of its backing files)
            d = tmp_path_factory.mktemp("w")
            for name in [os.path.basename(image), *BACKING_FILES.get(kind, ())]:
                shutil.copyfile(os.path.join(os.path.dirname(image), name), d / name)
            image = write_path = str(d / os.path.basename(image))
        m = ref.fresh(mode, image)
        drv = Driver(m)
        tl = Timeline(m, interval, maxcp, extra=drv.extra)
        drv.run(n, tl)
        assert len(tl.checkpoints) <= max(maxcp, 1 + len(tl.stats()["pinned"]))
        for _ in range(data.draw(st.integers(1, 3), label="travels")):
            k = data.draw(st.integers(0, m.steps), label="K")
            _check_travel(tl, drv, ref, k, write_path)
            fwd = data.draw(st.integers(0, n - k), label="forward")
            drv.run(fwd, tl)
        drv.run(n - m.steps, tl)                               # and on to N again
        assert_same(snapshot(m), ref.at(n))
        if write_path is not None:
            assert on_disk(write_path) == ref.at(n)["file"]
        if n == total:                                           # nothing more to run
            assert drv.step() is None
    finally:
        ref.close()


@settings(max_examples=12, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_rewind_and_rerun_equals_a_fresh_run(tmp_path_factory, images, kind, data):
    _travel_case(tmp_path_factory, images, data, kind, "overlay", 8)


@settings(max_examples=6, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_write_mode_puts_the_file_on_disk_back(tmp_path_factory, images, kind, data):
    _travel_case(tmp_path_factory, images, data, kind, "write", 8)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data())
@pytest.mark.parametrize("kind,mode", [("raw", "overlay"), ("qcow2", "overlay"),
                                       ("qcow2", "write"), ("over-raw", "overlay"),
                                       ("over-qcow2", "write")])
def test_rewind_and_rerun_long(tmp_path_factory, images, kind, mode, data):
    _travel_case(tmp_path_factory, images, data, kind, mode, 30)


@settings(max_examples=4, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["over-raw", "over-qcow2"])
def test_backing_chains(tmp_path_factory, images, kind, data):
    """The backing files' readers (open files) are shared by the checkpoints, not copied."""
    _travel_case(tmp_path_factory, images, data, kind, "overlay", 8)


# -- pokes ---------------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data(), noted=st.booleans())
def test_poke_then_rewind(images, data, noted):
    _poke_case(images, data, noted)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data(), noted=st.booleans())
def test_poke_then_rewind_long(images, data, noted):
    _poke_case(images, data, noted)


def _poke_case(images, data, noted):
    """A poke between steps is undone by going back before it; noted, it is kept by going
    back to its step or later (the re-run starts from the pinned checkpoint)."""
    wl = data.draw(workloads(6), label="workload")
    cfg = {"ram_size": RAM}
    interval = data.draw(intervals, label="interval")
    gpa = data.draw(st.integers(0, RAM - 1), label="gpa")
    poke = data.draw(st.binary(min_size=1, max_size=min(64, RAM - gpa)), label="data")
    plain = Reference(images["qcow2"], wl, cfg)
    try:
        total = plain.total()
        p = data.draw(st.integers(0, total), label="poke step")
        poked = Reference(images["qcow2"], wl, cfg, {p: [(gpa, poke)]})
        m = plain.fresh()
        drv = Driver(m)
        tl = Timeline(m, interval, data.draw(max_cps, label="max_checkpoints"), extra=drv.extra)
        drv.run(p, tl)
        if noted:
            tl.poke(gpa, poke)
            assert p in tl.stats()["pinned"]
        else:
            m.poke(gpa, poke)
        assert bytes(m.mem.ram[gpa:gpa + len(poke)]) == poke
        try:
            after = poked.total()            # a poke can break the device: the run may end sooner
            drv.run(after - p, tl)
            if noted and p < after:
                k = data.draw(st.integers(p, after), label="K after the poke")
                tl.goto(k, drv.step)
                assert_same(snapshot(m), poked.at(k))
            if p > 0:
                k = data.draw(st.integers(0, p - 1), label="K before the poke")
                tl.goto(k, drv.step)
                assert_same(snapshot(m), plain.at(k))
                assert tl.stats()["pinned"] == []
        finally:
            poked.close()
    finally:
        plain.close()


def test_poke_undone_even_at_the_same_step(image):
    m = build(image, "write 0 4k\nwait\n", ram_size=RAM)
    tl = Timeline(m, interval=1000)
    Driver(m).run(5, tl)
    before = bytes(m.mem.ram)
    m.poke(RAM - 100, b"\xaa" * 100)         # not noted: recorded in the open interval anyway
    assert tl.rewind(5) == 0
    Driver(m).run(5, tl)
    assert bytes(m.mem.ram) == before


# -- the undo hooks themselves -------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 64 * PAGE_SIZE - 1),
                                 st.binary(min_size=1, max_size=3 * PAGE_SIZE)), max_size=15),
       cut=st.integers(0, 15))
def test_guest_memory_undo_restores_ram_and_digest(writes, cut):
    mem = GuestMemory(64 * PAGE_SIZE, EffectLog())
    for off, data in writes[:cut]:
        data = data[:mem.size - off]
        mem.write(off, data)
    base = bytes(mem.ram)
    base_digest = mem.digest()
    mem.undo = {}
    touched = set()
    for off, data in writes[cut:]:
        data = data[:mem.size - off]
        mem.write(off, data)
        touched.update(range(off // PAGE_SIZE, (off + len(data) - 1) // PAGE_SIZE + 1))
    mem.digest()                                  # hashes cached for the new content
    undo, mem.undo = mem.undo, None
    assert set(undo) == touched                   # exactly the pages written, each once
    mem.restore_pages(undo)
    assert bytes(mem.ram) == base
    assert mem.digest() == base_digest            # the restored pages were re-hashed


SIZE = 40000            # not a multiple of the 4 KiB block


@settings(max_examples=80, deadline=None, suppress_health_check=HEALTH)
@given(mode=st.sampled_from(["overlay", "write"]),
       intervals_ops=st.lists(st.lists(st.one_of(
           st.tuples(st.just("w"), st.integers(0, SIZE + 20000), st.binary(min_size=1, max_size=9000)),
           st.tuples(st.just("t"), st.integers(0, SIZE + 20000), st.just(b""))),
           max_size=6), min_size=1, max_size=4),
       back=st.integers(0, 3))
def test_hostfile_undo_restores_content_size_and_disk(tmp_path_factory, mode, intervals_ops, back):
    """Several intervals of pwrite/truncate, each with its own undo dict; merging them older
    first and restoring gives back the content (and, in write mode, the file) of any start."""
    d = tmp_path_factory.mktemp("h")
    base = bytes((i * 13) & 0xFF for i in range(SIZE))
    path = make_image(d / "f.raw", SIZE, base)
    hf = HostFile(path, mode, str(d))
    try:
        starts = []                 # (content, size) at the start of each interval
        undos = []
        for ops in intervals_ops:
            starts.append((hf.pread(0, hf.size), hf.size))
            hf.undo, hf.undo_size = {}, None
            for op, off, data in ops:
                if op == "w":
                    hf.pwrite(off, data)
                else:
                    hf.truncate(off)
            assert hf.undo_size in (None, starts[-1][1])
            undos.append(hf.undo)
            hf.undo = None
        k = back % len(starts)
        merged: dict = {}
        for u in reversed(undos[k:]):             # newest first: older content wins
            merged.update(u)
        writes = hf.writes
        hf.restore_blocks(merged, starts[k][1])
        content, size = starts[k]
        assert hf.size == size
        assert hf.pread(0, size + 5000) == content + bytes(5000)
        assert hf.writes == writes
        if mode == "write":
            with open(path, "rb") as f:
                assert f.read() == content
        else:
            with open(path, "rb") as f:
                assert f.read() == base               # the overlay never touched the image
        assert all(v is None or len(v) == BLOCK for u in undos for v in u.values())
    finally:
        hf.close()


def test_hostfile_deepcopy_is_the_file_itself(tmp_path):
    import copy
    hf, fmt = _open(make_image(tmp_path / "x.raw", 8192))
    try:
        assert copy.deepcopy(hf) is hf
        assert copy.deepcopy(fmt).file is hf
    finally:
        hf.close()


def _open(path):
    from emu.block.image import open_image
    return open_image(path, "overlay")


def test_hooks_are_off_without_a_timeline(image):
    m = build(image, "write 0 8k\nwait\n", ram_size=RAM)
    Driver(m).run_to_end()
    assert m.mem.undo is None and m.hostfile.undo is None and m.hostfile.undo_size is None


# -- checkpoints, thinning, the API --------------------------------------------------------------

def test_thinning_keeps_checkpoints_dense_near_the_present(tmp_path):
    img = make_image(tmp_path / "mixed.raw", 16 * MiB)
    m = build(img, MIXED_WL * 3, ram_size=8 * MiB)
    drv = Driver(m)
    tl = Timeline(m, interval=1, max_checkpoints=12, extra=drv.extra)
    end = 0
    while drv.step() is not None:
        tl.after_step()
        steps = tl.steps
        assert len(steps) <= 12 and steps[0] == 0 and steps[-1] == m.steps
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        assert all(g1 >= g2 for g1, g2 in zip(gaps, gaps[1:])), steps   # sparser in the past
        end = m.steps
    assert end > 200 and tl.thinned == end - 11
    ref = Reference(img, MIXED_WL * 3, {"ram_size": 8 * MiB})
    try:
        for k in (end - 1, end // 2, 1):
            tl.goto(k, drv.step)
            assert_same(snapshot(m), ref.at(k))
    finally:
        ref.close()


def test_rewind_executes_no_step_and_rerun_stays_within_the_interval(monkeypatch, image):
    calls = []
    real = Machine.step
    monkeypatch.setattr(Machine, "step", lambda self: calls.append(1) or real(self))
    m = build(image, MIXED_WL, ram_size=8 * MiB)
    drv = Driver(m)
    tl = Timeline(m, interval=25, extra=drv.extra)
    end = Driver(build(image, MIXED_WL, ram_size=8 * MiB)).run_to_end()
    drv.run(end, tl)
    assert tl.steps == list(range(0, end + 1, 25))
    ref = Reference(image, MIXED_WL, {"ram_size": 8 * MiB})
    for k in (end - 1, end - 30, 3):
        calls.clear()
        base = tl.rewind(k)
        assert calls == [] and base == k - k % 25
        drv.run(k - base, tl)
        assert len(calls) == k - base < 25
        assert_same(snapshot(m), ref.at(k))
    ref.close()


def test_correct_without_after_step(image):
    """Checkpoints only decide how far a re-run goes: the undo hooks record every write."""
    m = build(image, MIXED_WL, ram_size=8 * MiB)
    drv = Driver(m)
    tl = Timeline(m, interval=10, extra=drv.extra)
    end = drv.run_to_end()
    assert tl.steps == [0]
    ref = Reference(image, MIXED_WL, {"ram_size": 8 * MiB})
    try:
        assert tl.goto(end // 2, drv.step) == end // 2
        assert_same(snapshot(m), ref.at(end // 2))
        assert tl.steps == list(range(0, end // 2 + 1, 10))
    finally:
        ref.close()


def test_checkpoint_at_the_same_step_folds_the_older_one(image):
    m = build(image, "write 0 4k\nwait\n", ram_size=RAM)
    tl = Timeline(m, interval=1000)
    Driver(m).run(3)
    tl.checkpoint()
    m.poke(0x200000 - 8, b"12345678")
    tl.checkpoint()
    assert tl.steps == [0, 3]
    assert tl.checkpoints[-1].ram                 # the poke's page, folded in
    tl.checkpoint()
    tl.checkpoint()
    assert tl.steps == [0, 3]
    tl.rewind(0)
    assert bytes(m.mem.ram[0x200000 - 8:0x200000]) == bytes(8)
    tl.checkpoint()
    assert tl.steps == [0, 0]                     # the first checkpoint is never dropped
    assert tl.rewind(0) == 0


def test_errors_and_close(image):
    m = build(image, "write 0 4k\nwait\n", ram_size=RAM)
    drv = Driver(m)
    drv.run(10)
    with pytest.raises(ValueError, match="interval"):
        Timeline(m, interval=0)
    with pytest.raises(ValueError, match="max_checkpoints"):
        Timeline(m, max_checkpoints=1)
    tl = Timeline(m, interval=4)
    with pytest.raises(ValueError, match="already"):
        Timeline(m)
    with pytest.raises(ValueError, match="before the first checkpoint"):
        tl.rewind(9)
    drv.run(5, tl)
    with pytest.raises(ValueError, match="future"):
        tl.rewind(16)
    assert tl.rewind(13) == 10 + 0 and tl.steps == [10]
    tl.close()
    assert m.mem.undo is None and m.hostfile.undo is None
    Timeline(m).close()                           # attachable again


def test_extra_state_is_copied_and_restored_even_when_not_picklable(image):
    m = build(image, "write 0 4k\nwait\nread 0 4k\n", ram_size=RAM)
    drv = Driver(m)
    box = {"log": [], "fn": lambda: 1}           # a lambda: pickling fails, deepcopy is used
    loaded = []

    def save():
        return {"log": box["log"], "fn": box["fn"], "steps": m.steps}

    def load(s):
        loaded.append(s)
        box["log"] = s["log"]
    tl = Timeline(m, interval=5, extra=(save, load))
    for _ in range(12):
        drv.step()
        box["log"].append(m.steps)
        tl.after_step()
    assert tl.checkpoints[1].extra[0] == "copy"
    tl.rewind(7)
    assert loaded[-1]["steps"] == 5 and box["log"] == [1, 2, 3, 4, 5]
    box["log"].append("x")                       # the checkpoint's copy stays pristine
    tl.rewind(5)
    assert box["log"] == [1, 2, 3, 4, 5]


def test_stats_account_for_what_is_kept():
    m = build(ARTICLE, ARTICLE_WL, ram_size=8 * MiB)
    drv = Driver(m)
    tl = Timeline(m, interval=40, extra=drv.extra)
    end = 0
    while drv.step() is not None:
        tl.after_step()
        end = m.steps
    s = tl.stats()
    assert s["checkpoints"] == len(s["steps"]) == end // 40 + 1
    assert s["steps"] == list(range(0, end + 1, 40))
    pages = sum(len(c.ram) for c in tl.checkpoints) + len(m.mem.undo)
    assert s["ram_pages"] == pages and s["ram_bytes"] == pages * PAGE_SIZE
    assert s["file_blocks"] > 0                   # the qcow2 data and metadata writes
    assert s["state_bytes"] == sum(len(c.state) for c in tl.checkpoints)
    assert 0 < s["state_bytes"] < s["checkpoints"] * 64 * 1024    # compressed component state
    assert s["total_bytes"] >= s["ram_bytes"] + s["file_bytes"] + s["state_bytes"]
    assert s["extra_bytes"] > 0 and s["rewinds"] == 0
    tl.goto(end - 50, drv.step)
    assert tl.stats()["rewinds"] == 1
    m.fmt.close()
    m.hostfile.close()


def test_article_in_write_mode_back_to_the_original_file(tmp_path):
    path = str(tmp_path / "article.qcow2")
    shutil.copyfile(ARTICLE, path)
    original = on_disk(path)
    m = build(path, ARTICLE_WL, mode="write", ram_size=8 * MiB)
    drv = Driver(m)
    tl = Timeline(m, interval=64, max_checkpoints=3, extra=drv.extra)
    while drv.step() is not None:
        tl.after_step()
    end = m.steps
    assert drv.closed and on_disk(path) != original
    tl.goto(0, drv.step)
    assert on_disk(path) == original
    assert os.path.getsize(path) == os.path.getsize(ARTICLE)
    while drv.step() is not None:                 # and forward again to the same end
        tl.after_step()
    assert m.steps == end
    ref = Reference(ARTICLE, ARTICLE_WL, {"ram_size": 8 * MiB})
    try:
        assert_same(snapshot(m), ref.at(end))
        assert on_disk(path) == ref.at(end)["file"]
    finally:
        ref.close()
        m.fmt.close()
        m.hostfile.close()


def test_failures_are_clear(image):
    m = build(image, "write 0 4k\nwait\n", ram_size=RAM)
    drv = Driver(m)
    tl = Timeline(m, interval=1000, extra=drv.extra)
    drv.run(6, tl)
    m.scratch = lambda: 0                        # an attribute nothing can copy
    with pytest.raises(TypeError, match="'scratch'"):
        tl.checkpoint()
    del m.scratch
    assert tl.steps == [0] and m.mem.undo is not None    # the open interval goes on

    def full(*_a):
        raise OSError(28, "No space left on device")
    m.hostfile.restore_blocks = full
    with pytest.raises(OSError):
        tl.rewind(3)
    with pytest.raises(RuntimeError, match="No space left"):
        tl.rewind(2)                             # half restored: refuses rather than lies
    del m.hostfile.restore_blocks
    m.hostfile.close()


def test_a_poke_that_breaks_the_device_ends_the_run_sooner_and_rewinds(images):
    """Found by CI: a byte poked into the descriptor table at step 31 makes the device give
    up, so the poked run is shorter than the plain one; going back still matches."""
    wl, cfg = "write 0 512\n", {"ram_size": RAM}
    plain = Reference(images["qcow2"], wl, cfg)
    poked = Reference(images["qcow2"], wl, cfg, {31: [(0x10000, b"\x01")]})
    try:
        m = plain.fresh()
        drv = Driver(m)
        tl = Timeline(m, 1, 2, extra=drv.extra)
        drv.run(31, tl)
        m.poke(0x10000, b"\x01")
        after = poked.total()
        drv.run(after - 31, tl)
        assert drv.step() is None                # the poked run ends at its own end
        tl.goto(12, drv.step)
        assert_same(snapshot(m), plain.at(12))
    finally:
        poked.close()
        plain.close()


@pytest.mark.parametrize("op", ["write", "read"])
def test_a_checkpoint_does_not_copy_the_workload_or_its_finished_results(tmp_path, op):
    """The workload's ops never change and results (and reads, the read ops' digests) only
    grow: a checkpoint refers to the first and keeps the lengths of the others, so it costs
    the same early and late in a long run (copying them made `continue` quadratic in the
    number of requests)."""
    import pickle
    import zlib

    def wl(n):
        return "".join(f"{op} {(i * 7919) % 2000 * 512} 512\n" for i in range(n))

    def run(n):
        m = build(make_image(tmp_path / f"d{n}.raw", DISK), wl(n))
        tl = Timeline(m, interval=2000)
        while m.step() is not None:
            tl.after_step()
        assert len(m.guest.proc.results) == n
        return m, tl, tl.checkpoint()         # idle, every op finished

    short, _, cp_short = run(60)
    m, tl, cp_long = run(600)
    p = m.guest.proc
    ops = len(zlib.compress(pickle.dumps(p.ops), 1))
    results = len(zlib.compress(pickle.dumps((p.results, p.reads)), 1))
    assert len(p.reads) == (600 if op == "read" else 0)
    assert len(tl.checkpoints[0].state) < ops                 # the ops are not in a checkpoint
    assert abs(len(cp_long.state) - len(cp_short.state)) < results // 4     # nor the results
    # and a checkpoint taken midway still gives back the results as they were then
    mid = tl.checkpoints[len(tl.checkpoints) // 2]
    ref = build(make_image(tmp_path / "e.raw", DISK), wl(600))
    for _ in range(mid.step):
        ref.step()
    tl.rewind(mid.step)
    assert 0 < len(ref.guest.proc.results) < 600
    assert m.guest.proc.results == ref.guest.proc.results and m.guest.proc.ops == ref.guest.proc.ops
    assert m.guest.proc.reads == ref.guest.proc.reads
    assert m.digest() == ref.digest()


def _pickled_size(n: int) -> int:
    import pickle
    return len(pickle.dumps({"data": bytes(n), "n": n}, pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("delta", [-1, 0, 1, None])
def test_state_pickles_up_to_raw_max_are_kept_uncompressed(delta):
    """_Freezer keeps a pickle of at most RAW_MAX bytes as it is and compresses a bigger
    one; loads tells them apart and gives back an equal object either way."""
    import pickle
    import zlib

    from emu.debug.timeline import RAW_MAX, _Freezer
    if delta is None:
        n = 0                                           # a tiny pickle
    else:                                               # one of RAW_MAX + delta bytes
        n = RAW_MAX + delta
        while _pickled_size(n) > RAW_MAX + delta:
            n -= 1
        assert _pickled_size(n) == RAW_MAX + delta
    obj = {"data": bytes(n), "n": n}
    raw = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    fr = _Freezer()
    blob = fr.dumps(obj)
    if len(raw) <= RAW_MAX:
        assert blob == raw
    else:
        assert zlib.decompress(blob) == raw and len(blob) < len(raw) // 10
    back = fr.loads(blob)
    assert back == obj and back is not obj


def test_proxy_queues_edited_in_place_come_back_at_any_index(image):
    """A checkpoint stores only the proxy queues that differ from an idle one: registers
    edited between steps (in place, as common_write does), the last queue included, come
    back on a rewind to that checkpoint, and a rewind further back makes them idle again."""
    from emu.device import virtio as VD
    from emu.transport.virtio_pci import ProxyQueue
    m = build(image, "write 0 4k\nwait\n", ram_size=RAM)
    tl = Timeline(m, interval=1000)
    Driver(m).run(5)
    vqs = m.transport.proxy.vqs
    before = [dict(vars(q), desc=list(q.desc), avail=list(q.avail), used=list(q.used))
              for q in vqs]
    last = VD.VQ_MAX - 1
    vqs[last].desc[1] = 0x1234              # in place, as common_write does
    vqs[64].used[:] = [7, 0]
    vqs[63].num = 16
    tl.note_external_write()
    edited = m.digest()
    vqs[last].desc[1] = 0
    vqs[64].used[0] = 0
    vqs[63].num = 0
    assert tl.rewind(m.steps) == 5
    vqs = m.transport.proxy.vqs
    assert (vqs[last].desc, vqs[64].used, vqs[63].num) == ([0, 0x1234], [7, 0], 16)
    assert m.digest() == edited
    tl.rewind(0)
    Driver(m).run(5)
    vqs = m.transport.proxy.vqs
    assert [vars(q) for q in vqs] == before
    assert vqs[last] == ProxyQueue() and vqs[last] is not vqs[last - 1]


def test_qcow2_tables_as_read_at_open_are_shared_not_copied(tmp_path):
    """qcow2_do_open's L1 and refcount tables (8192 entries at the least) never change after
    open: checkpoints refer to them.  The engine's own tables, which do change, are copied."""
    from emu.block.qcow2.image import FrozenTable
    path = str(tmp_path / "d.qcow2")
    create_qcow2(path, 64 * MiB)
    m = build(path, "".join(f"write {i * 65536 * 3} 4k\n" for i in range(40)))
    meta, eng = m.fmt.meta, m.fmt.engine
    assert type(meta.refcount_table) is FrozenTable and len(meta.refcount_table) == 8192
    with pytest.raises(TypeError):
        meta.refcount_table[0] = 0                      # immutable
    tl = Timeline(m, interval=50)
    while m.step() is not None:
        tl.after_step()
    assert eng.l1_table != list(meta.l1_table)        # the engine's copy moved on
    cp = tl.checkpoints[1]
    state = tl._freezer.loads(cp.state)
    assert state["fmt"].meta.refcount_table is meta.refcount_table
    assert state["fmt"].meta.l1_table is meta.l1_table
    assert state["fmt"].engine.l1_table is not eng.l1_table       # copied
    # going back restores the engine's tables and keeps the shared ones
    ref = build(path, "".join(f"write {i * 65536 * 3} 4k\n" for i in range(40)))
    for _ in range(cp.step):
        ref.step()
    tl.rewind(cp.step)
    assert m.fmt.meta.refcount_table is meta.refcount_table
    assert m.fmt.engine.l1_table == ref.fmt.engine.l1_table
    assert m.fmt.engine.refcount_table == ref.fmt.engine.refcount_table
    assert m.digest() == ref.digest()


@pytest.mark.parametrize("engine", ["py", "fast"])
def test_a_rewind_across_new_refcount_blocks_gives_the_older_refcount_table_back(tmp_path, engine):
    """The engine's refcount table is immutable too: a new refcount block replaces it with a
    new table (FrozenTable.with_entry), so the table a checkpoint refers to stays as it was.
    512-byte clusters and 64-bit refcounts: a refcount block covers 64 clusters."""
    from emu import engine as E
    from emu.block.qcow2.image import FrozenTable
    if engine == "fast":
        import emu_fast
        emu_fast.require()
    path = str(tmp_path / "r.qcow2")
    create_qcow2(path, 4 * MiB, cluster_size=512, refcount_bits=64)
    wl = "".join(f"write {i * 8192} 4k\n" for i in range(60))
    m = build(path, wl)
    tl = Timeline(m, interval=40)
    E.set_engine(m, engine)
    tables = {0: m.fmt.engine.refcount_table}
    while m.step() is not None:
        tl.after_step()
        t = m.fmt.engine.refcount_table
        if t is not tables[max(tables)]:
            tables[m.steps] = t
    E.set_engine(m, "py")
    assert len(tables) >= 4, "the workload should allocate several refcount blocks"
    assert all(type(t) is FrozenTable for t in tables.values())
    firsts = sorted(tables)
    assert all(sum(map(bool, tables[a])) < sum(map(bool, tables[b]))
               for a, b in zip(firsts, firsts[1:]))         # each change is a new table
    for cp in tl.checkpoints[::-3]:                 # latest first: rewind only goes back
        want = tables[max(s for s in firsts if s <= cp.step)]
        tl.rewind(cp.step)
        assert m.fmt.engine.refcount_table is want
        ref = build(path, wl)
        for _ in range(cp.step):
            ref.step()
        assert m.fmt.engine.refcount_table == ref.fmt.engine.refcount_table
        assert m.digest() == ref.digest()


def test_frozen_table_with_entry():
    from emu.block.qcow2.image import FrozenTable
    t = FrozenTable([0, 5, 0])
    u = t.with_entry(2, 7)
    assert type(u) is FrozenTable and u == (0, 5, 7) and t == (0, 5, 0)
    assert t.with_entry(-1, 1) == (0, 5, 1)
    with pytest.raises(IndexError):
        t.with_entry(3, 1)
