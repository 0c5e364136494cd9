"""emu.guest.process.split_segs: bio_split_to_limits cutting a bio's guest segments."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from emu.guest.process import split_segs

_segs = st.lists(st.tuples(st.integers(0, 1 << 30).map(lambda a: a * 512),
                           st.integers(1, 64).map(lambda n: n * 512)), min_size=1, max_size=8)


def _bytes(segs):
    """Each guest byte address the segments cover, in order."""
    return [a + i for a, n in segs for i in range(0, n, 512)]


@given(_segs, st.data())
def test_the_cut_keeps_every_byte_in_order(segs, data):
    total = sum(n for _a, n in segs)
    cut = data.draw(st.integers(1, total // 512 - 1 if total > 512 else 1)) * 512
    head, tail = split_segs(segs, cut)
    assert sum(n for _a, n in head) == min(cut, total)
    assert _bytes(head) + _bytes(tail) == _bytes(segs)
    assert all(n > 0 for _a, n in head + tail)


def test_a_cut_inside_a_segment():
    assert split_segs([(0x1000, 4096), (0x9000, 4096)], 6144) == (
        [(0x1000, 4096), (0x9000, 2048)], [(0x9800, 2048)])
