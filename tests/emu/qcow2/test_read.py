"""Qcow2Reader against QEMU: images written by qemu-io / qemu-img read byte-exact like
`qemu-img convert -O raw` (normal, zero, compressed and unallocated clusters, backing chains,
v2 images, every refcount width, cluster sizes 512..2M)."""
from __future__ import annotations

import pytest

from emu.block.qcow2 import layout as L
from emu.block.qcow2.image import open_qcow2_file
from emu.errors import ImageError
from tests.emu.qcow2.util import MiB, assert_reads_like_qemu, io, make, make_raw, read_all

# a workload touching: cluster-aligned and unaligned writes, a write across an L2 boundary
# for small clusters, zero clusters (write -z), a discard and a rewrite
WRITES = ("write -P 0x11 0 64k", "write -P 0x22 100k 3k", "write -P 0x33 1M 512",
          "write -P 0x44 2044k 8k", "write -z 3M 128k", "write -P 0x55 3M 4k",
          "discard 0 4k")


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_cluster_sizes(tmp_path, cluster_size):
    img = make(tmp_path, "d.qcow2", "4M", f"cluster_size={cluster_size}")
    io(img, *WRITES)
    data = assert_reads_like_qemu(img, tmp_path)
    assert data[:4096] == bytes(4096) or cluster_size > 4096   # discard of a partial cluster
    assert data[100 << 10:(100 << 10) + 3072] == b"\x22" * 3072


@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_widths(tmp_path, refcount_bits):
    img = make(tmp_path, "d.qcow2", "4M", "cluster_size=4096",
               f"refcount_bits={refcount_bits}")
    io(img, *WRITES)
    assert_reads_like_qemu(img, tmp_path)


def test_version2_image(tmp_path):
    img = make(tmp_path, "v2.qcow2", "4M", "compat=0.10")
    io(img, "write -P 0x61 0 4k", "write -P 0x62 1M 64k", "write -z 2M 64k")
    with open_qcow2_file(img) as r:
        assert r.meta.header.version == 2 and r.meta.header.header_length == 72
    assert_reads_like_qemu(img, tmp_path)


def test_zero_clusters(tmp_path):
    img = make(tmp_path, "z.qcow2", "4M")
    io(img, "write -P 0x77 0 1M", "write -z 64k 128k", "write -z -u 512k 64k")
    types = set()
    with open_qcow2_file(img) as r:
        for off in range(0, 1 << 20, 65536):
            types.add(r.lookup(off)[0])
    assert {L.NORMAL, L.ZERO_ALLOC, L.ZERO_PLAIN} <= types
    data = assert_reads_like_qemu(img, tmp_path)
    assert data[64 << 10:192 << 10] == bytes(128 << 10)


@pytest.mark.parametrize("cluster_size", [512, 65536])
def test_compressed_clusters(tmp_path, cluster_size):
    src = make(tmp_path, "src.qcow2", "2M")
    io(src, "write -P 0x41 0 256k", "write -P 0x42 300k 5k", "write -P 0x43 1M 64k")
    img = str(tmp_path / "c.qcow2")
    from tests.oracle import qemu_img
    qemu_img("convert", "-c", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", src, img)
    with open_qcow2_file(img) as r:
        assert r.lookup(0)[0] == L.COMPRESSED
    assert_reads_like_qemu(img, tmp_path)


def test_backing_qcow2_over_raw(tmp_path):
    base = make_raw(tmp_path, "base.raw", bytes(range(256)) * 4096 * 2)   # 2 MiB
    img = make(tmp_path, "top.qcow2", "4M", backing="base.raw", backing_fmt="raw")
    io(img, "write -P 0x99 64k 4k", "write -z 128k 64k")
    with open_qcow2_file(img) as r:
        assert r.meta.backing == {"path": base, "name": "base.raw", "format": "raw"}
    data = assert_reads_like_qemu(img, tmp_path)
    assert data[:4096] == bytes(range(256)) * 16            # from the backing file
    assert data[3 << 20:] == bytes(1 << 20)                  # beyond the backing file: zeros


def test_backing_qcow2_over_qcow2_over_raw(tmp_path):
    make_raw(tmp_path, "base.raw", b"\xab" * (1 << 20))
    mid = make(tmp_path, "mid.qcow2", "2M", "cluster_size=4096", backing="base.raw",
               backing_fmt="raw")
    io(mid, "write -P 0x01 8k 8k", "write -z 16k 4k")
    top = make(tmp_path, "top.qcow2", "3M", "cluster_size=512", backing="mid.qcow2",
               backing_fmt="qcow2")
    io(top, "write -P 0x02 9k 1k")
    data = assert_reads_like_qemu(top, tmp_path)
    assert data[:8192] == b"\xab" * 8192 and data[9 << 10:10 << 10] == b"\x02" * 1024
    assert data[2 << 20:] == bytes(1 << 20)


def test_backing_format_probed_when_not_recorded(tmp_path):
    make_raw(tmp_path, "base.raw", b"\x5a" * 65536)
    img = make(tmp_path, "top.qcow2", "1M", backing="base.raw", backing_fmt="raw")
    # drop the backing format extension: rewrite the header without it
    from emu.block.qcow2.header import parse_header
    with open(img, "r+b") as f:
        h = parse_header(f.read(65536), 1 << 20, img)
        h.backing_format = None
        h.extensions = [e for e in h.extensions if e[0] != L.EXT_BACKING_FORMAT]
        f.seek(0)
        f.write(h.pack())
    with open_qcow2_file(img) as r:
        assert r.meta.backing["format"] == "raw"
        assert any("probed as raw" in w for w in r.meta.warnings)
        assert r.read(0, 4) == b"\x5a" * 4


def test_partial_reads_match_full_read(tmp_path):
    img = make(tmp_path, "p.qcow2", "1M", "cluster_size=4096")
    io(img, "write -P 0x10 0 12k", "write -P 0x20 20k 4k")
    full = read_all(img)
    with open_qcow2_file(img) as r:
        for off, n in ((0, 1), (4095, 2), (1000, 20000), (12 << 10, 8 << 10), (0, 1 << 20)):
            assert r.read(off, n) == full[off:off + n]
        with pytest.raises(ImageError, match="outside the virtual disk"):
            r.read(1 << 20, 1)
