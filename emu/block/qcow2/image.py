"""Open a qcow2 image (qcow2_do_open and more), read it synchronously, and map its host file.

Models QEMU block/qcow2.c `qcow2_do_open` (after the header: L1 table load,
`qcow2_refcount_init`, `qcow2_read_snapshots`, backing file name), block/qcow2-cluster.c
`qcow2_get_host_offset` / `qcow2_get_cluster_type` and block/qcow2.c
`qcow2_co_preadv_part` / `qcow2_co_preadv_compressed` (guest reads), block/qcow2-threads.c
`qcow2_zlib_decompress`, and block.c `bdrv_get_full_backing_filename` (relative backing
names). stack-reference.md sections 5.1-5.3 and 5.11.

Everything here is read-only and synchronous; the stepped driver lives in driver.py.
Every problem is an ImageError whose one-line message starts with the image path.
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ...errors import ImageError
from . import layout as L
from .header import Header, parse_header

PRead = Callable[[int, int], bytes]

MAX_BACKING_CHAIN = 64          # deeper chains are refused (loops are detected separately)
_L2_CACHE_TABLES = 16
_SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")


class FrozenTable(tuple):
    """A qcow2 metadata table (big-endian u64 entries as ints) that is never changed in
    place: the tables qcow2_do_open read, and the engine's refcount table, which gets a new
    entry only when a refcount block is allocated (every 2 GiB of data with 64 KiB clusters
    and 16-bit refcounts) and is then replaced by a new table.  A checkpoint refers to it
    instead of copying it (emu.debug.timeline.SHARED_TYPES): at least 8192 entries."""
    __slots__ = ()

    def with_entry(self, index: int, value: int) -> "FrozenTable":
        """A new table: this one with entry `index` set to `value` (IndexError as list's)."""
        t = list(self)
        t[index] = value
        return FrozenTable(t)


@dataclass
class Qcow2Meta:
    """What qcow2_do_open keeps in RAM: the header, the whole active L1 table and the whole
    refcount table (raw big-endian u64 entries as ints), plus the resolved backing file."""
    header: Header
    l1_table: FrozenTable
    refcount_table: FrozenTable
    backing: dict | None = None
    read_only_reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    path: str = ""
    file_size: int = 0
    snapshots: list[dict] = field(default_factory=list)   # id, name, l1_table_offset, l1_size
    snapshots_size: int = 0                                # bytes of the snapshot table


def _err(path: str, msg: str) -> ImageError:
    return ImageError(f"{path}: {msg}")


def _range(offset: int, length: int) -> str:
    return f"{offset:#x}+{length}"


def _overlap(a: int, alen: int, b: int, blen: int) -> bool:
    return alen > 0 and blen > 0 and a < b + blen and b < a + alen


def checked_pread(pread: PRead, path: str) -> PRead:
    """pread that always returns n bytes (zeros past what the file gave, as QEMU's file
    layer does past EOF) and turns OS errors into ImageError."""
    def p(offset: int, n: int) -> bytes:
        try:
            b = pread(offset, n)
        except OSError as e:
            raise ImageError(f"{path}: cannot read {n} bytes at {offset:#x}: "
                             f"{e.strerror or e}") from None
        return b if len(b) == n else bytes(b[:n]).ljust(n, b"\0")
    return p


def _u64s(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 8}Q", data))


# ---------------------------------------------------------------------------------- opening

def open_qcow2(pread: PRead, file_size: int, path: str, *,
               allow_backing_outside: bool = False, check_backing: bool = True) -> Qcow2Meta:
    """qcow2_do_open for a read-only user, with stricter checks than QEMU.

    Checks the header (parse_header), then that the refcount table, the L1 table, the
    snapshot table, every L2 table and every refcount block lie inside the file, that L1
    and refcount table entries have no reserved bits and are cluster aligned, that the
    main structures do not overlap, and resolves the backing file. Sizes are checked
    against QEMU's limits and the file size before anything proportional to them is read.
    With check_backing=False (for tools that never read the backing file, like map) the
    backing file is recorded as stored: path joined to the image's folder, not checked.
    """
    warnings: list[str] = []
    pread = checked_pread(pread, path)
    if file_size <= 0:
        raise _err(path, "the file is empty (0 bytes): not a qcow2 image")
    head = pread(0, min(file_size, 512))
    n = min(file_size, 512)
    if len(head) >= 24 and head[:4] == L.QCOW_MAGIC_BYTES:
        bits = struct.unpack_from(">I", head, 20)[0]
        if L.MIN_CLUSTER_BITS <= bits <= L.MAX_CLUSTER_BITS:
            n = min(file_size, 1 << bits)
    data = pread(0, n) if n > len(head) else head
    h = parse_header(data, file_size, path, warnings)
    cs = h.cluster_size

    # -- where the tables are: inside the file, not on top of each other --
    rt_off, rt_len = h.refcount_table_offset, h.refcount_table_clusters * cs
    l1_off, l1_len = h.l1_table_offset, h.l1_size * L.L1E_SIZE
    if rt_off + rt_len > file_size:
        raise _err(path, f"truncated: refcount table at {_range(rt_off, rt_len)} lies past "
                   f"the end of the file ({file_size} bytes)")
    if l1_len and l1_off + l1_len > file_size:
        raise _err(path, f"truncated: L1 table at {_range(l1_off, l1_len)} lies past the end "
                   f"of the file ({file_size} bytes)")
    if _overlap(0, cs, rt_off, rt_len):
        raise _err(path, f"refcount table at {_range(rt_off, rt_len)} overlaps the header "
                   "cluster")
    if _overlap(0, cs, l1_off, l1_len):
        raise _err(path, f"L1 table at {_range(l1_off, l1_len)} overlaps the header cluster")
    if _overlap(rt_off, rt_len, l1_off, l1_len):
        raise _err(path, f"L1 table at {_range(l1_off, l1_len)} overlaps the refcount table "
                   f"at {_range(rt_off, rt_len)}")

    # -- the active L1 table (qcow2_do_open: read the level 1 table) --
    l1 = _u64s(pread(l1_off, l1_len)) if l1_len else []
    for i, e in enumerate(l1):
        if not e:
            continue
        if e & L.L1E_RESERVED_MASK:
            raise _err(path, f"L1 entry {i} = {e:#018x} has reserved bits set "
                       f"({e & L.L1E_RESERVED_MASK:#x})")
        l2 = e & L.L1E_OFFSET_MASK
        if not l2:
            continue
        if l2 & (cs - 1):
            raise _err(path, f"L1 entry {i}: L2 table offset {l2:#x} is not aligned to the "
                       f"cluster size ({cs})")
        if l2 + cs > file_size:
            raise _err(path, f"truncated: L2 table of L1 entry {i} at {_range(l2, cs)} lies "
                       f"past the end of the file ({file_size} bytes)")

    # -- the refcount table (qcow2_refcount_init) --
    rt = _u64s(pread(rt_off, rt_len))
    for i, e in enumerate(rt):
        if not e:
            continue
        if e & L.REFT_RESERVED_MASK:
            raise _err(path, f"refcount table entry {i} = {e:#018x} has reserved bits set "
                       f"({e & L.REFT_RESERVED_MASK:#x})")
        off = e & L.REFT_OFFSET_MASK
        if off & (cs - 1):
            raise _err(path, f"refcount table entry {i}: refcount block offset {off:#x} is "
                       f"not aligned to the cluster size ({cs})")
        if off > L.QCOW_MAX_CLUSTER_OFFSET:
            raise _err(path, f"refcount table entry {i}: refcount block offset {off:#x} is "
                       "beyond QCOW_MAX_CLUSTER_OFFSET")
        if off + cs > file_size:
            raise _err(path, f"truncated: refcount block {i} at {_range(off, cs)} lies past "
                       f"the end of the file ({file_size} bytes)")

    snapshots, sn_size = _read_snapshots(pread, file_size, path, h)
    if sn_size:
        for name, o, ln in (("header cluster", 0, cs), ("refcount table", rt_off, rt_len),
                            ("L1 table", l1_off, l1_len)):
            if _overlap(h.snapshots_offset, sn_size, o, ln):
                raise _err(path, f"snapshot table at {_range(h.snapshots_offset, sn_size)} "
                           f"overlaps the {name}")

    # -- feature bits --
    read_only = None
    if h.incompatible_features & L.INCOMPAT_CORRUPT:
        read_only = ("the corrupt bit is set: QEMU refuses to open it read/write (qcow2: "
                     "Image is corrupt; cannot be opened read/write); repair it with "
                     "qemu-img check -r all")
        warnings.append("image is marked corrupt; opened read-only")
    elif h.incompatible_features & L.INCOMPAT_DIRTY:
        warnings.append("image is dirty (lazy refcounts were in use): its refcounts are "
                        "repaired when it is opened read/write, as QEMU does")
    if h.autoclear_features & ~L.AUTOCLEAR_MASK:
        warnings.append(f"unknown autoclear feature bits "
                        f"{h.autoclear_features & ~L.AUTOCLEAR_MASK:#x} (QEMU clears them when "
                        "it opens the image read/write)")
    if h.size % 512:
        warnings.append(f"virtual size {h.size} is not a multiple of 512 bytes; QEMU sees "
                        f"{h.size // 512 * 512}")

    backing = None
    if h.backing_file and check_backing:
        backing = resolve_backing(path, h.backing_file, h.backing_format,
                                  allow_backing_outside, warnings)
    elif h.backing_file:
        folder = os.path.dirname(os.path.abspath(path))
        backing = {"path": os.path.normpath(os.path.join(folder, h.backing_file)),
                   "name": h.backing_file, "format": h.backing_format}
    return Qcow2Meta(header=h, l1_table=FrozenTable(l1), refcount_table=FrozenTable(rt),
                     backing=backing,
                     read_only_reason=read_only, warnings=warnings, path=path,
                     file_size=file_size, snapshots=snapshots, snapshots_size=sn_size)


def _read_snapshots(pread: PRead, file_size: int, path: str, h: Header):
    """qcow2_do_read_snapshots: the entries' fixed parts and the table size, within limits."""
    if not h.nb_snapshots:
        return [], 0
    start = offset = h.snapshots_offset
    out = []
    for i in range(h.nb_snapshots):
        offset = (offset + 7) & ~7
        if offset + _SNAPSHOT_HEADER.size > file_size:
            raise _err(path, f"truncated: snapshot table entry {i} at {offset:#x} lies past "
                       f"the end of the file ({file_size} bytes)")
        (l1_off, l1_size, id_len, name_len, _ds, _dns, _clock, _vm,
         extra) = _SNAPSHOT_HEADER.unpack(pread(offset, _SNAPSHOT_HEADER.size))
        if extra > L.QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise _err(path, f"too much extra metadata in snapshot table entry {i} ({extra} "
                       f"bytes; QEMU's limit is {L.QCOW_MAX_SNAPSHOT_EXTRA_DATA})")
        offset += _SNAPSHOT_HEADER.size + extra
        if offset + id_len + name_len > file_size:
            raise _err(path, f"truncated: snapshot table entry {i} lies past the end of the "
                       f"file ({file_size} bytes)")
        ident = pread(offset, id_len).decode("utf-8", "replace")
        name = pread(offset + id_len, name_len).decode("utf-8", "replace")
        offset += id_len + name_len
        if offset - start > L.QCOW_MAX_SNAPSHOTS_SIZE:
            raise _err(path, f"snapshot table is too big (more than "
                       f"{L.QCOW_MAX_SNAPSHOTS_SIZE} bytes at entry {i})")
        out.append({"id": ident, "name": name, "l1_table_offset": l1_off, "l1_size": l1_size})
    return out, offset - start


_PROTOCOL = re.compile(r"^[A-Za-z0-9+.\-_]+:")


def _inside(child: str, folder: str) -> bool:
    return child == folder or child.startswith(folder.rstrip(os.sep) + os.sep)


def probe_format(path: str) -> str:
    """QEMU's format probing for the two formats vblkdbg knows: qcow2 magic, else raw."""
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == L.QCOW_MAGIC_BYTES else "raw"
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None


def resolve_backing(path: str, name: str, fmt: str | None, allow_outside: bool,
                    warnings: list[str] | None = None) -> dict:
    """bdrv_get_full_backing_filename + checks: {"path", "name", "format"} of a backing file.

    Relative names resolve against the folder of the image (as QEMU does, without
    following the image's own symlink). A name that leads outside that folder (absolute
    elsewhere, `..`, or a symlink pointing out) is refused unless allow_outside; a name
    that is the image itself, a protocol name and a missing file are refused always.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if _PROTOCOL.match(name) and not os.path.isabs(name):
        raise _err(path, f"backing file name {name!r} uses a protocol prefix; only plain "
                   "files are supported")
    full = os.path.normpath(name if os.path.isabs(name) else os.path.join(folder, name))
    real = os.path.realpath(full)
    if real == os.path.realpath(path):
        raise _err(path, f"backing file {name!r} is the image itself (the backing chain "
                   "loops)")
    if not allow_outside and not (_inside(full, folder)
                                  and _inside(real, os.path.realpath(folder))):
        raise _err(path, f"backing file {name!r} resolves to {real}, outside the image's "
                   f"folder {folder}; refused (backing files must stay in the image's folder)")
    if not os.path.exists(full):
        raise _err(path, f"backing file {name!r} ({full}) does not exist")
    if os.path.isdir(full):
        raise _err(path, f"backing file {name!r} ({full}) is a directory")
    if fmt is None:
        fmt = probe_format(full)
        if warnings is not None:
            warnings.append(f"no backing format recorded for {name!r}; probed as {fmt}")
    elif fmt not in ("raw", "qcow2"):
        raise _err(path, f"backing file {name!r} has format {fmt!r}, which is not supported "
                   "(only raw and qcow2)")
    return {"path": full, "name": name, "format": fmt}


# ---------------------------------------------------------------------------------- reading

def file_pread(f) -> PRead:
    """pread over an open binary file: short reads past EOF are padded with zeros."""
    fd = f.fileno()

    def pread(offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        try:
            b = os.pread(fd, n, offset) if offset < L.INT64_MAX else b""
        except OverflowError:
            b = b""
        return b if len(b) == n else b + bytes(n - len(b))
    return pread


class RawReader:
    """A raw backing file: .size and .read(offset, n) (zeros past the end of the file)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise ImageError(f"{path}: cannot open: {e.strerror}") from None
        self.size = os.fstat(self._f.fileno()).st_size
        self._pread = file_pread(self._f)

    def read(self, offset: int, n: int) -> bytes:
        return self._pread(offset, n)

    def close(self) -> None:
        self._f.close()


class L2Error(ImageError):
    """An invalid L2 entry (subclass so callers can tell it from other image errors)."""


def check_l2_entry(meta: Qcow2Meta, entry: int, l1_index: int, l2_index: int,
                   l2_offset: int) -> str:
    """qcow2_get_cluster_type plus the validity checks of qcow2_get_host_offset (and of
    qemu-img check: reserved bits, COPIED on compressed clusters); returns the type."""
    h = meta.header
    cs = h.cluster_size

    def bad(what: str) -> L2Error:
        guest = (l1_index << (h.l2_bits + h.cluster_bits)) | (l2_index << h.cluster_bits)
        return L2Error(f"{meta.path}: L2 entry {l2_index} of L1 entry {l1_index} (L2 table "
                       f"at {l2_offset:#x}, guest offset {guest:#x}) = {entry:#018x}: {what}")

    if entry & L.QCOW_OFLAG_COMPRESSED:
        if entry & L.QCOW_OFLAG_COPIED:
            raise bad("compressed cluster with the COPIED flag set")
        host, size = L.compressed_params(entry, h.cluster_bits)
        if host + size > L.QCOW_MAX_CLUSTER_OFFSET:
            raise bad(f"compressed data at {host:#x} lies beyond QCOW_MAX_CLUSTER_OFFSET")
        return L.COMPRESSED
    if entry & L.L2E_STD_RESERVED_MASK:
        raise bad(f"reserved bits set ({entry & L.L2E_STD_RESERVED_MASK:#x})")
    t = L.cluster_type(entry)
    if t in (L.ZERO_PLAIN, L.ZERO_ALLOC) and h.version < 3:
        raise bad("zero cluster entry in a version 2 image (QEMU: Zero cluster entry found "
                  "in pre-v3 image)")
    host = entry & L.L2E_OFFSET_MASK
    if host & (cs - 1):
        raise bad(f"cluster offset {host:#x} is not aligned to the cluster size ({cs})")
    return t


class Qcow2Reader:
    """Guest-visible content of a qcow2 image (qcow2_co_preadv_part), read synchronously."""

    def __init__(self, meta: Qcow2Meta, pread: PRead, backing_reader=None):
        self.meta = meta
        self.h = meta.header
        self._pread = checked_pread(pread, meta.path)
        self.backing = backing_reader
        self.size = meta.header.size // 512 * 512   # bs->total_sectors * 512
        self._l2: OrderedDict[int, tuple] = OrderedDict()
        self._cdata: tuple[int, bytes] | None = None     # last decompressed cluster
        self._owned = None

    def close(self) -> None:
        if self.backing is not None and hasattr(self.backing, "close"):
            self.backing.close()
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- L1/L2 lookup (qcow2_get_host_offset) --
    def l2_table(self, l1_index: int, l2_offset: int) -> tuple:
        t = self._l2.get(l2_offset)
        if t is not None:
            self._l2.move_to_end(l2_offset)
            return t
        cs = self.h.cluster_size
        if l2_offset & (cs - 1):
            raise ImageError(f"{self.meta.path}: L1 entry {l1_index}: L2 table offset "
                             f"{l2_offset:#x} is not aligned to the cluster size ({cs})")
        if l2_offset + cs > self.meta.file_size:
            raise ImageError(f"{self.meta.path}: truncated: L2 table of L1 entry {l1_index} "
                             f"at {_range(l2_offset, cs)} lies past the end of the file "
                             f"({self.meta.file_size} bytes)")
        t = tuple(_u64s(self._pread(l2_offset, cs)))
        self._l2[l2_offset] = t
        if len(self._l2) > _L2_CACHE_TABLES:
            self._l2.popitem(last=False)
        return t

    def lookup(self, guest: int) -> tuple[str, int, int, int, int]:
        """(cluster type, L2 entry, l1_index, l2_index, l2_offset) of a guest offset."""
        h = self.h
        l1_index = guest >> (h.l2_bits + h.cluster_bits)
        l2_index = (guest >> h.cluster_bits) & (h.l2_size - 1)
        if l1_index >= len(self.meta.l1_table):
            return L.UNALLOCATED, 0, l1_index, l2_index, 0
        l1e = self.meta.l1_table[l1_index]
        if l1e & L.L1E_RESERVED_MASK:
            raise ImageError(f"{self.meta.path}: L1 entry {l1_index} = {l1e:#018x} has "
                             f"reserved bits set ({l1e & L.L1E_RESERVED_MASK:#x})")
        l2_offset = l1e & L.L1E_OFFSET_MASK
        if not l2_offset:
            return L.UNALLOCATED, 0, l1_index, l2_index, 0
        entry = self.l2_table(l1_index, l2_offset)[l2_index]
        t = check_l2_entry(self.meta, entry, l1_index, l2_index, l2_offset)
        return t, entry, l1_index, l2_index, l2_offset

    # -- reads --
    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ImageError(f"{self.meta.path}: read of {n} bytes at {offset:#x} is outside "
                             f"the virtual disk ({self.size} bytes)")
        cs = self.h.cluster_size
        out = bytearray()
        pos, end = offset, offset + n
        while pos < end:
            in_cluster = pos & (cs - 1)
            chunk = min(cs - in_cluster, end - pos)
            t, entry, l1_index, l2_index, _ = self.lookup(pos)
            if t == L.NORMAL:
                host = (entry & L.L2E_OFFSET_MASK) + in_cluster
                # extend over following clusters that are host-contiguous
                while pos + chunk < end:
                    t2, e2, *_ = self.lookup(pos + chunk)
                    if t2 != L.NORMAL or (e2 & L.L2E_OFFSET_MASK) != host + chunk:
                        break
                    chunk += min(cs, end - pos - chunk)
                out += self._pread(host, chunk)
            elif t in (L.ZERO_PLAIN, L.ZERO_ALLOC):
                out += bytes(chunk)
            elif t == L.COMPRESSED:
                out += self._compressed(entry, l1_index, l2_index)[in_cluster:in_cluster + chunk]
            else:
                out += self._backing(pos, chunk)
            pos += chunk
        return bytes(out)

    def _backing(self, pos: int, n: int) -> bytes:
        if self.backing is None:
            return bytes(n)
        avail = max(0, min(n, self.backing.size - pos))
        data = self.backing.read(pos, avail) if avail else b""
        return data + bytes(n - avail)

    def _compressed(self, entry: int, l1_index: int, l2_index: int) -> bytes:
        """qcow2_co_preadv_compressed + qcow2_zlib_decompress (raw deflate, window 2^12)."""
        if self._cdata is not None and self._cdata[0] == entry:
            return self._cdata[1]
        h = self.h
        cs = h.cluster_size
        host, size = L.compressed_params(entry, h.cluster_bits)
        src = self._pread(host, size)
        where = (f"{self.meta.path}: compressed cluster at {host:#x}+{size} (L1 entry "
                 f"{l1_index}, L2 entry {l2_index})")
        if h.compression_type == L.COMPRESSION_ZSTD:
            try:
                import zstandard
            except ImportError:
                raise ImageError(f"{where}: zstd compression needs the Python module "
                                 "'zstandard', which is not installed") from None
            try:
                data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(src)).read(cs)
            except zstandard.ZstdError as e:
                raise ImageError(f"{where} cannot be decompressed (zstd: {e})") from None
        else:
            try:
                data = zlib.decompressobj(-12).decompress(src, cs)
            except zlib.error as e:
                raise ImageError(f"{where} cannot be decompressed (deflate: {e})") from None
        if len(data) != cs:
            raise ImageError(f"{where} decompresses to {len(data)} bytes instead of the "
                             f"cluster size {cs}")
        self._cdata = (entry, data)
        return data


