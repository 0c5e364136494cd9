"""QEMU block/qcow2-cache.c: the L2-table and refcount-block caches, as plain data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ...trimmed import trimmed, untrimmed


@dataclass
class Cache:
    """Qcow2Cache: `size` tables of `table_size` bytes, LRU replacement, dirty tracking."""
    name: str                      # "l2" or "refcount"
    size: int
    table_size: int
    offsets: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    dirty: list = field(default_factory=list)
    ref: list = field(default_factory=list)
    lru: list = field(default_factory=list)
    lru_counter: int = 0
    depends: str = ""              # name of the cache this one may only be written after
    depends_on_flush: bool = False

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets = [0] * self.size
            self.tables = [None] * self.size      # allocated on first use (QEMU: untouched pages)
            self.dirty = [False] * self.size
            self.ref = [0] * self.size
            self.lru = [0] * self.size

    def __getstate__(self) -> dict:
        # Checkpoints pickle this every interval: a cached table is a cluster (64 KiB by
        # default) whose entries fill from its start, so each goes without its trailing
        # zeros (the refcount block and L2 table of the qcow2 benchmark: 64 KiB -> 0.2 and
        # 8 KiB, its state's pickle 263 -> 124 KiB for zlib to compress).  Tables are
        # referred to only from here (the engine takes c.tables[i] anew in each function).
        return {**self.__dict__, "tables": [trimmed(t) for t in self.tables]}

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d, tables=[untrimmed(t) for t in d["tables"]])

    def lookup(self, offset: int) -> tuple[int, int]:
        """qcow2_cache_do_get's search: (index caching offset, -1) or (-1, entry to replace).

        The replacement is QEMU's: the unreferenced entry with the smallest LRU counter, an
        unused entry (LRU 0) first.  Only which unused slot is taken can differ from QEMU's
        linear probe, and nothing outside the cache can observe that."""
        try:
            return self.offsets.index(offset), -1
        except ValueError:
            return -1, self._victim()

    def _victim(self) -> int:
        start = 0
        while True:
            try:
                i = self.offsets.index(0, start)
            except ValueError:
                break
            if self.ref[i] == 0:
                return i
            start = i + 1
        best, best_i = None, -1
        for i, (lru, ref) in enumerate(zip(self.lru, self.ref)):
            if ref == 0 and (best is None or lru < best):
                best, best_i = lru, i
        return best_i

    def put(self, i: int) -> None:
        """qcow2_cache_put()."""
        self.ref[i] -= 1
        if self.ref[i] == 0:
            self.lru_counter += 1
            self.lru[i] = self.lru_counter

    def is_table_offset(self, offset: int) -> int:
        """qcow2_cache_is_table_offset(): the index caching offset, or -1."""
        for i, off in enumerate(self.offsets):
            if off == offset:
                return i
        return -1

    def discard(self, i: int) -> None:
        """qcow2_cache_discard()."""
        self.offsets[i] = 0
        self.lru[i] = 0
        self.dirty[i] = False

    def table(self, i: int) -> bytearray:
        """The buffer of entry i (allocated the first time it is used)."""
        if self.tables[i] is None:
            self.tables[i] = bytearray(self.table_size)
        return self.tables[i]

    def state(self) -> dict:
        return {"name": self.name, "size": self.size, "table_size": self.table_size,
                "entries": [[i, self.offsets[i], self.dirty[i], self.ref[i], self.lru[i],
                             hashlib.blake2b(self.tables[i], digest_size=16).hexdigest()]
                            for i in range(self.size) if self.offsets[i] or self.lru[i]],
                "lru_counter": self.lru_counter, "depends": self.depends,
                "depends_on_flush": self.depends_on_flush}
