"""QEMU's qcow2 format driver: on-disk layout, opener, reader, creator, and the stepped driver."""
