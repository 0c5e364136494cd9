"""qcow2 on-disk constants and entry encodings (docs/interop/qcow2.txt, block/qcow2.h). All big-endian."""
from __future__ import annotations

QCOW_MAGIC = 0x514649FB
QCOW_MAGIC_BYTES = b"QFI\xfb"

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
DEFAULT_CLUSTER_SIZE = 65536
QCOW_MAX_CLUSTER_OFFSET = (1 << 56) - 1
QCOW_MAX_REFTABLE_SIZE = 8 << 20
QCOW_MAX_L1_SIZE = 32 << 20
QCOW_MAX_SNAPSHOTS = 65536
QCOW2_COMPRESSED_SECTOR_SIZE = 512
MIN_L2_CACHE_SIZE = 2            # entries
MIN_REFCOUNT_CACHE_SIZE = 4      # clusters
DEFAULT_L2_CACHE_MAX_SIZE = 32 << 20

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF

# header feature bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_MASK = 0x1F
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
AUTOCLEAR_MASK = 0x3

# header extension magics
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO_HEADER = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# cluster types (qcow2_get_cluster_type)
UNALLOCATED = "unallocated"
ZERO_PLAIN = "zero_plain"
ZERO_ALLOC = "zero_alloc"
NORMAL = "normal"
COMPRESSED = "compressed"


def cluster_type(entry: int) -> str:
    """qcow2_get_cluster_type() for a standard (non-extended) L2 entry."""
    if entry & QCOW_OFLAG_COMPRESSED:
        return COMPRESSED
    if entry & QCOW_OFLAG_ZERO:
        return ZERO_ALLOC if entry & L2E_OFFSET_MASK else ZERO_PLAIN
    if not entry & L2E_OFFSET_MASK:
        return UNALLOCATED
    return NORMAL


def compressed_params(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host byte offset, compressed byte count as stored) of a compressed L2 entry."""
    x = 62 - (cluster_bits - 8)
    offset_mask = (1 << x) - 1
    host = entry & offset_mask
    nb_csectors = ((entry >> x) & ((1 << (cluster_bits - 8)) - 1)) + 1
    size = nb_csectors * QCOW2_COMPRESSED_SECTOR_SIZE - (host & 511)
    return host, size


def refcount_get(block, index: int, order: int) -> int:
    """Refcount `index` of a refcount block (orders 0-2 pack LSB-first, 3-6 are BE words)."""
    bits = 1 << order
    if bits < 8:
        per = 8 // bits
        byte = block[index // per]
        return (byte >> ((index % per) * bits)) & ((1 << bits) - 1)
    n = bits // 8
    return int.from_bytes(block[index * n:(index + 1) * n], "big")


def refcount_set(block: bytearray, index: int, order: int, value: int) -> None:
    bits = 1 << order
    if not 0 <= value < (1 << bits):
        raise ValueError(f"refcount {value} does not fit in {bits} bits")
    if bits < 8:
        per = 8 // bits
        shift = (index % per) * bits
        mask = ((1 << bits) - 1) << shift
        i = index // per
        block[i] = (block[i] & ~mask) | (value << shift)
        return
    n = bits // 8
    block[index * n:(index + 1) * n] = value.to_bytes(n, "big")


# --- additions for the on-disk library (header.py, image.py, create.py) ---------------------

QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS      # bytes of snapshot table
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS
INT_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1

QCOW_CRYPT_NONE = 0
QCOW_CRYPT_AES = 1
QCOW_CRYPT_LUKS = 2

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1

V2_HEADER_SIZE = 72            # offsetof(QCowHeader, incompatible_features)
V3_MIN_HEADER_LENGTH = 104     # offsetof(QCowHeader, compression_type)
QCOW_HEADER_SIZE = 112         # sizeof(QCowHeader): what qcow2_update_header writes for v3
SNAPSHOT_HEADER_SIZE = 40      # sizeof(QCowSnapshotHeader)
SNAPSHOT_EXTRA_KNOWN = 24      # sizeof(QCowSnapshotExtraData)
FEATURE_ENTRY_SIZE = 48        # sizeof(Qcow2Feature)
L1E_SIZE = 8
L2E_SIZE = 8
REFTABLE_ENTRY_SIZE = 8

# Qcow2Feature types (feature name table extension)
FEAT_TYPE_INCOMPATIBLE = 0
FEAT_TYPE_COMPATIBLE = 1
FEAT_TYPE_AUTOCLEAR = 2

# The feature name table qcow2_update_header() writes (v3 and cluster_size > 4096), in order.
QEMU_FEATURE_TABLE: tuple[tuple[int, int, str], ...] = (
    (FEAT_TYPE_INCOMPATIBLE, 0, "dirty bit"),
    (FEAT_TYPE_INCOMPATIBLE, 1, "corrupt bit"),
    (FEAT_TYPE_INCOMPATIBLE, 2, "external data file"),
    (FEAT_TYPE_INCOMPATIBLE, 3, "compression type"),
    (FEAT_TYPE_INCOMPATIBLE, 4, "extended L2 entries"),
    (FEAT_TYPE_COMPATIBLE, 0, "lazy refcounts"),
    (FEAT_TYPE_AUTOCLEAR, 0, "bitmaps"),
    (FEAT_TYPE_AUTOCLEAR, 1, "raw external data"),
)


def size_to_l1(size: int, cluster_bits: int, l2_bits: int) -> int:
    """size_to_l1() (block/qcow2.h): L1 entries needed to map `size` guest bytes."""
    shift = cluster_bits + l2_bits
    return (size + (1 << shift) - 1) >> shift


def refcount_block_bits(cluster_bits: int, refcount_order: int) -> int:
    """log2 of the entries per refcount block (qcow2_do_open: cluster_bits - (order - 3))."""
    return cluster_bits - (refcount_order - 3)
