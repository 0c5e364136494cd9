"""`vblkdbg create` (raw or qcow2, like qemu-img create) and `vblkdbg map` (the host file
of an image, classified range by range)."""
from __future__ import annotations

import json
import os

from emu.errors import ImageError


class UsageError(ImageError):
    """A bad combination of command-line options (reported like any other error)."""


_COMPAT = {"0.10": 2, "1.1": 3}


def cmd_create(a) -> int:
    fmt = a.format
    if fmt == "raw":
        for opt, given in (("--cluster-size", a.cluster_size is not None),
                           ("--refcount-bits", a.refcount_bits is not None),
                           ("-b/--backing", a.backing is not None),
                           ("-F/--backing-format", a.backing_format is not None),
                           ("--lazy-refcounts", a.lazy_refcounts),
                           ("--compat", a.compat is not None)):
            if given:
                raise UsageError(f"{opt} only applies to -f qcow2")
        if a.size is None:
            raise UsageError("a raw image needs a SIZE")
        from emu.block.image import create_raw
        create_raw(a.image, a.size, a.force)
        print(f"Formatting '{a.image}', fmt=raw size={a.size}")
        return 0
    from emu.block.qcow2.create import create_qcow2
    if a.backing_format is not None and a.backing is None:
        raise UsageError("-F/--backing-format needs -b/--backing")
    cluster_size = 65536 if a.cluster_size is None else a.cluster_size
    refcount_bits = 16 if a.refcount_bits is None else a.refcount_bits
    version = _COMPAT[a.compat] if a.compat else 3
    create_qcow2(a.image, a.size, cluster_size=cluster_size, refcount_bits=refcount_bits,
                 backing_file=a.backing, backing_format=a.backing_format,
                 lazy_refcounts=a.lazy_refcounts, version=version, force=a.force)
    from emu.block.qcow2.image import open_qcow2_file
    with open_qcow2_file(a.image) as r:
        size, header = r.size, r.meta.header
    parts = [f"cluster_size={cluster_size}", "extended_l2=off", "compression_type=zlib",
             f"size={size}"]
    if a.backing is not None:
        parts += [f"backing_file={a.backing}", f"backing_fmt={header.backing_format}"]
    if a.compat:
        parts.append(f"compat={a.compat}")
    parts += [f"lazy_refcounts={'on' if a.lazy_refcounts else 'off'}",
              f"refcount_bits={refcount_bits}"]
    print(f"Formatting '{a.image}', fmt=qcow2 {' '.join(parts)}")
    return 0


def map_file(path: str) -> list[dict]:
    """map_image for a qcow2 file; a raw file is one data range mapping guest = host."""
    from emu.block.image import detect_format
    from emu.block.qcow2.image import file_pread, map_image, open_qcow2
    fmt = detect_format(path)
    size = os.path.getsize(path)
    if fmt != "qcow2":
        return [{"host": 0, "length": size, "kind": "data", "guest": 0, "zero": False}] \
            if size else []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        pread = file_pread(f)
        meta = open_qcow2(pread, size, path, check_backing=False)
        return map_image(meta, pread, size)


def cmd_map(a) -> int:
    ranges = map_file(a.image)
    if a.json:
        print(json.dumps(ranges, indent=2))
        return 0
    print(f"{'HOST OFFSET':>18}  {'LENGTH':>12}  {'KIND':<15} GUEST OFFSET")
    for r in ranges:
        guest = "" if r["guest"] is None else f"{r['guest']:#018x}"
        if r.get("zero"):
            guest += " (reads as zero)"
        print(f"{r['host']:#018x}  {r['length']:>#12x}  {r['kind']:<15} {guest}".rstrip())
    return 0
