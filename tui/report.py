"""Rich rendering of a run summary for people (scripts use --json)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(r: dict, image: str, workload: str) -> None:
    c = Console()
    dev = r["device"]
    c.print(f"[bold]vblkdbg run[/] {image} with {workload}: {r['steps']} steps, "
            f"{r['time_ns'] / 1000:.1f} µs virtual, stopped: {r['stop']}")
    t = Table(title="Requests that reached the device", show_header=True)
    for k in ("submitted", "completed", "errors", "merged"):
        t.add_column(k)
    req = r["requests"]
    t.add_row(*(str(req[k]) for k in ("submitted", "completed", "errors", "merged")))
    c.print(t)
    c.print("by type: " + ", ".join(f"{k} {v}" for k, v in req["by_type"].items()))
    q = r["queues"][0]
    c.print(f"queue 0: size {q['size']}, avail.idx {q['avail_idx']}, used.idx {q['used_idx']}, "
            f"last_avail_idx {q['last_avail_idx']}, last_used_idx {q['last_used_idx']}, "
            f"num_free {q['num_free']}, inuse {q['inuse']}")
    c.print(f"kicks {r['kicks']} ({r['kicks_suppressed']} suppressed by EVENT_IDX), "
            f"interrupts {r['interrupts']} ({r['interrupts_suppressed']} suppressed)")
    c.print(f"device status {dev['status']:#x} = {'|'.join(dev['status_names']) or '0'}")
    img = r["image"]
    extra = ""
    if img["format"] == "qcow2":
        extra = (f", {img['cluster_size'] // 1024} KiB clusters"
                 + (f", backing file {img['backing']}" if img["backing"] else ""))
    c.print(f"image: {img['format']}{extra}, virtual size {img['virtual_size']}, host file "
            f"{img['file_size']} bytes after {img['host_writes']} writes and "
            f"{img['fdatasyncs']} fdatasync(s)")
    if img.get("corruption"):
        c.print(f"[bold red]{img['corruption']}[/]")
    if dev["error"]:
        e = dev["error"]
        c.print(f"[bold red]device error at step {e['step']}: {e['message']} "
                f"(virtio spec {e['spec']})[/]")
    for rd in r["reads"]:
        c.print(f"read {rd['offset']:#x}+{rd['length']:#x}: sha256 {rd['sha256']} ({rd['status']})")
    bad = [o for o in r["ops"] if o["status"] != "OK"]
    for o in bad:
        c.print(f"[yellow]line {o['line']}: {o['op']} failed: {o['status']}[/]")
    if r["guest"]["outstanding_ops"]:
        c.print(f"[yellow]{r['guest']['outstanding_ops']} operation(s) never completed[/]")
    c.print(f"digest {r['digest']}")
