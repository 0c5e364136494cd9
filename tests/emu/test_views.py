"""emu.views against an independent decode of guest RAM (tests/specdecode.py) and the state.

At every step of whole runs (article.wl and mixed.wl, qcow2 and raw, with INDIRECT_DESC and
EVENT_IDX on and off, random small workloads and queue sizes) the descriptor table, the
rings and the request list must agree with what the virtio spec says the bytes in guest RAM
mean, with the driver's free list, and with each other.  The request "stage" of every
request must move through the stack in order.
"""
from __future__ import annotations

import os
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu import views
from emu.block.qcow2.create import create_qcow2
from emu.session import Session
from tests import specdecode as S
from tests.conftest import build, make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE_QCOW2 = os.path.join(SAMPLES, "article.qcow2")
MiB = 1 << 20


def workload(name: str) -> str:
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


def new_session(image: str, text: str, **cfg) -> Session:
    return Session(build(image, text, **cfg), image, "test.wl")


def close(s: Session) -> None:
    s.m.hostfile.close()


# -- independent facts from the virtio spec (5.2.6 request types, 2.1 status bits) ----------------

TYPE_VALUE = {"IN": 0, "OUT": 1, "FLUSH": 4, "GET_ID": 8, "DISCARD": 11, "WRITE_ZEROES": 13}
STATUS_BITS = {"ACKNOWLEDGE": 1, "DRIVER": 2, "DRIVER_OK": 4, "FEATURES_OK": 8,
               "DEVICE_NEEDS_RESET": 64, "FAILED": 128}
FLAG_NAME = {S.NEXT: "NEXT", S.WRITE: "WRITE", S.INDIRECT: "INDIRECT"}


def ring_chain(ram, table: int, head: int, qsize: int) -> list[int]:
    """Indices of the ring descriptors of the chain at head (the head alone if indirect)."""
    out = [head]
    d = S.desc(ram, table, head)
    while d.flags & S.NEXT and not d.flags & S.INDIRECT:
        assert len(out) <= qsize, f"chain from {head} loops"
        out.append(d.next)
        d = S.desc(ram, table, d.next)
    return out


def merged(segs) -> list[tuple[int, int]]:
    """(addr, len) segments with physically contiguous neighbours joined."""
    out: list[list[int]] = []
    for a, n in segs:
        if out and out[-1][0] + out[-1][1] == a:
            out[-1][1] += n
        else:
            out.append([a, n])
    return [tuple(s) for s in out]


def window(ring: list[int], start: int, end: int, qsize: int) -> list[int]:
    """The entries of a ring between two free-running 16-bit indices."""
    n = (end - start) & 0xFFFF
    assert n <= qsize, f"{n} entries between index {start} and {end} in a ring of {qsize}"
    return [ring[(start + k) % qsize] for k in range(n)]


# -- the per-step check ------------------------------------------------------------------------------

