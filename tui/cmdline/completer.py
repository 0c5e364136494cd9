"""Command-line history and completion.

`History` and `complete` are pure Python; `CommandSuggester` adapts `complete` to Textual's
`Input(suggester=...)` (the only place in tui.cmdline that imports Textual).
"""
from __future__ import annotations

from textual.suggester import Suggester

from .parser import COMMANDS, canonical


class History:
    """A bounded list of submitted lines with shell-like up/down navigation.

    up(current) saves `current` as the draft when navigation starts and returns older
    entries; down(current) returns newer ones and finally the draft.  add() ignores blank
    lines and a repeat of the newest entry, and ends any navigation.
    """

    def __init__(self, maxlen: int = 500, entries: tuple | list = ()) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._items: list[str] = []
        self._pos: int | None = None      # index into _items while navigating
        self._draft = ""
        for e in entries:
            self.add(e)

    @property
    def entries(self) -> tuple[str, ...]:
        """Oldest first."""
        return tuple(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def navigating(self) -> bool:
        return self._pos is not None

    def add(self, line: str) -> None:
        """Remember a submitted line (not blank, not the same as the newest entry)."""
        self.reset()
        line = line.rstrip("\n")
        if not line.strip() or (self._items and self._items[-1] == line):
            return
        self._items.append(line)
        del self._items[:-self.maxlen]

    def reset(self) -> None:
        """Leave navigation (the draft is forgotten)."""
        self._pos = None
        self._draft = ""

    def up(self, current: str = "") -> str:
        """The previous (older) entry; stays at the oldest; `current` if there is none."""
        if not self._items:
            return current
        if self._pos is None:
            self._draft = current
            self._pos = len(self._items) - 1
        elif self._pos > 0:
            self._pos -= 1
        return self._items[self._pos]

    def down(self, current: str = "") -> str:
        """The next (newer) entry, then the draft; `current` when not navigating."""
        if self._pos is None:
            return current
        if self._pos < len(self._items) - 1:
            self._pos += 1
            return self._items[self._pos]
        draft = self._draft
        self.reset()
        return draft


def complete(prefix: str) -> list[str]:
    """Sorted whole-line completions of `prefix`: command names, then keywords (info topics,
    host/ram, help topics).  Every completion starts with `prefix`."""
    if not prefix.strip():
        return sorted(COMMANDS) if not prefix else []
    words = prefix.split()
    if len(words) == 1 and not prefix[-1].isspace():
        if "/" in prefix or prefix.startswith(" "):
            return []
        return sorted(n for n in COMMANDS if n.startswith(prefix))
    name = canonical(words[0].split("/", 1)[0])
    if name is None:
        return []
    args = words[1:]
    if args and args[0].startswith("/"):        # xp /16bx host ...
        args = args[1:]
    typing_word = not prefix[-1].isspace()
    done = args[:-1] if typing_word else args
    partial = args[-1] if typing_word and args else ""
    if done:                                     # only the first argument is a keyword
        return []
    choices = sorted(COMMANDS) if name == "help" else COMMANDS[name].words
    base = prefix[:len(prefix) - len(partial)]
    return sorted(base + w for w in choices if w.startswith(partial))


class CommandSuggester(Suggester):
    """Suggests the first completion of the command line (accepted with Right or End)."""

    def __init__(self, *, use_cache: bool = True) -> None:
        super().__init__(use_cache=use_cache, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        found = complete(value)
        return found[0] if found else None
