"""Guest-physical RAM: one bytearray, little-endian accessors, write logging, page digests.

Reverse execution (emu.debug.timeline) sets `undo` to a dict: from then on every write first
keeps the old content of each 4 KiB page it is about to change, once per page per dict
(undo[page number] = bytes of the page), and `restore_pages` puts such pages back.
"""
from __future__ import annotations

import hashlib
import struct

from ..errors import EmuError
from ..sim.steps import EffectLog

PAGE_SIZE = 4096
PAGE_SHIFT = 12

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _page_hash(data) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class GuestMemory:
    """RAM at guest-physical [0, size). Every write is logged with its old and new bytes."""

    # slots: the compiled engine reads them at their offsets; __dict__ holds the compiled
    # accessors emu_fast binds to an instance (and anything else a caller attaches)
    __slots__ = ("size", "ram", "log", "_hashes", "_dirty", "undo", "__dict__", "__weakref__")

    def __init__(self, size: int, log: EffectLog) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise EmuError(f"guest RAM size must be a positive multiple of {PAGE_SIZE}")
        self.size = size
        self.ram = bytearray(size)
        self.log = log
        npages = size >> PAGE_SHIFT
        zero = _page_hash(bytes(PAGE_SIZE))
        self._hashes = bytearray(zero * npages)     # 16 bytes per page
        self._dirty = bytearray(npages)             # 1 = page hash is stale
        self.undo: dict | None = None               # page number -> old bytes (see module doc)

    # -- mapping (dma_memory_map / address_space_cache_init) -----------------------
    def is_mapped(self, gpa: int, length: int) -> bool:
        """True when [gpa, gpa+length) lies entirely in RAM."""
        return 0 <= gpa and length >= 0 and gpa + length <= self.size

    # -- reads ---------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        if not self.is_mapped(gpa, length):
            raise EmuError(f"guest read outside RAM: {gpa:#x}+{length}")
        return bytes(self.ram[gpa:gpa + length])

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack_from(self.ram, gpa)[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack_from(self.ram, gpa)[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack_from(self.ram, gpa)[0]

    # -- writes --------------------------------------------------------------------
    def write(self, gpa: int, data: bytes) -> None:
        n = len(data)
        if not self.is_mapped(gpa, n):
            raise EmuError(f"guest write outside RAM: {gpa:#x}+{n}")
        if n == 0:
            return
        undo = self.undo
        if undo is not None:
            p = gpa >> PAGE_SHIFT
            last = (gpa + n - 1) >> PAGE_SHIFT
            while True:
                if p not in undo:
                    undo[p] = bytes(self.ram[p << PAGE_SHIFT:(p + 1) << PAGE_SHIFT])
                if p == last:
                    break
                p += 1
        old = bytes(self.ram[gpa:gpa + n])
        self.ram[gpa:gpa + n] = data
        self._mark(gpa, n)
        self.log.add(("ram", gpa, old, bytes(data)))

    def write_u16(self, gpa: int, val: int) -> None:
        self.write(gpa, _U16.pack(val & 0xFFFF))

    def write_u32(self, gpa: int, val: int) -> None:
        self.write(gpa, _U32.pack(val & 0xFFFFFFFF))

    def write_u64(self, gpa: int, val: int) -> None:
        self.write(gpa, _U64.pack(val & 0xFFFFFFFFFFFFFFFF))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * length)

    def _mark(self, gpa: int, n: int) -> None:
        first = gpa >> PAGE_SHIFT
        last = (gpa + n - 1) >> PAGE_SHIFT
        if first == last:
            self._dirty[first] = 1
        else:
            self._dirty[first:last + 1] = b"\x01" * (last - first + 1)

    def restore_pages(self, pages: dict) -> None:
        """Put whole pages back ({page number: 4096 bytes}): not a guest write, so nothing is
        logged and nothing is recorded in `undo`; the pages' digest entries go stale."""
        ram = self.ram
        dirty = self._dirty
        for p, data in pages.items():
            if len(data) != PAGE_SIZE or not 0 <= p < len(dirty):
                raise EmuError(f"restore_pages: bad page {p} ({len(data)} bytes)")
            ram[p << PAGE_SHIFT:(p + 1) << PAGE_SHIFT] = data
            dirty[p] = 1

    # -- digest --------------------------------------------------------------------
    def digest(self) -> bytes:
        """A hash of all of RAM, recomputing only the pages written since the last call."""
        dirty = self._dirty
        pos = dirty.find(1)
        ram = memoryview(self.ram)
        while pos != -1:
            off = pos << PAGE_SHIFT
            self._hashes[pos * 16:pos * 16 + 16] = _page_hash(ram[off:off + PAGE_SIZE])
            dirty[pos] = 0
            pos = dirty.find(1, pos + 1)
        return hashlib.sha256(self._hashes).digest()
