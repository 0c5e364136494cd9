"""emu_fast/_qcow2.pyx's hinted dict stores (vbq_hset through VBQ_HS): during a quiet compute
step (bulk_compute) a store of a key that the dict already holds, at the entry where that call
site found it last time, puts the value in place as insertdict does (the garbage collector's
tracking, the old value's reference, a new version tag when the value is another object), the
tag drawn once per step from CPython's counter; anything else goes through PyDict_SetItem.
hinted_sets is one such call site.  The bulk core's handlers keep values read from a dict while
its version tag stays, so the tests check that every change moves the tag past every tag the dict
had before, and that Python code reads the new values (the interpreter's specialized attribute
reads included)."""
from __future__ import annotations

import gc
import os
import sys

from emu import engine

# (skipped, as test_bulk_qcow2, when the bulk core's block layer is not compiled)
from tests.emu_fast.test_bulk_qcow2 import _qcow2, pytestmark  # noqa: F401

CPY311 = sys.version_info[:2] == (3, 11) and sys.implementation.name == "cpython"


def _store(d, key, v, step=True):
    """d[key] = v at the site, primed first (d[key] = d[key] there: the site's hint points at
    key's entry, nothing changes); -> (d's tag after, whether the store went in place)"""
    _qcow2.hinted_sets([(d, key, d[key])], step)                    # (prime the hint)
    _, inplace0, _ = _qcow2.hinted_sets([], step)
    tags, inplace1, _ = _qcow2.hinted_sets([(d, key, v)], step)
    return tags[0], inplace1 - inplace0 == 1


def test_a_store_in_a_step_changes_the_value_in_place_and_moves_the_tag():
    d = {"a": 1, "b": 2, "c": 3}
    before = _qcow2.dict_version(d)
    tag, inplace = _store(d, "b", 20)
    assert d == {"a": 1, "b": 20, "c": 3} and list(d) == ["a", "b", "c"]
    assert inplace == CPY311
    if CPY311:
        assert tag == _qcow2.dict_version(d) and tag > before
        d["a"] = 10                                         # (CPython's next tag: later still)
        assert _qcow2.dict_version(d) > tag


def test_the_same_object_again_keeps_the_tag():
    """As insertdict: storing the value a key already holds changes nothing, the tag included"""
    v = [1]
    d = {"a": 0, "b": v}
    before = _qcow2.dict_version(d)
    tag, inplace = _store(d, "b", v)
    assert d["b"] is v
    if CPY311:
        assert inplace and tag == before
        e = {"a": 0, "b": v}
        t = _qcow2.dict_version(e)
        e["b"] = v
        assert _qcow2.dict_version(e) == t                  # (CPython's own rule)


def test_one_tag_per_step_newer_than_every_earlier_one():
    """Dicts stored into in one step take that step's tag, newer than each one's earlier tags;
    the next step draws a newer one"""
    d1, d2 = {"x": 1, "y": 2}, {"x": 3, "y": 4}
    _qcow2.hinted_sets([({"x": 0, "y": 0}, "y", 1)])                # (prime: "y" at entry 1)
    b1, b2 = _qcow2.dict_version(d1), _qcow2.dict_version(d2)
    tags, _, _ = _qcow2.hinted_sets([(d1, "y", 20), (d2, "y", 40), (d1, "y", 21)])
    assert d1 == {"x": 1, "y": 21} and d2 == {"x": 3, "y": 40}
    if CPY311:
        assert tags[0] == tags[1] == tags[2] and tags[0] > max(b1, b2)
        tags2, _, _ = _qcow2.hinted_sets([(d1, "y", 22)])
        assert tags2[0] > tags[0]
        d2["x"] = 5
        assert _qcow2.dict_version(d2) > tags2[0]


def test_outside_a_step_every_store_is_pydict_setitem():
    d = {"a": 1, "b": 2}
    before = _qcow2.dict_version(d)
    tag, inplace = _store(d, "b", 3, step=False)
    assert d == {"a": 1, "b": 3} and not inplace
    if CPY311:
        assert tag > before


