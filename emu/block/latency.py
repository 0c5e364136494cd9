"""Virtual-time cost of host I/O: a base latency per operation plus a per-byte cost, with seeded jitter."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyModel:
    """Costs in virtual nanoseconds; jitter_pct of seeded noise is added to every operation."""
    read_ns: int = 20_000
    write_ns: int = 25_000
    flush_ns: int = 200_000
    discard_ns: int = 10_000
    zero_ns: int = 15_000
    ps_per_byte: int = 250           # 0.25 ns per byte = 4 GB/s
    jitter_pct: int = 10

    def cost(self, op: str, nbytes: int, noise: int) -> int:
        """Latency of one host operation; noise is a 64-bit random number from the machine RNG."""
        base = {"read": self.read_ns, "write": self.write_ns, "flush": self.flush_ns,
                "discard": self.discard_ns, "write_zeroes": self.zero_ns}[op]
        if op in ("read", "write"):
            base += nbytes * self.ps_per_byte // 1000
        if self.jitter_pct:
            span = base * self.jitter_pct // 100
            base += noise % (2 * span + 1) - span if span else 0
        return max(base, 1)
