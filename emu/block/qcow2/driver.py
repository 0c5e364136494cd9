"""The qcow2 format driver as steps (block/qcow2.c qcow2_co_preadv_part, qcow2_co_pwritev_part,
qcow2_co_pwrite_zeroes, qcow2_co_pdiscard, qcow2_co_flush_to_os, qcow2_inactivate).

A request takes s->lock, then alternates between a *compute* step (the engine decides, in
QEMU's order, and plans host I/O) and one step per planned host I/O, run by the thread pool
like every file-posix request.  Simplification (documented): the driver keeps s->lock for the
whole request (QEMU drops it around the data write), so requests pass through qcow2 one at a
time; inside a request QEMU's order is kept: allocate each piece and write its data, then
link the L2 entries of every piece.
"""
from __future__ import annotations

import errno as E
import zlib

from ...callchain import QEMU_ROOTS, source_of, static_path
from ...device.iov import iov_size
from ...sim.steps import handler
from ..file_posix import ERRNO_NAMES, _fault
from . import layout as L
from .engine import BDRV_REQ_MAY_UNMAP, Qcow2Engine, Qcow2Error

SRC = "block/qcow2.c"
CLUSTER_SRC = "block/qcow2-cluster.c"
CO_FN = {"read": "qcow2_co_preadv_part", "write": "qcow2_co_pwritev_part",
         "flush": "qcow2_co_flush_to_os", "discard": "qcow2_co_pdiscard",
         "write_zeroes": "qcow2_co_pwrite_zeroes", "close": "qcow2_inactivate"}
WORKER_FN = {"read": "handle_aiocb_rw", "write": "handle_aiocb_rw", "guest_write": "handle_aiocb_rw",
             "guest_read": "handle_aiocb_rw", "cow_read": "handle_aiocb_rw",
             "backing_read": "bdrv_co_preadv_part", "compressed_read": "qcow2_co_preadv_compressed",
             "flush": "handle_aiocb_flush", "write_zeroes": "handle_aiocb_write_zeroes",
             "discard": "handle_aiocb_discard"}
MAX_BOUNCE_BUFFER = 32768 * 512
INT_MAX = 0x7FFFFFFF


def _errname(ret: int) -> str:
    return "0" if not ret else f"-{ERRNO_NAMES.get(-ret, -ret)}"


class Qcow2Format:
    """The format-driver interface the block layer calls (same shape as RawFormat)."""
    name = "qcow2"
    close_kind = "qcow2.close"
    open_kind = "qcow2.open"

    def __init__(self, hostfile, meta, backing, *, discard_unmap: bool) -> None:
        self.file = hostfile
        self.meta = meta
        self.backing = backing
        self.engine = Qcow2Engine(meta, hostfile.pread, hostfile.size, backing,
                                  discard_unmap=discard_unmap,
                                  read_only=bool(meta.read_only_reason))
        self.lock_owner: int | None = None
        self.lock_queue: list = []
        self.cos: dict = {}              # bid -> coroutine state (plain data)
        self.open_plan: list = []
        self.open_notes: list = []
        self.discard_unmap = discard_unmap

    def prepare_open(self, writable: bool) -> None:
        """qcow2_do_open's read/write fix-ups, planned for the first step: repair a dirty image
        (qcow2_co_check_locked with FIX_ERRORS|FIX_LEAKS) and clear unknown autoclear bits."""
        from .repair import RepairRefused, check_and_fix
        eng = self.engine
        if not writable or self.meta.read_only_reason:
            eng.read_only = True          # never written back, not even at close
            return
        if eng.incompatible_features & L.INCOMPAT_DIRTY:
            try:
                self.open_notes.append(check_and_fix(eng))
            except RepairRefused as e:
                reason = (f"the image is dirty (lazy refcounts) and {e}; QEMU would rebuild its "
                          "refcounts, vblkdbg does not: opened read-only "
                          "(repair with qemu-img check -r all)")
                self.meta.read_only_reason = reason
                self.meta.warnings.append(reason)
                self.engine = Qcow2Engine(self.meta, self.file.pread, self.file.size, self.backing,
                                          discard_unmap=self.discard_unmap, read_only=True)
                return
        if eng.header.autoclear_features:
            eng.header.autoclear_features = 0     # bits this model does not maintain (bitmaps)
            eng.update_header("qcow2_do_open")
            self.open_notes.append("autoclear feature bits cleared (qcow2_update_header)")
        self.open_plan, eng.plan = eng.plan, []

    def virtual_size(self) -> int:
        return self.engine.size

    def close(self) -> None:
        """Close the backing chain's files (the top image's HostFile is the caller's)."""
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def summary(self) -> dict:
        e = self.engine
        return {"cluster_size": e.cluster_size, "version": e.version,
                "refcount_bits": 1 << e.refcount_order,
                "corrupt": e.corrupt, "corruption": e.corruption_msg or None,
                "dirty": bool(e.incompatible_features & L.INCOMPAT_DIRTY),
                "read_only_reason": self.meta.read_only_reason,
                "backing": self.meta.backing["name"] if self.meta.backing else None}

    @property
    def read_only_reason(self) -> str | None:
        return self.meta.read_only_reason

    @property
    def warnings(self) -> list:
        return self.meta.warnings

    def entry_kind(self, op: str) -> str:
        return "qcow2.co_entry"

    def state(self) -> dict:
        return {"format": "qcow2", "engine": self.engine.state(), "lock_owner": self.lock_owner,
                "lock_queue": list(self.lock_queue),
                "cos": [[k, _plain(v)] for k, v in sorted(self.cos.items())]}


