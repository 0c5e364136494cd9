"""fio's iolog versions 2 and 3 (`--write_iolog`; read back by read_iolog() in fio's iolog.c)."""
from __future__ import annotations

from typing import Iterator

from .importer import Reader, Rec, TraceImportError

V2 = "fio version 2 iolog"
V3 = "fio version 3 iolog"
IO_ACTIONS = ("wait", "read", "write", "sync", "datasync", "trim")
FILE_ACTIONS = ("add", "open", "close")


def _uint(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


class FioReader(Reader):
    """Lines `[TIMESTAMP] FILENAME ACTION [OFFSET LENGTH]` after the version line.

    v3 timestamps are microseconds since the job started (log_io_u() prints
    utime_since_now(&td->io_log_start_time)). A v2 `wait` carries in its OFFSET field a time
    in milliseconds since fio started (read_iolog_get() sleeps until mtime_since_genesis()
    reaches it; fio's HOWTO calls it microseconds relative to the previous wait, the code
    does not): it becomes an `at` with --timing honour. sync/datasync -> wait + flush
    (fsync semantics: earlier writes complete first); trim -> discard. fio appends to an
    existing log, so a version line may come again: a new run, whose clock continues from the
    last time of the one before.
    """
    name = "fio"
    label = "fio iolog"
    two_pass = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.version = None
        self.files: list[str] = []
        self.selected: str | None = None

    def _header(self, lineno: int, text: str) -> int:
        if text.startswith(V3):
            return 3
        if text.startswith(V2):
            return 2
        raise self.ctx.error(lineno, f"not a fio iolog: the first line must be {V2!r} or {V3!r} "
                             "(fio no longer reads version 1 logs)", text)

    def scan(self) -> None:
        seen = set()
        version = None
        for lineno, text in self.ctx.lines(scan=True):
            if version is None:
                if not text.strip():
                    continue
                version = self._header(lineno, text)
                continue
            toks = text.split()
            if version == 3 and not text.startswith("fio version "):
                toks = toks[1:]
            if len(toks) in (2, 4) and toks[0] not in seen and (
                    toks[1] in FILE_ACTIONS or toks[1] in IO_ACTIONS):
                seen.add(toks[0])
                self.files.append(toks[0])
        if version is None:
            raise TraceImportError(f"{self.ctx.path}: empty file (a fio iolog starts with {V3!r})")
        self.version = version
        self.label = f"fio iolog v{version}"
        self.time_origin = 0 if version == 2 else None

        def match(name: str, wanted: str) -> bool:
            if name == wanted:
                return True
            return (wanted.isascii() and wanted.isdigit() and int(wanted) < len(self.files)
                    and self.files[int(wanted)] == name and wanted not in self.files)
        self.selected = self.choose("file", "--file NAME|INDEX", self.files, self.ctx.options.file,
                                    match)

    def records(self) -> Iterator[Rec]:
        ctx = self.ctx
        v3 = self.version == 3
        selected = self.selected
        header = False
        base = last = 0                 # clock offset of this run, latest time seen
        for lineno, text in ctx.lines():
            if not header:
                if text.strip():
                    header = True
                continue
            if text.startswith("fio version "):
                if text.startswith(V3 if v3 else V2):
                    base = last         # another run appended to the log
                else:
                    ctx.bad(lineno, text, f"a different iolog version in a version "
                            f"{self.version} log")
                continue
            toks = text.split()
            if not toks:
                continue
            t_ns = None
            if v3:
                ts = _uint(toks[0])
                if ts is None:
                    ctx.bad(lineno, text, f"timestamp {toks[0]!r} is not a number of microseconds")
                    continue
                t_ns = base + ts * 1000
                last = max(last, t_ns)
                toks = toks[1:]
            if len(toks) < 2:
                ctx.bad(lineno, text, "expected " + ("TIMESTAMP " if v3 else "")
                        + "FILENAME ACTION [OFFSET LENGTH]")
                continue
            fname, action = toks[0], toks[1]
            args = toks[2:]
            if action in FILE_ACTIONS:
                if args:
                    ctx.bad(lineno, text, f"file action {action!r} takes no OFFSET/LENGTH")
                continue
            if action not in IO_ACTIONS:
                ctx.bad(lineno, text, f"unknown action {action!r} (expected one of: "
                        f"{', '.join(FILE_ACTIONS + IO_ACTIONS)})")
                continue
            if len(args) != 2:
                ctx.bad(lineno, text, f"{action} needs OFFSET and LENGTH")
                continue
            off, length = _uint(args[0]), _uint(args[1])
            if off is None or length is None:
                bad = args[0] if off is None else args[1]
                ctx.bad(lineno, text, f"{bad!r} is not a number of bytes")
                continue
            if action == "wait":
                if v3:
                    ctx.bad(lineno, text, "wait is not allowed in a version 3 iolog "
                            "(fio ignores it: v3 lines carry timestamps)")
                    continue
                t_wait = base + off * 1_000_000
                last = max(last, t_wait)
                if fname == selected:
                    yield Rec("time", time_ns=t_wait, lineno=lineno, raw=text)
                continue
            if fname != selected:
                continue
            if action in ("sync", "datasync"):
                # fio logs the previous I/O's offset and a length of 0: not data
                yield Rec("wait", time_ns=t_ns, lineno=lineno, raw=text)
                yield Rec("flush", lineno=lineno, raw=text)
                continue
            if length == 0:
                ctx.bad(lineno, text, f"{action} of 0 bytes")
                continue
            op = {"read": "read", "write": "write", "trim": "discard"}[action]
            yield Rec(op, off, length, t_ns, lineno, text)
