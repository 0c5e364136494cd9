"""`qemu-img create -f qcow2`: the same bytes QEMU writes, from the same allocator steps.

Models QEMU block/qcow2.c `qcow2_co_create` (minimal header, one-cluster refcount table
and an empty refcount block, then open, `qcow2_alloc_clusters(3 clusters)`,
`qcow2_update_header`, `qcow2_co_truncate` -> `qcow2_grow_l1_table(exact)`, the size field,
`qcow2_co_change_backing_file`), and from block/qcow2-refcount.c the allocator those steps
run: `alloc_clusters_noref`, `qcow2_alloc_clusters`, `update_refcount`,
`alloc_refcount_block` and `qcow2_refcount_area` (growing the refcount table), plus
`qcow2_refcount_metadata_size` from block/qcow2.c. The result is byte-identical to
`qemu-img create` (tests compare with cmp); stack-reference.md sections 5.1 and 5.6.
"""
from __future__ import annotations

import os
import struct

from ...errors import ImageError
from . import layout as L
from .header import Header

_EAGAIN = object()


class _Allocator:
    """The refcount side of a freshly opened image, over an in-memory file (bytearray).

    The refcount block cache is modelled as a dict of block contents that are all written
    back at the end (during creation no refcount block is ever freed or moved, so when it
    is written does not change the final bytes); everything QEMU writes directly (refcount
    table entries and tables, the L1 table) is written in order.
    """

    def __init__(self, cluster_bits: int, refcount_order: int):
        self.cb = cluster_bits
        self.cs = 1 << cluster_bits
        self.order = refcount_order
        self.rbb = L.refcount_block_bits(cluster_bits, refcount_order)
        self.rb_entries = 1 << self.rbb
        self.file = bytearray()
        self.reftable_offset = self.cs
        self.reftable = [0] * (self.cs // 8)
        self.reftable[0] = 2 * self.cs
        self.max_reftable_index = 0
        self.blocks: dict[int, bytearray] = {}
        self.free_cluster_index = 0

    # -- the file --
    def pwrite(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > len(self.file):
            self.file.extend(bytes(end - len(self.file)))
        self.file[offset:end] = data

    def pread(self, offset: int, n: int) -> bytes:
        return bytes(self.file[offset:offset + n]).ljust(n, b"\0")

    def flush_blocks(self) -> None:
        for off in sorted(self.blocks):
            self.pwrite(off, self.blocks[off])

    # -- refcount blocks (qcow2_cache_get / qcow2_cache_get_empty) --
    def block(self, offset: int) -> bytearray:
        b = self.blocks.get(offset)
        if b is None:
            b = self.blocks[offset] = bytearray(self.pread(offset, self.cs))
        return b

    def empty_block(self, offset: int) -> bytearray:
        b = self.blocks[offset] = bytearray(self.cs)
        return b

    def get_refcount(self, ci: int) -> int:
        """qcow2_get_refcount."""
        ti = ci >> self.rbb
        if ti >= len(self.reftable) or not self.reftable[ti]:
            return 0
        return L.refcount_get(self.block(self.reftable[ti]), ci & (self.rb_entries - 1),
                              self.order)

    def first_used(self, ci: int, limit: int) -> int:
        """The first cluster index in [ci, limit) with a non-zero refcount, else limit."""
        while ci < limit:
            ti = ci >> self.rbb
            block_end = min(limit, (ti + 1) << self.rbb)
            if ti >= len(self.reftable) or not self.reftable[ti]:
                ci = block_end
                continue
            blk = self.block(self.reftable[ti])
            base = ti << self.rbb
            bits = 1 << self.order
            a, b = (ci - base) * bits, (block_end - base) * bits      # bit positions
            byte = a >> 3
            first = blk[byte] >> (a & 7) << (a & 7) if bits < 8 else blk[byte]
            if first:
                pos = byte
            else:
                rest = bytes(blk[byte + 1:(b + 7) >> 3])
                stripped = rest.lstrip(b"\0")
                pos = byte + 1 + len(rest) - len(stripped) if stripped else -1
            if pos >= 0:
                for idx in range(max(ci - base, pos * 8 // bits), block_end - base):
                    if L.refcount_get(blk, idx, self.order):
                        return base + idx
            ci = block_end
        return limit

    # -- allocation --
    def alloc_clusters_noref(self, size: int) -> int:
        """alloc_clusters_noref: first run of free clusters at or after free_cluster_index."""
        n = (size + self.cs - 1) >> self.cb
        while True:
            used = self.first_used(self.free_cluster_index, self.free_cluster_index + n)
            if used == self.free_cluster_index + n:
                self.free_cluster_index += n
                break
            self.free_cluster_index = used + 1
        if self.free_cluster_index - 1 > (L.QCOW_MAX_CLUSTER_OFFSET >> self.cb):
            raise ImageError("the image would exceed QCOW_MAX_CLUSTER_OFFSET")
        return (self.free_cluster_index - n) << self.cb

    def alloc_clusters(self, size: int) -> int:
        """qcow2_alloc_clusters: find free clusters, take references, retry on -EAGAIN."""
        while True:
            offset = self.alloc_clusters_noref(size)
            if self.update_refcount(offset, size, 1, False) is not _EAGAIN:
                return offset

    def update_refcount(self, offset: int, length: int, addend: int, decrease: bool):
        """update_refcount, one refcount block at a time (with its -EAGAIN undo path)."""
        if length <= 0:
            return None
        cs, cb = self.cs, self.cb
        start = offset & ~(cs - 1)
        last = (offset + length - 1) & ~(cs - 1)
        ci, end = start >> cb, (last >> cb) + 1
        while ci < end:
            block = self.alloc_refcount_block(ci)
            if block is _EAGAIN:
                self.free_cluster_index = min(self.free_cluster_index, start >> cb)
                self.update_refcount(offset, (ci << cb) - offset, addend, not decrease)
                return _EAGAIN
            stop = min(end, ((ci >> self.rbb) + 1) << self.rbb)
            self._add(block, ci, stop, -addend if decrease else addend)
            ci = stop
        return None

    def _add(self, block: bytearray, ci: int, stop: int, delta: int) -> None:
        mask = self.rb_entries - 1
        a, b = ci & mask, ((stop - 1) & mask) + 1
        bits = 1 << self.order
        if bits >= 8 and delta in (1, -1):
            n = bits // 8
            seg = block[a * n:b * n]
            one = bytes(n - 1) + b"\1"
            if delta == 1 and not any(seg):
                block[a * n:b * n] = one * (b - a)
                return
            if delta == -1 and seg == one * (b - a):
                block[a * n:b * n] = bytes(len(seg))
                self.free_cluster_index = min(self.free_cluster_index, ci)
                return
        for idx in range(a, b):
            rc = L.refcount_get(block, idx, self.order) + delta
            if rc < 0 or rc >= 1 << bits:
                raise ImageError("refcount overflow while creating the image")
            if rc == 0:
                self.free_cluster_index = min(self.free_cluster_index, ci + idx - a)
            L.refcount_set(block, idx, self.order, rc)

    def alloc_refcount_block(self, ci: int):
        """alloc_refcount_block: the block covering cluster ci (or _EAGAIN after creating)."""
        ti = ci >> self.rbb
        if ti < len(self.reftable) and self.reftable[ti]:
            return self.block(self.reftable[ti] & L.REFT_OFFSET_MASK)
        new_block = self.alloc_clusters_noref(self.cs)
        if new_block == 0:
            raise ImageError("invalid allocation of a refcount block at offset 0")
        span = self.cb + self.rbb
        if new_block >> span == (ci << self.cb) >> span:
            blk = self.empty_block(new_block)
            L.refcount_set(blk, (new_block >> self.cb) & (self.rb_entries - 1), self.order, 1)
        else:
            if self.update_refcount(new_block, self.cs, 1, False) is _EAGAIN:
                return _EAGAIN
            self.empty_block(new_block)
        if ti < len(self.reftable):
            self.pwrite(self.reftable_offset + ti * 8, struct.pack(">Q", new_block))
            self.reftable[ti] = new_block
            self.max_reftable_index = max(self.max_reftable_index, ti)
            return _EAGAIN
        blocks_used = -(-max(ci + 1, (new_block >> self.cb) + 1) // self.rb_entries)
        meta_offset = blocks_used * self.rb_entries * self.cs
        self.refcount_area(meta_offset, 0, False, ti, new_block)
        return _EAGAIN

    def refcount_area(self, start_offset: int, additional: int, exact: bool,
                      new_index: int, new_offset: int) -> int:
        """qcow2_refcount_area: new self-describing refcount blocks + table at start_offset."""
        cs = self.cs
        total = refcount_metadata_blocks(start_offset // cs + additional, cs, self.order,
                                         not exact)
        if total > L.QCOW_MAX_REFTABLE_SIZE:
            raise ImageError("the refcount table would be too large")
        area_index = (start_offset // cs) // self.rb_entries
        table_size = total if exact else total + -(-total // 2)
        per = cs // 8
        table_size = -(-table_size // per) * per
        table_clusters = table_size * 8 // cs
        if table_size > L.QCOW_MAX_REFTABLE_SIZE:
            raise ImageError("the refcount table would be too large")
        new = [0] * table_size
        keep = self.max_reftable_index + 1 if table_size > self.max_reftable_index \
            else table_size
        new[:keep] = self.reftable[:keep]
        if new_offset:
            new[new_index] = new_offset
        extra = sum(1 for i in range(area_index, total) if not new[i])
        table_offset = start_offset + extra * cs
        end_offset = table_offset + table_clusters * cs
        block_offset = start_offset
        for i in range(area_index, total):
            if new[i]:
                blk = self.block(new[i])
            else:
                blk = self.empty_block(block_offset)
                new[i] = block_offset
                block_offset += cs
            first = i * self.rb_entries * cs
            if first < end_offset:
                j = (start_offset - first) // cs if first < start_offset else 0
                stop = min((end_offset - first) // cs, self.rb_entries)
                for k in range(j, stop):
                    L.refcount_set(blk, k, self.order, 1)
        self.pwrite(table_offset, struct.pack(f">{table_size}Q", *new))
        old_offset, old_size = self.reftable_offset, len(self.reftable)
        self.reftable, self.reftable_offset = new, table_offset
        self.max_reftable_index = max([i for i, e in enumerate(new) if e] or [0])
        self.update_refcount(old_offset, old_size * 8, 1, True)
        return end_offset


def refcount_metadata_blocks(clusters: int, cluster_size: int, refcount_order: int,
                             generous: bool) -> int:
    """qcow2_refcount_metadata_size: refcount blocks needed (fixed point, +50% table)."""
    per_table_cluster = cluster_size // 8
    per_block = cluster_size * 8 // (1 << refcount_order)
    table = blocks = 0
    n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
        if n == last and generous:
            clusters += -(-table // 2)
            n = 0
            generous = False
            continue
        if n == last:
            return blocks


def build_qcow2(size: int, cluster_size: int = L.DEFAULT_CLUSTER_SIZE,
                refcount_bits: int = 16, backing_file: str | None = None,
                backing_format: str | None = None, lazy_refcounts: bool = False,
                version: int = 3) -> bytes:
    """The bytes of a new image (qcow2_co_create); raises ValueError for bad options."""
    if size < 0 or size % 512:
        raise ValueError(f"image size must be a multiple of 512 bytes, not {size}")
    cb = cluster_size.bit_length() - 1
    if not (L.MIN_CLUSTER_BITS <= cb <= L.MAX_CLUSTER_BITS) or cluster_size != 1 << cb:
        raise ValueError("cluster size must be a power of two between 512 and 2048k, not "
                         f"{cluster_size}")
    if version not in (2, 3):
        raise ValueError(f"unknown qcow2 version {version} (compat 0.10 is 2, 1.1 is 3)")
    if refcount_bits <= 0 or refcount_bits > 64 or refcount_bits & (refcount_bits - 1):
        raise ValueError("refcount width must be a power of two and may not exceed 64 bits, "
                         f"not {refcount_bits}")
    if version < 3 and refcount_bits != 16:
        raise ValueError("refcount widths other than 16 bits need compat 1.1 (version 3)")
    if version < 3 and lazy_refcounts:
        raise ValueError("lazy refcounts need compat 1.1 (version 3)")
    if backing_format is not None and backing_file is None:
        raise ValueError("a backing format cannot be used without a backing file")
    if backing_file is not None and len(backing_file.encode()) > 1023:
        raise ValueError("backing file name too long (at most 1023 bytes)")
    order = refcount_bits.bit_length() - 1

    a = _Allocator(cb, order)
    # qcow2_co_create: minimal header, reftable with one entry, an empty refcount block
    h = Header(version=version, cluster_bits=cb, refcount_table_offset=cluster_size,
               refcount_table_clusters=1, refcount_order=order,
               compatible_features=L.COMPAT_LAZY_REFCOUNTS if lazy_refcounts else 0)
    a.pwrite(0, h.pack())
    a.pwrite(cluster_size, struct.pack(">Q", 2 * cluster_size) + bytes(2 * cluster_size - 8))
    # open; the header cluster, the reftable and the refcount block get refcount 1
    if a.alloc_clusters(3 * cluster_size) != 0:
        raise AssertionError("first cluster of an empty image already in use")
    a.pwrite(0, h.pack())
    # qcow2_co_truncate -> qcow2_grow_l1_table(exact)
    l1_size = L.size_to_l1(size, cb, cb - 3)
    if l1_size > L.QCOW_MAX_L1_SIZE // 8:
        raise ValueError(f"virtual size {size} is too large for {cluster_size}-byte "
                         f"clusters (the L1 table would need {l1_size} entries, QEMU's "
                         f"limit is {L.QCOW_MAX_L1_SIZE // 8})")
    if l1_size:
        l1_offset = a.alloc_clusters(l1_size * 8)
        a.pwrite(l1_offset, bytes(l1_size * 8))
        h.l1_size, h.l1_table_offset = l1_size, l1_offset
    h.size = size
    h.refcount_table_offset = a.reftable_offset
    h.refcount_table_clusters = len(a.reftable) * 8 // cluster_size
    if backing_file is not None:
        h.backing_file, h.backing_format = backing_file, backing_format
    a.pwrite(0, h.pack())
    a.flush_blocks()
    return bytes(a.file)


def create_qcow2(path: str, size: int | None, cluster_size: int = L.DEFAULT_CLUSTER_SIZE,
                 refcount_bits: int = 16, backing_file: str | None = None,
                 backing_format: str | None = None, lazy_refcounts: bool = False,
                 version: int = 3, force: bool = False, *,
                 allow_backing_outside: bool = False) -> None:
    """Write a new qcow2 image, byte-identical to `qemu-img create -f qcow2 -o
    cluster_size=..,refcount_bits=..,lazy_refcounts=..,compat=.. [-b B -F FMT] path size`.

    Like qemu-img, a backing file must exist (relative names resolve against the new
    image's folder) and `size` may be None to take the backing file's virtual size. Without
    `backing_format` the backing file is probed (qcow2 or raw) and the result recorded
    (qemu-img 7.2 refuses -b without -F). Backing files outside the image's folder are
    refused unless allow_backing_outside, as when opening. Refuses existing files unless
    force. Every problem is an ImageError naming the path.
    """
    from .image import open_qcow2_file, resolve_backing

    if os.path.exists(path) and not force:
        raise ImageError(f"{path}: already exists (use --force to overwrite it)")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a directory")
    if backing_file is not None:
        if backing_format is not None and backing_format not in ("raw", "qcow2"):
            raise ImageError(f"{path}: backing format {backing_format!r} is not supported "
                             "(only raw and qcow2)")
        b = resolve_backing(path, backing_file, backing_format, allow_backing_outside)
        backing_format = b["format"]
        if backing_format == "qcow2":
            with open_qcow2_file(b["path"], allow_backing_outside=allow_backing_outside) as r:
                bsize = r.size
        else:
            bsize = os.path.getsize(b["path"])
        if size is None:
            size = bsize
    elif backing_format is not None:
        raise ImageError(f"{path}: a backing format cannot be used without a backing file")
    if size is None:
        raise ImageError(f"{path}: an image size is needed (no backing file to take it from)")
    try:
        data = build_qcow2(size, cluster_size, refcount_bits, backing_file, backing_format,
                           lazy_refcounts, version)
    except ValueError as e:
        raise ImageError(f"{path}: {e}") from None
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ImageError(f"{path}: cannot create: {e.strerror}") from None
