"""Open an image file: detect its format from the magic, check it can be a disk."""
from __future__ import annotations

import os

from ..errors import ImageError
from .hostfile import HostFile
from .raw import RawFormat

QCOW2_MAGIC = b"QFI\xfb"


def detect_format(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def open_image(path: str, mode: str = "overlay", overlay_dir: str | None = None):
    """(HostFile, format driver) for path; mode 'overlay' (default), 'write' or 'read'."""
    fmt = detect_format(path)
    if fmt == "qcow2":
        raise ImageError(f"{path}: qcow2 images are not supported yet (only raw)")
    size = os.path.getsize(path)
    if size < 512:
        raise ImageError(f"{path}: too small to be a disk ({size} bytes; a disk needs at least "
                         "one 512-byte sector)")
    hf = HostFile(path, mode, overlay_dir)
    return hf, RawFormat(hf)


def create_raw(path: str, size: int, force: bool = False) -> None:
    """qemu-img create -f raw: a sparse file of the given size."""
    if size <= 0 or size % 512:
        raise ImageError(f"size must be a positive multiple of 512 bytes, not {size}")
    if os.path.exists(path) and not force:
        raise ImageError(f"{path}: already exists (use --force to overwrite it)")
    try:
        with open(path, "wb") as f:
            f.truncate(size)
    except OSError as e:
        raise ImageError(f"{path}: cannot create: {e.strerror}") from None
