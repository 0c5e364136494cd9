"""The command palette (Ctrl+P): the debugger's actions, and any `:` command typed into it."""
from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, what it does: an action name or a command line)
ENTRIES = (
    ("Step", "run one event (s)", "action:step"),
    ("Next", "run to the next layer (n)", "action:next"),
    ("Finish request", "run until the selected request completes (f)", "action:finish"),
    ("Continue", "run to the end, a device error or Esc (c)", "action:continue"),
    ("Toggle host image / guest RAM", "switch the hex view (m)", "action:toggle_space"),
    ("Follow request", "show the host bytes of the selected request (h)", "action:follow"),
    ("Command line", "open the : command line", "action:command_line"),
    ("Help", "keys and commands (?)", "action:help"),
    ("info virtio-status", "device status, features, config (QEMU HMP)", "cmd:info virtio-status"),
    ("info virtio-queue-status", "both ends' ring indices (QEMU HMP)", "cmd:info virtio-queue-status"),
    ("info virtio-queue-element", "the descriptor chain at the head of the avail ring",
     "cmd:info virtio-queue-element"),
    ("backtrace", "guest and host call chains of the latest steps", "cmd:backtrace"),
    ("goto host 0", "the hex view at the start of the image file", "cmd:goto host 0"),
)


class DebuggerCommands(Provider):
    """The same actions as the keys and the command line."""

    def _run(self, what: str) -> None:
        kind, _, arg = what.partition(":")
        if kind == "action":
            getattr(self.app, f"action_{arg}")()
        else:
            self.app.run_command(arg)

    async def discover(self) -> Hits:
        for title, help_text, what in ENTRIES:
            yield DiscoveryHit(title, partial(self._run, what), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, what in ENTRIES:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, what), help=help_text)
        # anything that parses as a command line can be run from here, too
        from .cmdline.parser import CommandError, parse
        line = query.strip()
        if line:
            try:
                cmd = parse(line)
            except CommandError:
                return
            if cmd.name:
                yield Hit(1.0, f":{line}", partial(self._run, f"cmd:{line}"), help="run this command")
