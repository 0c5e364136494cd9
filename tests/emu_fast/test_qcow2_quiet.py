"""qcow2's quiet compute steps (emu_fast/_qcow2.pyx bulk_compute: _fast_alloc, _fast_in_place, the
native L2 link, the plan items, pieces and metas made from dict templates, their strings written
in C, the skipped stores of equal objects) against the Python engine, deeper than the digest.

The digest covers the driver's requests and the engine's state(); these tests also compare what
state() leaves out and what a checkpoint's pickle keeps: the engine's file_size, discards, plan
and pending writes, both caches' fields (LRU counters, dirty marks, dependencies), and the order
of the keys of every plan item, piece and meta, at the end of runs of a few steps (the bulk core
runs all but the last step of each run).  On the fast machine the dicts that hold containers must
be tracked by the garbage collector, and the request's plan must not be the engine's list.
"""
from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu import engine
from tests.emu_fast.test_bulk_qcow2 import DISK, _image, _machine, _mods, _qcow2, pytestmark  # noqa: F401
from tests.emu_fast.test_differential import SETTINGS, snapshot



def _ordered(v):
    """v as plain data that keeps the order of dict keys and the types of sequences"""
    if isinstance(v, dict):
        return ("dict", [(k, _ordered(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_ordered(x) for x in v])
    if isinstance(v, (bytes, bytearray)):
        return (type(v).__name__, bytes(v))
    return (type(v).__name__, v)


_ENG_FIELDS = ("file_size", "free_cluster_index", "discards", "cache_discards", "plan", "pending",
               "l1_table", "incompatible_features", "corrupt")


def _deep(m) -> dict:
    """The engine's and the requests' state beyond the digest"""
    e = m.fmt.engine
    out = {k: _ordered(getattr(e, k)) for k in _ENG_FIELDS}
    for name in ("l2_cache", "rb_cache"):
        out[name] = {k: _ordered(v) for k, v in vars(getattr(e, name)).items()}
    out["cos"] = {bid: {k: _ordered(v) for k, v in co.items()} for bid, co in m.fmt.cos.items()}
    return out


def _objects_ok(m) -> None:
    """The fast machine's request dicts: containers' holders tracked, plans not shared"""
    e = m.fmt.engine
    for co in m.fmt.cos.values():
        if "plan" in co:
            assert co["plan"] is not e.plan
        for d in list(co.get("plan") or ()) + list(co.get("pieces") or ()):
            if any(isinstance(v, (list, dict, tuple)) for v in d.values()):
                assert gc.is_tracked(d), d
            for mt in d.get("metas", ()) if isinstance(d.get("metas"), list) else ():
                assert gc.is_tracked(mt), mt


def _lockstep(a, b, runs) -> None:
    """a on the Python engine, b on the fast one, in runs of the given lengths, then to the end"""
    for k in runs:
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        assert ra == rb
        assert snapshot(a) == snapshot(b), a.steps
        assert _deep(a) == _deep(b), a.steps
        _objects_ok(b)
    assert engine.run(a, "py") == engine.run(b, "fast")
    assert snapshot(a) == snapshot(b)
    assert _deep(a) == _deep(b)
    _objects_ok(b)


@st.composite
def _line(draw) -> str:
    k = draw(st.sampled_from(["write"] * 7 + ["read"] * 2 + ["flush"]))
    if k == "flush":
        return k
    n = draw(st.sampled_from([4096, 4096, 4096, 8192, 65536, 512, 12288]))
    off = draw(st.integers(0, (DISK - n) // 512)) * 512
    if draw(st.booleans()):
        off = off // 4096 * 4096
    if draw(st.integers(0, 3)) == 0:        # (again where an earlier request wrote: in place)
        off = draw(st.sampled_from([0, 4096, 65536, 1 << 20]))
    return f"{k} {off} {n}" + (f" fill={draw(st.integers(1, 255)):#x}" if k == "write" else "")


_wls = st.tuples(st.sampled_from([1, 1, 2, 4]), st.lists(_line(), min_size=2, max_size=14)).map(
    lambda t: f"queue-depth {t[0]}\n" + "\n".join(t[1]) + "\n")


@settings(**{**SETTINGS, "max_examples": 12})
@given(cs=st.sampled_from([4096, 65536]), bits=st.sampled_from([16, 16, 1, 8, 64]), lazy=st.booleans(),
       wl=_wls, runs=st.lists(st.integers(2, 16), min_size=4, max_size=12))
def test_quiet_compute_leaves_the_python_engines_objects(tmp_path_factory, cs, bits, lazy, wl, runs):
    """Random write-heavy workloads, compared after runs of 2-16 steps: the engine's fields and
    the order of every plan item's, piece's and meta's keys too."""
    tmp = tmp_path_factory.mktemp("quietq")
    path = _image(tmp, cs, bits, lazy, 3)
    _lockstep(_machine(path, wl, None, None, {}), _machine(path, wl, None, None, {}), runs)


WL = """queue-depth 1
write 0 4096 fill=0x11
write 4096 4096 fill=0x12
write 1048576 65536 fill=0x13
write 2101248 8192 fill=0x14
write 0 4096 fill=0x15
write 1048576 4096 fill=0x16
write 3145728 512 fill=0x17
read 0 8192
write 3145728 4096 fill=0x18
write 5242880 4096
write 4608 4096 fill=0x19
"""


@pytest.mark.parametrize("cs", [4096, 65536])
def test_quiet_compute_runs_natively(tmp_path, cs):
    """Both native write paths run (new clusters with their zeroed COW areas, clusters written
    in place), every compute step runs quiet in the core, and what they leave agrees with the
    Python engine after runs of 7 and 11 steps."""
    _bulk, blk = _mods()
    path = _image(tmp_path, cs, 16, False, 3)
    a = _machine(path, WL, None, None, {})
    b = _machine(path, WL, None, None, {})
    blk.reset_counts()
    _qcow2.fast_allocs(True)
    _lockstep(a, b, [7, 11] * 30)
    assert _qcow2.fast_allocs() >= 3
    assert _qcow2.fast_allocs(in_place=True) >= 1
    assert blk.counts(quiet=True).get("qcow2.compute", 0) >= 10
    assert not blk.counts(wrapped=True).get("qcow2.compute"), blk.counts(wrapped=True)


def test_quiet_compute_with_held_plans_and_discards(tmp_path):
    """A plan or discard list that someone else holds is replaced by a new list, as the Python
    engine does (only a lone empty list may stay)."""
    path = _image(tmp_path, 65536, 16, False, 3)
    a = _machine(path, WL, None, None, {})
    b = _machine(path, WL, None, None, {})
    held = []
    for k in [3] * 60:
        ra, rb = engine.run(a, "py", k), engine.run(b, "fast", k)
        held.append((b.fmt.engine.plan, b.fmt.engine.discards))     # (a second reference)
        assert ra == rb
        assert _deep(a) == _deep(b), a.steps
        _objects_ok(b)
        assert all(not plan and not disc for plan, disc in held)      # (nobody wrote into them)
        if ra != "steps":
            break
    assert snapshot(a) == snapshot(b)


def test_dict_templates_make_the_dict_literals():
    """The plan items, pieces and metas made from templates are their dict literals: the same
    keys in the same order, the same values (each referred to once more, and once less when
    the dict goes), tracked by the garbage collector; on CPython 3.11 filled in place."""
    import sys
    x = object()
    base = sys.getrefcount(x)
    made, literals = _qcow2.dict_templates((x, 1, [2], None, (3,), b"4", x, {}))
    for d, lit in zip(made, literals):
        assert list(d.items()) == list(lit.items())
        assert gc.is_tracked(d)
    del made, literals, d, lit
    assert sys.getrefcount(x) == base
    if sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11):
        assert _qcow2.dict_templates(native=True)


def test_dict_templates_track_and_size_as_the_literals():
    """A template's dict of atomic values is untracked, as its literal is (a container among
    the values: tracked); its table has the literal's size, its keys are referred to once more
    while it lives, and it grows as any dict does"""
    import sys
    keys = [k for d in _qcow2.dict_templates()[1] for k in d]

    def cycle() -> list:
        """make, check, grow and drop the dicts; the keys' counts that moved (key, before, after)"""
        base = [sys.getrefcount(k) for k in keys]
        made, literals = _qcow2.dict_templates(("a", 1, 2, None, (3,), b"4", 5.0, 6))
        for d, lit in zip(made, literals):
            assert list(d.items()) == list(lit.items())
            assert gc.is_tracked(d) == gc.is_tracked(lit) == False      # noqa: E712
            assert sys.getsizeof(d) == sys.getsizeof(lit)
        made2, literals2 = _qcow2.dict_templates(("a", 1, 2, None, ([],), b"4", 5.0, 6))
        for d, lit in zip(made2, literals2):                     # (a tracked tuple: every one)
            assert gc.is_tracked(d) and gc.is_tracked(lit)
        del made2, literals2, d, lit
        assert [sys.getrefcount(k) for k in keys] != base           # (made's keys: held)
        for d in made:
            for i in range(20):
                d[f"k{i}"] = i
            assert list(d)[-1] == "k19" and d["k7"] == 7
        del made, literals, d
        after = [sys.getrefcount(k) for k in keys]
        return [(k, b, a) for k, b, a in zip(keys, base, after) if a != b]

    # The keys are common strings the whole process shares, so something else (a collection of
    # earlier tests' garbage, a thread they left) may move a count while one cycle runs; a
    # count this code gets wrong moves in every cycle.
    gc.collect()
    moved = [cycle() for _ in range(5)]
    assert [] in moved, moved
