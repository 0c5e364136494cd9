"""Refusals: every bad header field, table and entry gets one clear line naming the path and
the field (QEMU refuses the same header values), and the file is left as it was."""
from __future__ import annotations

import os
import struct

import pytest

from emu.block.qcow2 import layout as L
from emu.block.qcow2.header import parse_header
from emu.block.qcow2.image import open_qcow2_file
from emu.errors import ImageError
from tests.emu.qcow2.util import io, make, make_raw, sha
from tests.oracle import qemu_img

# Base image (64 KiB clusters, 4 MiB): header 0, refcount table 0x10000, refcount block
# 0x20000, L1 0x30000 (1 entry), L2 0x40000, data 0x50000.


@pytest.fixture
def base(tmp_path):
    img = make(tmp_path, "disk.qcow2", "4M")
    io(img, "write -P 0x11 0 64k")
    return img


def _u32(off, v):
    return lambda d: struct.pack_into(">I", d, off, v)


def _u64(off, v):
    return lambda d: struct.pack_into(">Q", d, off, v)


def _or64(off, v):
    return lambda d: struct.pack_into(">Q", d, off, struct.unpack_from(">Q", d, off)[0] | v)


def _byte(off, v):
    def f(d):
        d[off] = v
    return f


def _ext_len(v):
    # the feature table extension header is at 112: magic, length
    return _u32(116, v)


# (id, mutation of the file bytes, expected message regex, QEMU refuses it too)
HEADER_CASES = [
    ("version", _u32(4, 4), r"header field version = 4 is not supported", True),
    ("cluster_bits-big", _u32(20, 30), r"header field cluster_bits = 30 is out of range \(9..21\)", True),
    ("cluster_bits-small", _u32(20, 8), r"cluster_bits = 8 is out of range", True),
    ("header_length-small", _u32(100, 100), r"header_length = 100 is too small", True),
    ("header_length-big", _u32(100, 0x20000), r"header_length = 131072 exceeds the cluster size", True),
    ("backing_file_offset", _u64(8, 0x20000), r"backing_file_offset = 0x20000 lies outside the header cluster", True),
    ("compression_type", _byte(104, 2), r"compression_type = 2 is unknown", True),
    ("compression-bit", _or64(72, L.INCOMPAT_COMPRESSION), r"compression type\) is set but compression_type = 0", True),
    ("zstd-without-bit", _byte(104, 1), r"compression_type = 1 \(zstd\) but incompatible feature bit 3", True),
    ("unknown-incompat", _or64(72, 1 << 7), r"Unsupported qcow2 feature\(s\): Unknown incompatible feature: 80", True),
    ("data-file", _or64(72, L.INCOMPAT_DATA_FILE), r"external data file \(incompatible feature bit 2\) are not supported", False),
    ("extended-l2", _or64(72, L.INCOMPAT_EXTL2), r"extended L2 entries .* are not supported", False),
    ("refcount_order", _u32(96, 7), r"refcount_order = 7 is out of range", True),
    ("crypt-aes", _u32(32, 1), r"encrypted images are not supported \(crypt_method = 1, AES\)", False),
    ("crypt-luks", _u32(32, 2), r"encrypted images are not supported \(crypt_method = 2, LUKS\)", True),
    ("reftable-clusters-0", _u32(56, 0), r"does not contain a reference count table", True),
    ("reftable-too-large", _u32(56, 1 << 24), r"refcount table too large: refcount_table_clusters = 16777216", True),
    ("reftable-unaligned", _u64(48, 0x10008), r"refcount table offset invalid: refcount_table_offset = 0x10008 is not aligned", True),
    ("reftable-offset-huge", _u64(48, 0x7FFFFFFFFFFF0000), r"refcount table offset invalid", True),
    ("snapshots-too-many", _u32(60, 1 << 20), r"snapshot table too large: nb_snapshots = 1048576", True),
    ("snapshots-unaligned", _u64(64, 0x123), r"snapshot table offset invalid: snapshots_offset = 0x123", True),
    ("l1-too-large", _u32(36, 1 << 28), r"L1 table too large: l1_size = 268435456", True),
    ("l1-too-small", _u32(36, 0), r"L1 table too small: l1_size = 0", True),
    ("l1-unaligned", _u64(40, 0x30008), r"L1 table offset invalid: l1_table_offset = 0x30008", True),
    ("size-too-big", _u64(24, 1 << 62), r"header field size = \d+ is too big", True),
    ("extension-too-large", _ext_len(0x20000), r"header extension at offset 0x70 \(feature name table\) is too large", True),
    ("backing-name-too-long", lambda d: (_u64(8, 0x200)(d), _u32(16, 2000)(d)), r"backing file name too long: backing_file_size = 2000", True),
]


