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


def open_image(path: str, mode: str = "overlay", overlay_dir: str | None = None, *,
               discard_unmap: bool = False, allow_backing_outside: bool = False,
               fmt: str = "auto"):
    """(HostFile, format driver) for path; mode 'overlay' (default), 'write' or 'read'.

    The format comes from the magic (qcow2) or is raw; a qcow2 image is opened the way
    qcow2_do_open does, with its backing chain (read-only).
    """
    detected = detect_format(path)
    if fmt == "qcow2" and detected != "qcow2":
        raise ImageError(f"{path}: not a qcow2 image (bad magic: the file does not start with "
                         "'QFI\\xfb')")
    fmt = detected if fmt == "auto" else fmt
    size = os.path.getsize(path)
    if fmt == "raw" and size < 512:
        raise ImageError(f"{path}: too small to be a disk ({size} bytes; a disk needs at least "
                         "one 512-byte sector)")
    hf = HostFile(path, mode, overlay_dir)
    if fmt == "raw":
        return hf, RawFormat(hf)
    from .qcow2.driver import Qcow2Format
    from .qcow2.image import open_backing_chain, open_qcow2
    try:
        meta = open_qcow2(hf.pread, hf.size, path, allow_backing_outside=allow_backing_outside)
        backing = open_backing_chain(meta, allow_backing_outside)
        if meta.header.size < 512:
            raise ImageError(f"{path}: virtual size {meta.header.size} is too small to be a disk")
    except BaseException:
        hf.close()
        raise
    try:
        return hf, Qcow2Format(hf, meta, backing, discard_unmap=discard_unmap)
    except BaseException:
        if backing is not None:
            backing.close()
        hf.close()
        raise


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
