"""The qcow2 header cluster: parse it with qcow2_do_open's checks, pack it like qcow2_update_header.

Models QEMU block/qcow2.c: `qcow2_do_open` (header field checks, `validate_compression_type`,
`report_unsupported_feature`, `qcow2_validate_table` for the refcount, snapshot and L1 tables),
`qcow2_read_extensions` (header extensions) and `qcow2_update_header` / `header_ext_add` (the
bytes written back). Layout: docs/interop/qcow2.txt "Header" and "Header extensions";
stack-reference.md section 5.1.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...errors import ImageError
from . import layout as L

_V2 = struct.Struct(">IIQIIQIIQQIIQ")          # the 72-byte version 2 header
_V3_TAIL = struct.Struct(">QQQII")             # 72..104: features, refcount_order, header_length
_EXT = struct.Struct(">II")                    # header extension: magic, length
_BITMAPS_EXT = struct.Struct(">IIQQ")          # nb_bitmaps, reserved32, dir size, dir offset

_EXT_NAMES = {
    L.EXT_BACKING_FORMAT: "backing file format",
    L.EXT_FEATURE_TABLE: "feature name table",
    L.EXT_BITMAPS: "bitmaps",
    L.EXT_CRYPTO_HEADER: "full disk encryption header pointer",
    L.EXT_DATA_FILE: "external data file name",
}

_CRYPT_NAMES = {L.QCOW_CRYPT_AES: "AES", L.QCOW_CRYPT_LUKS: "LUKS"}


def _zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Header:
    """Every field of the qcow2 header (QCowHeader) plus the variable parts of cluster 0.

    `extensions` holds every header extension in file order (end marker excluded), raw data
    without padding, unknown ones included. `backing_file` is the name as stored (not
    resolved); `backing_format` comes from the backing format extension. `feature_table` is
    the feature name table found in the file: (type, bit, name) entries.
    """
    version: int = 3
    backing_file_offset: int = 0
    backing_file_size: int = 0
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = L.QCOW_HEADER_SIZE
    compression_type: int = 0
    unknown_header_fields: bytes = b""
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    backing_file: str | None = None
    backing_format: str | None = None
    feature_table: list[tuple[int, int, str]] = field(default_factory=list)

    # -- derived values (qcow2_do_open) --
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & L.INCOMPAT_EXTL2)

    @property
    def l2_bits(self) -> int:
        """cluster_bits - log2(L2 entry size): 8-byte entries, 16 with extended L2."""
        return self.cluster_bits - (4 if self.extended_l2 else 3)

    @property
    def l2_size(self) -> int:
        """Entries per L2 table."""
        return 1 << self.l2_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def refcount_block_bits(self) -> int:
        """log2 of the entries per refcount block."""
        return L.refcount_block_bits(self.cluster_bits, self.refcount_order)

    @property
    def refcount_table_size(self) -> int:
        """Entries in the refcount table (s->refcount_table_size)."""
        return self.refcount_table_clusters << (self.cluster_bits - 3)

    def extension(self, magic: int) -> bytes | None:
        """Data of the last extension with this magic (QEMU lets later ones win), or None."""
        found = None
        for m, data in self.extensions:
            if m == magic:
                found = data
        return found

    # -- qcow2_update_header --
    def pack(self, *, keep_unknown_order: bool = False) -> bytes:
        """The whole header cluster exactly as QEMU's qcow2_update_header writes it.

        v2: the 72-byte header; v3: sizeof(QCowHeader) = 112 bytes (header_length = 112 +
        unknown fields) followed by the preserved unknown header fields. Then the
        extensions in QEMU's order: backing format, external data file (only with the
        incompatible bit), encryption header pointer (only for LUKS), the feature name table
        (QEMU's own table, only for v3 and cluster_size > 4096), bitmaps (only with the
        autoclear bit), the unknown extensions, the end marker; then the backing file name
        (backing_file_offset/size point at it); zeros up to cluster_size.

        QEMU keeps unknown extensions in a list it prepends to while reading, so one rewrite
        reverses their order; that is what this writes unless keep_unknown_order=True.
        Raises ValueError when it does not fit in one cluster (QEMU: -ENOSPC).
        """
        cs = self.cluster_size
        if self.version not in (2, 3):
            raise ValueError(f"cannot write a version {self.version} header")
        out = bytearray()
        out += _V2.pack(L.QCOW_MAGIC, self.version, 0, 0, self.cluster_bits, self.size,
                        self.crypt_method, self.l1_size, self.l1_table_offset,
                        self.refcount_table_offset, self.refcount_table_clusters,
                        self.nb_snapshots, self.snapshots_offset)
        if self.version >= 3:
            out += _V3_TAIL.pack(self.incompatible_features, self.compatible_features,
                                 self.autoclear_features, self.refcount_order,
                                 L.QCOW_HEADER_SIZE + len(self.unknown_header_fields))
            out += bytes([self.compression_type & 0xFF]) + bytes(7)
            out += self.unknown_header_fields

        def add(magic: int, data: bytes) -> None:
            out.extend(_EXT.pack(magic, len(data)))
            out.extend(data)
            out.extend(bytes(-len(data) % 8))

        if self.backing_format is not None:
            add(L.EXT_BACKING_FORMAT, self.backing_format.encode())
        data_file = self.extension(L.EXT_DATA_FILE)
        if data_file is not None and self.incompatible_features & L.INCOMPAT_DATA_FILE:
            add(L.EXT_DATA_FILE, data_file.split(b"\0", 1)[0])
        crypto = self.extension(L.EXT_CRYPTO_HEADER)
        if crypto is not None and self.crypt_method == L.QCOW_CRYPT_LUKS:
            add(L.EXT_CRYPTO_HEADER, crypto)
        if self.version >= 3 and cs > 4096:
            add(L.EXT_FEATURE_TABLE, pack_feature_table(L.QEMU_FEATURE_TABLE))
        bitmaps = self.extension(L.EXT_BITMAPS)
        if bitmaps is not None and self.autoclear_features & L.AUTOCLEAR_BITMAPS:
            add(L.EXT_BITMAPS, bitmaps)
        unknown = [(m, d) for m, d in self.extensions if m not in _EXT_NAMES and m != L.EXT_END]
        if not keep_unknown_order:
            unknown.reverse()
        for magic, data in unknown:
            add(magic, data)
        add(L.EXT_END, b"")
        if self.backing_file is not None:
            name = self.backing_file.encode("utf-8", "surrogateescape").split(b"\0", 1)[0]
            offset = len(out)
            out += name
            struct.pack_into(">QI", out, 8, offset, len(name))
        if len(out) > cs:
            raise ValueError(f"the header ({len(out)} bytes with its extensions and backing "
                             f"file name) does not fit in one {cs}-byte cluster")
        out += bytes(cs - len(out))
        return bytes(out)


def pack_feature_table(entries) -> bytes:
    """Qcow2Feature entries: u8 type, u8 bit, char name[46] (NUL padded)."""
    out = bytearray()
    for ftype, bit, name in entries:
        out += bytes([ftype, bit]) + name.encode()[:46].ljust(46, b"\0")
    return bytes(out)


def parse_feature_table(data: bytes) -> list[tuple[int, int, str]]:
    """Feature name table entries up to the first empty name (report_unsupported_feature)."""
    out = []
    for i in range(0, len(data), L.FEATURE_ENTRY_SIZE):
        e = data[i:i + L.FEATURE_ENTRY_SIZE].ljust(L.FEATURE_ENTRY_SIZE, b"\0")
        name = e[2:].split(b"\0", 1)[0]
        if not name:
            break
        out.append((e[0], e[1], name.decode("utf-8", "replace")))
    return out


def _hexlen(offset: int, length: int) -> str:
    return f"{offset:#x}+{length}"


class _Reader:
    """Checked access to the header cluster bytes (zero beyond what was read, like QEMU)."""

    def __init__(self, data: bytes, file_size: int, path: str):
        self.data = data
        self.file_size = file_size
        self.path = path

    def err(self, msg: str) -> ImageError:
        return ImageError(f"{self.path}: {msg}")

    def need(self, end: int, what: str) -> None:
        if end > self.file_size:
            raise self.err(f"truncated: {what} ends at byte {end} but the file has only "
                           f"{self.file_size} bytes")

    def get(self, offset: int, n: int) -> bytes:
        b = self.data[offset:offset + n]
        return b if len(b) == n else b.ljust(n, b"\0")


def _read_extensions(r: _Reader, start: int, end: int, strict: bool):
    """qcow2_read_extensions: (extensions, backing_format, feature_table); strict raises."""
    exts: list[tuple[int, bytes]] = []
    backing_format = None
    feature_table: list[tuple[int, int, str]] = []
    offset = start
    while offset < end:
        if offset + 8 > end:
            if not strict:
                break
            raise r.err(f"header extension at offset {offset:#x} runs past the end of the "
                        f"header extension area ({end:#x})")
        if strict:
            r.need(offset + 8, f"the header extension at offset {offset:#x}")
        magic, length = _EXT.unpack(r.get(offset, 8))
        offset += 8
        if length > end - offset:
            if not strict:
                break
            what = _EXT_NAMES.get(magic, f"unknown header extension {magic:#010x}")
            raise r.err(f"header extension at offset {offset - 8:#x} ({what}) is too large: "
                        f"{length} bytes run past the end of the header extension area "
                        f"({end:#x})")
        if magic == L.EXT_END:
            return exts, backing_format, feature_table
        if strict:
            r.need(offset + length, f"the header extension at offset {offset - 8:#x}")
        data = r.get(offset, length)
        exts.append((magic, data))
        if magic == L.EXT_BACKING_FORMAT:
            if length >= 16 and strict:
                raise r.err(f"backing file format extension: length {length} is too large "
                            "(at most 15 bytes)")
            backing_format = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif magic == L.EXT_FEATURE_TABLE:
            feature_table = parse_feature_table(data)
        offset += (length + 7) & ~7
    return exts, backing_format, feature_table


def _check_extensions(r: _Reader, h: Header, warnings: list[str]) -> None:
    """The per-extension checks of qcow2_read_extensions for the extensions QEMU interprets."""
    for magic, data in h.extensions:
        if magic == L.EXT_CRYPTO_HEADER and h.crypt_method != L.QCOW_CRYPT_LUKS:
            raise r.err("full disk encryption header extension found in an image that is not "
                        "LUKS-encrypted (QEMU: CRYPTO header extension only expected with "
                        "LUKS encryption method)")
        if magic == L.EXT_BITMAPS:
            if len(data) != _BITMAPS_EXT.size:
                raise r.err(f"bitmaps extension: invalid length {len(data)} (must be "
                            f"{_BITMAPS_EXT.size})")
            if not h.autoclear_features & L.AUTOCLEAR_BITMAPS:
                warnings.append("the bitmaps extension is present but the autoclear bit is "
                                "clear: a program without bitmap support modified the image, "
                                "so all bitmaps are inconsistent")
                continue
            nb, reserved, dsize, doff = _BITMAPS_EXT.unpack(data)
            if reserved:
                raise r.err("bitmaps extension: reserved field is not zero")
            if nb > L.QCOW2_MAX_BITMAPS:
                raise r.err(f"bitmaps extension: {nb} bitmaps exceed QEMU's maximum of "
                            f"{L.QCOW2_MAX_BITMAPS}")
            if nb == 0:
                raise r.err("bitmaps extension with zero bitmaps")
            if doff & (h.cluster_size - 1):
                raise r.err(f"bitmaps extension: bitmap directory offset {doff:#x} is not "
                            "cluster aligned")
            if dsize > L.QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
                raise r.err(f"bitmaps extension: bitmap directory size {dsize} exceeds "
                            f"QEMU's maximum ({L.QCOW2_MAX_BITMAP_DIRECTORY_SIZE})")


def _unsupported_features(mask: int, table: list[tuple[int, int, str]]) -> str:
    """report_unsupported_feature: names from the feature table, then the unknown rest."""
    names = []
    for ftype, bit, name in table:
        if ftype == L.FEAT_TYPE_INCOMPATIBLE and bit < 64 and mask & (1 << bit):
            names.append(name[:46])
            mask &= ~(1 << bit)
    if mask:
        names.append(f"Unknown incompatible feature: {mask:x}")
    return ", ".join(names)


def validate_table(r: _Reader, cluster_size: int, offset: int, entries: int, entry_len: int,
                   max_bytes: int, name: str, count_field: str, offset_field: str) -> None:
    """qcow2_validate_table: size within QEMU's limit, offset cluster aligned and in range."""
    if entries > max_bytes // entry_len:
        raise r.err(f"{name} too large: {count_field} = {entries} ({entries * entry_len} "
                    f"bytes; QEMU's limit is {max_bytes} bytes)")
    if L.INT64_MAX - entries * entry_len < offset:
        raise r.err(f"{name} offset invalid: {offset_field} = {offset:#x} is out of range")
    if offset & (cluster_size - 1):
        raise r.err(f"{name} offset invalid: {offset_field} = {offset:#x} is not aligned to "
                    f"the cluster size ({cluster_size})")