def _plain(v):
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _iov_slice(iov: list, start: int, n: int) -> list:
    """The part [start, start+n) of a (gpa, len) list."""
    out = []
    pos = 0
    for gpa, ln in iov:
        lo, hi = max(start, pos), min(start + n, pos + ln)
        if lo < hi:
            out.append((gpa + lo - pos, hi - lo))
        pos += ln
    return out


def _ram_write_iov(m, iov: list, data: bytes) -> None:
    pos = 0
    for gpa, ln in iov:
        m.mem.write(gpa, data[pos:pos + ln])
        pos += ln


# -- entry, lock and completion ---------------------------------------------------------------

@handler("qcow2.co_entry", "qcow2", "qcow2_co_pwritev_part", SRC)
def co_entry(m, bid: int) -> str:
    """Enter the qcow2 driver: take s->lock (or queue for it)."""
    f = m.fmt
    req = m.block.reqs[bid]
    op = req["cur_op"]
    m.set_function(CO_FN[op])
    if f.engine.drv_gone:
        req["ret"] = -E.ENOMEDIUM
        m.sim.post("qemu", "blk.aio_complete", (bid,))
        return "the qcow2 node was made unusable by an earlier corruption: -ENOMEDIUM"
    co = {"op": op, "phase": "start", "plan": [], "pi": 0, "ret": 0}
    if op in ("write", "read"):
        co.update(pos=req["offset"], remaining=req["bytes"], qoff=0, pieces=[], link_i=0,
                  zero=False, wphase="alloc")
    f.cos[bid] = co
    if f.lock_owner is not None:
        f.lock_queue.append(bid)
        return f"s->lock is held by request {f.lock_owner}: wait (qemu_co_mutex_lock)"
    f.lock_owner = bid
    m.sim.cont("qcow2.compute", (bid,))
    return f"{op} {req['bytes']} bytes at guest {req['offset']:#x}; s->lock taken"


def _finish(m, bid: int) -> None:
    """Release s->lock (waking the next waiter) and return to the generic block layer."""
    f = m.fmt
    co = f.cos.pop(bid)
    f.lock_owner = None
    if f.lock_queue:
        nxt = f.lock_queue.pop(0)
        f.lock_owner = nxt
        m.sim.post("qemu", "qcow2.compute", (nxt,))
    if bid == 0:            # close: nobody to return to
        return
    req = m.block.reqs[bid]
    req["ret"] = co["ret"]
    m.sim.cont("bdrv.co_done", (bid,))


# -- compute steps -----------------------------------------------------------------------------------

@handler("qcow2.compute", "qcow2", "qcow2_alloc_host_offset", CLUSTER_SRC)
def compute(m, bid: int) -> str:
    """Decide the next phase of a request with the engine; its host I/O becomes the plan."""
    detail = _compute(m, bid)
    co = m.fmt.cos.get(bid)
    if co is not None and m.cur is not None:
        co["caller"] = m.cur.function          # the qcow2 function whose I/O the plan is
    return detail


