"""A bounded, append-only log drawn with the Line API: appending a line repaints the log only,
never the screen layout (RichLog re-lays out the whole screen on every write)."""
from __future__ import annotations

from collections import deque

from rich.segment import Segment
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget


class StepLog(ScrollView, can_focus=True):
    """Lines of rich Text; keeps the newest `max_lines`; follows the tail unless scrolled up."""


    def __init__(self, max_lines: int = 1000, **kw) -> None:
        super().__init__(**kw)
        self.max_lines = max_lines
        self.lines: deque = deque(maxlen=max_lines)
        self._strips: dict = {}
        self._first = 0          # absolute number of lines[0], so the strip cache survives trimming
        self._widest = 0

    @property
    def plain_lines(self) -> list:
        return [t.plain for t in self.lines]

    def clear(self) -> None:
        self.lines.clear()
        self._strips.clear()
        self._first = 0
        self._widest = 0
        self._resize()

    def write_lines(self, texts) -> None:
        """Append Text lines (a batch repaints once)."""
        follow = self.scroll_y >= self.max_scroll_y
        for t in texts:
            if len(self.lines) == self.max_lines:
                self._strips.pop(self._first, None)
                self._first += 1
            self.lines.append(t)
            self._widest = max(self._widest, t.cell_len)
        self._resize()
        if follow:
            self.scroll_to(y=self.max_scroll_y, animate=False)
        self.refresh()

    def write(self, text: Text) -> None:
        self.write_lines([text])

    def _resize(self) -> None:
        vs = Size(max(self._widest, 1), len(self.lines))
        if vs != self.virtual_size:
            # what Textual's own _size_updated does when no layout is needed
            self.set_reactive(Widget.virtual_size, vs)
            self._scroll_update(vs)

    def on_resize(self) -> None:
        self._resize()

    def render_line(self, y: int) -> Strip:
        n = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if n >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        key = self._first + n
        strip = self._strips.get(key)
        if strip is None:
            segs = [s for s in self.lines[n].render(self.app.console) if s.text != "\n"]
            strip = Strip(segs).simplify()
            if len(self._strips) > 4 * max(self.size.height, 1):
                self._strips.clear()
            self._strips[key] = strip
        x = self.scroll_offset.x
        return strip.crop_extend(x, x + width, self.rich_style)
