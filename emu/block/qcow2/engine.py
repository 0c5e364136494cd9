"""QEMU's qcow2 metadata logic (qcow2-refcount.c, qcow2-cluster.c, qcow2.c), ported to
synchronous Python that *plans* its host I/O.

Every function keeps QEMU's name and order of operations.  Where QEMU issues a bdrv_pread /
bdrv_pwrite / bdrv_flush on the image file, the engine appends an operation to `plan`
(and, for reads, reads the file through a view that already includes the planned but
not yet executed writes).  The stepped driver (driver.py) computes one phase of a request
with the engine and then executes its plan one host I/O per step, so every metadata write
shows up as a step with its old and new bytes, in the order QEMU would issue it.
"""
from __future__ import annotations

import errno as E

from ...trimmed import trimmed, untrimmed
from . import layout as L
from .cache import Cache
from .image import FrozenTable
from .create import refcount_metadata_blocks

INV = -1
# qcow2_discard_type
DISCARD_NEVER, DISCARD_ALWAYS, DISCARD_REQUEST, DISCARD_SNAPSHOT, DISCARD_OTHER = range(5)
# overlap-check bits (QCOW2_OL_*)
OL_MAIN_HEADER, OL_ACTIVE_L1, OL_ACTIVE_L2, OL_REFCOUNT_TABLE, OL_REFCOUNT_BLOCK, \
    OL_SNAPSHOT_TABLE, OL_INACTIVE_L1, OL_INACTIVE_L2, OL_BITMAP_DIRECTORY = (1 << i for i in range(9))
OL_CACHED = (OL_MAIN_HEADER | OL_ACTIVE_L1 | OL_ACTIVE_L2 | OL_REFCOUNT_TABLE | OL_REFCOUNT_BLOCK
             | OL_SNAPSHOT_TABLE | OL_INACTIVE_L1 | OL_BITMAP_DIRECTORY)
OL_NAMES = {OL_MAIN_HEADER: "qcow2_header", OL_ACTIVE_L1: "active L1 table",
            OL_ACTIVE_L2: "active L2 table", OL_REFCOUNT_TABLE: "refcount table",
            OL_REFCOUNT_BLOCK: "refcount block", OL_SNAPSHOT_TABLE: "snapshot table",
            OL_INACTIVE_L1: "inactive L1 table", OL_INACTIVE_L2: "inactive L2 table",
            OL_BITMAP_DIRECTORY: "bitmap directory"}
BDRV_REQUEST_MAX_BYTES = 0x7FFFFE00
BDRV_REQ_MAY_UNMAP = 0x4