# the guest-data I/O of a request: bdrv_co_*v_part on the file child, called from the task
DATA_IO = {"bdrv_co_pwritev_part": "qcow2_co_pwritev_task", "bdrv_co_preadv_part": "qcow2_co_preadv_task"}


def _plan_frame(m, co: dict, item: dict) -> None:
    """Name the step after the plan item's real function, called from the function that
    planned it (the coroutine's last compute step) when the table does not know its caller."""
    fn = item["fn"]
    caller = DATA_IO.get(fn, "")
    path = static_path(fn)
    ctx = co.get("caller", "")
    if not caller and ctx and ctx not in path and path[0] not in QEMU_ROOTS:
        caller = ">".join([ctx, *path[:-1]])
    m.set_function(fn, source_of(fn) or SRC, caller=caller)


def _compute(m, bid: int) -> str:
    f = m.fmt
    eng = f.engine
    co = f.cos[bid]
    if co["phase"] == "done":
        _finish(m, bid)
        return f"request done ({_errname(co['ret'])}), s->lock released"
    eng.plan = []
    try:
        detail = PHASES[co["op"]](m, bid, co)
    except Qcow2Error as e:
        co["ret"] = e.errno
        co["phase"] = "done"
        detail = f"fails: {e}"
        m.log.add(("error", str(e), "qcow2"))
    co["plan"] = eng.plan
    eng.plan = []
    co["pi"] = 0
    if co["plan"]:
        m.sim.cont("qcow2.io", (bid,))
        return detail + f"; {len(co['plan'])} host I/O(s) planned"
    if co["phase"] == "done":
        _finish(m, bid)
        return detail + f"; request done ({_errname(co['ret'])}), s->lock released"
    m.sim.cont("qcow2.compute", (bid,))
    return detail


def _req(m, bid):
    return m.block.reqs.get(bid, {})


def _write_phase(m, bid: int, co: dict) -> str:
    """qcow2_co_pwritev_part for a write request (co["wphase"] drives it)."""
    detail = _write_machine(m, bid, co)
    if co["wphase"] == "done":
        co["phase"] = "done"
    return detail


def _write_machine(m, bid: int, co: dict) -> str:
    """Allocate and write each piece, then link every piece's L2 entries."""
    eng = m.fmt.engine
    if co["wphase"] == "alloc":
        if co["remaining"] == 0:
            co["wphase"] = "link"
            return "every piece allocated and written: link the L2 entries"
        m.set_function("qcow2_alloc_host_offset", CLUSTER_SRC)
        pos = co["pos"]
        host, cur, metas = eng.alloc_host_offset(pos, min(co["remaining"], INT_MAX))
        piece = {"guest": pos, "host": host, "bytes": cur, "qoff": co["qoff"], "metas": metas,
                 "failed": False}
        co["pieces"].append(piece)
        co["pos"] += cur
        co["remaining"] -= cur
        co["qoff"] += cur
        eng.pre_write_overlap_check(0, host, cur)
        _write_task(m, bid, co, piece)
        new = [mt for mt in metas if not mt["keep_old"]]
        what = ", ".join(f"{mt['nb_clusters']} new cluster(s) at {mt['alloc_offset']:#x}" for mt in new) \
            or "in place (COPIED clusters)"
        return f"guest {pos:#x}+{cur:#x} -> host {host:#x}: {what}"
    if co["wphase"] == "link":
        m.set_function("qcow2_alloc_cluster_link_l2", CLUSTER_SRC)
        if co["link_i"] >= len(co["pieces"]):
            co["wphase"] = "done"
            return "all L2 entries linked"
        piece = co["pieces"][co["link_i"]]
        co["link_i"] += 1
        if piece["failed"] or co["ret"]:
            for mt in piece["metas"]:
                eng.alloc_cluster_abort(mt)
            return f"piece at guest {piece['guest']:#x}: the write failed, qcow2_alloc_cluster_abort frees its clusters"
        for mt in piece["metas"]:
            _perform_cow(m, bid, co, piece, mt)
            eng.alloc_cluster_link_l2(mt)
        n = sum(mt["nb_clusters"] for mt in piece["metas"])
        return (f"piece at guest {piece['guest']:#x}: {n} L2 entr{'y' if n == 1 else 'ies'} "
                "point at the new clusters (COPIED)" if n else
                f"piece at guest {piece['guest']:#x}: nothing to link")
    raise AssertionError(co["wphase"])


