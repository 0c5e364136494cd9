"""emu_fast/_qcow2.pyx's hinted dict reads (vbq_hget through VBQ_H): each call site remembers
the index of the entry where it last found its key and looks there first, checking that the
entry is that key with a value, else it asks the dict.  hinted_get is one such call site: the
tests hand it dicts whose tables put the key elsewhere, lack it, or are shorter, and a run of
the bulk core checks that its sites mostly hit (a count, no timing)."""
from __future__ import annotations

import os

import pytest

from emu import engine

# (skipped, as test_bulk_qcow2, when the bulk core's block layer is not compiled)
from tests.emu_fast.test_bulk_qcow2 import _qcow2, pytestmark  # noqa: F401


def _get(d, key, default=None):
    return _qcow2.hinted_get(d, key, default)[0]


def _misses() -> int:
    return _qcow2.hinted_get({}, "x")[1]


def _general(**kw) -> dict:
    """A dict of these str keys whose table is a general one (as a non-str key leaves it)"""
    d = {0: None}
    d.update(kw)
    del d[0]
    return d


@pytest.mark.parametrize("make", [lambda **kw: dict(kw), _general], ids=["str-keys", "general"])
def test_a_hint_to_another_key_is_not_taken(make):
    """The site's hint (where "b" was in the last dict) names another key's entry, or a deleted
    one, or none at all, in the next dicts: each answers its own value."""
    assert _get(make(a=1, b=2), "b") == 2                   # (hint: entry 1)
    assert _get(make(b=3, a=4), "b") == 3                   # (entry 1 is "a")
    assert _get(make(a=5, b=6, c=7), "b") == 6
    d = make(a=8, b=9)
    del d["b"]
    assert _get(d, "b", "gone") == "gone"                   # (entry 1: deleted)
    d["b"] = 10
    assert _get(d, "b") == 10                               # (now entry 2)
    assert _get(make(a=11, c=12, b=13), "b") == 13
    assert _get(make(b=14), "b") == 14                      # (a table shorter than the hint)
    assert _get(make(), "b", "none") == "none"
    assert _get(make(a=15, c=16, d=17), "b", "none") == "none"   # (entry 2 is "d")


class _Obj:
    pass


def test_split_dicts_of_one_class():
    """Instances' dicts share one table of keys and keep their own values: each answers its
    own, and a key that this instance lacks (its value missing) is absent."""
    x, y, z = _Obj(), _Obj(), _Obj()
    x.a, x.b = 1, 2
    y.a, y.b = 3, 4
    z.a = 5
    assert _get(vars(x), "b") == 2
    assert _get(vars(y), "b") == 4
    assert _get(vars(z), "b", "none") == "none"
    assert _get(vars(x), "a") == 1 and _get(vars(y), "a") == 3 and _get(vars(z), "a") == 5
    assert _get({"b": 6}, "b") == 6                         # (a combined table after a split one)
    assert _get(vars(y), "b") == 4


def test_keys_that_are_equal_but_not_the_same_object():
    """A key equal to the hinted entry's key but another object is still found (the dict's own
    lookup compares strings)."""
    k = "".join(["b", "b"])
    d = {k: 1}
    assert _get(d, "bb") == 1
    assert _get({"bb": 2}, "".join(["b", "b"])) == 2


def test_the_bulk_cores_sites_hit_their_hints(tmp_path):
    """The qcow2 compute steps of a few hundred random 4 KiB writes read their fields at hinted
    sites; nearly every read hits (a miss per site and dict layout, not per request)."""
    from emu_fast import bench
    img = bench.make_image(os.path.join(tmp_path, "i.qcow2"), "qcow2")
    m = bench._machine(img, bench.workload("rand4k", 60))
    engine.run(m, "fast")
    m = bench._machine(bench.make_image(os.path.join(tmp_path, "j.qcow2"), "qcow2"),
                       bench.workload("rand4k", 300))
    before = _misses()
    engine.run(m, "fast")
    assert m.fmt.engine.plan == []
    assert _misses() - before < 30, _misses() - before      # (300 requests, ~70 reads each)
