"""Breakpoints, watchpoints and catchpoints checked against independent scans of the run.

The oracles here do not use the Step facts the breakpoints read: descriptors are decoded
from guest RAM with tests/specdecode.py (the spec decoder that imports nothing from emu) at
the steps that model virtqueue_add_split / virtqueue_split_pop / virtqueue_fill, watched
bytes are read before and after each step, request stages come from emu.views.requests().
"""
from __future__ import annotations

import copy
import json
import pathlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu import views
from emu.block.qcow2.create import create_qcow2
from emu.debug import breakpoints as BPM
from emu.debug.breakpoints import (STAGES, BreakpointError, BreakpointTable, parse_breakpoint,
                                   parse_catch, parse_command, parse_watch)
from tests import specdecode as D
from tests.conftest import build, make_image, run_all, run_until

ROOT = pathlib.Path(__file__).resolve().parents[3]
ARTICLE = str(ROOT / "sample_images" / "article.qcow2")
ARTICLE_WL = (ROOT / "sample_images" / "article.wl").read_text()
MIXED_WL = (ROOT / "sample_images" / "mixed.wl").read_text()
RAW_WL = "write 0 64k\nwrite 64k 4k\nread 1M 8k\nflush\nget-id\ndiscard 2M 64k\nwait\nread 0 68k\n"
MiB = 1 << 20


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("bp") / "disk.raw", 16 * MiB)


# configurations: (name, image, workload, config)
def _configs(raw):
    return {
        "article": (ARTICLE, ARTICLE_WL, {}),
        "direct": (raw, RAW_WL, {"indirect": False, "queue_size": 8}),
        "mixed": (ARTICLE, MIXED_WL, {}),
    }


def run_to_hit(m, table, limit=200_000):
    """Step with the table checked after each step; (hit, step) or (None, None) at the end."""
    for _ in range(limit):
        rec = m.step()
        if rec is None:
            return None, None
        hit = table.check(m, rec)
        if hit is not None:
            return hit, rec
    raise AssertionError("no end")


def all_hits(m, table):
    hits = []
    while True:
        hit, _rec = run_to_hit(m, table)
        if hit is None:
            return hits
        hits.append(hit)


def table_with(m, *specs):
    t = BreakpointTable()
    for verb, text in specs:
        t.add(parse_command(verb, text, machine=m), m)
    return t


# -- the descriptor oracle -------------------------------------------------------------------------

def _walk(ram, dbase, head, size):
    """[(slot, table, entry, Desc)] of a chain, decoded from RAM: the ring descriptors, and
    for an indirect head the head then the table entries."""
    d = D.desc(ram, dbase, head)
    out = [(head, None, None, d)]
    if d.flags & D.INDIRECT:
        table, n, i = d.addr, d.len // 16, 0
        for _ in range(n):
            e = D.desc(ram, table, i)
            out.append((None, table, i, e))
            if not e.flags & D.NEXT:
                break
            i = e.next
    else:
        while d.flags & D.NEXT and len(out) <= size:
            i = d.next
            d = D.desc(ram, dbase, i)
            out.append((i, None, None, d))
    return out


def desc_oracle(image, wl, cfg):
    """Every descriptor event of a run: [(step, order, on, slot, table, entry, head, Desc)]."""
    m = build(image, wl, **cfg)
    ram = m.mem.ram
    events, pending = [], []
    while True:
        q = m.vdev.vqs[0]
        before_lai = q.last_avail_idx
        rec = m.step()
        if rec is None:
            break
        dbase, abase, ubase, size = q.desc, q.avail, q.used, q.num
        if rec.function == "virtqueue_add_split":
            seen = []
            for e in rec.effects:
                if e[0] == "ram" and len(e[3]) == 16 and e[1] not in seen:
                    seen.append(e[1])
            for a in seen:
                pending.append((rec.n, a, D.desc(ram, a, 0)))
            if any(e[0] == "ram" and e[1] == abase + 2 and len(e[3]) == 2 for e in rec.effects):
                av = D.avail(ram, abase, size)
                head = av["ring"][(av["idx"] - 1) % size]
                chain = _walk(ram, dbase, head, size)
                where = {(dbase + 16 * s if s is not None else t + 16 * k): (s, t, k)
                         for s, t, k, _d in chain}
                for k, (n, a, d) in enumerate(pending):
                    s, t, ent = where[a]
                    events.append((n, k, "add", s, t, ent, head, d))
                pending = []
        elif rec.function == "virtqueue_split_pop" and q.last_avail_idx != before_lai:
            head = D.avail(ram, abase, size)["ring"][before_lai % size]
            for k, (s, t, ent, d) in enumerate(_walk(ram, dbase, head, size)):
                events.append((rec.n, k, "pop", s, t, ent, head, d))
        elif rec.function == "virtqueue_fill":
            for e in rec.effects:
                if e[0] == "ram" and len(e[3]) == 8 and ubase + 4 <= e[1] < ubase + 4 + 8 * size:
                    head = struct.unpack_from("<I", e[3])[0]
                    for k, (s, t, ent, d) in enumerate(_walk(ram, dbase, head, size)):
                        events.append((rec.n, k, "used", s, t, ent, head, d))
    events.sort(key=lambda ev: (ev[0], ev[1]))
    return events


