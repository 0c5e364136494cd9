"""The `:` command line: an Input with gdb-like history (Up/Down) and completion (Tab)."""
from __future__ import annotations

import os

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

from ..cmdline.completer import CommandSuggester, History, complete


def _common_prefix(words: list) -> str:
    return os.path.commonprefix(words) if words else ""


class CommandLine(Input):
    """Up/Down walk the history, Tab completes (the common prefix, then cycles), Esc closes."""

    BINDINGS = [
        Binding("up", "history_up", "older", show=False),
        Binding("down", "history_down", "newer", show=False),
        Binding("tab", "complete", "complete", show=False, priority=True),
        Binding("escape", "close", "close", show=False),
    ]

    class Run(Message):
        """A line was submitted (blank lines too: they just close the command line)."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class Closed(Message):
        """Esc: the command line is closing without running anything."""

    def __init__(self, **kw) -> None:
        super().__init__(placeholder="command (help lists them · ↑↓ history · Tab completes · Esc closes)",
                         suggester=CommandSuggester(), **kw)
        self.history = History()
        self._cycle: list = []
        self._cycle_pos = 0

    def open(self) -> None:
        self.display = True
        self.value = ""
        self.history.reset()
        self.focus()

    def action_history_up(self) -> None:
        self._set(self.history.up(self.value))

    def action_history_down(self) -> None:
        self._set(self.history.down(self.value))

    def action_complete(self) -> None:
        if self._cycle and self.value == self._cycle[self._cycle_pos]:
            self._cycle_pos = (self._cycle_pos + 1) % len(self._cycle)
            self._set(self._cycle[self._cycle_pos], keep_cycle=True)
            return
        found = complete(self.value)
        if not found:
            self.app.bell()
            return
        common = _common_prefix(found)
        if len(found) == 1:
            self._set(found[0] + " ")
        elif len(common) > len(self.value):
            self._set(common)
        else:
            self._cycle, self._cycle_pos = found, 0
            self._set(found[0], keep_cycle=True)
            self.notify("  ".join(found), title="completions", timeout=4)

    def _set(self, value: str, keep_cycle: bool = False) -> None:
        if not keep_cycle:
            self._cycle = []
        self.value = value
        self.cursor_position = len(value)

    def action_close(self) -> None:
        self.display = False
        self.post_message(self.Closed())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = event.value.strip()
        self.history.add(line)
        self.value = ""
        self.display = False
        self.post_message(self.Run(line))
