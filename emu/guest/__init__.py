"""The guest Linux side: a workload process, blk-mq, virtio_blk, virtio_ring and virtio_pci."""