def parse_header(data: bytes, file_size: int, path: str,
                 warnings: list[str] | None = None) -> Header:
    """Parse and check the header cluster the way qcow2_do_open does (and a little more).

    `data` is the first cluster of the file (or as much of it as exists); bytes past the
    end of the file read as zeros as in QEMU, but anything the header needs that lies past
    the end of the file is reported as truncation. Raises ImageError naming the field.
    """
    r = _Reader(bytes(data), file_size, path)
    if file_size == 0:
        raise r.err("the file is empty (0 bytes): not a qcow2 image")
    if len(r.data) < 4 or r.data[:4] != L.QCOW_MAGIC_BYTES:
        raise r.err("not a qcow2 image (bad magic)")
    r.need(L.V2_HEADER_SIZE, "the qcow2 header (72 bytes)")
    (_, version, backing_file_offset, backing_file_size, cluster_bits, size, crypt_method,
     l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
     snapshots_offset) = _V2.unpack(r.get(0, _V2.size))
    if version not in (2, 3):
        raise r.err(f"header field version = {version} is not supported (only qcow2 "
                    "versions 2 and 3)")
    if not L.MIN_CLUSTER_BITS <= cluster_bits <= L.MAX_CLUSTER_BITS:
        raise r.err(f"header field cluster_bits = {cluster_bits} is out of range "
                    f"({L.MIN_CLUSTER_BITS}..{L.MAX_CLUSTER_BITS})")
    cs = 1 << cluster_bits
    if version == 2:
        incompat = compat = autoclear = 0
        refcount_order, header_length = 4, L.V2_HEADER_SIZE
    else:
        r.need(L.V3_MIN_HEADER_LENGTH, "the version 3 qcow2 header (104 bytes)")
        incompat, compat, autoclear, refcount_order, header_length = _V3_TAIL.unpack(
            r.get(_V2.size, _V3_TAIL.size))
        if header_length < L.V3_MIN_HEADER_LENGTH:
            raise r.err(f"header field header_length = {header_length} is too small (a "
                        "version 3 header has at least 104 bytes)")
    if header_length > cs:
        raise r.err(f"header field header_length = {header_length} exceeds the cluster "
                    f"size ({cs})")
    r.need(header_length, f"the header (header_length = {header_length})")
    unknown_fields = r.get(L.QCOW_HEADER_SIZE, header_length - L.QCOW_HEADER_SIZE) \
        if header_length > L.QCOW_HEADER_SIZE else b""
    if backing_file_offset > cs:
        raise r.err(f"header field backing_file_offset = {backing_file_offset:#x} lies "
                    f"outside the header cluster ({cs} bytes)")
    ext_end = backing_file_offset if backing_file_offset else cs
    compression_type = r.data[104] if header_length > 104 and len(r.data) > 104 else 0

    # validate_compression_type
    if compression_type not in (L.COMPRESSION_ZLIB, L.COMPRESSION_ZSTD):
        raise r.err(f"header field compression_type = {compression_type} is unknown "
                    "(0 = zlib, 1 = zstd)")
    if compression_type == L.COMPRESSION_ZLIB and incompat & L.INCOMPAT_COMPRESSION:
        raise r.err("incompatible feature bit 3 (compression type) is set but "
                    "compression_type = 0 (zlib): the bit must not be set")
    if compression_type != L.COMPRESSION_ZLIB and not incompat & L.INCOMPAT_COMPRESSION:
        raise r.err(f"compression_type = {compression_type} (zstd) but incompatible feature "
                    "bit 3 (compression type) is not set")

    if incompat & ~L.INCOMPAT_MASK:
        _, _, table = _read_extensions(r, header_length, ext_end, strict=False)
        raise r.err("Unsupported qcow2 feature(s): "
                    f"{_unsupported_features(incompat & ~L.INCOMPAT_MASK, table)} "
                    f"(incompatible_features = {incompat:#x})")
    if incompat & L.INCOMPAT_DATA_FILE:
        raise r.err("images with an external data file (incompatible feature bit 2) are "
                    "not supported")
    if incompat & L.INCOMPAT_EXTL2:
        raise r.err("extended L2 entries (incompatible feature bit 4, subclusters) are not "
                    "supported")
    if compression_type == L.COMPRESSION_ZSTD and not _zstd_available():
        raise r.err("zstd compression (compression_type = 1) is not supported: the Python "
                    "module 'zstandard' is not installed")
    if refcount_order > 6:
        raise r.err(f"header field refcount_order = {refcount_order} is out of range (0..6, "
                    "refcount widths of 1..64 bits)")
    if crypt_method:
        kind = _CRYPT_NAMES.get(crypt_method, "unknown method")
        raise r.err(f"encrypted images are not supported (crypt_method = {crypt_method}, "
                    f"{kind})")

    if refcount_table_clusters == 0:
        raise r.err("the image does not contain a reference count table "
                    "(refcount_table_clusters = 0)")
    validate_table(r, cs, refcount_table_offset, refcount_table_clusters, cs,
                   L.QCOW_MAX_REFTABLE_SIZE, "refcount table", "refcount_table_clusters",
                   "refcount_table_offset")
    validate_table(r, cs, snapshots_offset, nb_snapshots, L.SNAPSHOT_HEADER_SIZE,
                   L.SNAPSHOT_HEADER_SIZE * L.QCOW_MAX_SNAPSHOTS, "snapshot table",
                   "nb_snapshots", "snapshots_offset")
    validate_table(r, cs, l1_table_offset, l1_size, L.L1E_SIZE, L.QCOW_MAX_L1_SIZE,
                   "L1 table", "l1_size", "l1_table_offset")
    l2_bits = cluster_bits - 3
    need_l1 = L.size_to_l1(size, cluster_bits, l2_bits)
    if need_l1 > L.INT_MAX:
        raise r.err(f"header field size = {size} is too big (the image is too big for "
                    f"{cs}-byte clusters)")
    if l1_size < need_l1:
        raise r.err(f"L1 table too small: l1_size = {l1_size} but the virtual size "
                    f"({size} bytes) needs {need_l1} entries")

    exts, backing_format, feature_table = _read_extensions(r, header_length, ext_end,
                                                           strict=True)
    h = Header(version=version, backing_file_offset=backing_file_offset,
               backing_file_size=backing_file_size, cluster_bits=cluster_bits, size=size,
               crypt_method=crypt_method, l1_size=l1_size, l1_table_offset=l1_table_offset,
               refcount_table_offset=refcount_table_offset,
               refcount_table_clusters=refcount_table_clusters, nb_snapshots=nb_snapshots,
               snapshots_offset=snapshots_offset, incompatible_features=incompat,
               compatible_features=compat, autoclear_features=autoclear,
               refcount_order=refcount_order, header_length=header_length,
               compression_type=compression_type, unknown_header_fields=unknown_fields,
               extensions=exts, backing_format=backing_format, feature_table=feature_table)
    _check_extensions(r, h, warnings if warnings is not None else [])

    if backing_file_offset:
        n = backing_file_size
        if n > min(1023, cs - backing_file_offset):
            raise r.err(f"backing file name too long: backing_file_size = {n} (at most "
                        f"{min(1023, cs - backing_file_offset)} bytes fit at "
                        f"backing_file_offset = {backing_file_offset:#x})")
        r.need(backing_file_offset + n, f"the backing file name at "
               f"{_hexlen(backing_file_offset, n)}")
        raw = r.get(backing_file_offset, n).split(b"\0", 1)[0]
        h.backing_file = raw.decode("utf-8", "surrogateescape")
    return h