_ORACLES: dict = {}


def oracle_for(name, raw):
    if name not in _ORACLES:
        image, wl, cfg = _configs(raw)[name]
        _ORACLES[name] = desc_oracle(image, wl, cfg)
    return _ORACLES[name]


def _spec_text(opts):
    return "desc " + " ".join(f"{k}={v}" for k, v in opts.items() if v is not None)


def _rng(text):
    lo, _, hi = text.partition("..")
    return int(lo, 0), int(hi or lo, 0)


def _oracle_match(ev, opts, cond_len):
    _n, _k, on, slot, table, entry, head, d = ev
    if opts.get("on") and on not in opts["on"].split("|"):
        return False
    if opts.get("idx") is not None and slot != opts["idx"]:
        return False
    if opts.get("head") is not None and head != opts["head"]:
        return False
    if opts.get("indirect") == "yes" and table is None or opts.get("indirect") == "no" and table is not None:
        return False
    if opts.get("len") is not None:
        lo, hi = _rng(opts["len"])
        if not lo <= d.len <= hi:
            return False
    if opts.get("flags"):
        need = 0
        for f in opts["flags"].split("|"):
            need |= {"NEXT": D.NEXT, "WRITE": D.WRITE, "INDIRECT": D.INDIRECT}[f]
        if d.flags & need != need:
            return False
    if cond_len is not None and not d.len > cond_len:
        return False
    return True


DESC_SPECS = st.fixed_dictionaries({}, optional={
    "on": st.sampled_from(["add", "pop", "used", "pop|used", "add|used"]),
    "idx": st.integers(0, 7),
    "head": st.integers(0, 7),
    "len": st.sampled_from(["1", "16", "48", "4096", "1..16", "17..100000", "0x30"]),
    "flags": st.sampled_from(["NEXT", "WRITE", "INDIRECT", "NEXT|WRITE"]),
    "indirect": st.sampled_from(["yes", "no"]),
})


def _opts_from_event(ev, keys):
    """Constraints an oracle event satisfies: a spec that must stop at least there."""
    _n, _k, on, slot, table, _entry, head, d = ev
    have = {"on": on, "idx": slot, "head": head, "len": str(d.len),
            "flags": "|".join(n for n, b in (("NEXT", 1), ("WRITE", 2), ("INDIRECT", 4))
                              if d.flags & b) or None,
            "indirect": "yes" if table is not None else "no"}
    return {k: have[k] for k in keys if have[k] is not None}


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=st.sampled_from(["article", "direct", "mixed"]), data=st.data(),
       cond_len=st.one_of(st.none(), st.sampled_from([1, 15, 100])))
def test_desc_breakpoints_stop_exactly_where_the_decoded_ram_says(raw_image, cfg, data, cond_len):
    """Random desc specs: every stop is at a step where the spec decoder finds a matching
    descriptor (the first one in the step is reported, with RAM's fields), and no step with
    one is missed, so the first stop is the first such step and no earlier one.  Half the
    specs are drawn blindly, half from the attributes of one decoded descriptor event."""
    if data.draw(st.booleans(), label="from an event"):
        evs = oracle_for(cfg, raw_image)
        ev = evs[data.draw(st.integers(0, len(evs) - 1), label="event")]
        keys = data.draw(st.sets(st.sampled_from(["on", "idx", "head", "len", "flags", "indirect"]),
                                 min_size=1), label="keys")
        opts = _opts_from_event(ev, sorted(keys))
    else:
        opts = data.draw(DESC_SPECS, label="spec")
    if opts.get("indirect") == "yes" and "idx" in opts:
        opts = {k: v for k, v in opts.items() if k != "idx"}        # refused: see validation test
    text = _spec_text(opts) + (f" if len > {cond_len}" if cond_len is not None else "")
    image, wl, conf = _configs(raw_image)[cfg]
    m = build(image, wl, **conf)
    table = table_with(m, ("break", text))
    hits = all_hits(m, table)
    events = [ev for ev in oracle_for(cfg, raw_image) if _oracle_match(ev, opts, cond_len)]
    steps = sorted({ev[0] for ev in events})
    assert [h.step for h in hits] == steps, text
    assert table.get(1).hits == len(steps)
    for h in hits:
        first = next(ev for ev in events if ev[0] == h.step)
        _n, _k, on, slot, tbl, entry, head, d = first
        assert h.match == {"q": 0, "idx": slot, "table": tbl, "entry": entry, "head": head,
                           "addr": d.addr, "len": d.len, "flags": d.flags, "next": d.next,
                           "on": on, "indirect": tbl is not None, "req": h.match["req"]}, text
        assert h.reason == "breakpoint" and h.kind == "desc"