def _data_parts(m, bid: int, co: dict, qoff: int, n: int) -> list:
    if co.get("zero"):
        return [("zero", n)]
    return [("ram", gpa, ln) for gpa, ln in _iov_slice(_req(m, bid)["qiov"], qoff, n)]


def _write_task(m, bid: int, co: dict, piece: dict) -> None:
    """qcow2_co_pwritev_task: handle_alloc_space, merge_cow, or the guest data write."""
    eng = m.fmt.engine
    for mt in piece["metas"]:
        cs, ce = mt["cow_start"], mt["cow_end"]
        if not cs[1] and not ce[1]:
            continue
        if eng.is_zero_fast(mt["offset"] + cs[0], cs[1]) and eng.is_zero_fast(mt["offset"] + ce[0], ce[1]):
            start = mt["alloc_offset"] + cs[0]
            nb = ce[0] + ce[1] - cs[0]
            eng.pre_write_overlap_check(0, start, nb)
            eng.io("write_zeroes", "handle_alloc_space",
                   f"COW areas read as zero: zero {start:#x}+{nb:#x} (fallocate ZERO_RANGE)", start,
                   length=nb, kind="data")
            mt["skip_cow"] = True
    for mt in piece["metas"]:
        cs, ce = mt["cow_start"], mt["cow_end"]
        if (not cs[1] and not ce[1]) or mt["skip_cow"]:
            continue
        if mt["offset"] + cs[0] + cs[1] != piece["guest"]:
            continue
        if mt["offset"] + ce[0] != piece["guest"] + piece["bytes"]:
            continue
        mt["data"] = True            # merge_cow: the data goes out with the COW regions
        return
    eng.io("guest_write", "bdrv_co_pwritev_part", f"guest data {piece['bytes']:#x} bytes -> host "
           f"{piece['host']:#x}", piece["host"], length=piece["bytes"],
           parts=_data_parts(m, bid, co, piece["qoff"], piece["bytes"]), kind="data", piece=len(co["pieces"]) - 1)


def _perform_cow(m, bid: int, co: dict, piece: dict, mt: dict) -> None:
    """perform_cow(): read the untouched parts of the new clusters, write them (with the data)."""
    eng = m.fmt.engine
    cs, ce = mt["cow_start"], mt["cow_end"]
    if (not cs[1] and not ce[1]) or mt["skip_cow"]:
        return
    start_buf = guest_view_read(m, mt["offset"] + cs[0], cs[1])
    end_buf = guest_view_read(m, mt["offset"] + ce[0], ce[1])
    for off, n in ((cs[0], cs[1]), (ce[0], ce[1])):
        if n:
            eng.io("cow_read", "do_perform_cow_read", f"COW: guest view of {mt['offset'] + off:#x}+{n:#x}",
                   mt["offset"] + off, length=n)
    parts: list = []
    if mt.get("data"):
        if cs[1]:
            parts.append(("bytes", start_buf))
        data_bytes = ce[0] - (cs[0] + cs[1])
        parts += _data_parts(m, bid, co, piece["qoff"] + (mt["offset"] + cs[0] + cs[1] - piece["guest"]),
                             data_bytes)
        if ce[1]:
            parts.append(("bytes", end_buf))
        off = mt["alloc_offset"] + cs[0]
        total = cs[1] + data_bytes + ce[1]
        eng.pre_write_overlap_check(0, off, total)
        eng.io("guest_write", "do_perform_cow_write", f"COW + guest data merged: {total:#x} bytes -> "
               f"host {off:#x}", off, length=total, parts=parts, kind="data")
    else:
        for (o, n), buf in (((cs[0], cs[1]), start_buf), ((ce[0], ce[1]), end_buf)):
            if n:
                eng.pre_write_overlap_check(0, mt["alloc_offset"] + o, n)
                eng.io("guest_write", "do_perform_cow_write", f"COW region {n:#x} bytes -> host "
                       f"{mt['alloc_offset'] + o:#x}", mt["alloc_offset"] + o, length=n,
                       parts=[("bytes", buf)], kind="data")
    eng.l2_cache.depends_on_flush = True


