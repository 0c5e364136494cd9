"""The bulk core's guest-RAM writes (_bulk.pxd ram_write, ram_w16/32/64) against GuestMemory.

ram_write and ram_w16/32/64 are inline in the handler modules and write in place when there is
no undo journal; otherwise (and for an address outside RAM) they take the core's full path.
Either way the RAM bytes, the dirty marks of every page touched (a write across a page boundary
marks both) and the undo journal's pages must be what GuestMemory.write leaves, and a write
outside RAM must raise EmuError having changed nothing.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.errors import EmuError
from emu.mem.guest_memory import PAGE_SIZE, GuestMemory
from emu.sim.steps import EffectLog

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

if emu_fast.available():
    from emu_fast import _bulk

NPAGES = 4
SIZE = NPAGES * PAGE_SIZE

# mostly addresses just before a page boundary or around the ends of RAM, where the marks and
# the checks can go wrong
_gpa = st.one_of(st.builds(lambda p, d: p * PAGE_SIZE - d, st.integers(1, NPAGES), st.integers(1, 8)),
                 st.builds(lambda p, d: p * PAGE_SIZE - d, st.integers(1, NPAGES), st.integers(1, 8)),
                 st.integers(-9, 9), st.integers(SIZE - 9, SIZE + 9), st.integers(0, SIZE - 1))
_op = st.one_of(
    st.tuples(st.sampled_from([2, 4, 8]), _gpa, st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just(0), _gpa, st.binary(min_size=0, max_size=40)),
    st.tuples(st.just(0), st.integers(0, SIZE - 1), st.binary(min_size=PAGE_SIZE - 8, max_size=PAGE_SIZE + 8)),
)


def _mem(undo) -> GuestMemory:
    m = GuestMemory(SIZE, EffectLog())
    m.ram[:] = bytes(range(256)) * (SIZE // 256)
    m.undo = None if undo is None else dict(undo)
    return m


def _py_write(m: GuestMemory, op) -> None:
    width, gpa, v = op
    if width == 2:
        m.write_u16(gpa, v)
    elif width == 4:
        m.write_u32(gpa, v)
    elif width == 8:
        m.write_u64(gpa, v)
    else:
        m.write(gpa, v)


def _state(m: GuestMemory):
    return bytes(m.ram), bytes(m._dirty), None if m.undo is None else dict(m.undo)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(_op, min_size=1, max_size=12),
       st.sampled_from([None, {}, {1: b"\x07" * PAGE_SIZE}]))
def test_the_core_s_ram_writes_are_guest_memory_s(ops, undo):
    """Each write through the core's accessors leaves what GuestMemory's write leaves (bytes,
    dirty marks, undo pages), with and without an undo journal; a write outside RAM raises
    EmuError on both and changes nothing."""
    py, c = _mem(undo), _mem(undo)
    for op in ops:
        try:
            _py_write(py, op)
            err = None
        except EmuError as e:
            err = e
        if err is None:
            assert _bulk.ram_ops(c, [op])
        else:
            with pytest.raises(EmuError):
                _bulk.ram_ops(c, [op])
        assert _state(c) == _state(py), op


@pytest.mark.parametrize("width", [2, 4, 8])
def test_a_small_write_across_a_page_boundary_marks_both_pages(width):
    """The inline path's two marks: the page of the first byte and that of the last."""
    m = _mem(None)
    gpa = 2 * PAGE_SIZE - 1
    assert _bulk.ram_ops(m, [(width, gpa, 2 ** (8 * width) - 1)])
    assert bytes(m._dirty) == b"\x00\x01\x01\x00"
    assert m.ram[gpa:gpa + width] == b"\xff" * width


def test_with_an_undo_journal_the_old_pages_are_kept():
    """undo set: the first write to a page keeps its old bytes (the in-place path must not be
    taken)."""
    m = _mem({})
    old = bytes(m.ram[PAGE_SIZE:2 * PAGE_SIZE])
    assert _bulk.ram_ops(m, [(2, PAGE_SIZE + 6, 0xABCD), (0, PAGE_SIZE + 100, b"xyz")])
    assert m.undo == {1: old}
