"""The QEMU block layer: BlockBackend, format drivers (raw), and the host file protocol."""
