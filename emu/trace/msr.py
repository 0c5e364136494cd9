"""The MSR Cambridge block traces (SNIA IOTTA): CSV Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime."""
from __future__ import annotations

from typing import Iterator

from .importer import Reader, Rec

FIELDS = ("Timestamp", "Hostname", "DiskNumber", "Type", "Offset", "Size", "ResponseTime")


class MsrReader(Reader):
    """Timestamp (and ResponseTime) in Windows FILETIME units (100 ns); Type Read or Write;
    Offset and Size in bytes. An optional header line naming the fields is allowed. A file
    holding several (Hostname, DiskNumber) volumes needs --disk N (or HOST:N).
    """
    name = "msr"
    label = "MSR Cambridge trace"
    two_pass = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.volume: tuple[str, int] | None = None

    @staticmethod
    def _is_header(text: str) -> bool:
        return [f.strip().lower() for f in text.split(",")] == [f.lower() for f in FIELDS]

    def scan(self) -> None:
        volumes: list[str] = []
        seen: set = set()
        for _lineno, text in self.ctx.lines(scan=True):
            f = text.split(",")
            if len(f) != 7 or not (f[2].strip().isascii() and f[2].strip().isdigit()):
                continue
            vol = f"{f[1].strip()}:{int(f[2])}"
            if vol not in seen:
                seen.add(vol)
                volumes.append(vol)

        def match(vol: str, wanted: str) -> bool:
            if ":" in wanted:
                host, _, n = wanted.rpartition(":")
                return n.isascii() and n.isdigit() and vol == f"{host}:{int(n)}"
            return (wanted.isascii() and wanted.isdigit()
                    and vol.rpartition(":")[2] == str(int(wanted)))
        want = self.ctx.options.disk
        if want is not None and ":" not in want:
            hits = [v for v in volumes if match(v, want)]
            if len(hits) > 1:
                self.choose("volume", "--disk HOST:N", hits, None)
        host, _, n = self.choose("volume", "--disk N (or HOST:N)", volumes, want, match).rpartition(":")
        self.volume = (host, int(n))

    def records(self) -> Iterator[Rec]:
        ctx = self.ctx
        host, disk = self.volume
        for lineno, text in ctx.lines():
            if not text.strip():
                continue
            f = [x.strip() for x in text.split(",")]
            if len(f) != 7:
                if lineno == 1 and self._is_header(text):
                    continue
                ctx.bad(lineno, text, f"expected 7 comma-separated fields ({','.join(FIELDS)}), "
                        f"found {len(f)}")
                continue
            if lineno == 1 and self._is_header(text):
                continue
            ts, hostname, dnum, kind, off, size, resp = f
            bad = next((name for name, val in (("Timestamp", ts), ("DiskNumber", dnum),
                                                ("Offset", off), ("Size", size),
                                                ("ResponseTime", resp))
                        if not (val.isascii() and val.isdigit())), None)
            if bad is not None:
                val = f[FIELDS.index(bad)]
                ctx.bad(lineno, text, f"{bad} {val!r} is not a non-negative integer")
                continue
            k = kind.lower()
            if k not in ("read", "write"):
                ctx.bad(lineno, text, f"Type {kind!r} is neither Read nor Write")
                continue
            if not hostname:
                ctx.bad(lineno, text, "empty Hostname")
                continue
            if hostname != host or int(dnum) != disk:
                continue
            if int(size) == 0:
                ctx.bad(lineno, text, "Size 0")
                continue
            yield Rec(k, int(off), int(size), int(ts) * 100, lineno, text)