@pytest.mark.parametrize("case", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_refusals(base, case):
    _, mutate, pattern, qemu_refuses = case
    with open(base, "r+b") as f:
        d = bytearray(f.read())
        mutate(d)
        f.seek(0)
        f.write(d)
    before = sha(base)
    with pytest.raises(ImageError, match=pattern) as e:
        open_qcow2_file(base).close()
    msg = str(e.value)
    assert msg.startswith(base + ": ") and "\n" not in msg
    assert sha(base) == before
    if qemu_refuses:
        assert qemu_img("info", base, check=False).returncode != 0


def test_unknown_feature_named_from_the_feature_table(base):
    """report_unsupported_feature takes names from the image's own feature table."""
    with open(base, "r+b") as f:
        d = bytearray(f.read(65536))
        h = parse_header(bytes(d), 1 << 20, base)
        table = list(h.feature_table) + [(0, 9, "time travel")]
        from emu.block.qcow2.header import pack_feature_table
        h.extensions = [(m, pack_feature_table(table) if m == L.EXT_FEATURE_TABLE else x)
                        for m, x in h.extensions]
        h.incompatible_features |= (1 << 9) | (1 << 12)
        # write the header keeping this feature table (pack() writes QEMU's own)
        cluster = bytearray(h.pack())
        ext = pack_feature_table(table)
        struct.pack_into(">II", cluster, 112, L.EXT_FEATURE_TABLE, len(ext))
        cluster[120:120 + len(ext)] = ext
        cluster[120 + len(ext):128 + len(ext)] = bytes(8)
        f.seek(0)
        f.write(cluster)
    with pytest.raises(ImageError) as e:
        open_qcow2_file(base)
    assert str(e.value).endswith("Unsupported qcow2 feature(s): time travel, Unknown "
                                 "incompatible feature: 1000 (incompatible_features = 0x1200)")
    r = qemu_img("info", base, check=False)
    assert "Unsupported qcow2 feature(s): time travel, Unknown incompatible feature: 1000" \
        in r.stderr


TABLE_CASES = [
    ("l1-reserved", _or64(0x30000, 1 << 62), r"L1 entry 0 = 0xc000000000040000 has reserved bits set \(0x4000000000000000\)"),
    ("l1-unaligned", _u64(0x30000, 0x40200 | L.QCOW_OFLAG_COPIED), r"L1 entry 0: L2 table offset 0x40200 is not aligned"),
    ("l1-past-eof", _u64(0x30000, 0x1000000 | L.QCOW_OFLAG_COPIED), r"truncated: L2 table of L1 entry 0 at 0x1000000\+65536 lies past the end of the file"),
    ("reftable-reserved", _or64(0x10000, 1), r"refcount table entry 0 = 0x0000000000020001 has reserved bits set"),
    ("reftable-unaligned", _u64(0x10000, 0x20200), r"refcount table entry 0: refcount block offset 0x20200 is not aligned"),
    ("refblock-past-eof", _u64(0x10008, 0x2000000), r"truncated: refcount block 1 at 0x2000000\+65536 lies past the end"),
    ("refblock-huge", _u64(0x10008, 1 << 60), r"refcount block offset 0x1000000000000000 is beyond QCOW_MAX_CLUSTER_OFFSET"),
    ("reftable-on-header", _u64(48, 0), r"refcount table at 0x0\+65536 overlaps the header cluster"),
    ("l1-on-reftable", _u64(40, 0x10000), r"L1 table at 0x10000\+8 overlaps the refcount table at 0x10000\+65536"),
    ("l1-on-header", _u64(40, 0), r"L1 table at 0x0\+8 overlaps the header cluster"),
    ("reftable-past-eof", _u64(48, 0x100000), r"truncated: refcount table at 0x100000\+65536 lies past the end of the file"),
    ("l1-big-past-eof", _u32(36, 1 << 20), r"truncated: L1 table at 0x30000\+8388608 lies past the end"),
    ("snapshot-past-eof", lambda d: (_u32(60, 1)(d), _u64(64, 0x1000000)(d)), r"truncated: snapshot table entry 0 at 0x1000000"),
]


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_table_refusals(base, case):
    _, mutate, pattern = case
    with open(base, "r+b") as f:
        d = bytearray(f.read())
        mutate(d)
        f.seek(0)
        f.write(d)
    before = sha(base)
    with pytest.raises(ImageError, match=pattern) as e:
        open_qcow2_file(base).close()
    assert str(e.value).startswith(base + ": ") and "\n" not in str(e.value)
    assert sha(base) == before


@pytest.mark.parametrize("size,pattern", [
    (0, r"the file is empty \(0 bytes\): not a qcow2 image"),
    (3, r"not a qcow2 image \(bad magic\)"),
    (50, r"truncated: the qcow2 header \(72 bytes\) ends at byte 72 but the file has only 50"),
    (90, r"truncated: the version 3 qcow2 header \(104 bytes\)"),
    (0x18000, r"truncated: refcount table at 0x10000\+65536 lies past the end of the file \(98304 bytes\)"),
    (0x30004, r"truncated: L1 table at 0x30000\+8 lies past the end of the file \(196612 bytes\)"),
    (0x48000, r"truncated: L2 table of L1 entry 0 at 0x40000\+65536 lies past the end"),
])
def test_truncated_files(base, size, pattern):
    os.truncate(base, size)
    with pytest.raises(ImageError, match=pattern) as e:
        open_qcow2_file(base)
    assert str(e.value).startswith(base + ": ")


def test_not_an_image(tmp_path):
    txt = make_raw(tmp_path, "notes.txt", b"Dear diary,\nqcow2 is fun.\n" * 10)
    with pytest.raises(ImageError, match=r"notes.txt: not a qcow2 image \(bad magic\)$"):
        open_qcow2_file(txt)
    with pytest.raises(ImageError, match="no such file"):
        open_qcow2_file(str(tmp_path / "missing.qcow2"))
    with pytest.raises(ImageError, match="is a directory"):
        open_qcow2_file(str(tmp_path))


def test_data_past_eof_reads_zeros_like_qemu(base):
    """A data cluster past the end of the file reads as zeros (QEMU's file layer pads)."""
    with open(base, "r+b") as f:
        f.seek(0x40000)
        f.write(struct.pack(">Q", 0x800000 | L.QCOW_OFLAG_COPIED))
    with open_qcow2_file(base) as r:
        assert r.read(0, 65536) == bytes(65536)


L2_CASES = [
    ("reserved", 0x50000 | L.QCOW_OFLAG_COPIED | 0x2, r"reserved bits set \(0x2\)"),
    ("reserved-high", 0x50000 | (1 << 57), r"reserved bits set \(0x200000000000000\)"),
    ("unaligned", 0x50200 | L.QCOW_OFLAG_COPIED, r"cluster offset 0x50200 is not aligned"),
    ("compressed-copied", L.QCOW_OFLAG_COMPRESSED | L.QCOW_OFLAG_COPIED | 0x50000, r"compressed cluster with the COPIED flag"),
    ("compressed-garbage", L.QCOW_OFLAG_COMPRESSED | 0x20000, r"compressed cluster at 0x20000\+512 \(L1 entry 0, L2 entry 3\) (cannot be decompressed|decompresses to)"),
]


@pytest.mark.parametrize("case", L2_CASES, ids=[c[0] for c in L2_CASES])
def test_invalid_l2_entries_name_the_indices(base, case):
    _, entry, pattern = case
    with open(base, "r+b") as f:
        f.seek(0x40000 + 8 * 3)                       # L2 entry 3: guest 0x30000
        f.write(struct.pack(">Q", entry))
        if case[0].startswith("compressed"):
            f.seek(0x40000)
            f.write(struct.pack(">Q", entry))
    with open_qcow2_file(base) as r:
        with pytest.raises(ImageError, match=pattern) as e:
            r.read(0x30000, 512)
            r.read(0, 512)
        msg = str(e.value)
        assert msg.startswith(base + ": L2 entry") or "compressed cluster" in msg
        assert "L1 entry 0" in msg and "\n" not in msg


def test_compressed_offset_beyond_max_cluster_offset(tmp_path):
    """With 512-byte clusters a compressed entry has 61 offset bits: more than 2^56."""
    img = make(tmp_path, "c.qcow2", "1M", "cluster_size=512")
    io(img, "write -P 1 0 512")
    with open_qcow2_file(img) as r:
        l2 = r.meta.l1_table[0] & L.L1E_OFFSET_MASK
    with open(img, "r+b") as f:
        f.seek(l2)
        f.write(struct.pack(">Q", L.QCOW_OFLAG_COMPRESSED | (1 << 60)))
    with open_qcow2_file(img) as r:
        with pytest.raises(ImageError, match=r"L2 entry 0 of L1 entry 0 .*: compressed data at "
                                             r"0x1000000000000000 lies beyond QCOW_MAX_CLUSTER"):
            r.read(0, 512)


def test_zero_flag_in_v2_image(tmp_path):
    img = make(tmp_path, "v2.qcow2", "1M", "compat=0.10")
    io(img, "write -P 1 0 64k")
    with open(img, "r+b") as f:
        f.seek(0x40000 + 8)
        f.write(struct.pack(">Q", L.QCOW_OFLAG_ZERO))
    with open_qcow2_file(img) as r:
        with pytest.raises(ImageError, match=r"L2 entry 1 of L1 entry 0 .* zero cluster entry "
                                             r"in a version 2 image"):
            r.read(65536, 512)


@pytest.mark.parametrize("bit,word,ro", [(L.INCOMPAT_CORRUPT, "corrupt", True),
                                         (L.INCOMPAT_DIRTY, "dirty", False)])
def test_corrupt_opens_read_only_dirty_is_flagged(base, bit, word, ro):
    """The corrupt bit forces read-only; the dirty bit is left to the driver to repair."""
    with open(base, "r+b") as f:
        d = bytearray(f.read(65536))
        _or64(72, bit)(d)
        f.seek(0)
        f.write(d)
    with open_qcow2_file(base) as r:
        assert bool(r.meta.read_only_reason and word in r.meta.read_only_reason) == ro
        assert any(word in w for w in r.meta.warnings)
        assert r.read(0, 4) == b"\x11" * 4


# ---- backing files


def test_missing_backing_file(tmp_path):
    make_raw(tmp_path, "base.raw", bytes(65536))
    img = make(tmp_path, "top.qcow2", "1M", backing="base.raw")
    os.unlink(tmp_path / "base.raw")
    with pytest.raises(ImageError, match=r"top.qcow2: backing file 'base.raw' \(.*base.raw\) "
                                         r"does not exist$"):
        open_qcow2_file(img)


def _set_backing(img, name, fmt="raw"):
    with open(img, "r+b") as f:
        h = parse_header(f.read(65536), os.path.getsize(img), img)
        h.backing_file, h.backing_format = name, fmt
        f.seek(0)
        f.write(h.pack())


def test_backing_outside_the_folder_is_refused_unless_allowed(tmp_path):
    outside = make_raw(tmp_path, "outside.raw", b"\x42" * 65536)
    os.makedirs(tmp_path / "vm")
    img = make(tmp_path / "vm", "top.qcow2", "1M")
    for name in ("../outside.raw", outside):
        _set_backing(img, name)
        with pytest.raises(ImageError, match="outside the image's folder"):
            open_qcow2_file(img)
        with open_qcow2_file(img, allow_backing_outside=True) as r:
            assert r.read(0, 2) == b"\x42\x42"
    os.symlink(outside, tmp_path / "vm" / "link.raw")          # a symlink leading out
    _set_backing(img, "link.raw")
    with pytest.raises(ImageError, match="outside the image's folder"):
        open_qcow2_file(img)
    os.makedirs(tmp_path / "vm" / "sub")
    make_raw(tmp_path / "vm" / "sub", "in.raw", b"\x43" * 512)   # a subfolder is inside
    _set_backing(img, "sub/in.raw")
    with open_qcow2_file(img) as r:
        assert r.read(0, 1) == b"\x43"


def test_backing_loops_are_refused(tmp_path):
    a = make(tmp_path, "a.qcow2", "1M")
    b = make(tmp_path, "b.qcow2", "1M")
    _set_backing(a, "a.qcow2", "qcow2")
    with pytest.raises(ImageError, match=r"a.qcow2: backing file 'a.qcow2' is the image itself"):
        open_qcow2_file(a)
    _set_backing(a, "b.qcow2", "qcow2")
    _set_backing(b, "a.qcow2", "qcow2")
    for allow in (False, True):
        with pytest.raises(ImageError, match=r"the backing chain loops"):
            open_qcow2_file(a, allow_backing_outside=allow)


def test_unsupported_backing_format_and_protocols(tmp_path):
    make_raw(tmp_path, "base.vmdk", bytes(512))
    img = make(tmp_path, "top.qcow2", "1M")
    _set_backing(img, "base.vmdk", "vmdk")
    with pytest.raises(ImageError, match=r"format 'vmdk', which is not supported"):
        open_qcow2_file(img)
    _set_backing(img, "nbd://example.com/disk", "raw")
    with pytest.raises(ImageError, match=r"uses a protocol prefix"):
        open_qcow2_file(img)
    _set_backing(img, "base.vmdk", "qcow2")                   # declared qcow2, is not
    with pytest.raises(ImageError, match=r"base.vmdk: not a qcow2 image \(bad magic\)"):
        open_qcow2_file(img)
