"""Mutated images (random byte flips in the header, L1, refcount table, L2 and refcount
block; absurd sizes and offsets; truncations): opening, reading and mapping raise nothing
but ImageError, with one-line messages naming the path, never allocate memory in proportion
to a size the file merely claims, and never change the file."""
from __future__ import annotations

import hashlib
import os
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.block.qcow2 import layout as L
from emu.block.qcow2.create import create_qcow2
from emu.block.qcow2.image import file_pread, map_image, open_qcow2, open_qcow2_file
from emu.errors import ImageError

CS = 4096
# layout of the base image (4 KiB clusters, 1 MiB): what create_qcow2 writes, plus an L2
# table and four data clusters (normal, compressed, preallocated zero, normal)
HEADER, REFTABLE, REFBLOCK, L1, L2 = 0, 0x1000, 0x2000, 0x3000, 0x4000
DATA = 0x5000
MEMORY_LIMIT = 32 << 20


def _base_image(path: str) -> bytes:
    create_qcow2(path, 1 << 20, cluster_size=CS, force=True)
    with open(path, "r+b") as f:
        d = bytearray(f.read())
        d.extend(bytes(DATA + 4 * CS - len(d)))
        struct.pack_into(">Q", d, L1, L2 | L.QCOW_OFLAG_COPIED)
        d[DATA:DATA + CS] = bytes(range(256)) * 16
        comp = zlib.compressobj(6, zlib.DEFLATED, -12)
        stream = comp.compress(b"\x5a" * CS) + comp.flush()
        d[DATA + CS:DATA + CS + len(stream)] = stream
        nsect = (len(stream) + 511) // 512 - 1
        x = 62 - (12 - 8)
        entries = [DATA | L.QCOW_OFLAG_COPIED, L.QCOW_OFLAG_COMPRESSED | (nsect << x) | (DATA + CS),
                   (DATA + 2 * CS) | L.QCOW_OFLAG_COPIED | L.QCOW_OFLAG_ZERO,
                   (DATA + 3 * CS) | L.QCOW_OFLAG_COPIED, L.QCOW_OFLAG_ZERO]
        for i, e in enumerate(entries):
            struct.pack_into(">Q", d, L2 + 8 * i, e)
        d[DATA + 3 * CS:DATA + 4 * CS] = b"\x77" * CS
        for ci in range(4, 9):
            struct.pack_into(">H", d, REFBLOCK + 2 * ci, 1)
        f.seek(0)
        f.write(d)
    return bytes(d)


class _Image(bytes):
    def __repr__(self) -> str:
        return f"<base image, {len(self)} bytes>"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzzbase") / "base.qcow2")
    data = _base_image(path)
    with open_qcow2_file(path) as r:         # the unmutated image is valid and reads right
        got = r.read(0, 5 * CS)
    assert got == bytes(range(256)) * 16 + b"\x5a" * CS + bytes(CS) + b"\x77" * CS + bytes(CS)
    return _Image(data)


HEADER_FIELDS = {   # offset, width
    "version": (4, 4), "backing_file_offset": (8, 8), "backing_file_size": (16, 4),
    "cluster_bits": (20, 4), "size": (24, 8), "crypt_method": (32, 4), "l1_size": (36, 4),
    "l1_table_offset": (40, 8), "refcount_table_offset": (48, 8),
    "refcount_table_clusters": (56, 4), "nb_snapshots": (60, 4), "snapshots_offset": (64, 8),
    "incompatible_features": (72, 8), "compatible_features": (80, 8),
    "autoclear_features": (88, 8), "refcount_order": (96, 4), "header_length": (100, 4),
    "compression_type": (104, 1),
}

INTERESTING = [0, 1, 2, 7, 8, 9, 12, 16, 21, 22, 63, 64, 72, 104, 112, 512, 1023, 1024, CS,
               REFTABLE, REFBLOCK, L1, L2, DATA, DATA + CS, 9 * CS, 9 * CS - 8, 10 * CS,
               (1 << 20), (1 << 24), (1 << 31) - 1, 1 << 31, (1 << 32) - 1, (1 << 56) - 1,
               1 << 56, (1 << 62), (1 << 63) - 1, (1 << 64) - 1]

