"""Breakpoints: every breakpoint, watchpoint and catchpoint with its hits (gdb's info breakpoints)."""
from __future__ import annotations

from rich.text import Text

from .sync_table import SyncTable

COLUMNS = ("id", "type", "on", "hits", "what")


class BreakpointsPane(SyncTable):
    """One row per breakpoint; disabled ones dimmed, the one that stopped the run in bold."""

    def __init__(self, **kw) -> None:
        super().__init__(COLUMNS, **kw)

    def show(self, rows: list, stopped_by: int | None = None) -> None:
        out = []
        for r in rows:
            style = "bold reverse" if r["id"] == stopped_by else ("" if r["enabled"] else "dim")
            what = r["spec"] + (f" if {r['condition']}" if r["condition"] else "")
            if r["ignore"]:
                what += f" (ignore {r['ignore']})"
            kind = r["type"] + (" (t)" if r["temporary"] else "")
            out.append((r["id"], (Text(str(r["id"]), style=style), Text(kind, style=style),
                                  "y" if r["enabled"] else "n", str(r["hits"]), Text(what, style=style))))
        self.set_rows(out)
