"""Numbers and names from the virtio spec, Linux uapi headers and QEMU: the single source of truth."""
