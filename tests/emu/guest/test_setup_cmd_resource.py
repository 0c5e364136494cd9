"""virtblk_setup_cmd: a failed kmalloc of the discard/write-zeroes range is BLK_STS_RESOURCE.

virtio_queue_rq returns it at once; blk-mq puts the request back on hctx->dispatch and runs
the queue again after BLK_MQ_RESOURCE_DELAY, when the memory may be free.  (The request used
to be reported BLK_STS_OK without reaching the ring, and never completed.)
"""
from __future__ import annotations

import pytest

from tests.conftest import build, make_image


@pytest.mark.parametrize("op", ["discard 1M 4k", "write-zeroes 1M 8k", "write-zeroes 1M 8k unmap"])
def test_a_range_that_cannot_be_allocated_is_retried_until_it_completes(tmp_path, op):
    img = make_image(tmp_path / "d.raw", 4 << 20, content=b"\xab" * (2 << 20))
    # the write's buffer takes almost all of the 1 MiB of guest RAM while it is in flight
    m = build(img, f"write 0 936k\n{op}\nwait\n", ram_size=1 << 20, discard="unmap")
    recs = []
    while (rec := m.step()) is not None:
        recs.append(rec)
    failed = [r.n for r in recs if r.kind == "vblkd.setup_cmd" and "BLK_STS_RESOURCE" in r.detail]
    assert failed, "the range allocation was expected to fail while the write is in flight"
    ret = next(r for r in recs if r.n > failed[0] and r.kind == "blkmq.dispatch_ret")
    assert "BLK_STS_RESOURCE" in ret.detail and "back on hctx->dispatch" in ret.detail
    assert any(r.kind == "blkmq.delay_run" and r.n > ret.n for r in recs)
    # the retry reaches the device and the operation completes
    later = [r for r in recs if r.n > ret.n and r.kind == "vblkd.setup_cmd"]
    assert later and "range @" in later[-1].detail
    p = m.guest.proc
    assert p.inflight == 0 and [r["status"] for r in p.results] == ["OK", "OK"]
    start, n = 1 << 20, (4096 if op.startswith("discard") else 8192)
    assert m.hostfile.pread(start, n) == bytes(n)           # unmap/zeroes reached the image
    assert m.hostfile.pread(start + n, 512) == b"\xab" * 512
    # the compiled engine (emu_fast) takes the same path, step for step
    import emu_fast
    if emu_fast.available():
        from emu import engine
        f = build(img, f"write 0 936k\n{op}\nwait\n", ram_size=1 << 20, discard="unmap")
        fast: list = []
        engine.run(f, "fast", None, lambda rec: fast.append(rec) and False)
        assert fast == recs and f.digest() == m.digest()
