"""emu_fast._support: the services compiled handlers call (allocator, RNG, latency, faults,
MSI-X, notify writes, blk_aio_submit) against the Python code they translate."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.block import file_posix as FP
from emu.block.latency import LatencyModel
from emu.mem.page_alloc import PageAllocator
from tests.emu_fast.test_differential import machine, run_with

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

if emu_fast.available():
    from emu_fast import _support as S

ops = st.lists(st.one_of(
    st.tuples(st.just("kmalloc"), st.sampled_from([1, 8, 9, 64, 100, 512, 4096, 4097, 9000, 20000, 0])),
    st.tuples(st.just("alloc_pages"), st.integers(1, 5)),
    st.tuples(st.just("kfree"), st.integers(0, 40)),
    st.tuples(st.just("free_pages"), st.integers(0, 40))), max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops=ops, pages=st.integers(4, 24))
def test_allocator_matches_python(ops, pages):
    a = PageAllocator(4096, pages * 4096)
    b = copy.deepcopy(a)
    live_a, live_b = [], []        # what each has handed out, to free by index
    for op, arg in ops:
        if op in ("kmalloc", "alloc_pages"):
            ra = getattr(a, op)(arg)
            rb = getattr(S, op)(b, arg)
            assert ra == rb
            if ra is not None:
                live_a.append((op, ra))
                live_b.append((op, rb))
        else:
            if not live_a:
                continue
            i = arg % len(live_a)
            kind, gpa = live_a.pop(i)
            live_b.pop(i)
            if op == "free_pages" and kind != "alloc_pages":
                continue              # (freeing a slab object as pages is a caller bug)
            getattr(a, op)(gpa)
            getattr(S, op)(b, gpa)
        assert a.state() == b.state()


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(["read", "write", "flush", "discard", "write_zeroes"]),
       nbytes=st.integers(0, 1 << 22), noise=st.integers(0, (1 << 64) - 1),
       jitter=st.integers(0, 100), base=st.integers(1, 10**6))
def test_latency_cost_matches_python(op, nbytes, noise, jitter, base):
    lat = LatencyModel(read_ns=base, write_ns=base + 7, jitter_pct=jitter)
    assert S.cost(lat, op, nbytes, noise) == lat.cost(op, nbytes, noise)


def test_latency_cost_unknown_op_is_the_same_error():
    with pytest.raises(KeyError):
        S.cost(LatencyModel(), "trim", 0, 0)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, (1 << 64) - 1))
def test_rand_matches_python(tmp_path_factory, seed):
    a = machine(tmp_path_factory.mktemp("r"), "raw", "", "write 0 4096\n", {"seed": seed})
    b = machine(tmp_path_factory.mktemp("r"), "raw", "", "write 0 4096\n", {"seed": seed})
    for _ in range(5):
        assert S.rand(a) == b.rand()
        assert a.rng == b.rng


rules = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["read", "write", "flush"]), "start": st.integers(0, 1 << 20),
    "end": st.integers(0, 1 << 21), "errno": st.sampled_from([5, 28]),
    "count": st.sampled_from([-1, 0, 1, 2])}), max_size=4)


@settings(max_examples=200, deadline=None)
@given(rs=rules, calls=st.lists(st.tuples(st.sampled_from(["read", "write", "flush"]),
                                          st.integers(0, 1 << 21), st.integers(1, 1 << 16)), max_size=8))
def test_fault_rules_match_python(tmp_path_factory, rs, calls):
    a = machine(tmp_path_factory.mktemp("f"), "raw", "", "write 0 4096\n", {})
    b = machine(tmp_path_factory.mktemp("f"), "raw", "", "write 0 4096\n", {})
    a.block.faults = copy.deepcopy(rs)
    b.block.faults = copy.deepcopy(rs)
    for op, off, n in calls:
        assert S.fault(a, op, off, n) == FP._fault(b, op, off, n)
        assert a.block.faults == b.block.faults


def test_replaced_python_code_is_used(tmp_path, monkeypatch):
    """A replaced method (class or instance) runs instead of the translation."""
    monkeypatch.setattr(LatencyModel, "cost", lambda self, op, n, noise: 12345)
    assert S.cost(LatencyModel(), "write", 4096, 0) == 12345
    pa = PageAllocator(4096, 16 * 4096)
    pa.kmalloc = lambda size: None
    assert S.kmalloc(pa, 64) is None
    pb = PageAllocator(4096, 16 * 4096)
    pb.alloc_pages = lambda n: None          # kmalloc's slab refill goes through it
    assert S.kmalloc(pb, 64) is None
    m = machine(tmp_path, "raw", "", "write 0 4096\n", {})
    monkeypatch.setattr(FP, "_fault", lambda m, op, off, n: 99)
    assert S.fault(m, "write", 0, 1) == 99


def test_a_run_with_a_patched_latency_model_matches(tmp_path, monkeypatch):
    """Both engines see the replaced LatencyModel.cost (timing changes the interleaving)."""
    monkeypatch.setattr(LatencyModel, "cost", lambda self, op, n, noise: 1 + noise % 997)
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4096\n" for i in range(12)) + "wait\n"
    a = machine(tmp_path, "raw", "", wl, {})
    b = machine(tmp_path, "raw", "", wl, {})
    ra, rb = [], []
    assert run_with(a, "py", ra) == run_with(b, "fast", rb)
    assert [(r.time_ns, r.kind, r.detail) for r in ra] == [(r.time_ns, r.kind, r.detail) for r in rb]
