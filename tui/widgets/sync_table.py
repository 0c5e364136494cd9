"""A DataTable that is brought up to date by diffing rows, so a step repaints only what changed."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable


def _same(a, b) -> bool:
    """Cell equality that sees styles too (rich's Text.__eq__ ignores the base style)."""
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans
    return type(a) is type(b) and a == b


class SyncTable(DataTable):
    """set_rows(rows) with rows = [(key, (cell, ...))]: changed cells are updated in place;
    the table is rebuilt only when the set or order of rows changes."""


    def __init__(self, columns: tuple, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)
        self._columns = columns
        self._keys: list = []
        self._cells: dict = {}

    def on_mount(self) -> None:
        for label in self._columns:
            self.add_column(label, key=label)

    def set_rows(self, rows: list) -> None:
        keys = [k for k, _ in rows]
        if keys != self._keys:
            cursor_key = self._keys[self.cursor_row] if 0 <= self.cursor_row < len(self._keys) else None
            self.clear()
            for k, cells in rows:
                self.add_row(*cells, key=str(k))
            self._keys = keys
            self._cells = dict(rows)
            if cursor_key in keys:
                self.move_cursor(row=keys.index(cursor_key), animate=False)
            return
        for k, cells in rows:
            old = self._cells.get(k)
            if old is not None and all(_same(a, b) for a, b in zip(old, cells)):
                continue
            for col, (a, b) in enumerate(zip(old, cells)):
                if not _same(a, b):
                    self.update_cell(str(k), self._columns[col], b, update_width=True)
            self._cells[k] = cells

    @property
    def cursor_key(self):
        return self._keys[self.cursor_row] if 0 <= self.cursor_row < len(self._keys) else None

    def select_key(self, key) -> None:
        if key in self._keys:
            self.move_cursor(row=self._keys.index(key))
