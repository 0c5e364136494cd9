"""The step registry: every event kind names its layer and the real function it models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

GUEST_LAYERS = ("app", "blk-mq", "virtio_blk", "virtio_ring", "virtio_pci")
HOST_LAYERS = ("virtio-pci", "virtio", "virtio-blk", "block", "raw", "qcow2", "file")
LAYER_ORDER = GUEST_LAYERS + HOST_LAYERS


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Static facts about one event kind."""
    kind: str
    layer: str
    function: str
    source: str

    @property
    def side(self) -> str:
        return "guest" if self.layer in GUEST_LAYERS else "host"


@dataclass(slots=True)
class Step:
    """What one executed step did: the record every view, breakpoint and trace reads."""
    n: int
    time_ns: int
    ctx: str
    kind: str
    layer: str
    function: str
    source: str
    detail: str = ""
    effects: list = field(default_factory=list)

    def event_json(self) -> dict:
        return {"step": self.n, "time_ns": self.time_ns, "layer": self.layer,
                "function": self.function, "source": self.source, "detail": self.detail}


REGISTRY: dict[str, tuple[Callable, StepInfo]] = {}


def handler(kind: str, layer: str, function: str, source: str) -> Callable:
    """Register fn(machine, *args) -> detail str as the handler of events of this kind."""
    if layer not in LAYER_ORDER:
        raise ValueError(f"unknown layer {layer!r}")

    def deco(fn: Callable) -> Callable:
        if kind in REGISTRY:
            raise ValueError(f"duplicate step kind {kind!r}")
        REGISTRY[kind] = (fn, StepInfo(kind, layer, function, source))
        return fn
    return deco


class EffectLog:
    """Collects the effects of the current step (memory, registers, host file)."""
    __slots__ = ("cur",)

    def __init__(self) -> None:
        self.cur: list | None = None

    def add(self, eff: tuple) -> None:
        if self.cur is not None:
            self.cur.append(eff)
