"""The status line: step N, virtual time, why the last run stopped; progress during runs."""
from __future__ import annotations

from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import ProgressBar, Sparkline, Static


class StatusBar(Horizontal):
    """Always shows the session's status; a progress bar and an in-flight sparkline while running."""


    running = reactive(False)

    def compose(self):
        yield Static(id="status-text")
        yield ProgressBar(total=None, show_eta=False, id="run-progress")
        yield Sparkline([], id="inflight")

    def show(self, text: str) -> None:
        self.query_one("#status-text", Static).update(text, layout=False)

    def watch_running(self, running: bool) -> None:
        self.set_class(running, "running")
        if running:
            self.query_one("#inflight", Sparkline).data = []

    def progress(self, steps: int, inflight: int, total: int | None = None) -> None:
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=total, progress=steps)
        spark = self.query_one("#inflight", Sparkline)
        spark.data = (list(spark.data) + [inflight])[-60:]
        self.show(f"running… step {steps}, {inflight} request(s) in flight  (Esc stops)")