def check_views(m) -> None:
    """Every view of machine m agrees with the spec decode of guest RAM and with the state."""
    vq = m.guest.vq
    q = m.vdev.vqs[0]
    descs = views.descriptors(m)
    rings = views.rings(m)
    reqs = views.requests(m)
    ids = [r.id for r in reqs]
    assert ids == sorted(set(ids)), "request ids are unique and sorted"
    for r in reqs:
        assert (r.stage == "done") == (r.status != "")
        if r.stage == "done":
            assert r.status in ("OK", "IOERR", "NOTSUPP")
    if not vq.num:
        assert descs == [] and rings is None
        assert all(r.stage in ("done", "plugged", "queued") for r in reqs)
        return
    assert rings is not None and len(descs) == vq.num == rings.size
    if not q.desc:          # the driver has its ring, the device not yet (probe in progress)
        return
    ram = m.mem.ram
    n = q.num
    assert (rings.size, rings.desc, rings.avail, rings.used) == (n, q.desc, q.avail, q.used), \
        "the rings view shows the addresses the device was given"

    # descriptor table: every entry decoded from RAM
    table = [S.desc(ram, q.desc, i) for i in range(n)]
    assert [(d.index, d.addr, d.len, d.flags, d.next) for d in descs] == \
        [(i, t.addr, t.len, t.flags, t.next) for i, t in enumerate(table)]
    for flags, shown in {(d.flags, d.flag_names) for d in descs}:
        names = set(shown.split("|"))
        for bit, name in FLAG_NAME.items():
            assert (name in names) == bool(flags & bit), (flags, shown)

    # free list: membership is exactly a walk of the driver's free list
    walk, i = [], vq.free_head
    for _ in range(vq.num_free):
        assert 0 <= i < n and i not in walk, "the free list is a simple list"
        walk.append(i)
        i = vq.extra_next[i]
    free = {d.index for d in descs if d.free}
    assert free == set(walk) and len(free) == rings.num_free == vq.num_free

    # chains on the ring: the request owning each head, decoded from RAM
    av = S.avail(ram, q.avail, n)
    us = S.used(ram, q.used, n)
    by_id = {r.id: r for r in reqs}
    owned: dict[int, int] = {}
    for rid, rq in m.guest.blkmq.rqs.items():
        head = rq.get("head")
        if head is None or vq.desc_data[head] != rid:
            continue                       # not on the ring (yet, or any more: detached)
        rv = by_id[rid]
        assert rv.head == head
        idx = ring_chain(ram, q.desc, head, n)
        for k in idx:
            assert k not in owned, f"descriptor {k} in two chains"
            owned[k] = rid
        chain = S.chain(ram, q.desc, head, n)
        if S.desc(ram, q.desc, head).flags & S.INDIRECT:
            hd = descs[head]
            assert hd.role == "indirect table" and hd.owner == rid
            assert len(idx) == 1 and hd.len == 16 * len(chain)
            assert [(e.addr, e.len, e.flags, e.next) for e in hd.table] == \
                [(c.addr, c.len, c.flags, c.next) for c in chain]
            roles = [e.role for e in hd.table]
            assert all(e.owner == rid for e in hd.table)
        else:
            roles = [descs[k].role for k in idx]
            assert all(descs[k].owner == rid for k in idx)
            assert descs[head].table == ()
        check_chain(ram, rv, roles, chain)

    # nothing else is owned, and the free list and the chains partition the table
    for d in descs:
        if d.index not in owned:
            assert d.owner is None and d.role == "" and d.table == (), \
                f"descriptor {d.index} is shown as {d.role!r} of request {d.owner} but no chain on the ring holds it"
    assert not (free & set(owned)), f"descriptors both free and in a chain: {sorted(free & set(owned))}"
    assert free | set(owned) == set(range(n)), \
        f"descriptors neither free nor in a chain: {sorted(set(range(n)) - free - set(owned))}"

    check_rings(m, rings, av, us)
    check_stages(m, reqs, rings, av, us)


