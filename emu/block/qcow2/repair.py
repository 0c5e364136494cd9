"""What qcow2_do_open does to a dirty image before use: qcow2_co_check_locked with
BDRV_FIX_ERRORS | BDRV_FIX_LEAKS (block/qcow2-refcount.c calculate_refcounts,
compare_refcounts, check_oflag_copied), then qcow2_mark_clean.

Refcounts are recomputed from the metadata (header, L1/L2 tables and the clusters they
reference, snapshots, the refcount table and blocks) and written back through the refcount
cache; COPIED flags are made to agree with the new refcounts.  A cluster that needs a
refcount but has no refcount block would need QEMU's full rebuild_refcount_structure: that
case is refused (the image stays read-only) rather than half-repaired.
"""
from __future__ import annotations

from . import layout as L


class RepairRefused(Exception):
    """The image needs a repair this model does not do."""


def _walk(eng, counts: dict) -> None:
    cs = eng.cluster_size

    def inc(offset: int, length: int) -> None:
        if length <= 0:
            return
        for c in range(offset // cs, (offset + length - 1) // cs + 1):
            counts[c] = counts.get(c, 0) + 1

    def l2_tables(l1: list) -> None:
        for e in l1:
            l2 = e & L.L1E_OFFSET_MASK
            if not l2:
                continue
            inc(l2, cs)
            table = eng.pread(l2, cs)
            for i in range(eng.l2_size):
                ent = int.from_bytes(table[i * 8:i * 8 + 8], "big")
                t = L.cluster_type(ent)
                if t in (L.NORMAL, L.ZERO_ALLOC):
                    inc(ent & L.L2E_OFFSET_MASK, cs)
                elif t == L.COMPRESSED:
                    host, size = L.compressed_params(ent, eng.cluster_bits)
                    inc(host, size)

    inc(0, cs)                                                     # the header
    inc(eng.l1_table_offset, eng.l1_size * 8)
    l2_tables(eng.l1_table)
    if eng.snapshots_size:
        inc(eng.snapshots_offset, eng.snapshots_size)
    for l1_off, l1_size in eng.snapshots:
        inc(l1_off, l1_size * 8)
        raw = eng.pread(l1_off, l1_size * 8)
        l2_tables([int.from_bytes(raw[i * 8:i * 8 + 8], "big") for i in range(l1_size)])
    inc(eng.refcount_table_offset, eng.refcount_table_size * 8)
    for e in eng.refcount_table:
        if e & L.REFT_OFFSET_MASK:
            inc(e & L.REFT_OFFSET_MASK, cs)


def check_and_fix(eng) -> str:
    """Plan the refcount and COPIED repairs of a dirty image, then mark it clean.

    Returns a one-line summary; raises RepairRefused when a full rebuild would be needed."""
    if eng.header.autoclear_features & L.AUTOCLEAR_BITMAPS:
        raise RepairRefused("the image has persistent bitmaps")
    counts: dict = {}
    _walk(eng, counts)
    top = max(counts) + 1 if counts else 0
    for ti, e in enumerate(eng.refcount_table):
        if e & L.REFT_OFFSET_MASK:
            top = max(top, (ti + 1) << eng.refcount_block_bits)
    leaks = errors = 0
    for ci in range(top):
        want = counts.get(ci, 0)
        have = eng.get_refcount(ci)
        if want == have:
            continue
        if want > eng.refcount_max:
            raise RepairRefused(f"cluster {ci} needs refcount {want} > {eng.refcount_max}")
        ti = ci >> eng.refcount_block_bits
        rb = eng.refcount_table[ti] & L.REFT_OFFSET_MASK if ti < eng.refcount_table_size else 0
        if not rb:
            raise RepairRefused(f"cluster {ci} is referenced but no refcount block covers it "
                                "(QEMU would rebuild the refcount structure)")
        leaks += have > want
        errors += have < want
        i = eng.cache_get(eng.rb_cache, rb)
        L.refcount_set(eng.rb_cache.tables[i], ci & (eng.refcount_block_size - 1),
                       eng.refcount_order, want)
        eng.rb_cache.dirty[i] = True
        eng.rb_cache.put(i)
    copied = _fix_copied(eng, counts)
    eng.cache_flush(eng.rb_cache)
    eng.cache_flush(eng.l2_cache)
    eng.mark_clean()
    return (f"repaired the dirty image: {leaks} leaked and {errors} missing refcount(s), "
            f"{copied} COPIED flag(s) fixed")


def _fix_copied(eng, counts: dict) -> int:
    """check_oflag_copied(): COPIED set exactly when the refcount is 1."""
    cs = eng.cluster_size
    fixed = 0
    for l1i, e in enumerate(eng.l1_table):
        l2 = e & L.L1E_OFFSET_MASK
        if not l2:
            continue
        want = counts.get(l2 // cs, 0) == 1
        if bool(e & L.QCOW_OFLAG_COPIED) != want:
            eng.l1_table[l1i] = (e & ~L.QCOW_OFLAG_COPIED) | (L.QCOW_OFLAG_COPIED if want else 0)
            eng.write_l1_entry(l1i)
            fixed += 1
        slice_bytes = eng.l2_slice_size * 8
        for sl in range(cs // slice_bytes):
            i = eng.cache_get(eng.l2_cache, l2 + sl * slice_bytes)
            table = eng.l2_cache.tables[i]
            for k in range(eng.l2_slice_size):
                ent = int.from_bytes(table[k * 8:k * 8 + 8], "big")
                if L.cluster_type(ent) not in (L.NORMAL, L.ZERO_ALLOC):
                    continue
                want = counts.get((ent & L.L2E_OFFSET_MASK) // cs, 0) == 1
                if bool(ent & L.QCOW_OFLAG_COPIED) != want:
                    ent = (ent & ~L.QCOW_OFLAG_COPIED) | (L.QCOW_OFLAG_COPIED if want else 0)
                    table[k * 8:k * 8 + 8] = ent.to_bytes(8, "big")
                    eng.l2_cache.dirty[i] = True
                    fixed += 1
            eng.l2_cache.put(i)
    return fixed