def test_desc_add_stop_matches_the_descriptor_now_in_ram(raw_image):
    """`desc idx=3 on=add`: the first virtqueue_add_split step that writes ring slot 3, and
    the descriptor the spec decoder reads there afterwards is the one the match reports."""
    image, wl, cfg = _configs(raw_image)["direct"]
    m = build(image, wl, **cfg)
    table = table_with(m, ("break", "desc idx=3 on=add"))
    hit, rec = run_to_hit(m, table)
    assert hit is not None and rec.function == "virtqueue_add_split"
    base = m.vdev.vqs[0].desc or m.guest.vq.desc
    d = D.desc(m.mem.ram, base, 3)
    assert (hit.match["addr"], hit.match["len"], hit.match["flags"], hit.match["next"]) == \
        (d.addr, d.len, d.flags, d.next)
    assert hit.match["idx"] == 3 and hit.match["on"] == "add" and hit.match["table"] is None
    assert any(e[0] == "ram" and e[1] == base + 48 and len(e[3]) == 16 for e in rec.effects)
    # independent: no earlier add step wrote slot 3
    m2 = build(image, wl, **cfg)
    for _ in range(hit.step - 1):
        r = m2.step()
        assert not (r.function == "virtqueue_add_split"
                    and any(e[0] == "ram" and e[1] == base + 48 for e in r.effects)), r.n
    assert hit.match["req"] in m.guest.blkmq.rqs
    flags = "|".join(n for n, b in (("NEXT", D.NEXT), ("WRITE", D.WRITE)) if d.flags & b) or "0"
    assert hit.message.endswith(f"driver wrote desc[3] of chain {hit.match['head']} (request "
                                f"{hit.match['req']}): {{addr {d.addr:#x}, len {d.len}, {flags}, "
                                f"next {d.next}}}"), hit.message


def test_desc_condition_errors_stop_with_the_match_described():
    """A condition that cannot be evaluated stops, saying why, then what matched."""
    image, wl, cfg = ARTICLE, ARTICLE_WL, {}
    m = build(image, wl, **cfg)
    table = table_with(m, ("break", "desc on=pop if len / 0 == 1"))
    hit, rec = run_to_hit(m, table)
    assert rec.function == "virtqueue_split_pop"
    mt = hit.match
    flags = "|".join(n for n, b in (("NEXT", D.NEXT), ("WRITE", D.WRITE), ("INDIRECT", 4))
                     if mt["flags"] & b) or "0"
    req = f" (request {mt['req']})" if mt["req"] is not None else ""
    assert hit.message.endswith(
        f"error in condition 'len / 0 == 1': division by zero; stopped. device popped "
        f"desc[{mt['idx']}] of chain {mt['head']}{req}: {{addr {mt['addr']:#x}, len {mt['len']}, "
        f"{flags}, next {mt['next']}}}"), hit.message


def test_desc_pop_and_used_stop_at_the_device_steps():
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "desc on=pop indirect=yes len=1"),
                       ("break", "desc on=used"))
    hit, rec = run_to_hit(m, table)
    assert rec.function == "virtqueue_split_pop" and hit.id == 1
    t, k = hit.match["table"], hit.match["entry"]
    d = D.desc(m.mem.ram, t, k)                  # the status byte entry of the indirect table
    assert (d.len, d.flags) == (1, D.WRITE) == (hit.match["len"], hit.match["flags"])
    assert f"device popped indirect table {t:#x}[{k}] of chain {hit.match['head']}" in hit.message
    assert hit.message.endswith(f": {{addr {d.addr:#x}, len 1, WRITE, next {d.next}}}"), hit.message
    assert not d.flags & D.NEXT and hit.match["idx"] is None and hit.match["indirect"] is True
    hit2, rec2 = run_to_hit(m, table)
    assert rec2.function == "virtqueue_fill" and hit2.id == 2
    q = m.vdev.vqs[0]
    used = D.used(m.mem.ram, q.used, q.num)
    assert used["ring"][q.used_idx % q.num][0] == hit2.match["head"]
    hd = D.desc(m.mem.ram, q.desc, hit2.match["head"])
    assert hit2.match["idx"] == hit2.match["head"]
    assert (hd.addr, hd.len, hd.flags) == (hit2.match["addr"], hit2.match["len"], hit2.match["flags"])


# -- ignore, tbreak, disable, conditions, several at once ---------------------------------------

def _pop_steps(image, wl, cfg=None):
    m = build(image, wl, **(cfg or {}))
    steps = []
    while True:
        before = m.vdev.vqs[0].last_avail_idx
        rec = m.step()
        if rec is None:
            return steps
        if rec.function == "virtqueue_split_pop" and m.vdev.vqs[0].last_avail_idx != before:
            steps.append(rec.n)


