"""The Python engine against the compiled one (emu_fast), and against `qemu-img bench`.

Runs the standard workloads of emu_fast.bench (rand4k: random 4 KiB writes at queue depth 1;
seq64k: sequential 64 KiB writes; mixed: 4/16 KiB reads and writes with flushes) on fresh
64 MiB raw and qcow2 images, on both engines, checks that both end in the same state (machine
digest), and prints requests/s, the fast/py ratio and, when qemu-img is installed,
`qemu-img bench -w -d 1 -s 4k` on the same image configuration, measured in the same run.
Needs the compiled extension (`python setup.py build_ext --inplace` or `pip install .`).

    python benchmarks/bench_engines.py [--json] [--requests N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emu_fast.bench import run_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--requests", type=int, default=2000, help="requests per workload (2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine, best counts (3)")
    args = ap.parse_args()
    run_bench(args.json, requests=args.requests, repeat=args.repeat)


if __name__ == "__main__":
    main()
