"""Breakpoints, watchpoints and catchpoints: specs, parsing, validation, matching, the table.

Headless: no UI and no command line here.  The Session owns one BreakpointTable and calls
table.check(machine, step) after every executed step; a Hit means "stop here".

Parsing (text is everything after the command word; the leading word picks the kind)
    parse_breakpoint(text, *, machine, temporary=False)   `break` / `tbreak`:  desc req step ring
    parse_watch(text, *, machine, temporary=False)        `watch`:             ram host reg
    parse_catch(text, *, machine, temporary=False)        `catch`:             error
    parse_command(verb, text, *, machine)                 verb: break tbreak watch twatch catch tcatch
All return a Breakpoint (not yet in a table) or raise BreakpointError(message, position); the
message names the bad token and its 1-based column in `text`.  Any spec may end with
`if EXPR` (emu.debug.expr) over the fields of its kind, checked against that field set.

Kinds and their specs (ranges A..B include both ends; numbers: 123, 0x7b, 4k, 1M, 2G)
    desc [q=Q] [idx=N] [head=N] [addr=A[..B]] [len=N|A..B] [flags=NEXT|WRITE|INDIRECT]
         [on=add|pop|used] [indirect=yes|no]
        add:  the driver writes a descriptor (virtqueue_add_split: a ring slot, an indirect
              table entry, or the ring descriptor that points at an indirect table)
        pop:  the device reads it in virtqueue_pop: every descriptor of the chain, ring and
              indirect entries.  A descriptor counts as popped as soon as QEMU has read it,
              even when its validation then fails (a poked len=0 head stops `on=pop`, then
              virtio_error follows in the same step)
        used: virtqueue_fill returns the chain through the used ring: every descriptor the
              device popped for it (as it read them; the device does not re-read RAM)
        on= takes one or several (on=pop|used); default: all three.  idx= is the
        descriptor's own slot of the ring's table, head= the chain's head slot; indirect
        table entries have no idx (idx=None) and match on the other options; indirect=yes
        selects only table entries, indirect=no only ring descriptors (default both).
        flags=: a descriptor matches when it has all the named flags (names or a number
        taken as a bit mask).
        Fields: q idx head addr len flags next on indirect table entry req step,
                constants NEXT WRITE INDIRECT.  (indirect: 1 for a table entry; table,
                entry: the table's address and the entry's index, None on ring
                descriptors; req: the guest request id owning the chain, None if unknown)
    req [type=IN|OUT|FLUSH|GET_ID|DISCARD|WRITE_ZEROES (| for any of)] [sector=N|A..B]
        [len=N|A..B] [stage=NAME]
        With stage=: a guest request enters that stage (as emu.views.requests() shows it:
        STAGES below, plus "done").  Without: a guest request is created (appears).
        sector= matches requests whose sectors [sector, sector + len/512) overlap the range
        (a request without sectors, e.g. FLUSH, never matches sector=).  type/sector/len
        are the request's values at that moment.  Stage names may be quoted
        (stage="device: popped"), written without blanks (device:popped), or shortened to
        an unambiguous last word (popped).
        Fields: id type sector len stage status head tag event step  (event: "created" or
                "stage"; type/stage/status are strings)
    step FUNCTION
        any step modelling that real function (Step.function); * and ? globs allowed; the
        name (or glob) must match one of known_functions() (the step registry, the functions
        handlers name with set_function, the call-chain table).
        Fields: function kind layer side ctx step
    ring [q=Q] avail_idx=N | used_idx=N | inuse>=K | wrap[=avail|used]
        avail_idx=N: avail.idx in guest RAM (at the driver's ring) changes to N;
        used_idx=N:  used.idx in guest RAM (at the device's ring) changes to N;
        inuse>=K:    the device's vq.inuse goes from below K to K or more;
        wrap:        avail.idx or used.idx moves forward across a multiple of the queue size,
                     i.e. the next ring slot to fill goes back to slot 0: with old -> new and
                     d = (new - old) mod 2^16 in 1..0x7fff, it wraps when
                     old % size + d >= size (16-bit overflow 0xffff -> 0 is such a crossing).
        Old values come from the step's own RAM writes (a step that writes the same value
        does not change it and does not stop).
        Fields: q which old new size step  (which: "avail" | "used" | "inuse")
    ram ADDR[+LEN]  |  ram A..B           (watch)  a guest RAM write overlapping the range
    host OFFSET[+LEN]  |  host A..B       (watch)  an image file write overlapping the range
        LEN defaults to 1.  Match: {"space", "addr", "len", "old", "new"}: the part of the
        range the step wrote (from its first to its last written byte), with the bytes
        before and after the step as hex.  Any overlapping write stops, changed or not
        (add `if old != new` for value changes).
        Fields: addr len old new step  (old/new: the bytes as little-endian integers;
                host also has `offset`, = addr)
    reg NAME                              (watch)  a register/state change effect
        NAME is one of reg_names(machine) (device_status, isr, vq0.inuse, ...; `status`
        means device_status) or a glob over them (vq0.*, msix.*).  Match: {"space": "reg",
        "name", "old", "new"} (integers as hex strings).
        Fields: name old new step
    error [virtio] [qcow2] [guest] [ioerr]  (catch; default all four)
        virtio: virtio_error (the device needs a reset); qcow2: image corruption or a
        metadata I/O error (the node stops); guest: a guest-error (BAD_RING in the driver,
        LOG_GUEST_ERROR in QEMU); ioerr: the device completes a request with status IOERR.
        A guest request that fails only in the guest (-EIO on a broken queue) is preceded
        by the BAD_RING/virtio_error that broke the queue.  Hit.message is the diagnostic.
        Fields: kind message spec req step  (kind: "virtio" | "qcow2" | "guest" | "ioerr")

The table (gdb semantics)
    BreakpointTable()
        add(bp, machine=None) -> id         ids 1, 2, ... never reused.  Pass the machine so
                                            `req` breakpoints see transitions from now on.
        delete(id=None) -> [ids]            None: all
        enable(id=None) / disable(id=None)  None: all
        ignore(id, n)                       skip the next n hits
        condition(id, text | None)          set or clear (`condition N` / `condition N EXPR`)
        get(id) -> Breakpoint;  len(table);  iter(table) in id order
        list() -> [{"id", "type", "kind", "enabled", "spec", "hits", "condition", "ignore",
                    "temporary"}]           rows for `info breakpoints` (type: breakpoint |
                                            watchpoint | catchpoint; spec without `if`)
        check(machine, step, dry=False) -> Hit | None
                                            after every step, before anything else changes
                                            the machine.  Every enabled breakpoint whose spec
                                            and condition match counts a hit (at most one per
                                            step, its first matching item); a hit with
                                            ignore > 0 only decrements ignore; the lowest id
                                            that stops is reported, the others are in
                                            Hit.also; temporary ones among all that stopped
                                            are deleted (Hit.deleted).  A condition that fails
                                            to evaluate (1/0) stops, saying so in the message.
                                            dry=True (scans for reverse-continue): the same
                                            matching and request tracking, but no hit counted,
                                            no ignore count applied or used up, nothing
                                            deleted.
        state() / load_state(obj)           the cross-step tracking (request stages) as plain
                                            data: deep-copy it into checkpoints, load it when
                                            restoring one.  Hit and ignore counts are not part
                                            of it (gdb does not rewind them either).
        sync(machine)                       re-take that tracking from the machine as it is
                                            (after a poke, or a restore without a state).
    Hit(id, kind, reason, match, message, step, hits, also, deleted); .to_json()
        reason: "breakpoint" | "watchpoint" | "error" (catch error)
        message: "Breakpoint 2 (desc on=pop), step 40: device popped desc[0] ..." (likewise
        "Watchpoint N", "Temporary breakpoint N"); for a catchpoint it is the diagnostic
        itself ("Invalid size for indirect buffer table"; the spec section is match["spec"])

Matching reads only: the Step's facts and effects and the machine's state (guest RAM, the
image through pread, decoded request stages); it never writes the machine.  With no
enabled breakpoint check() returns at once; request stages are decoded only while a `req`
breakpoint exists, and then only after steps that changed what they derive from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial

from ..sim.steps import REGISTRY, Step
from ..spec import blk as B
from . import expr as X

__all__ = ["Breakpoint", "BreakpointError", "BreakpointTable", "Hit", "FIELDS", "STAGES",
           "REQ_TYPES", "known_functions", "reg_names", "parse_breakpoint", "parse_watch",
           "parse_catch", "parse_command"]

NEXT, WRITE, INDIRECT = 1, 2, 4
FLAG_NAMES = {"NEXT": NEXT, "WRITE": WRITE, "INDIRECT": INDIRECT}
DESC_ON = ("add", "pop", "used")
# The steps whose records some breakpoints look at.  The compiled engine's session loop lets
# its bulk core run every other step unrecorded while only such breakpoints (and catchpoints)
# are enabled, stopping before these (emu_fast._core _Prefilter.core_stops); the property
# tests in tests/emu_fast/test_prefilter.py check that no other step the core runs makes
# what they match.
# ("desc", on, ...) facts: virtqueue_add_split's descriptor and head steps (guest/vring.py),
# virtqueue_split_pop's step (vblk.pop -> virtio.virtqueue_pop) and virtqueue_fill's (vq.fill)
DESC_STEPS = {"add": ("vring.add_desc", "vring.add_head"), "pop": ("vblk.pop",),
              "used": ("vq.fill",)}
# ("file", ...) effects (watch host): file-posix's and qcow2's thread-pool workers
HOST_WRITE_STEPS = ("file.aio_worker", "qcow2.worker")
# ring breakpoints: avail.idx written (virtqueue_add_split's publication, vring.add_publish),
# used.idx written (virtqueue_flush, vq.flush), the vqN.inuse register (pop and flush)
RING_STEPS = {"avail": ("vring.add_publish",), "used": ("vq.flush",),
              "inuse": ("vblk.pop", "vq.flush")}
# ("reg", ...) effects (watch reg): the device's pop (last_avail_idx, inuse), flush (used_idx,
# inuse), notify (signalled_used) and interrupt (isr) steps, and request handling's virtio_error
# path (inuse); the transport's registers change in the probe's steps, which the core never runs
REG_STEPS = ("vblk.pop", "vq.flush", "vq.notify", "vq.irq", "vblk.handle_request")
# ("ram", ...) effects (watch ram): the guest process's copies into its pages and GET_ID's
# header (blk-mq's submit_bio), the driver's descriptors, avail ring, flags and used event
# (add, enable_cb, disable_cb, get_buf), the request header, the device's avail event and
# used flags (handle_vq, pop, pass_end), GET_ID's reply and the status byte (handle_request,
# req_complete), the used ring (fill, flush), and the host reads into guest RAM
RAM_STEPS = ("app.op", "blkmq.submit_bio", "vring.add_desc", "vring.add_head", "vring.add_avail",
             "vring.add_publish", "vring.enable_cb", "vring.disable_cb", "vring.get_buf",
             "vblkd.setup_cmd", "vblk.handle_vq", "vblk.pop", "vblk.handle_request",
             "vblk.pass_end", "vblk.req_complete", "vq.fill", "vq.flush", "file.aio_worker",
             "qcow2.io", "qcow2.worker")
# step breakpoints: the steps whose handler names another function than the one its kind is
# registered with (Machine.set_function: the operation's, the qcow2 plan item's); every other
# step's record names its kind's function (emu.sim.steps.REGISTRY)
FUNCTION_STEPS = ("app.op", "blk.co_entry", "bdrv.co_entry", "bdrv.co_done", "raw.co_entry",
                  "file.co_entry", "file.aio_worker", "file.co_resume", "qcow2.co_entry",
                  "qcow2.compute", "qcow2.io", "qcow2.io_done", "qcow2.worker")
REQ_TYPES = ("IN", "OUT", "FLUSH", "GET_ID", "DISCARD", "WRITE_ZEROES")
# emu.views.requests() stages (views._live_stage), plus "done"
STAGES = ("plugged", "queued", "requeued", "driver: adding", "avail: not popped",
          "device: popped", "device: merging", "host: block I/O", "host: flush",
          "device: completing", "used: awaiting irq", "guest: completing", "done")
ERROR_KINDS = ("virtio", "qcow2", "guest", "ioerr")

BREAK_KINDS = ("desc", "req", "step", "ring")
WATCH_KINDS = ("ram", "host", "reg")
CATCH_KINDS = ("error",)
TYPE_OF = {**{k: "breakpoint" for k in BREAK_KINDS}, **{k: "watchpoint" for k in WATCH_KINDS},
           "error": "catchpoint"}

FIELDS: dict[str, tuple] = {
    "desc": ("q", "idx", "head", "addr", "len", "flags", "next", "on", "indirect", "table",
             "entry", "req", "step"),
    "req": ("id", "type", "sector", "len", "stage", "status", "head", "tag", "event", "step"),
    "step": ("function", "kind", "layer", "side", "ctx", "step"),
    "ring": ("q", "which", "old", "new", "size", "step"),
    "ram": ("addr", "len", "old", "new", "step"),
    "host": ("addr", "offset", "len", "old", "new", "step"),
    "reg": ("name", "old", "new", "step"),
    "error": ("kind", "message", "spec", "req", "step"),
}
CONSTANTS: dict[str, dict] = {"desc": dict(FLAG_NAMES)}

_STATIC_REGS = ("device_status", "broken", "isr", "config_generation", "queue_select",
                "device_feature_select", "driver_feature_select", "config_msix_vector",
                "write_cache", "msix.enable")
_QUEUE_REGS = ("num", "vector", "desc", "avail", "used", "enabled", "last_avail_idx", "inuse",
               "used_idx", "signalled_used", "queue_desc_lo", "queue_desc_hi",
               "queue_driver_lo", "queue_driver_hi", "queue_device_lo", "queue_device_hi")
_REG_ALIASES = {"status": "device_status"}


class BreakpointError(ValueError):
    """A malformed or impossible breakpoint; position: 1-based column in the spec text (0: none)."""

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass
class Breakpoint:
    """One breakpoint, watchpoint or catchpoint.  params is plain data (the parsed options)."""
    kind: str
    spec: str
    params: dict
    temporary: bool = False
    enabled: bool = True
    condition: str | None = None
    ignore: int = 0
    hits: int = 0
    id: int = 0
    cond: X.Expr | None = field(default=None, repr=False, compare=False)
    pattern: object = field(default=None, repr=False, compare=False)   # step/reg name matcher

    @property
    def type(self) -> str:
        return TYPE_OF[self.kind]

    @property
    def text(self) -> str:
        return self.spec + (f" if {self.condition}" if self.condition else "")

    def row(self) -> dict:
        return {"id": self.id, "type": self.type, "kind": self.kind, "enabled": self.enabled,
                "spec": self.spec, "hits": self.hits, "condition": self.condition,
                "ignore": self.ignore, "temporary": self.temporary}


@dataclass
class Hit:
    """Why check() says stop: the lowest-numbered breakpoint that stopped at this step."""
    id: int
    kind: str
    reason: str          # "breakpoint" | "watchpoint" | "error"
    match: dict          # JSON-able description of what matched
    message: str
    step: int
    hits: int            # the breakpoint's hit count, this hit included
    also: tuple = ()     # other breakpoints that stopped at the same step
    deleted: tuple = ()  # temporary breakpoints deleted by this stop

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "reason": self.reason, "match": self.match,
                "message": self.message, "step": self.step, "hits": self.hits,
                "also": list(self.also), "deleted": list(self.deleted)}


# -- what exists in this machine -----------------------------------------------------------

def known_functions() -> frozenset:
    """Every real function a step can be named after: the step registry, the functions
    handlers name with set_function (their tables), and the call-chain table."""
    from .. import callchain
    names = {info.function for _fn, info in REGISTRY.values()}
    names.update(callchain._CALLERS)
    from ..block import backend, file_posix, raw
    from ..block.qcow2 import driver as qdriver
    from ..guest import process
    for mod in (raw, backend, file_posix, qdriver, process):
        for attr, val in vars(mod).items():
            if attr.endswith("FN") and isinstance(val, dict):
                for v in val.values():
                    names.add(v[0] if isinstance(v, tuple) else v)
    return frozenset(n for n in names if n)


def reg_names(machine) -> tuple:
    """The register/state names ("reg", name, old, new) effects use in this machine."""
    out = list(_STATIC_REGS)
    for q in range(len(machine.vdev.vqs)):
        out += [f"vq{q}.{r}" for r in _QUEUE_REGS]
    nvec = getattr(machine.transport.proxy, "nvectors", 0)
    for i in range(nvec):
        out += [f"msix.table[{i}]", f"msix.pba[{i}]"]
    return tuple(out)


def _glob(pattern: str):
    """A matcher for * and ? globs (every other character literal, brackets too)."""
    if "*" not in pattern and "?" not in pattern:
        return lambda name: name == pattern
    rx = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                            for c in pattern) + r"\Z")
    return lambda name: rx.match(name) is not None


def _queue_size(machine, q: int) -> int:
    vq = machine.vdev.vqs[q]
    return vq.num or vq.num_default


# -- spec text -------------------------------------------------------------------------------

def _split(text: str) -> tuple[list, tuple | None]:
    """Words with their 1-based columns, and the condition (text, column) after `if`."""
    words: list = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        quote = ""
        while i < n and (quote or not text[i].isspace()):
            c = text[i]
            if quote:
                if c == "\\" and i + 1 < n:
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            i += 1
        if quote:
            raise BreakpointError(f"unterminated string in {text[start:]!r} at column {start + 1}",
                                  start + 1)
        word = text[start:i]
        if word == "if":
            rest = text[i:]
            stripped = rest.lstrip()
            col = i + (len(rest) - len(stripped)) + 1
            if not stripped.strip():
                raise BreakpointError(f"'if' needs a condition at column {start + 1}", start + 1)
            return words, (stripped.rstrip(), col)
        words.append((word, start + 1))
    return words, None


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    return v


def _err(msg: str, col: int) -> BreakpointError:
    return BreakpointError(f"{msg} at column {col}", col)


def _num(v: str, col: int, what: str) -> int:
    try:
        return X.parse_int(v)
    except ValueError:
        raise _err(f"bad number {v!r} for {what}", col) from None


def _range(v: str, col: int, what: str) -> list:
    """'N' -> [N, N]; 'A..B' -> [A, B] (both included)."""
    if ".." in v:
        a, b = v.split("..", 1)
        lo, hi = _num(a, col, what), _num(b, col + len(a) + 2, what)
        if lo > hi:
            raise _err(f"empty range {v!r} for {what} ({lo} > {hi})", col)
        return [lo, hi]
    n = _num(v, col, what)
    return [n, n]


def _options(words: list, allowed: dict) -> dict:
    """key=value words -> {key: (value, value column)}; allowed: key -> description."""
    out: dict = {}
    for word, col in words:
        key, sep, val = word.partition("=")
        if not sep:
            raise _err(f"unexpected token {word!r} (options: {', '.join(allowed)})", col)
        if key not in allowed:
            raise _err(f"unknown option {key!r} (options: {', '.join(allowed)})", col)
        if key in out:
            raise _err(f"duplicate option {key!r}", col)
        if not val:
            raise _err(f"option {key!r} needs a value ({allowed[key]})", col)
        out[key] = (_unquote(val), col + len(key) + 1)
    return out


def _compile_condition(kind: str, cond: tuple | None):
    if cond is None:
        return None, None
    text, col = cond
    try:
        e = X.compile(text, tuple(FIELDS[kind]) + tuple(CONSTANTS.get(kind, ())))
    except X.ExprError as err:
        shifted = err.shifted(col - 1)
        raise BreakpointError(f"in condition: {shifted}", shifted.position) from None
    return text, e


def _make(kind: str, words: list, params: dict, cond, temporary: bool) -> Breakpoint:
    text, e = _compile_condition(kind, cond)
    spec = " ".join(w for w, _c in words)
    pattern = None
    if kind in ("step", "reg"):
        pattern = _glob(params["function" if kind == "step" else "name"])
    return Breakpoint(kind, spec, params, temporary=temporary, condition=text, cond=e,
                      pattern=pattern)


def _check_q(machine, opts: dict) -> int | None:
    if "q" not in opts:
        return None
    v, col = opts["q"]
    q = _num(v, col, "q")
    nq = len(machine.vdev.vqs)
    if not 0 <= q < nq:
        raise _err(f"no queue {q}: the device has {nq} queue{'s' if nq != 1 else ''} "
                   f"(0..{nq - 1})", col)
    return q


# -- kinds ---------------------------------------------------------------------------------------

def _parse_desc(machine, words, cond, temporary) -> Breakpoint:
    opts = _options(words[1:], {"q": "a queue number", "idx": "a ring slot",
                                "head": "a ring slot", "addr": "A or A..B",
                                "len": "N or A..B", "flags": "NEXT|WRITE|INDIRECT",
                                "on": "add|pop|used", "indirect": "yes|no"})
    q = _check_q(machine, opts)
    size = _queue_size(machine, q or 0)
    p: dict = {"q": q, "idx": None, "head": None, "addr": None, "len": None, "flags": 0,
               "on": None, "indirect": None}
    for key in ("idx", "head"):
        if key in opts:
            v, col = opts[key]
            n = _num(v, col, key)
            if not 0 <= n < size:
                raise _err(f"{key}={n} is not a slot of the descriptor table (queue size {size}: "
                           f"0..{size - 1})", col)
            p[key] = n
    for key in ("addr", "len"):
        if key in opts:
            p[key] = _range(*opts[key], key)
    if "flags" in opts:
        v, col = opts["flags"]
        mask = 0
        pos = col
        for part in v.split("|"):
            name = part.strip().upper()
            if name in FLAG_NAMES:
                mask |= FLAG_NAMES[name]
            else:
                try:
                    mask |= X.parse_int(part)
                except ValueError:
                    raise _err(f"unknown flag {part!r} (NEXT, WRITE, INDIRECT)", pos) from None
            pos += len(part) + 1
        p["flags"] = mask
    if "on" in opts:
        v, col = opts["on"]
        ons = []
        pos = col
        for part in v.split("|"):
            if part not in DESC_ON:
                raise _err(f"unknown on={part!r} (add, pop, used)", pos)
            if part not in ons:
                ons.append(part)
            pos += len(part) + 1
        p["on"] = ons
    if "indirect" in opts:
        v, col = opts["indirect"]
        if v not in ("yes", "no"):
            raise _err(f"indirect={v!r}: use yes or no", col)
        p["indirect"] = v == "yes"
        if p["indirect"] and p["idx"] is not None:
            raise _err("idx= names a ring slot, and indirect=yes selects only indirect table "
                       "entries, which have none: this can never stop", opts["idx"][1])
    return _make("desc", words, p, cond, temporary)


def _stage(v: str, col: int) -> str:
    low = v.strip().lower()
    for s in STAGES:
        if low == s.lower():
            return s

    def norm(t: str) -> str:
        return re.sub(r"[^a-z0-9]", "", t.lower())
    for s in STAGES:
        if norm(v) == norm(s):
            return s
    cands = [s for s in STAGES if norm(s.split(":")[-1]) == norm(v)]
    if len(cands) == 1:
        return cands[0]
    if len(cands) > 1:
        raise _err(f"ambiguous stage {v!r}: " + ", ".join(repr(c) for c in cands), col)
    raise _err(f"unknown stage {v!r} (stages: {', '.join(STAGES)})", col)


def _parse_req(machine, words, cond, temporary) -> Breakpoint:
    opts = _options(words[1:], {"type": "|".join(REQ_TYPES), "sector": "N or A..B",
                                "len": "N or A..B", "stage": "a stage name"})
    p: dict = {"types": None, "sector": None, "len": None, "stage": None}
    if "type" in opts:
        v, col = opts["type"]
        types = []
        pos = col
        for part in v.split("|"):
            t = part.strip().upper()
            t = {"READ": "IN", "WRITE": "OUT", "WRITE-ZEROES": "WRITE_ZEROES",
                 "GET-ID": "GET_ID"}.get(t, t)
            if t not in REQ_TYPES:
                raise _err(f"unknown request type {part!r} ({', '.join(REQ_TYPES)})", pos)
            types.append(t)
            pos += len(part) + 1
        p["types"] = types
    if "sector" in opts:
        v, col = opts["sector"]
        lo, hi = _range(v, col, "sector")
        cap = machine.vblk.capacity
        for n in (lo, hi):
            if n >= cap:
                raise _err(f"sector {n} is past the end of the disk ({cap} sectors: 0..{cap - 1})",
                           col)
        p["sector"] = [lo, hi]
    if "len" in opts:
        p["len"] = _range(*opts["len"], "len")
    if "stage" in opts:
        p["stage"] = _stage(*opts["stage"])
    return _make("req", words, p, cond, temporary)


def _parse_step(machine, words, cond, temporary) -> Breakpoint:
    if len(words) < 2:
        raise _err("step needs a function name (e.g. step virtqueue_split_pop)",
                   words[0][1] + len(words[0][0]))
    if len(words) > 2:
        raise _err(f"unexpected token {words[2][0]!r} (one function name)", words[2][1])
    name, col = words[1]
    known = known_functions()
    match = _glob(name)
    if not any(match(f) for f in known):
        near = sorted(f for f in known if name.strip("*?") and name.strip("*?").lower() in f.lower())
        hint = f"; similar: {', '.join(near[:8])}" if near else ""
        raise _err(f"unknown function {name!r}: no step models it{hint}", col)
    return _make("step", words, {"function": name}, cond, temporary)


_RING_RE = re.compile(r"(q|avail_idx|used_idx|inuse|wrap)(=|>=)?(.*)\Z")


def _parse_ring(machine, words, cond, temporary) -> Breakpoint:
    p: dict = {"q": None, "what": None, "value": None}
    qcol = 0
    what_col = 0
    for word, col in words[1:]:
        mt = _RING_RE.match(word)
        if not mt:
            raise _err(f"unexpected token {word!r} (ring [q=Q] avail_idx=N | used_idx=N | "
                       "inuse>=K | wrap)", col)
        key, op, val = mt.group(1), mt.group(2) or "", mt.group(3)
        vcol = col + len(key) + len(op)
        if key == "q":
            if op != "=" or not val:
                raise _err(f"unexpected token {word!r} (q=Q)", col)
            if p["q"] is not None:
                raise _err("duplicate option 'q'", col)
            qcol = vcol
            p["q"] = _num(val, vcol, "q")
            continue
        if p["what"] is not None:
            raise _err(f"unexpected token {word!r}: one of avail_idx=, used_idx=, inuse>=, wrap",
                       col)
        what_col = vcol
        if key in ("avail_idx", "used_idx"):
            if op != "=" or not val:
                raise _err(f"unexpected token {word!r} ({key}=N)", col)
            n = _num(val, vcol, key)
            if not 0 <= n <= 0xFFFF:
                raise _err(f"{key}={n}: ring indices are 16-bit (0..65535)", vcol)
            p["what"], p["value"] = key, n
        elif key == "inuse":
            if op != ">=" or not val:
                raise _err(f"unexpected token {word!r} (inuse>=K)", col)
            p["what"], p["value"] = "inuse", _num(val, vcol, "inuse")
        else:
            if op == ">=" or (op == "=" and val not in ("avail", "used")) or (not op and val):
                raise _err(f"unexpected token {word!r} (wrap, wrap=avail or wrap=used)", col)
            p["what"], p["value"] = "wrap", val or None
    if p["what"] is None:
        end = words[-1][1] + len(words[-1][0])
        raise _err("ring needs one of avail_idx=N, used_idx=N, inuse>=K, wrap", end)
    if p["q"] is not None:
        _check_q(machine, {"q": (str(p["q"]), qcol)})
    size = _queue_size(machine, p["q"] or 0)
    if p["what"] == "inuse" and not 1 <= p["value"] <= size:
        raise _err(f"inuse>={p['value']}: the device has at most {size} chains in use "
                   f"(queue size), so K must be 1..{size}", what_col)
    return _make("ring", words, p, cond, temporary)


def _parse_span(machine, words, space: str, temporary, cond) -> Breakpoint:
    if len(words) != 2:
        if len(words) < 2:
            raise _err(f"{space} needs a range: ADDR[+LEN] or A..B", words[0][1] + len(words[0][0]))
        raise _err(f"unexpected token {words[2][0]!r}", words[2][1])
    v, col = words[1]
    what = "address" if space == "ram" else "offset"
    if "+" in v:
        a, b = v.split("+", 1)
        start = _num(a, col, what)
        n = _num(b, col + len(a) + 1, "length")
        if n <= 0:
            raise _err("the length must be at least 1", col + len(a) + 1)
    elif ".." in v:
        start, last = _range(v, col, what)
        n = last - start + 1
    else:
        start, n = _num(v, col, what), 1
    if space == "ram":
        size = machine.mem.size
        if start + n > size:
            raise _err(f"{start:#x}+{n} is outside guest RAM (0..{size - 1:#x})", col)
    else:
        size = machine.hostfile.size
        if start + n > size:
            raise _err(f"{start:#x}+{n} is past the end of the image file ({size} bytes)", col)
    return _make(space, words, {"addr": start, "len": n}, cond, temporary)


def _parse_reg(machine, words, cond, temporary) -> Breakpoint:
    if len(words) != 2:
        if len(words) < 2:
            raise _err("reg needs a register name (e.g. reg device_status, reg vq0.*)",
                       words[0][1] + len(words[0][0]))
        raise _err(f"unexpected token {words[2][0]!r}", words[2][1])
    name, col = words[1]
    name = _REG_ALIASES.get(name, name)
    names = reg_names(machine)
    match = _glob(name)
    if not any(match(n) for n in names):
        raise _err(f"unknown register {words[1][0]!r} (registers: {', '.join(names)})", col)
    return _make("reg", words, {"name": name}, cond, temporary)


def _parse_error(machine, words, cond, temporary) -> Breakpoint:
    kinds = []
    for word, col in words[1:]:
        if word not in ERROR_KINDS:
            raise _err(f"unexpected token {word!r} (catch error [{' | '.join(ERROR_KINDS)}])", col)
        if word not in kinds:
            kinds.append(word)
    return _make("error", words, {"kinds": kinds or list(ERROR_KINDS)}, cond, temporary)


_PARSERS = {"desc": _parse_desc, "req": _parse_req, "step": _parse_step, "ring": _parse_ring,
            "ram": lambda m, w, c, t: _parse_span(m, w, "ram", t, c),
            "host": lambda m, w, c, t: _parse_span(m, w, "host", t, c),
            "reg": _parse_reg, "error": _parse_error}


def _parse(text: str, machine, temporary: bool, kinds: tuple, verb: str) -> Breakpoint:
    if not isinstance(text, str):
        raise BreakpointError("a breakpoint spec is text")
    words, cond = _split(text)
    if not words:
        col = cond[1] if cond else len(text) + 1
        raise BreakpointError(f"{verb} needs one of: {', '.join(kinds)}", col if cond else 0)
    kind, col = words[0]
    if kind not in kinds:
        raise _err(f"unknown {verb} kind {kind!r} (kinds: {', '.join(kinds)})", col)
    return _PARSERS[kind](machine, words, cond, temporary)


def parse_breakpoint(text: str, *, machine, temporary: bool = False) -> Breakpoint:
    """`break`/`tbreak` TEXT: desc ..., req ..., step FUNCTION, ring ..."""
    return _parse(text, machine, temporary, BREAK_KINDS, "break")


def parse_watch(text: str, *, machine, temporary: bool = False) -> Breakpoint:
    """`watch` TEXT: ram ADDR[+LEN], host OFFSET[+LEN], reg NAME."""
    return _parse(text, machine, temporary, WATCH_KINDS, "watch")


def parse_catch(text: str, *, machine, temporary: bool = False) -> Breakpoint:
    """`catch` TEXT: error [virtio] [qcow2] [guest] [ioerr]."""
    return _parse(text, machine, temporary, CATCH_KINDS, "catch")


def parse_command(verb: str, text: str, *, machine) -> Breakpoint:
    """One entry for the command line: verb is break, tbreak, watch, twatch, catch or tcatch."""
    temporary = verb.startswith("t")
    base = verb[1:] if temporary else verb
    parser = {"break": parse_breakpoint, "watch": parse_watch, "catch": parse_catch}.get(base)
    if parser is None:
        raise BreakpointError(f"unknown breakpoint command {verb!r} "
                              "(break, tbreak, watch, twatch, catch, tcatch)")
    return parser(text, machine=machine, temporary=temporary)


# -- matching ------------------------------------------------------------------------------------
# Each matcher yields (match: JSON-able dict, fields: dict for the condition, message).

def _hexs(b: bytes) -> str:
    return bytes(b).hex()


def _flag_str(flags: int) -> str:
    names = [n for n, bit in FLAG_NAMES.items() if flags & bit]
    rest = flags & ~(NEXT | WRITE | INDIRECT)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


def _in(r, v) -> bool:
    return r is None or r[0] <= v <= r[1]


def _match_desc(bp: Breakpoint, c: "_Ctx"):
    p = bp.params
    ons = p["on"]
    for f in c.rec.facts:
        if f[0] != "desc":
            continue
        _t, on, q, slot, table, entry, head, addr, ln, flags, nxt, req = f
        if ons is not None and on not in ons:
            continue
        if p["q"] is not None and q != p["q"]:
            continue
        if p["idx"] is not None and slot != p["idx"]:
            continue
        if p["head"] is not None and head != p["head"]:
            continue
        ind = table is not None
        if p["indirect"] is not None and ind != p["indirect"]:
            continue
        if not (_in(p["addr"], addr) and _in(p["len"], ln)) or flags & p["flags"] != p["flags"]:
            continue
        if req is None:
            dd = c.m.guest.vq.desc_data
            r = dd[head] if 0 <= head < len(dd) else -1
            req = r if r is not None and r >= 0 else None
        match = {"q": q, "idx": slot, "table": table, "entry": entry, "head": head, "addr": addr,
                 "len": ln, "flags": flags, "next": nxt, "on": on, "indirect": ind, "req": req}
        fields = dict(match)
        fields["indirect"] = int(ind)
        fields.update(FLAG_NAMES)
        # the message is built only if this match stops (check() calls it): most candidate
        # matches are rejected by the breakpoint's condition
        yield match, fields, partial(_desc_msg, match)


def _desc_msg(match: dict) -> str:
    on, ind, head, req = match["on"], match["indirect"], match["head"], match["req"]
    where = f"indirect table {match['table']:#x}[{match['entry']}]" if ind else f"desc[{match['idx']}]"
    verb = {"add": "driver wrote", "pop": "device popped", "used": "device returned"}[on]
    return (f"{verb} {where} of chain {head}" + (f" (request {req})" if req is not None else "")
            + f": {{addr {match['addr']:#x}, len {match['len']}, {_flag_str(match['flags'])}, "
            f"next {match['next']}}}")


def _match_req(bp: Breakpoint, c: "_Ctx"):
    p = bp.params
    for event, r in c.req_events():
        if p["stage"] is not None:
            if r.stage != p["stage"]:
                continue
        elif event != "created":
            continue
        if p["types"] is not None and r.type not in p["types"]:
            continue
        if p["sector"] is not None:
            nsec = r.length // 512
            if not nsec or r.sector > p["sector"][1] or r.sector + nsec - 1 < p["sector"][0]:
                continue
        if not _in(p["len"], r.length):
            continue
        match = {"id": r.id, "type": r.type, "sector": r.sector, "len": r.length,
                 "stage": r.stage, "status": r.status, "head": r.head, "tag": r.tag,
                 "event": event}
        what = f"request {r.id} ({r.type} sector {r.sector}, {r.length} bytes)"
        msg = (what + " created" if p["stage"] is None else what + f" entered stage {r.stage!r}"
               + (f" (status {r.status})" if r.status else ""))
        yield match, dict(match), msg


def _match_step(bp: Breakpoint, c: "_Ctx"):
    rec = c.rec
    if not bp.pattern(rec.function):
        return
    side = "guest" if rec.layer in ("app", "blk-mq", "virtio_blk", "virtio_ring", "virtio_pci") \
        else "host"
    match = {"function": rec.function, "kind": rec.kind, "layer": rec.layer, "side": side,
             "ctx": rec.ctx, "source": rec.source}
    yield match, dict(match), f"{rec.function} ({rec.layer}): {rec.detail}"


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _before(effects: list, space: str, current: bytes, lo: int) -> bytes:
    """The bytes [lo, lo+len(current)) as they were before the step: undo its writes."""
    buf = bytearray(current)
    hi = lo + len(buf)
    for e in reversed(effects):
        if e[0] != space:
            continue
        a, old = e[1], e[2]
        b = a + len(old)
        if a < hi and b > lo:
            s, t = max(a, lo), min(b, hi)
            buf[s - lo:t - lo] = old[s - a:t - a]
    return bytes(buf)


def _written_hull(effects: list, space: str, lo: int, hi: int):
    first = last = None
    for e in effects:
        if e[0] != space:
            continue
        a = e[1]
        b = a + len(e[3])
        if a < hi and b > lo:
            s, t = max(a, lo), min(b, hi)
            first = s if first is None else min(first, s)
            last = t if last is None else max(last, t)
    return first, last


def _match_ram(bp: Breakpoint, c: "_Ctx"):
    lo = bp.params["addr"]
    s, t = _written_hull(c.rec.effects, "ram", lo, lo + bp.params["len"])
    if s is None:
        return
    new = bytes(c.m.mem.ram[s:t])
    old = _before(c.rec.effects, "ram", new, s)
    match = {"space": "ram", "addr": s, "len": t - s, "old": _hexs(old), "new": _hexs(new)}
    fields = {"addr": s, "len": t - s, "old": _le(old), "new": _le(new)}
    yield match, fields, f"guest RAM {s:#x}+{t - s}: {_hexs(old)} -> {_hexs(new)}"


def _match_host(bp: Breakpoint, c: "_Ctx"):
    lo = bp.params["addr"]
    s, t = _written_hull(c.rec.effects, "file", lo, lo + bp.params["len"])
    if s is None:
        return
    new = c.m.hostfile.pread(s, t - s)
    old = _before(c.rec.effects, "file", new, s)
    match = {"space": "host", "addr": s, "len": t - s, "old": _hexs(old), "new": _hexs(new)}
    fields = {"addr": s, "offset": s, "len": t - s, "old": _le(old), "new": _le(new)}
    yield match, fields, f"image file {s:#x}+{t - s}: {_hexs(old)} -> {_hexs(new)}"


def _regval(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return hex(v)
    return str(v)


def _match_reg(bp: Breakpoint, c: "_Ctx"):
    m = bp.pattern
    for e in c.rec.effects:
        if e[0] != "reg" or not m(e[1]):
            continue
        name, old, new = e[1], e[2], e[3]
        match = {"space": "reg", "name": name, "old": _regval(old), "new": _regval(new)}
        fields = {"name": name,
                  "old": int(old) if isinstance(old, bool) else old,
                  "new": int(new) if isinstance(new, bool) else new}
        yield match, fields, f"register {name}: {_regval(old)} -> {_regval(new)}"


def _ring_value(c: "_Ctx", addr: int):
    """(old, new) of the u16 at addr if this step wrote it, else None."""
    eff = c.rec.effects
    s, _t = _written_hull(eff, "ram", addr, addr + 2)
    if s is None or not c.m.mem.is_mapped(addr, 2):
        return None
    new = bytes(c.m.mem.ram[addr:addr + 2])
    return _le(_before(eff, "ram", new, addr)), _le(new)


def _match_ring(bp: Breakpoint, c: "_Ctx"):
    p = bp.params
    q = p["q"] or 0
    m = c.m
    what, val = p["what"], p["value"]
    if q >= len(m.vdev.vqs):
        return
    dvq = m.vdev.vqs[q]
    gvq = m.guest.vq
    if what == "inuse":
        name = f"vq{q}.inuse"
        for e in c.rec.effects:
            if e[0] == "reg" and e[1] == name and e[3] is not None and e[3] >= val \
                    and (e[2] is None or e[2] < val):
                match = {"q": q, "which": "inuse", "old": e[2], "new": e[3], "size": dvq.num}
                yield match, dict(match), f"queue {q}: inuse {e[2]} -> {e[3]} (>= {val})"
        return
    want_avail = what == "avail_idx" or (what == "wrap" and val in (None, "avail"))
    want_used = what == "used_idx" or (what == "wrap" and val in (None, "used"))
    cands = []
    if want_avail and gvq.num and gvq.index == q:
        cands.append(("avail", gvq.avail + 2, gvq.num))
    if want_used and dvq.used and dvq.num:
        cands.append(("used", dvq.used + 2, dvq.num))
    for which, addr, size in cands:
        ov = _ring_value(c, addr)
        if ov is None:
            continue
        old, new = ov
        if old == new:
            continue
        if what == "wrap":
            d = (new - old) & 0xFFFF
            if not (0 < d < 0x8000 and old % size + d >= size):
                continue
            msg = f"{which}.idx {old} -> {new}: wraps to ring slot {new % size} (queue size {size})"
        else:
            if new != val:
                continue
            msg = f"{which}.idx {old} -> {new}"
        match = {"q": q, "which": which, "old": old, "new": new, "size": size}
        yield match, dict(match), f"queue {q}: " + msg


def _match_error(bp: Breakpoint, c: "_Ctx"):
    kinds = bp.params["kinds"]
    rec = c.rec
    for e in rec.effects:
        if e[0] == "error":
            kind = "qcow2" if e[2] == "qcow2" else "virtio"
            if kind not in kinds:
                continue
            match = {"kind": kind, "message": e[1], "spec": e[2], "req": None}
            yield match, dict(match), e[1]
        elif e[0] == "guest-error" and "guest" in kinds:
            match = {"kind": "guest", "message": e[1], "spec": "", "req": None}
            yield match, dict(match), e[1]
    if "ioerr" in kinds:
        for f in rec.facts:
            if f[0] == "req-status" and f[2] == B.S_IOERR:
                req = c.m.vblk.reqs.get(f[1])
                head = req["elem"]["index"] if req and req.get("elem") else None
                dd = c.m.guest.vq.desc_data
                grq = dd[head] if head is not None and 0 <= head < len(dd) and dd[head] >= 0 else None
                message = f"virtio-blk request (chain {head}) completed with status IOERR"
                match = {"kind": "ioerr", "message": message, "spec": "5.2.6", "req": grq,
                         "head": head}
                fields = {k: v for k, v in match.items() if k != "head"}
                yield match, fields, message + (f" (guest request {grq})" if grq is not None else "") \
                    + (f": {rec.detail}" if rec.detail else "")


_MATCHERS = {"desc": _match_desc, "req": _match_req, "step": _match_step, "ring": _match_ring,
             "ram": _match_ram, "host": _match_host, "reg": _match_reg, "error": _match_error}
_REASON = {"breakpoint": "breakpoint", "watchpoint": "watchpoint", "catchpoint": "error"}
_LABEL = {"breakpoint": "Breakpoint", "watchpoint": "Watchpoint", "catchpoint": "Catchpoint"}


def _text(msg) -> str:
    """A matcher's message: a str, or a callable building it (see _match_desc)."""
    return msg() if callable(msg) else msg


