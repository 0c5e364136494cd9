"""Steps: the event log (step, layer, real function, detail) and the call chains."""
from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal
from textual.widgets import Static

from .step_log import StepLog

LAYER_STYLE = {"app": "cyan", "blk-mq": "cyan", "virtio_blk": "bright_cyan", "virtio_ring": "bright_blue",
               "virtio_pci": "blue", "virtio-pci": "magenta", "virtio": "bright_magenta",
               "virtio-blk": "magenta", "block": "yellow", "raw": "yellow", "qcow2": "bright_yellow",
               "file": "green"}


def step_line(s) -> Text:
    t = Text()
    t.append(f"{s.n:>7} ", style="dim")
    t.append(f"{s.layer:<11} ", style=LAYER_STYLE.get(s.layer, ""))
    t.append(f"{s.function:<28} ", style="bold")
    t.append(s.detail, style="red" if s.error else "")
    return t


class StepsPane(Horizontal):
    """A bounded log of executed steps, and the guest and host call chains of the latest."""


    def compose(self):
        yield StepLog(max_lines=1000, id="steps-log")
        yield Static(id="callchain")

    def reset(self, steps) -> None:
        log = self.query_one("#steps-log", StepLog)
        log.clear()
        self.append(steps)

    def append(self, steps) -> None:
        self.query_one("#steps-log", StepLog).write_lines([step_line(s) for s in steps])

    def note(self, text: str, error: bool = False) -> None:
        """A line of command output in the log."""
        self.query_one("#steps-log", StepLog).write(Text(text, style="red" if error else "italic"))

    def show_chains(self, chains: dict) -> None:
        """Both sides' chains; when they do not fit, the innermost frames (`:bt` prints all)."""
        self._chains = chains
        box = self.query_one("#callchain", Static)
        height = max(box.size.height, 6)
        need = {side: len(chains[side][1]) + 1 if side in chains else 1 for side in ("guest", "host")}
        room = dict(need)
        while sum(room.values()) > height:           # take lines from the longer side first
            side = max(room, key=lambda k: room[k])
            if room[side] <= 3:
                break
            room[side] -= 1
        narrow = box.size.width < 60           # then file names lose their directories
        t = Text()
        for side in ("guest", "host"):
            if side not in chains:
                t.append(f"{side}: nothing yet\n", style="dim")
                continue
            n, chain = chains[side]
            t.append(f"{side} (step {n})", style="bold")
            keep = chain if room[side] >= need[side] else chain[len(chain) - (room[side] - 1):]
            first = len(chain) - len(keep)
            if first:
                t.append(f"  ⋮ {first} outer frame(s), :bt shows all", style="dim")
            t.append("\n")
            for depth, (fn, src) in enumerate(keep, start=first):
                t.append(" " * min(depth, 4 if narrow else 8) + ("→ " if depth else "") + fn,
                         style="bold" if depth == len(chain) - 1 else "")
                t.append(f"  {src.rsplit('/', 1)[-1] if narrow else src}\n", style="dim")
        box.update(t, layout=False)

    def on_resize(self) -> None:
        if getattr(self, "_chains", None) is not None:
            self.show_chains(self._chains)
