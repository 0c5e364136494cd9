"""QEMU's `log` trace backend output (-trace with -d trace:...) of hw/block and hw/virtio trace-events."""
from __future__ import annotations

import re
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Iterator

from .importer import Reader, Rec, TraceImportError

# A line is `[PREFIX]NAME ARGS`. PREFIX is there with -msg timestamp=on: QEMU <= 10.0's log
# backend printed "PID@SEC.USEC:" (scripts/tracetool/backend/log.py before commit 012842c075);
# since QEMU 10.1 qemu_log() prints g_date_time_format_iso8601() and a space (util/log.c).
LINE = re.compile(r"^(?:(\d+)@(\d+)\.(\d{6}):|(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?"
                  r"(?:Z|[+-]\d\d(?::?\d\d)?)) )?([a-z_][a-z0-9_]*)(?: (.*))?$")
P = r"(0x[0-9a-f]+|\(nil\))"     # %p as glibc prints it
D = r"(-?\d+)"                   # %d
U = r"(\d+)"                     # %u, %zu, PRIu64

# The format strings, from QEMU 10.2's trace-events files:
ARGS = {
    # hw/block/trace-events: virtio_blk_req_complete(void *vdev, void *req, int status)
    #   "vdev %p req %p status %d"
    "virtio_blk_req_complete": re.compile(rf"^vdev {P} req {P} status {D}$"),
    # virtio_blk_rw_complete(void *vdev, void *req, int ret) "vdev %p req %p ret %d"
    "virtio_blk_rw_complete": re.compile(rf"^vdev {P} req {P} ret {D}$"),
    # virtio_blk_handle_write(void *vdev, void *req, uint64_t sector, size_t nsectors)
    #   "vdev %p req %p sector %"PRIu64" nsectors %zu"   (and the same for _read)
    "virtio_blk_handle_write": re.compile(rf"^vdev {P} req {P} sector {U} nsectors {U}$"),
    "virtio_blk_handle_read": re.compile(rf"^vdev {P} req {P} sector {U} nsectors {U}$"),
    # virtio_blk_handle_zone_report/_mgmt/_reset_all, "vdev %p req %p ..."; _append
    #   "vdev %p req %p, append sector 0x%" PRIx64
    "virtio_blk_handle_zone_report": re.compile(rf"^vdev {P} req {P},? .*$"),
    "virtio_blk_handle_zone_mgmt": re.compile(rf"^vdev {P} req {P},? .*$"),
    "virtio_blk_handle_zone_reset_all": re.compile(rf"^vdev {P} req {P},? .*$"),
    "virtio_blk_handle_zone_append": re.compile(rf"^vdev {P} req {P},? .*$"),
    # hw/virtio/trace-events: virtqueue_pop(void *vq, void *elem, unsigned int in_num,
    #   unsigned int out_num) "vq %p elem %p in_num %u out_num %u"
    "virtqueue_pop": re.compile(rf"^vq {P} elem {P} in_num {U} out_num {U}$"),
    # virtqueue_fill(void *vq, const void *elem, unsigned int len, unsigned int idx)
    #   "vq %p elem %p len %u idx %u"
    "virtqueue_fill": re.compile(rf"^vq {P} elem {P} len {U} idx {U}$"),
    # virtio_queue_notify(void *vdev, int n, void *vq) "vdev %p n %d vq %p"
    "virtio_queue_notify": re.compile(rf"^vdev {P} n {D} vq {P}$"),
}
ZONE = ("virtio_blk_handle_zone_report", "virtio_blk_handle_zone_mgmt",
        "virtio_blk_handle_zone_reset_all", "virtio_blk_handle_zone_append")
BLK_REQ = ("virtio_blk_req_complete", "virtio_blk_rw_complete", "virtio_blk_handle_write",
           "virtio_blk_handle_read") + ZONE
TRACK_LIMIT = 1 << 16          # popped elements remembered at most (in flight: far fewer)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _iso_ns(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    d = dt - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