def open_backing_chain(meta: Qcow2Meta, allow_backing_outside: bool = False,
                       _seen: tuple = ()):
    """A reader for meta's backing file (RawReader or Qcow2Reader, recursively), or None."""
    if meta.backing is None:
        return None
    seen = _seen or (os.path.realpath(meta.path),)
    bpath = meta.backing["path"]
    real = os.path.realpath(bpath)
    if real in seen:
        chain = " -> ".join([*seen, real])
        raise _err(meta.path, f"the backing chain loops ({chain})")
    if len(seen) >= MAX_BACKING_CHAIN:
        raise _err(meta.path, f"the backing chain is deeper than {MAX_BACKING_CHAIN} images")
    if meta.backing["format"] == "raw":
        return RawReader(bpath)
    return open_qcow2_file(bpath, allow_backing_outside=allow_backing_outside,
                           _seen=seen + (real,))


def open_qcow2_file(path: str, *, allow_backing_outside: bool = False,
                    _seen: tuple = ()) -> Qcow2Reader:
    """Open a qcow2 file and its backing chain; the reader owns the file (close() it)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror}") from None
    try:
        size = os.fstat(f.fileno()).st_size
        pread = file_pread(f)
        meta = open_qcow2(pread, size, path, allow_backing_outside=allow_backing_outside)
        backing = open_backing_chain(meta, allow_backing_outside,
                                     _seen or (os.path.realpath(path),))
    except BaseException:
        f.close()
        raise
    r = Qcow2Reader(meta, pread, backing)
    r._owned = f
    return r


# ---------------------------------------------------------------------------------- mapping

_PRIORITY = ("header", "refcount-table", "l1", "snapshot-table", "refcount-block", "l2")


def map_image(meta: Qcow2Meta, pread: PRead, file_size: int) -> list[dict]:
    """Classify every byte of the host file: sorted, contiguous ranges covering
    [0, file_size) as dicts {host, length, kind, guest} (data ranges also carry `zero`:
    true for preallocated zero clusters). Kinds: header, l1, l2, refcount-table,
    refcount-block, snapshot-table, data, compressed, metadata (referenced by the
    refcounts but by nothing vblkdbg walks: snapshot tables' clusters, bitmaps, leaks)
    and free (refcount 0, or the unused tail of a cluster holding compressed data).
    Where corrupt metadata makes structures overlap, the first in the order header,
    refcount table, L1, snapshot table, refcount blocks, L2 tables, data wins.
    """
    h = meta.header
    cs, cb = h.cluster_size, h.cluster_bits
    pread = checked_pread(pread, meta.path)
    nclusters = (file_size + cs - 1) >> cb
    claims: dict[int, tuple] = {}   # cluster index -> (kind, guest, zero)

    def claim(offset: int, length: int, kind: str, guest=None, zero=False) -> None:
        first = offset >> cb
        last = min((offset + max(length, 1) - 1) >> cb, nclusters - 1)
        for ci in range(first, last + 1):
            claims.setdefault(ci, (kind, guest, zero))

    claim(0, cs, "header")
    claim(h.refcount_table_offset, h.refcount_table_clusters * cs, "refcount-table")
    if h.l1_size:
        claim(h.l1_table_offset, h.l1_size * L.L1E_SIZE, "l1")
    if meta.snapshots_size:
        claim(h.snapshots_offset, meta.snapshots_size, "snapshot-table")
    for e in meta.refcount_table:
        off = e & L.REFT_OFFSET_MASK
        if off:
            claim(off, cs, "refcount-block")
    reader = Qcow2Reader(meta, pread)
    compressed: list[tuple[int, int, int]] = []
    for l1_index, l1e in enumerate(meta.l1_table):
        l2_offset = l1e & L.L1E_OFFSET_MASK
        if l2_offset:
            claim(l2_offset, cs, "l2")
    for l1_index, l1e in enumerate(meta.l1_table):
        l2_offset = l1e & L.L1E_OFFSET_MASK
        if not l2_offset:
            continue
        table = reader.l2_table(l1_index, l2_offset)
        base = l1_index << (h.l2_bits + cb)
        for l2_index, entry in enumerate(table):
            if not entry:
                continue
            t = check_l2_entry(meta, entry, l1_index, l2_index, l2_offset)
            guest = base | (l2_index << cb)
            if t in (L.NORMAL, L.ZERO_ALLOC):
                claim(entry & L.L2E_OFFSET_MASK, cs, "data", guest, t == L.ZERO_ALLOC)
            elif t == L.COMPRESSED:
                host, size = L.compressed_params(entry, cb)
                compressed.append((host, host + size, guest))

    # compressed ranges: stored sizes are sector-rounded, so one may run into the next
    compressed.sort()
    streams: list[tuple[int, int, int]] = []
    for start, end, guest in compressed:    # entries sharing one stream: keep the first
        if not streams or streams[-1][0] != start:
            streams.append((start, end, guest))
    items: list[tuple[int, int, str, object, bool]] = []
    slack: set[int] = set()
    for i, (start, end, guest) in enumerate(streams):
        if i + 1 < len(streams):
            end = min(end, streams[i + 1][0])
        end = min(end, file_size)
        pos = start
        while pos < end:
            ci = pos >> cb
            stop = min(end, (ci + 1) << cb)
            if ci not in claims:
                items.append((pos, stop, "compressed", guest, False))
                slack.add(ci)
            pos = stop
    for ci in sorted(claims):
        kind, guest, zero = claims[ci]
        start = ci << cb
        items.append((start, min(start + cs, file_size), kind, guest, zero))
    items.sort(key=lambda it: it[0])

    out: list[dict] = []

    def emit(start: int, end: int, kind: str, guest=None, zero=False) -> None:
        if end <= start:
            return
        if out:
            p = out[-1]
            if p["kind"] == kind and p["host"] + p["length"] == start:
                if kind in ("data",):
                    if p["guest"] + p["length"] == guest and p["zero"] == zero:
                        p["length"] += end - start
                        return
                elif kind == "compressed":
                    if p["guest"] == guest:
                        p["length"] += end - start
                        return
                else:
                    p["length"] += end - start
                    return
        d = {"host": start, "length": end - start, "kind": kind, "guest": guest}
        if kind == "data":
            d["zero"] = zero
        out.append(d)

    refcounts = _RefcountLookup(meta, pread)

    def gap(start: int, end: int) -> None:
        pos = start
        while pos < end:
            ci = pos >> cb
            stop = min(end, (ci + 1) << cb)
            if ci in slack or refcounts.get(ci) == 0:
                emit(pos, stop, "free")
            else:
                emit(pos, stop, "metadata")
            pos = stop

    pos = 0
    for start, end, kind, guest, zero in items:
        if start > pos:
            gap(pos, start)
        emit(start, end, kind, guest, zero)
        pos = max(pos, end)
    if pos < file_size:
        gap(pos, file_size)
    return out


class _RefcountLookup:
    """qcow2_get_refcount over the in-RAM refcount table (refcount blocks read on demand)."""

    def __init__(self, meta: Qcow2Meta, pread: PRead):
        self.meta = meta
        self.pread = pread
        self.h = meta.header
        self._block_index = -1
        self._block: bytes | None = None

    def get(self, cluster_index: int) -> int:
        h = self.h
        ti = cluster_index >> h.refcount_block_bits
        if ti >= len(self.meta.refcount_table):
            return 0
        off = self.meta.refcount_table[ti] & L.REFT_OFFSET_MASK
        if not off:
            return 0
        if ti != self._block_index:
            self._block = self.pread(off, h.cluster_size)
            self._block_index = ti
        idx = cluster_index & ((1 << h.refcount_block_bits) - 1)
        return L.refcount_get(self._block, idx, h.refcount_order)


def refcount_of(meta: Qcow2Meta, pread: PRead, cluster_index: int) -> int:
    """The refcount of one host cluster (0 when its refcount block does not exist)."""
    return _RefcountLookup(meta, pread).get(cluster_index)
