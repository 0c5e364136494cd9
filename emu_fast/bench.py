"""`vblkdbg bench`: requests/s of the Python and the compiled engine on standard workloads.

Workloads (each on a fresh 64 MiB raw image and a fresh 64 MiB qcow2 image, 64 KiB clusters,
made with emu.block.qcow2.create.create_qcow2):

  rand4k    N random 4 KiB writes, queue depth 1 (the configuration of `qemu-img bench -d 1`)
  seq64k    N sequential 64 KiB writes, queue depth 8
  mixed     N requests: 4 KiB / 16 KiB writes and reads at random offsets, a flush every 16,
            queue depth 16

Both engines run each workload from the same state (alternating, best of `repeat` runs); the run is checked to end with the same
digest on both.  When qemu-img is installed, `qemu-img bench -w -d 1 -s 4k -c N` (its default
cache mode, writeback) runs on the same image configuration in the same run (qemu-img bench
writes sequentially: it has no random mode) and its requests/s is printed next to the fast
engine's rand4k.

Where: every image, the engines' overlays and qemu-img's image live in one directory, by
default under /dev/shm when it is a writable tmpfs (else the system's temporary directory),
`--dir DIR` to choose.  The engines and qemu-img write through the host page cache alike, but
the emulated fdatasyncs (qcow2's cache dependencies, the mixed workload's flushes) are real
system calls on the image's file system: on a disk they wait for it (~0.4 ms each here, most
of the mixed workload's time on both engines); on tmpfs they cost nothing, so the table
measures the engines.  The header says which directory and file system were used.

Both engines make the same system calls on the image file, and those take the same time on
both: they bound the fast/py ratio.  Each row records them in one more Python-engine run
(host_calls: pread, pwrite, fdatasync, ftruncate with their sizes and offsets) and makes them
again alone, in a plain loop on a new file in the same directory (replay_calls, best of
`repeat`): `host I/O` is that time, and `ceiling` (py's time over it) the most fast/py could
be if the fast engine's own work took no time at all.

Below the table, the issue's two targets (fast/py >= 50x on every row; fast at least qemu-img
bench -d 1's requests/s on qcow2 rand4k) against this run: met or not, on how many rows, the best
row, and the rows whose ceiling puts 50x out of reach (JSON: "targets").

A second table runs rand4k as the debugger's `continue` does (emu.session.Session.cont: the
step history, a checkpoint every 1000 steps), on both engines, twice: with a session's default
catchpoint only (`catch error`: the fast engine's bulk core runs the steps no error can come
from), and with one descriptor breakpoint more, whose condition never holds: the core stops
before each step that could make a desc fact (emu.debug.breakpoints.DESC_STEPS), which runs
recorded, so the breakpoint's condition is evaluated there.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time

MiB = 1 << 20
SIZE = 64 * MiB
TARGET_OVER_PY = 50.0       # issue 7: the compiled engine at least 50x the Python engine
TARGET_OVER_QEMU = 1.0      # ... and qcow2 4 KiB random writes at least as fast as qemu-img bench -d 1
WORKLOADS = ("rand4k", "seq64k", "mixed")
FORMATS = ("raw", "qcow2")


def workload(name: str, n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    lines = []
    if name == "rand4k":
        lines.append("queue-depth 1")
        lines += [f"write {rng.randrange(SIZE // 4096) * 4096} 4k" for _ in range(n)]
    elif name == "seq64k":
        lines.append("queue-depth 8")
        lines += [f"write {(i * 65536) % SIZE} 64k" for i in range(n)]
    elif name == "mixed":
        lines.append("queue-depth 16")
        for i in range(n):
            if i % 16 == 15:
                lines.append("flush")
                continue
            size = rng.choice((4096, 16384))
            off = rng.randrange((SIZE - size) // 4096) * 4096
            lines.append(f"{rng.choice(('write', 'read'))} {off} {size}")
    else:
        raise ValueError(f"unknown workload {name!r}")
    lines.append("wait")
    return "\n".join(lines) + "\n"


def make_image(path: str, fmt: str) -> str:
    if fmt == "qcow2":
        from emu.block.qcow2.create import create_qcow2
        create_qcow2(path, SIZE)
    else:
        with open(path, "wb") as f:
            f.truncate(SIZE)
    return path


def fs_type(path: str) -> str:
    """The file system type of path's mount (from /proc/mounts; "unknown" without it)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def bench_dir(path: str | None = None, need: int = 0) -> str:
    """The directory bench works in: path (checked), else /dev/shm when it is a writable
    tmpfs with `need` bytes free, else the system's temporary directory."""
    if path is not None:
        if not os.path.isdir(path):
            raise ValueError(f"bench --dir {path}: not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"bench --dir {path}: not writable")
        return path
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) and fs_type(shm) == "tmpfs":
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= need:
            return shm
    return tempfile.gettempdir()


