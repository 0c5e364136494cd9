"""Linux virtio core + virtio_pci modern + virtblk_probe: bring the device up, one step per stage."""
from __future__ import annotations

from ..spec import blk as B
from ..spec import pci as P
from ..spec import virtio as V
from ..sim.steps import handler
from .state import BLK_DEF_MAX_SECTORS_CAP, VBLK_PDU_SIZE, DriverVq

VIRTIO = "drivers/virtio/virtio.c"
MODERN = "drivers/virtio/virtio_pci_modern.c"
MODERN_DEV = "drivers/virtio/virtio_pci_modern_dev.c"
COMMON = "drivers/virtio/virtio_pci_common.c"
RING = "drivers/virtio/virtio_ring.c"
VBLK = "drivers/block/virtio_blk.c"

# virtio_blk.c features[] (CONFIG_BLK_DEV_ZONED off)
DRIVER_FEATURES = (V.BLK_F_SEG_MAX, V.BLK_F_SIZE_MAX, V.BLK_F_GEOMETRY, V.BLK_F_RO,
                   V.BLK_F_BLK_SIZE, V.BLK_F_FLUSH, V.BLK_F_TOPOLOGY, V.BLK_F_CONFIG_WCE,
                   V.BLK_F_MQ, V.BLK_F_DISCARD, V.BLK_F_WRITE_ZEROES, V.BLK_F_SECURE_ERASE)
# vring_transport_features() + vp_transport_features() keep these transport bits
TRANSPORT_KEEP = (V.F_INDIRECT_DESC, V.F_EVENT_IDX, V.F_VERSION_1, V.F_ACCESS_PLATFORM,
                  V.F_RING_PACKED, V.F_ORDER_PLATFORM, V.F_NOTIFICATION_DATA,
                  V.F_SR_IOV, V.F_RING_RESET, V.F_ADMIN_VQ)
TRANSPORT_START, TRANSPORT_END = 28, 42
APIC_VECTOR_BASE = 0x22   # first x86 vector Linux hands to the device's MSI-X entries
SMP_CACHE_BYTES = 64


def rd(m, name: str) -> int:
    off, size = P.COMMON_FIELDS[name]
    return m.transport.mmio_read(m, P.COMMON_CFG + off, size)


def wr(m, name: str, val: int) -> None:
    off, size = P.COMMON_FIELDS[name]
    m.transport.mmio_write(m, P.COMMON_CFG + off, size, val)


def cread(m, name: str) -> int:
    """virtio_cread(): a device-config field read (virtio_pci_modern vp_get)."""
    off, size = B.CONFIG_FIELDS[name]
    return m.transport.mmio_read(m, P.DEVICE_CFG + off, size)


def _add_status(m, bit: int) -> int:
    """virtio_add_status(): read-modify-write of device_status."""
    g = m.guest
    cur = rd(m, "device_status")
    wr(m, "device_status", cur | bit)
    g.status = cur | bit
    return g.status


def _fail(m, msg: str) -> str:
    g = m.guest
    g.probe_error = msg
    g.log.append(msg)
    _add_status(m, V.FAILED)
    return f"{msg}; status |= FAILED; probe aborted"


@handler("probe.reset", "virtio_pci", "vp_reset", MODERN)
def reset(m) -> str:
    """virtio_reset_device(): write 0 and wait until device_status reads back 0."""
    wr(m, "device_status", 0)
    while rd(m, "device_status") != 0:
        pass
    m.guest.status = 0
    m.sim.cont("probe.ack")
    return "device_status = 0; reads back 0"


@handler("probe.ack", "virtio_pci", "virtio_add_status", VIRTIO)
def ack(m) -> str:
    _add_status(m, V.ACKNOWLEDGE)
    m.sim.cont("probe.driver")
    return "status |= ACKNOWLEDGE (the OS noticed the device)"


@handler("probe.driver", "virtio_pci", "virtio_add_status", VIRTIO)
def driver(m) -> str:
    _add_status(m, V.DRIVER)
    m.sim.cont("probe.features")
    return "status |= DRIVER (virtio_blk matched vendor 0x1af4 device 0x1042)"


@handler("probe.features", "virtio_pci", "virtio_dev_probe", VIRTIO)
def features(m) -> str:
    """vp_get_features, AND with the driver's table, keep transport bits, vp_finalize_features."""
    g = m.guest
    wr(m, "device_feature_select", 0)
    lo = rd(m, "device_feature")
    wr(m, "device_feature_select", 1)
    hi = rd(m, "device_feature")
    dev = hi << 32 | lo
    g.device_features = dev
    drv = 0
    for b in DRIVER_FEATURES:
        drv |= 1 << b
    feats = drv & dev
    for b in range(TRANSPORT_START, TRANSPORT_END):
        if dev >> b & 1 and b in TRANSPORT_KEEP:
            feats |= 1 << b
    if not feats >> V.F_VERSION_1 & 1:
        return _fail(m, "virtio_pci: device uses modern interface but does not have VIRTIO_F_VERSION_1")
    g.features = feats
    wr(m, "driver_feature_select", 0)
    wr(m, "driver_feature", feats & 0xFFFFFFFF)
    wr(m, "driver_feature_select", 1)
    wr(m, "driver_feature", feats >> 32)
    m.sim.cont("probe.features_ok")
    return (f"device offers {dev:#x}, driver accepts {feats:#x}: "
            + ", ".join(n.replace("VIRTIO_", "") for n in V.feature_names(feats)))