def guest_view_read(m, offset: int, n: int) -> bytes:
    """What the guest would read from this node (for COW): zeros, backing, compressed or data."""
    eng = m.fmt.engine
    out = bytearray()
    end = offset + n
    while offset < end:
        t, host, cur, entry = eng.get_host_offset(offset, end - offset)
        cur = max(cur, 1)
        if t in (L.ZERO_PLAIN, L.ZERO_ALLOC) or (t == L.UNALLOCATED and m.fmt.backing is None):
            out += bytes(cur)
        elif t == L.UNALLOCATED:
            out += _backing_read(m, offset, cur)
        elif t == L.COMPRESSED:
            out += _decompress(m, entry, offset, cur, eng.pread)
        else:
            out += eng.pread(host, cur)
        offset += cur
    return bytes(out)


def _backing_read(m, offset: int, n: int) -> bytes:
    b = m.fmt.backing
    if offset >= b.size:
        return bytes(n)
    data = b.read(offset, min(n, b.size - offset))
    return data + bytes(n - len(data))


def _decompress(m, entry: int, offset: int, n: int, pread) -> bytes:
    eng = m.fmt.engine
    host, csize = L.compressed_params(entry, eng.cluster_bits)
    raw = pread(host, csize)
    try:
        d = zlib.decompressobj(-12)          # QEMU: inflateInit2(&strm, -12)
        data = d.decompress(raw, eng.cluster_size)
    except zlib.error as e:
        raise Qcow2Error(-E.EIO, f"compressed cluster at host {host:#x} does not inflate: {e}") from None
    if len(data) < eng.cluster_size:
        raise Qcow2Error(-E.EIO, f"compressed cluster at host {host:#x} inflates to {len(data)} bytes")
    oic = eng.offset_into_cluster(offset)
    return data[oic:oic + n]


def _read_phase(m, bid: int, co: dict) -> str:
    """qcow2_co_preadv_part: one piece per step: map it, then zeros/backing/compressed/data."""
    eng = m.fmt.engine
    if co["remaining"] == 0:
        co["phase"] = "done"
        return "read complete"
    m.set_function("qcow2_get_host_offset", CLUSTER_SRC)
    pos = co["pos"]
    t, host, cur, entry = eng.get_host_offset(pos, min(co["remaining"], INT_MAX))
    cur = max(cur, 1)
    seg = _iov_slice(_req(m, bid)["qiov"], co["qoff"], cur)
    co["pos"] += cur
    co["remaining"] -= cur
    co["qoff"] += cur
    if t in (L.ZERO_PLAIN, L.ZERO_ALLOC) or (t == L.UNALLOCATED and m.fmt.backing is None):
        eng.io("guest_zero", "qemu_iovec_memset", f"guest {pos:#x}+{cur:#x} reads as zero ({t})",
               pos, length=cur, iov=seg)
        return f"guest {pos:#x}+{cur:#x}: {t} cluster(s)"
    if t == L.UNALLOCATED:
        eng.io("backing_read", "bdrv_co_preadv_part", f"guest {pos:#x}+{cur:#x} from the backing file",
               pos, length=cur, iov=seg)
        return f"guest {pos:#x}+{cur:#x}: unallocated, read the backing file"
    if t == L.COMPRESSED:
        h, csize = L.compressed_params(entry, eng.cluster_bits)
        eng.io("compressed_read", "qcow2_co_preadv_compressed",
               f"inflate the compressed cluster at host {h:#x} ({csize} bytes)", h, length=csize,
               iov=seg, entry=entry, guest=pos)
        return f"guest {pos:#x}+{cur:#x}: compressed cluster at host {h:#x}"
    eng.io("guest_read", "bdrv_co_preadv_part", f"guest {pos:#x}+{cur:#x} <- host {host:#x}", host,
           length=cur, iov=seg, kind="data")
    return f"guest {pos:#x}+{cur:#x} -> host {host:#x}"


