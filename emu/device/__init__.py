"""The QEMU side: the generic virtio device/virtqueue and the virtio-blk device model."""
