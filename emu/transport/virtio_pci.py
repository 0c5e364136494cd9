"""QEMU hw/virtio/virtio-pci.c: common cfg, ISR, device cfg, notify and MSI-X of BAR 4."""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from ..device import virtio as VD
from ..spec import pci as P
from ..spec import virtio as V


@dataclass
class ProxyQueue:
    """VirtIOPCIQueue: what the driver wrote for one queue before queue_enable latches it."""
    num: int = 0
    enabled: int = 0
    desc: list = field(default_factory=lambda: [0, 0])
    avail: list = field(default_factory=lambda: [0, 0])
    used: list = field(default_factory=lambda: [0, 0])
    reset: int = 0


@dataclass
class MsixEntry:
    """One MSI-X table entry as the guest programmed it (address, data, vector control)."""
    addr: int = 0
    data: int = 0
    masked: bool = True


@dataclass
class VirtioPciProxy:
    """VirtIOPCIProxy: selects, latched queue registers, the MSI-X table and pending bits."""
    nvectors: int
    dfselect: int = 0
    gfselect: int = 0
    guest_features: list = field(default_factory=lambda: [0, 0])
    vqs: list = field(default_factory=list)
    msix_enabled: bool = False
    msix_table: list = field(default_factory=list)
    msix_pba: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.vqs:
            self.vqs = [ProxyQueue() for _ in range(VD.VQ_MAX)]
        if not self.msix_table:
            self.msix_table = [MsixEntry() for _ in range(self.nvectors)]
            self.msix_pba = [False] * self.nvectors

    # Checkpoints pickle the machine every interval: of the VIRTIO_QUEUE_MAX queues only
    # those that differ from an idle one are stored (pickling 1024 objects cost more than
    # the rest of a checkpoint); unpickling rebuilds the others as idle queues.
    def __getstate__(self) -> dict:
        return self.state_with(_touched)

    def state_with(self, touched) -> dict:
        """__getstate__'s dict, the queues kept chosen by touched(vqs) (_touched, or
        emu_fast._support.proxy_touched: the same indices, compiled)."""
        d = dict(self.__dict__)
        vqs = self.vqs
        d["vqs"] = (len(vqs), {i: vqs[i] for i in touched(vqs)})
        return d

    def __setstate__(self, d: dict) -> None:
        d = dict(d)
        n, touched = d["vqs"]
        d["vqs"] = [touched[i] if i in touched else ProxyQueue() for i in range(n)]
        self.__dict__.update(d)


_IDLE = vars(ProxyQueue())        # an idle queue's fields (compared with, never changed)
_CHUNK = 64
_STATE = attrgetter("__dict__")     # vars(), without the call of a builtin: 76 -> 41 us


def _touched(vqs: list) -> list[int]:
    """The indices of the queues whose fields (their whole __dict__, lists by value) differ
    from an idle ProxyQueue's: the same test as `vars(q) != vars(ProxyQueue())` for each.

    Checked every checkpoint, for all VIRTIO_QUEUE_MAX queues.  list.count compares a chunk
    of states in C with no call per item; only a chunk holding a touched queue is compared
    item by item.  Measured for 1024 queues: 0.40 ms with map(idle.__ne__, map(vars, vqs)),
    0.16-0.20 ms this way; it is still ~60% of a raw checkpoint's instructions (callgrind),
    nearly all of it the 1024 dict comparisons.  The fast engine's session loop checkpoints
    with emu_fast._support.proxy_touched instead (the same indices; ~20 against ~230 us here)."""
    states = list(map(_STATE, vqs))
    out = []
    for lo in range(0, len(states), _CHUNK):
        chunk = states[lo:lo + _CHUNK]
        if chunk.count(_IDLE) != len(chunk):
            out.extend(i for i, s in enumerate(chunk, lo) if s != _IDLE)
    return out


