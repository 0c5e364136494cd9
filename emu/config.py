"""Machine configuration: every knob a run depends on (part of a run's identity)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .block.latency import LatencyModel
from .errors import ConfigError


@dataclass(frozen=True)
class Timing:
    """Virtual-time costs of CPU work, in ns."""
    guest_step_ns: int = 50        # one guest kernel step on the vCPU
    device_step_ns: int = 100      # one QEMU step on the main loop
    vmexit_ns: int = 1500          # doorbell write -> QEMU handler
    vmentry_ns: int = 300          # back into the guest after the MMIO exit
    irq_ns: int = 1000             # MSI-X message -> guest handler entry


@dataclass(frozen=True)
class Config:
    """Everything that shapes a run besides the image and the workload."""
    ram_size: int = 64 << 20
    queue_size: int = 256
    indirect: bool = True
    event_idx: bool = True
    seed: int = 0
    cache: str = "writeback"         # writeback | writethrough | unsafe
    discard: str = "ignore"          # ignore | unmap  (QEMU -drive discard=)
    serial: str = ""
    read_only: bool = False
    werror: str = "report"           # report | ignore
    rerror: str = "report"
    request_merging: bool = True
    latency: LatencyModel = field(default_factory=LatencyModel)
    timing: Timing = field(default_factory=Timing)
    faults: tuple = ()               # ({"op", "start", "end", "errno", "count"}, ...)

    def validate(self) -> None:
        qs = self.queue_size
        if qs <= 2 or qs > 1024 or qs & (qs - 1):
            raise ConfigError(f"invalid queue size {qs}: must be a power of 2 in (2, 1024] "
                              "(QEMU virtio-blk queue-size)")
        if self.ram_size < (1 << 20) or self.ram_size % 4096:
            raise ConfigError("guest RAM must be at least 1 MiB and a multiple of 4 KiB")
        if self.cache not in ("writeback", "writethrough", "unsafe"):
            raise ConfigError(f"unknown cache mode {self.cache!r} (writeback, writethrough, unsafe)")
        if self.discard not in ("ignore", "unmap"):
            raise ConfigError(f"unknown discard mode {self.discard!r} (ignore, unmap)")
        for name, pol in (("werror", self.werror), ("rerror", self.rerror)):
            if pol not in ("report", "ignore"):
                raise ConfigError(f"unsupported {name} policy {pol!r} (report or ignore; "
                                  "'stop' and 'enospc' would pause the VM, which is not modelled)")
        if len(self.serial.encode()) > 20:
            raise ConfigError("serial is at most 20 bytes (VIRTIO_BLK_ID_BYTES)")

    def to_json(self) -> dict:
        from dataclasses import asdict
        d = asdict(self)
        d["faults"] = [dict(f) for f in self.faults]
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "config") -> "Config":
        """The inverse of to_json; unknown or mistyped keys raise ConfigError naming them."""
        from dataclasses import fields
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object, not {type(d).__name__}")
        nested = {"latency": LatencyModel, "timing": Timing}
        known = {f.name: f for f in fields(cls)}
        kw: dict = {}
        for k, v in d.items():
            if k not in known:
                raise ConfigError(f"{where}: unknown setting {k!r}")
            if k in nested:
                sub = {f.name for f in fields(nested[k])}
                if not isinstance(v, dict) or set(v) - sub:
                    raise ConfigError(f"{where}.{k}: expected an object with keys from "
                                      f"{', '.join(sorted(sub))}")
                if any(type(x) is not int for x in v.values()):
                    raise ConfigError(f"{where}.{k}: values must be integers")
                v = nested[k](**v)
            elif k == "faults":
                if not isinstance(v, list) or not all(isinstance(f, dict) for f in v):
                    raise ConfigError(f"{where}.faults: expected a list of objects")
                keys = {"op": str, "start": int, "end": int, "errno": int, "count": int}
                for n, f in enumerate(v):
                    if set(f) != set(keys) or any(type(f[x]) is not t for x, t in keys.items()):
                        raise ConfigError(f"{where}.faults[{n}]: expected integer start, end, "
                                          f"errno, count and an op, not {f!r}")
                    if f["op"] not in ("read", "write", "flush", "discard", "write_zeroes"):
                        raise ConfigError(f"{where}.faults[{n}]: unknown op {f['op']!r}")
                v = tuple(dict(f) for f in v)
            else:
                want = type(getattr(cls(), k))
                if type(v) is not want:
                    raise ConfigError(f"{where}.{k}: expected {want.__name__}, not {v!r}")
            kw[k] = v
        cfg = cls(**kw)
        cfg.validate()
        return cfg

