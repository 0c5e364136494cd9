"""State pickled without trailing zero bytes (emu.trimmed) comes back equal, as a bytearray."""
from __future__ import annotations

import copy
import pickle

from hypothesis import given
from hypothesis import strategies as st

from emu.block.qcow2.cache import Cache
from emu.mem.page_alloc import PageAllocator
from emu.trimmed import Trimmed, content_end

# mostly zeros, some non-zero bytes anywhere (the first and the last byte included)
buffers = st.builds(bytearray, st.lists(st.sampled_from([0, 0, 0, 1, 255]), max_size=300))


@given(buffers)
def test_content_end_is_where_the_trailing_zeros_start(b):
    assert content_end(b) == len(b.rstrip(b"\0"))


@given(buffers)
def test_trimmed_pickles_and_copies_as_an_equal_bytearray(b):
    before = bytes(b)
    for other in (pickle.loads(pickle.dumps(Trimmed(b))), copy.deepcopy(Trimmed(b))):
        assert type(other) is bytearray and other == b and other is not b
    assert b == before                              # the original is left as it was
    assert len(pickle.dumps(Trimmed(b))) <= len(pickle.dumps(b)) + 40   # trailing zeros not stored


@given(ops=st.lists(st.one_of(st.integers(1, 40), st.sampled_from([8, 100, 3000, 5000])),
                    max_size=12), free=st.booleans())
def test_page_allocator_round_trip(ops, free):
    pa = PageAllocator(64 * 4096, 1 << 20)
    got = []
    for n in ops:
        gpa = pa.alloc_pages(n) if n < 50 else pa.kmalloc(n)
        if gpa is not None:
            got.append(gpa)
    if free and got:
        pa.kfree(got[0])
    for other in (pickle.loads(pickle.dumps(pa)), copy.deepcopy(pa)):
        assert other == pa and type(other.used) is bytearray and other.used is not pa.used
    shallow = copy.copy(pa)
    assert shallow == pa and shallow.used is pa.used     # a shallow copy shares used[]
    assert type(pa.used) is bytearray and len(pa.used) == 256


@given(tables=st.lists(st.none() | buffers, min_size=1, max_size=4))
def test_qcow2_cache_round_trip(tables):
    c = Cache("l2", len(tables), 300)
    c.tables[:] = tables
    c.offsets[0] = 65536
    for other in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c)):
        assert other == c
        assert [type(t) for t in other.tables] == [type(t) for t in tables]
        assert all(t is None or t is not u for t, u in zip(other.tables, tables))
    shallow = copy.copy(c)
    assert shallow == c and all(t is u for t, u in zip(shallow.tables, tables))
