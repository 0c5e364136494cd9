"""The compiled session loop checks breakpoints only at candidate steps (a C prefilter).

The prefilter may pass steps where nothing matches (check() then finds nothing), but it must
never skip a step where some enabled breakpoint's matcher yields a match: otherwise the fast
engine would miss a stop, a hit count or an ignore count.  Checked here directly, matcher by
matcher, at every step of random runs (conditions aside: they are evaluated in check()).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu_fast
from emu.debug import breakpoints as BP
from emu.session import Session
from emu.spec.blk import S_IOERR
from tests.emu_fast.test_differential import SETTINGS, configs, machine, snapshot, workloads

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

SPECS = [("break", "desc"), ("break", "desc on=used q=0"), ("break", "desc on=add|pop idx=1"),
         ("break", "desc head=0 flags=NEXT"), ("break", "desc len=16"),
         ("break", "desc on=pop len=512..8192 flags=WRITE"), ("break", "desc indirect=yes"),
         ("break", "desc indirect=no addr=0x0..0x7fffff"), ("break", "desc q=0 on=used if len == 3"),
         ("break", "step virtqueue_*"),
         ("break", "step qcow2_co_pwritev_task"), ("break", "ring inuse>=2"),
         ("break", "ring wrap"), ("break", "ring avail_idx=3"), ("break", "ring used_idx=2"),
         ("watch", "ram 0x10000+4096"), ("watch", "ram 0x0..0x3fffff"), ("watch", "host 0x0+512"),
         ("watch", "host 0x30000..0x3ffff"), ("watch", "reg device_status"), ("watch", "reg vq0.*"),
         ("catch", "error"), ("catch", "error ioerr"), ("catch", "error guest")]


def _records(m):
    """Every step's record of m's run, the shutdown's (qcow2_close, ...) included."""
    closed = False
    while True:
        rec = m.step()
        if rec is None:
            if closed or not m.begin_shutdown():
                return
            closed = True
            continue
        yield rec


def _matches(bp, m, rec, table) -> bool:
    return next(iter(BP._MATCHERS[bp.kind](bp, BP._Ctx(m, rec, table))), None) is not None


@settings(**dict(SETTINGS, max_examples=30))
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s"]), wl=workloads, cfg=configs,
       specs=st.lists(st.sampled_from(SPECS), min_size=1, max_size=4, unique=True))
def test_prefilter_never_skips_a_matching_step(tmp_path_factory, fmt, wl, cfg, specs):
    tmp = tmp_path_factory.mktemp("pf")
    kind = "qcow2" if fmt.startswith("qcow2") else fmt
    m = machine(tmp, kind, "s" if fmt == "qcow2s" else "", wl, cfg)
    table = BP.BreakpointTable()
    bps = []
    for verb, text in specs:
        try:
            bps.append(table.get(table.add(BP.parse_command(verb, text, machine=m), m)))
        except BP.BreakpointError:          # e.g. a host range past a small image's end
            continue
    matched = passed = 0
    for rec in _records(m):
        cand = emu_fast.require().prefilter_candidates(table, m, [rec], S_IOERR)[0]
        hit = any(_matches(bp, m, rec, table) for bp in bps)
        assert cand or not hit, f"step {rec.n} ({rec.kind}) matches {specs} but was skipped"
        matched += hit
        passed += cand
    assert passed <= m.steps


