"""virtio-blk request types, statuses and config layout (spec 5.2, include/uapi/linux/virtio_blk.h)."""
from __future__ import annotations

SECTOR_SIZE = 512
SECTOR_SHIFT = 9

T_IN = 0
T_OUT = 1
T_SCSI_CMD = 2
T_FLUSH = 4
T_GET_ID = 8
T_GET_LIFETIME = 10
T_DISCARD = 11
T_WRITE_ZEROES = 13
T_SECURE_ERASE = 14
T_ZONE_APPEND = 15
T_ZONE_REPORT = 16
T_ZONE_OPEN = 18
T_ZONE_CLOSE = 20
T_ZONE_FINISH = 22
T_ZONE_RESET = 24
T_ZONE_RESET_ALL = 26
T_BARRIER = 0x80000000

TYPE_NAMES = {T_IN: "IN", T_OUT: "OUT", T_SCSI_CMD: "SCSI_CMD", T_FLUSH: "FLUSH",
              T_GET_ID: "GET_ID", T_GET_LIFETIME: "GET_LIFETIME", T_DISCARD: "DISCARD",
              T_WRITE_ZEROES: "WRITE_ZEROES", T_SECURE_ERASE: "SECURE_ERASE",
              T_ZONE_APPEND: "ZONE_APPEND", T_ZONE_REPORT: "ZONE_REPORT",
              T_ZONE_OPEN: "ZONE_OPEN", T_ZONE_CLOSE: "ZONE_CLOSE",
              T_ZONE_FINISH: "ZONE_FINISH", T_ZONE_RESET: "ZONE_RESET",
              T_ZONE_RESET_ALL: "ZONE_RESET_ALL"}

# Types the `run --json` summary counts under requests.by_type
SUMMARY_TYPES = ("IN", "OUT", "FLUSH", "GET_ID", "DISCARD", "WRITE_ZEROES")

S_OK = 0
S_IOERR = 1
S_UNSUPP = 2
STATUS_NAMES = {S_OK: "OK", S_IOERR: "IOERR", S_UNSUPP: "UNSUPP"}

ID_BYTES = 20                        # VIRTIO_BLK_ID_BYTES
OUTHDR_SIZE = 16                     # struct virtio_blk_outhdr
DWZ_SEG_SIZE = 16                    # struct virtio_blk_discard_write_zeroes
WRITE_ZEROES_FLAG_UNMAP = 1

BDRV_REQUEST_MAX_SECTORS = 4194303  # QEMU: MIN(SIZE_MAX, INT_MAX) >> 9
MAX_MERGE_REQS = 32                  # QEMU VIRTIO_BLK_MAX_MERGE_REQS
IOV_MAX = 1024

# struct virtio_blk_config: name -> (offset, size) (spec 5.2.4)
CONFIG_FIELDS = {
    "capacity": (0, 8), "size_max": (8, 4), "seg_max": (12, 4),
    "geometry.cylinders": (16, 2), "geometry.heads": (18, 1), "geometry.sectors": (19, 1),
    "blk_size": (20, 4), "physical_block_exp": (24, 1), "alignment_offset": (25, 1),
    "min_io_size": (26, 2), "opt_io_size": (28, 4), "writeback": (32, 1),
    "num_queues": (34, 2), "max_discard_sectors": (36, 4), "max_discard_seg": (40, 4),
    "discard_sector_alignment": (44, 4), "max_write_zeroes_sectors": (48, 4),
    "max_write_zeroes_seg": (52, 4), "write_zeroes_may_unmap": (56, 1),
}
