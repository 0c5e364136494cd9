"""Reverse execution: checkpoints of a Machine, and going back to any earlier step exactly.

A Timeline keeps checkpoints of one machine.  A checkpoint at step s holds

  * the machine's component state (every attribute of the Machine except guest RAM, the
    host file and the immutable configuration), pickled, and zlib-compressed when the
    pickle is over RAW_MAX bytes (48 KiB): a deep copy
    that stays pristine because it is bytes (the guest process's workload ops, which never
    change, are referred to, and its append-only results list is stored as its length, so
    a checkpoint costs the same at request 100 and at request 100,000 (so are the read
    ops' digests, reads, append-only too); qcow2's immutable
    tables, FrozenTable, are referred to as well);
  * the caller's own state, through the optional `extra` pair (save, load);
  * the host file's logical size and its write/sync counters at s;
  * the undo data of the interval that ENDS at s: the old content, as it was at the previous
    checkpoint, of every guest RAM page (4 KiB) and host-file block (4 KiB) written since.

The undo data is gathered by hooks in GuestMemory.write and HostFile.pwrite/truncate (their
`undo` dicts: the open interval), so nothing is copied that did not change, and the 64 MiB
of RAM never is.

Going back (`rewind(target)`) picks the latest checkpoint at or before target, writes back
the old RAM pages and file blocks of every interval after it (the oldest copy of each page
wins), restores the file size with truncate, loads the component state from the checkpoint
and drops the later checkpoints.  The caller then runs forward `target - s` steps; the
machine is deterministic, so it arrives at exactly the state it had (`goto` does both).

Thinning keeps at most `max_checkpoints`: it drops the checkpoint whose two neighbours are
closest together relative to its age, merging its undo data into the next checkpoint's
(older content wins), so checkpoints stay dense near the present and thin out in the past.
The first checkpoint is never dropped, nor a pinned one.

External changes.  A debugger `poke` between steps goes through GuestMemory.write, so it is
recorded in the open interval: going back past it undoes it.  Replaying forward cannot
redo it, though, so after any change made between steps call `note_external_write()` (or
use `Timeline.poke`): it takes a pinned checkpoint, which later rewinds to that step or
beyond start from, so the change is kept.

Checkpoints cost time only when taken (pickling the component state: about a millisecond,
the cost of a few hundred steps) and when rewinding; a step with the hooks on costs
one dict lookup per page or block it writes.
"""
from __future__ import annotations

import bisect
import copy
import copyreg
import io
import pickle
import zlib
from dataclasses import dataclass, field, fields
from typing import Callable

from ..block.hostfile import BLOCK, HostFile
from ..block.qcow2.image import FrozenTable, Qcow2Reader, RawReader
from ..guest.state import Proc
from ..machine import Machine
from ..mem.guest_memory import PAGE_SIZE, GuestMemory
from ..sim.steps import EffectLog

# Machine attributes that are not checkpointed: RAM and the host file have undo journals;
# the rest never changes after construction (frozen dataclasses, stateless helpers).
EXCLUDE = frozenset({"mem", "hostfile", "log", "config", "timing", "latency", "dev_ops"})
# Objects that a checkpoint refers to instead of copying (files, RAM, the machine itself,
# and qcow2's immutable FrozenTable tables: 8192 ints each at the least).
SHARED_TYPES = (HostFile, GuestMemory, EffectLog, Machine, RawReader, Qcow2Reader, FrozenTable)
ZLEVEL = 1                     # the component state compresses ~30x at level 1 in < 1 ms
# A pickle up to this size is kept as it is.  zlib level 1 was a quarter of a checkpoint's
# instructions on the raw benchmark machine, whose state pickles to 13-21 KiB (5 KiB
# compressed), and more than half of one on qcow2's, 26-37 KiB (8-12 KiB compressed; 1.8M
# instructions, 17% of the fast engine's `continue` there).  A checkpoint on those machines
# keeps ~100 KiB of old RAM pages and file blocks besides, so ~20 KiB more is ~20%, and 256
# checkpoints keep at most 12 MiB of uncompressed state.  Bigger pickles are compressed.
RAW_MAX = 48 << 10
_PROTO = pickle.PROTO[0]       # a pickle's first byte (a zlib stream's is 0x78)


@dataclass(eq=False)
class Checkpoint:
    """The state at one step, plus the undo data of the interval that ends here."""
    step: int
    state: bytes               # the machine's component state (a pickle, or one + zlib)
    extra: tuple | None        # the caller's state: ("pickle", bytes) or ("copy", object)
    file: tuple                # the host file's (size, writes, syncs) at this step
    pinned: bool = False       # follows an external change: thinning never drops it
    ram: dict = field(default_factory=dict)      # page -> 4096 old bytes
    blocks: dict = field(default_factory=dict)   # file block -> 4096 old bytes, or None

    @property
    def size(self) -> int:
        return self.file[0]


