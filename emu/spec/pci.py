"""virtio-pci modern transport layout as QEMU implements it (spec 4.1.4, hw/virtio/virtio-pci.c)."""
from __future__ import annotations

VENDOR_ID = 0x1AF4
DEVICE_ID_BLK_MODERN = 0x1042

# Regions inside the 64-bit memory BAR 4 (QEMU virtio_pci_realize)
COMMON_CFG = 0x0000
ISR_CFG = 0x1000
DEVICE_CFG = 0x2000
NOTIFY_CFG = 0x3000
REGION_SIZE = 0x1000
NOTIFY_OFF_MULTIPLIER = 4
BAR4_GPA = 0xFE000000          # where the guest firmware placed BAR 4 (outside RAM)
MSIX_ADDRESS = 0xFEE00000      # x86 MSI address window (local APIC)

NO_VECTOR = 0xFFFF             # VIRTIO_MSI_NO_VECTOR

# struct virtio_pci_common_cfg: name -> (offset, size)
COMMON_FIELDS = {
    "device_feature_select": (0, 4), "device_feature": (4, 4),
    "driver_feature_select": (8, 4), "driver_feature": (12, 4),
    "config_msix_vector": (16, 2), "num_queues": (18, 2), "device_status": (20, 1),
    "config_generation": (21, 1), "queue_select": (22, 2), "queue_size": (24, 2),
    "queue_msix_vector": (26, 2), "queue_enable": (28, 2), "queue_notify_off": (30, 2),
    "queue_desc_lo": (32, 4), "queue_desc_hi": (36, 4), "queue_driver_lo": (40, 4),
    "queue_driver_hi": (44, 4), "queue_device_lo": (48, 4), "queue_device_hi": (52, 4),
    "queue_notif_config_data": (56, 2), "queue_reset": (58, 2),
}
COMMON_BY_OFFSET = {off: name for name, (off, _size) in COMMON_FIELDS.items()}
