"""HexView: what it renders, what it reads, how it scrolls and what it posts."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rich.style import Style
from textual.app import App, ComposeResult
from textual.strip import Strip

from tui.widgets import hex_view
from tui.widgets.hex_view import HexView, Region

TCSS = Path(hex_view.__file__).resolve().parent.parent / "styles" / "hex_view.tcss"
SIZE = (130, 24)          # the HexView gets all of it: 24 content lines, no h-scroll


class HexApp(App):
    """One HexView and a record of what it posted."""

    CSS_PATH = [TCSS]

    def __init__(self, setup=None) -> None:
        super().__init__()
        self.setup = setup
        self.selected: list[tuple[str, int]] = []

    def compose(self) -> ComposeResult:
        view = HexView(id="hex")
        if self.setup:
            self.setup(view)
        yield view

    def on_hex_view_offset_selected(self, message: HexView.OffsetSelected) -> None:
        self.selected.append((message.space, message.offset))


class Source:
    """A bytearray data source that counts what it is asked for."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytearray(data)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, n: int) -> bytes:
        self.calls.append((offset, n))
        return bytes(self.data[offset:offset + n])


def ui(test):
    """Run an async pilot test with asyncio.run (the suite's convention; no plugin needed)."""
    def run() -> None:
        asyncio.run(test())
    run.__doc__ = test.__doc__
    return run


def hex_x(view: HexView, i: int) -> int:
    """Column of byte i of a line in the hex area."""
    digits = max(8, len(f"{view.data_size - 1:x}"))
    return digits + 2 + 3 * i + (i >= 8)


def style_at(strip: Strip, x: int) -> Style:
    """The style of the cell at column x."""
    pos = 0
    for segment in strip:
        if pos <= x < pos + segment.cell_length:
            return segment.style
        pos += segment.cell_length
    raise AssertionError(f"column {x} is past the strip ({pos} cells)")


def screen_line(view: HexView, line: int) -> Strip:
    """The rendered strip of content line `line`, which must be on screen."""
    y = line - view.scroll_offset.y
    assert 0 <= y < view.scrollable_content_region.height, f"line {line} is not on screen"
    return view.render_line(y)


def changed_bg(view: HexView):
    return view.get_component_rich_style("hexview--changed").bgcolor


@ui
async def test_first_line_text_and_partial_last_line():
    src = Source(b"QFI\xfb" + bytes(range(0x30, 0x3C)) + b"tail")
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", src, len(src.data))
        await pilot.pause()
        assert view.virtual_size.height == 2
        assert view.render_line(0).text.rstrip() == (
            "00000000  51 46 49 fb 30 31 32 33  34 35 36 37 38 39 3a 3b"
            "  |QFI.0123456789:;|")
        assert view.render_line(1).text.rstrip() == (
            "00000010  74 61 69 6c" + " " * 37 + "  |tail            |")
        assert view.render_line(2).text.strip() == ""


@ui
async def test_offset_column_grows_with_the_size():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes(n), (1 << 52) + 1)
        await pilot.pause()
        assert view.render_line(1).text.startswith("00000000000010  00 00")   # 14 digits
        view.set_source("host", lambda o, n: bytes(n), 1 << 52)
        await pilot.pause()
        assert view.render_line(1).text.startswith("0000000000010  00 00")    # 13 digits


@ui
async def test_goto_scrolls_the_target_into_view_with_the_cursor_on_it():
    src = Source(bytes(range(256)) * 256)                       # 64 KiB
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("ram", src, len(src.data))
        await pilot.pause()
        view.goto(0x8005)
        await pilot.pause()
        assert view.cursor == 0x8005
        line = 0x8000 // 16
        strip = screen_line(view, line)
        assert strip.text.startswith("00008000  00 01 02 03 04 05")
        assert style_at(strip, hex_x(view, 5)).reverse
        assert not style_at(strip, hex_x(view, 4)).reverse
        assert not style_at(strip, hex_x(view, 6)).reverse


@ui
async def test_goto_rejects_offsets_outside_the_space():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes(n), 0x10000)
        await pilot.pause()
        with pytest.raises(ValueError, match=r"^offset 0x10000 is past the end \(size 0x10000\)$"):
            view.goto(0x10000)
        with pytest.raises(ValueError, match=r"negative"):
            view.goto(-1)
        view.goto(0xFFFF)
        assert view.cursor == 0xFFFF


