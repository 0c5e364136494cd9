"""Corrupted qcow2 metadata met at run time: clear errors (or correct I/O), never a traceback."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import ImageError
from tests.conftest import build, run_all
from tests.oracle import qemu_img, qemu_io

WL = ("write 0 4k\nread 64k 8k\nwrite 1M 70k\nwait\nwrite-zeroes 2M 64k unmap\ndiscard 0 64k\n"
      "flush\nread 0 128k\nwait\nwrite 3M 512\nwait\n")


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("fz")
    img = str(d / "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "4M")
    qemu_io("-f", "qcow2", img, "-c", "write -P 0x11 0 256k", "-c", "write -P 0x22 1M 64k",
            "-c", "write -z 2M 64k")
    with open(img, "rb") as f:
        return f.read()


@pytest.mark.slow
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 0x4FFF), st.integers(0, 255)), min_size=1, max_size=6),
       discard=st.sampled_from(["ignore", "unmap"]))
def test_corrupted_metadata_never_raises(tmp_path_factory, base_image, flips, discard):
    data = bytearray(base_image)
    for off, val in flips:
        data[0x1000 + off % 0x5000] = val    # keep the header, hit reftable, refblock, L1, L2
    img = tmp_path_factory.mktemp("c") / "c.qcow2"
    img.write_bytes(bytes(data))
    before = hashlib.sha256(bytes(data)).hexdigest()
    try:
        m = build(str(img), WL, discard=discard)
    except ImageError as e:
        assert str(e).startswith(str(img)) and "\n" not in str(e)
        return
    run_all(m, limit=400000)
    m.shutdown()
    m.hostfile.close()
    internal = [e for e in m.vdev.errors if "internal" in e["message"]]
    assert not internal, internal
    assert hashlib.sha256(img.read_bytes()).hexdigest() == before    # overlay: image untouched
