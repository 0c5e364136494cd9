"""The guest bulk handlers' bios (emu_fast/_bulk_guest.pyx): a freed request's bios that
nothing else can reach are refilled as app.op's next bios; what Python can see when a stretch
ends -- the pending bios, the live requests' bios (items in order, size, GC tracking) -- is the
Python engine's."""
from __future__ import annotations

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_bulk_guest import bench_pair
from tests.emu_fast.test_bulk_guest_fast import _to, agree_at_stops
from tests.emu_fast.test_bulk_guest_records import refills_agree

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

gmod = pytest.importorskip("emu_fast._bulk_guest")


def _bios(m):
    import gc
    import sys
    q, p = m.guest.blkmq, m.guest.proc
    bs = list(p.pending_bios) + [b for rq in q.rqs.values() for b in rq["bios"]]
    return ([(list(b.items()), sys.getsizeof(b), gc.is_tracked(b)) for b in bs],
            [(len(rq["bios"]), sys.getsizeof(rq["bios"]), gc.is_tracked(rq["bios"]))
             for rq in q.rqs.values()], p.next_bio)


@pytest.mark.parametrize("chunk", [7, 10**6])
def test_freed_bios_refilled_are_new_bios(tmp_path, chunk):
    """bench's 4 KiB random writes: the bio of a request freed by end_request is refilled as
    app.op's next bio, and its one-bio list as submit_bio's next request's; at every stop the
    pending and live requests' bios and bio lists (items, size, GC tracking) are the Python
    engine's and the run ends the same."""
    a, b, (put, got, lput, lgot) = refills_agree(tmp_path, chunk, _bios, gmod.bio_pool_stats)
    assert bytes(a.mem.ram) == bytes(b.mem.ram)
    assert got > 0 and put >= got and (got > 100 or chunk < 50), (put, got)
    assert lgot > 0 and lput >= lgot and (lgot > 100 or chunk < 50), (lput, lgot)


@pytest.mark.parametrize("chunk", [1, 3, 13, 10**6])
def test_merged_and_split_bios_are_the_python_engines(tmp_path, chunk):
    """SEQ at queue depth 32 (requests of several merged bios, many in flight at a stretch's
    end): the bios at every stop and the run are the Python engine's."""
    p0 = gmod.bio_pool_stats()
    agree_at_stops(tmp_path, {}, chunk, _bios)
    put, got, lput, lgot = (x - y for x, y in zip(gmod.bio_pool_stats(), p0))
    assert put >= got and (got > 0 or chunk < 5), (put, got)
    assert lput >= lgot, (lput, lgot)


def test_bios_held_elsewhere_are_never_refilled(tmp_path):
    """A bio something else still holds when its request goes away keeps its last contents
    (never refilled), as on the Python engine."""
    a, b = bench_pair(tmp_path, 150)
    held = {id(a): [], id(b): []}
    lists = {id(a): [], id(b): []}
    for stop in range(300, 3000, 97):
        _to(a, b, stop, 10**6)
        for m in (a, b):
            held[id(m)] += list(m.guest.proc.pending_bios) + [
                x for rq in m.guest.blkmq.rqs.values() for x in rq["bios"]]
            lists[id(m)] += [rq["bios"] for rq in m.guest.blkmq.rqs.values()]
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    ha, hb = held[id(a)], held[id(b)]
    assert len(ha) == len(hb) > 20
    assert [list(d.items()) for d in ha] == [list(d.items()) for d in hb]
    la, lb = lists[id(a)], lists[id(b)]
    assert len(la) == len(lb) > 20
    assert [[list(d.items()) for d in x] for x in la] == [[list(d.items()) for d in x] for x in lb]


# -- app.op's write buffers: the pattern made in guest RAM ------------------------------------

def _ram(m):
    return bytes(m.mem.ram), bytes(m.mem._dirty), m.mem.undo


@pytest.mark.parametrize("undo", [None, {}])
@pytest.mark.parametrize("chunk", [5, 10**6])
def test_write_buffers_made_in_ram_are_the_python_engines(tmp_path, undo, chunk):
    """A write's buffer (the record pattern and fill=) is made in guest RAM in place when there
    is no undo journal (through a scratch buffer and the core's RAM write otherwise): at every
    stop the RAM bytes, the pages marked for rehashing and the journal are the Python
    engine's, and the run ends the same."""
    from emu_fast import bench as B
    wl = "queue-depth 4\n" + "".join(
        f"write {k * 12288} {4 << (k % 3)}k{' fill=0x%02x' % k if k % 2 else ''}\n"
        for k in range(24)) + "wait\nread 0 64k\n"
    a, b = (B._machine(B.make_image(str(tmp_path / f"{e}.raw"), "raw"), wl) for e in ("py", "fast"))
    for m in (a, b):
        m.mem.undo = None if undo is None else dict(undo)
    for stop in (200, 555, 1200):
        _to(a, b, stop, chunk)
        assert _ram(a) == _ram(b), stop
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and _ram(a) == _ram(b)
    assert a.digest() == b.digest()


# -- the slab's free lists found again without a lookup ----------------------------------------

def _slab(m):
    pa = m.pages
    return (sorted((k, list(v)) for k, v in pa.slab_free.items()), list(pa.slab_objs.items()),
            list(pa.large.items()), bytes(pa.used))


def test_slab_free_lists_replaced_between_stretches_are_the_ones_used(tmp_path):
    """kmalloc/kfree take a size class's free list from their last lookup while slab_free is
    unchanged (its version tag); a list replaced between stretches (a new list, the dict
    changed) is the one used from then on, and the allocator ends as on the Python engine."""
    a, b = bench_pair(tmp_path, 120)
    h0 = gmod.slab_list_hits()
    olds = []
    for stop in (700, 1900, 3100, 4400):
        _to(a, b, stop, 10**6)
        assert _slab(a) == _slab(b), stop
        for m in (a, b):
            sf = m.pages.slab_free
            olds.append(dict(sf))               # (the old lists stay alive, unchanged from here)
            frozen = {k: list(v) for k, v in sf.items()}
            for k in list(sf):
                sf[k] = list(sf[k])
            olds.append(frozen)
    engine.run(a, "py")
    engine.run(b, "fast")
    assert a.steps == b.steps and a.digest() == b.digest()
    assert _slab(a) == _slab(b)
    for i in range(0, len(olds), 2):            # (nothing appended to or popped from a replaced list)
        assert {k: list(v) for k, v in olds[i].items()} == olds[i + 1]
    assert gmod.slab_list_hits() - h0 > 100