def test_ignore_count_skips_hits_but_counts_them():
    pops = _pop_steps(ARTICLE, ARTICLE_WL)
    assert len(pops) >= 4
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "desc on=pop indirect=no"))
    table.ignore(1, 2)
    hit, _ = run_to_hit(m, table)
    assert hit.step == pops[2]
    assert hit.hits == 3 and table.get(1).hits == 3 and table.get(1).ignore == 0
    hit, _ = run_to_hit(m, table)
    assert hit.step == pops[3] and hit.hits == 4


def test_tbreak_is_deleted_after_its_first_stop():
    pops = _pop_steps(ARTICLE, ARTICLE_WL)
    m = build(ARTICLE, ARTICLE_WL)
    table = BreakpointTable()
    bid = table.add(parse_breakpoint("desc on=pop", machine=m, temporary=True))
    assert table.list()[0]["temporary"] is True
    hit, _ = run_to_hit(m, table)
    assert hit.step == pops[0] and hit.deleted == (bid,)
    assert "Temporary breakpoint" in hit.message
    assert table.list() == []
    assert run_to_hit(m, table) == (None, None)
    assert table.add(parse_breakpoint("desc on=pop", machine=m)) == bid + 1   # ids never reused


def test_disabled_breakpoints_neither_stop_nor_count():
    pops = _pop_steps(ARTICLE, ARTICLE_WL)
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "desc on=pop indirect=no"), ("break", "step virtqueue_fill"))
    table.disable(1)
    hit, _ = run_to_hit(m, table)
    assert hit.id == 2 and table.get(1).hits == 0
    assert hit.step > pops[0]
    table.enable(1)
    table.disable(2)
    hit, _ = run_to_hit(m, table)
    assert hit.id == 1 and hit.step == pops[1]
    rows = {r["id"]: r for r in table.list()}
    assert rows[2]["enabled"] is False and rows[1]["enabled"] is True


def test_conditions_filter_and_can_be_changed():
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "desc on=add if len == 1 and flags & WRITE"))
    hit, _ = run_to_hit(m, table)
    assert hit.match["len"] == 1 and hit.match["flags"] & 2
    assert table.list()[0]["condition"] == "len == 1 and flags & WRITE"
    table.condition(1, "on == 'add' and len == 4096 and step > 0")
    hit, _ = run_to_hit(m, table)
    assert hit.match["len"] == 4096
    with pytest.raises(BreakpointError) as ei:
        table.condition(1, "lenn == 3")
    assert "unknown field 'lenn' at column 1" in str(ei.value)
    assert table.get(1).condition == "on == 'add' and len == 4096 and step > 0"  # unchanged
    table.condition(1, None)
    assert table.list()[0]["condition"] is None


def test_condition_that_fails_to_evaluate_stops_and_says_so():
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "desc on=pop if 1 / (len - len)"))
    hit, _ = run_to_hit(m, table)
    assert hit is not None and "division by zero" in hit.message


def test_dry_checks_count_nothing_and_delete_nothing():
    """dry=True (a reverse-continue scan) reports what would stop, ignore counts aside,
    and leaves hits, ignore counts and temporary breakpoints alone."""
    pops = _pop_steps(ARTICLE, ARTICLE_WL)
    m = build(ARTICLE, ARTICLE_WL)
    t = BreakpointTable()
    t.add(parse_breakpoint("desc on=pop indirect=no", machine=m, temporary=True))
    t.add(parse_breakpoint("req stage=done", machine=m), m)
    t.ignore(1, 3)
    seen = []
    while (rec := m.step()) is not None:
        h = t.check(m, rec, dry=True)
        if h is not None:
            seen.append((h.id, h.step))
    assert [s for i, s in seen if i == 1] == pops
    assert [i for i, _s in seen].count(2) == len(m.guest.completed)
    assert [r["hits"] for r in t.list()] == [0, 0] and t.get(1).ignore == 3 and len(t) == 2


def test_lowest_id_is_reported_and_every_match_counts():
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("break", "step virtqueue_split_pop"), ("break", "desc on=pop"),
                       ("tbreak", "ring inuse>=1"))
    table.ignore(1, 1)          # the first pop pass is ignored by 1...
    hit, rec = run_to_hit(m, table)
    assert rec.function == "virtqueue_split_pop"
    assert hit.id == 2 and hit.also == (3,) and hit.deleted == (3,)
    assert table.get(1).hits == 1 and table.get(2).hits == 1
    assert [r["id"] for r in table.list()] == [1, 2]
    assert json.loads(json.dumps(hit.to_json()))["also"] == [3]


# -- watchpoints ----------------------------------------------------------------------------------