def _shared(index: int):
    """Placeholder the pickles name for a shared object; only a Timeline can resolve it."""
    raise pickle.UnpicklingError("a Timeline checkpoint can only be loaded by its Timeline")


def _proc(state: dict, ops: int, results: int, n: int):
    """Placeholder the pickles name for a guest process (see _Freezer._reduce_proc)."""
    raise pickle.UnpicklingError("a Timeline checkpoint can only be loaded by its Timeline")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, objs: list) -> None:
        super().__init__(io.BytesIO(data))
        self._objs = objs

    def _proc(self, state: dict, ops: int, results: int, n: int, reads: int, nreads: int) -> Proc:
        p = Proc.__new__(Proc)
        for k, v in state.items():
            setattr(p, k, v)
        p.ops = self._objs[ops]
        p.results = self._objs[results][:n]
        p.reads = self._objs[reads][:nreads]
        return p

    def find_class(self, module: str, name: str):
        if module == __name__ and name == "_shared":
            return self._objs.__getitem__
        if module == __name__ and name == "_proc":
            return self._proc
        return super().find_class(module, name)


class _Freezer:
    """Deep copies as bytes: pickle with shared objects referred to by index, then zlib
    if the pickle is over RAW_MAX bytes.

    Same meaning as copy.deepcopy with the shared objects pre-seeded in the memo (aliasing
    inside one call is kept), about five times faster, and compact."""

    def __init__(self) -> None:
        self.objs: list = []
        self._index: dict[int, int] = {}
        self._table = copyreg.dispatch_table.copy()
        for t in SHARED_TYPES:
            self._table[t] = self._reduce
        self._table[Proc] = self._reduce_proc

    def reducer(self, cls: type, fn: Callable | None) -> Callable | None:
        """Pickle instances of cls with fn(obj) (a copyreg reducer; None: the default way);
        returns the previous one.  For reducers that give the very tuple the default way
        would (emu_fast's, which compute the same state faster)."""
        prev = self._table.get(cls)
        if fn is None:
            self._table.pop(cls, None)
        else:
            self._table[cls] = fn
        return prev

    def share(self, obj) -> int:
        i = self._index.get(id(obj))
        if i is None:
            i = self._index[id(obj)] = len(self.objs)
            self.objs.append(obj)          # kept alive, so its id stays unique
        return i

    def _reduce(self, obj):
        return _shared, (self.share(obj),)

    def _reduce_proc(self, p: Proc):
        """The guest process without its three long lists: the workload's ops never change
        after the machine is built (shared, not copied), and results and reads (the read
        ops' digests) are append-only with entries that never change (their lengths are
        enough: the list at this checkpoint is a prefix of the list as it is later on this
        timeline).  Copying them made each checkpoint cost O(requests run so far)."""
        d = {f.name: getattr(p, f.name) for f in fields(p)}
        ops, results, reads = d["ops"], d["results"], d["reads"]
        d["ops"] = d["results"] = d["reads"] = None          # (keeps the attribute order)
        return _proc, (d, self.share(ops), self.share(results), len(results),
                       self.share(reads), len(reads))

    def dumps(self, obj) -> bytes:
        buf = io.BytesIO()
        p = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
        p.dispatch_table = self._table
        p.dump(obj)
        if buf.tell() <= RAW_MAX:
            return buf.getvalue()                   # starts with PROTO: loads tells them apart
        return zlib.compress(buf.getbuffer(), ZLEVEL)

    def loads(self, blob: bytes):
        return _Unpickler(blob if blob[0] == _PROTO else zlib.decompress(blob), self.objs).load()

    def deepcopy(self, obj):
        return copy.deepcopy(obj, {id(o): o for o in self.objs})


def _picklable(freezer: _Freezer, obj) -> bool:
    try:
        freezer.dumps(obj)
        return True
    except (pickle.PicklingError, TypeError, AttributeError):
        return False


