"""blkparse's default text output (process_default() and fill_rwbs() in blktrace's blkparse_fmt.c)."""
from __future__ import annotations

import re
from typing import Iterator

from .importer import Reader, Rec

# "%3d,%-3d %2d %8d %5d.%09lu %5u %2s %3s " then the action's own fields
EVENT = re.compile(r"^\s*(\d+),(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\.(\d{9})\s+(\d+)\s+([A-Za-z]{1,2})"
                   r"\s+([A-Z]{1,7})(?:\s+(.*))?$")
# Q/D/I/B of a file-system request: "SECTOR + NSECTORS [comm]" or, with no data, "[comm]";
# with blkparse -t an elapsed "(%8llu)" follows the sectors
FS_REST = re.compile(r"^(?:(\d+) \+ (\d+) )?(?:\(\s*\d+\) )?\[(.*)\]$")
PC_REST = re.compile(r"^(\d+) (?:\(.*\) )?\[(.*)\]$")           # SCSI passthrough: "BYTES [comm]"
# The statistics blkparse prints after the events: per-CPU and total blocks "CPU0 (8,0):",
# "Total (8,0):", with -s per-process blocks "COMM (PID)", then Throughput/Events/Skips lines
SUMMARY = re.compile(r"^(?:(?:CPU\d+|Total) \(.*\):|\S.* \(\d+\)|(?:Throughput|Events|Skips)\b.*)\s*$")
COUNTED = ("Q", "D")
MAIN = "DWRN"
MODIFIERS = set("FASMEB")


def parse_rwbs(rwbs: str) -> tuple[bool, str, bool] | None:
    """(preflush, main, fua) of an RWBS string, or None if it is not one.

    fill_rwbs(): an optional F (PREFLUSH), one of D (discard), W, R, N (no data), then F (FUA),
    A (readahead), S (sync), M (meta). Also read: the kernel's ftrace spelling (F alone for a
    flush, DE for a secure erase) and the extended blktrace's WZ (write-zeroes) and ZR (zone
    reset).
    """
    if rwbs == "F":
        return False, "F", False
    i = 0
    preflush = False
    if rwbs[0] == "F" and len(rwbs) > 1 and rwbs[1] in MAIN + "Z":
        preflush, i = True, 1
    main = rwbs[i]
    i += 1
    if main == "W" and rwbs[i:i + 1] == "Z":
        main, i = "WZ", i + 1
    elif main == "Z":
        if rwbs[i:i + 1] != "R":
            return None
        main, i = "ZR", i + 1
    elif main not in MAIN:
        return None
    rest = rwbs[i:]
    if any(c not in MODIFIERS for c in rest):
        return None
    return preflush, main, rest.startswith("F")


class BlkparseReader(Reader):
    """Each request is counted once, at its Q (queue) event, or at D (issue) if the trace has no
    Q for the device. RWBS: D -> discard, W -> write (WZ -> write-zeroes), R -> read, a leading
    F (PREFLUSH, e.g. the `FWS` of an fsync) -> a flush before the data (or alone with no data),
    `FN` -> flush. FUA is not modelled (the workload format has no FUA write). Other actions
    (G I C M F P U X A m ...) and the closing statistics are skipped.
    """
    name = "blkparse"
    label = "blkparse output"
    two_pass = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.device: str | None = None
        self.action = "Q"

    def scan(self) -> None:
        devices: list[str] = []
        seen: set = set()
        actions: dict = {}
        for _lineno, text in self.ctx.lines(scan=True):
            if SUMMARY.match(text):
                break
            m = EVENT.match(text)
            if not m or m.group(8) not in COUNTED:
                continue
            dev = f"{int(m.group(1))},{int(m.group(2))}"
            if dev not in seen:
                seen.add(dev)
                devices.append(dev)
            actions.setdefault(dev, set()).add(m.group(8))
        want = self.ctx.options.device
        if want is not None:            # "8,0", "8, 0" or "8:0"
            want = want.replace(" ", "").replace(":", ",")
        self.device = self.choose("device", "--device MAJ,MIN", devices, want)
        if "Q" not in actions.get(self.device, ()):
            self.action = "D"
            self.ctx.stats.note("requests counted at D (issue): the trace has no Q (queue) events")

    def records(self) -> Iterator[Rec]:
        ctx = self.ctx
        counted = self.action
        dev_maj, dev_min = (int(x) for x in self.device.split(","))
        for lineno, text in ctx.lines():
            if not text.strip() or text.startswith("Input file "):
                continue
            if SUMMARY.match(text):
                return                      # blkparse's statistics: the events are over
            m = EVENT.match(text)
            if not m:
                ctx.bad(lineno, text, "not a blkparse event line (expected 'MAJ,MIN CPU SEQ "
                        "SECONDS.NANOSECONDS PID ACTION RWBS ...')")
                continue
            if m.group(8) != counted or int(m.group(1)) != dev_maj or int(m.group(2)) != dev_min:
                continue
            rwbs = parse_rwbs(m.group(9))
            if rwbs is None:
                ctx.bad(lineno, text, f"{m.group(9)!r} is not an RWBS field")
                continue
            preflush, main, _fua = rwbs
            rest = m.group(10) or ""
            fs = FS_REST.match(rest)
            if fs is None:
                if PC_REST.match(rest):
                    ctx.stats.note("SCSI passthrough (pc) requests skipped")
                    continue
                ctx.bad(lineno, text, "expected 'SECTOR + NSECTORS [PROCESS]' or '[PROCESS]' "
                        f"after {m.group(8)} {m.group(9)}")
                continue
            t_ns = int(m.group(5)) * 1_000_000_000 + int(m.group(6))
            sector = int(fs.group(1)) if fs.group(1) else 0
            nsect = int(fs.group(2)) if fs.group(2) else 0
            if preflush or main == "F":
                yield Rec("flush", time_ns=t_ns, lineno=lineno, raw=text)
            if main == "F":
                continue
            if nsect == 0:
                if not preflush:
                    ctx.stats.note(f"requests without data skipped ({m.group(9)})")
                continue
            op = {"R": "read", "W": "write", "WZ": "write-zeroes", "D": "discard"}.get(main)
            if op is None:            # N with sectors, ZR (zone reset): nothing to replay
                ctx.stats.note(f"requests of kind {m.group(9)} skipped")
                continue
            yield Rec(op, sector * 512, nsect * 512, t_ns, lineno, text)
