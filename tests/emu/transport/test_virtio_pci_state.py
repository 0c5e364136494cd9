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
