"""Hex dump of one address space (the host image file or guest RAM), scrolled with the Line API.

`HexView` never holds the address space: it asks its data source for the 16-byte lines on
screen only (one read per contiguous run of missing lines per paint) and keeps the rendered
lines in an LRU cache that is invalidated line by line, so a 1 TiB sparse image scrolls as
fast as 64 KiB and a step repaints only the lines it changed.

A line reads ``OFFSET  hh x8  hh x8  |ascii...........|  label``. Every byte is styled by the
kind of region it lies in (component class ``hexview--<kind>``); bytes changed by the last
step get ``hexview--changed`` on top, the cursor byte ``hexview--cursor``, and zero bytes
that are neither get ``hexview--zero``. The styles live in ``tui/styles/hex_view.tcss``.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region as Area
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

BYTES_PER_LINE = 16
REGION_KINDS = ("header", "l1", "l2", "refcount-table", "refcount-block", "data", "compressed",
                "free", "metadata", "snapshot-table", "desc", "avail", "used", "buffer",
                "unknown")
"""Region kinds with a component class each (``hexview--<kind>``); others render as unknown."""

_MIN_DIGITS = 8
_MAX_LABEL = 64          # label column cap (cells); longer labels are cut
_CACHE_LINES = 1024
_HEX = [f"{b:02x}" for b in range(256)]
_ASCII = [chr(b) if 0x20 <= b < 0x7F else "." for b in range(256)]
_KIND_CLASS = {kind: f"hexview--{kind}" for kind in REGION_KINDS}

ReadFn = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class Region:
    """A labelled range of the address space (a qcow2 structure, a ring, a buffer...)."""

    start: int
    length: int
    kind: str
    label: str = ""
    origin: int | None = None     # where the region's first byte lives in the other space
    origin_name: str = ""         # that space ("guest"): every line then says its own address

    def line_label(self, offset: int) -> str:
        """The label of a continuation line starting at `offset` inside the region."""
        if self.origin is None:
            return "…" + self.kind
        at = self.origin + (offset - self.start)
        return f"{self.origin_name} {at:#x} sector {at // 512}"

    def __post_init__(self) -> None:
        if self.start < 0 or self.length < 0:
            raise ValueError(f"region {self.kind!r} at {self.start:#x}+{self.length:#x}: "
                             "start and length must not be negative")

    @property
    def end(self) -> int:
        """First offset after the region."""
        return self.start + self.length


def _flatten(regions: Sequence[Region]) -> list[tuple[int, int, Region]]:
    """Disjoint sorted (start, end, region) pieces.

    Where regions overlap, the one that starts later wins (the shorter one on a tie), so a
    region nested in another shows through it and the outer one resumes after it.
    """
    ordered = sorted((r for r in regions if r.length), key=lambda r: (r.start, -r.length))
    points = sorted({p for r in ordered for p in (r.start, r.end)})
    pieces: list[tuple[int, int, Region]] = []
    heap: list[tuple[int, int, int, Region]] = []   # (-start, length, order, region)
    i = 0
    for p, nxt in zip(points, points[1:]):
        while i < len(ordered) and ordered[i].start == p:
            heapq.heappush(heap, (-p, ordered[i].length, i, ordered[i]))
            i += 1
        while heap and heap[0][3].end <= p:
            heapq.heappop(heap)
        if heap:
            r = heap[0][3]
            if pieces and pieces[-1][2] is r and pieces[-1][1] == p:
                pieces[-1] = (pieces[-1][0], nxt, r)
            else:
                pieces.append((p, nxt, r))
    return pieces


def _overlaps(spans: Sequence[tuple], starts: list[int], start: int,
              end: int) -> Iterator[tuple[int, int, tuple]]:
    """(lo, hi, span) for the sorted disjoint (start, end, ...) spans meeting [start, end):
    lo and hi relative to `start`. O(log n) to find the first one."""
    i = max(0, bisect_right(starts, start) - 1)
    while i < len(spans) and spans[i][0] < end:
        if spans[i][1] > start:
            yield max(spans[i][0], start) - start, min(spans[i][1], end) - start, spans[i]
        i += 1


def _kind_class(region: Region) -> str:
    return _KIND_CLASS.get(region.kind, "hexview--unknown")


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) ranges as sorted, merged, non-empty (start, end) pairs."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((o, o + n) for o, n in ranges if n > 0):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class HexView(ScrollView, can_focus=True):
    """Hex dump of one address space, scrolled with the Line API."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "hexview--offset", "hexview--changed", "hexview--cursor", "hexview--zero",
        "hexview--label", *_KIND_CLASS.values(),
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up 16 bytes", show=False, id="hex-cursor-up"),
        Binding("down", "cursor_down", "Down 16 bytes", show=False, id="hex-cursor-down"),
        Binding("left", "cursor_left", "Previous byte", show=False, id="hex-cursor-left"),
        Binding("right", "cursor_right", "Next byte", show=False, id="hex-cursor-right"),
        Binding("pageup", "cursor_page_up", "Page up", show=False, id="hex-page-up"),
        Binding("pagedown", "cursor_page_down", "Page down", show=False, id="hex-page-down"),
        Binding("home", "cursor_home", "First byte", show=False, id="hex-home"),
        Binding("end", "cursor_end", "Last byte", show=False, id="hex-end"),
        Binding("enter", "select_cursor", "Select offset", show=False, id="hex-select"),
    ]

    class OffsetSelected(Message):
        """The user picked a byte (Enter or a click): `offset` in address space `space`."""

        def __init__(self, hex_view: HexView, space: str, offset: int) -> None:
            super().__init__()
            self.hex_view = hex_view
            self.space = space
            self.offset = offset

        @property
        def control(self) -> HexView:
            """The HexView that posted the message."""
            return self.hex_view

    def __init__(self, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None, disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._space = "host"
        self._read: ReadFn = lambda offset, n: b""
        self._data_size = 0
        self._cursor = 0
        self._regions: list[Region] = []          # sorted by start: labels
        self._region_starts: list[int] = []
        self._pieces: list[tuple[int, int, Region]] = []   # disjoint: byte styles
        self._piece_starts: list[int] = []
        self._changed: list[tuple[int, int]] = []
        self._changed_starts: list[int] = []
        self._digits = _MIN_DIGITS
        self._label_width = 0
        self._generation = 0                      # bumped when every cached line is stale
        self._line_cache: LRUCache[int, tuple[tuple, Strip]] = LRUCache(_CACHE_LINES)
        self._styles: dict[tuple, Style] = {}
        self._styles_token: tuple = ()
        self._paint_token: tuple | None = None    # set while render_lines runs
        self._prefetched: dict[int, bytes | None] = {}
        self._scroll_pending = False

    # -- the API the app uses ---------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """Offset of the cursor byte."""
        return self._cursor

    @property
    def space(self) -> str:
        """The address space shown: "host" or "ram"."""
        return self._space

    @property
    def data_size(self) -> int:
        """Bytes in the address space (`Widget.size` stays Textual's size on screen)."""
        return self._data_size

    def set_source(self, space: str, read: ReadFn, size: int,
                   regions: Sequence[Region] = (), title: str = "") -> None:
        """Show another address space (or the same one, resized): drops every cached line.

        Keeps the cursor if it is inside the new size (else moves it to 0). A new space
        scrolls to the cursor and forgets the changed ranges; the same space keeps both
        the scroll position and the changed ranges.
        """
        if size < 0:
            raise ValueError(f"size {size:#x} is negative")
        new_space = space != self._space
        if new_space:
            self._changed, self._changed_starts = [], []
        self._space, self._read, self._data_size = space, read, size
        if self._cursor >= size:
            self._cursor, new_space = 0, True
        self.border_title = title or None
        self._set_regions(regions)
        self._rebuild()
        if new_space:
            self._scroll_cursor_into_view(center=True)

    def set_regions(self, regions: Sequence[Region]) -> None:
        """Replace the region annotations (any order; overlaps: the later start wins).

        Repaints only the lines of regions that were added or removed, so calling it after
        every step with a mostly unchanged map is cheap.
        """
        old, old_width = set(self._regions), self._label_width
        self._set_regions(regions)
        if self._label_width != old_width:
            self._rebuild()
            return
        gone_or_new = old.symmetric_difference(self._regions)
        self._repaint(self._line_spans(_merge((r.start, r.length) for r in gone_or_new)))

    def set_changed(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Mark the (offset, length) ranges changed by the last step; unmarks the previous ones."""
        old = self._changed
        self._changed = _merge(ranges)
        self._changed_starts = [s for s, _ in self._changed]
        self._repaint(self._line_spans(old + self._changed))

    def refresh_data(self, ranges: Sequence[tuple[int, int]] | None = None) -> None:
        """The bytes changed: repaint the lines covering `ranges` (all lines if None)."""
        if ranges is None:
            self._generation += 1
            self._line_cache.clear()
            self.refresh()
        else:
            self._repaint(self._line_spans(_merge(ranges)))

    def goto(self, offset: int) -> None:
        """Move the cursor to `offset` and scroll it into view (centred if it was off screen)."""
        if offset < 0:
            raise ValueError(f"offset {offset:#x} is negative")
        if offset >= self._data_size:
            raise ValueError(f"offset {offset:#x} is past the end (size {self._data_size:#x})")
        self._move_cursor(offset, center=True)

    # -- geometry ----------------------------------------------------------------------------

    @property
    def _line_count(self) -> int:
        return (self._data_size + BYTES_PER_LINE - 1) // BYTES_PER_LINE

    def _hex_x(self, i: int) -> int:
        """Column of byte `i` of a line in the hex area."""
        return self._digits + 2 + 3 * i + (i >= 8)

    def _ascii_x(self, i: int) -> int:
        """Column of byte `i` of a line in the character area."""
        return self._digits + 53 + i

    def _byte_at(self, x: int) -> int:
        """Byte of a line under column `x` (gaps: the byte before; outside the bytes: 0)."""
        if self._ascii_x(0) <= x < self._ascii_x(BYTES_PER_LINE):
            return x - self._ascii_x(0)
        if self._hex_x(0) <= x < self._ascii_x(0) - 2:
            return next(i for i in reversed(range(BYTES_PER_LINE)) if self._hex_x(i) <= x)
        return 0

    def _set_regions(self, regions: Sequence[Region]) -> None:
        self._regions = sorted((r for r in regions if r.length), key=lambda r: r.start)
        self._region_starts = [r.start for r in self._regions]
        self._pieces = _flatten(self._regions)
        self._piece_starts = [p[0] for p in self._pieces]
        widest = max((max(cell_len(r.label or r.kind), cell_len(r.line_label(r.end - 1)))
                      for r in self._regions), default=0)
        self._label_width = min(widest, _MAX_LABEL)

    def _rebuild(self) -> None:
        """New layout or contents: every cached line is stale."""
        self._digits = max(_MIN_DIGITS, len(f"{max(self._data_size - 1, 0):x}"))
        width = self._digits + 70 + (2 + self._label_width if self._label_width else 0)
        self._generation += 1
        self._line_cache.clear()
        self.virtual_size = Size(width, self._line_count)
        self.refresh()

    def notify_style_update(self) -> None:
        """Styles changed (theme, CSS reload): rendered lines are stale."""
        super().notify_style_update()
        self._generation += 1
        self._line_cache.clear()

    # -- invalidation ------------------------------------------------------------------------

    @staticmethod
    def _line_spans(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """(start, end) byte ranges -> sorted, merged (first, last) line spans."""
        spans: list[tuple[int, int]] = []
        for start, end in sorted(ranges):
            first, last = start // BYTES_PER_LINE, (end - 1) // BYTES_PER_LINE
            if spans and first <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(spans[-1][1], last))
            else:
                spans.append((first, last))
        return spans

    def _repaint(self, spans: list[tuple[int, int]]) -> None:
        """Drop the cached lines in `spans` and repaint those on screen."""
        if not spans:
            return
        cache = self._line_cache
        if sum(last - first + 1 for first, last in spans) <= len(cache):
            for first, last in spans:
                for line in range(first, last + 1):
                    cache.discard(line)
        else:                               # a huge range: walk the cache, not the range
            firsts = [first for first, _ in spans]
            for line in list(cache.keys()):
                i = bisect_right(firsts, line) - 1
                if i >= 0 and line <= spans[i][1]:
                    cache.discard(line)
        top = int(self.scroll_offset.y)
        bottom = top + self.scrollable_content_region.height - 1
        for first, last in spans:
            first, last = max(first, top), min(last, bottom)
            if first <= last:
                self.refresh_lines(first, last - first + 1)

    # -- cursor ------------------------------------------------------------------------------

    def _move_cursor(self, offset: int, *, center: bool = False, scroll_lines: int = 0) -> None:
        if not self._data_size:
            return
        offset = max(0, min(offset, self._data_size - 1))
        old, self._cursor = self._cursor, offset
        if old != offset:
            self._repaint(self._line_spans([(old, old + 1), (offset, offset + 1)]))
        if scroll_lines:
            self.scroll_to(y=self.scroll_offset.y + scroll_lines, animate=False)
        self._scroll_cursor_into_view(center=center)

    def _scroll_cursor_into_view(self, *, center: bool = False) -> None:
        area = self.scrollable_content_region
        if area.height <= 0:                # not laid out yet: do it on the first resize
            self._scroll_pending = True
            return
        self._scroll_pending = False
        line = self._cursor // BYTES_PER_LINE
        top, height = int(self.scroll_offset.y), area.height
        y: int | None = None
        if not top <= line < top + height:
            if center:
                y = max(0, line - height // 2)
            else:
                y = line if line < top else line - height + 1
        x0 = self._hex_x(self._cursor % BYTES_PER_LINE)
        left = int(self.scroll_offset.x)
        x: int | None = None
        if not (left <= x0 and x0 + 2 <= left + area.width):
            x = 0 if x0 + 2 <= area.width else x0 + 2 - area.width
        if x is not None or y is not None:
            self.scroll_to(x=x, y=y, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        """Finish a goto that came before the first layout."""
        if self._scroll_pending:
            self._scroll_cursor_into_view(center=True)

    def action_cursor_up(self) -> None:
        """Cursor up one line (16 bytes)."""
        self._move_cursor(self._cursor - BYTES_PER_LINE)

    def action_cursor_down(self) -> None:
        """Cursor down one line (16 bytes)."""
        self._move_cursor(self._cursor + BYTES_PER_LINE)

    def action_cursor_left(self) -> None:
        """Cursor to the previous byte."""
        self._move_cursor(self._cursor - 1)

    def action_cursor_right(self) -> None:
        """Cursor to the next byte."""
        self._move_cursor(self._cursor + 1)

    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height)

    def action_cursor_page_up(self) -> None:
        """Cursor and view up one page."""
        page = self._page()
        self._move_cursor(self._cursor - page * BYTES_PER_LINE, scroll_lines=-page)

    def action_cursor_page_down(self) -> None:
        """Cursor and view down one page."""
        page = self._page()
        self._move_cursor(self._cursor + page * BYTES_PER_LINE, scroll_lines=page)

    def action_cursor_home(self) -> None:
        """Cursor to the first byte."""
        self._move_cursor(0)

    def action_cursor_end(self) -> None:
        """Cursor to the last byte."""
        self._move_cursor(self._data_size - 1)

    def action_select_cursor(self) -> None:
        """Post OffsetSelected for the cursor byte."""
        if self._data_size:
            self.post_message(self.OffsetSelected(self, self._space, self._cursor))

    def on_click(self, event: events.Click) -> None:
        """Put the cursor on the clicked byte and post OffsetSelected."""
        where = event.get_content_offset(self)
        if where is None or not self._data_size:
            return
        line = int(self.scroll_offset.y) + where.y
        if line >= self._line_count:
            return
        column = self._byte_at(int(self.scroll_offset.x) + where.x)
        self._move_cursor(line * BYTES_PER_LINE + column)
        self.post_message(self.OffsetSelected(self, self._space, self._cursor))

    # -- rendering ---------------------------------------------------------------------------

    def _fetch(self, offset: int, n: int) -> bytes | None:
        n = min(n, self._data_size - offset)
        try:
            return bytes(self._read(offset, n))
        except (OSError, ValueError):      # shown as "??": a view must not take the app down
            return None

    def render_lines(self, crop: Area) -> list[Strip]:
        """Read the missing lines of this paint in one call per contiguous run, then render."""
        top = self.gutter.top
        y0, y1 = max(0, crop.y - top), min(self.size.height, crop.bottom - top)
        first = int(self.scroll_offset.y) + y0
        last = min(int(self.scroll_offset.y) + y1, self._line_count) - 1
        token = self._paint_token = self._token()
        run: list[int] = []
        for line in range(first, last + 2):
            hit = self._line_cache.get(line)
            if line <= last and (hit is None or hit[0] != token):
                run.append(line)
            elif run:
                data = self._fetch(run[0] * BYTES_PER_LINE, len(run) * BYTES_PER_LINE)
                for k, missing in enumerate(run):
                    self._prefetched[missing] = (
                        None if data is None
                        else data[k * BYTES_PER_LINE:(k + 1) * BYTES_PER_LINE])
                run = []
        try:
            return super().render_lines(crop)
        finally:
            self._prefetched.clear()
            self._paint_token = None

    def render_line(self, y: int) -> Strip:
        """Line `y` of the widget (content line scroll_y + y), cropped to the width."""
        scroll_x, scroll_y = self.scroll_offset
        line = scroll_y + y
        width = self.size.width
        token = self._paint_token or self._token()
        base = token[1]
        if line >= self._line_count:
            return Strip.blank(width, base)
        hit = self._line_cache.get(line)
        if hit is not None and hit[0] == token:
            strip = hit[1]
        else:
            if line in self._prefetched:
                data = self._prefetched.pop(line)
            else:
                data = self._fetch(line * BYTES_PER_LINE, BYTES_PER_LINE)
            strip = self._build(line, data, token)
            self._line_cache[line] = (token, strip)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _token(self) -> tuple:
        """What a cached line depends on besides its bytes: layout, styles, focus tint."""
        return (self._generation, self.rich_style)

    def _byte_style(self, cls: str | None, zero: bool = False, changed: bool = False,
                    cursor: bool = False, label: bool = False) -> Style:
        """Base style + component class `cls` (+ zero / changed / cursor / label), memoised."""
        key = (cls, zero and not changed and not cursor, changed, cursor, label)
        style = self._styles.get(key)
        if style is None:
            part = self._overlay
            style = self._styles_token[1]
            if cls:
                style += part(cls)
            if key[1]:
                style += part("hexview--zero")
            if changed:
                style += part("hexview--changed")
            if cursor:
                style += part("hexview--cursor")
            if label:
                style += part("hexview--label")
            self._styles[key] = style
        return style

    def _overlay(self, name: str) -> Style:
        """What component class `name` sets, resolved as Textual resolves it (alpha, auto)."""
        rules = self.get_component_styles(name)
        full = self.get_component_rich_style(name)
        colors = Style(
            color=full.color if rules.has_rule("color") or rules.has_rule("auto_color") else None,
            bgcolor=full.bgcolor if rules.has_rule("background") else None)
        return colors + self.get_component_rich_style(name, partial=True).without_color

    def _build(self, line: int, data: bytes | None, token: tuple) -> Strip:
        """The full-width strip of one line (cached by the caller)."""
        if token != self._styles_token:
            self._styles, self._styles_token = {}, token
        base = self._byte_style(None)
        start = line * BYTES_PER_LINE
        count = min(BYTES_PER_LINE, self._data_size - start)
        end = start + BYTES_PER_LINE
        kinds: list[str | None] = [None] * BYTES_PER_LINE
        for lo, hi, piece in _overlaps(self._pieces, self._piece_starts, start, end):
            kinds[lo:hi] = [_kind_class(piece[2])] * (hi - lo)
        changed = [False] * BYTES_PER_LINE
        for lo, hi, _ in _overlaps(self._changed, self._changed_starts, start, end):
            changed[lo:hi] = [True] * (hi - lo)
        cursor = self._cursor - start

        texts: list[str] = [f"{start:0{self._digits}x}", "  "]
        styles: list[Style] = [self._byte_style("hexview--offset"), base]
        ascii_texts: list[str] = []
        ascii_styles: list[Style] = []
        cells: list[tuple[str, str, Style]] = []        # (hex, char, style) per byte
        for b in range(count):
            if data is None or b >= len(data):
                cells.append(("??", "?", self._byte_style("hexview--unknown")))
                continue
            value = data[b]
            cells.append((_HEX[value], _ASCII[value],
                          self._byte_style(kinds[b], value == 0, changed[b], b == cursor)))
        for b in range(BYTES_PER_LINE):
            if b:           # a gap joins the band of its neighbours when they look alike
                left = cells[b - 1][2] if b <= count else base
                joined = b < count and left is cells[b][2] and cursor not in (b - 1, b)
                texts.append("  " if b == 8 else " ")
                styles.append(left if joined else base)
            if b >= count:
                texts.append("  ")
                styles.append(base)
                ascii_texts.append(" ")
                ascii_styles.append(base)
                continue
            hex_text, char, style = cells[b]
            texts.append(hex_text)
            styles.append(style)
            ascii_texts.append(char)
            ascii_styles.append(style)
        texts += ["  ", "|", *ascii_texts, "|"]
        styles += [base, base, *ascii_styles, base]
        if self._label_width:
            label, kind = self._label(start)
            texts += ["  ", set_cell_size(label, self._label_width)]
            styles += [base, self._byte_style(kind, label=True) if label else base]

        segments: list[Segment] = []
        run_text, run_style = texts[0], styles[0]
        for text, style in zip(texts[1:], styles[1:]):
            if style is run_style:
                run_text += text
            else:
                segments.append(Segment(run_text, run_style))
                run_text, run_style = text, style
        segments.append(Segment(run_text, run_style))
        return Strip(segments, self.virtual_size.width)

    def _label(self, start: int) -> tuple[str, str | None]:
        """Label column of the line at `start`, and the component class of its region."""
        lo = bisect_left(self._region_starts, start)
        hi = bisect_left(self._region_starts, start + BYTES_PER_LINE)
        if lo < hi:
            text = ", ".join(r.label or r.kind for r in self._regions[lo:hi])
            return text, _kind_class(self._regions[lo])
        for _, _, (_, _, region) in _overlaps(self._pieces, self._piece_starts, start, start + 1):
            return region.line_label(start), _kind_class(region)
        return "", None