@ui
async def test_goto_before_the_first_layout_still_shows_the_target():
    def setup(view: HexView) -> None:
        view.set_source("host", lambda o, n: bytes(n), 1 << 30)
        view.goto(0x123450)
    app = HexApp(setup)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        view = app.query_one(HexView)
        assert screen_line(view, 0x123450 // 16).text.startswith("00123450")


@ui
async def test_set_changed_marks_exactly_the_changed_bytes_and_wins_over_regions():
    src = Source(bytes(range(1, 65)))
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", src, 64, [Region(0, 64, "l2", "L2 table")])
        view.set_changed([(0x12, 3), (0x2F, 2)])               # the second spans two lines
        await pilot.pause()
        bg = changed_bg(view)
        assert bg is not None
        line1, line2, line3 = (view.render_line(y) for y in (1, 2, 3))
        for i in range(16):
            assert (style_at(line1, hex_x(view, i)).bgcolor == bg) is (2 <= i <= 4), i
            assert (style_at(line2, hex_x(view, i)).bgcolor == bg) is (i == 15), i
            assert (style_at(line3, hex_x(view, i)).bgcolor == bg) is (i == 0), i
        ascii_x = hex_x(view, 15) + 2 + 2 + 1                    # "  |" then the characters
        assert style_at(line1, ascii_x + 3).bgcolor == bg
        assert style_at(line1, ascii_x + 5).bgcolor != bg
        l2_color = view.get_component_rich_style("hexview--l2").color
        assert style_at(line1, hex_x(view, 0)).color == l2_color
        assert style_at(line1, hex_x(view, 3)).color != l2_color     # changed wins

        view.set_changed([])                                    # the next step: unmarked
        await pilot.pause()
        assert all(style_at(view.render_line(1), hex_x(view, i)).bgcolor != bg
                   for i in range(16))


@ui
async def test_zero_bytes_are_dimmed_unless_changed():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes([0, 7] * (n // 2)), 32)
        view.set_changed([(2, 1)])
        await pilot.pause()
        strip = view.render_line(0)
        assert style_at(strip, hex_x(view, 4)).dim
        assert not style_at(strip, hex_x(view, 3)).dim
        assert not style_at(strip, hex_x(view, 2)).dim


@ui
async def test_refresh_data_repaints_only_the_lines_that_changed():
    src = Source(bytes(0x1000))
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("ram", src, len(src.data))
        await pilot.pause()
        src.calls.clear()
        src.data[0x25] = 0xAB
        await pilot.pause()
        assert "ab" not in view.render_line(2).text              # cached until told
        assert src.calls == []

        view.refresh_data([(0x25, 1)])
        await pilot.pause()
        assert src.calls == [(0x20, 16)]                          # one line re-read
        assert view.render_line(2).text.startswith("00000020  00 00 00 00 00 ab")

        src.calls.clear()
        src.data[0x40:0x42] = b"\x11\x22"
        view.refresh_data()                                       # everything
        await pilot.pause()
        assert "11 22" in view.render_line(4).text
        assert sum(n for _, n in src.calls) <= SIZE[1] * 16


@ui
async def test_a_1tib_sparse_image_reads_only_the_lines_on_screen():
    calls: list[tuple[int, int]] = []

    def read(offset: int, n: int) -> bytes:
        calls.append((offset, n))
        return bytes(n)

    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", read, 1 << 40, title="host: 1 TiB")
        await pilot.pause()
        view.goto((1 << 40) - 1)
        await pilot.pause()
        assert view.virtual_size.height == 1 << 36
        height = view.scrollable_content_region.height
        assert sum(n for _, n in calls) <= 2 * height * 16       # two screens, no more
        assert len(calls) <= 4
        assert all(n <= height * 16 for _, n in calls)
        assert screen_line(view, (1 << 36) - 1).text.startswith(
            "fffffffff0  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00")


@ui
async def test_regions_label_their_first_line_and_style_their_bytes():
    regions = [Region(0x20, 0x40, "l2", "L2 table"),
               Region(0x60, 0x10, "data", "data guest 0x48a000 (sector 9296)"),
               Region(0x74, 4, "weird-kind")]
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes([0x5A] * n), 0x100, regions)
        await pilot.pause()
        texts = [view.render_line(y).text.rstrip() for y in range(9)]
        assert texts[0].endswith("|")                            # no region, no label
        assert texts[2].endswith("|ZZZZZZZZZZZZZZZZ|  L2 table")
        assert texts[3].endswith("  …l2")
        assert texts[6].endswith("  data guest 0x48a000 (sector 9296)")
        assert texts[7].endswith("  weird-kind")
        assert texts[8].endswith("|")
        line2 = view.render_line(2)
        assert style_at(line2, hex_x(view, 0)).color == \
            view.get_component_rich_style("hexview--l2").color
        assert style_at(view.render_line(7), hex_x(view, 4)).color == \
            view.get_component_rich_style("hexview--unknown").color


@ui
async def test_thousands_of_regions_nested_and_overlapping():
    regions = [Region(i * 0x1000, 0x1000, "data", f"data {i}")
               for i in range(5000) if i not in (2, 3, 4)]
    regions.append(Region(0x2000, 0x3000, "l2", "L2 over three clusters"))
    regions.append(Region(0x2800, 0x10, "header", "inner"))          # nested: shows through
    regions.append(Region(0x4F00, 0x200, "free", "overlaps"))  # the later start wins
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes([1] * n), 5000 * 0x1000, regions)
        await pilot.pause()
        color = {k: view.get_component_rich_style(f"hexview--{k}").color
                 for k in ("data", "l2", "header", "free")}
        for offset, kind in [(0x1FF0, "data"), (0x2000, "l2"), (0x2800, "header"),
                             (0x2810, "l2"), (0x4EF0, "l2"), (0x4FF0, "free"),
                             (0x5000, "data"),
                             (4999 * 0x1000, "data")]:
            view.goto(offset)
            await pilot.pause()
            strip = screen_line(view, offset // 16)
            assert style_at(strip, hex_x(view, 1)).color == color[kind], hex(offset)
        view.goto(0x2800)
        await pilot.pause()
        assert screen_line(view, 0x280).text.rstrip().endswith("inner")


@ui
async def test_keys_move_the_cursor_and_enter_posts_offset_selected():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("ram", lambda o, n: bytes(n), 0x10000)
        view.focus()
        await pilot.pause()
        moves = [("right", 1), ("down", 17), ("left", 16), ("up", 0), ("up", 0),
                 ("left", 0), ("end", 0xFFFF), ("down", 0xFFFF), ("home", 0)]
        for key, want in moves:
            await pilot.press(key)
            assert view.cursor == want, key
        page = view.scrollable_content_region.height
        await pilot.press("pagedown")
        assert view.cursor == page * 16
        assert view.scroll_offset.y == page
        await pilot.press("pageup")
        assert view.cursor == 0 and view.scroll_offset.y == 0
        await pilot.press("end")
        await pilot.pause()
        assert screen_line(view, 0xFFF).text.startswith("0000fff0")
        assert app.selected == []                                 # moving alone posts nothing
        await pilot.press("enter")
        await pilot.pause()
        assert app.selected == [("ram", 0xFFFF)]


@ui
async def test_click_puts_the_cursor_on_the_byte_and_posts():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes(n), 0x1000)
        await pilot.pause()
        await pilot.click(HexView, offset=(hex_x(view, 9), 3))
        await pilot.pause()
        assert view.cursor == 0x39
        ascii_x = hex_x(view, 15) + 2 + 2 + 1
        await pilot.click(HexView, offset=(ascii_x + 2, 5))
        await pilot.pause()
        assert view.cursor == 0x52
        assert app.selected == [("host", 0x39), ("host", 0x52)]


@ui
async def test_set_source_switches_spaces_and_keeps_the_cursor_if_it_fits():
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", lambda o, n: bytes([0x11] * n), 0x10000)
        view.goto(0x4000)
        view.set_changed([(0x4000, 16)])
        await pilot.pause()
        view.set_source("ram", lambda o, n: bytes([0x22] * n), 0x8000, title="guest RAM")
        await pilot.pause()
        assert (view.space, view.data_size, view.cursor) == ("ram", 0x8000, 0x4000)
        strip = screen_line(view, 0x400)
        assert strip.text.startswith("00004000  22 22")
        assert style_at(strip, hex_x(view, 1)).bgcolor != changed_bg(view)   # host's marks
        view.set_source("host", lambda o, n: bytes(n), 0x100)
        await pilot.pause()
        assert view.cursor == 0 and view.scroll_offset.y == 0


@ui
async def test_unreadable_bytes_show_as_question_marks():
    def read(offset: int, n: int) -> bytes:
        raise ValueError("outside guest RAM")
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("ram", read, 32)
        await pilot.pause()
        assert view.render_line(0).text.startswith("00000000  ?? ?? ??")


def test_region_validates_its_range():
    with pytest.raises(ValueError, match="must not be negative"):
        Region(-1, 16, "data")
    assert Region(0x10, 0x20, "l2").end == 0x30


@ui
async def test_set_regions_repaints_only_the_regions_that_changed():
    src = Source(bytes(0x1000))
    regions = [Region(0, 0x100, "header", "qcow2 header"), Region(0x200, 0x40, "l1", "L1 table")]
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.set_source("host", src, len(src.data), regions)
        await pilot.pause()
        src.calls.clear()
        view.set_regions(list(reversed(regions)))                 # the same map: nothing to do
        await pilot.pause()
        assert src.calls == []
        view.set_regions([*regions, Region(0x50, 0x20, "l2", "L2 table")])
        await pilot.pause()
        assert src.calls == [(0x50, 0x20)]                        # its two lines, one read
        assert view.render_line(5).text.rstrip().endswith("L2 table")


@ui
async def test_a_border_and_a_title_do_not_change_what_is_read():
    src = Source(bytes(range(256)) * 16)
    app = HexApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(HexView)
        view.styles.border = ("round", "white")
        view.set_source("host", src, len(src.data), title="Host image")
        await pilot.pause()
        assert view.border_title == "Host image"
        height = view.scrollable_content_region.height
        assert height == SIZE[1] - 2
        assert src.calls == [(0, height * 16)]                   # one read for the screen
        assert view.render_line(0).text.startswith("00000000  00 01 02")
