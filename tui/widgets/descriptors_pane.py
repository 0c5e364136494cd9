"""Descriptors: the queue's descriptor table decoded from guest RAM, indirect tables under
their ring descriptor, each entry's role, owner request and free-list membership."""
from __future__ import annotations

from rich.text import Text
from textual.message import Message

from .sync_table import SyncTable

COLUMNS = ("idx", "addr", "len", "flags", "next", "role", "req")


class DescriptorsPane(SyncTable):
    """Ring descriptors (and the entries of indirect tables, indented under their head)."""

    class Selected(Message):
        def __init__(self, index: int | None, owner: int | None, addr: int | None) -> None:
            super().__init__()
            self.index = index
            self.owner = owner
            self.addr = addr

    def __init__(self, **kw) -> None:
        super().__init__(COLUMNS, **kw)
        self._rows: dict = {}
        self.selected_request: int | None = None

    def show(self, descs, selected: int | None = None) -> None:
        self.selected_request = selected
        rows = []
        self._rows = {}
        run: list = []

        def flush_run() -> None:
            # a run of never-used descriptors (all zero, on the free list) is one row
            if len(run) < 3:
                for d in run:
                    add(d)
            else:
                rows.append((f"z{run[0].index}", (Text(f"{run[0].index}–{run[-1].index}", style="dim"),
                                                   "", "", "", "", Text("free, never used", style="dim"),
                                                   "")))
            run.clear()

        def add(d) -> None:
            mark = "bold reverse" if selected is not None and d.owner == selected else ("dim" if d.free else "")
            key = f"d{d.index}"
            self._rows[key] = d
            rows.append((key, (Text(str(d.index), style=mark), f"{d.addr:#x}", str(d.len),
                               d.flag_names, str(d.next), Text("free", style="dim") if d.free else d.role,
                               "" if d.owner is None else str(d.owner))))
            for t in d.table:
                k2 = f"d{d.index}.{t.index}"
                self._rows[k2] = t
                rows.append((k2, (Text(f" └{t.index}", style=mark), f"{t.addr:#x}", str(t.len),
                                  t.flag_names, str(t.next), t.role, str(t.owner))))

        for d in descs:
            if d.free and not d.addr and not d.len and not d.flags and not d.table:
                run.append(d)
                continue
            flush_run()
            add(d)
        flush_run()
        self.set_rows(rows)

    def selected_descriptor(self):
        """(index, addr, ring) of the highlighted row: ring False for an indirect-table entry."""
        key = self.cursor_key
        d = self._rows.get(key)
        if d is None:
            return None
        from types import SimpleNamespace
        return SimpleNamespace(index=d.index, addr=d.addr, ring="." not in key)

    def on_data_table_row_highlighted(self, event) -> None:
        event.stop()
        d = self._rows.get(self.cursor_key)
        if d is not None:
            self.post_message(self.Selected(d.index, d.owner, d.addr))
