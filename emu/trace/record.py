"""vblkdbg's own trace: a run's inputs and state digests along it (README, "Trace format").

A trace is JSON Lines.  Line 1 is the header (format version, configuration, identity of
the starting image, the workload's text); then, in step order, the inputs applied between
steps (pokes) and state digests; the last line is the end record.  Re-executing the
header's inputs must reproduce every digest: the machine is deterministic.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError, EmuError

MAGIC = "vblkdbg-trace"
VERSION = 1
DIGEST_INTERVAL = 1000


class TraceError(EmuError):
    """A trace that cannot be read: not a trace, corrupted, truncated, from a newer vblkdbg."""


@dataclass
class Trace:
    """What a trace file holds (records: ("input", dict) and ("digest", dict) in step order)."""
    config: Config
    image: dict                       # path (as recorded), format, size, sha256
    workload: dict                    # name, text
    digest_interval: int
    tool: str = ""
    inputs: list = field(default_factory=list)
    digests: list = field(default_factory=list)     # {"step", "digest", "parts"}
    end: dict = field(default_factory=dict)         # {"step", "digest", "parts"}
    path: str = ""


# -- identities and digests ------------------------------------------------------------------

def file_identity(path: str) -> dict:
    """Size and sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def state_parts(m, state: dict | None = None) -> dict:
    """Short digests of guest RAM, the image content and each component's state: a
    divergence names the parts that differ."""
    from ..machine import _jsonable
    parts = {"ram": m.mem.digest().hex()[:16], "image": m.hostfile.digest().hex()[:16]}
    for k, v in (m.state() if state is None else state).items():
        text = json.dumps(v, sort_keys=True, separators=(",", ":"), default=_jsonable)
        parts[k] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return parts


def _point(m) -> dict:
    st = m.state()
    return {"step": m.steps, "digest": m.digest(st), "parts": state_parts(m, st)}


# -- writing -------------------------------------------------------------------------------

def _tool() -> str:
    try:
        from importlib.metadata import version
        return "vblkdbg " + version("vblkdbg")
    except Exception:       # noqa: BLE001 - running from a source tree
        return "vblkdbg (source tree)"


