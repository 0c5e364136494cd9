"""create_qcow2 writes exactly what `qemu-img create -f qcow2` writes, and qemu-img check
accepts it; the CLI's create command; clear refusals."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emu.block.qcow2.create import create_qcow2
from emu.block.qcow2.image import open_qcow2_file
from emu.errors import ImageError
from tests.emu.qcow2.util import MiB, make_raw, read_all
from tests.oracle import qemu_img, qemu_img_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _qemu_create(tmp_path, size, cluster_size=65536, refcount_bits=16, version=3,
                 lazy=False, backing=None, backing_format=None) -> bytes:
    path = tmp_path / "qemu.qcow2"
    if path.exists():
        path.unlink()
    opts = (f"cluster_size={cluster_size},refcount_bits={refcount_bits},"
            f"lazy_refcounts={'on' if lazy else 'off'},compat={'0.10' if version == 2 else '1.1'}")
    args = ["create", "-q", "-f", "qcow2", "-o", opts]
    if backing:
        args += ["-b", backing, "-F", backing_format]
    qemu_img(*args, path, size)
    return path.read_bytes()


def _ours(tmp_path, size, **kw) -> str:
    path = str(tmp_path / "ours.qcow2")
    create_qcow2(path, size, force=True, **kw)
    return path


CASES = [
    # (size, cluster_size, refcount_bits, version)
    (16 * MiB, 65536, 16, 3),
    (16 * MiB, 65536, 16, 2),
    (0, 65536, 16, 3),
    (512, 512, 1, 3),
    (64 * MiB, 512, 64, 3),        # the L1 table outgrows the first refcount block
    (1 << 30, 512, 64, 3),         # ... and the refcount table: it is regrown
    (1 << 30, 1024, 32, 3),
    (100 * MiB, 2048, 2, 3),
    (256 * MiB, 4096, 4, 3),
    (4 * MiB, 4096, 8, 2 + 1),
    (1 << 40, 65536, 64, 3),
    (7 * MiB + 512, 1 << 21, 16, 3),
    (1 << 30, 1 << 21, 1, 2 + 1),
    (10 << 30, 512, 16, 2),
]


@pytest.mark.parametrize("size,cluster_size,refcount_bits,version", CASES)
def test_byte_identical_to_qemu_img_create(tmp_path, size, cluster_size, refcount_bits,
                                            version):
    theirs = _qemu_create(tmp_path, size, cluster_size, refcount_bits, version)
    path = _ours(tmp_path, size, cluster_size=cluster_size, refcount_bits=refcount_bits,
                 version=version)
    with open(path, "rb") as f:
        ours = f.read()
    assert len(ours) == len(theirs)
    assert ours == theirs
    r = qemu_img("check", path)
    assert "No errors were found" in r.stdout


@pytest.mark.parametrize("cluster_size,version,lazy", [(65536, 3, True), (512, 3, False),
                                                       (65536, 2, False), (4096, 3, True)])
@pytest.mark.parametrize("backing_format", ["raw", "qcow2"])
def test_byte_identical_with_backing(tmp_path, cluster_size, version, lazy, backing_format):
    if backing_format == "raw":
        make_raw(tmp_path, "base.img", b"\x01" * MiB)
    else:
        qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.img"), "1M")
    theirs = _qemu_create(tmp_path, 4 * MiB, cluster_size, 16, version, lazy, "base.img",
                          backing_format)
    path = _ours(tmp_path, 4 * MiB, cluster_size=cluster_size, version=version,
                 lazy_refcounts=lazy, backing_file="base.img", backing_format=backing_format)
    with open(path, "rb") as f:
        assert f.read() == theirs
    assert "No errors were found" in qemu_img("check", path).stdout
    info = qemu_img_json("info", path)
    assert info["backing-filename"] == "base.img"
    assert info["backing-filename-format"] == backing_format


def test_backing_format_probed_and_size_from_backing(tmp_path):
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "3M")
    path = _ours(tmp_path, None, backing_file="base.qcow2")
    theirs = _qemu_create(tmp_path, 3 * MiB, backing="base.qcow2", backing_format="qcow2")
    with open(path, "rb") as f:
        assert f.read() == theirs
    with open_qcow2_file(path) as r:
        assert r.size == 3 * MiB and r.meta.backing["format"] == "qcow2"


def test_read_back_empty(tmp_path):
    path = _ours(tmp_path, 2 * MiB, cluster_size=4096)
    assert read_all(path) == bytes(2 * MiB)


@pytest.mark.parametrize("kw,match", [
    (dict(cluster_size=1000), "power of two"),
    (dict(cluster_size=4 * MiB), "power of two"),
    (dict(refcount_bits=3), "power of two"),
    (dict(refcount_bits=128), "64 bits"),
    (dict(refcount_bits=8, version=2), "compat 1.1"),
    (dict(lazy_refcounts=True, version=2), "compat 1.1"),
    (dict(version=4), "version"),
    (dict(size=1000), "multiple of 512"),
    (dict(size=1 << 50, cluster_size=512), "too large"),
    (dict(backing_file="missing.raw", backing_format="raw"), "does not exist"),
    (dict(backing_file="../elsewhere.raw", backing_format="raw"), "outside the image's folder"),
    (dict(backing_file="/etc/hostname", backing_format="raw"), "outside the image's folder"),
    (dict(backing_file="ours.qcow2", backing_format="qcow2"), "image itself"),
    (dict(backing_file="b.raw", backing_format="vmdk"), "not supported"),
    (dict(backing_format="raw"), "without a backing file"),
    (dict(size=None), "size is needed"),
])
def test_refusals(tmp_path, kw, match):
    make_raw(tmp_path, "b.raw", bytes(4096))
    args = dict(size=MiB)
    args.update(kw)
    size = args.pop("size")
    path = str(tmp_path / "ours.qcow2")
    with pytest.raises(ImageError, match=match) as e:
        create_qcow2(path, size, **args)
    assert str(e.value).startswith(path + ":") and "\n" not in str(e.value)
    assert not os.path.exists(path)


def test_backing_name_that_does_not_fit_in_the_header(tmp_path):
    name = "a" * 200 + "/" + "b" * 200 + "/base.raw"       # 409 bytes: > 512 - 136
    os.makedirs(tmp_path / os.path.dirname(name))
    make_raw(tmp_path, name, bytes(4096))
    with pytest.raises(ImageError, match="does not fit"):
        create_qcow2(str(tmp_path / "x.qcow2"), MiB, cluster_size=512, backing_file=name,
                     backing_format="raw")
    create_qcow2(str(tmp_path / "y.qcow2"), MiB, cluster_size=4096, backing_file=name,
                 backing_format="raw")
    with open_qcow2_file(str(tmp_path / "y.qcow2")) as r:
        assert r.meta.header.backing_file == name


def test_refuses_existing_file_unless_force(tmp_path):
    path = make_raw(tmp_path, "x.qcow2", b"keep me")
    with pytest.raises(ImageError, match="already exists"):
        create_qcow2(path, MiB)
    with open(path, "rb") as f:
        assert f.read() == b"keep me"
    create_qcow2(path, MiB, force=True)
    assert "No errors were found" in qemu_img("check", path).stdout


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_create_qcow2(tmp_path):
    make_raw(tmp_path, "base.raw", bytes(MiB))
    p = str(tmp_path / "top.qcow2")
    r = _cli("create", "-f", "qcow2", p, "8M", "--cluster-size", "4k", "--refcount-bits", "8",
             "-b", "base.raw", "-F", "raw", "--lazy-refcounts", "--compat", "1.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Formatting '{p}', fmt=qcow2 cluster_size=4096")
    theirs = _qemu_create(tmp_path, 8 * MiB, 4096, 8, 3, True, "base.raw", "raw")
    with open(p, "rb") as f:
        assert f.read() == theirs
    r = _cli("create", "-f", "qcow2", p, "8M")
    assert r.returncode == 1 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    r = _cli("create", str(tmp_path / "raw.img"), "1M", "--cluster-size", "4k")
    assert r.returncode == 1 and "only applies to -f qcow2" in r.stderr
    r = _cli("create", "-f", "qcow2", str(tmp_path / "v2.qcow2"), "1M", "--compat", "0.10",
             "--refcount-bits", "1")
    assert r.returncode == 1 and "compat 1.1" in r.stderr and "Traceback" not in r.stderr
    r = _cli("create", "-f", "qcow2", str(tmp_path / "n.qcow2"), "1M", "-b", "nope.raw")
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = _cli("create", str(tmp_path / "r.raw"), "1M")
    assert r.returncode == 0 and "fmt=raw" in r.stdout
