"""Requests: the guest's requests, where each one is in the stack now."""
from __future__ import annotations

from rich.text import Text
from textual.message import Message

from .sync_table import SyncTable

COLUMNS = ("id", "type", "sector", "length", "stage", "status")


class RequestsPane(SyncTable):
    """One row per guest request (recently completed ones stay, dimmed)."""

    class Selected(Message):
        """The highlighted request changed (None: no request)."""

        def __init__(self, rid: int | None) -> None:
            super().__init__()
            self.rid = rid

    def __init__(self, **kw) -> None:
        super().__init__(COLUMNS, **kw)

    def show(self, reqs) -> None:
        rows = []
        for r in reqs:
            style = "dim" if r.stage == "done" else ("bold" if r.stage.startswith(("device", "host")) else "")
            status = Text(r.status or "…", style="red" if r.status not in ("", "OK") else "")
            rows.append((r.id, (Text(str(r.id), style=style), r.type, str(r.sector), str(r.length),
                                Text(r.stage, style=style), status)))
        self.set_rows(rows)

    def on_data_table_row_highlighted(self, event) -> None:
        event.stop()
        key = self.cursor_key
        self.post_message(self.Selected(int(key) if key is not None else None))
