"""Reverse execution: what a reverse step costs, against a forward step measured in the same run.

Runs the article's workload (sample_images/article.qcow2 + article.wl), mixed.wl on a fresh
16 MiB raw image, and mixed.wl repeated 20 times (a longer history), to their ends with a
Timeline attached, for a few checkpoint intervals.  Prints, per run:

  fwd        wall time of one forward step without a Timeline (the unit of the ratios)
  +tl        the same run with the Timeline attached (undo hooks + periodic checkpoints);
             interval "inf" shows the undo hooks alone
  ckpt       taking one checkpoint, and restore: rewinding to the latest checkpoint
  rev@end / rev@mid / rev@start
             one reverse step (rewind to current-1 and re-run forward to it) near the end,
             in the middle and near the start of the run, averaged over 5 reverse steps
  kept       memory the checkpoints keep (component state, RAM pages, file blocks)

Run:

    python benchmarks/bench_reverse.py
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emu.block.image import open_image  # noqa: E402
from emu.config import Config  # noqa: E402
from emu.debug.timeline import Timeline  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.workload import parse_workload  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "sample_images")
INTERVALS = (1000, 100, 10)
REVERSE_STEPS = 5


class Driver:
    """One step per call; at the end the format driver is closed one step at a time."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.closed = False

    def step(self):
        rec = self.m.step()
        if rec is None and not self.closed:
            self.closed = True
            if self.m.fmt.close_kind:
                self.m.sim.post("qemu", self.m.fmt.close_kind)
                rec = self.m.step()
        return rec

    @property
    def extra(self):
        return (lambda: self.closed, lambda v: setattr(self, "closed", v))


def machine(image: str, wl: str) -> tuple[Machine, Driver]:
    hf, fmt = open_image(image, "overlay")
    m = Machine(hf, fmt, Config(), parse_workload(wl, "bench.wl"))
    return m, Driver(m)


def close(m: Machine) -> None:
    m.fmt.close()
    m.hostfile.close()


def forward(image: str, wl: str, interval: int | None = None) -> float:
    """Wall time per step of the whole run (best of 3); with a Timeline when interval is set."""
    best = None
    for _ in range(3):
        m, d = machine(image, wl)
        tl = Timeline(m, interval=interval, extra=d.extra) if interval else None
        t = time.perf_counter()
        if tl is None:
            while d.step() is not None:
                pass
        else:
            while d.step() is not None:
                tl.after_step()
        dt = (time.perf_counter() - t) / m.steps
        best = dt if best is None else min(best, dt)
        if tl is not None:
            tl.close()
        close(m)
    return best


def reverse_cost(tl: Timeline, d: Driver, pos: int) -> float:
    """Mean wall time of one reverse step starting at step pos (moved there untimed)."""
    tl.goto(pos, d.step)
    total = 0.0
    for i in range(REVERSE_STEPS):
        target = pos - 1 - i
        if target < 0:
            break
        t = time.perf_counter()
        tl.goto(target, d.step)
        total += time.perf_counter() - t
    return total / max(1, min(REVERSE_STEPS, pos))


def run(name: str, image: str, wl: str, interval: int, fwd_step: float) -> None:
    with_tl = forward(image, wl, interval)
    m, d = machine(image, wl)
    tl = Timeline(m, interval=interval, extra=d.extra)
    while d.step() is not None:
        tl.after_step()
    end = m.steps
    stats = tl.stats()

    t = time.perf_counter()
    for _ in range(5):
        tl.checkpoint()
    ckpt = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    for _ in range(5):
        tl.rewind(end)                 # the latest checkpoint: pure restore, nothing re-run
    restore = (time.perf_counter() - t) / 5

    revs = [reverse_cost(tl, d, p) for p in (end, end // 2, min(REVERSE_STEPS + 1, end))]
    kept = stats["total_bytes"]
    print(f"{name:<12} {interval:>5} {end:>6} {fwd_step * 1e6:7.1f} us {with_tl / fwd_step:6.2f}x "
          f"{ckpt * 1e3:6.2f} ms {ckpt / fwd_step:6.0f}x {restore * 1e3:6.2f} ms "
          f"{restore / fwd_step:6.0f}x | "
          + " ".join(f"{r / fwd_step:8.0f}x" for r in revs)
          + f" | {stats['checkpoints']:>4} {kept / 1024:8.0f} KiB "
          f"(state {stats['state_bytes'] / 1024:.0f}, RAM {stats['ram_bytes'] / 1024:.0f}, "
          f"file {stats['file_bytes'] / 1024:.0f})")
    tl.close()
    close(m)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        article = os.path.join(d, "article.qcow2")
        shutil.copyfile(os.path.join(SAMPLES, "article.qcow2"), article)
        raw = os.path.join(d, "mixed.raw")
        with open(raw, "wb") as f:
            f.truncate(16 << 20)
        article_wl = open(os.path.join(SAMPLES, "article.wl")).read()
        mixed_wl = open(os.path.join(SAMPLES, "mixed.wl")).read()
        cases = (("article", article, article_wl), ("mixed", raw, mixed_wl),
                 ("mixed x20", raw, mixed_wl * 20))
        print(f"{'workload':<12} {'intvl':>5} {'steps':>6} {'fwd':>10} {'+tl':>7} "
              f"{'ckpt':>9} {'x':>7} {'restore':>9} {'x':>7} | "
              f"{'rev@end':>9} {'rev@mid':>9} {'rev@start':>9} | {'ckpts':>4} {'kept':>12}")
        for name, image, wl in cases:
            fwd_step = forward(image, wl)
            hooks = forward(image, wl, 1 << 40)
            print(f"{name:<12} {'inf':>5} {'':>6} {fwd_step * 1e6:7.1f} us {hooks / fwd_step:6.2f}x"
                  "   (undo hooks alone: no checkpoint after the first)")
            for interval in INTERVALS:
                run(name, image, wl, interval, fwd_step)


if __name__ == "__main__":
    main()