def test_desc_filters_narrow_the_candidates(tmp_path):
    """A desc breakpoint's filters (on=, idx=, len=, ...) are applied before check(): a step
    whose desc facts none of them pass is not a candidate."""
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 8k\n" for i in range(20))
    counts = {}
    for spec in ("desc", "desc on=used", "desc on=pop len=4096", "desc head=200"):
        m = machine(tmp_path, "raw", "", wl, {"queue_size": 256, "indirect": False})
        table = BP.BreakpointTable()
        bp = table.get(table.add(BP.parse_command("break", spec, machine=m), m))
        cand = hits = 0
        for rec in iter(m.step, None):
            c = emu_fast.require().prefilter_candidates(table, m, [rec], S_IOERR)[0]
            h = _matches(bp, m, rec, table)
            assert c or not h
            cand += c
            hits += h
        counts[spec] = (cand, hits)
    assert counts["desc"][0] > counts["desc on=used"][0] > counts["desc on=pop len=4096"][0] > 0
    assert counts["desc head=200"] == (0, 0)
    assert all(cand == hits for cand, hits in counts.values()), counts


def test_prefilter_skips_steps_and_the_stops_are_the_same(tmp_path, monkeypatch):
    """check() runs far less often on the fast engine, with the same stops and state."""
    wl = "queue-depth 4\n" + "".join(f"write {i * 69632} 4k\nread {i * 4096} 8k\n" for i in range(40))
    calls = {"py": 0, "fast": 0}
    real = BP.BreakpointTable.check
    out = {}
    for eng in ("py", "fast"):
        def counting(self, *a, _eng=eng, **k):
            calls[_eng] += 1
            return real(self, *a, **k)
        monkeypatch.setattr(BP.BreakpointTable, "check", counting)
        s = Session(machine(tmp_path, "qcow2", "", wl, {"queue_size": 16}), checkpoint_interval=100)
        s.set_engine(eng)
        s.add_breakpoint("break", "desc on=used if len == 8192")
        s.add_breakpoint("watch", "ram 0x2000+8")
        bp = s.add_breakpoint("break", "ring wrap")
        s.breakpoints.ignore(bp, 3)
        stops = []
        while True:
            st_ = s.cont()
            stops.append((st_.reason, st_.step, st_.message))
            if st_.reason == "end":
                break
        # what the TUI shows after the run: the event log (history), the last step of each
        # side, the checkpoints reverse execution will use
        shown = (list(s.history), s.last, s.last_by_side,
                 [cp.step for cp in s.timeline.checkpoints])
        out[eng] = (stops, [b.hits for b in s.breakpoints], snapshot(s.m), shown)
    assert out["py"] == out["fast"]
    assert len(out["py"][0]) > 3
    assert calls["fast"] < calls["py"] // 3, calls


def test_request_breakpoints_are_checked_at_every_step(tmp_path, monkeypatch):
    """req breakpoints follow stages across steps: the prefilter lets every step through."""
    wl = "".join(f"write {i * 4096} 4k\n" for i in range(6))
    seen = []
    real = BP.BreakpointTable.check

    def counting(self, m, rec, dry=False):
        seen.append(rec.n)
        return real(self, m, rec, dry)
    monkeypatch.setattr(BP.BreakpointTable, "check", counting)
    s = Session(machine(tmp_path, "raw", "", wl, {}))
    s.set_engine("fast")
    s.add_breakpoint("break", "req stage=done")
    first = s.cont()
    assert first.reason == "breakpoint"
    assert seen == list(range(1, first.step + 1))


def _core_stop_kinds(m, rec) -> set:
    """What rec holds that some breakpoint the core stops for looks at: ("desc", on),
    ("host",), ("avail",), ("used",), ("inuse",), ("function",) (not its kind's registered
    function)."""
    from emu.sim.steps import REGISTRY
    out = {("desc", f[1]) for f in rec.facts if f[0] == "desc"}
    if rec.function != REGISTRY[rec.kind][1].function:
        out.add(("function",))
    gvq = m.guest.vq
    idx = [("avail", gvq.avail + 2)] if gvq.num else []
    idx += [("used", q.used + 2) for q in m.vdev.vqs if q.used and q.num]
    for e in rec.effects:
        if e[0] in ("ram", "reg"):
            out.add((e[0],))
        if e[0] == "file":
            out.add(("host",))
        elif e[0] == "ram":
            out.update((which,) for which, x in idx if e[1] < x + 2 and e[1] + len(e[3]) > x)
        elif e[0] == "reg" and str(e[1]).endswith(".inuse"):
            out.add(("inuse",))
    return out


