"""SyncTable: diffing keeps the table equal to the last rows given, styles included."""
from __future__ import annotations

import asyncio

from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.text import Text
from textual.app import App

from tui.widgets.sync_table import SyncTable

cell = st.one_of(st.sampled_from(["", "a", "b", "0x10"]),
                 st.builds(Text, st.sampled_from(["x", "y"]), style=st.sampled_from(["", "bold", "dim"])))
rows_st = st.lists(st.tuples(st.integers(0, 6), st.tuples(cell, cell)), max_size=6,
                   unique_by=lambda r: r[0])


def _shown(table: SyncTable) -> list:
    return [tuple((c.plain, str(c.style)) if isinstance(c, Text) else (c, None) for c in table.get_row_at(r))
            for r in range(table.row_count)]


def _want(rows) -> list:
    return [tuple((c.plain, str(c.style)) if isinstance(c, Text) else (c, None) for c in cells) for _, cells in rows]


@settings(max_examples=40, deadline=None)
@given(st.lists(rows_st, min_size=1, max_size=5))
@example([[(1, (Text("x"), "a"))], [(1, (Text("x", style="bold"), "a"))]])   # a style-only change
def test_table_always_shows_the_last_rows_given(seq):
    class A(App):
        def compose(self):
            yield SyncTable(("one", "two"))

    async def go():
        app = A()
        async with app.run_test() as pilot:
            t = app.query_one(SyncTable)
            for rows in seq:
                t.set_rows(rows)
                await pilot.pause()
                assert _shown(t) == _want(rows)
    asyncio.run(go())