def check_chain(ram, rv, roles: list[str], chain: list) -> None:
    """Roles cover header/data/status, and the bytes say the same request (spec 5.2.6)."""
    assert len(roles) == len(chain) >= 2
    assert roles[0] == "request header" and roles[-1] == "status", roles
    middle = roles[1:-1]
    hdr, status, data = chain[0], chain[-1], chain[1:-1]
    assert hdr.len == 16 and not hdr.flags & S.WRITE
    assert status.len == 1 and status.flags & S.WRITE and not status.flags & S.NEXT
    out = S.blk_outhdr(bytes(ram[hdr.addr:hdr.addr + 16]))
    assert out["type"] == TYPE_VALUE[rv.type], (rv, out)
    if rv.type in ("IN", "OUT"):
        assert out["sector"] == rv.sector
    if rv.type == "FLUSH":
        assert middle == []
    elif rv.type in ("DISCARD", "WRITE_ZEROES"):
        assert middle == ["range"] and data[0].len == 16 and not data[0].flags & S.WRITE
        sector, nsect, _flags = struct.unpack_from("<QII", ram, data[0].addr)
        assert (sector, nsect) == (rv.sector, rv.length // 512)
    else:
        assert middle and set(middle) == {"data"}, roles
        device_writes = rv.type in ("IN", "GET_ID")
        assert all(bool(d.flags & S.WRITE) == device_writes for d in data)
        assert merged((d.addr, d.len) for d in data) == merged(rv.data)
        assert sum(d.len for d in data) == rv.length


def check_rings(m, rings, av: dict, us: dict) -> None:
    n = rings.size
    assert (rings.avail_flags, rings.avail_idx, rings.used_event) == \
        (av["flags"], av["idx"], av["used_event"])
    assert rings.avail_ring == tuple(enumerate(av["ring"]))
    assert (rings.used_flags, rings.used_idx_mem, rings.avail_event) == \
        (us["flags"], us["idx"], us["avail_event"])
    assert rings.used_ring == tuple((s, i, ln) for s, (i, ln) in enumerate(us["ring"]))
    # the two ends of the queue, as the driver and the device keep them
    vq, q = m.guest.vq, m.vdev.vqs[0]
    assert (rings.last_used_idx, rings.avail_idx_shadow, rings.free_head) == \
        (vq.last_used_idx, vq.avail_idx_shadow, vq.free_head)
    assert (rings.last_avail_idx, rings.shadow_avail_idx, rings.used_idx, rings.signalled_used,
            rings.signalled_used_valid, rings.inuse) == \
        (q.last_avail_idx, q.shadow_avail_idx, q.used_idx, q.signalled_used,
         q.signalled_used_valid, q.inuse)
    # what the spec and the two implementations imply between them
    assert rings.avail_idx == rings.avail_idx_shadow, "the driver publishes its shadow index"
    assert rings.used_idx_mem == rings.used_idx, "the device publishes used_idx"
    assert rings.inuse == (rings.last_avail_idx - rings.used_idx) & 0xFFFF
    assert (rings.avail_idx - rings.last_avail_idx) & 0xFFFF <= n
    assert (rings.used_idx - rings.last_used_idx) & 0xFFFF <= n
    assert (rings.avail_idx - rings.shadow_avail_idx) & 0xFFFF <= n


def check_stages(m, reqs, rings, av: dict, us: dict) -> None:
    """A request's stage says where its head is: avail window, device, used window, reclaimed."""
    n = rings.size
    unpopped = window(av["ring"], rings.last_avail_idx, rings.avail_idx, n)
    in_used = [i for i, _ln in window(us["ring"], rings.last_used_idx, rings.used_idx_mem, n)]
    live = [r for r in reqs if r.stage != "done"]
    heads = {r.head: r for r in live if r.head is not None and r.stage not in STAGE_GROUP_0}
    for r in live:
        assert stage_rank(r.stage) is not None, f"unknown stage {r.stage!r}"
        if r.stage in STAGE_GROUP_0:
            assert r.head is None
        elif r.stage == "avail: not popped":
            assert r.head in unpopped
        elif r.stage == "used: awaiting irq":
            assert r.head in in_used
        elif r.stage == "guest: completing":
            assert m.guest.vq.desc_data[r.head] == -1, "virtqueue_get_buf detached the chain"
            assert r.head not in unpopped and r.head not in in_used
        elif r.stage.startswith(("device: ", "host: ")):
            assert r.head not in unpopped and r.head not in in_used
    # and the other way round: every head in a window belongs to a request in that stage
    for h in unpopped:
        assert heads[h].stage == "avail: not popped"
    for h in in_used:
        assert heads[h].stage == "used: awaiting irq"
    on_device = sum(1 for r in live if r.stage.startswith(("device: ", "host: ")))
    assert on_device == rings.inuse, "requests the device holds = QEMU's inuse"


# -- stage order -----------------------------------------------------------------------------------------

STAGE_GROUP_0 = ("plugged", "queued", "requeued")
STAGE_ORDER = (STAGE_GROUP_0, ("driver: ",), ("avail: ",), ("device: popped", "device: merging"),
               ("host: ",), ("device: completing",), ("used: ",), ("guest: ",), ("done",))


def stage_rank(stage: str) -> int | None:
    for rank, prefixes in enumerate(STAGE_ORDER):
        if stage in prefixes or any(p.endswith(" ") and stage.startswith(p) for p in prefixes):
            return rank
    return None


def check_order(history: dict) -> None:
    """Each request's stages never go back down the stack (a requeue goes back to blk-mq only
    from the driver), and every request that reached the driver passed every hop."""
    for rid, stages in history.items():
        ranks = [stage_rank(s) for s in stages]
        for (a, ra), (b, rb) in zip(zip(stages, ranks), zip(stages[1:], ranks[1:])):
            if rb < ra:
                assert (a, b) == ("driver: adding", "requeued"), \
                    f"request {rid} went back from {a!r} to {b!r}: {stages}"
        if ranks[-1] == len(STAGE_ORDER) - 1 and 1 in ranks:
            # every hop is visible between two steps: publish, pop, push, reclaim, end
            for hop in ("driver: ", "avail: ", "device: ", "used: ", "guest: ", "done"):
                assert any(s.startswith(hop) for s in stages), f"request {rid} skipped {hop!r}: {stages}"


_MERGED = re.compile(r"request (\d+) merged into queued request (\d+)")


def run_checked(s: Session, limit: int = 200_000, merged: dict | None = None) -> dict:
    """Single-step the whole run, checking every view after every step; stage history by id.
    With `merged`, also collect {request: request it was merged into} (mq-deadline's insert
    merge frees a request whose bios join a queued one: dd_insert_request)."""
    history: dict[int, list[str]] = {}

    def note():
        check_views(s.m)
        for r in views.requests(s.m):
            h = history.setdefault(r.id, [])
            if not h or h[-1] != r.stage:
                h.append(r.stage)

    note()
    for _ in range(limit):
        stop = s.step()
        assert stop.reason in ("step", "end"), stop
        note()
        if merged is not None and s.last is not None:
            for rid, into in _MERGED.findall(s.last.detail):
                merged[int(rid)] = int(into)
        if stop.reason == "end":
            break
    else:
        raise AssertionError("run did not end")
    check_order(history)
    return history


# -- the sample workloads, every config -------------------------------------------------------------------

# the default config with the default queue; the other option sets with a smaller queue (the
# options do not depend on its size, and a check of every step reads the whole table)
CONFIGS = [dict(indirect=True, event_idx=True)] + \
    [dict(indirect=i, event_idx=e, queue_size=32) for i, e in ((True, False), (False, True), (False, False))]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"indirect={c['indirect']},event_idx={c['event_idx']}")
