"""Modal screens: help."""
from __future__ import annotations

from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """[b]vblkdbg[/b] — step through the whole virtio-blk path

[b]Keys[/b]
  s  step one event           n  next: run until the layer changes
  f  finish the selected request   c  continue (to the end, a breakpoint, an error, or Esc)
  S N F C  the same, backwards: reverse-step, reverse-next, reverse-finish (back to before the
           selected request was created), reverse-continue (back to the previous breakpoint hit)
  b  a breakpoint on the selected descriptor (Descriptors) or request (Requests)
  :  command line             ?  this help          q  quit
  m  switch the hex view between the host image and guest RAM
  h  follow: show the host bytes of the selected request / descriptor
  Tab / 1-8  move between panes   Esc  stop a running continue / close this help
  Enter  on a request: follow it to the host; on a descriptor: its buffer in guest RAM
  Ctrl+P  command palette (the same actions, and any command typed into it)
  (F-key profile, vblkdbg --keys fkeys: F5 continue, F10 next, F11 step, Shift+F11 finish)
  (fkeys also: Shift+F5 reverse-continue, Shift+F10 reverse-next, Ctrl+F11 reverse-step, F9 break)

[b]Command line[/b]  ↑/↓ history · Tab completes · Esc closes

[b]Commands[/b]
{commands}
"""


class HelpScreen(ModalScreen):
    """Keys and commands; Esc or ? closes it."""

    BINDINGS = [("escape", "dismiss", "close"), ("question_mark", "dismiss", "close"), ("q", "dismiss", "close")]

    def __init__(self, commands_help: str) -> None:
        super().__init__()
        self.commands_help = commands_help

    def compose(self):
        with VerticalScroll(id="help-box"):
            yield Static(HELP.format(commands=self.commands_help), id="help-text")
