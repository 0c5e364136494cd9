"""`at T` (clock_nanosleep with TIMER_ABSTIME): issue the next operation no earlier than T."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from emu.workload import parse_workload
from tests.conftest import build, run_all


def _issue_times(steps):
    """Virtual time of each request's virtio_queue_rq, in order."""
    return [s.time_ns for s in steps if s.function == "virtio_queue_rq" and s.detail.startswith("request ")]


def test_the_second_write_waits_and_the_first_completes_meanwhile(image):
    steps = run_all(build(image, "write 0 4k\nat 5ms\nwrite 1M 4k\nwait\n"))
    t = _issue_times(steps)
    assert len(t) == 2 and t[0] < 5_000_000 <= t[1]
    done = [s.time_ns for s in steps if s.function == "blk_mq_end_request"]
    assert done[0] < 5_000_000          # interrupts are handled while the process sleeps
    assert any(s.function == "hrtimer_wakeup" for s in steps)


def test_a_time_already_past_does_not_sleep(image):
    steps = run_all(build(image, "write 0 4k\nwait\nat 1ns\nwrite 8k 4k\nwait\n"))
    assert not any(s.function == "hrtimer_wakeup" for s in steps)
    assert len(_issue_times(steps)) == 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.integers(0, 2_000_000), min_size=1, max_size=5))
def test_every_request_is_issued_at_or_after_its_time(image, times):
    times = sorted(times)
    wl = "".join(f"at {t}\nwrite {i * 64}k 4k\n" for i, t in enumerate(times)) + "wait\n"
    issued = _issue_times(run_all(build(image, wl)))
    assert len(issued) == len(times)
    assert all(i >= t for i, t in zip(issued, times))


def test_time_units_and_bad_times():
    ops = parse_workload("at 7\nat 3us\nat 2ms\nat 1s\n")
    assert [o["time_ns"] for o in ops] == [7, 3000, 2_000_000, 1_000_000_000]
    for bad in ("at", "at 1h", "at -5", "at 1 2", "at 1.5ms"):
        try:
            parse_workload(bad + "\n", "t.wl")
        except Exception as e:
            assert str(e).startswith("t.wl:1:"), e
        else:
            raise AssertionError(f"{bad!r} accepted")
