"""map_image: every host byte classified; data ranges agree with `qemu-img map`, metadata
lands where the header and tables say."""
from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys

import pytest

from emu.block.qcow2 import layout as L
from emu.block.qcow2.image import file_pread, map_image, open_qcow2, open_qcow2_file
from tests.emu.qcow2.util import io, make, make_raw
from tests.oracle import qemu_img, qemu_img_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _map(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pread = file_pread(f)
        meta = open_qcow2(pread, size, path)
        return meta, map_image(meta, pread, size)


def _check_cover(ranges, size):
    pos = 0
    for r in ranges:
        assert r["host"] == pos and r["length"] > 0, r
        assert set(r) >= {"host", "length", "kind", "guest"}
        pos += r["length"]
    assert pos == size


def _at(ranges, host):
    i = bisect.bisect_right([r["host"] for r in ranges], host) - 1
    return ranges[i]


def _check_against_qemu(path, ranges):
    """Every range qemu-img map reports as data with a host offset is data at that host
    offset for that guest offset in our map."""
    checked = 0
    for e in qemu_img_json("map", path):
        if not e.get("data") or "offset" not in e or e.get("depth", 0) != 0:
            continue
        for k in range(0, e["length"], 512):
            r = _at(ranges, e["offset"] + k)
            assert r["kind"] == "data", (e, r)
            assert r["guest"] + (e["offset"] + k - r["host"]) == e["start"] + k, (e, r)
            checked += 1
    return checked


def _check_metadata(meta, ranges):
    h = meta.header
    cs = h.cluster_size
    assert _at(ranges, 0)["kind"] == "header"
    assert _at(ranges, h.refcount_table_offset)["kind"] == "refcount-table"
    assert _at(ranges, h.l1_table_offset)["kind"] == "l1"
    for e in meta.l1_table:
        if e & L.L1E_OFFSET_MASK:
            assert _at(ranges, e & L.L1E_OFFSET_MASK)["kind"] == "l2"
    for e in meta.refcount_table:
        if e:
            r = _at(ranges, e)
            assert r["kind"] == "refcount-block" and r["host"] <= e and \
                e + cs <= r["host"] + r["length"]


@pytest.mark.parametrize("opts", [("cluster_size=512",), ("cluster_size=4096", "refcount_bits=1"),
                                  (), ("cluster_size=2M", "refcount_bits=64"), ("compat=0.10",)])
def test_map_agrees_with_qemu_img_map(tmp_path, opts):
    img = make(tmp_path, "m.qcow2", "8M", *opts)
    io(img, "write -P 0x11 0 192k", "write -P 0x22 1M 4k", "write -P 0x33 300k 70k",
       "write -P 0x44 7M 1M", "write -P 0x55 64k 8k")
    meta, ranges = _map(img)
    _check_cover(ranges, os.path.getsize(img))
    assert _check_against_qemu(img, ranges) > 0
    _check_metadata(meta, ranges)


def test_zero_alloc_and_free_clusters(tmp_path):
    img = make(tmp_path, "z.qcow2", "4M")
    io(img, "write -P 1 0 64k", "write -P 2 64k 64k", "write -P 3 128k 64k", "discard 0 64k",
       "write -z 64k 64k")
    meta, ranges = _map(img)
    _check_cover(ranges, os.path.getsize(img))
    kinds = [r["kind"] for r in ranges]
    assert "free" in kinds                                   # the discarded data cluster
    zero = [r for r in ranges if r["kind"] == "data" and r["zero"]]
    assert len(zero) == 1 and zero[0]["guest"] == 64 << 10  # preallocated zero cluster
    _check_against_qemu(img, ranges)


def test_compressed_ranges(tmp_path):
    src = make(tmp_path, "s.qcow2", "1M", "cluster_size=4096")
    io(src, "write -P 0x61 0 64k", "write -P 0x62 512k 12k")
    img = str(tmp_path / "c.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src, img)
    meta, ranges = _map(img)
    _check_cover(ranges, os.path.getsize(img))
    comp = [r for r in ranges if r["kind"] == "compressed"]
    assert sorted(r["guest"] for r in comp) == [k << 12 for k in range(16)] + \
        [(512 << 10) + (k << 12) for k in range(3)]
    with open_qcow2_file(img) as r:
        for c in comp:
            t, entry, *_ = r.lookup(c["guest"])
            assert t == L.COMPRESSED and L.compressed_params(entry, 12)[0] == c["host"]


def test_snapshot_table(tmp_path):
    img = make(tmp_path, "s.qcow2", "4M")
    io(img, "write -P 1 0 64k")
    qemu_img("snapshot", "-c", "snap1", img)
    io(img, "write -P 2 0 64k")
    meta, ranges = _map(img)
    _check_cover(ranges, os.path.getsize(img))
    assert meta.snapshots[0]["name"] == "snap1"
    assert _at(ranges, meta.header.snapshots_offset)["kind"] == "snapshot-table"
    # the snapshot's L1 table and its old data are referenced only through the snapshot
    assert "metadata" in [r["kind"] for r in ranges]
    _check_against_qemu(img, ranges)


def test_cli_map_json_and_table(tmp_path):
    img = make(tmp_path, "c.qcow2", "1M", "cluster_size=4096")
    io(img, "write -P 1 0 8k")
    r = subprocess.run([sys.executable, "-m", "tui", "map", img, "--json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    ranges = json.loads(r.stdout)
    _check_cover(ranges, os.path.getsize(img))
    assert [x["kind"] for x in ranges][:5] == ["header", "refcount-table", "refcount-block",
                                               "l1", "l2"]
    assert ranges[-1] == {"host": 0x5000, "length": 0x2000, "kind": "data", "guest": 0,
                          "zero": False}
    r = subprocess.run([sys.executable, "-m", "tui", "map", img], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "refcount-table" in r.stdout \
        and "0x0000000000005000" in r.stdout


def test_cli_map_errors(tmp_path):
    txt = make_raw(tmp_path, "notes.txt", b"hello")
    r = subprocess.run([sys.executable, "-m", "tui", "map", str(tmp_path / "nope.qcow2")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    bad = make_raw(tmp_path, "bad.qcow2", b"QFI\xfb" + bytes(100))
    r = subprocess.run([sys.executable, "-m", "tui", "map", bad], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    # a raw file maps to one data range
    r = subprocess.run([sys.executable, "-m", "tui", "map", txt, "--json"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert json.loads(r.stdout) == [{"host": 0, "length": 5, "kind": "data", "guest": 0,
                                     "zero": False}]
