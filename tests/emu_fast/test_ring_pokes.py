"""Bad input in the split ring (virtio spec 2.7): bytes poked into the descriptor table, the
avail ring or the used ring at random steps of a run (a session's scheduled `poke` inputs), with
`catch error`.  Both engines must stop at the same steps with the same messages (the device's
diagnostics of what it popped) and end in the same state: guest RAM, image bytes, records,
checkpoints."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from emu import engine
from tests.emu_fast.test_differential import SETTINGS, configs, workloads
from tests.emu_fast.test_session_core import _stops, pair, seen  # (needs the compiled engine)

RING_UP = 12        # the driver has set the queue up by then (virtio_pci_setup_vq)

longer = st.builds(lambda qd, ops: f"queue-depth {qd}\n" + "".join(ops),
                   st.sampled_from([1, 4, 16, 64]),
                   st.lists(st.sampled_from([f"write {i * 4096} 4k\n" for i in range(0, 900, 37)]
                                            + [f"read {i * 4096} 8k\n" for i in range(0, 900, 53)]
                                            + ["flush\n", "write 65536 64k\n"]),
                            min_size=5, max_size=60))

pokes = st.lists(st.tuples(st.floats(0.0, 0.95), st.sampled_from(["desc", "avail", "used"]),
                           st.integers(0, 4095), st.binary(min_size=1, max_size=8)),
                 min_size=1, max_size=4)


def _ring(tmp, fmt, wl, cfg) -> tuple:
    """(desc, avail, used, num) of the queue as the driver sets it up, and the run's length"""
    s, _ = pair(tmp, fmt, wl, cfg, 1000, 10)
    engine.run_until(s, "py", limit=RING_UP)
    vq = s.m.guest.vq
    ring = (vq.desc, vq.avail, vq.used, vq.num)
    engine.run_until(s, "py")
    return ring, s.m.steps


@settings(**dict(SETTINGS, max_examples=30))
@given(fmt=st.sampled_from(["raw", "qcow2"]), wl=st.one_of(workloads, longer), cfg=configs,
       where=pokes, interval=st.sampled_from([37, 1000]))
def test_pokes_into_the_ring_stop_both_engines_alike(tmp_path_factory, fmt, wl, cfg, where, interval):
    (desc, avail, used, num), total = _ring(tmp_path_factory.mktemp("ring"), fmt, wl, cfg)
    assert desc and avail and used
    base = {"desc": desc, "avail": avail, "used": used}
    size = {"desc": 16 * num, "avail": 6 + 2 * num, "used": 6 + 8 * num}
    inputs = [{"step": RING_UP + int(frac * max(1, total - RING_UP)), "input": "poke", "space": "ram",
               "addr": base[part] + off % size[part], "bytes": data.hex()}
              for frac, part, off, data in sorted(where)]
    s_py, s_fast = pair(tmp_path_factory.mktemp("run"), fmt, wl, cfg, interval, 50)
    for s in (s_py, s_fast):
        s.add_breakpoint("catch", "error")
        s.schedule(inputs)
    assert _stops(s_py, "py") == _stops(s_fast, "fast")
    assert seen(s_py) == seen(s_fast)