def _stop_steps(what: tuple) -> tuple:
    if what[0] == "desc":
        return BP.DESC_STEPS[what[1]]
    if what[0] == "host":
        return BP.HOST_WRITE_STEPS
    if what[0] == "function":
        return BP.FUNCTION_STEPS
    if what[0] == "ram":
        return BP.RAM_STEPS
    if what[0] == "reg":
        return BP.REG_STEPS
    return BP.RING_STEPS[what[0]]


@settings(**dict(SETTINGS, max_examples=30))
@given(fmt=st.sampled_from(["raw", "qcow2", "qcow2s"]), wl=workloads, cfg=configs)
def test_what_breakpoints_see_comes_only_from_the_steps_the_core_stops_before(
        tmp_path_factory, fmt, wl, cfg):
    """With any breakpoint but request breakpoints the session loop's bulk core runs every
    step but DESC_STEPS, HOST_WRITE_STEPS, RING_STEPS, FUNCTION_STEPS (and the steps whose
    kind's function a step breakpoint matches), RAM_STEPS and REG_STEPS unrecorded: a desc
    fact, a file write, a ring index write, an inuse change, a function other than its kind's,
    a RAM or register write of any other step the core runs would be a missed match (the steps
    the core never runs -- device probe, qcow2 open and close -- are recorded)."""
    from emu_fast import _bulk
    handled = set(_bulk.handled_kinds())
    tmp = tmp_path_factory.mktemp("ds")
    m = machine(tmp, "qcow2" if fmt.startswith("qcow2") else fmt, "s" if fmt == "qcow2s" else "",
                wl, cfg)
    for rec in _records(m):
        for what in _core_stop_kinds(m, rec):
            assert rec.kind in _stop_steps(what) or (what[0] != "desc" and rec.kind not in handled), \
                (rec.n, rec.kind, what)


def test_each_step_the_core_stops_before_is_seen_doing_it(tmp_path):
    """The property above meets each step of every list doing what it is listed for (indirect
    heads and event indexes included) -- but for RAM_STEPS and REG_STEPS, which also list the
    steps code reading finds writing RAM or a register on rarer paths (GET_ID, event index
    updates, virtio_error): of those, most are seen."""
    wl = "queue-depth 4\n" + "".join(f"write {i * 8192} 4k\nread {i * 4096} 8k\n" for i in range(8)) \
        + "flush\ndiscard 0 64k\nwrite-zeroes 65536 64k\n"
    seen_kinds = set()
    for fmt, cfg in (("raw", {"indirect": False}), ("qcow2", {"indirect": True, "event_idx": True})):
        m = machine(tmp_path, fmt, "", wl, cfg)
        for rec in iter(m.step, None):
            seen_kinds.update((rec.kind, what) for what in _core_stop_kinds(m, rec))
    listed = {(k, ("desc", on)) for on, kinds in BP.DESC_STEPS.items() for k in kinds}
    listed |= {(k, ("host",)) for k in BP.HOST_WRITE_STEPS}
    listed |= {(k, (w,)) for w, kinds in BP.RING_STEPS.items() for k in kinds}
    listed |= {(k, ("function",)) for k in BP.FUNCTION_STEPS}
    from emu_fast import _bulk
    handled = set(_bulk.handled_kinds())
    seen_kinds = {(k, w) for k, w in seen_kinds if k in handled}     # (the probe's registers)
    rare = {(k, ("ram",)) for k in BP.RAM_STEPS} | {(k, ("reg",)) for k in BP.REG_STEPS}
    seen_rare = seen_kinds & rare
    assert seen_kinds - seen_rare == listed
    assert len(seen_rare) >= 0.7 * len(rare), sorted(rare - seen_rare)