def test_a_missing_key_is_added_at_the_end():
    d = {"a": 1, "b": 2}
    _qcow2.hinted_sets([({"a": 1, "b": 2, "c": 3}, "c", 0)])        # (hint: entry 2)
    tags, _, _ = _qcow2.hinted_sets([(d, "c", 3)])
    assert list(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    del d["a"]
    _qcow2.hinted_sets([(d, "a", 4)])                               # (entry 0 is a deleted one)
    assert list(d.items()) == [("b", 2), ("c", 3), ("a", 4)]


def test_the_hint_to_another_key_is_not_taken():
    _qcow2.hinted_sets([({"a": 1, "b": 2}, "b", 0)])                # (hint: entry 1)
    d = {"b": 1, "a": 2}
    _qcow2.hinted_sets([(d, "b", 10)])
    assert d == {"b": 10, "a": 2}
    e = {"b": 1}
    _qcow2.hinted_sets([({"a": 1, "b": 2}, "b", 0)])
    _qcow2.hinted_sets([(e, "b", 11)])                              # (a table shorter than the hint)
    assert e == {"b": 11}


def test_a_general_table():
    d = {0: None, "a": 1, "b": 2}
    del d[0]                                                        # (keys: a general table)
    tag, inplace = _store(d, "b", 3)
    assert d == {"a": 1, "b": 3} and inplace == CPY311


class _Obj:
    pass


def _read_b(o, n=64):
    """o.b, read n times by code the interpreter specializes"""
    v = None
    for _ in range(n):
        v = o.b
    return v


def test_an_instances_split_dict_and_its_specialized_reads():
    """An instance's __dict__ (a split table, its values where the interpreter's specialized
    attribute reads look): the store is what o.b reads next, in a second instance nothing moves"""
    x, y = _Obj(), _Obj()
    x.a, x.b = 1, 2
    y.a, y.b = 3, 4
    assert _read_b(x) == 2 and _read_b(y) == 4
    before = _qcow2.dict_version(vars(x))
    _qcow2.hinted_sets([(vars(_Obj()) | {"a": 0, "b": 0}, "b", 0)])   # (any dict: hint at 1)
    _qcow2.hinted_sets([(vars(y), "b", 40)])
    tags, _, _ = _qcow2.hinted_sets([(vars(x), "b", 20)])
    assert _read_b(x) == 20 and x.b == 20 and vars(x) == {"a": 1, "b": 20}
    assert _read_b(y) == 40 and y.a == 3
    if CPY311:
        assert tags[0] > before
    z = _Obj()
    z.a = 5                                                         # (no "b" in z's values)
    _qcow2.hinted_sets([(vars(z), "b", 6)])
    assert vars(z) == {"a": 5, "b": 6} and _read_b(z) == 6


def test_the_garbage_collector_tracks_a_dict_given_a_container():
    """MAINTAIN_TRACKING: a dict of atomic values is untracked until a container goes in"""
    d = {"a": 1, "b": 2}
    assert not gc.is_tracked(d)
    _store(d, "b", 3)
    assert not gc.is_tracked(d)
    _store(d, "b", (1, 2))                      # (a tuple of atoms: untracked itself)
    assert not gc.is_tracked(d) or not CPY311
    _store(d, "b", [])
    assert gc.is_tracked(d)


def test_the_bulk_cores_stores_go_in_place(tmp_path):
    """The qcow2 compute steps of a few hundred random 4 KiB writes store their fields at hinted
    sites, nearly all in place (a miss per site and dict layout, and the keys a request adds)"""
    from emu_fast import bench
    img = bench.make_image(os.path.join(tmp_path, "i.qcow2"), "qcow2")
    m = bench._machine(img, bench.workload("rand4k", 60))
    engine.run(m, "fast")
    m = bench._machine(bench.make_image(os.path.join(tmp_path, "j.qcow2"), "qcow2"),
                       bench.workload("rand4k", 300))
    _, inplace0, misses0 = _qcow2.hinted_sets([])
    engine.run(m, "fast")
    _, inplace1, misses1 = _qcow2.hinted_sets([])
    if CPY311:
        assert inplace1 - inplace0 > 300 * 10, inplace1 - inplace0     # (~14 a request)
        assert misses1 - misses0 < 300 * 2, misses1 - misses0


def test_hex_text():
    """_phexll (the plan items' texts) writes format(v, '#x')"""
    for v in (0, 1, 9, 10, 15, 16, 0xff, 0x100, 0x7fff_ffff_ffff_ffff, -1, -16, -(1 << 63),
              0x1234_5000, 0xfff_ffff_ffff_ffff, 1 << 60):
        assert _qcow2.hex_text(v) == format(v, "#x"), v
    for k in range(64):
        for v in ((1 << k) - 1, 1 << k, (1 << k) + 1):
            if v < 1 << 63:
                assert _qcow2.hex_text(v) == format(v, "#x"), v