def _first_overlap(m, space, lo, hi, table):
    """Step until the table stops; check no earlier step wrote [lo, hi) and return
    (hit, rec, bytes of the reported part before, after)."""
    while True:
        snap = bytes(m.mem.ram[lo:hi]) if space == "ram" else m.hostfile.pread(lo, hi - lo)
        rec = m.step()
        assert rec is not None, "no stop"
        hit = table.check(m, rec)
        wrote = any(e[0] == space and e[1] < hi and e[1] + len(e[3]) > lo for e in rec.effects)
        if hit is None:
            assert not wrote, rec.n
            continue
        assert wrote
        after = bytes(m.mem.ram[lo:hi]) if space == "ram" else m.hostfile.pread(lo, hi - lo)
        a, n = hit.match["addr"] - lo, hit.match["len"]
        return hit, rec, snap[a:a + n], after[a:a + n]


def test_watch_ram_reports_old_and_new_bytes():
    m = build(ARTICLE, ARTICLE_WL)
    run_until(m, lambda r: m.guest.vq.num != 0)          # the driver has set up its ring
    lo = m.guest.vq.avail + 2
    table = table_with(m, ("watch", f"ram {lo:#x}+2"))
    hit, rec, old, new = _first_overlap(m, "ram", lo, lo + 2, table)
    assert hit.reason == "watchpoint" and hit.match["space"] == "ram"
    assert (hit.match["old"], hit.match["new"]) == (old.hex(), new.hex())
    assert old != new and rec.function == "virtqueue_add_split"
    # a partial overlap: 3 bytes in the middle of the used ring's first element (8 bytes)
    lo = m.vdev.vqs[0].used + 4 + 2
    table = table_with(m, ("watch", f"ram {lo:#x}+3"))
    hit, rec, old, new = _first_overlap(m, "ram", lo, lo + 3, table)
    assert rec.function == "virtqueue_fill"
    assert hit.match["addr"] == lo and hit.match["len"] == 3
    assert (hit.match["old"], hit.match["new"]) == (old.hex(), new.hex())


def test_watch_host_reports_old_and_new_bytes():
    m0 = build(ARTICLE, ARTICLE_WL)
    first = next(e for r in run_all(m0) for e in r.effects if e[0] == "file" and e[2] != e[3])
    diff = next(i for i in range(len(first[3])) if first[2][i] != first[3][i])
    lo = first[1] + diff
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("watch", f"host {lo:#x}..{lo + 4:#x}"))
    hit, rec, old, new = _first_overlap(m, "file", lo, lo + 5, table)
    assert hit.match["space"] == "host"
    assert (hit.match["old"], hit.match["new"]) == (old.hex(), new.hex())
    assert rec.layer in ("qcow2", "file", "raw", "block")


@pytest.mark.parametrize("spec,pred", [
    ("reg device_status", lambda n: n == "device_status"),
    ("reg status", lambda n: n == "device_status"),
    ("reg vq0.*", lambda n: n.startswith("vq0.")),
    ("reg vq0.inuse", lambda n: n == "vq0.inuse"),
    ("reg msix.table[0]", lambda n: n == "msix.table[0]"),
])
def test_watch_reg_stops_at_the_first_change(spec, pred):
    m = build(ARTICLE, ARTICLE_WL)
    table = table_with(m, ("watch", spec))
    status_before = m.vdev.status
    n = 0
    while True:
        status_before = m.vdev.status
        rec = m.step()
        n += 1
        assert rec is not None
        hit = table.check(m, rec)
        regs = [e for e in rec.effects if e[0] == "reg" and pred(e[1])]
        assert bool(hit) == bool(regs), rec.n
        if hit:
            break
    assert hit.match["name"] == regs[0][1]
    if regs[0][1] == "device_status":
        assert hit.match["old"] == hex(status_before) and hit.match["new"] == hex(m.vdev.status)


# -- catchpoints ------------------------------------------------------------------------------------

def test_catch_error_stops_at_a_poked_corruption_with_the_diagnostic():
    m = build(ARTICLE, ARTICLE_WL)
    run_until(m, lambda r: r.kind == "vring.add_publish")
    vq = m.guest.vq
    head = D.avail(m.mem.ram, vq.avail, vq.num)["ring"][0]
    m.poke(vq.desc + 16 * head + 8, bytes(4))        # the head descriptor's len = 0
    table = table_with(m, ("catch", "error"), ("break", "desc on=pop"))
    hit, rec = run_to_hit(m, table)
    assert hit.id == 1 and hit.reason == "error" and hit.also == (2,)
    assert hit.message == "Invalid size for indirect buffer table" == m.vdev.error["message"]
    assert hit.match["spec"].startswith("2.7.5.3.1") and hit.match["spec"] == m.vdev.error["spec"]
    assert hit.match["kind"] == "virtio" and rec.function == "virtqueue_split_pop"
    assert m.vdev.broken
    assert table.get(2).hits == 1            # the pop read the bad head before refusing it
    table.delete(1)
    m2 = build(ARTICLE, ARTICLE_WL)
    run_until(m2, lambda r: r.kind == "vring.add_publish")
    m2.poke(vq.desc + 16 * head + 8, bytes(4))
    t2 = table_with(m2, ("break", "desc on=pop"))
    hit2, _ = run_to_hit(m2, t2)
    assert hit2.step == hit.step and hit2.match["len"] == 0 and hit2.match["idx"] == head


