"""Plain-data state of the guest kernel and its process (copyable, hashable, restorable)."""
from __future__ import annotations

from dataclasses import dataclass, field

# Linux block/blk-mq limits this model uses (include/linux/blkdev.h, block/blk-settings.c)
BLK_DEF_MAX_SECTORS_CAP = 2560      # 1280 KiB soft cap on max_sectors (Linux >= 6.7)
BLK_MAX_REQUEST_COUNT = 32          # requests held in a plug before it flushes
BLK_PLUG_FLUSH_SIZE = 128 * 1024    # a plugged request this big flushes the plug
BIO_MAX_VECS = 256                  # pages per bio built by blkdev_direct_IO
VBLK_PDU_SIZE = 64                  # bytes of guest RAM per tag for struct virtblk_req

# mq-deadline defaults (block/mq-deadline.c)
DD_READ_EXPIRE_NS = 500_000_000
DD_WRITE_EXPIRE_NS = 5_000_000_000
DD_WRITES_STARVED = 2
DD_FIFO_BATCH = 16


@dataclass(slots=True)
class DriverVq:
    """struct vring_virtqueue for a split ring (drivers/virtio/virtio_ring.c)."""
    index: int = 0
    num: int = 0
    ring_gpa: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    notify_off: int = 0
    vector: int = 0
    free_head: int = 0
    num_free: int = 0
    num_added: int = 0
    last_used_idx: int = 0
    avail_idx_shadow: int = 0
    avail_flags_shadow: int = 0
    event: bool = False
    indirect: bool = False
    broken: bool = False
    event_triggered: bool = False
    bad_ring: str = ""
    desc_data: list = field(default_factory=list)     # desc_state[].data (request id or -1)
    desc_indir: list = field(default_factory=list)    # desc_state[].indir_desc (gpa or 0)
    extra_next: list = field(default_factory=list)    # desc_extra[].next
    extra_len: list = field(default_factory=list)     # desc_extra[].len
    extra_flags: list = field(default_factory=list)   # desc_extra[].flags


@dataclass(slots=True)
class BlkMq:
    """The disk's request queue: tags, plug, mq-deadline lists, hctx->dispatch, the stop flag."""
    depth: int = 0                    # tag set queue_depth
    nr_requests: int = 0              # /sys/block/vda/queue/nr_requests
    tags: bytearray = field(default_factory=bytearray)
    alloc_hint: int = 0
    rqs: dict = field(default_factory=dict)          # request id -> request
    next_rq: int = 1
    plug: list = field(default_factory=list)         # current->plug->mq_list
    dd_fifo: list = field(default_factory=lambda: [[], []])   # per direction, insertion order
    dd_next_sector: list = field(default_factory=lambda: [-1, -1])
    dd_last_dir: int = 0
    dd_batching: int = 0
    dd_starved: int = 0
    dispatch: list = field(default_factory=list)     # hctx->dispatch
    stopped: bool = False
    batch: list = field(default_factory=list)        # the list blk_mq_dispatch_rq_list works on
    batch_from: str = ""
    queued: int = 0                                  # requests queued in this batch
    last_ret: str = "OK"
    run_work_pending: bool = False
    limits: dict = field(default_factory=dict)
    write_cache: bool = True


@dataclass(slots=True)
class Proc:
    """The guest process running the workload, one op at a time, O_DIRECT on /dev/vda."""
    ops: list = field(default_factory=list)
    pc: int = 0
    started: bool = False
    inflight: int = 0
    waiting: str = ""                 # "", "drain", "tag", "mem", "exit", "done"
    pending_bios: list = field(default_factory=list)
    op_state: dict = field(default_factory=dict)     # op index -> {bios, done, status, buf, ...}
    reads: list = field(default_factory=list)
    results: list = field(default_factory=list)      # per finished op: (index, status)
    next_bio: int = 1


@dataclass(slots=True)
class Guest:
    """Everything the guest kernel keeps about the disk."""
    status: int = 0
    device_features: int = 0
    features: int = 0
    probe_error: str = ""
    probe_done: bool = False
    config: dict = field(default_factory=dict)
    vq: DriverVq = field(default_factory=DriverVq)
    vq_locked: bool = False
    irq_vectors: dict = field(default_factory=dict)   # APIC vector -> ("config"|"vq", index)
    pdu_base: int = 0
    blkmq: BlkMq = field(default_factory=BlkMq)
    proc: Proc = field(default_factory=Proc)
    done_count: int = 0
    kick_needed: bool = False
    zero_page: int = 0
    completed: list = field(default_factory=list)     # the last requests that ended
    log: list = field(default_factory=list)           # dmesg lines
