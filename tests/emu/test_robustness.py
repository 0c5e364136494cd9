"""Whatever bytes land in guest RAM, the emulator never raises: faults become diagnostics."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import build, make_image

WL = "write 0 8k\nread 64k 4k\nflush\nget-id\ndiscard 1M 8k\nwrite 8k 4k\nwait\nread 0 12k\n"


@pytest.mark.slow
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(at_step=st.integers(20, 400), region=st.sampled_from(["desc", "avail", "used", "pdu", "table"]),
       offset=st.integers(0, 4095), data=st.binary(min_size=1, max_size=16),
       indirect=st.booleans(), event_idx=st.booleans())
def test_random_corruption_never_raises(tmp_path_factory, at_step, region, offset, data, indirect,
                                        event_idx):
    img = make_image(tmp_path_factory.mktemp("r") / "r.raw", 2 << 20)
    m = build(img, WL, indirect=indirect, event_idx=event_idx, queue_size=8)
    for _ in range(at_step):
        if m.step() is None:
            break
    vq = m.guest.vq
    base = {"desc": vq.desc, "avail": vq.avail, "used": vq.used, "pdu": m.guest.pdu_base,
            "table": 0x17000}[region]
    if not base:
        return
    m.poke(base + offset % 512, data)
    for _ in range(200000):
        if m.step() is None:
            break
    m.digest()
