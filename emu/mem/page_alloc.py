"""The guest kernel's memory: a first-fit page allocator and a kmalloc slab on top of it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..trimmed import trimmed, untrimmed
from .guest_memory import PAGE_SHIFT, PAGE_SIZE

KMALLOC_CLASSES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)


@dataclass
class PageAllocator:
    """Page frames from `start` to the end of RAM; used[] is one byte per page (plain data)."""
    start: int
    size: int
    used: bytearray = field(default_factory=bytearray)
    slab_free: dict = field(default_factory=dict)    # class size -> [gpa] (LIFO, like SLUB)
    slab_objs: dict = field(default_factory=dict)    # gpa -> class size (live kmalloc objects)
    large: dict = field(default_factory=dict)        # gpa -> npages (kmalloc_large / alloc_pages)

    def __post_init__(self) -> None:
        if not self.used:
            self.used = bytearray(self.size >> PAGE_SHIFT)
            self.used[:self.start >> PAGE_SHIFT] = b"\x01" * (self.start >> PAGE_SHIFT)

    def __getstate__(self) -> dict:
        # Checkpoints pickle this every interval: used[] (16 KiB for 64 MiB of RAM) is free
        # after the first-fit allocations, so it goes without its trailing zeros (~30 bytes
        # on the raw benchmark machine, whose state's pickle went from 29 to 13 KiB).
        return {**self.__dict__, "used": trimmed(self.used)}

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d, used=untrimmed(d["used"]))

    def alloc_pages(self, npages: int) -> int | None:
        """First fit: the lowest run of npages free frames, or None (alloc_pages_exact)."""
        pos = self.used.find(bytes(npages))
        if pos < 0:
            return None
        self.used[pos:pos + npages] = b"\x01" * npages
        gpa = pos << PAGE_SHIFT
        self.large[gpa] = npages
        return gpa

    def free_pages(self, gpa: int) -> None:
        npages = self.large.pop(gpa)
        pos = gpa >> PAGE_SHIFT
        self.used[pos:pos + npages] = bytes(npages)

    def free_page_count(self) -> int:
        return self.used.count(0)

    def kmalloc(self, size: int) -> int | None:
        """mm/slub.c kmalloc: the smallest size class that fits; LIFO reuse of freed objects."""
        cls = next((c for c in KMALLOC_CLASSES if c >= size), None)
        if cls is None:
            return self.alloc_pages((size + PAGE_SIZE - 1) >> PAGE_SHIFT)
        free = self.slab_free.setdefault(cls, [])
        if not free:
            page = self.alloc_pages(1)
            if page is None:
                return None
            del self.large[page]              # the page now belongs to the slab
            n = PAGE_SIZE // cls
            free.extend(page + cls * i for i in range(n - 1, -1, -1))
        gpa = free.pop()
        self.slab_objs[gpa] = cls
        return gpa

    def kfree(self, gpa: int) -> None:
        cls = self.slab_objs.pop(gpa, None)
        if cls is None:
            self.free_pages(gpa)
            return
        self.slab_free[cls].append(gpa)

    def state(self) -> dict:
        return {"start": self.start, "used": self.used.hex(),
                "slab_free": {str(k): list(v) for k, v in sorted(self.slab_free.items())},
                "slab_objs": sorted(self.slab_objs.items()),
                "large": sorted(self.large.items())}
