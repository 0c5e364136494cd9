"""emu_fast._support.proxy_touched / reduce_proxy: the compiled idle-queue scan checkpoints of the
fast engine's session loop use, against emu.transport.virtio_pci (the same indices, the same
pickle bytes), and session_run installing it for its own checkpoints only."""
from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.device import virtio as VD
from emu.transport import virtio_pci as VP
from tests.emu.transport.test_virtio_pci_state import EDITS, index

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

if emu_fast.available():
    from emu_fast import _support as S


class Zero(int):
    """An int equal to 0 that is not the cached small int."""


# values equal to an idle field's without being the cached small int 0: the scan must compare
# those the slow way (and call them idle), and tell apart the ones that differ
ODD = {
    "false": lambda q: setattr(q, "enabled", False),
    "float": lambda q: setattr(q, "num", 0.0),
    "zero_sub": lambda q: setattr(q, "reset", Zero(0)),
    "big_zero": lambda q: setattr(q, "num", int("0" * 30)),
    "list_false": lambda q: q.desc.__setitem__(1, False),
    "tuple": lambda q: setattr(q, "avail", (0, 0)),
    "reordered": lambda q: [q.__dict__.__setitem__(k, q.__dict__.pop(k)) for k in ("num", "desc")
                            if k in q.__dict__],
    "none": lambda q: setattr(q, "used", None),
    "deleted": lambda q: q.__dict__.pop("num", None),
    "readded": lambda q: (q.__dict__.pop("num", None), setattr(q, "num", 0)),
}


def _expected(p):
    idle = vars(VP.ProxyQueue())
    return [i for i, q in enumerate(p.vqs) if vars(q) != idle]


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(index, st.sampled_from(sorted(EDITS)), st.integers(1, 2**32 - 1)),
                      max_size=5),
       odd=st.lists(st.tuples(index, st.sampled_from(sorted(ODD))), max_size=4))
def test_proxy_touched_and_reduce_match_python(edits, odd):
    p = VP.VirtioPciProxy(2)
    for i, kind, val in edits:
        EDITS[kind](p.vqs[i], val)
    for i, kind in odd:
        ODD[kind](p.vqs[i])
    want = _expected(p)
    assert VP._touched(p.vqs) == want
    assert S.proxy_touched(p.vqs) == want
    assert S.reduce_proxy(p) == p.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    # the bytes a checkpoint stores are the same with the compiled reducer
    from emu.debug.timeline import _Freezer
    fz = _Freezer()
    plain = fz.dumps(p)
    assert fz.reducer(VP.VirtioPciProxy, S.reduce_proxy) is None
    assert fz.dumps(p) == plain
    assert fz.reducer(VP.VirtioPciProxy, None) is S.reduce_proxy
    assert [vars(q) for q in fz.loads(plain).vqs] == [vars(q) for q in p.vqs]


def test_other_shapes_go_to_python():
    p = VP.VirtioPciProxy(2)
    p.vqs[3].num = 4
    assert S.proxy_touched(tuple(p.vqs)) == [3]           # not a list
    p.vqs[5] = VP.MsixEntry()                           # not a ProxyQueue
    assert S.proxy_touched(p.vqs) == VP._touched(p.vqs) == [3, 5]
    with pytest.raises(AttributeError):
        S.proxy_touched([object()])                     # as _touched fails
    with pytest.raises(AttributeError):
        VP._touched([object()])


def test_a_changed_class_is_reduced_the_default_way(monkeypatch):
    p = VP.VirtioPciProxy(2)
    p.vqs[2].num = 8
    monkeypatch.setattr(VP.VirtioPciProxy, "__getstate__", lambda self: {"nvectors": 7})
    assert S.reduce_proxy(p)[2] == {"nvectors": 7}


def test_session_run_uses_it_for_its_checkpoints_only(monkeypatch):
    from tests.emu_fast.test_session_engines import session
    calls = []
    real = S.reduce_proxy

    def counting(px):
        calls.append(1)
        return real(px)
    monkeypatch.setattr(S, "reduce_proxy", counting)
    s = session("fast")
    table = s.timeline._freezer._table
    assert VP.VirtioPciProxy not in table
    st = s.cont()
    assert st.reason == "end" and len(s.timeline.checkpoints) > 1
    assert len(calls) >= len(s.timeline.checkpoints) - 1        # one per checkpoint the run took
    assert VP.VirtioPciProxy not in table                       # put back as it was
    # and the checkpoints it took rewind to the same machine the Python engine has there
    mid = s.timeline.checkpoints[1].step
    s.goto(mid)
    d_fast = s.m.digest()
    p = session("py")
    p.goto(mid)
    assert p.m.digest() == d_fast