class Timeline:
    """Checkpoints of one machine and exact travel back to any step since the first one.

    Call after_step() after every executed step (it takes a checkpoint every `interval`
    steps); rewind(target) or goto(target) to go back.  `extra` = (save, load) lets the
    owner checkpoint its own state too: save() -> object, load(a copy of that object)."""

    def __init__(self, machine, interval: int = 1000, max_checkpoints: int = 256,
                 extra: tuple[Callable[[], object], Callable[[object], None]] | None = None) -> None:
        if interval < 1:
            raise ValueError(f"checkpoint interval must be at least 1 step, not {interval}")
        if max_checkpoints < 2:
            raise ValueError(f"max_checkpoints must be at least 2, not {max_checkpoints}")
        if machine.mem.undo is not None or machine.hostfile.undo is not None:
            raise ValueError("this machine already has a Timeline attached")
        self.m = machine
        self.interval = interval
        self.max_checkpoints = max_checkpoints
        self.extra = extra
        self._freezer = _Freezer()
        for obj in (machine, machine.mem, machine.hostfile, machine.log):
            self._freezer.share(obj)
        self.checkpoints: list[Checkpoint] = []
        self.rewinds = 0
        self.thinned = 0
        self.broken = ""           # why a failed rewind left the machine unusable, if one did
        self.checkpoints.append(self._take(False))

    def reducer(self, cls: type, fn: Callable | None) -> Callable | None:
        """How checkpoints pickle instances of cls (_Freezer.reducer); returns the previous."""
        return self._freezer.reducer(cls, fn)

    # -- taking checkpoints ----------------------------------------------------------------
    def _open_interval(self) -> None:
        m = self.m
        m.mem.undo = {}
        m.hostfile.undo = {}
        m.hostfile.undo_size = None

    def _freeze_extra(self):
        if self.extra is None:
            return None
        obj = self.extra[0]()
        try:
            return ("pickle", self._freezer.dumps(obj))
        except (pickle.PicklingError, TypeError, AttributeError):
            return ("copy", self._freezer.deepcopy(obj))

    def _thaw_extra(self, frozen):
        kind, data = frozen
        return self._freezer.loads(data) if kind == "pickle" else self._freezer.deepcopy(data)

    def _take(self, pinned: bool) -> Checkpoint:
        """A checkpoint of now, closing the open interval (its undo data goes with it)."""
        m = self.m
        hf = m.hostfile
        comps = {k: v for k, v in m.attributes().items() if k not in EXCLUDE}
        try:
            state = self._freezer.dumps(comps)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            bad = next((k for k, v in comps.items() if not _picklable(self._freezer, v)), "?")
            raise TypeError(f"cannot checkpoint the machine: its attribute {bad!r} cannot be "
                            f"copied ({e}); add it to emu.debug.timeline.EXCLUDE if it never "
                            "changes") from None
        cp = Checkpoint(m.steps, state, self._freeze_extra(), (hf.size, hf.writes, hf.syncs),
                        pinned, m.mem.undo or {}, hf.undo or {})
        self._open_interval()
        return cp

    def checkpoint(self, pinned: bool = False) -> Checkpoint:
        """Take a checkpoint now (the `checkpoint` command; after_step does it periodically)."""
        cp = self._take(pinned)
        cps = self.checkpoints
        if len(cps) > 1 and cps[-1].step == cp.step:
            # an older checkpoint at the same step can never be rewound to: fold it in
            self._merge(cps.pop(), cp)
        cps.append(cp)
        self._thin()
        return cp

    def after_step(self) -> bool:
        """Call after every executed step; True when it took a checkpoint."""
        if self.m.steps - self.checkpoints[-1].step >= self.interval:
            self.checkpoint()
            return True
        return False

    def note_external_write(self) -> Checkpoint:
        """The state was changed between steps (a poke, an edited register): pin it, so that
        going back to this step or later keeps the change while going further back undoes it."""
        return self.checkpoint(pinned=True)

    def poke(self, gpa: int, data: bytes) -> None:
        """Write guest RAM between steps (Machine.poke) and note it."""
        self.m.poke(gpa, data)
        self.note_external_write()

    # -- thinning --------------------------------------------------------------------------
    @staticmethod
    def _merge(older: Checkpoint, newer: Checkpoint) -> None:
        """Drop `older`: the newer checkpoint's interval now starts where older's started."""
        for name in ("ram", "blocks"):
            a, b = getattr(older, name), getattr(newer, name)
            if len(a) >= len(b):
                for k, v in b.items():
                    a.setdefault(k, v)           # older content wins
                setattr(newer, name, a)
            else:
                b.update(a)
        newer.pinned = newer.pinned or older.pinned

    def _thin(self) -> None:
        cps = self.checkpoints
        while len(cps) > self.max_checkpoints:
            now = cps[-1].step
            best, bspan, bage = -1, 0, 1
            for i in range(1, len(cps) - 1):
                if cps[i].pinned:
                    continue
                span = cps[i + 1].step - cps[i - 1].step     # the gap if i goes
                age = now - cps[i].step + 1
                if best < 0 or span * bage < bspan * age:    # smallest span/age, oldest first
                    best, bspan, bage = i, span, age
            if best < 0:
                return                                      # only pinned ones left to drop
            self._merge(cps.pop(best), cps[best])
            self.thinned += 1

    # -- going back ------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """The steps of the checkpoints, oldest first."""
        return [c.step for c in self.checkpoints]

    def base_for(self, target_step: int) -> int:
        """The step rewind(target_step) would restore (the latest checkpoint at or before)."""
        return self.checkpoints[self._index_for(target_step)].step

    def _index_for(self, target_step: int) -> int:
        cps = self.checkpoints
        if target_step < cps[0].step:
            raise ValueError(f"step {target_step} is before the first checkpoint "
                             f"(step {cps[0].step}): it cannot be reached")
        if target_step > self.m.steps:
            raise ValueError(f"step {target_step} is in the future (now at step {self.m.steps})")
        return bisect.bisect_right(self.steps, target_step) - 1

    def rewind(self, target_step: int) -> int:
        """Restore the latest checkpoint at or before target_step; return its step.

        Run forward target_step minus that many steps to arrive at target_step exactly."""
        if self.broken:
            raise RuntimeError(f"the timeline cannot go back any more: {self.broken}")
        i = self._index_for(target_step)
        m = self.m
        mem, hf = m.mem, m.hostfile
        cps = self.checkpoints
        cp = cps[i]
        state = self._freezer.loads(cp.state)        # fails before anything changed, if at all
        extra = self._thaw_extra(cp.extra) if self.extra is not None and cp.extra else None
        pages = mem.undo if mem.undo is not None else {}
        blocks = hf.undo if hf.undo is not None else {}
        for later in reversed(cps[i + 1:]):          # newest first: older content overwrites
            pages.update(later.ram)
            blocks.update(later.blocks)
        mem.undo = hf.undo = hf.undo_size = None
        try:
            mem.restore_pages(pages)
            hf.restore_blocks(blocks, cp.file[0])
        except BaseException as e:                   # e.g. ENOSPC writing the file back
            self.broken = f"restoring step {cp.step} failed: {e}"
            raise
        hf.writes, hf.syncs = cp.file[1], cp.file[2]
        for k, v in state.items():
            setattr(m, k, v)
        if extra is not None:
            self.extra[1](extra)
        del cps[i + 1:]
        self._open_interval()
        self.rewinds += 1
        return cp.step

    def goto(self, target_step: int, step: Callable | None = None) -> int:
        """rewind(target_step), then run forward to it with step() (default Machine.step),
        calling after_step() after each; returns how many steps were re-executed."""
        base = self.rewind(target_step)
        run = step or self.m.step
        while self.m.steps < target_step:
            if run() is None:
                raise RuntimeError(f"the re-run ended at step {self.m.steps} before step "
                                   f"{target_step}: the machine is not deterministic")
            self.after_step()
        if self.m.steps != target_step:
            raise RuntimeError(f"the re-run went past step {target_step} "
                               f"(to {self.m.steps}): step() ran more than one step")
        return target_step - base

    # -- bookkeeping ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Checkpoints and the memory they keep (for `info checkpoints` and benchmarks)."""
        cps = self.checkpoints
        m = self.m
        open_pages = len(m.mem.undo or {})
        open_blocks = sum(1 for d in (m.hostfile.undo or {}).values() if d is not None)
        ram_pages = sum(len(c.ram) for c in cps) + open_pages
        file_blocks = sum(1 for c in cps for d in c.blocks.values() if d is not None) + open_blocks
        state_bytes = sum(len(c.state) for c in cps)
        extra_bytes = sum(len(c.extra[1]) for c in cps if c.extra and c.extra[0] == "pickle")
        return {"checkpoints": len(cps), "steps": [c.step for c in cps],
                "pinned": [c.step for c in cps if c.pinned],
                "interval": self.interval, "max_checkpoints": self.max_checkpoints,
                "ram_pages": ram_pages, "ram_bytes": ram_pages * PAGE_SIZE,
                "file_blocks": file_blocks, "file_bytes": file_blocks * BLOCK,
                "state_bytes": state_bytes, "extra_bytes": extra_bytes,
                "total_bytes": (ram_pages * PAGE_SIZE + file_blocks * BLOCK + state_bytes
                                + extra_bytes),
                "open_ram_pages": open_pages, "open_file_blocks": open_blocks,
                "rewinds": self.rewinds, "thinned": self.thinned}

    def close(self) -> None:
        """Detach: the hooks stop recording and the checkpoints are dropped."""
        m = self.m
        m.mem.undo = None
        m.hostfile.undo = None
        m.hostfile.undo_size = None
        self.checkpoints = []
