"""`queue-depth N` is a write to /sys/block/vda/queue/nr_requests (queue_requests_store)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import build, run_all


def _depth_notes(steps):
    return [s.detail for s in steps if s.function == "queue_requests_store"]


def test_more_than_the_tag_set_holds_is_refused_and_the_run_goes_on(image):
    # queue_size=4 with indirect descriptors: the tag set holds 4 tags.
    m = build(image, "queue-depth 64\nwrite 0 4k\nwrite 8k 4k\nwait\n", queue_size=4)
    steps = run_all(m)
    (note,) = _depth_notes(steps)
    assert "EINVAL" in note and "holds 4" in note
    assert m.guest.blkmq.nr_requests == 4
    assert sum(1 for s in steps if s.function == "blk_mq_end_request") == 2


def test_below_the_minimum_is_raised_to_blkdev_min_rq(image):
    m = build(image, "queue-depth 1\nwrite 0 4k\nwait\n")
    steps = run_all(m)
    assert _depth_notes(steps)[0].endswith("nr_requests = 4")
    assert m.guest.blkmq.nr_requests == 4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qsize=st.sampled_from([4, 8, 16]), indirect=st.booleans(), depth=st.integers(1, 64),
       n=st.integers(1, 12))
def test_in_flight_never_exceeds_nr_requests(image, qsize, indirect, depth, n):
    wl = f"queue-depth {depth}\n" + "".join(f"write {i * 4}k 4k\n" for i in range(n)) + "wait\n"
    m = build(image, wl, queue_size=qsize, indirect=indirect)
    done = 0
    while (rec := m.step()) is not None:
        q = m.guest.blkmq
        assert sum(q.tags) <= q.nr_requests <= q.depth
        done += rec.function == "blk_mq_end_request"
    assert done >= 1                    # the writes completed (some may have merged)
