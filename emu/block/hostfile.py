"""The image file on the host: real pread/pwrite/fdatasync, optionally through a private overlay.

In overlay mode (the default, like QEMU's -snapshot) the image is opened read-only and every
write goes to a sparse temporary file with a copy-on-write bitmap of 4 KiB blocks; the
temporary file is deleted on close.  In write mode the image itself is opened read-write.

Reverse execution (emu.debug.timeline) sets `undo` to a dict: from then on pwrite and
truncate first keep the old content of each 4 KiB block they are about to change, once per
block per dict (undo[block number] = 4096 bytes, or None for a block that lay wholly at or
past the logical size), and the first of them keeps the logical size in `undo_size`.
`restore_blocks` puts such blocks and the size back.  A HostFile is never copied:
copy.deepcopy returns the object itself, so copies of a format driver share it.

Overlay invariant (write_zeroes grows the size without writing because of it; the tests
check it after every operation): every byte at or past the logical size `size` reads as
zero.  `base_size` is never above `size` (truncate lowers it with the size, nothing raises
it), so a block past the size that is not in `cow` lies past `base_size` and pread gives
zeros for it.  Blocks in `cow` wholly past the size are dropped by truncate; in the overlay
file nothing but zeros lies past the size: truncate cuts it there, pwrite never writes past
the size it sets, and _cow_prepare copies a base block only when it starts below
`base_size` -- the block straddling `base_size` is either the base file's last one (read
zero-padded) or, after a shrink, already in `cow`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile

from ..errors import ImageError

BLOCK = 4096
CHUNK = 65536           # digest granularity


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the ranges of fd that hold data (SEEK_DATA/SEEK_HOLE; all of it if unsupported)."""
    out = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, min(end, size)))
            pos = end
    except (OSError, AttributeError):
        return [(0, size)] if size else []
    return out