@pytest.mark.parametrize("wl", ["article.wl", "mixed.wl"])
def test_views_agree_with_ram_at_every_step_qcow2(wl, cfg):
    s = new_session(ARTICLE_QCOW2, workload(wl), **cfg)
    hist = run_checked(s)
    n_requests = len(hist)
    assert n_requests >= 5
    assert all(stages[-1] == "done" for stages in hist.values()), hist
    negotiated = views.device(s.m).features_negotiated
    assert ("VIRTIO_RING_F_INDIRECT_DESC" in negotiated) == cfg["indirect"]
    assert ("VIRTIO_RING_F_EVENT_IDX" in negotiated) == cfg["event_idx"]
    close(s)


@pytest.mark.parametrize("cfg", CONFIGS[:1] + CONFIGS[3:], ids=["on", "off"])
def test_views_agree_with_ram_at_every_step_raw(tmp_path, cfg):
    img = make_image(tmp_path / "disk.raw", 16 * MiB)
    s = new_session(img, workload("mixed.wl"), **cfg)
    hist = run_checked(s)
    assert all(stages[-1] == "done" for stages in hist.values())
    close(s)


def test_indirect_option_decides_the_ring_layout():
    """With INDIRECT_DESC a multi-buffer request takes one ring descriptor; without, a chain."""
    seen = {}
    for indirect in (True, False):
        s = new_session(ARTICLE_QCOW2, workload("article.wl"), indirect=indirect)
        while not any(r.stage == "avail: not popped" for r in s.requests()):
            assert s.step().reason == "step"
        d = s.descriptors()
        used = [x for x in d if x.owner is not None]
        seen[indirect] = used
        close(s)
    assert len(seen[True]) == 1 and seen[True][0].flags & S.INDIRECT
    assert [e.role for e in seen[True][0].table] == ["request header", "data", "status"]
    assert len(seen[False]) == 3 and not any(x.flags & S.INDIRECT for x in seen[False])
    assert sorted(x.role for x in seen[False]) == ["data", "request header", "status"]


# -- random workloads, small queues (ring wrap-around, full ring, requeue) ----------------------------------

OFFSETS = st.integers(0, 15 * 256).map(lambda k: k * 4096)


@st.composite
def workloads(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["write", "write", "read", "flush", "discard",
                                     "write-zeroes", "get-id", "wait"]))
        if kind in ("flush", "get-id", "wait"):
            lines.append(kind)
            continue
        off = draw(OFFSETS)
        length = draw(st.sampled_from([512, 4096, 8192, 65536, 69632]))
        line = f"{kind} {off} {length}"
        if kind == "write-zeroes" and draw(st.booleans()):
            line += " unmap"
        lines.append(line)
    lines.append("wait")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def base_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    raw = make_image(d / "disk.raw", 16 * MiB)
    qcow = str(d / "disk.qcow2")
    create_qcow2(qcow, 16 * MiB)
    return {"raw": raw, "qcow2": qcow}


def test_a_request_merged_at_insert_completes_with_the_one_it_joined(base_images):
    """Found by the random run below: write 0 4k, write 0 512, write 4096 512 leave the plug
    together; mq-deadline queues requests 1 and 2 and merges 3 (sectors 8..) into 1 (sectors
    0..7), freeing it (dd_insert_request -> blk_mq_sched_try_insert_merge).  Request 3 leaves
    the views before 'done'; request 1 completes its I/O."""
    s = new_session(base_images["raw"], "write 0 4096\nwrite 0 512\nwrite 4096 512\nwait\n",
                    queue_size=8, indirect=False, event_idx=False)
    try:
        merged: dict = {}
        hist = run_checked(s, merged=merged)
        assert merged == {3: 1}
        assert hist[1][-1] == hist[2][-1] == "done" and hist[3] == ["plugged"], hist
    finally:
        close(s)


