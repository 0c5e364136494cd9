"""Opening a qcow2 image costs what its metadata costs, not what its virtual size claims.

Creates images of 1 GiB, 64 GiB and 1 TiB virtual size (same data written to each), opens
each the way `vblkdbg run` does (header, L1, refcount table, caches, machine), and prints
wall time and peak Python memory of the open, with the ratio to the 1 GiB image.  Run:

    python benchmarks/bench_open.py
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emu.block.image import open_image  # noqa: E402
from emu.block.qcow2.create import create_qcow2  # noqa: E402
from emu.config import Config  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.workload import parse_workload  # noqa: E402

SIZES = (("1 GiB", 1 << 30), ("64 GiB", 64 << 30), ("1 TiB", 1 << 40))


def measure(path: str, with_machine: bool) -> tuple[float, int]:
    """Time and peak traced memory of opening the image (and building a machine on it)."""
    tracemalloc.start()
    t = time.perf_counter()
    hf, fmt = open_image(path, "overlay")
    if with_machine:
        m = Machine(hf, fmt, Config(ram_size=1 << 20), parse_workload("write 0 4k\n", "w"))
        m.run()
        m.shutdown()
    dt = time.perf_counter() - t
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hf.close()
    return dt, peak


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, size in SIZES:
            p = os.path.join(d, f"{size}.qcow2")
            create_qcow2(p, size)
            measure(p, True)                          # warm up imports
            rows.append((name, *measure(p, False), *measure(p, True)))
    b = rows[0]
    print(f"{'virtual size':>12} | {'open':>9} {'x':>6} {'peak mem':>10} {'x':>6} | "
          f"{'open+boot+4k write':>18} {'x':>6} {'peak mem':>10} {'x':>6}")
    for name, t, pk, t2, pk2 in rows:
        print(f"{name:>12} | {t * 1000:6.1f} ms {t / b[1]:5.2f}x {pk / 1024:7.0f} KiB {pk / b[2]:5.2f}x | "
              f"{t2 * 1000:15.1f} ms {t2 / b[3]:5.2f}x {pk2 / 1024:7.0f} KiB {pk2 / b[4]:5.2f}x")


if __name__ == "__main__":
    main()
