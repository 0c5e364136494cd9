"""Avail ring: what the driver published, and both ends' indices for it."""
from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from .sync_table import SyncTable


class AvailRingPane(Vertical):
    """flags, idx, used_event, the driver's shadow idx, the device's last_avail_idx; entries."""


    def compose(self):
        yield Static(id="avail-head")
        yield SyncTable(("slot", "head", "req"), id="avail-table")

    def show(self, rings, owners: dict, selected: int | None = None) -> None:
        head = self.query_one("#avail-head", Static)
        table = self.query_one("#avail-table", SyncTable)
        if rings is None:
            head.update("queue not set up yet", layout=False)
            table.set_rows([])
            return
        head.update(Text.assemble(
            ("idx ", "dim"), str(rings.avail_idx), ("  flags ", "dim"), f"{rings.avail_flags:#x}",
            ("\nused_event ", "dim"), str(rings.used_event),
            ("\navail_idx_shadow ", "dim"), str(rings.avail_idx_shadow),
            ("\nlast_avail_idx ", "dim"), str(rings.last_avail_idx),
            ("\nshadow_avail_idx ", "dim"), str(rings.shadow_avail_idx)),
            layout=False)
        n = rings.size
        rows = []
        pending = (rings.avail_idx - rings.last_avail_idx) % 65536
        for slot, h in rings.avail_ring:
            # written at some avail idx value: one of the last n idx values that were published
            age = (rings.avail_idx - 1 - slot) % n
            published = age < rings.avail_idx if rings.avail_idx < n else True
            is_pending = published and (slot - rings.last_avail_idx) % n < pending
            rid = owners.get(h) if is_pending or (published and age == 0) else None
            style = "bold reverse" if selected is not None and rid == selected else \
                ("bold" if is_pending else ("" if published else "dim"))
            mark = "→" if slot == rings.avail_idx % n else " "
            rows.append((slot, (Text(f"{mark}{slot}", style=style),
                                Text(str(h) if published else "·", style=style),
                                "" if rid is None else str(rid))))
        table.set_rows(rows)
