"""Helpers for the qcow2 tests: images made by the real QEMU tools, read back by vblkdbg."""
from __future__ import annotations

import hashlib
import os

from emu.block.qcow2.image import open_qcow2_file
from tests.oracle import qemu_img, qemu_io, to_raw

MiB = 1 << 20


def make(tmp_path, name: str, size: int | str, *opts: str, backing: str | None = None,
         backing_fmt: str | None = None) -> str:
    """qemu-img create -f qcow2 [-o opts] [-b backing -F fmt] tmp_path/name size."""
    path = str(tmp_path / name)
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", ",".join(opts)]
    if backing is not None:
        args += ["-b", backing, "-F", backing_fmt or "raw"]
    qemu_img(*args, path, size)
    return path


def make_raw(tmp_path, name: str, content: bytes) -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def io(path: str, *cmds: str, fmt: str = "qcow2") -> None:
    """qemu-io -f fmt -c cmd ... path."""
    args = ["-f", fmt]
    for c in cmds:
        args += ["-c", c]
    qemu_io(*args, path)


def read_all(path: str, **kw) -> bytes:
    with open_qcow2_file(path, **kw) as r:
        return r.read(0, r.size)


def assert_reads_like_qemu(path: str, tmp_path) -> bytes:
    """vblkdbg's guest view of path equals `qemu-img convert -O raw` byte for byte."""
    ours = read_all(path)
    theirs = to_raw(path, str(tmp_path / (os.path.basename(path) + ".oracle.raw")))
    if ours != theirs:
        first = next((i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]),
                     min(len(ours), len(theirs)))
        raise AssertionError(f"{path}: guest view differs from qemu-img convert at byte "
                             f"{first:#x} (ours {len(ours)} bytes, qemu {len(theirs)})")
    return ours


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