class HostFile:
    """One image file as the protocol layer (QEMU block/file-posix.c) sees it."""

    def __init__(self, path: str, mode: str = "overlay", overlay_dir: str | None = None) -> None:
        if mode not in ("overlay", "write", "read"):
            raise ValueError(mode)
        self.path = path
        self.mode = mode
        try:
            self.fd = os.open(path, os.O_RDWR if mode == "write" else os.O_RDONLY)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an image") from None
        except PermissionError:
            raise ImageError(f"{path}: permission denied"
                             + (" (--write needs a writable image)" if mode == "write" else "")) from None
        except OSError as e:
            raise ImageError(f"{path}: cannot open: {e.strerror}") from None
        st = os.fstat(self.fd)
        if not (os.path.stat.S_ISREG(st.st_mode) or os.path.stat.S_ISBLK(st.st_mode)):
            os.close(self.fd)
            raise ImageError(f"{path}: not a regular file")
        self.base_size = st.st_size
        self.size = st.st_size
        self.ov_fd = -1
        self.ov_path = ""
        self.cow: set = set()          # overlay blocks (4 KiB) that live in the temporary file
        if mode == "overlay":
            d = overlay_dir or tempfile.gettempdir()
            fd, self.ov_path = tempfile.mkstemp(prefix="vblkdbg-", suffix=".overlay", dir=d)
            self.ov_fd = fd
            os.unlink(self.ov_path)          # dropped at exit whatever happens
        self._hashes: dict | None = None
        self._dirty: set = set()
        self.syncs = 0
        self.writes = 0
        self.undo: dict | None = None        # block -> old bytes or None (see module doc)
        self.undo_size: int | None = None    # logical size when `undo` got its first entry

    def __deepcopy__(self, memo) -> HostFile:
        return self                          # one real file: copies share it

    # -- raw access ------------------------------------------------------------------
    def _pread_fd(self, fd: int, off: int, n: int) -> bytes:
        data = os.pread(fd, n, off)
        if len(data) < n:
            data += bytes(n - len(data))
        return data

    def pread(self, off: int, n: int) -> bytes:
        """Logical content of [off, off+n); bytes past EOF read as zero (file-posix pads)."""
        if n <= 0:
            return b""
        if self.mode != "overlay":
            return self._pread_fd(self.fd, off, n)
        out = bytearray()
        pos, end = off, off + n
        cow = self.cow
        while pos < end:
            blk = pos // BLOCK
            in_ov = blk in cow
            run_end = min(end, (blk + 1) * BLOCK)
            while run_end < end and ((run_end // BLOCK) in cow) == in_ov:
                run_end = min(end, (run_end // BLOCK + 1) * BLOCK)
            if in_ov:
                out += self._pread_fd(self.ov_fd, pos, run_end - pos)
            else:
                # the base file's bytes count up to base_size only (a shrink lowers it below
                # the file's own end): the rest of the run reads as zero
                mid = max(pos, min(run_end, self.base_size))
                if mid > pos:
                    out += self._pread_fd(self.fd, pos, mid - pos)
                out += bytes(run_end - mid)
            pos = run_end
        return bytes(out)

    def _begin_write(self, off: int, n: int) -> None:
        """What a write does before the bytes change: the digest's dirty chunks, `writes`,
        EBADF in read mode, the undo journal's old blocks."""
        self._touch(off, n)
        self.writes += 1
        if self.mode == "read":
            raise OSError(errno.EBADF, "image opened read-only")
        if self.undo is not None:
            self._keep_old(off, off + n)

    def pwrite(self, off: int, data: bytes) -> None:
        n = len(data)
        if n == 0:
            return
        self._begin_write(off, n)
        if self.mode == "write":
            os.pwrite(self.fd, data, off)
        else:
            self._cow_prepare(off, n)
            os.pwrite(self.ov_fd, data, off)
        self.size = max(self.size, off + n)

    def write_zeroes(self, off: int, n: int) -> None:
        """file-posix handle_aiocb_write_zeroes: fallocate(FALLOC_FL_ZERO_RANGE), or past EOF
        fallocate(fd, 0, ...): [off, off+n) reads as zero, the size becomes max(size, off+n).

        Logically exactly pwrite(off, bytes(n)) -- `writes` + 1, the digest's dirty chunks,
        the undo journal, EBADF in read mode.  In overlay mode only the part before the
        logical end is written (zeros, as pwrite would); the part at or past `size` already
        reads as zero (the module doc's invariant), so growing the size is enough.  In write
        mode the user's file gets the zeros written as pwrite writes them (QEMU would
        fallocate there, leaving unwritten extents that SEEK_DATA and so `qemu-img map`
        report as holes; the user's file keeps the allocation it always had here)."""
        if n <= 0:
            return
        self._begin_write(off, n)
        end = off + n
        if self.mode == "write":
            os.pwrite(self.fd, bytes(n), off)
        elif self.size > off:
            inside = min(end, self.size) - off
            self._cow_prepare(off, inside)
            os.pwrite(self.ov_fd, bytes(inside), off)
        self.size = max(self.size, end)

    def _cow_prepare(self, off: int, n: int) -> None:
        end = off + n
        first, last = off // BLOCK, (end - 1) // BLOCK
        for blk in (first, last):
            if blk in self.cow:
                continue
            bstart = blk * BLOCK
            partial = off > bstart or end < bstart + BLOCK
            if partial and bstart < self.base_size:
                os.pwrite(self.ov_fd, self._pread_fd(self.fd, bstart, BLOCK), bstart)
        self.cow.update(range(first, last + 1))

    def fdatasync(self) -> None:
        self.syncs += 1
        os.fdatasync(self.ov_fd if self.mode == "overlay" else self.fd)

    def truncate(self, size: int) -> None:
        """ftruncate(): grow or shrink the logical file."""
        if self.undo is not None and self.mode != "read":
            self._keep_old(size, self.size)    # growing keeps only the size (see _keep_old)
        self._touch(min(size, self.size), abs(size - self.size) or 1)
        if self.mode == "write":
            os.ftruncate(self.fd, size)
        elif self.mode == "overlay":
            if size < self.size and size % BLOCK:
                self._cow_prepare(size - size % BLOCK, size % BLOCK)
            os.ftruncate(self.ov_fd, max(size, 0))
            self.cow = {b for b in self.cow if b * BLOCK < size}
            self.base_size = min(self.base_size, size)
        self.size = size

    # -- undo (reverse execution) ------------------------------------------------------
    def _keep_old(self, start: int, end: int) -> None:
        """Record in `undo` the blocks of [start, end) not recorded yet, before they change.

        Blocks wholly at or past `undo_size` (the size when recording began) are recorded as
        None: restoring the size cuts them off, so their bytes need not be kept (a long range
        of them, like a file growing, is not even marked)."""
        undo = self.undo
        if self.undo_size is None:
            self.undo_size = self.size
        if end <= start:
            return
        limit = self.undo_size
        first = start // BLOCK
        last = (end - 1) // BLOCK
        kept_last = min(last, (limit - 1) // BLOCK)       # last block holding old bytes
        b = first
        while b <= kept_last:
            if b in undo:
                b += 1
                continue
            run = b + 1                     # read a run of unrecorded blocks in one pread
            while run <= kept_last and run not in undo:
                run += 1
            data = self.pread(b * BLOCK, (run - b) * BLOCK)
            for i in range(b, run):
                undo[i] = data[(i - b) * BLOCK:(i - b + 1) * BLOCK]
            b = run
        past = max(first, kept_last + 1)
        if last - past < 64:
            for b in range(past, last + 1):
                undo.setdefault(b, None)

    def restore_blocks(self, blocks: dict, size: int) -> None:
        """Write old blocks back ({block: 4096 bytes or None}) and set the logical size.

        Goes through pwrite and truncate like any write (so overlay mode keeps the image
        untouched and write mode puts the user's file back byte for byte), without
        recording anything in `undo` and without counting in `writes`."""
        undo, self.undo = self.undo, None
        writes = self.writes
        try:
            keys = sorted(b for b, d in blocks.items() if d is not None)
            i = 0
            while i < len(keys):
                j = i + 1
                while j < len(keys) and keys[j] == keys[j - 1] + 1:
                    j += 1
                self.pwrite(keys[i] * BLOCK, b"".join(blocks[k] for k in keys[i:j]))
                i = j
            if self.size != size:
                self.truncate(size)
        finally:
            self.undo = undo
            self.writes = writes

    def close(self) -> None:
        for fd in (self.ov_fd, self.fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.ov_fd = self.fd = -1

    # -- keeping a result ----------------------------------------------------------------
    def save_as(self, dest: str) -> None:
        """Write the logical content to dest (sparse), via a temporary name and a rename."""
        tmp = dest + ".vblkdbg-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start, end in self.data_ranges():
                pos = start
                while pos < end:
                    n = min(end - pos, 1 << 20)
                    os.pwrite(fd, self.pread(pos, n), pos)
                    pos += n
            os.ftruncate(fd, self.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)

    # -- digest ----------------------------------------------------------------------------
    def data_ranges(self) -> list[tuple[int, int]]:
        if self.mode != "overlay":
            return _data_ranges(self.fd, self.size)
        ranges = [(s, min(e, self.size)) for s, e in _data_ranges(self.fd, self.base_size)]
        run = None
        for blk in sorted(self.cow):
            if run and run[1] == blk:
                run[1] = blk + 1
                continue
            if run:
                ranges.append((run[0] * BLOCK, min(run[1] * BLOCK, self.size)))
            run = [blk, blk + 1]
        if run:
            ranges.append((run[0] * BLOCK, min(run[1] * BLOCK, self.size)))
        ranges.sort()
        merged: list = []
        for s, e in ranges:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            elif e > s:
                merged.append((s, e))
        return merged

    def _touch(self, off: int, n: int) -> None:
        if self._hashes is None:
            return
        for c in range(off // CHUNK, (off + n - 1) // CHUNK + 1):
            self._dirty.add(c)

    def digest(self) -> bytes:
        """Hash of the logical size and of every chunk that is not all zeros (sparse-friendly).

        Only chunks written since the last call are reread, so the cost follows what changed.
        """
        if self._hashes is None:
            self._hashes = {}
            self._dirty = set()
            for s, e in self.data_ranges():
                self._dirty.update(range(s // CHUNK, (e - 1) // CHUNK + 1))
        for c in sorted(self._dirty):
            data = self.pread(c * CHUNK, CHUNK) if c * CHUNK < self.size else b""
            if c * CHUNK + CHUNK > self.size:
                data = data[:max(0, self.size - c * CHUNK)]
            if data.count(0) == len(data):
                self._hashes.pop(c, None)
            else:
                self._hashes[c] = hashlib.blake2b(data, digest_size=16).digest()
        self._dirty = set()
        h = hashlib.sha256(self.size.to_bytes(8, "little"))
        for c in sorted(self._hashes):
            if c * CHUNK < self.size:
                h.update(c.to_bytes(8, "little") + self._hashes[c])
        return h.digest()