def test_catch_error_ioerr_on_an_injected_write_error(raw_image):
    fault = ({"op": "write", "start": 0, "end": 4096, "errno": 5, "count": -1},)
    m = build(raw_image, "write 0 4k\n", faults=fault)
    table = table_with(m, ("catch", "error ioerr"))
    hit, rec = run_to_hit(m, table)
    assert hit.reason == "error" and hit.match["kind"] == "ioerr"
    assert rec.function == "virtio_blk_req_complete"
    assert any(e[0] == "ram" and e[3] == b"\x01" for e in rec.effects)     # VIRTIO_BLK_S_IOERR
    assert hit.match["req"] is not None and "IOERR" in hit.message
    assert run_to_hit(m, table) == (None, None)
    assert m.guest.proc.results[0]["status"] == "IOERR"


def test_catch_error_guest_and_qcow2(tmp_path):
    m = build(ARTICLE, ARTICLE_WL)
    rec = run_until(m, lambda r: r.kind == "vq.fill")
    q = m.vdev.vqs[0]
    m.poke(q.used + 4 + 8 * (q.used_idx % q.num), struct.pack("<I", 300))   # used id out of range
    table = table_with(m, ("catch", "error virtio qcow2"), ("catch", "error guest"))
    hit, rec = run_to_hit(m, table)
    assert hit.id == 2 and hit.match["kind"] == "guest" and "out of range" in hit.message
    assert rec.function == "virtqueue_get_buf_ctx_split"
    img = str(tmp_path / "e.qcow2")
    create_qcow2(img, 8 * MiB)
    fault = ({"op": "write", "start": 0x20000, "end": 0x30000, "errno": 5, "count": -1},)
    m = build(img, "write 0 4k\nwait\nread 0 4k\nwait\n", faults=fault)
    table = table_with(m, ("catch", "error qcow2"))
    hit, rec = run_to_hit(m, table)
    assert hit is not None and hit.match["kind"] == "qcow2"
    assert "qcow2" in hit.message and rec.layer == "qcow2"


# -- ring ------------------------------------------------------------------------------------------

def _u16_changes(image, wl, cfg, which):
    """[(step, old, new)] of avail.idx / used.idx in RAM, read around every step."""
    m = build(image, wl, **cfg)
    out = []
    while True:
        q = m.vdev.vqs[0]
        addr = (m.guest.vq.avail if which == "avail" else q.used) + 2
        ok = (m.guest.vq.num if which == "avail" else q.used)
        old = struct.unpack_from("<H", m.mem.ram, addr)[0] if ok else None
        rec = m.step()
        if rec is None:
            return out
        if ok:
            new = struct.unpack_from("<H", m.mem.ram, addr)[0]
            if new != old:
                out.append((rec.n, old, new, m.vdev.vqs[0].num))


@pytest.mark.parametrize("which", ["avail", "used"])
def test_ring_idx_and_wrap(raw_image, which):
    image, wl, cfg = raw_image, RAW_WL + "write 4M 4k\nwrite 5M 4k\nwait\n" * 3, \
        {"indirect": False, "queue_size": 4}
    changes = _u16_changes(image, wl, cfg, which)
    assert len(changes) >= 6
    m = build(image, wl, **cfg)
    table = table_with(m, ("break", f"ring {which}_idx=3"))
    hit, _ = run_to_hit(m, table)
    want = next(c for c in changes if c[2] == 3)
    assert hit.step == want[0] and (hit.match["old"], hit.match["new"]) == (want[1], want[2])
    wraps = [c for c in changes if 0 < (c[2] - c[1]) % 65536 < 0x8000
             and c[1] % c[3] + (c[2] - c[1]) % 65536 >= c[3]]
    assert len(wraps) >= 2
    m = build(image, wl, **cfg)
    table = table_with(m, ("break", f"ring wrap={which}"))
    hits = all_hits(m, table)
    assert [h.step for h in hits] == [c[0] for c in wraps]
    assert all(h.match["new"] % 4 == 0 for h in hits)


def test_ring_inuse_reaches_k(raw_image):
    m = build(raw_image, RAW_WL)
    table = table_with(m, ("break", "ring inuse>=2"))
    prev = 0
    while True:
        prev = m.vdev.vqs[0].inuse
        rec = m.step()
        assert rec is not None
        hit = table.check(m, rec)
        if hit:
            break
        assert not (prev < 2 <= m.vdev.vqs[0].inuse)
    assert prev < 2 <= m.vdev.vqs[0].inuse and hit.match["new"] == m.vdev.vqs[0].inuse