def record(origin: dict, inputs: list[dict], until: int, out: str,
           interval: int = DIGEST_INTERVAL, expect_digest: str | None = None,
           progress=None, engine: str = "auto") -> Trace:
    """Re-run the origin's machine from the start with these inputs up to step `until`,
    taking digests every `interval` steps and at every input, and write the trace to `out`
    (a temporary file renamed into place: nothing partial is left behind).

    expect_digest: the state the recorded session has at `until`; a re-run that does not
    reach it is a determinism bug, reported rather than written."""
    if interval < 1:
        raise ValueError("the digest interval must be at least 1 step")
    session = open_origin(origin)
    try:
        session.set_engine(engine)
        session._use(bulk=True)
        session.schedule(inputs)
        at_input = sorted({i["step"] for i in inputs})
        points = [_point(session.m)]
        n = session.m.steps
        while n < until:
            # run (on the session's engine) to the next digest point: a multiple of the
            # interval, an input's step, or the end
            nxt = min((n // interval + 1) * interval, until)
            j = bisect.bisect_right(at_input, n)
            if j < len(at_input):
                nxt = min(nxt, at_input[j])
            if session._run(nxt, check=False) is not None:
                break                               # the run ended before `until`
            before, n = n, session.m.steps
            if n % interval == 0 or n in at_input:
                points.append(_point(session.m))
            if progress is not None and n // 1000 != before // 1000:
                progress(n, until)
        end = _point(session.m)
        if expect_digest is not None and end["digest"] != expect_digest:
            raise EmuError(f"recording: re-running the session's inputs reached a different "
                           f"state at step {end['step']} (a determinism bug: please report it)")
    finally:
        close_session(session)
    if points and points[-1]["step"] == end["step"]:
        points.pop()
    ident = origin.get("identity") or file_identity(origin["image"])
    try:
        rel = os.path.relpath(os.path.abspath(origin["image"]), os.path.dirname(os.path.abspath(out)))
    except ValueError:                              # another drive: keep it as it is
        rel = origin["image"]
    header = {MAGIC: VERSION, "tool": _tool(), "config": origin["config"].to_json(),
              "image": {"path": rel, "format": origin["format"], "size": ident["size"],
                        "sha256": ident["sha256"]},
              "workload": {"name": origin["workload_name"], "text": origin["workload_text"]},
              "digest_interval": interval}
    recs: list[tuple] = [(i["step"], 0, {"step": i["step"], "input": i["input"],
                                         "space": i["space"], "addr": hex(i["addr"]),
                                         "bytes": i["bytes"]}) for i in inputs]
    recs += [(p["step"], 1, p) for p in points]
    recs.sort(key=lambda r: (r[0], r[1]))
    lines = [json.dumps(header, separators=(", ", ": "))]
    lines += [json.dumps(r[2], separators=(", ", ": ")) for r in recs]
    lines.append(json.dumps({"end": end["step"], "digest": end["digest"], "parts": end["parts"],
                             "records": len(recs)}, separators=(", ", ": ")))
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".vblkdbg-trace-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return load(out)


# -- reading -------------------------------------------------------------------------------

def is_trace(path: str) -> bool:
    """Does the file start like a vblkdbg trace?"""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip().startswith(b'{"' + MAGIC.encode() + b'"')


def _hexstr(v, n: int | None = None) -> bool:
    if not isinstance(v, str) or (n is not None and len(v) != n):
        return False
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True


def load(path: str) -> Trace:
    """Parse and validate a trace; TraceError('PATH:LINE: what') for anything wrong."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        raw_lines = f.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    if not raw_lines:
        raise TraceError(f"{path}: empty file: not a vblkdbg trace")

    def bad(lineno: int, what: str) -> TraceError:
        text = raw_lines[lineno - 1][:80].decode("utf-8", "replace")
        return TraceError(f"{path}:{lineno}: {what} (line: {text!r})")

    def obj(lineno: int) -> dict:
        try:
            d = json.loads(raw_lines[lineno - 1].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise bad(lineno, f"byte {e.start} is not UTF-8") from None
        except json.JSONDecodeError as e:
            raise bad(lineno, f"not JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(d, dict):
            raise bad(lineno, "expected a JSON object")
        return d

    try:
        h = obj(1)
    except TraceError:
        raise TraceError(f"{path}: not a vblkdbg trace (the first line is not its JSON "
                         "header)") from None
    if MAGIC not in h:
        raise TraceError(f"{path}: not a vblkdbg trace (no {MAGIC!r} key in the header)")
    ver = h[MAGIC]
    if type(ver) is not int or ver < 1:
        raise bad(1, f"bad format version {ver!r}")
    if ver > VERSION:
        raise TraceError(f"{path}: trace format version {ver} is newer than this vblkdbg reads "
                         f"(version {VERSION}); it was written by {h.get('tool', 'a newer vblkdbg')}")
    for key, typ in (("config", dict), ("image", dict), ("workload", dict),
                     ("digest_interval", int)):
        if not isinstance(h.get(key), typ):
            raise bad(1, f"header: missing or malformed {key!r}")
    try:
        cfg = Config.from_json(h["config"], "config")
    except ConfigError as e:
        raise bad(1, f"header: {e}") from None
    img = h["image"]
    if not (isinstance(img.get("path"), str) and type(img.get("size")) is int
            and _hexstr(img.get("sha256"), 64) and img.get("format") in ("auto", "raw", "qcow2")):
        raise bad(1, "header: image needs path, format (auto/raw/qcow2), size and sha256")
    wl = h["workload"]
    if not (isinstance(wl.get("name"), str) and isinstance(wl.get("text"), str)):
        raise bad(1, "header: workload needs name and text")
    t = Trace(cfg, img, wl, h["digest_interval"], str(h.get("tool", "")), path=path)
    last = 0
    for lineno in range(2, len(raw_lines) + 1):
        d = obj(lineno)
        if "end" in d:
            if lineno != len(raw_lines):
                raise bad(lineno, f"the end record is followed by {len(raw_lines) - lineno} "
                          "more line(s)")
            if type(d["end"]) is not int or d["end"] < last or not _hexstr(d.get("digest"), 64):
                raise bad(lineno, "end record needs a step (not before the last record) and a digest")
            if d.get("records") != len(t.inputs) + len(t.digests):
                raise bad(lineno, f"the end record counts {d.get('records')} record(s), the "
                          f"file has {len(t.inputs) + len(t.digests)}: lines are missing or extra")
            t.end = {"step": d["end"], "digest": d["digest"], "parts": d.get("parts") or {}}
            return t
        step = d.get("step")
        if type(step) is not int or step < 0:
            raise bad(lineno, "a record needs a step number (an integer >= 0)")
        if step < last:
            raise bad(lineno, f"step {step} comes after step {last}: records are in step order")
        last = step
        if "digest" in d:
            if not _hexstr(d["digest"], 64):
                raise bad(lineno, "digest must be 64 hex digits")
            t.digests.append({"step": step, "digest": d["digest"], "parts": d.get("parts") or {}})
        elif "input" in d:
            if d["input"] != "poke" or d.get("space") != "ram":
                raise bad(lineno, f"unknown input {d.get('input')!r} {d.get('space')!r} "
                          "(this version knows 'poke' 'ram')")
            try:
                addr = int(d.get("addr"), 16)
            except (TypeError, ValueError):
                raise bad(lineno, "poke needs a hex addr such as \"0x10008\"") from None
            if not _hexstr(d.get("bytes")) or not d["bytes"]:
                raise bad(lineno, "poke needs bytes as hex digits")
            t.inputs.append({"step": step, "input": "poke", "space": "ram", "addr": addr,
                             "bytes": d["bytes"].lower()})
        else:
            raise bad(lineno, "a record is an input, a digest or the end")
    last_line = len(raw_lines)
    raise TraceError(f"{path}: truncated: no end record after line {last_line} (the last "
                     f"record is at step {last})")


# -- the machine a trace (or a session) starts from ---------------------------------------------

def resolve_image(t: Trace, override: str | None = None) -> str:
    """Where the recorded image is now: --image, else its path relative to the trace."""
    if override:
        return override
    p = t.image["path"]
    if not os.path.isabs(p):
        p = os.path.join(os.path.dirname(os.path.abspath(t.path)), p)
    return p


def origin_of_trace(t: Trace, image_override: str | None = None, verify: bool = True) -> dict:
    """The origin (see open_origin) a trace describes, after checking the image is the one
    it was recorded on."""
    path = resolve_image(t, image_override)
    if not os.path.exists(path):
        raise TraceError(f"{t.path}: the recorded image {t.image['path']!r} is not at {path} "
                         "(give --image PATH)")
    ident = {"size": t.image["size"], "sha256": t.image["sha256"]}
    if verify:
        now = file_identity(path)
        if now != ident:
            raise TraceError(
                f"{t.path}: {path} is not the image the trace was recorded on (recorded: "
                f"{ident['size']} bytes, sha256 {ident['sha256'][:16]}…; found: {now['size']} "
                f"bytes, sha256 {now['sha256'][:16]}…)")
    return {"image": os.path.abspath(path), "format": t.image["format"],
            "identity": ident, "config": t.config, "workload_name": t.workload["name"],
            "workload_text": t.workload["text"], "write": False,
            "allow_backing_outside": False}


def open_origin(origin: dict, **session_kw):
    """A fresh Session on the origin's image (behind an overlay), config and workload."""
    from ..block.image import open_image
    from ..machine import Machine
    from ..session import Session
    from ..workload import check_bounds, parse_workload
    cfg = origin["config"]
    ops = parse_workload(origin["workload_text"], origin["workload_name"])
    hf, fmt = open_image(origin["image"], "overlay", discard_unmap=cfg.discard == "unmap",
                         allow_backing_outside=origin.get("allow_backing_outside", False),
                         fmt=origin["format"])
    try:
        check_bounds(ops, fmt.virtual_size(), origin["workload_name"])
        m = Machine(hf, fmt, cfg, ops)
    except BaseException:
        fmt.close()
        hf.close()
        raise
    session_kw.setdefault("catch_errors", False)
    s = Session(m, os.path.basename(origin["image"]), origin["workload_name"], **session_kw)
    s.origin = origin
    return s


def close_session(s) -> None:
    s.timeline.close()
    s.m.fmt.close()
    s.m.hostfile.close()
