"""One emulated machine: guest RAM, the guest kernel, virtio-pci, the device, the block layer.

Machine.step() runs exactly one event and returns its Step record (what it did, where, and
its effects); run() steps until nothing is left, a step budget, or a stop predicate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from . import device as _device  # noqa: F401  (registers step handlers)
from .block import file_posix as _file_posix  # noqa: F401
from .block import raw as _raw  # noqa: F401
from .block.qcow2 import driver as _qcow2  # noqa: F401
from .block.backend import BlockState
from .config import Config
from .device import virtio_blk as _vblk
from .device.virtio import VirtIODevice, VirtQueue
from .guest import blk_mq as _blk_mq  # noqa: F401
from .guest import probe as _probe  # noqa: F401
from .guest import process as _process  # noqa: F401
from .guest import virtio_blk as _gvblk  # noqa: F401
from .guest import vring as _vring  # noqa: F401
from .guest.state import Guest
from .mem.guest_memory import GuestMemory
from .mem.page_alloc import PageAllocator
from .sim.rng import splitmix64
from .sim.scheduler import Scheduler
from .sim.steps import REGISTRY, EffectLog, Step
from .spec import pci as P
from .transport.virtio_pci import ProxyQueue, Transport, VirtioPciProxy

PAGE_ALLOC_START = 0x10000     # the guest kernel's allocations start above the first 64 KiB
COUNTERS = ("kicks", "kicks_suppressed", "notifies", "interrupts", "irqs_suppressed", "irqs_lost")


class Machine:
    """Wires the layers together from a Config, an opened image and a parsed workload."""

    # Its components are slots (the compiled engine reads them at their offsets); anything
    # else a caller attaches goes to __dict__.  `attributes()` lists both.
    __slots__ = ("config", "timing", "log", "sim", "mem", "pages", "hostfile", "fmt", "latency",
                 "vdev", "transport", "dev_ops", "vblk", "block", "guest", "counters", "rng",
                 "steps", "cur", "__dict__", "__weakref__")

    def __init__(self, hostfile, fmt, config: Config, ops: list[dict]) -> None:
        config.validate()
        self.config = config
        t = config.timing
        self.timing = t
        self.log = EffectLog()
        self.sim = Scheduler()
        self.sim.add_ctx("vcpu", t.guest_step_ns)
        self.sim.add_ctx("qemu", t.device_step_ns)
        self.mem = GuestMemory(config.ram_size, self.log)
        self.pages = PageAllocator(PAGE_ALLOC_START, config.ram_size)
        self.hostfile = hostfile
        self.fmt = fmt
        self.latency = config.latency
        size = fmt.virtual_size()
        qs = config.queue_size
        self.vdev = VirtIODevice(
            host_features=_vblk.default_host_features(config.read_only, config.indirect,
                                                      config.event_idx),
            vqs=[VirtQueue(num=qs, num_default=qs)])
        self.transport = Transport(VirtioPciProxy(nvectors=2))
        self.dev_ops = _vblk.BlkOps()
        cyls, heads, secs = _vblk.guess_geometry(size // 512)
        self.vblk = _vblk.VirtIOBlock(capacity=size // 512, serial=config.serial, queue_size=qs,
                                      seg_max=qs - 2, request_merging=config.request_merging,
                                      cyls=cyls, heads=heads, secs=secs)
        wce = config.cache != "writethrough"
        fmt.prepare_open(not config.read_only)
        read_only = config.read_only or bool(fmt.read_only_reason)
        if read_only and not config.read_only:
            self.vdev.host_features |= 1 << 5          # VIRTIO_BLK_F_RO: the drive is read-only
        self.block = BlockState(length=size, wce=wce, wce_default=wce,
                                read_only=read_only, probed=fmt.name == "raw",
                                discard_unmap=config.discard == "unmap",
                                no_flush=config.cache == "unsafe",
                                werror=config.werror, rerror=config.rerror,
                                faults=[dict(f) for f in config.faults])
        self.guest = Guest()
        self.guest.proc.ops = [dict(o) for o in ops]
        self.counters = {c: 0 for c in COUNTERS}
        self.rng = config.seed & ((1 << 64) - 1)
        self.steps = 0
        self.cur: Step | None = None
        if getattr(fmt, "open_kind", None):
            self.sim.post("qemu", fmt.open_kind)     # bdrv_open's fix-ups, before the guest runs
        self.sim.post("vcpu", "probe.reset")

    def attributes(self) -> dict:
        """Every attribute set on this machine: its slots (in __slots__ order), then __dict__."""
        d = {n: getattr(self, n) for n in Machine.__slots__ if n[:2] != "__" and hasattr(self, n)}
        d.update(self.__dict__)
        return d

    # -- services the layers use ---------------------------------------------------------
    def rand(self) -> int:
        self.rng, out = splitmix64(self.rng)
        return out

    def set_function(self, function: str, source: str | None = None, caller: str | None = None) -> None:
        """A handler that models several real functions names the one this step is."""
        if self.cur is not None:
            self.cur.function = function
            if source:
                self.cur.source = source
            if caller:
                self.cur.caller = caller

    def raise_msi(self, addr: int, data: int) -> None:
        """An MSI-X message reaches the guest's local APIC: run the handler for that vector."""
        handler = self.guest.irq_vectors.get(data) if addr == P.MSIX_ADDRESS else None
        if handler is None:
            self.counters["irqs_lost"] += 1
            return
        kind = "vring.interrupt" if handler[0] == "vq" else "probe.config_changed"
        self.sim.post("vcpu", kind, (data,), delay=self.timing.irq_ns, urgent=True)

    def poke(self, gpa: int, data: bytes) -> None:
        """The debugger writes guest RAM between steps (not an emulated action)."""
        self.mem.write(gpa, data)

    # -- execution -----------------------------------------------------------------------------
    def step(self) -> Step | None:
        """Run the next event; None when nothing is left to run."""
        ev = self.sim.pop()
        if ev is None:
            return None
        time, _seq, ctx, kind, args = ev
        fn, info = REGISTRY[kind]
        rec = Step(self.steps + 1, time, ctx, kind, info.layer, info.function, info.source)
        self.cur = rec
        self.log.cur = rec.effects
        try:
            rec.detail = fn(self, *args) or ""
        finally:
            self.log.cur = None
        self.sim.finish_step()
        self.steps += 1
        return rec

    def run(self, max_steps: int | None = None, on_step=None) -> str:
        """Step until the event queue is empty ('end') or max_steps were run ('steps')."""
        n = 0
        while max_steps is None or n < max_steps:
            rec = self.step()
            if rec is None:
                return "end"
            n += 1
            if on_step is not None and on_step(rec):
                return "stopped"
        return "steps"

    @property
    def finished(self) -> bool:
        return not self.sim.queue

    def begin_shutdown(self) -> bool:
        """Post the block layer's close (QEMU's exit path) if the machine is idle; its steps
        then run like any other.  False when there is nothing to close."""
        kind = getattr(self.fmt, "close_kind", None)
        if kind is None or self.sim.queue:
            return False
        self.sim.post("qemu", kind)
        return True

    def shutdown(self, on_step=None) -> int:
        """Close the block layer as QEMU's exit does (qcow2: write back caches, mark clean).

        Runs only once the machine is idle; returns the number of steps it took."""
        if not self.begin_shutdown():
            return 0
        before = self.steps
        self.run(None, on_step)
        return self.steps - before

    # -- state and digest --------------------------------------------------------------------------
    def state(self) -> dict:
        """All component state as plain data (guest RAM and the image are hashed separately)."""
        d = dataclasses.asdict
        return {"steps": self.steps, "rng": self.rng, "sim": self.sim.state(),
                "pages": self.pages.state(), "guest": d(self.guest), "vdev": d(self.vdev),
                "proxy": _proxy_state(self.transport.proxy), "vblk": d(self.vblk),
                "block": d(self.block), "fmt": self.fmt.state(), "counters": dict(self.counters)}

    def digest(self, state: dict | None = None) -> str:
        """sha256 over guest RAM, the image content and every component's state (state: this
        machine's state() just taken, to save taking it again)."""
        h = hashlib.sha256()
        h.update(self.mem.digest())
        h.update(self.hostfile.digest())
        h.update(json.dumps(self.state() if state is None else state, sort_keys=True, separators=(",", ":"),
                            default=_jsonable).encode())
        return h.hexdigest()


_IDLE_QUEUE = ProxyQueue()


def _proxy_state(p: VirtioPciProxy) -> dict:
    """The proxy as plain data; of its VIRTIO_QUEUE_MAX queues only those the driver touched."""
    d = {"nvectors": p.nvectors, "dfselect": p.dfselect, "gfselect": p.gfselect,
         "guest_features": list(p.guest_features), "msix_enabled": p.msix_enabled,
         "msix_table": [dataclasses.asdict(e) for e in p.msix_table],
         "msix_pba": list(p.msix_pba),
         "vqs": {i: dataclasses.asdict(q) for i, q in enumerate(p.vqs) if q != _IDLE_QUEUE}}
    return d


def _jsonable(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(type(o).__name__)