def bench_bytes(requests: int) -> int:
    """A bound on what one bench run writes at once (an image's data and its overlay, 64 KiB
    per request at most, twice over, and the 64 MiB image's metadata)."""
    return 2 * requests * 65536 + SIZE


def _machine(image: str, wl: str):
    from emu.block.image import open_image
    from emu.config import Config
    from emu.machine import Machine
    from emu.workload import parse_workload
    hf, fmt = open_image(image, "overlay", os.path.dirname(image))     # the overlay beside it
    return Machine(hf, fmt, Config(), parse_workload(wl, "bench.wl"))


def run_engine(engine: str, image: str, wl: str) -> dict:
    from emu import engine as E
    m = _machine(image, wl)
    nreq = sum(1 for line in wl.splitlines() if line.split()[0] in ("write", "read", "flush"))
    core0 = _core_steps() if engine == "fast" else 0
    t0 = time.perf_counter()
    reason = E.run(m, engine)
    dt = time.perf_counter() - t0
    E.set_engine(m, "py") if engine == "fast" else None
    out = {"engine": engine, "reason": reason, "steps": m.steps, "seconds": dt,
           "requests": nreq, "req_per_s": nreq / dt if dt else 0.0, "digest": m.digest()}
    if engine == "fast":
        out["core_steps"] = _core_steps() - core0     # of them, run by the bulk core
    m.hostfile.close() if hasattr(m.hostfile, "close") else None
    return out


class _SyscallLog:
    """Stands in for the os module inside emu.block.hostfile for one run: notes the image
    file's system calls (pread, pwrite, fdatasync, ftruncate) with their sizes and offsets."""

    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name: str):
        return getattr(os, name)

    def pread(self, fd: int, n: int, off: int) -> bytes:
        self.calls.append(("pread", n, off))
        return os.pread(fd, n, off)

    def pwrite(self, fd: int, data, off: int) -> int:
        self.calls.append(("pwrite", len(data), off))
        return os.pwrite(fd, data, off)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", 0, 0))
        os.fdatasync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        self.calls.append(("ftruncate", 0, size))
        os.ftruncate(fd, size)


def host_calls(image: str, wl: str) -> list:
    """The image file's system calls in one Python-engine run of wl: (name, bytes, offset).
    Both engines make the same calls (the fast engine makes them from C, unseen here)."""
    from emu import engine as E
    from emu.block import hostfile
    m = _machine(image, wl)
    log = _SyscallLog()
    hostfile.os = log
    try:
        E.run(m, "py")
    finally:
        hostfile.os = os
        m.hostfile.close()
    return log.calls