def _flush_phase(m, bid: int, co: dict) -> str:
    """bdrv_co_flush on the qcow2 node: flush_to_os writes the caches, then the file flushes."""
    eng = m.fmt.engine
    m.set_function("qcow2_write_caches", "block/qcow2-refcount.c")
    co["phase"] = "done"
    eng.write_caches()
    eng.bdrv_flush("bdrv_co_flush(file): flush the children")
    lazy = "" if eng.need_accurate_refcounts() else " (lazy refcounts: the refcount cache stays dirty)"
    return "qcow2_write_caches: dirty L2 tables, then refcount blocks" + lazy


def _discard_phase(m, bid: int, co: dict) -> str:
    """bdrv_co_pdiscard + qcow2_co_pdiscard: whole clusters only; partial ones are ignored."""
    eng = m.fmt.engine
    m.set_function("qcow2_cluster_discard", CLUSTER_SRC)
    req = _req(m, bid)
    co["phase"] = "done"
    off, n = req["offset"], req["bytes"]
    cs = eng.cluster_size
    lo = -(-off // cs) * cs
    hi = (off + n) // cs * cs
    if off + n == eng.size and (off + n) % cs:
        hi = off + n
    if eng.version < 3 and m.fmt.backing is not None:
        return "v2 image with a backing file: discard is -ENOTSUP (ignored)"
    if hi <= lo:
        return "no whole cluster in the range: nothing discarded (-ENOTSUP is ignored)"
    eng.cluster_discard(lo, hi - lo, 2, False)
    return f"qcow2_cluster_discard {lo:#x}..{hi:#x}: clusters become zero clusters, host space freed"


def _zeroes_phase(m, bid: int, co: dict) -> str:
    """bdrv_co_do_pwrite_zeroes: cluster-aligned chunks; unaligned ones need the rest to read
    as zero, else they fall back to writing a zero buffer through qcow2's write path."""
    eng = m.fmt.engine
    req = _req(m, bid)
    if co["phase"] == "start":
        cs = eng.cluster_size
        off, n = req["offset"], req["bytes"]
        chunks = []
        head = off % cs
        while n > 0:
            num = n
            if head:
                num = min(n, MAX_BOUNCE_BUFFER, cs - head)
                head = (head + num) % cs
            elif (off + n) % cs and num > cs:
                num -= (off + n) % cs
            chunks.append([off, num])
            off += num
            n -= num
        co.update(phase="chunks", chunks=chunks)
    if co["phase"] == "write":
        detail = _write_machine(m, bid, co)
        if co["wphase"] == "done":
            co["phase"] = "chunks"
        return "zero fallback: " + detail
    if not co["chunks"] or co["ret"]:
        co["phase"] = "done"
        return "all zeroes written" if not co["ret"] else "stopped by the failed write"
    off, num = co["chunks"].pop(0)
    flags = req["flags"]
    head = eng.offset_into_cluster(off)
    tail = (-(off + num)) % eng.cluster_size
    if off + num == eng.size:
        tail = 0
    ok = True
    if head or tail:
        ok = eng.is_zero_fast(off - head, head) and eng.is_zero_fast(off + num, tail)
        if ok:
            t, _h, _c, _e = eng.get_host_offset(off - head, eng.cluster_size)
            ok = t in (L.UNALLOCATED, L.ZERO_PLAIN, L.ZERO_ALLOC)
        if ok:
            off, num = off - head, eng.cluster_size
    if ok:
        m.set_function("qcow2_subcluster_zeroize", CLUSTER_SRC)
        try:
            eng.subcluster_zeroize(off, num, flags & BDRV_REQ_MAY_UNMAP)
            return f"qcow2_subcluster_zeroize {off:#x}+{num:#x}" + (" (may unmap)" if flags & BDRV_REQ_MAY_UNMAP else "")
        except Qcow2Error as e:
            if e.errno != -E.ENOTSUP:
                raise
    num = min(num, MAX_BOUNCE_BUFFER)
    co.update(phase="write", wphase="alloc", pos=off, remaining=num, qoff=0, pieces=[], link_i=0,
              zero=True)
    return f"{off:#x}+{num:#x} cannot become zero clusters (-ENOTSUP): write a zero buffer instead"


def _close_phase(m, bid: int, co: dict) -> str:
    m.set_function("qcow2_inactivate", SRC)
    m.fmt.engine.inactivate()
    co["phase"] = "done"
    return "qcow2_inactivate: flush the L2 and refcount caches, clear the dirty bit"


PHASES = {"write": _write_phase, "read": _read_phase, "flush": _flush_phase,
          "discard": _discard_phase, "write_zeroes": _zeroes_phase, "close": _close_phase}


# -- executing the plan --------------------------------------------------------------------------------

@handler("qcow2.io", "qcow2", "bdrv_pwrite", SRC)
def io(m, bid: int) -> str:
    """Issue the next planned host I/O (or do a guest-memory-only item at once)."""
    f = m.fmt
    co = f.cos[bid]
    item = co["plan"][co["pi"]]
    _plan_frame(m, co, item)
    op = item["op"]
    if op == "guest_zero":
        for gpa, ln in item["iov"]:
            m.mem.write(gpa, bytes(ln))
        return _next_item(m, bid, co, f"{item['what']}: {item['length']} zero bytes into guest RAM")
    if op == "flush" and (m.block.no_flush or m.block.flushed_gen == m.block.write_gen):
        why = "cache=unsafe" if m.block.no_flush else "nothing written since the last flush"
        return _next_item(m, bid, co, f"{item['what']}: no fdatasync ({why})")
    if op == "flush":
        item["gen"] = m.block.write_gen
    lat = m.latency.cost({"guest_write": "write", "write": "write", "flush": "flush",
                          "discard": "discard", "write_zeroes": "write_zeroes"}.get(op, "read"),
                         item.get("length", 0), m.rand())
    m.sim.at(lat, "qcow2.worker", (bid,))
    return f"{item['what']} -> thread pool ({lat} ns); coroutine yields"


def _next_item(m, bid: int, co: dict, detail: str) -> str:
    m.fmt.engine.executed(co["plan"][co["pi"]])
    co["pi"] += 1
    m.sim.cont("qcow2.io" if co["pi"] < len(co["plan"]) else "qcow2.compute", (bid,))
    return detail


@handler("qcow2.worker", "file", "handle_aiocb_rw", "block/file-posix.c")
def worker(m, bid: int) -> str:
    """A thread-pool worker runs one planned host I/O on the image (or the backing file)."""
    co = m.fmt.cos[bid]
    item = co["plan"][co["pi"]]
    op = item["op"]
    m.set_function(WORKER_FN[op])
    fault_op = {"guest_write": "write", "guest_read": "read", "cow_read": "read",
                "compressed_read": "read", "backing_read": "read"}.get(op, op)
    err = _fault(m, fault_op, item["offset"], max(item.get("length", 0), 1))
    detail = ""
    if err:
        co["io_ret"] = -err
        detail = f"{item['what']}: injected error {ERRNO_NAMES.get(err, err)}"
    else:
        try:
            detail = _run(m, item)
            co["io_ret"] = 0
        except OSError as e:
            co["io_ret"] = -(e.errno or E.EIO)
            detail = f"{item['what']} failed: {e.strerror}"
        except Qcow2Error as e:
            co["io_ret"] = e.errno
            detail = f"{item['what']} failed: {e}"
    m.sim.post("qemu", "qcow2.io_done", (bid,))
    return detail


def _run(m, item: dict) -> str:
    f = m.hostfile
    op, off, n = item["op"], item["offset"], item.get("length", 0)
    if op in ("write", "guest_write"):
        if op == "write":
            data = item["data"]
        else:
            data = b"".join(m.mem.read(p[1], p[2]) if p[0] == "ram" else
                            (bytes(p[1]) if p[0] == "zero" else p[1]) for p in item["parts"])
        old = f.pread(off, len(data))
        f.pwrite(off, data)
        m.log.add(("file", off, old, data))
        return f"pwrite {len(data)} bytes at host {off:#x}: {item['what']}"
    if op in ("read", "cow_read"):
        m.log.add(("file-read", off, n))
        return f"pread {n} bytes at {off:#x}: {item['what']}"
    if op == "guest_read":
        data = f.pread(off, n)
        m.log.add(("file-read", off, n))
        _ram_write_iov(m, item["iov"], data)
        return f"preadv {n} bytes at host {off:#x} into guest RAM"
    if op == "backing_read":
        _ram_write_iov(m, item["iov"], _backing_read(m, off, n))
        return f"{n} bytes of the backing file at {off:#x} into guest RAM"
    if op == "compressed_read":
        m.log.add(("file-read", off, n))
        cur = iov_size(item["iov"])
        _ram_write_iov(m, item["iov"], _decompress(m, item["entry"], item["guest"], cur, f.pread))
        return f"pread {n} compressed bytes at {off:#x}, inflate, copy {cur} bytes to guest RAM"
    if op == "flush":
        f.fdatasync()
        m.log.add(("fsync", f.path))
        return f"fdatasync(image): {item['what']}"
    if op in ("write_zeroes", "discard"):
        end = off + n if op == "write_zeroes" else min(off + n, f.size)
        if end > off:
            old = f.pread(off, end - off)
            new = bytes(end - off)
            if old != new or end > f.size:
                f.write_zeroes(off, end - off)      # (the part past EOF is not written)
                m.log.add(("file", off, old, new))
        return f"{'fallocate(ZERO_RANGE)' if op == 'write_zeroes' else 'fallocate(PUNCH_HOLE)'} " \
               f"{off:#x}+{n:#x}: {item['what']}"
    raise AssertionError(op)


@handler("qcow2.io_done", "qcow2", "bdrv_pwrite", SRC)
def io_done(m, bid: int) -> str:
    """The I/O completed: the coroutine re-enters; errors end the request."""
    co = m.fmt.cos[bid]
    item = co["plan"][co["pi"]]
    _plan_frame(m, co, item)
    ret = co.pop("io_ret")
    op = item["op"]
    if ret == 0:
        if op in ("write", "guest_write", "write_zeroes", "discard"):
            m.block.write_gen += 1
        if op == "flush":
            m.block.flushed_gen = item["gen"]
        return _next_item(m, bid, co, f"{item['what']}: done")
    eng = m.fmt.engine
    eng.pending = []
    co["ret"] = ret
    if op == "guest_write" and "piece" in item:
        co["pieces"][item["piece"]]["failed"] = True
        co["remaining"] = 0
        co["plan"] = []
        co["wphase"] = "link"
        m.sim.cont("qcow2.compute", (bid,))
        return f"{item['what']}: {_errname(ret)}: the data write failed, the allocation will be undone"
    eng.drv_gone = True
    co["plan"] = []
    co["phase"] = "done"
    m.log.add(("error", f"qcow2 metadata I/O failed ({_errname(ret)}): the node is unusable", "qcow2"))
    m.sim.cont("qcow2.compute", (bid,))
    return (f"{item['what']}: {_errname(ret)}: a metadata update failed; the in-memory metadata may "
            "be ahead of the image, so the qcow2 node stops serving I/O")


@handler("qcow2.open", "qcow2", "qcow2_do_open", SRC)
def open_(m) -> str:
    """The read/write fix-ups of opening the image, before the guest runs."""
    f = m.fmt
    if not f.open_plan:
        return "image opened; nothing to fix"
    f.cos[0] = {"op": "open", "phase": "done", "plan": f.open_plan, "pi": 0, "ret": 0}
    f.open_plan = []
    f.lock_owner = 0
    m.sim.cont("qcow2.io", (0,))
    return "; ".join(f.open_notes) or "opening the image"


@handler("qcow2.close", "qcow2", "qcow2_inactivate", SRC)
def close(m) -> str:
    """bdrv_close at the end of the run: write back the caches and mark the image clean."""
    f = m.fmt
    f.cos[0] = {"op": "close", "phase": "start", "plan": [], "pi": 0, "ret": 0}
    if f.engine.drv_gone or f.engine.read_only:
        f.cos.pop(0)
        return "nothing to write back (node unusable or read-only)"
    if f.lock_owner is not None:
        f.lock_queue.append(0)
        return "wait for s->lock"
    f.lock_owner = 0
    m.sim.cont("qcow2.compute", (0,))
    return "closing the image"