@handler("probe.features_ok", "virtio_pci", "virtio_features_ok", VIRTIO)
def features_ok(m) -> str:
    st = _add_status(m, V.FEATURES_OK)
    back = rd(m, "device_status")
    m.guest.status = back
    if not back & V.FEATURES_OK:
        return _fail(m, f"virtio: device refuses features: {m.guest.features:x}")
    m.sim.cont("probe.blk_start")
    return f"status |= FEATURES_OK ({st:#x}); read back {back:#x}: accepted"


@handler("probe.blk_start", "virtio_blk", "virtblk_probe", VBLK)
def blk_start(m) -> str:
    g = m.guest
    seg = cread(m, "seg_max") if g.features >> V.BLK_F_SEG_MAX & 1 else 1
    g.config["seg_max"] = seg
    m.sim.cont("probe.msix")
    return f"virtio_cread(seg_max) = {seg}; init_vq: 1 request queue (no MQ)"


@handler("probe.msix", "virtio_pci", "vp_request_msix_vectors", COMMON)
def msix(m) -> str:
    """pci_alloc_irq_vectors + request_irq: program the MSI-X table, config vector 0."""
    px = m.transport.proxy
    g = m.guest
    nvec = min(2, px.nvectors)
    for i in range(nvec):
        e = px.msix_table[i]
        e.addr = P.MSIX_ADDRESS
        e.data = APIC_VECTOR_BASE + i
        e.masked = False
        m.log.add(("reg", f"msix.table[{i}]", None, f"addr {P.MSIX_ADDRESS:#x} data {e.data:#x}"))
        g.irq_vectors[e.data] = ("config", 0) if i == 0 else ("vq", 0)
    px.msix_enabled = True
    m.log.add(("reg", "msix.enable", False, True))
    wr(m, "config_msix_vector", 0)
    back = rd(m, "config_msix_vector")
    m.sim.cont("probe.setup_vq")
    return (f"{nvec} MSI-X vectors: config -> vector 0 (read back {back}), "
            "req.0 -> vector 1 (VP_VQ_VECTOR_POLICY_EACH)")


@handler("probe.setup_vq", "virtio_pci", "setup_vq", MODERN)
def setup_vq(m) -> str:
    """setup_vq(): select, read the size, allocate the ring (vring_create_virtqueue), program it."""
    g = m.guest
    wr(m, "queue_select", 0)
    num = rd(m, "queue_size")
    if not num or rd(m, "queue_enable"):
        return _fail(m, "virtio_blk: queue 0 unavailable")
    if num & (num - 1):
        return _fail(m, f"virtio_pci: bad queue size {num}")
    desc, avail, used, total = V.vring_layout(0, num, SMP_CACHE_BYTES)
    npages = (total + 4095) // 4096
    base = m.pages.alloc_pages(npages)
    if base is None:
        return _fail(m, "virtio_blk: cannot allocate the vring")
    if any(m.mem.ram[base:base + npages * 4096]):
        m.mem.fill(base, npages * 4096, 0)        # alloc_pages_exact(__GFP_ZERO)
    vq = DriverVq(index=0, num=num, ring_gpa=base, desc=base + desc, avail=base + avail,
                  used=base + used, free_head=0, num_free=num,
                  event=bool(g.features >> V.F_EVENT_IDX & 1),
                  indirect=bool(g.features >> V.F_INDIRECT_DESC & 1),
                  desc_data=[-1] * num, desc_indir=[0] * num,
                  extra_next=[(i + 1) % num for i in range(num)],
                  extra_len=[0] * num, extra_flags=[0] * num)
    g.vq = vq
    wr(m, "queue_size", num)
    for name, gpa in (("desc", vq.desc), ("driver", vq.avail), ("device", vq.used)):
        wr(m, f"queue_{name}_lo", gpa & 0xFFFFFFFF)
        wr(m, f"queue_{name}_hi", gpa >> 32)
    wr(m, "queue_msix_vector", 1)
    vq.vector = rd(m, "queue_msix_vector")
    if vq.vector == P.NO_VECTOR:
        return _fail(m, "virtio_pci: queue vector refused (VIRTIO_MSI_NO_VECTOR)")
    noff = rd(m, "queue_notify_off")
    vq.notify_off = P.NOTIFY_CFG + noff * P.NOTIFY_OFF_MULTIPLIER
    m.sim.cont("probe.enable_vq")
    return (f"queue 0: size {num}; ring at {base:#x} ({npages} pages): desc {vq.desc:#x}, "
            f"avail {vq.avail:#x}, used {vq.used:#x}; vector {vq.vector}; "
            f"doorbell BAR4+{vq.notify_off:#x}")