REGIONS = {"header": (0, 512), "l1": (L1, 16), "reftable": (REFTABLE, 32), "l2": (L2, 64),
           "refblock": (REFBLOCK, 32), "extensions": (112, 400)}


def _value(draw_int, width):
    return draw_int & ((1 << (8 * width)) - 1)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(sorted(REGIONS)),
              st.lists(st.tuples(st.integers(0, 511), st.integers(1, 255)), min_size=1,
                       max_size=6)),
    st.tuples(st.just("field"), st.sampled_from(sorted(HEADER_FIELDS)),
              st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << 64) - 1))),
    st.tuples(st.just("entry"), st.sampled_from(["l1", "reftable", "l2"]),
              st.tuples(st.integers(0, 4),
                        st.sampled_from(INTERESTING),
                        st.sampled_from([0, L.QCOW_OFLAG_COPIED, L.QCOW_OFLAG_COMPRESSED,
                                         L.QCOW_OFLAG_ZERO, 1 << 62 | 1 << 63, 0x1FF]))),
    st.tuples(st.just("truncate"), st.just(""), st.integers(0, 9 * CS)),
)


def _apply(d: bytearray, m) -> bytearray:
    kind, where, arg = m
    if kind == "flip":
        start, length = REGIONS[where]
        for off, x in arg:
            d[start + off % length] ^= x
    elif kind == "field":
        off, width = HEADER_FIELDS[where]
        d[off:off + width] = _value(arg, width).to_bytes(width, "big")
    elif kind == "entry":
        index, value, flags = arg
        base = {"l1": L1, "reftable": REFTABLE, "l2": L2}[where]
        struct.pack_into(">Q", d, base + 8 * index, (value | flags) & ((1 << 64) - 1))
    else:
        del d[arg:]
    return d


def _exercise(path: str) -> None:
    """Everything a user can do with an image: open (with its chain), read, map."""
    with open_qcow2_file(path) as r:
        for off in (0, CS - 1, 2 * CS, 4 * CS, r.size - 1):
            if 0 <= off < r.size:
                r.read(off, min(2 * CS, r.size - off))
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pread = file_pread(f)
        meta = open_qcow2(pread, size, path)
        ranges = map_image(meta, pread, size)
    pos = 0
    for x in ranges:
        assert x["host"] == pos and x["length"] > 0
        pos += x["length"]
    assert pos == size


@pytest.mark.slow
@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_images_only_raise_image_error(tmp_path_factory, base, mutations):
    d = bytearray(base)
    for m in sorted(mutations, key=lambda m: m[0] == "truncate"):   # truncations last
        d = _apply(d, m)
    path = str(tmp_path_factory.mktemp("fuzz") / "disk.qcow2")
    with open(path, "wb") as f:
        f.write(d)
    before = hashlib.sha256(d).hexdigest()
    tracemalloc.start()
    try:
        _exercise(path)
    except ImageError as e:
        msg = str(e)
        assert msg.startswith(path + ": "), msg
        assert "\n" not in msg and len(msg) < 600, msg
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"opening allocated {peak} bytes ({mutations})"
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before


@pytest.mark.parametrize("field,value", [
    ("l1_size", (1 << 22)), ("l1_size", (1 << 32) - 1), ("refcount_table_clusters", 2048),
    ("refcount_table_clusters", (1 << 32) - 1), ("nb_snapshots", 65536), ("size", (1 << 64) - 1),
    ("cluster_bits", 21), ("header_length", 2 * CS),
])
def test_claimed_sizes_do_not_allocate(tmp_path, base, field, value):
    """Sizes within QEMU's limits but beyond the file are refused before anything is read."""
    off, width = HEADER_FIELDS[field]
    d = bytearray(base)
    d[off:off + width] = value.to_bytes(width, "big")
    path = str(tmp_path / "disk.qcow2")
    with open(path, "wb") as f:
        f.write(d)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError):
            _exercise(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20
