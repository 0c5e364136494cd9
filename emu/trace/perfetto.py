"""The step timeline in the Chrome trace-event format (JSON), as Perfetto's UI opens it.

One process per side (the guest; QEMU on the host), one thread per execution context,
every step a complete ("X") event at its virtual time, and every descriptor chain an async
span from the driver's virtqueue_add to the device's virtqueue_fill.
"""
from __future__ import annotations

import json

from ..views import step_view

PIDS = {"guest": 1, "host": 2}
NAMES = {1: "guest (Linux)", 2: "host (QEMU)"}


def _us(ns: int) -> float:
    return ns / 1000.0


class PerfettoWriter:
    """Streams events to a file: feed(step) for each executed step, then close()."""

    def __init__(self, f) -> None:
        self.f = f
        self.first = True
        self.tids: dict = {}
        self.pending = None                # the previous step (its duration ends at the next)
        self.open_chains: dict = {}        # (q, head) -> start ts
        self.f.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
        for pid, name in NAMES.items():
            self._emit({"ph": "M", "pid": pid, "tid": 0, "name": "process_name",
                        "args": {"name": name}})

    def _emit(self, ev: dict) -> None:
        if not self.first:
            self.f.write(",\n")
        self.first = False
        self.f.write(json.dumps(ev, separators=(",", ":"), sort_keys=True))

    def _tid(self, pid: int, ctx: str) -> int:
        key = (pid, ctx or "events")
        if key not in self.tids:
            self.tids[key] = len(self.tids) + 1
            self._emit({"ph": "M", "pid": pid, "tid": self.tids[key], "name": "thread_name",
                        "args": {"name": ctx or "timers and I/O completions"}})
        return self.tids[key]

    def _flush_pending(self, end_ns: int | None) -> None:
        if self.pending is None:
            return
        ev, start = self.pending
        ev["dur"] = max(_us((end_ns if end_ns is not None else start) - start), 0.001)
        self._emit(ev)
        self.pending = None

    def feed(self, rec) -> None:
        side = step_view(rec).side
        pid = PIDS.get(side, 2)
        tid = self._tid(pid, rec.ctx)
        self._flush_pending(rec.time_ns)
        ev = {"ph": "X", "pid": pid, "tid": tid, "ts": _us(rec.time_ns), "name": rec.function,
              "cat": rec.layer, "args": {"step": rec.n, "source": rec.source,
                                         "detail": rec.detail}}
        self.pending = (ev, rec.time_ns)
        for fact in rec.facts:
            if fact[0] != "desc" or fact[4] is not None:      # ring slots only
                continue
            on, q, slot, head = fact[1], fact[2], fact[3], fact[6]
            if on == "add" and slot == head and (q, head) not in self.open_chains:
                self.open_chains[(q, head)] = rec.time_ns
                self._emit({"ph": "b", "cat": "virtqueue", "id": f"q{q}-{head}", "pid": 1,
                            "tid": tid, "ts": _us(rec.time_ns), "name": f"chain head {head}",
                            "args": {"queue": q, "head": head, "step": rec.n}})
            elif on == "used" and slot == head and (q, head) in self.open_chains:
                del self.open_chains[(q, head)]
                self._emit({"ph": "e", "cat": "virtqueue", "id": f"q{q}-{head}", "pid": 1,
                            "tid": tid, "ts": _us(rec.time_ns), "name": f"chain head {head}",
                            "args": {"step": rec.n}})

    def close(self) -> None:
        self._flush_pending(None)
        self.f.write("\n]}\n")