@handler("probe.enable_vq", "virtio_pci", "vp_modern_find_vqs", MODERN)
def enable_vq(m) -> str:
    wr(m, "queue_select", 0)
    wr(m, "queue_enable", 1)
    m.sim.cont("probe.tag_set")
    return "queue_enable = 1 (QEMU latches size and addresses, builds its ring caches)"


@handler("probe.tag_set", "blk-mq", "blk_mq_alloc_tag_set", "block/blk-mq.c")
def tag_set(m) -> str:
    """Queue depth fills the ring (halved without indirect); per-tag virtblk_req PDUs."""
    g = m.guest
    q = g.blkmq
    depth = g.vq.num_free
    if not g.vq.indirect:
        depth //= 2
    q.depth = q.nr_requests = depth
    q.tags = bytearray(depth)
    npages = (depth * VBLK_PDU_SIZE + 4095) // 4096
    base = m.pages.alloc_pages(npages)
    if base is None:
        return _fail(m, "virtio_blk: cannot allocate requests")
    g.pdu_base = base
    m.sim.cont("probe.limits")
    return (f"queue_depth {depth}" + ("" if g.vq.indirect else " (no INDIRECT_DESC: 2 descs per request)")
            + f"; {depth} request PDUs at {base:#x} ({VBLK_PDU_SIZE} bytes each)")


@handler("probe.limits", "virtio_blk", "virtblk_read_limits", VBLK)
def limits(m) -> str:
    g = m.guest
    f = g.features
    has = lambda b: bool(f >> b & 1)  # noqa: E731
    lbs = cread(m, "blk_size") if has(V.BLK_F_BLK_SIZE) else 512
    seg = max(1, g.config.get("seg_max", 1)) if has(V.BLK_F_SEG_MAX) else 1
    seg = min(seg, 32768 - 2)
    if not g.vq.indirect:
        seg = min(seg, g.vq.num - 2)
    lim = {"logical_block_size": lbs, "max_segments": seg,
           "max_sectors": BLK_DEF_MAX_SECTORS_CAP, "max_discard_sectors": 0,
           "max_write_zeroes_sectors": 0, "max_discard_segments": 1, "discard_granularity": lbs}
    if has(V.BLK_F_TOPOLOGY):
        cread(m, "physical_block_exp")
        cread(m, "alignment_offset")
        cread(m, "min_io_size")
        cread(m, "opt_io_size")
    if has(V.BLK_F_DISCARD):
        mds = cread(m, "max_discard_sectors") or 0xFFFFFFFF
        lim["max_discard_sectors"] = mds
        lim["max_discard_segments"] = min(cread(m, "max_discard_seg") or seg, 256)
        align = cread(m, "discard_sector_alignment")
        lim["discard_granularity"] = align * 512 if align else lbs
    if has(V.BLK_F_WRITE_ZEROES):
        lim["max_write_zeroes_sectors"] = cread(m, "max_write_zeroes_sectors") or 0xFFFFFFFF
    if has(V.BLK_F_CONFIG_WCE):
        wce = bool(cread(m, "writeback"))
    else:
        wce = has(V.BLK_F_FLUSH)
    g.blkmq.limits = lim
    g.blkmq.write_cache = wce
    g.config["read_only"] = has(V.BLK_F_RO)
    m.sim.cont("probe.driver_ok")
    return (f"logical block {lbs}, max_segments {seg}, max_sectors {lim['max_sectors']}, "
            f"discard max {lim['max_discard_sectors']} sectors, write cache "
            + ("write back" if wce else "write through"))


@handler("probe.driver_ok", "virtio_pci", "virtio_device_ready", VIRTIO)
def driver_ok(m) -> str:
    st = _add_status(m, V.DRIVER_OK)
    m.sim.cont("probe.capacity")
    return f"status |= DRIVER_OK ({st:#x}): the device is live; kicks are allowed from now on"


@handler("probe.capacity", "virtio_blk", "virtblk_update_capacity", VBLK)
def capacity(m) -> str:
    g = m.guest
    cap = cread(m, "capacity")
    g.config["capacity"] = cap
    g.probe_done = True
    g.log.append(f"virtio_blk virtio0: [vda] {cap} 512-byte logical blocks")
    m.sim.cont("app.start", preemptible=True)
    return f"capacity {cap} sectors ({cap * 512} bytes); device_add_disk(vda), no partition scan"


@handler("probe.config_changed", "virtio_pci", "vp_config_changed", COMMON)
def config_changed(m, vector: int) -> str:
    """Config interrupt: virtio_config_changed -> virtblk_config_changed_work rereads capacity."""
    cap = cread(m, "capacity")
    return (f"config interrupt (vector {vector}): virtblk_config_changed_work rereads capacity "
            f"({cap} sectors); virtio_blk never looks at DEVICE_NEEDS_RESET")
