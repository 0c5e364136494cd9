"""Hypothesis strategies shared by the property suites: small random guest workloads."""
from __future__ import annotations

from hypothesis import strategies as st


def io_ops(max_size: int = 8, sectors=(1, 2, 8, 9)):
    """Lists of (op, 4 KiB block, length in sectors) over the first 256 KiB of the disk."""
    return st.lists(st.one_of(
        st.tuples(st.sampled_from(["write", "read", "discard", "write-zeroes"]),
                  st.integers(0, 63), st.sampled_from(list(sectors))),
        st.just(("flush", 0, 0)), st.just(("wait", 0, 0))), min_size=1, max_size=max_size)


def workload_text(items) -> str:
    """The workload file for io_ops() items."""
    return "".join((op if op in ("flush", "wait") else f"{op} {blk * 4096} {n * 512}") + "\n"
                   for op, blk, n in items)