class _Pending:
    __slots__ = ("vq", "elem", "in_num", "out_num", "time_ns", "lineno", "raw")

    def __init__(self, vq, elem, in_num, out_num, time_ns, lineno, raw):
        self.vq, self.elem, self.in_num, self.out_num = vq, elem, in_num, out_num
        self.time_ns, self.lineno, self.raw = time_ns, lineno, raw


class QemuLogReader(Reader):
    """Rebuilds the guest's requests of one virtio-blk device, in the order QEMU popped them.

    virtio_blk_handle_read/_write (sector, nsectors) give reads and writes. A request popped
    (virtqueue_pop: the element is the VirtIOBlockReq, its first member) and completed
    (virtio_blk_req_complete, virtqueue_fill) or followed by the next pop of its queue with no
    handle_read/_write in between is another type; its shape tells which: 1 out + 1 in
    buffer = FLUSH, 1 out + 2 in = GET_ID, 2+ out + 1 in = DISCARD or WRITE_ZEROES (their
    ranges are in no trace event: counted and skipped). Without virtqueue_pop in the log, a
    completion with no handle_read/_write is taken to be a FLUSH, placed at its completion
    (counted in a note). Pending state is per request in flight, bounded.
    """
    name = "qemu-log"
    label = "QEMU trace log"
    two_pass = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.vdev: str | None = None
        self.vq_vdev: dict[str, str] = {}
        self.pops_traced = False

    def _parse(self, lineno: int, text: str, strict: bool):
        """(name, args match, time_ns) of an event we read; None for any other line."""
        m = LINE.match(text)
        if not m:
            return None
        name = m.group(5)
        pat = ARGS.get(name)
        if pat is None:
            return None
        a = pat.match(m.group(6) or "")
        if a is None:
            if strict:
                self.ctx.bad(lineno, text, f"{name}: arguments do not match QEMU's format "
                             "(hw/block/trace-events, hw/virtio/trace-events)")
            return None
        t = None
        if m.group(1) is not None:
            t = (int(m.group(2)) * 1_000_000 + int(m.group(3))) * 1000
        elif m.group(4) is not None:
            try:
                t = _iso_ns(m.group(4))
            except ValueError:
                if strict:
                    self.ctx.bad(lineno, text, f"bad timestamp {m.group(4)!r}")
                return None
        return name, a, t

    def scan(self) -> None:
        vdevs: list[str] = []
        seen: set = set()
        notify: dict[str, str] = {}          # vq -> vdev, for every device
        popped: OrderedDict = OrderedDict()  # elem -> vq, popped and not yet filled
        elem_vq_vdev: dict[str, str] = {}    # vq -> vdev learnt from a blk event on its element
        pop_vqs: set = set()                 # queues with virtqueue_pop events
        for lineno, text in self.ctx.lines(scan=True):
            ev = self._parse(lineno, text, strict=False)
            if ev is None:
                continue
            name, a, _t = ev
            if name in BLK_REQ:
                vdev, req = a.group(1), a.group(2)
                if vdev not in seen:
                    seen.add(vdev)
                    vdevs.append(vdev)
                vq = popped.get(req)
                if vq is not None:
                    elem_vq_vdev.setdefault(vq, vdev)
            elif name == "virtqueue_pop":
                pop_vqs.add(a.group(1))
                popped[a.group(2)] = a.group(1)
                popped.move_to_end(a.group(2))
                if len(popped) > TRACK_LIMIT:
                    popped.popitem(last=False)
            elif name == "virtqueue_fill":
                popped.pop(a.group(2), None)
            elif name == "virtio_queue_notify":
                notify.setdefault(a.group(3), a.group(1))
        for vq, vdev in notify.items():
            if vdev in seen:
                self.vq_vdev.setdefault(vq, vdev)
        for vq, vdev in elem_vq_vdev.items():
            self.vq_vdev.setdefault(vq, vdev)
        if not vdevs:
            raise TraceImportError(
                f"{self.ctx.path}: no virtio_blk_* events (run QEMU with -trace 'virtio_blk_*' "
                "-trace virtqueue_pop -trace virtqueue_fill, and -msg timestamp=on for times)")
        def same_pointer(vdev: str, wanted: str) -> bool:
            try:
                return int(vdev, 16) == int(wanted, 16)
            except ValueError:
                return vdev == wanted
        self.vdev = self.choose("virtio-blk device", "--device VDEV (the vdev pointer)", vdevs,
                                self.ctx.options.device, same_pointer)
        self.pops_traced = any(self.vq_vdev.get(vq) == self.vdev for vq in pop_vqs)

    def _non_rw(self, p: _Pending) -> Rec | None:
        st = self.ctx.stats
        if p.out_num == 1 and p.in_num == 1:
            return Rec("flush", time_ns=p.time_ns, lineno=p.lineno, raw=p.raw)
        if p.out_num == 1 and p.in_num == 2:
            return Rec("get-id", time_ns=p.time_ns, lineno=p.lineno, raw=p.raw)
        if p.out_num >= 2 and p.in_num == 1:
            st.note("discard/write-zeroes requests skipped (no trace event carries their range)")
        else:
            st.note(f"requests of unknown type skipped (in_num {p.in_num}, out_num {p.out_num})")
        return None

    def records(self) -> Iterator[Rec]:
        ctx = self.ctx
        mine = self.vdev
        vq_vdev = self.vq_vdev
        pending: dict[str, _Pending] = {}       # vq -> popped, not yet classified
        elem_vq: dict[str, str] = {}            # elem -> vq of the pending ones
        handled: OrderedDict = OrderedDict()    # reqs classified, awaiting completion
        st = ctx.stats

        def classified(req: str) -> None:
            handled[req] = True
            if len(handled) > TRACK_LIMIT:
                handled.popitem(last=False)

        def take(req: str) -> _Pending | None:
            vq = elem_vq.pop(req, None)
            if vq is None:
                return None
            return pending.pop(vq, None)

        for lineno, text in ctx.lines():
            ev = self._parse(lineno, text, strict=True)
            if ev is None:
                continue
            name, a, t = ev
            if name == "virtqueue_pop":
                vq, elem = a.group(1), a.group(2)
                if vq_vdev.get(vq) != mine:
                    continue
                prev = pending.pop(vq, None)
                if prev is not None:            # its handle_* would have come before this pop
                    elem_vq.pop(prev.elem, None)
                    classified(prev.elem)
                    rec = self._non_rw(prev)
                    if rec is not None:
                        yield rec
                pending[vq] = _Pending(vq, elem, int(a.group(3)), int(a.group(4)), t, lineno, text)
                elem_vq[elem] = vq
                continue
            if name == "virtqueue_fill":
                vq, elem = a.group(1), a.group(2)
                if vq_vdev.get(vq) != mine:
                    continue
                handled.pop(elem, None)
                p = take(elem)
                if p is not None:
                    rec = self._non_rw(p)
                    if rec is not None:
                        yield rec
                continue
            if name == "virtio_queue_notify":
                continue
            vdev, req = a.group(1), a.group(2)
            if vdev != mine:
                continue
            if name in ("virtio_blk_handle_write", "virtio_blk_handle_read"):
                take(req)
                classified(req)
                sector, nsect = int(a.group(3)), int(a.group(4))
                if nsect == 0:
                    st.note("zero-length reads/writes skipped")
                    continue
                op = "write" if name.endswith("write") else "read"
                yield Rec(op, sector * 512, nsect * 512, t, lineno, text)
            elif name in ZONE:
                take(req)
                classified(req)
                st.note("zoned-device requests skipped")
            elif name == "virtio_blk_req_complete":
                if handled.pop(req, None) is not None:
                    continue
                p = take(req)
                if p is not None:
                    rec = self._non_rw(p)
                    if rec is not None:
                        yield rec
                elif not self.pops_traced:
                    st.note("completions without handle_read/_write taken as flushes "
                            "(no virtqueue_pop in the log to tell their type)")
                    yield Rec("flush", time_ns=t, lineno=lineno, raw=text)
                else:
                    st.note("completions of requests popped before the log starts skipped")
            # virtio_blk_rw_complete: a read/write already counted at its handle_* event
        for p in list(pending.values()):         # popped last, the log ends before more
            rec = self._non_rw(p)
            if rec is not None:
                yield rec
