"""Header.pack / parse_header: QEMU's header cluster round-trips byte for byte, unknown
extensions and header fields survive (in the order qcow2_update_header writes them)."""
from __future__ import annotations

import os

import pytest

from emu.block.qcow2 import layout as L
from emu.block.qcow2.header import Header, parse_header
from emu.block.qcow2.image import open_qcow2_file
from tests.emu.qcow2.util import io, make, make_raw, read_all
from tests.oracle import qemu_img


def _cluster0(path, cs):
    with open(path, "rb") as f:
        return f.read(cs)


@pytest.mark.parametrize("opts", [(), ("cluster_size=512",), ("cluster_size=4096",),
                                  ("compat=0.10",), ("lazy_refcounts=on", "refcount_bits=1"),
                                  ("cluster_size=2M",)])
@pytest.mark.parametrize("with_backing", [False, True])
def test_pack_reproduces_qemu_header_cluster(tmp_path, opts, with_backing):
    backing = None
    if with_backing:
        make_raw(tmp_path, "base.raw", bytes(65536))
        backing = "base.raw"
    img = make(tmp_path, "h.qcow2", "8M", *opts, backing=backing)
    size = os.path.getsize(img)
    with open(img, "rb") as f:
        data = f.read(1 << 21)
    h = parse_header(data, size, img)
    assert _cluster0(img, h.cluster_size) == h.pack()
    assert h.backing_file == backing and h.backing_format == ("raw" if backing else None)
    if h.version == 3 and h.cluster_size > 4096:
        assert tuple(h.feature_table) == L.QEMU_FEATURE_TABLE
    else:
        assert h.feature_table == []
    assert parse_header(h.pack(), size, img) == h


def test_unknown_extensions_and_fields_survive_like_qemu(tmp_path):
    img = make(tmp_path, "u.qcow2", "4M")
    size = os.path.getsize(img)
    h = parse_header(_cluster0(img, 65536), size, img)
    h.unknown_header_fields = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    h.extensions += [(0x12345678, b"first ext"), (0x0BADCAFE, b""), (0x7777AAAA, b"third!")]
    cluster = h.pack(keep_unknown_order=True)
    with open(img, "r+b") as f:
        f.write(cluster)
    h2 = parse_header(cluster, size, img)
    assert h2.header_length == 120 and h2.unknown_header_fields == h.unknown_header_fields
    assert h2.extensions == h.extensions                      # file order, byte for byte
    assert h2.pack(keep_unknown_order=True) == cluster
    io(img, "write -P 0x5a 0 4k")                             # QEMU reads it fine
    assert read_all(img)[:4096] == b"\x5a" * 4096
    assert "No errors were found" in qemu_img("check", img).stdout
    # qcow2_update_header (via amend) rewrites the cluster: compare with Header.pack
    qemu_img("amend", "-f", "qcow2", "-o", "lazy_refcounts=on", img)
    h2.compatible_features |= L.COMPAT_LAZY_REFCOUNTS
    assert _cluster0(img, 65536) == h2.pack()                 # unknown extensions reversed
    h3 = parse_header(_cluster0(img, 65536), size, img)
    assert [e for e in h3.extensions if e[0] not in (L.EXT_FEATURE_TABLE,)] == \
        [e for e in reversed(h.extensions) if e[0] != L.EXT_FEATURE_TABLE]


def test_short_v3_header_is_rewritten_with_112_bytes(tmp_path):
    """An image with header_length = 104 (no compression_type byte) is valid; QEMU rewrites
    it with sizeof(QCowHeader) = 112."""
    img = make(tmp_path, "s.qcow2", "1M")
    size = os.path.getsize(img)
    data = bytearray(_cluster0(img, 65536))
    data[100:104] = (104).to_bytes(4, "big")
    data[104:112] = bytes(8)
    # move the extensions 8 bytes down: they start at header_length
    data[104:] = data[112:] + bytes(8)
    with open(img, "r+b") as f:
        f.write(data)
    h = parse_header(bytes(data), size, img)
    assert h.header_length == 104 and tuple(h.feature_table) == L.QEMU_FEATURE_TABLE
    qemu_img("amend", "-f", "qcow2", "-o", "lazy_refcounts=on", img)
    h.compatible_features |= L.COMPAT_LAZY_REFCOUNTS
    assert _cluster0(img, 65536) == h.pack()


def test_default_header_properties():
    h = Header()
    assert (h.cluster_size, h.l2_bits, h.l2_size, h.refcount_bits, h.refcount_block_bits) == \
        (65536, 13, 8192, 16, 15)
    h = Header(cluster_bits=9, refcount_order=0)
    assert (h.cluster_size, h.l2_bits, h.l2_size, h.refcount_bits, h.refcount_block_bits) == \
        (512, 6, 64, 1, 12)
    h = Header(cluster_bits=21, refcount_order=6)
    assert (h.l2_size, h.refcount_block_bits) == (1 << 18, 18)


def test_pack_refuses_what_does_not_fit():
    h = Header(cluster_bits=9, backing_file="x" * 400, backing_format="raw")
    with pytest.raises(ValueError, match="does not fit"):
        h.pack()


def test_open_reports_feature_table_and_extensions(tmp_path):
    img = make(tmp_path, "f.qcow2", "1M")
    with open_qcow2_file(img) as r:
        assert [m for m, _ in r.meta.header.extensions] == [L.EXT_FEATURE_TABLE]
        assert r.meta.warnings == [] and r.meta.read_only_reason is None
