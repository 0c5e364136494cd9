"""Random operations on a HostFile, for the property tests that run the same sequence on two
of them (tests/emu/test_hostfile_zeroes.py, tests/emu_fast/test_hostfile.py)."""
from __future__ import annotations

from emu.block.hostfile import HostFile

SIZE = 5 * 4096 + 700          # the base image's size: not a multiple of the block size


def base_image(path) -> None:
    """The base image both HostFiles copy (a pathlib.Path): SIZE bytes of a pattern."""
    path.write_bytes(bytes(range(256)) * (SIZE // 256) + b"\x5a" * (SIZE % 256))


def apply(hf: HostFile, op: tuple, zero_as_pwrite: bool = False):
    """Run one operation; its result, or the OSError it raised as a tuple.  ("zero", off, n)
    is write_zeroes, or with zero_as_pwrite the pwrite of n zero bytes it stands for;
    ("undo", restart) opens an undo journal (restart, or none open) or restores the open one."""
    kind = op[0]
    try:
        if kind == "zero":
            if zero_as_pwrite:
                return hf.pwrite(op[1], bytes(op[2]))
            return hf.write_zeroes(op[1], op[2])
        if kind == "read":
            return hf.pread(op[1], op[2])
        if kind == "write":
            return hf.pwrite(op[1], bytes([op[3]]) * op[2])
        if kind == "truncate":
            return hf.truncate(op[1])
        if kind == "digest":
            return hf.digest()
        if op[1] or hf.undo is None:
            hf.undo, hf.undo_size = {}, None
            return None
        blocks, size = hf.undo, hf.undo_size if hf.undo_size is not None else hf.size
        hf.undo = None
        hf.restore_blocks(blocks, size)
        return None
    except OSError as e:
        return ("OSError", e.errno, e.strerror)
