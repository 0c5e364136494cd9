"""Virtio 1.x constants and split-ring layouts (spec 2.7, include/uapi/linux/virtio_ring.h)."""
from __future__ import annotations

# Descriptor flags (spec 2.7.5, struct virtq_desc)
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
DESC_FLAG_NAMES = ((VIRTQ_DESC_F_NEXT, "NEXT"), (VIRTQ_DESC_F_WRITE, "WRITE"),
                   (VIRTQ_DESC_F_INDIRECT, "INDIRECT"))

VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16
USED_ELEM_SIZE = 8
VIRTQUEUE_MAX_SIZE = 1024          # QEMU include/hw/virtio/virtio.h

# Device status (spec 2.1)
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128
STATUS_NAMES = ((ACKNOWLEDGE, "ACKNOWLEDGE"), (DRIVER, "DRIVER"), (DRIVER_OK, "DRIVER_OK"),
                (FEATURES_OK, "FEATURES_OK"), (DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET"),
                (FAILED, "FAILED"))

# Feature bits: device-independent (spec 6) and virtio-blk (spec 5.2.3)
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_BAD_FEATURE = 30
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34
F_IN_ORDER = 35
F_ORDER_PLATFORM = 36
F_SR_IOV = 37
F_NOTIFICATION_DATA = 38
F_NOTIF_CONFIG_DATA = 39
F_RING_RESET = 40
F_ADMIN_VQ = 41

BLK_F_BARRIER = 0
BLK_F_SIZE_MAX = 1
BLK_F_SEG_MAX = 2
BLK_F_GEOMETRY = 4
BLK_F_RO = 5
BLK_F_BLK_SIZE = 6
BLK_F_SCSI = 7
BLK_F_FLUSH = 9
BLK_F_TOPOLOGY = 10
BLK_F_CONFIG_WCE = 11
BLK_F_MQ = 12
BLK_F_DISCARD = 13
BLK_F_WRITE_ZEROES = 14
BLK_F_LIFETIME = 15
BLK_F_SECURE_ERASE = 16
BLK_F_ZONED = 17

FEATURE_NAMES: dict[int, str] = {
    BLK_F_BARRIER: "VIRTIO_BLK_F_BARRIER", BLK_F_SIZE_MAX: "VIRTIO_BLK_F_SIZE_MAX",
    BLK_F_SEG_MAX: "VIRTIO_BLK_F_SEG_MAX", BLK_F_GEOMETRY: "VIRTIO_BLK_F_GEOMETRY",
    BLK_F_RO: "VIRTIO_BLK_F_RO", BLK_F_BLK_SIZE: "VIRTIO_BLK_F_BLK_SIZE",
    BLK_F_SCSI: "VIRTIO_BLK_F_SCSI", BLK_F_FLUSH: "VIRTIO_BLK_F_FLUSH",
    BLK_F_TOPOLOGY: "VIRTIO_BLK_F_TOPOLOGY", BLK_F_CONFIG_WCE: "VIRTIO_BLK_F_CONFIG_WCE",
    BLK_F_MQ: "VIRTIO_BLK_F_MQ", BLK_F_DISCARD: "VIRTIO_BLK_F_DISCARD",
    BLK_F_WRITE_ZEROES: "VIRTIO_BLK_F_WRITE_ZEROES", BLK_F_LIFETIME: "VIRTIO_BLK_F_LIFETIME",
    BLK_F_SECURE_ERASE: "VIRTIO_BLK_F_SECURE_ERASE", BLK_F_ZONED: "VIRTIO_BLK_F_ZONED",
    F_NOTIFY_ON_EMPTY: "VIRTIO_F_NOTIFY_ON_EMPTY", F_ANY_LAYOUT: "VIRTIO_F_ANY_LAYOUT",
    F_INDIRECT_DESC: "VIRTIO_RING_F_INDIRECT_DESC", F_EVENT_IDX: "VIRTIO_RING_F_EVENT_IDX",
    F_BAD_FEATURE: "VIRTIO_F_BAD_FEATURE", F_VERSION_1: "VIRTIO_F_VERSION_1",
    F_ACCESS_PLATFORM: "VIRTIO_F_ACCESS_PLATFORM", F_RING_PACKED: "VIRTIO_F_RING_PACKED",
    F_IN_ORDER: "VIRTIO_F_IN_ORDER", F_ORDER_PLATFORM: "VIRTIO_F_ORDER_PLATFORM",
    F_SR_IOV: "VIRTIO_F_SR_IOV", F_NOTIFICATION_DATA: "VIRTIO_F_NOTIFICATION_DATA",
    F_NOTIF_CONFIG_DATA: "VIRTIO_F_NOTIF_CONFIG_DATA", F_RING_RESET: "VIRTIO_F_RING_RESET",
    F_ADMIN_VQ: "VIRTIO_F_ADMIN_VQ",
}

# Legacy-only bits that QEMU hides from the modern device_feature register
LEGACY_FEATURES = (1 << F_NOTIFY_ON_EMPTY) | (1 << F_ANY_LAYOUT) | (1 << F_BAD_FEATURE)


def bit(n: int) -> int:
    """1 << n, for feature masks."""
    return 1 << n


def feature_names(mask: int) -> list[str]:
    """Names of the feature bits set in mask, lowest bit first (unknown bits as 'bit N')."""
    out = []
    n = 0
    while mask >> n:
        if (mask >> n) & 1:
            out.append(FEATURE_NAMES.get(n, f"bit {n}"))
        n += 1
    return out


def status_names(status: int) -> list[str]:
    """Names of the device status bits set (spec 2.1)."""
    return [name for val, name in STATUS_NAMES if status & val]


def desc_flag_names(flags: int) -> str:
    """'NEXT|WRITE' style rendering of descriptor flags; unknown bits in hex."""
    parts = [name for val, name in DESC_FLAG_NAMES if flags & val]
    rest = flags & ~0x7
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) if parts else "0"


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """include/uapi/linux/virtio_ring.h vring_need_event (shared by Linux and QEMU)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old) & 0xFFFF)


# Split ring part sizes (spec 2.7): the event word is included in both rings
def desc_table_size(num: int) -> int:
    return DESC_SIZE * num


def avail_ring_size(num: int) -> int:
    return 6 + 2 * num


def used_ring_size(num: int) -> int:
    return 6 + USED_ELEM_SIZE * num


def vring_layout(base: int, num: int, align: int) -> tuple[int, int, int, int]:
    """vring_init(): (desc, avail, used, total bytes) of one contiguous split ring."""
    desc = base
    avail = base + DESC_SIZE * num
    used = (avail + 4 + 2 * num + 2 + align - 1) & ~(align - 1)
    return desc, avail, used, used + used_ring_size(num) - base


# Offsets inside the avail ring / used ring
AVAIL_FLAGS = 0
AVAIL_IDX = 2
AVAIL_RING = 4
USED_FLAGS = 0
USED_IDX = 2
USED_RING = 4


def avail_used_event_off(num: int) -> int:
    """Offset of used_event in the avail ring (spec 2.7.10)."""
    return 4 + 2 * num


def used_avail_event_off(num: int) -> int:
    """Offset of avail_event in the used ring (spec 2.7.10)."""
    return 4 + 8 * num