RANDOM_RUN = given(text=workloads(), fmt=st.sampled_from(["raw", "qcow2"]),
                   qsize=st.sampled_from([4, 8, 16, 64]), indirect=st.booleans(),
                   event_idx=st.booleans())


def _random_run(base_images, text, fmt, qsize, indirect, event_idx):
    s = new_session(base_images[fmt], text, queue_size=qsize, indirect=indirect, event_idx=event_idx)
    try:
        merged: dict = {}
        hist = run_checked(s, merged=merged)
        for rid, stages in hist.items():
            if stages[-1] != "done":        # merged away before dispatch, its I/O done by another
                assert rid in merged and stages[-1] in ("plugged", "queued"), (rid, hist, merged)
                assert hist[merged[rid]][-1] == "done", (rid, hist, merged)
    finally:
        close(s)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@RANDOM_RUN
def test_views_agree_with_ram_on_random_workloads(base_images, text, fmt, qsize, indirect, event_idx):
    _random_run(base_images, text, fmt, qsize, indirect, event_idx)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@RANDOM_RUN
def test_views_agree_with_ram_on_many_random_workloads(base_images, text, fmt, qsize, indirect, event_idx):
    _random_run(base_images, text, fmt, qsize, indirect, event_idx)


# -- the other views -----------------------------------------------------------------------------------------

def test_device_view_matches_the_spec_bits_and_the_image():
    s = new_session(ARTICLE_QCOW2, workload("article.wl"))
    before = views.device(s.m)
    assert before.status == 0 and before.status_names == () and before.features_negotiated == ()
    s.cont()
    dv = s.device()
    assert set(dv.status_names) == {k for k, v in STATUS_BITS.items() if dv.status & v}
    assert dv.status & STATUS_BITS["DRIVER_OK"] and not dv.broken and dv.error is None
    assert set(dv.features_negotiated) <= set(dv.features_offered)
    cfg = dict(dv.config)
    with open(ARTICLE_QCOW2, "rb") as f:
        head = f.read(32)
    assert cfg["capacity"] == struct.unpack_from(">Q", head, 24)[0] // 512   # qcow2 header size
    regs = dict(dv.queue_regs)
    r = s.rings()
    assert (regs["queue_size"], regs["queue_desc"], regs["queue_driver"], regs["queue_device"]) == \
        (r.size, r.desc, r.avail, r.used)
    counters = dict(dv.counters)
    assert counters["requests"] == counters["completed"] == r.used_idx
    done = [x for x in s.requests() if x.stage == "done"]
    assert len(done) == r.used_idx
    close(s)


def test_host_map_and_guest_to_host_agree(tmp_path):
    """Every qcow2 data range of the host map is where guest_to_host says its guest bytes are."""
    s = new_session(ARTICLE_QCOW2, workload("mixed.wl"))
    s.cont()
    hm = s.host_map()
    size = s.host_size()
    prev_end = 0
    for r in hm:
        assert r.host >= prev_end and r.length > 0 and r.host + r.length <= size
        prev_end = r.host + r.length
    data = [r for r in hm if r.kind == "data" and r.guest is not None]
    assert data, hm
    for r in data:
        assert s.guest_to_host(r.guest, r.length) == [(r.host, r.length)]
    close(s)
    img = make_image(tmp_path / "d.raw", 4 * MiB)
    s = new_session(img, "write 0 4k\nwait\n")
    assert [(r.host, r.length, r.kind, r.guest) for r in s.host_map()] == [(0, 4 * MiB, "data", 0)]
    assert s.guest_to_host(12345, 678) == [(12345, 678)]
    close(s)


def test_step_view_reports_the_effects():
    s = new_session(ARTICLE_QCOW2, workload("article.wl"))
    sides = set()
    while s.step().reason == "step":
        rec = s.last
        sv = s.last_step()
        sides.add(sv.side)
        assert (sv.n, sv.time_ns, sv.layer, sv.function, sv.source, sv.detail) == \
            (rec.n, rec.time_ns, rec.layer, rec.function, rec.source, rec.detail)
        ram = [(e[1], len(e[3])) for e in rec.effects if e[0] == "ram"]
        assert list(sv.ram_writes) == ram
        host = [(e[1], len(e[3])) for e in rec.effects if e[0] == "file"]
        assert list(sv.host_writes) == host
        for off, n in sv.host_writes:       # the log's new bytes are in the image now or later
            assert 0 <= off and off + n <= s.host_size()
    assert sides == {"guest", "host"}
    close(s)