class Qcow2Error(Exception):
    """A request fails inside the driver (-errno), with QEMU's message when there is one."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(msg or E.errorcode.get(err, str(err)))
        self.errno = err


class Qcow2Engine:
    """BDRVQcow2State plus the functions that change it; all state is plain data."""

    def __init__(self, meta, pread, file_size: int, backing, *, discard_unmap: bool,
                 lazy_refcounts: bool | None = None, read_only: bool = False) -> None:
        h = meta.header
        self.header = h
        self.pread_file = pread
        self.backing = backing
        self.read_only = read_only
        self.version = h.version
        self.cluster_bits = h.cluster_bits
        self.cluster_size = 1 << h.cluster_bits
        self.l2_bits = h.cluster_bits - 3
        self.l2_size = 1 << self.l2_bits
        self.refcount_order = h.refcount_order
        self.refcount_block_bits = h.cluster_bits - (h.refcount_order - 3)
        self.refcount_block_size = 1 << self.refcount_block_bits
        self.refcount_max = (1 << (1 << h.refcount_order)) - 1
        self.size = h.size
        self.l1_table = list(meta.l1_table)
        self.l1_size = h.l1_size
        self.l1_table_offset = h.l1_table_offset
        rt = meta.refcount_table          # immutable (FrozenTable): shared, not copied
        self.refcount_table = rt if type(rt) is FrozenTable else FrozenTable(rt)
        self.refcount_table_offset = h.refcount_table_offset
        self.refcount_table_size = len(self.refcount_table)
        self.update_max_refcount_table_index()
        self.free_cluster_index = 0
        self.incompatible_features = h.incompatible_features
        self.compatible_features = h.compatible_features
        self.use_lazy_refcounts = (bool(h.compatible_features & L.COMPAT_LAZY_REFCOUNTS)
                                   if lazy_refcounts is None else lazy_refcounts)
        self.discard_passthrough = [False, True, discard_unmap, True, False]
        self.overlap_check = OL_CACHED
        self.snapshots_offset = h.snapshots_offset
        self.snapshots_size = getattr(meta, "snapshots_size", 0)
        self.snapshots: list = [(sn["l1_table_offset"], sn["l1_size"])
                                for sn in getattr(meta, "snapshots", []) or []]
        self.corrupt = bool(h.incompatible_features & L.INCOMPAT_CORRUPT)
        self.drv_gone = False
        self.corruption_msg = ""
        self.discards: list = []
        self.cache_discards = False
        # read_cache_sizes(): the L2 cache covers the whole disk up to 32 MiB
        max_l2_entries = (self.size + self.cluster_size - 1) // self.cluster_size
        max_l2_cache = -(-max_l2_entries * 8 // self.cluster_size) * self.cluster_size
        l2_cache_size = min(max_l2_cache, L.DEFAULT_L2_CACHE_MAX_SIZE)
        entry = self.cluster_size if l2_cache_size >= max_l2_cache else min(self.cluster_size, 4096)
        self.l2_slice_size = entry // 8
        self.l2_cache = Cache("l2", max(L.MIN_L2_CACHE_SIZE, l2_cache_size // entry), entry)
        self.rb_cache = Cache("refcount", L.MIN_REFCOUNT_CACHE_SIZE, self.cluster_size)
        self.plan: list = []
        self.pending: list = []          # planned writes not yet executed: [offset, bytes]
        self.file_size = file_size

    # -- checkpoints ------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """The planned writes' data pickle without trailing zeros (emu.trimmed): a new
        cluster's zeroed area is 64 KiB of zeros.  (A shallow copy gets its own pending list
        of equal entries.)"""
        if not self.pending:
            return self.__dict__
        return {**self.__dict__, "pending": [[o, trimmed(d)] for o, d in self.pending]}

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        if self.pending:
            self.pending = [[o, untrimmed(b)] for o, b in self.pending]

    # -- plain data ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"l1_table": list(self.l1_table), "l1_table_offset": self.l1_table_offset,
                "refcount_table": list(self.refcount_table),
                "refcount_table_offset": self.refcount_table_offset,
                "free_cluster_index": self.free_cluster_index,
                "incompatible_features": self.incompatible_features,
                "corrupt": self.corrupt, "drv_gone": self.drv_gone,
                "l2_cache": self.l2_cache.state(), "rb_cache": self.rb_cache.state(),
                "pending": [[o, bytes(d).hex()] for o, d in self.pending]}

    # -- the view of the file and the plan -----------------------------------------------------------
    def pread(self, offset: int, n: int) -> bytes:
        """The file as it will be once every planned write has run."""
        buf = bytearray(self.pread_file(offset, n))
        for off, data in self.pending:
            lo, hi = max(off, offset), min(off + len(data), offset + n)
            if lo < hi:
                buf[lo - offset:hi - offset] = data[lo - off:hi - off]
        return bytes(buf)

    def io(self, op: str, fn: str, what: str, offset: int = 0, data: bytes | None = None,
           length: int = 0, **extra) -> None:
        item = {"op": op, "fn": fn, "what": what, "offset": offset, "length": length}
        if data is not None:
            item["data"] = bytes(data)
            item["length"] = len(data)
            self.pending.append([offset, bytes(data)])
            self.file_size = max(self.file_size, offset + len(data))
        elif op in ("write_zeroes", "discard"):
            self.pending.append([offset, bytes(length)])
            self.file_size = max(self.file_size, offset + length) if op == "write_zeroes" \
                else self.file_size
        elif op == "guest_write":
            self.pending.append([offset, b""])       # placeholder keeps pending in plan order
            self.file_size = max(self.file_size, offset + length)
        item.update(extra)
        self.plan.append(item)

    def executed(self, item: dict) -> None:
        """The driver ran a plan item: its bytes are now in the file, drop them from the view."""
        if "data" in item or item["op"] in ("write_zeroes", "discard", "guest_write"):
            self.pending.pop(0)

    def bdrv_flush(self, why: str) -> None:
        self.io("flush", "bdrv_flush", why)

    # -- small helpers ----------------------------------------------------------------------------------
    def offset_into_cluster(self, off: int) -> int:
        return off & (self.cluster_size - 1)

    def start_of_cluster(self, off: int) -> int:
        return off & ~(self.cluster_size - 1)

    def size_to_clusters(self, size: int) -> int:
        return (size + self.cluster_size - 1) >> self.cluster_bits

    def l1_index(self, off: int) -> int:
        return off >> (self.l2_bits + self.cluster_bits)

    def l2_slice_index(self, off: int) -> int:
        return (off >> self.cluster_bits) & (self.l2_slice_size - 1)

    def update_max_refcount_table_index(self) -> None:
        i = self.refcount_table_size - 1
        while i > 0 and not self.refcount_table[i] & L.REFT_OFFSET_MASK:
            i -= 1
        self.max_refcount_table_index = max(i, 0)

    def cache(self, name: str) -> Cache:
        return self.l2_cache if name == "l2" else self.rb_cache

    @staticmethod
    def get_entry(table, i: int) -> int:
        return int.from_bytes(table[i * 8:i * 8 + 8], "big")

    @staticmethod
    def set_entry(table, i: int, val: int) -> None:
        table[i * 8:i * 8 + 8] = val.to_bytes(8, "big")

    # -- corruption ------------------------------------------------------------------------------------
    def signal_corruption(self, fatal: bool, msg: str) -> None:
        """qcow2_signal_corruption(): fatal marks the image corrupt and makes the node unusable."""
        if fatal:
            text = f"qcow2: Marking image as corrupt: {msg}; further corruption events will be suppressed"
            if not self.corrupt:
                self.corrupt = True
                self.corruption_msg = text
                self.incompatible_features |= L.INCOMPAT_CORRUPT
                self.update_header("qcow2_mark_corrupt")
            self.drv_gone = True
            raise Qcow2Error(-E.EIO, text)
        self.corruption_msg = f"qcow2: Image is corrupt: {msg}; further non-fatal corruption events will be suppressed"

    def update_header(self, fn: str) -> None:
        """qcow2_update_header(): rewrite the whole header cluster (a plain bdrv_pwrite)."""
        h = self.header
        h.incompatible_features = self.incompatible_features
        h.l1_table_offset = self.l1_table_offset
        h.l1_size = self.l1_size
        h.refcount_table_offset = self.refcount_table_offset
        h.refcount_table_clusters = self.refcount_table_size * 8 >> self.cluster_bits
        self.io("write", fn, "header cluster (qcow2_update_header)", 0, h.pack(), kind="header")

    def pre_write_overlap_check(self, ign: int, offset: int, size: int) -> None:
        """qcow2_pre_write_overlap_check() with the default 'cached' template."""
        hit = self.check_metadata_overlap(ign, offset, size)
        if hit:
            self.signal_corruption(True, "Preventing invalid write on metadata (overlaps with "
                                   f"{OL_NAMES[hit]})")

    def check_metadata_overlap(self, ign: int, offset: int, size: int) -> int:
        chk = self.overlap_check & ~ign
        if not size:
            return 0
        if chk & OL_MAIN_HEADER and offset < self.cluster_size:
            return OL_MAIN_HEADER
        size = -(-(self.offset_into_cluster(offset) + size) // self.cluster_size) * self.cluster_size
        offset = self.start_of_cluster(offset)

        def overlaps(o: int, s: int) -> bool:
            return o < offset + size and offset < o + s

        if chk & OL_ACTIVE_L1 and self.l1_size and overlaps(self.l1_table_offset, self.l1_size * 8):
            return OL_ACTIVE_L1
        if chk & OL_REFCOUNT_TABLE and self.refcount_table_size and \
                overlaps(self.refcount_table_offset, self.refcount_table_size * 8):
            return OL_REFCOUNT_TABLE
        if chk & OL_SNAPSHOT_TABLE and self.snapshots_size and \
                overlaps(self.snapshots_offset, self.snapshots_size):
            return OL_SNAPSHOT_TABLE
        if chk & OL_INACTIVE_L1:
            for l1_off, l1_sz in self.snapshots:
                if l1_sz and overlaps(l1_off, l1_sz * 8):
                    return OL_INACTIVE_L1
        if chk & OL_ACTIVE_L2:
            for e in self.l1_table:
                if e & L.L1E_OFFSET_MASK and overlaps(e & L.L1E_OFFSET_MASK, self.cluster_size):
                    return OL_ACTIVE_L2
        if chk & OL_REFCOUNT_BLOCK:
            for i in range(self.max_refcount_table_index + 1):
                e = self.refcount_table[i] & L.REFT_OFFSET_MASK
                if e and overlaps(e, self.cluster_size):
                    return OL_REFCOUNT_BLOCK
        return 0

    # -- caches (qcow2-cache.c) ------------------------------------------------------------------------
    def cache_get(self, c: Cache, offset: int, read: bool = True) -> int:
        """qcow2_cache_do_get()."""
        if offset % c.table_size:
            self.signal_corruption(True, f"Cannot get entry from {self._cname(c)} cache: "
                                   f"Offset {offset:#x} is unaligned")
        i, victim = c.lookup(offset)
        if i < 0:
            i = victim
            self.cache_entry_flush(c, i)
            c.offsets[i] = 0
            c.table(i)
            if read:
                data = self.pread(offset, c.table_size)
                c.tables[i][:] = data
                self.io("read", "qcow2_cache_do_get", f"load {self._cname(c)} @{offset:#x}",
                        offset, length=c.table_size, kind=c.name)
            c.offsets[i] = offset
        c.ref[i] += 1
        return i

    def _cname(self, c: Cache) -> str:
        return "L2 table" if c.name == "l2" else "refcount block"

    def cache_entry_flush(self, c: Cache, i: int) -> None:
        """qcow2_cache_entry_flush(): dependencies first, then an overlap-checked pwrite."""
        if not c.dirty[i] or not c.offsets[i]:
            return
        if c.depends:
            self.cache_flush_dependency(c)
        elif c.depends_on_flush:
            self.bdrv_flush(f"{self._cname(c)} cache depends on a flush (COW data must be stable)")
            c.depends_on_flush = False
        self.pre_write_overlap_check(OL_REFCOUNT_BLOCK if c.name == "refcount" else OL_ACTIVE_L2,
                                     c.offsets[i], c.table_size)
        self.io("write", "qcow2_cache_entry_flush", f"{self._cname(c)} @{c.offsets[i]:#x}",
                c.offsets[i], bytes(c.tables[i]), kind="l2" if c.name == "l2" else "refcount-block")
        c.dirty[i] = False

    def cache_write(self, c: Cache) -> None:
        for i in range(c.size):
            self.cache_entry_flush(c, i)

    def cache_flush(self, c: Cache) -> None:
        """qcow2_cache_flush(): write every dirty entry, then bdrv_flush(file)."""
        self.cache_write(c)
        self.bdrv_flush(f"qcow2_cache_flush({self._cname(c)} cache)")

    def cache_flush_dependency(self, c: Cache) -> None:
        self.cache_flush(self.cache(c.depends))
        c.depends = ""
        c.depends_on_flush = False

    def cache_set_dependency(self, c: Cache, dep: Cache) -> None:
        """qcow2_cache_set_dependency(): c may only be written after dep is on disk."""
        if dep.depends:
            self.cache_flush_dependency(dep)
        if c.depends and c.depends != dep.name:
            self.cache_flush_dependency(c)
        c.depends = dep.name

    def cache_discard_offset(self, c: Cache, offset: int) -> bool:
        i = c.is_table_offset(offset)
        if i >= 0:
            c.discard(i)
            return True
        return False

    # -- refcounts (qcow2-refcount.c) ---------------------------------------------------------------------
    def get_refcount(self, cluster_index: int) -> int:
        """qcow2_get_refcount()."""
        ti = cluster_index >> self.refcount_block_bits
        if ti >= self.refcount_table_size:
            return 0
        rb = self.refcount_table[ti] & L.REFT_OFFSET_MASK
        if not rb:
            return 0
        if self.offset_into_cluster(rb):
            self.signal_corruption(True, f"Refblock offset {rb:#x} unaligned (reftable index: {ti:#x})")
        i = self.cache_get(self.rb_cache, rb)
        val = L.refcount_get(self.rb_cache.tables[i], cluster_index & (self.refcount_block_size - 1),
                             self.refcount_order)
        self.rb_cache.put(i)
        return val

    def in_same_refcount_block(self, a: int, b: int) -> bool:
        shift = self.cluster_bits + self.refcount_block_bits
        return a >> shift == b >> shift

    def alloc_refcount_block(self, cluster_index: int) -> tuple[int, int]:
        """alloc_refcount_block(): (0 or -EAGAIN, cache index or -1)."""
        ti = cluster_index >> self.refcount_block_bits
        if ti < self.refcount_table_size:
            rb = self.refcount_table[ti] & L.REFT_OFFSET_MASK
            if rb:
                if self.offset_into_cluster(rb):
                    self.signal_corruption(True, f"Refblock offset {rb:#x} unaligned (reftable index: {ti:#x})")
                return 0, self.cache_get(self.rb_cache, rb)
        self.cache_flush(self.l2_cache)
        new_block = self.alloc_clusters_noref(self.cluster_size, 1 << 63)
        if new_block == 0:
            self.signal_corruption(True, "Preventing invalid allocation of refcount block at offset 0")
        rbc = self.rb_cache
        if self.in_same_refcount_block(new_block, cluster_index << self.cluster_bits):
            i = self.cache_get(rbc, new_block, read=False)
            rbc.tables[i][:] = bytes(self.cluster_size)
            L.refcount_set(rbc.tables[i], (new_block >> self.cluster_bits) & (self.refcount_block_size - 1),
                           self.refcount_order, 1)
        else:
            r = self.update_refcount(new_block, self.cluster_size, 1, False, DISCARD_NEVER)
            if r < 0:
                return r, -1            # the inner update had to allocate: the caller retries
            self.cache_flush(rbc)
            i = self.cache_get(rbc, new_block, read=False)
            rbc.tables[i][:] = bytes(self.cluster_size)
        rbc.dirty[i] = True
        self.cache_flush(rbc)
        if ti < self.refcount_table_size:
            self.io("write", "alloc_refcount_block", f"refcount table entry {ti} -> {new_block:#x}",
                    self.refcount_table_offset + ti * 8, new_block.to_bytes(8, "big"),
                    kind="refcount-table")
            self.bdrv_flush("bdrv_pwrite_sync(refcount table entry)")
            self.refcount_table = self.refcount_table.with_entry(ti, new_block)
            self.max_refcount_table_index = max(self.max_refcount_table_index, ti)
            return -E.EAGAIN, i
        rbc.put(i)
        blocks_used = -(-max(cluster_index + 1, (new_block >> self.cluster_bits) + 1)
                        // self.refcount_block_size)
        meta_offset = blocks_used * self.refcount_block_size * self.cluster_size
        self.refcount_area(meta_offset, 0, False, ti, new_block)
        return -E.EAGAIN, self.cache_get(rbc, new_block)

    def refcount_area(self, start_offset: int, additional: int, exact: bool,
                      new_index: int, new_offset: int) -> int:
        """qcow2_refcount_area(): a new, bigger, self-describing refcount table at the end."""
        total = refcount_metadata_blocks(start_offset // self.cluster_size + additional,
                                         self.cluster_size, self.refcount_order, not exact)
        if total > L.QCOW_MAX_REFTABLE_SIZE:
            raise Qcow2Error(-E.EFBIG, "refcount table would exceed QCOW_MAX_REFTABLE_SIZE")
        area_index = (start_offset // self.cluster_size) // self.refcount_block_size
        table_size = total if exact else total + -(-total // 2)
        per = self.cluster_size // 8
        table_size = -(-table_size // per) * per
        table_clusters = table_size * 8 // self.cluster_size
        if table_size > L.QCOW_MAX_REFTABLE_SIZE:
            raise Qcow2Error(-E.EFBIG, "refcount table would exceed QCOW_MAX_REFTABLE_SIZE")
        new_table = [0] * table_size
        keep = min(self.max_refcount_table_index + 1, table_size)
        new_table[:keep] = self.refcount_table[:keep]
        if new_offset:
            new_table[new_index] = new_offset
        additional_blocks = sum(1 for i in range(area_index, total) if not new_table[i])
        table_offset = start_offset + additional_blocks * self.cluster_size
        end_offset = table_offset + table_clusters * self.cluster_size
        block_offset = start_offset
        rbc = self.rb_cache
        for i in range(area_index, total):
            if new_table[i]:
                ci = self.cache_get(rbc, new_table[i])
            else:
                ci = self.cache_get(rbc, block_offset, read=False)
                rbc.tables[ci][:] = bytes(self.cluster_size)
                rbc.dirty[ci] = True
                new_table[i] = block_offset
                block_offset += self.cluster_size
            first = i * self.refcount_block_size * self.cluster_size
            if first < end_offset:
                j = (start_offset - first) // self.cluster_size if first < start_offset else 0
                end_index = min((end_offset - first) // self.cluster_size, self.refcount_block_size)
                for k in range(j, end_index):
                    L.refcount_set(rbc.tables[ci], k, self.refcount_order, 1)
                rbc.dirty[ci] = True
            rbc.put(ci)
        self.cache_flush(rbc)
        raw = b"".join(e.to_bytes(8, "big") for e in new_table)
        self.io("write", "qcow2_refcount_area", f"new refcount table ({table_clusters} cluster(s))",
                table_offset, raw, kind="refcount-table")
        self.bdrv_flush("bdrv_pwrite_sync(new refcount table)")
        self.io("write", "qcow2_refcount_area", "header: refcount_table_offset + clusters",
                48, table_offset.to_bytes(8, "big") + table_clusters.to_bytes(4, "big"), kind="header")
        self.bdrv_flush("bdrv_pwrite_sync(header)")
        old_offset, old_size = self.refcount_table_offset, self.refcount_table_size
        self.refcount_table = FrozenTable(new_table)
        self.refcount_table_size = table_size
        self.refcount_table_offset = table_offset
        self.header.refcount_table_offset = table_offset
        self.header.refcount_table_clusters = table_clusters
        self.update_max_refcount_table_index()
        self.free_clusters(old_offset, old_size * 8, DISCARD_OTHER)
        return end_offset

    def update_refcount(self, offset: int, length: int, addend: int, decrease: bool,
                        dtype: int) -> int:
        """update_refcount(): 0, or -EAGAIN when a refcount block had to be allocated."""
        if length <= 0:
            return 0
        if decrease:
            self.cache_set_dependency(self.rb_cache, self.l2_cache)
        start = self.start_of_cluster(offset)
        last = self.start_of_cluster(offset + length - 1)
        rbc = self.rb_cache
        ci = -1
        old_ti = -1
        ret = 0
        cluster_offset = start
        try:
            while cluster_offset <= last:
                cluster_index = cluster_offset >> self.cluster_bits
                ti = cluster_index >> self.refcount_block_bits
                if ti != old_ti:
                    if ci >= 0:
                        rbc.put(ci)
                        ci = -1
                    r, ci = self.alloc_refcount_block(cluster_index)
                    if r == -E.EAGAIN:
                        if self.free_cluster_index > start >> self.cluster_bits:
                            self.free_cluster_index = start >> self.cluster_bits
                        ret = r
                        break
                old_ti = ti
                rbc.dirty[ci] = True
                bi = cluster_index & (self.refcount_block_size - 1)
                rc = L.refcount_get(rbc.tables[ci], bi, self.refcount_order)
                new = rc - addend if decrease else rc + addend
                if new < 0 or new > self.refcount_max:
                    ret = -E.EINVAL
                    break
                if new == 0 and cluster_index < self.free_cluster_index:
                    self.free_cluster_index = cluster_index
                L.refcount_set(rbc.tables[ci], bi, self.refcount_order, new)
                if new == 0:
                    t = rbc.is_table_offset(offset)
                    if t >= 0:
                        rbc.put(ci)
                        ci = -1
                        old_ti = -1
                        rbc.discard(t)
                    self.cache_discard_offset(self.l2_cache, offset)
                    if self.discard_passthrough[dtype]:
                        self.update_refcount_discard(cluster_offset, self.cluster_size)
                cluster_offset += self.cluster_size
        finally:
            if ci >= 0:
                rbc.put(ci)
        if not self.cache_discards:
            self.process_discards(ret)
        if ret < 0:
            if ret != -E.EAGAIN:
                self.update_refcount(offset, cluster_offset - offset, addend, not decrease, DISCARD_NEVER)
                raise Qcow2Error(ret, "refcount overflow or underflow")
            if cluster_offset > offset:
                self.update_refcount(offset, cluster_offset - offset, addend, not decrease, DISCARD_NEVER)
        return ret

    def update_refcount_discard(self, offset: int, length: int) -> None:
        for d in self.discards:
            new_start = min(offset, d[0])
            new_end = max(offset + length, d[0] + d[1])
            if new_end - new_start <= length + d[1]:
                d[0], d[1] = new_start, new_end - new_start
                found = d
                break
        else:
            found = [offset, length]
            self.discards.append(found)
        for p in list(self.discards):
            if p is found or p[0] > found[0] + found[1] or found[0] > p[0] + p[1]:
                continue
            self.discards.remove(p)
            found[0] = min(found[0], p[0])
            found[1] += p[1]

    def process_discards(self, ret: int) -> None:
        """qcow2_process_discards(): pass freed host ranges down as discards."""
        for off, n in self.discards:
            if ret >= 0:
                self.io("discard", "qcow2_process_discards", f"discard freed host range {off:#x}+{n:#x}",
                        off, length=n)
        self.discards = []

    def alloc_clusters_noref(self, size: int, max_: int) -> int:
        """alloc_clusters_noref(): first fit from free_cluster_index."""
        if self.cache_discards:
            self.process_discards(0)
        n = self.size_to_clusters(size)
        i = 0
        while i < n:
            idx = self.free_cluster_index
            self.free_cluster_index += 1
            if self.get_refcount(idx):
                i = 0
                continue
            i += 1
        if self.free_cluster_index > 0 and self.free_cluster_index - 1 > max_ >> self.cluster_bits:
            raise Qcow2Error(-E.EFBIG, "image would exceed the maximum cluster offset")
        return (self.free_cluster_index - n) << self.cluster_bits

    def alloc_clusters(self, size: int) -> int:
        """qcow2_alloc_clusters()."""
        while True:
            off = self.alloc_clusters_noref(size, L.QCOW_MAX_CLUSTER_OFFSET)
            if self.update_refcount(off, size, 1, False, DISCARD_NEVER) != -E.EAGAIN:
                return off

    def alloc_clusters_at(self, offset: int, nb_clusters: int) -> int:
        """qcow2_alloc_clusters_at(): how many clusters from offset could be taken."""
        if nb_clusters == 0:
            return 0
        while True:
            ci = offset >> self.cluster_bits
            i = 0
            while i < nb_clusters:
                if self.get_refcount(ci):
                    break
                ci += 1
                i += 1
            if self.update_refcount(offset, i << self.cluster_bits, 1, False, DISCARD_NEVER) != -E.EAGAIN:
                return i

    def free_clusters(self, offset: int, size: int, dtype: int) -> None:
        try:
            self.update_refcount(offset, size, 1, True, dtype)
        except Qcow2Error:
            pass    # qcow2_free_clusters only reports the failure

    def free_any_cluster(self, entry: int, dtype: int) -> None:
        t = L.cluster_type(entry)
        if t == L.COMPRESSED:
            host, csize = L.compressed_params(entry, self.cluster_bits)
            self.free_clusters(host, csize, dtype)
        elif t in (L.NORMAL, L.ZERO_ALLOC):
            off = entry & L.L2E_OFFSET_MASK
            if self.offset_into_cluster(off):
                self.signal_corruption(False, f"Cannot free unaligned cluster {off:#x}")
            else:
                self.free_clusters(off, self.cluster_size, dtype)

    def need_accurate_refcounts(self) -> bool:
        return not self.incompatible_features & L.INCOMPAT_DIRTY

    def write_caches(self) -> None:
        """qcow2_write_caches(): what a guest FLUSH writes (qcow2_co_flush_to_os)."""
        self.cache_write(self.l2_cache)
        if self.need_accurate_refcounts():
            self.cache_write(self.rb_cache)

    def flush_caches(self) -> None:
        self.write_caches()
        self.bdrv_flush("qcow2_flush_caches")

    def mark_dirty(self) -> None:
        """qcow2_mark_dirty(): 8-byte pwrite_sync of incompatible_features."""
        if self.incompatible_features & L.INCOMPAT_DIRTY:
            return
        val = self.incompatible_features | L.INCOMPAT_DIRTY
        self.io("write", "qcow2_mark_dirty", "header: incompatible_features |= dirty", 72,
                val.to_bytes(8, "big"), kind="header")
        self.bdrv_flush("bdrv_pwrite_sync(dirty bit)")
        self.incompatible_features = val
        self.header.incompatible_features = val

    def mark_clean(self) -> None:
        """qcow2_mark_clean(): flush the caches, rewrite the header without the dirty bit."""
        if self.incompatible_features & L.INCOMPAT_DIRTY:
            self.incompatible_features &= ~L.INCOMPAT_DIRTY
            self.flush_caches()
            self.update_header("qcow2_mark_clean")

    def inactivate(self) -> None:
        """qcow2_inactivate(): what closing the image does."""
        self.cache_flush(self.l2_cache)
        self.cache_flush(self.rb_cache)
        self.mark_clean()

    # -- L1/L2 (qcow2-cluster.c) ----------------------------------------------------------------------------
    def write_l1_entry(self, l1_index: int) -> None:
        """qcow2_write_l1_entry(): an aligned chunk of the L1 (8 bytes: request_alignment 1)."""
        off = self.l1_table_offset + 8 * l1_index
        self.pre_write_overlap_check(OL_ACTIVE_L1, off, 8)
        self.io("write", "qcow2_write_l1_entry", f"L1[{l1_index}] = {self.l1_table[l1_index]:#x}",
                off, self.l1_table[l1_index].to_bytes(8, "big"), kind="l1")
        self.bdrv_flush("bdrv_pwrite_sync(L1 entry)")

    def l2_allocate(self, l1_index: int) -> None:
        """l2_allocate(): a new L2 table (zeroed, or a copy of the shared old one)."""
        old = self.l1_table[l1_index]
        l2_offset = self.alloc_clusters(self.l2_size * 8)
        if l2_offset == 0:
            self.signal_corruption(True, "Preventing invalid allocation of L2 table at offset 0")
        self.cache_flush(self.rb_cache)
        slice_bytes = self.l2_slice_size * 8
        for sl in range(self.cluster_size // slice_bytes):
            i = self.cache_get(self.l2_cache, l2_offset + sl * slice_bytes, read=False)
            if not old & L.L1E_OFFSET_MASK:
                self.l2_cache.tables[i][:] = bytes(slice_bytes)
            else:
                j = self.cache_get(self.l2_cache, (old & L.L1E_OFFSET_MASK) + sl * slice_bytes)
                self.l2_cache.tables[i][:] = self.l2_cache.tables[j]
                self.l2_cache.put(j)
            self.l2_cache.dirty[i] = True
            self.l2_cache.put(i)
        self.cache_flush(self.l2_cache)
        self.l1_table[l1_index] = l2_offset | L.QCOW_OFLAG_COPIED
        self.write_l1_entry(l1_index)

    def l2_load(self, offset: int, l2_offset: int) -> int:
        start = 8 * (((offset >> self.cluster_bits) & (self.l2_size - 1)) - self.l2_slice_index(offset))
        return self.cache_get(self.l2_cache, l2_offset + start)

    def get_cluster_table(self, offset: int) -> tuple[int, int]:
        """get_cluster_table(): the L2 slice for offset, allocating/COWing the L2 table."""
        l1i = self.l1_index(offset)
        if l1i >= self.l1_size:
            raise Qcow2Error(-E.EIO, f"guest offset {offset:#x} beyond the L1 table (L1 growth is not modelled)")
        l2_offset = self.l1_table[l1i] & L.L1E_OFFSET_MASK
        if self.offset_into_cluster(l2_offset):
            self.signal_corruption(True, f"L2 table offset {l2_offset:#x} unaligned (L1 index: {l1i:#x})")
        if not self.l1_table[l1i] & L.QCOW_OFLAG_COPIED:
            self.l2_allocate(l1i)
            if l2_offset:
                self.free_clusters(l2_offset, self.l2_size * 8, DISCARD_OTHER)
            l2_offset = self.l1_table[l1i] & L.L1E_OFFSET_MASK
        return self.l2_load(offset, l2_offset), self.l2_slice_index(offset)

    def cluster_needs_new_alloc(self, entry: int) -> bool:
        t = L.cluster_type(entry)
        if t in (L.NORMAL, L.ZERO_ALLOC) and entry & L.QCOW_OFLAG_COPIED:
            return False
        return True

    def count_single_write_clusters(self, n: int, table, l2i: int, new_alloc: bool) -> int:
        expected = self.get_entry(table, l2i) & L.L2E_OFFSET_MASK
        i = 0
        while i < n:
            e = self.get_entry(table, l2i + i)
            if self.cluster_needs_new_alloc(e) != new_alloc:
                break
            if not new_alloc:
                if expected != e & L.L2E_OFFSET_MASK:
                    break
                expected += self.cluster_size
            i += 1
        return i

    def calculate_l2_meta(self, host_cluster_offset: int, guest_offset: int, nbytes: int,
                          table, l2i0: int, keep_old: bool, metas: list) -> None:
        """calculate_l2_meta() for standard (non-extended) L2 entries."""
        cow_start_to = self.offset_into_cluster(guest_offset)
        cow_end_from = cow_start_to + nbytes
        nb_clusters = self.size_to_clusters(cow_end_from)
        skip_cow = keep_old
        for i in range(nb_clusters):
            if skip_cow and L.cluster_type(self.get_entry(table, l2i0 + i)) != L.NORMAL:
                skip_cow = False
        if skip_cow:
            return
        t_first = L.cluster_type(self.get_entry(table, l2i0))
        t_last = L.cluster_type(self.get_entry(table, l2i0 + nb_clusters - 1))
        if not keep_old:
            cow_start_from = 0 if t_first in (L.COMPRESSED, L.NORMAL, L.ZERO_ALLOC) else \
                cow_start_to & ~(self.cluster_size - 1)
            cow_end_to = -(-cow_end_from // self.cluster_size) * self.cluster_size
        else:
            cow_start_from = cow_start_to if t_first == L.NORMAL else 0
            cow_end_to = cow_end_from if t_last == L.NORMAL else \
                -(-cow_end_from // self.cluster_size) * self.cluster_size
        metas.append({"offset": self.start_of_cluster(guest_offset), "alloc_offset": host_cluster_offset,
                      "nb_clusters": nb_clusters, "keep_old": keep_old,
                      "cow_start": [cow_start_from, cow_start_to - cow_start_from],
                      "cow_end": [cow_end_from, cow_end_to - cow_end_from], "skip_cow": False})

    def handle_copied(self, guest_offset: int, host_offset: int, nbytes: int, metas: list):
        """handle_copied(): clusters that can be overwritten in place. -> (ret, host, bytes)."""
        n = self.size_to_clusters(self.offset_into_cluster(guest_offset) + nbytes)
        n = min(n, self.l2_slice_size - self.l2_slice_index(guest_offset),
                BDRV_REQUEST_MAX_BYTES >> self.cluster_bits)
        ci, l2i = self.get_cluster_table(guest_offset)
        table = self.l2_cache.tables[ci]
        try:
            e = self.get_entry(table, l2i)
            cluster_offset = e & L.L2E_OFFSET_MASK
            if self.cluster_needs_new_alloc(e):
                return 0, host_offset, nbytes
            if self.offset_into_cluster(cluster_offset):
                kind = "Preallocated zero" if e & L.QCOW_OFLAG_ZERO else "Data"
                self.signal_corruption(True, f"{kind} cluster offset {cluster_offset:#x} unaligned "
                                       f"(guest offset: {guest_offset:#x})")
            if host_offset != INV and cluster_offset != host_offset:
                return 0, host_offset, 0
            keep = self.count_single_write_clusters(n, table, l2i, False)
            nbytes = min(nbytes, keep * self.cluster_size - self.offset_into_cluster(guest_offset))
            self.calculate_l2_meta(cluster_offset, guest_offset, nbytes, table, l2i, True, metas)
            return 1, cluster_offset + self.offset_into_cluster(guest_offset), nbytes
        finally:
            self.l2_cache.put(ci)

    def handle_alloc(self, guest_offset: int, host_offset: int, nbytes: int, metas: list):
        """handle_alloc(): allocate new clusters for what cannot be written in place."""
        n = self.size_to_clusters(self.offset_into_cluster(guest_offset) + nbytes)
        n = min(n, self.l2_slice_size - self.l2_slice_index(guest_offset),
                BDRV_REQUEST_MAX_BYTES >> self.cluster_bits)
        ci, l2i = self.get_cluster_table(guest_offset)
        try:
            table = self.l2_cache.tables[ci]
            n = self.count_single_write_clusters(n, table, l2i, True)
            if host_offset == INV:
                alloc = self.alloc_clusters(n * self.cluster_size)
            else:
                alloc = self.start_of_cluster(host_offset)
                n = self.alloc_clusters_at(alloc, n)
            if n == 0:
                return 0, host_offset, 0
            requested = nbytes + self.offset_into_cluster(guest_offset)
            avail = n << self.cluster_bits
            nb = min(requested, avail)
            host = alloc + self.offset_into_cluster(guest_offset)
            nbytes = min(nbytes, nb - self.offset_into_cluster(guest_offset))
            table = self.l2_cache.tables[ci]
            self.calculate_l2_meta(alloc, guest_offset, nbytes, table, l2i, False, metas)
            return 1, host, nbytes
        finally:
            self.l2_cache.put(ci)

    def alloc_host_offset(self, offset: int, nbytes: int) -> tuple[int, int, list]:
        """qcow2_alloc_host_offset(): the longest host-contiguous run for [offset, +nbytes)."""
        start, remaining = offset, nbytes
        cluster_offset = INV
        host_offset = INV
        cur = 0
        metas: list = []
        while True:
            if host_offset == INV and cluster_offset != INV:
                host_offset = cluster_offset
            start += cur
            remaining -= cur
            if cluster_offset != INV:
                cluster_offset += cur
            if remaining == 0:
                break
            cur = remaining
            ret, cluster_offset, cur = self.handle_copied(start, cluster_offset, cur, metas)
            if ret:
                continue
            if cur == 0:
                break
            ret, cluster_offset, cur = self.handle_alloc(start, cluster_offset, cur, metas)
            if ret:
                continue
            break
        return host_offset, nbytes - remaining, metas

    def alloc_cluster_link_l2(self, m: dict) -> None:
        """qcow2_alloc_cluster_link_l2() after perform_cow: point the L2 entries at the new clusters."""
        if self.use_lazy_refcounts:
            self.mark_dirty()
        if self.need_accurate_refcounts():
            self.cache_set_dependency(self.l2_cache, self.rb_cache)
        ci, l2i = self.get_cluster_table(m["offset"])
        c = self.l2_cache
        c.dirty[ci] = True
        old = []
        for i in range(m["nb_clusters"]):
            e = self.get_entry(c.tables[ci], l2i + i)
            if e:
                old.append(e)
            self.set_entry(c.tables[ci], l2i + i,
                           (m["alloc_offset"] + (i << self.cluster_bits)) | L.QCOW_OFLAG_COPIED)
        c.put(ci)
        if not m["keep_old"]:
            for e in old:
                self.free_any_cluster(e, DISCARD_NEVER)

    def alloc_cluster_abort(self, m: dict) -> None:
        if not m["keep_old"]:
            self.free_clusters(m["alloc_offset"], m["nb_clusters"] << self.cluster_bits, DISCARD_NEVER)

    # -- reads ------------------------------------------------------------------------------------------
    def get_host_offset(self, offset: int, nbytes: int) -> tuple[str, int, int, int]:
        """qcow2_get_host_offset(): (type, host offset or entry, bytes, l2 entry)."""
        oic = self.offset_into_cluster(offset)
        needed = nbytes + oic
        avail = (self.l2_slice_size - self.l2_slice_index(offset)) << self.cluster_bits
        needed = min(needed, avail)
        l1i = self.l1_index(offset)
        if l1i >= self.l1_size or not self.l1_table[l1i] & L.L1E_OFFSET_MASK:
            return L.UNALLOCATED, 0, min(avail, needed) - oic, 0
        l2_offset = self.l1_table[l1i] & L.L1E_OFFSET_MASK
        if self.offset_into_cluster(l2_offset):
            self.signal_corruption(True, f"L2 table offset {l2_offset:#x} unaligned (L1 index: {l1i:#x})")
        ci = self.l2_load(offset, l2_offset)
        try:
            table = self.l2_cache.tables[ci]
            l2i = self.l2_slice_index(offset)
            e = self.get_entry(table, l2i)
            t = L.cluster_type(e)
            if self.version < 3 and t in (L.ZERO_PLAIN, L.ZERO_ALLOC):
                self.signal_corruption(True, f"Zero cluster entry found in pre-v3 image (L2 offset: "
                                       f"{l2_offset:#x}, L2 index: {l2i:#x})")
            host = 0
            if t == L.COMPRESSED:
                host = e
            elif t in (L.ZERO_ALLOC, L.NORMAL):
                hc = e & L.L2E_OFFSET_MASK
                host = hc + oic
                if self.offset_into_cluster(hc):
                    self.signal_corruption(True, f"Cluster allocation offset {hc:#x} unaligned (L2 offset: "
                                           f"{l2_offset:#x}, L2 index: {l2i:#x})")
            count = 0
            nb = self.size_to_clusters(needed)
            expected = e & L.L2E_OFFSET_MASK
            for i in range(nb):
                ei = self.get_entry(table, l2i + i)
                ti = L.cluster_type(ei)
                if i == 0:
                    count = 1
                    if t == L.COMPRESSED:
                        break
                    continue
                if ti != t:
                    break
                if t in (L.NORMAL, L.ZERO_ALLOC):
                    expected += self.cluster_size
                    if expected != ei & L.L2E_OFFSET_MASK:
                        break
                count += 1
            got = min(count << self.cluster_bits, needed)
            return t, host, got - oic, e
        finally:
            self.l2_cache.put(ci)

    def is_zero_fast(self, offset: int, nbytes: int) -> bool:
        """bdrv_co_is_zero_fast() over this node: zero clusters, or unallocated without data below."""
        end = min(offset + nbytes, self.size)
        while offset < end:
            t, _h, n, _e = self.get_host_offset(offset, end - offset)
            if t in (L.ZERO_PLAIN, L.ZERO_ALLOC):
                pass
            elif t == L.UNALLOCATED:
                if self.backing is not None and offset < self.backing.size:
                    return False
            else:
                return False
            offset += max(n, 1)
        return True

    # -- discard and write-zeroes ----------------------------------------------------------------------------
    def _each_l2_slice(self, offset: int, nbytes: int, update) -> None:
        """The loop of qcow2_cluster_discard / qcow2_subcluster_zeroize: one L2 slice at a time,
        update(old entry) -> (new entry, free the old cluster?), freed host ranges discarded."""
        n = self.size_to_clusters(nbytes)
        self.cache_discards = True
        try:
            while n > 0:
                ci, l2i = self.get_cluster_table(offset)
                c = self.l2_cache
                cnt = min(n, self.l2_slice_size - l2i)
                try:
                    for i in range(cnt):
                        old = self.get_entry(c.tables[ci], l2i + i)
                        new, free_type = update(old)
                        if new == old:
                            continue
                        c.dirty[ci] = True
                        self.set_entry(c.tables[ci], l2i + i, new)
                        if free_type is not None:
                            self.free_any_cluster(old, free_type)
                finally:
                    c.put(ci)
                n -= cnt
                offset += cnt * self.cluster_size
        finally:
            self.cache_discards = False
        self.process_discards(0)

    def cluster_discard(self, offset: int, nbytes: int, dtype: int, full: bool) -> None:
        """qcow2_cluster_discard() -> discard_in_l2_slice()."""
        def update(old: int):
            if full:
                return 0, dtype
            if self.backing is not None or L.cluster_type(old) not in (L.UNALLOCATED, L.ZERO_PLAIN):
                return (L.QCOW_OFLAG_ZERO if self.version >= 3 else 0), dtype
            return old, dtype
        self._each_l2_slice(offset, nbytes, update)

    def subcluster_zeroize(self, offset: int, nbytes: int, flags: int) -> None:
        """qcow2_subcluster_zeroize() -> zero_in_l2_slice() (no subclusters)."""
        if self.version < 3:
            if self.backing is None:
                return self.cluster_discard(offset, nbytes, DISCARD_REQUEST, False)
            raise Qcow2Error(-E.ENOTSUP)
        def update(old: int):
            t = L.cluster_type(old)
            unmap = t == L.COMPRESSED or (bool(flags & BDRV_REQ_MAY_UNMAP) and
                                          t in (L.NORMAL, L.ZERO_ALLOC, L.COMPRESSED))
            return (0 if unmap else old) | L.QCOW_OFLAG_ZERO, DISCARD_REQUEST if unmap else None
        self._each_l2_slice(offset, nbytes, update)
