"""The virtio-pci modern transport: the register file between the guest driver and the device."""