# -- requests -----------------------------------------------------------------------------------------

def test_request_stages_match_the_views_at_every_step(raw_image):
    """The tracker's stages are exactly views.requests()' stages, and every stage seen is in
    STAGES (so req stage= names stay valid when the views change)."""
    seen = set()
    for image, wl, cfg in _configs(raw_image).values():
        m = build(image, wl, **cfg)
        while True:
            rec = m.step()
            if rec is None:
                break
            want = {r.id: r.stage for r in views.requests(m)}
            assert BPM._request_stages(m) == want, rec.n
            seen.update(want.values())
    assert seen <= set(STAGES), seen - set(STAGES)
    assert {"done", "device: popped", "avail: not popped"} <= seen


@pytest.mark.parametrize("spec", ["req type=OUT", "req stage=done", "req stage=popped type=IN",
                                  "req type=FLUSH|GET_ID stage=\"used: awaiting irq\"",
                                  "req sector=2048..2055", "req len=4096 stage=host:block_io"])
def test_req_breakpoints_follow_the_request_views(spec):
    m = build(ARTICLE, MIXED_WL)
    table = table_with(m, ("break", spec))
    bp = table.get(1)
    p = bp.params
    m2 = build(ARTICLE, MIXED_WL)
    prev = {r.id: r for r in views.requests(m2)}
    expected = []
    while True:
        rec = m2.step()
        if rec is None:
            break
        cur = {r.id: r for r in views.requests(m2)}
        for rid, r in sorted(cur.items()):
            old = prev.get(rid)
            if p["stage"] is None:
                if old is not None:
                    continue
            elif r.stage != p["stage"] or (old is not None and old.stage == r.stage):
                continue
            if p["types"] and r.type not in p["types"]:
                continue
            if p["sector"] and not (r.length and r.sector <= p["sector"][1]
                                    and r.sector + r.length // 512 > p["sector"][0]):
                continue
            if p["len"] and not p["len"][0] <= r.length <= p["len"][1]:
                continue
            expected.append((rec.n, rid))
            break
        prev = cur
    hits = all_hits(m, table)
    assert expected, spec
    assert [(h.step, h.match["id"]) for h in hits] == expected


def test_req_tracking_state_restores_like_a_checkpoint():
    """state() taken at step k and loaded into a fresh table on a machine replayed to step k
    gives the same stops afterwards (what the Session does when it restores a checkpoint)."""
    m = build(ARTICLE, MIXED_WL)
    t = table_with(m, ("break", "req stage=done"), ("break", "req"))
    for _ in range(150):
        t.check(m, m.step())
    saved = copy.deepcopy(t.state())
    json.dumps(saved)
    rest = [(h.step, h.id, h.match["id"]) for h in all_hits(m, t)]
    m2 = build(ARTICLE, MIXED_WL)
    for _ in range(150):
        m2.step()
    t2 = table_with(m2, ("break", "req stage=done"), ("break", "req"))
    t2.load_state(saved)
    assert [(h.step, h.id, h.match["id"]) for h in all_hits(m2, t2)] == rest
    assert rest


# -- step -------------------------------------------------------------------------------------------------

def test_step_breakpoint_by_function_and_glob():
    m0 = build(ARTICLE, ARTICLE_WL)
    recs = run_all(m0)
    for spec, pred in (("step virtqueue_split_pop", lambda f: f == "virtqueue_split_pop"),
                       ("step qcow2_*", lambda f: f.startswith("qcow2_")),
                       ("step handle_aiocb_rw", lambda f: f == "handle_aiocb_rw")):
        want = [r.n for r in recs if pred(r.function)]
        assert want, spec
        m = build(ARTICLE, ARTICLE_WL)
        hits = all_hits(m, table_with(m, ("break", spec)))
        assert [h.step for h in hits] == want


# -- validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("verb,text,token,col", [
    ("break", "desc q=1", "no queue 1", 8),
    ("break", "desc idx=256", "idx=256", 10),
    ("break", "desc head=999", "head=999", 11),
    ("break", "desc idx=3 indirect=yes", "can never stop", 10),
    ("break", "desc lenn=3", "'lenn'", 6),
    ("break", "desc on=push", "'push'", 9),
    ("break", "desc flags=NEXT|FOO", "'FOO'", 17),
    ("break", "desc len=9..3", "empty range", 10),
    ("break", "desc idx=3 if lenn > 1", "unknown field 'lenn'", 15),
    ("break", "desc idx=3 if len > )", "unexpected token ')'", 21),
    ("break", "req sector=16384", "past the end of the disk", 12),
    ("break", "req type=READX", "'READX'", 10),
    ("break", "req stage=nowhere", "unknown stage 'nowhere'", 11),
    ("break", "req stage=completing", "ambiguous stage", 11),
    ("break", "step no_such_function", "unknown function 'no_such_function'", 6),
    ("break", "ring inuse>=257", "inuse>=257", 13),
    ("break", "ring avail_idx=65536", "16-bit", 16),
    ("break", "ring q=1 wrap", "no queue 1", 8),
    ("break", "ring", "ring needs one of", 5),
    ("break", "frob x", "unknown break kind 'frob'", 1),
    ("watch", "ram 0x4000000", "outside guest RAM", 5),
    ("watch", "ram 0x3fffff0+32", "outside guest RAM", 5),
    ("watch", "host 0x100000+1", "past the end of the image file", 6),
    ("watch", "reg vq1.inuse", "unknown register 'vq1.inuse'", 5),
    ("watch", "reg nope*", "unknown register", 5),
    ("watch", "desc idx=1", "unknown watch kind 'desc'", 1),
    ("catch", "error oops", "'oops'", 7),
    ("catch", "fire", "unknown catch kind 'fire'", 1),
])
def test_impossible_or_malformed_specs_are_refused(verb, text, token, col):
    m = build(ARTICLE, ARTICLE_WL, ram_size=64 * MiB)
    with pytest.raises(BreakpointError) as ei:
        parse_command(verb, text, machine=m)
    assert token in str(ei.value)
    assert ei.value.position == col and f"at column {col}" in str(ei.value)


