"""QEMU block/raw-format.c: the raw format driver, a window straight onto the protocol layer."""
from __future__ import annotations

import errno as E

from ..device.iov import iov_to_buf
from ..sim.steps import handler

SRC = "block/raw-format.c"
FN = {"read": "raw_co_preadv", "write": "raw_co_pwritev", "flush": "raw_co_flush",
      "discard": "raw_co_pdiscard", "write_zeroes": "raw_co_pwrite_zeroes"}
# (offset, magic, name) of the formats bdrv_probe_all() would prefer over raw
PROBE_MAGICS = ((0, b"QFI\xfb", "qcow/qcow2"), (0, b"KDMV", "vmdk"),
                (0, b"# Disk DescriptorFile", "vmdk"), (0, b"vhdxfile", "vhdx"),
                (0, b"conectix", "vpc"), (0, b"LUKS\xba\xbe", "luks"),
                (64, b"\x7f\x10\xda\xbe", "vdi"))


def probe_other_format(head: bytes) -> str | None:
    """Which non-raw format the first 512 bytes would probe as (bdrv_probe_all), if any."""
    for off, magic, name in PROBE_MAGICS:
        if head[off:off + len(magic)] == magic:
            return name
    return None


class RawFormat:
    """The format-driver interface: which step each operation enters, and the virtual size."""
    name = "raw"
    close_kind = None
    open_kind = None
    read_only_reason = None
    warnings: list = []

    def __init__(self, hostfile) -> None:
        self.file = hostfile

    def virtual_size(self) -> int:
        return self.file.size

    def prepare_open(self, writable: bool) -> None:
        """Nothing to fix up when a raw image is opened."""

    def close(self) -> None:
        """Nothing beyond the host file (which the caller closes)."""

    def summary(self) -> dict:
        return {}

    def entry_kind(self, op: str) -> str:
        return "raw.co_entry"

    def state(self) -> dict:
        return {"format": "raw"}


@handler("raw.co_entry", "raw", "raw_co_pwritev", SRC)
def co_entry(m, bid: int) -> str:
    """raw_co_*: refuse a guest write that would change what the probed format looks like."""
    req = m.block.reqs[bid]
    op = req["cur_op"]
    m.set_function(FN[op])
    if op == "write" and m.block.probed and req["offset"] < 512 and req["bytes"]:
        other = probe_other_format(iov_to_buf(m, req["qiov"], 512))
        if other:
            req["ret"] = -E.EPERM
            m.sim.post("qemu", "blk.aio_complete", (bid,))
            return (f"bdrv_probe_all: the new sector 0 would probe as {other}, not raw; "
                    "a probed raw image refuses it: -EPERM")
    m.sim.cont("file.co_entry", (bid,))
    return f"{op} passes straight to the file at the same offset"