class Transport:
    """The BAR 4 register file; every access is one MMIO access of the guest."""

    def __init__(self, proxy: VirtioPciProxy) -> None:
        self.proxy = proxy

    # -- dispatch by region ----------------------------------------------------------
    def mmio_read(self, m, off: int, size: int) -> int:
        if P.COMMON_CFG <= off < P.COMMON_CFG + P.REGION_SIZE:
            val = self.common_read(m, off - P.COMMON_CFG)
        elif P.ISR_CFG <= off < P.ISR_CFG + P.REGION_SIZE:
            val = self.isr_read(m)
        elif P.DEVICE_CFG <= off < P.DEVICE_CFG + P.REGION_SIZE:
            val = self.config_read(m, off - P.DEVICE_CFG, size)
        else:
            val = 0
        val &= (1 << (8 * size)) - 1
        m.log.add(("mmio-read", P.BAR4_GPA + off, size, val))
        return val

    def mmio_write(self, m, off: int, size: int, val: int) -> None:
        m.log.add(("mmio-write", P.BAR4_GPA + off, size, val))
        if P.COMMON_CFG <= off < P.COMMON_CFG + P.REGION_SIZE:
            self.common_write(m, off - P.COMMON_CFG, val)
        elif P.DEVICE_CFG <= off < P.DEVICE_CFG + P.REGION_SIZE:
            self.config_write(m, off - P.DEVICE_CFG, size, val)

    # -- common configuration (virtio_pci_common_read / _write) -------------------------
    def common_read(self, m, off: int) -> int:
        px, vdev = self.proxy, m.vdev
        sel = vdev.queue_sel
        name = P.COMMON_BY_OFFSET.get(off)
        if name == "device_feature_select":
            return px.dfselect
        if name == "device_feature":
            if px.dfselect <= 1:
                return ((vdev.host_features & ~V.LEGACY_FEATURES) >> (32 * px.dfselect)) & 0xFFFFFFFF
            return 0
        if name == "driver_feature_select":
            return px.gfselect
        if name == "driver_feature":
            return px.guest_features[px.gfselect] if px.gfselect < 2 else 0
        if name == "config_msix_vector":
            return vdev.config_vector
        if name == "num_queues":
            return max((i + 1 for i, q in enumerate(vdev.vqs) if q.num), default=0)
        if name == "device_status":
            return vdev.status
        if name == "config_generation":
            return vdev.generation
        if name == "queue_select":
            return sel
        if sel >= len(vdev.vqs):
            return 0
        q, pq = vdev.vqs[sel], px.vqs[sel]
        return {"queue_size": q.num, "queue_msix_vector": q.vector, "queue_enable": pq.enabled,
                "queue_notify_off": sel, "queue_desc_lo": pq.desc[0], "queue_desc_hi": pq.desc[1],
                "queue_driver_lo": pq.avail[0], "queue_driver_hi": pq.avail[1],
                "queue_device_lo": pq.used[0], "queue_device_hi": pq.used[1],
                "queue_reset": pq.reset}.get(name, 0)

    def common_write(self, m, off: int, val: int) -> None:
        px, vdev = self.proxy, m.vdev
        name = P.COMMON_BY_OFFSET.get(off)
        sel = vdev.queue_sel
        if name == "device_feature_select":
            VD.set_reg(m, px, "dfselect", "device_feature_select", val)
        elif name == "driver_feature_select":
            VD.set_reg(m, px, "gfselect", "driver_feature_select", val)
        elif name == "driver_feature":
            if px.gfselect < 2:
                px.guest_features[px.gfselect] = val
                VD.virtio_set_features(m, px.guest_features[1] << 32 | px.guest_features[0])
        elif name == "config_msix_vector":
            VD.set_reg(m, vdev, "config_vector", "config_msix_vector",
                       val if val < px.nvectors else P.NO_VECTOR)
        elif name == "device_status":
            virtio_set_status(m, val & 0xFF)
            if vdev.status == 0:
                self.reset(m)
        elif name == "queue_select":
            if val < VD.VQ_MAX:
                VD.set_reg(m, vdev, "queue_sel", "queue_select", val)
        elif sel < len(vdev.vqs):
            self._queue_write(m, name, sel, val)

    def _queue_write(self, m, name: str | None, sel: int, val: int) -> None:
        px, vdev = self.proxy, m.vdev
        q, pq = vdev.vqs[sel], px.vqs[sel]
        if name == "queue_size":
            pq.num = val
            VD.virtio_queue_set_num(m, sel, val)
            VD.virtio_init_region_cache(m, sel)
        elif name == "queue_msix_vector":
            VD.set_reg(m, q, "vector", f"vq{sel}.vector", val if val < px.nvectors else P.NO_VECTOR)
        elif name == "queue_enable":
            if val == 1:
                VD.virtio_queue_set_num(m, sel, pq.num)
                VD.set_reg(m, q, "desc", f"vq{sel}.desc", pq.desc[1] << 32 | pq.desc[0])
                VD.set_reg(m, q, "avail", f"vq{sel}.avail", pq.avail[1] << 32 | pq.avail[0])
                VD.set_reg(m, q, "used", f"vq{sel}.used", pq.used[1] << 32 | pq.used[0])
                VD.virtio_init_region_cache(m, sel)
                VD.set_reg(m, pq, "enabled", f"vq{sel}.enabled", 1)
                pq.reset = 0
            else:
                VD.virtio_error(m, f"wrong value for queue_enable {val:x}",
                                "4.1.4.3.2 (the driver MUST NOT write 0 to queue_enable)")
        elif name in ("queue_desc_lo", "queue_desc_hi", "queue_driver_lo", "queue_driver_hi",
                      "queue_device_lo", "queue_device_hi"):
            part = {"desc": pq.desc, "driver": pq.avail, "device": pq.used}[name.split("_")[1]]
            part[0 if name.endswith("lo") else 1] = val
            m.log.add(("reg", f"vq{sel}.{name}", None, val))
        elif name == "queue_reset" and val == 1:
            VD.set_reg(m, pq, "enabled", f"vq{sel}.enabled", 0)

    def reset(self, m) -> None:
        """virtio_pci_reset(): device reset plus the proxy's latched queue registers."""
        VD.virtio_reset(m)
        m.dev_ops.reset(m)
        for pq in self.proxy.vqs:
            if pq.num or pq.enabled:
                pq.num = pq.enabled = pq.reset = 0
                pq.desc[:] = [0, 0]
                pq.avail[:] = [0, 0]
                pq.used[:] = [0, 0]

    # -- ISR and device config ---------------------------------------------------------
    def isr_read(self, m) -> int:
        """virtio_pci_isr_read(): the read clears the ISR."""
        val = m.vdev.isr
        VD.set_reg(m, m.vdev, "isr", "isr", 0)
        return val

    def config_read(self, m, off: int, size: int) -> int:
        """virtio_config_modern_read*: regenerate config; past the end reads all-ones."""
        cfg = m.dev_ops.get_config(m)
        if off + size > len(cfg):
            return (1 << (8 * size)) - 1
        return int.from_bytes(cfg[off:off + size], "little")

    def config_write(self, m, off: int, size: int, val: int) -> None:
        cfg = bytearray(m.dev_ops.get_config(m))
        if off + size > len(cfg):
            return
        cfg[off:off + size] = val.to_bytes(size, "little")
        m.dev_ops.set_config(m, bytes(cfg))

    # -- notify and interrupts ------------------------------------------------------------
    def notify_queue(self, off: int) -> int | None:
        """virtio_pci_notify_write(): the queue is decoded from the address, not the value."""
        q = (off - P.NOTIFY_CFG) // P.NOTIFY_OFF_MULTIPLIER
        return q if 0 <= q < VD.VQ_MAX else None

    def msix_notify(self, m, vector: int) -> bool:
        """virtio_pci_notify() -> msix_notify(): send the vector's message, or set its PBA bit."""
        px = self.proxy
        if not px.msix_enabled or vector == P.NO_VECTOR or vector >= px.nvectors:
            return False
        entry = px.msix_table[vector]
        if entry.masked:
            px.msix_pba[vector] = True
            m.log.add(("reg", f"msix.pba[{vector}]", False, True))
            return False
        m.log.add(("msi", vector, entry.addr, entry.data))
        m.counters["interrupts"] += 1
        m.raise_msi(entry.addr, entry.data)
        return True


def virtio_set_status(m, val: int) -> None:
    """virtio_set_status(): feature validation on FEATURES_OK, set_started, device hook."""
    vdev = m.vdev
    if vdev.has_feature(V.F_VERSION_1):
        if not vdev.status & V.FEATURES_OK and val & V.FEATURES_OK:
            if (vdev.host_features >> V.F_ACCESS_PLATFORM & 1) and \
                    not vdev.has_feature(V.F_ACCESS_PLATFORM):
                return  # virtio_validate_features() failed: the write is dropped
    if (vdev.status & V.DRIVER_OK) != (val & V.DRIVER_OK):
        vdev.started = bool(val & V.DRIVER_OK)
    m.dev_ops.set_status(m, val)
    VD.set_reg(m, vdev, "status", "device_status", val)
