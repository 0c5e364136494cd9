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
    caller: str = ""          # set when the caller is known only at run time (qcow2 plan items)
    facts: list = field(default_factory=list)   # structured facts for breakpoints (add_fact)

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


def add_fact(m, fact: tuple) -> None:
    """Attach a structured fact to the step being executed (nothing between steps).

    Facts say what a step did in the terms breakpoints match on, where the effects alone
    cannot tell (e.g. which descriptor virtqueue_pop read).  They live on the Step record
    only: never in machine state, so they cannot change a digest.  Kinds (tuples):

    ("desc", on, q, slot, table, entry, head, addr, len, flags, next, req)
        on: "add" (the driver wrote it), "pop" (the device read it in virtqueue_pop),
        "used" (virtqueue_fill returned its chain); slot: the ring's descriptor-table index
        or None for an indirect-table entry; table/entry: the indirect table's guest address
        and the entry index, or None for ring descriptors; head: the chain's head slot;
        req: the guest request id on "add" facts (the driver knows it), None on the
        device's "pop"/"used" facts (the device does not know the guest's request).
    ("req-status", rid, status, status_gpa)
        the device completed its request rid with this virtio-blk status byte.
    """
    rec = getattr(m, "cur", None)
    if rec is not None and m.log.cur is not None:
        rec.facts.append(fact)


class EffectLog:
    """Collects the effects of the current step (memory, registers, host file)."""
    __slots__ = ("cur",)

    def __init__(self) -> None:
        self.cur: list | None = None

    def add(self, eff: tuple) -> None:
        if self.cur is not None:
            self.cur.append(eff)