class _Ctx:
    """What one check() looks at: the machine, the step, this step's request transitions."""
    __slots__ = ("m", "rec", "table")

    def __init__(self, m, rec: Step, table: "BreakpointTable") -> None:
        self.m = m
        self.rec = rec
        self.table = table

    def req_events(self) -> list:
        return self.table._req_events


def _request_stages(m) -> dict:
    """{request id: stage} exactly as emu.views.requests() shows them (its own helpers; a
    test compares the two at every step), without building the views."""
    from .. import views as VW
    g = m.guest
    out = {c["id"]: "done" for c in g.completed}
    rqs = g.blkmq.rqs
    if rqs:
        dev = VW._device_req_by_head(m)
        unpopped = VW._unpopped_heads(m)
        pushed = VW._used_heads(m)
        for rid in sorted(rqs):
            out[rid] = VW._live_stage(m, rqs[rid], dev, unpopped, pushed)
    return out


def _request_view(m, rid: int, stage: str):
    """The RequestView of one request (live or recently completed) for a match."""
    from .. import views as VW
    rq = m.guest.blkmq.rqs.get(rid)
    if rq is not None:
        return VW.RequestView(rid, VW.GUEST_OPS.get(rq["op"], rq["op"]), rq["sector"],
                              rq["bytes"], stage, "", rq["tag"], rq.get("head"))
    for c in reversed(m.guest.completed):
        if c["id"] == rid:
            return VW.RequestView(rid, VW.GUEST_OPS.get(c["op"], c["op"]), c["sector"],
                                  c["bytes"], stage, c["status"])
    return None


