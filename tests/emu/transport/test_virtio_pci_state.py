"""VirtioPciProxy pickles only the queues the driver touched, and comes back equal."""
from __future__ import annotations

import copy
import pickle

from hypothesis import given
from hypothesis import strategies as st

from emu.device import virtio as VD
from emu.transport.virtio_pci import MsixEntry, ProxyQueue, VirtioPciProxy

queues = st.builds(ProxyQueue, num=st.sampled_from([0, 4, 256]), enabled=st.integers(0, 1),
                   desc=st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
                   avail=st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
                   used=st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
                   reset=st.integers(0, 1))


@given(nvectors=st.integers(1, 4), touched=st.dictionaries(st.integers(0, VD.VQ_MAX - 1), queues,
                                                           max_size=6),
       dfselect=st.integers(0, 1), msix=st.booleans())
def test_pickle_and_deepcopy_round_trip(nvectors, touched, dfselect, msix):
    p = VirtioPciProxy(nvectors, dfselect=dfselect, msix_enabled=msix)
    for i, q in touched.items():
        p.vqs[i] = q
    p.msix_table[0] = MsixEntry(0xFEE00000, 0x41, 0)
    for other in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p)):
        assert other == p
        assert len(other.vqs) == VD.VQ_MAX
        assert all(type(q) is ProxyQueue for q in other.vqs)
        # the rebuilt idle queues are separate objects (a later write to one changes only it)
        other.vqs[VD.VQ_MAX - 1].desc[0] = 1
        assert other.vqs[VD.VQ_MAX - 2].desc[0] == p.vqs[VD.VQ_MAX - 2].desc[0]
    # what is stored: the touched (non-idle) queues only
    n, stored = p.__getstate__()["vqs"]
    assert n == VD.VQ_MAX
    assert set(stored) == {i for i, q in touched.items() if q != ProxyQueue()}


# In-place edits a driver or a test can make to one queue (common_write changes the lists
# in place, reset assigns the ints): each leaves the queue differing from an idle one.
EDITS = {
    "num": lambda q, v: setattr(q, "num", v),
    "enabled": lambda q, v: setattr(q, "enabled", v),
    "reset": lambda q, v: setattr(q, "reset", v),
    "desc_lo": lambda q, v: q.desc.__setitem__(0, v),
    "avail_hi": lambda q, v: q.avail.__setitem__(1, v),
    "used_slice": lambda q, v: q.used.__setitem__(slice(None), [0, v]),
    "used_append": lambda q, v: q.used.append(v),
    "new_list": lambda q, v: setattr(q, "desc", [v, 0]),
    "extra_attr": lambda q, v: setattr(q, "note", v),
}
# the first and last queue and the ends of the chunks _touched compares at once
EDGES = [0, 1, 63, 64, 65, 127, 128, VD.VQ_MAX - 65, VD.VQ_MAX - 64, VD.VQ_MAX - 2, VD.VQ_MAX - 1]
index = st.sampled_from(EDGES) | st.integers(0, VD.VQ_MAX - 1)


@given(edits=st.lists(st.tuples(index, st.sampled_from(sorted(EDITS)), st.integers(1, 2**32 - 1)),
                      min_size=1, max_size=5),
       undo=st.booleans())
def test_queues_changed_in_place_anywhere_are_stored_and_come_back(edits, undo):
    p = VirtioPciProxy(2)
    for i, kind, val in edits:
        EDITS[kind](p.vqs[i], val)
    if undo:                        # a queue edited and set back to idle values is idle again
        i = edits[0][0]
        p.vqs[i].__dict__.clear()
        p.vqs[i].__dict__.update(vars(ProxyQueue()))
    idle = vars(ProxyQueue())
    expected = {i for i, q in enumerate(p.vqs) if vars(q) != idle}
    n, stored = p.__getstate__()["vqs"]
    assert n == VD.VQ_MAX and set(stored) == expected
    other = pickle.loads(pickle.dumps(p))
    assert [vars(q) for q in other.vqs] == [vars(q) for q in p.vqs]