def replay_calls(calls: list, dir: str) -> float:
    """Seconds to make the same system calls alone (os.pwrite & co. in a plain loop), on a new
    file in dir: the host I/O that both engines' runs contain."""
    fd, path = tempfile.mkstemp(prefix="vblkdbg-io-", dir=dir)
    os.unlink(path)
    try:
        n = max((c[1] for c in calls if c[0] == "pwrite"), default=0)
        data = memoryview(bytes(range(256)) * (n // 256 + 1))
        t0 = time.perf_counter()
        for op, k, off in calls:
            if op == "pwrite":
                os.pwrite(fd, data[:k], off)
            elif op == "pread":
                os.pread(fd, k, off)
            elif op == "fdatasync":
                os.fdatasync(fd)
            else:
                os.ftruncate(fd, off)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def _core_steps() -> int:
    """Steps the bulk core (emu_fast._bulk) has run in this process."""
    from emu_fast import _bulk
    return _bulk.stats()["steps"]


CONTINUE_BREAK = ("break", "desc on=used if len == 3")   # never true: runs to the end


def run_continue(engine: str, image: str, wl: str, breakpoint: bool = True) -> dict:
    """Session.cont to the end on the engine, with CONTINUE_BREAK or with only the session's
    `catch error` (see the module doc)."""
    from emu import engine as E
    from emu.session import Session
    s = Session(_machine(image, wl))
    s.set_engine(engine)
    if breakpoint:
        s.add_breakpoint(*CONTINUE_BREAK)
    core0 = _core_steps() if engine == "fast" else 0
    nreq = sum(1 for line in wl.splitlines() if line.split()[0] in ("write", "read", "flush"))
    t0 = time.perf_counter()
    stops = []
    while True:
        st = s.cont()
        stops.append((st.reason, st.step))
        if st.reason in ("end", "error") or len(stops) > 100:
            break
    dt = time.perf_counter() - t0
    out = {"engine": engine, "reason": st.reason, "steps": s.m.steps, "seconds": dt,
           "requests": nreq, "req_per_s": nreq / dt if dt else 0.0, "digest": s.m.digest(),
           "stops": stops}
    if engine == "fast":
        out["core_steps"] = _core_steps() - core0
    E.set_engine(s.m, "py")
    s.m.hostfile.close() if hasattr(s.m.hostfile, "close") else None
    return out


def qemu_img_bench(image: str, fmt: str, n: int) -> dict | None:
    """`qemu-img bench -w -d 1 -s 4k -c n` on the image (None when qemu-img is missing).

    No -t: qemu-img's own default cache mode, writeback (img_bench starts from flags = 0, so
    the file is opened without O_DIRECT and writes land in the host page cache), which is
    the command the issue names; the engines write to an in-memory overlay."""
    exe = shutil.which("qemu-img")
    if exe is None:
        return None
    cmd = [exe, "bench", "-w", "-d", "1", "-s", "4k", "-c", str(n), "-f", fmt, image]
    p = subprocess.run(cmd, capture_output=True, text=True)
    mt = re.search(r"Run completed in ([0-9.]+) seconds", p.stdout)
    if p.returncode == 0 and mt:
        sec = float(mt.group(1))
        return {"command": " ".join(cmd[1:-1] + [os.path.basename(image)]),
                "cache": "writeback", "seconds": sec, "requests": n,
                "req_per_s": n / sec if sec else float("inf")}
    return {"error": (p.stderr or p.stdout).strip()[:200]}


def run_bench(as_json: bool = False, requests: int = 2000, workloads=WORKLOADS,
              formats=FORMATS, engines=("py", "fast"), qemu: bool = True, out=print,
              repeat: int = 3, dir: str | None = None) -> dict:
    """Run the benchmark; print a table (or JSON when as_json) and return the results.

    dir: where images and overlays go (bench_dir; ValueError when it cannot be used)."""
    import emu_fast
    if "fast" in engines:
        emu_fast.require()
    base = bench_dir(dir, bench_bytes(requests))
    tmp = tempfile.mkdtemp(prefix="vblkdbg-bench-", dir=base)
    res: dict = {"status": emu_fast.status(), "requests": requests, "repeat": repeat,
                 "dir": base, "fs": fs_type(tmp), "results": []}
    try:
        for wname in workloads:
            wl = workload(wname, requests)
            for fmt in formats:
                row: dict = {"workload": wname, "format": fmt}
                for _ in range(max(1, repeat)):         # engines alternate; best of `repeat`
                    for eng in engines:
                        img = make_image(os.path.join(tmp, f"{wname}-{eng}.{fmt}"), fmt)
                        r = run_engine(eng, img, wl)
                        os.unlink(img)
                        if eng not in row or r["seconds"] < row[eng]["seconds"]:
                            row[eng] = r
                if "py" in row and "fast" in row:
                    row["identical"] = row["py"]["digest"] == row["fast"]["digest"]
                    row["fast_over_py"] = row["py"]["seconds"] / max(row["fast"]["seconds"], 1e-9)
                if "py" in row:
                    # the runs' host I/O alone: the most fast/py can be is py's time over it
                    img = make_image(os.path.join(tmp, f"{wname}-io.{fmt}"), fmt)
                    calls = host_calls(img, wl)
                    os.unlink(img)
                    io_s = min(replay_calls(calls, tmp) for _ in range(max(1, repeat)))
                    row["host_io"] = {"calls": len(calls), "seconds": io_s}
                    if io_s > 0:
                        row["ceiling"] = row["py"]["seconds"] / io_s
                if qemu and wname == "rand4k":
                    q = None
                    for _ in range(max(1, repeat)):
                        img = make_image(os.path.join(tmp, f"qemu.{fmt}"), fmt)
                        r = qemu_img_bench(img, fmt, requests)
                        os.unlink(img)
                        if q is None or r is None or "seconds" not in q or \
                                r.get("seconds", float("inf")) < q["seconds"]:
                            q = r
                    if q is not None:
                        row["qemu_img"] = q
                        best = row.get("fast", row.get("py"))
                        if "req_per_s" in q and best:
                            row["engine_over_qemu"] = best["req_per_s"] / q["req_per_s"]
                res["results"].append(row)
        res["continue"] = []
        if "rand4k" in workloads:
            wl = workload("rand4k", requests)
            for fmt, bp in [(f, b) for b in (False, True) for f in formats]:
                row = {"workload": "rand4k", "format": fmt,
                       "breakpoint": " ".join(CONTINUE_BREAK) if bp else "catch error"}
                for _ in range(max(1, repeat)):
                    for eng in engines:
                        img = make_image(os.path.join(tmp, f"cont-{eng}.{fmt}"), fmt)
                        r = run_continue(eng, img, wl, bp)
                        os.unlink(img)
                        if eng not in row or r["seconds"] < row[eng]["seconds"]:
                            row[eng] = r
                if "py" in row and "fast" in row:
                    row["identical"] = (row["py"]["digest"] == row["fast"]["digest"]
                                        and row["py"]["stops"] == row["fast"]["stops"])
                    row["fast_over_py"] = row["py"]["seconds"] / max(row["fast"]["seconds"], 1e-9)
                res["continue"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["targets"] = targets(res["results"])
    for row in res["results"] + res.get("continue", []):
        for eng in engines:
            row[eng].pop("digest", None)
            row[eng].pop("stops", None)
    if as_json:
        out(json.dumps(res, indent=2))
    else:
        out(_table(res, engines))
    return res


def targets(results: list) -> list:
    """The issue's two targets against what this run measured: each with the rows it covers,
    whether each row met it, and (fast/py) whether the row's host I/O ceiling leaves it
    within reach at all."""
    over_py = [{"workload": r["workload"], "format": r["format"], "measured": r["fast_over_py"],
                "met": r["fast_over_py"] >= TARGET_OVER_PY,
                **({"ceiling": r["ceiling"], "reachable": r["ceiling"] >= TARGET_OVER_PY}
                   if "ceiling" in r else {})}
               for r in results if "fast_over_py" in r]
    over_qemu = [{"workload": r["workload"], "format": r["format"],
                  "measured": r["engine_over_qemu"], "met": r["engine_over_qemu"] >= TARGET_OVER_QEMU}
                 for r in results if r["workload"] == "rand4k" and r["format"] == "qcow2"
                 and "engine_over_qemu" in r and "fast" in r]
    out = []
    for name, goal, rows in (("fast/py", TARGET_OVER_PY, over_py),
                             ("fast/qemu-img bench -d 1, qcow2 rand4k", TARGET_OVER_QEMU, over_qemu)):
        out.append({"target": name, "goal": goal, "rows": rows,
                    "met": bool(rows) and all(x["met"] for x in rows)})
    return out


def _target_lines(tgts: list) -> list:
    lines = []
    for t in tgts:
        rows = t["rows"]
        if not rows:
            lines.append(f"target {t['target']} >= {t['goal']:g}x: not measured in this run")
            continue
        best = max(rows, key=lambda x: x["measured"])
        s = (f"target {t['target']} >= {t['goal']:g}x: {'met' if t['met'] else 'NOT met'} "
             f"({sum(x['met'] for x in rows)} of {len(rows)} rows; best {best['measured']:.2f}x, "
             f"{best['workload']} {best['format']}")
        out_of_reach = [f"{x['workload']} {x['format']}" for x in rows if x.get("reachable") is False]
        if out_of_reach:
            s += f"; out of reach by the host I/O ceiling: {', '.join(out_of_reach)}"
        lines.append(s + ")")
    return lines


def _table(res: dict, engines) -> str:
    lines = [res["status"], f"{res['requests']} requests per workload, best of {res['repeat']} runs "
             "(engines alternating)",
             f"images, overlays and qemu-img's image in {res['dir']} ({res['fs']})", ""]
    head = f"{'workload':<8} {'format':<6} " + " ".join(f"{e + ' req/s':>12}" for e in engines)
    core = "fast" in engines
    head += f" {'fast/py':>8} {'same':>5}" + (f" {'in core':>7}" if core else "")
    head += f" {'host I/O':>9} {'ceiling':>8}"
    head += "  qemu-img bench -d 1 (req/s, fast/qemu)"
    lines.append(head)
    for row in res["results"]:
        s = f"{row['workload']:<8} {row['format']:<6} "
        s += " ".join(f"{row[e]['req_per_s']:>12.0f}" for e in engines)
        s += f" {row['fast_over_py']:>7.2f}x" if "fast_over_py" in row else f" {'':>8}"
        s += f" {('yes' if row['identical'] else 'NO'):>5}" if "identical" in row else f" {'':>5}"
        if core:
            f = row["fast"]
            s += f" {100.0 * f.get('core_steps', 0) / max(f['steps'], 1):>6.1f}%"
        io = row.get("host_io")
        s += f" {1e3 * io['seconds']:>6.1f} ms" if io else f" {'':>9}"
        s += f" {row['ceiling']:>7.0f}x" if "ceiling" in row else f" {'':>8}"
        q = row.get("qemu_img")
        if q is not None:
            if "req_per_s" in q:
                s += f"  {q['req_per_s']:.0f} ({q['cache']}), {row['engine_over_qemu']:.4f}x"
            else:
                s += f"  qemu-img bench failed: {q['error']}"
        lines.append(s)
    if not any("qemu_img" in r for r in res["results"]):
        lines.append("(qemu-img not installed: no qemu-img bench comparison)")
    if any("host_io" in r for r in res["results"]):
        lines.append("host I/O: the run's image-file system calls made alone (recorded on the Python "
                     "engine, replayed in a plain loop); ceiling: py's time over it, the most fast/py "
                     "can be")
    lines += _target_lines(res.get("targets", []))
    if res.get("continue"):
        lines += ["", "continue in the debugger (history, checkpoints every 1000 steps, catch error; "
                  f"then also {' '.join(CONTINUE_BREAK)})",
                  f"{'workload':<8} {'format':<6} {'breakpoints':<28} "
                  + " ".join(f"{e + ' req/s':>12}" for e in engines)
                  + f" {'fast/py':>8} {'same':>5} {'in core':>7}"]
        for row in res["continue"]:
            s = f"{row['workload']:<8} {row['format']:<6} {row.get('breakpoint', ''):<28} "
            s += " ".join(f"{row[e]['req_per_s']:>12.0f}" for e in engines)
            s += f" {row['fast_over_py']:>7.2f}x" if "fast_over_py" in row else f" {'':>8}"
            s += f" {('yes' if row['identical'] else 'NO'):>5}" if "identical" in row else f" {'':>5}"
            f = row.get("fast")
            if f:
                s += f" {100.0 * f.get('core_steps', 0) / max(f['steps'], 1):>6.1f}%"
            lines.append(s)
    return "\n".join(lines)