def _stage_inputs(m) -> tuple:
    """Everything emu.views.requests() derives the stages from (not the requests' other
    fields): when it is unchanged after a step, no request changed its stage."""
    g = m.guest
    rqs = g.blkmq.rqs
    done = g.completed
    gvq = g.vq
    ram = m.mem.ram
    avail_idx = used_idx = None
    if gvq.num and m.mem.is_mapped(gvq.avail, 4) and m.mem.is_mapped(gvq.used, 4):
        avail_idx = ram[gvq.avail + 2:gvq.avail + 4]
        used_idx = ram[gvq.used + 2:gvq.used + 4]
    return (len(done), done[-1]["id"] if done else 0,
            tuple((rid, rq["stage"], rq.get("used_len") is None, rq.get("head"))
                  for rid, rq in rqs.items()),
            tuple((r["elem"]["index"], r["stage"]) for r in m.vblk.reqs.values() if r.get("elem")),
            avail_idx, used_idx, gvq.last_used_idx, m.vdev.vqs[0].last_avail_idx)


class BreakpointTable:
    """The breakpoints of a session; see the module docstring for the API."""

    def __init__(self) -> None:
        self._bps: dict[int, Breakpoint] = {}
        self._next = 1
        self._track: dict = {"req": None}       # request id -> stage at the last check
        self._enabled: list = []
        self._has_req = False
        self._req_events: list = []
        self._req_sig = None        # _stage_inputs at the last check (a cache, not state)

    # -- editing --------------------------------------------------------------------------
    def _refresh(self) -> None:
        self._enabled = [bp for bp in self._bps.values() if bp.enabled]
        self._has_req = any(bp.kind == "req" for bp in self._bps.values())
        if not self._has_req:
            self._track["req"] = None

    def _get(self, bp_id: int) -> Breakpoint:
        bp = self._bps.get(bp_id)
        if bp is None:
            raise BreakpointError(f"no breakpoint number {bp_id}")
        return bp

    def get(self, bp_id: int) -> Breakpoint:
        return self._get(bp_id)

    def __len__(self) -> int:
        return len(self._bps)

    def __iter__(self):
        return iter(list(self._bps.values()))

    def add(self, bp: Breakpoint, machine=None) -> int:
        if bp.id:
            raise BreakpointError(f"breakpoint {bp.id} is already in a table")
        bp.id = self._next
        self._next += 1
        self._bps[bp.id] = bp
        had = self._track["req"] is not None
        self._refresh()
        if bp.kind == "req" and machine is not None and not had:
            self.sync(machine)
        return bp.id

    def delete(self, bp_id: int | None = None) -> list:
        ids = list(self._bps) if bp_id is None else [self._get(bp_id).id]
        for i in ids:
            del self._bps[i]
        self._refresh()
        return ids

    def _set_enabled(self, bp_id: int | None, on: bool) -> list:
        bps = list(self._bps.values()) if bp_id is None else [self._get(bp_id)]
        for bp in bps:
            bp.enabled = on
        self._refresh()
        return [bp.id for bp in bps]

    def enable(self, bp_id: int | None = None) -> list:
        return self._set_enabled(bp_id, True)

    def disable(self, bp_id: int | None = None) -> list:
        return self._set_enabled(bp_id, False)

    def ignore(self, bp_id: int, n: int) -> None:
        if n < 0:
            raise BreakpointError(f"ignore count must be 0 or more, not {n}")
        self._get(bp_id).ignore = n

    def condition(self, bp_id: int, text: str | None) -> None:
        bp = self._get(bp_id)
        if text is None or not text.strip():
            bp.condition, bp.cond = None, None
            return
        stripped = text.strip()
        col = len(text) - len(text.lstrip()) + 1
        bp.condition, bp.cond = _compile_condition(bp.kind, (stripped, col))

    def list(self) -> list:
        return [bp.row() for bp in self._bps.values()]

    # -- cross-step state ------------------------------------------------------------------
    def state(self) -> dict:
        req = self._track["req"]
        return {"req": None if req is None else dict(req)}

    def load_state(self, obj: dict | None) -> None:
        req = (obj or {}).get("req")
        self._track = {"req": None if req is None or not self._has_req
                       else {int(k): v for k, v in req.items()}}
        self._req_sig = None

    def sync(self, machine) -> None:
        self._track["req"] = _request_stages(machine) if self._has_req else None
        self._req_sig = _stage_inputs(machine) if self._has_req else None

    def _update_requests(self, machine) -> None:
        sig = _stage_inputs(machine)
        if sig == self._req_sig and self._track["req"] is not None:
            self._req_events = []
            return
        self._req_sig = sig
        cur = _request_stages(machine)
        prev = self._track["req"]
        self._track["req"] = cur
        if prev is None:
            self._req_events = []
            return
        events = []
        for rid, stage in cur.items():
            if prev.get(rid) != stage:
                view = _request_view(machine, rid, stage)
                if view is not None:
                    events.append(("stage" if rid in prev else "created", view))
        events.sort(key=lambda ev: ev[1].id)
        self._req_events = events

    # -- the check after every step -----------------------------------------------------------
    def check(self, machine, rec: Step, dry: bool = False) -> Hit | None:
        if not self._enabled and not self._has_req:
            return None
        if self._has_req:
            self._update_requests(machine)
        if not self._enabled:
            return None
        c = _Ctx(machine, rec, self)
        stops = []
        for bp in self._enabled:
            for match, fields, msg in _MATCHERS[bp.kind](bp, c):
                if bp.cond is not None:
                    fields["step"] = rec.n
                    try:
                        ok = bp.cond.truth(fields)
                    except X.ExprError as e:
                        ok = True
                        msg = f"error in condition {bp.condition!r}: {e}; stopped. {_text(msg)}"
                    if not ok:
                        continue
                if dry:
                    stops.append((bp, match, msg))
                    break
                bp.hits += 1
                if bp.ignore > 0:
                    bp.ignore -= 1
                else:
                    stops.append((bp, match, msg))
                break
        if not stops:
            return None
        bp, match, msg = stops[0]
        msg = _text(msg)
        deleted = () if dry else tuple(b.id for b, _m, _s in stops if b.temporary)
        for i in deleted:
            del self._bps[i]
        if deleted:
            self._refresh()
        if bp.type == "catchpoint":
            message = msg                       # the diagnostic itself
        else:
            label = ("Temporary " + _LABEL[bp.type].lower()) if bp.temporary else _LABEL[bp.type]
            message = f"{label} {bp.id} ({bp.text}), step {rec.n}: {msg}"
        return Hit(bp.id, bp.kind, _REASON[bp.type], match, message, rec.n, bp.hits,
                   tuple(b.id for b, _m, _s in stops[1:]), deleted)
