"""State pickled without trailing zero bytes (emu.trimmed) comes back equal, as a bytearray."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.block.qcow2.cache import Cache
from emu.mem.page_alloc import PageAllocator
from emu.trimmed import Trimmed, content_end, trimmed, untrimmed

# mostly zeros, some non-zero bytes anywhere (the first and the last byte included)
buffers = st.builds(bytearray, st.lists(st.sampled_from([0, 0, 0, 1, 255]), max_size=300))


@given(buffers)
def test_content_end_is_where_the_trailing_zeros_start(b):
    assert content_end(b) == len(b.rstrip(b"\0"))


@given(buffers, st.sampled_from([bytearray, bytes]))
def test_trimmed_pickles_and_copies_as_an_equal_bytearray_or_bytes(b, kind):
    b = kind(b)
    before = bytes(b)
    for other in (pickle.loads(pickle.dumps(Trimmed(b))), copy.deepcopy(Trimmed(b))):
        assert type(other) is kind and other == b
        assert other is not b or kind is bytes
    assert b == before                              # the original is left as it was
    assert len(pickle.dumps(Trimmed(b))) <= len(pickle.dumps(b)) + 40   # trailing zeros not stored
    assert untrimmed(trimmed(b)) is b


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


@pytest.mark.parametrize("engine", ["py", "fast"])
def test_qcow2_planned_zeros_pickle_as_their_length(tmp_path, engine):
    """A new cluster's zeroed area (64 KiB) waits in the engine's pending writes between the
    compute step and its I/O step; a checkpoint there stores its length, not its bytes."""
    from emu import engine as E
    from emu.block.qcow2.create import create_qcow2
    from emu.debug.timeline import Timeline
    from tests.conftest import build
    if engine == "fast":
        import emu_fast
        emu_fast.require()
    path = str(tmp_path / "z.qcow2")
    create_qcow2(path, 64 << 20)
    m = build(path, "".join(f"write {i * 3 * 65536 + 8192} 4k\n" for i in range(6)))
    fz = Timeline(m)._freezer       # pickles as checkpoints do: the host file is shared
    step = E.stepper(m, engine)
    seen = 0
    while step() is not None:
        eng = m.fmt.engine
        if not any(len(d) == 65536 and not any(d) for _, d in eng.pending):
            continue
        assert (type(eng).__name__ == "FastQcow2Engine") == (engine == "fast")
        seen += 1
        buf = io.BytesIO()
        p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = fz._table
        p.dump(eng)
        assert buf.tell() < 65536 // 2
        for other in (fz.loads(fz.dumps(eng)), fz.deepcopy(eng)):
            assert type(other).__name__ == "Qcow2Engine"
            assert other.pending == eng.pending and other.pending is not eng.pending
            assert [type(d) for _, d in other.pending] == [bytes] * len(eng.pending)
        shallow = copy.copy(eng)
        assert shallow.pending == eng.pending
    E.set_engine(m, "py")
    assert seen >= 6