def test_list_rows_and_table_editing():
    m = build(ARTICLE, ARTICLE_WL)
    t = BreakpointTable()
    assert t.add(parse_breakpoint("desc idx=3 on=pop if len > 16", machine=m)) == 1
    assert t.add(parse_watch("ram 0x10000+16", machine=m)) == 2
    assert t.add(parse_catch("error", machine=m, temporary=True)) == 3
    rows = t.list()
    assert rows[0] == {"id": 1, "type": "breakpoint", "kind": "desc", "enabled": True,
                       "spec": "desc idx=3 on=pop", "hits": 0, "condition": "len > 16",
                       "ignore": 0, "temporary": False}
    assert [r["type"] for r in rows] == ["breakpoint", "watchpoint", "catchpoint"]
    assert rows[2]["temporary"] is True
    t.ignore(2, 5)
    assert t.list()[1]["ignore"] == 5
    with pytest.raises(BreakpointError):
        t.ignore(9, 1)
    with pytest.raises(BreakpointError):
        t.ignore(2, -1)
    assert t.delete(2) == [2]
    assert t.delete() == [1, 3] and len(t) == 0
    assert t.add(parse_breakpoint("step virtqueue_fill", machine=m)) == 4


# -- no effect on the machine, and nearly free when idle ---------------------------------------------

def test_checking_changes_neither_the_run_nor_the_digest(raw_image):
    for image, wl, cfg in _configs(raw_image).values():
        m1 = build(image, wl, **cfg)
        plain = [(r.n, r.kind, r.function, r.detail, r.effects) for r in run_all(m1)]
        m2 = build(image, wl, **cfg)
        t = table_with(m2, ("break", "desc"), ("break", "req"), ("break", "req stage=done"),
                       ("break", "ring wrap"), ("break", "ring inuse>=1"), ("break", "step *"),
                       ("watch", "ram 0+0x100000"), ("watch", "host 0+512"), ("watch", "reg *"),
                       ("catch", "error"))
        checked = []
        while True:
            rec = m2.step()
            if rec is None:
                break
            t.check(m2, rec)
            checked.append((rec.n, rec.kind, rec.function, rec.detail, rec.effects))
        assert checked == plain
        assert m1.digest() == m2.digest()


def test_facts_do_not_change_the_digest_and_are_deterministic(raw_image):
    image, wl, cfg = _configs(raw_image)["direct"]
    runs = []
    for _ in range(2):
        m = build(image, wl, **cfg)
        recs = run_all(m)
        runs.append(([r.facts for r in recs], m.digest(), m.state()))
    assert runs[0] == runs[1]
    assert any(f[0] == "desc" for facts in runs[0][0] for f in facts)
    assert "facts" not in json.dumps(runs[0][2], default=str)


def test_no_breakpoints_or_no_req_breakpoint_never_builds_request_views(monkeypatch):
    def boom(m):
        raise AssertionError("request views computed")
    monkeypatch.setattr(BPM, "_request_stages", boom)
    m = build(ARTICLE, ARTICLE_WL)
    empty = BreakpointTable()
    others = table_with(m, ("break", "desc idx=200"), ("watch", "ram 0+1"), ("catch", "error"))
    while (rec := m.step()) is not None:
        assert empty.check(m, rec) is None
        others.check(m, rec)
    assert empty.state() == {"req": None}
