"""Used ring: what the device completed, and both ends' indices for it."""
from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from .sync_table import SyncTable


class UsedRingPane(Vertical):
    """flags, idx, avail_event, the device's used_idx/signalled_used/inuse, the driver's
    last_used_idx; the {id, len} entries."""


    def compose(self):
        yield Static(id="used-head")
        yield SyncTable(("slot", "id", "len"), id="used-table")

    def show(self, rings, selected_head: int | None = None) -> None:
        head = self.query_one("#used-head", Static)
        table = self.query_one("#used-table", SyncTable)
        if rings is None:
            head.update("queue not set up yet", layout=False)
            table.set_rows([])
            return
        head.update(Text.assemble(
            ("idx ", "dim"), str(rings.used_idx_mem), ("  flags ", "dim"), f"{rings.used_flags:#x}",
            ("\navail_event ", "dim"), str(rings.avail_event),
            ("\nused_idx ", "dim"), str(rings.used_idx), ("  inuse ", "dim"), str(rings.inuse),
            ("\nsignalled_used ", "dim"), str(rings.signalled_used),
            ("\nlast_used_idx ", "dim"), str(rings.last_used_idx),
            ("\nnum_free ", "dim"), str(rings.num_free)), layout=False)
        n = rings.size
        rows = []
        pending = (rings.used_idx_mem - rings.last_used_idx) % 65536
        for slot, uid, ln in rings.used_ring:
            written = rings.used_idx_mem >= n or slot < rings.used_idx_mem
            is_pending = written and (slot - rings.last_used_idx) % n < pending
            style = "bold reverse" if selected_head is not None and uid == selected_head and is_pending \
                else ("bold" if is_pending else ("" if written else "dim"))
            mark = "→" if slot == rings.used_idx_mem % n else " "
            rows.append((slot, (Text(f"{mark}{slot}", style=style), Text(str(uid) if written else "·", style=style),
                                str(ln) if written else "")))
        table.set_rows(rows)
