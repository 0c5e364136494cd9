"""Same image + config + workload + seed => the same steps and the same digest."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import build, make_image, run_all

WL = "write 0 64k\nwrite 64k 4k\nread 1M 8k\nflush\nget-id\ndiscard 2M 64k\nwait\nread 0 68k\n"


def _trace(image, **cfg):
    m = build(image, WL, **cfg)
    steps = run_all(m)
    return [(s.n, s.time_ns, s.ctx, s.kind, s.function, s.detail, s.effects) for s in steps], m.digest()


def test_two_runs_same_digest_and_steps(image):
    a, da = _trace(image)
    b, db = _trace(image)
    assert a == b
    assert da == db


def test_seed_changes_timing_not_outcome(image):
    _a, da = _trace(image, seed=1)
    _b, db = _trace(image, seed=2)
    assert da != db          # the latency jitter moved events around...
    m1 = build(image, WL, seed=1)
    m2 = build(image, WL, seed=2)
    run_all(m1)
    run_all(m2)
    size = m1.hostfile.size
    assert m1.hostfile.pread(0, size) == m2.hostfile.pread(0, size)   # ...not the outcome
    assert m1.guest.proc.reads == m2.guest.proc.reads


def test_digest_covers_ram_image_and_state(image):
    m = build(image, "write 0 4k\n")
    run_all(m)
    d0 = m.digest()
    m.mem.ram[0x100] ^= 1
    m.mem._mark(0x100, 1)
    assert m.digest() != d0
    m.mem.ram[0x100] ^= 1
    m.mem._mark(0x100, 1)
    assert m.digest() == d0
    m.vdev.vqs[0].signalled_used += 1
    assert m.digest() != d0
    m.vdev.vqs[0].signalled_used -= 1
    m.hostfile.pwrite(5000, b"x")
    assert m.digest() != d0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_digest_stable_for_any_seed(tmp_path_factory, seed):
    img = make_image(tmp_path_factory.mktemp("d") / "d.raw", 4 << 20)
    m1 = build(img, "write 0 8k\nread 0 8k\nflush\n", seed=seed)
    m2 = build(img, "write 0 8k\nread 0 8k\nflush\n", seed=seed)
    run_all(m1)
    run_all(m2)
    assert m1.digest() == m2.digest()


def test_the_digest_covers_every_proxy_field_and_touched_queue(image):
    """Machine.state() lists only the proxy queues the driver touched: every field of
    VirtioPciProxy is still there, and writing any queue register changes the digest."""
    import dataclasses

    from emu.machine import _proxy_state
    from emu.transport.virtio_pci import VirtioPciProxy
    m = build(image, "write 0 4k\n")
    p = m.transport.proxy
    assert set(_proxy_state(p)) == {f.name for f in dataclasses.fields(VirtioPciProxy)}
    before = m.digest()
    p.vqs[1000].num = 8                       # a queue nobody uses
    assert m.digest() != before
    p.vqs[1000].num = 0
    assert m.digest() == before
