"""QEMU `log` trace backend output: fixtures printed from QEMU 10.2's own trace-events format strings."""
from __future__ import annotations

import re

import pytest

from emu.trace.importer import Options, TraceImportError, import_trace

# The format strings, verbatim from QEMU 10.2 (the C string-literal pieces joined):
FMT = {
    # hw/block/trace-events:48 virtio_blk_req_complete(void *vdev, void *req, int status)
    "virtio_blk_req_complete": "vdev %p req %p status %d",
    # hw/block/trace-events:49 virtio_blk_rw_complete(void *vdev, void *req, int ret)
    "virtio_blk_rw_complete": "vdev %p req %p ret %d",
    # hw/block/trace-events:53 virtio_blk_handle_write(void *vdev, void *req, uint64_t sector,
    #                                                    size_t nsectors)
    "virtio_blk_handle_write": "vdev %p req %p sector %" "PRIu64" " nsectors %zu",
    # hw/block/trace-events:54 virtio_blk_handle_read(... the same arguments)
    "virtio_blk_handle_read": "vdev %p req %p sector %" "PRIu64" " nsectors %zu",
    # hw/block/trace-events:55 virtio_blk_submit_multireq(void *vdev, void *mrb, int start,
    #     int num_reqs, uint64_t offset, size_t size, bool is_write)
    "virtio_blk_submit_multireq": "vdev %p mrb %p start %d num_reqs %d offset %" "PRIu64"
                                  " size %zu is_write %d",
    # hw/virtio/trace-events:56 virtqueue_fill(void *vq, const void *elem, unsigned int len,
    #                                           unsigned int idx)
    "virtqueue_fill": "vq %p elem %p len %u idx %u",
    # hw/virtio/trace-events:57 virtqueue_flush(void *vq, unsigned int count)
    "virtqueue_flush": "vq %p count %u",
    # hw/virtio/trace-events:58 virtqueue_pop(void *vq, void *elem, unsigned int in_num,
    #                                          unsigned int out_num)
    "virtqueue_pop": "vq %p elem %p in_num %u out_num %u",
    # hw/virtio/trace-events:59 virtio_queue_notify(void *vdev, int n, void *vq)
    "virtio_queue_notify": "vdev %p n %d vq %p",
    # hw/virtio/trace-events:62 virtio_notify(void *vdev, void *vq)
    "virtio_notify": "vdev %p vq %p",
}
_SPEC = re.compile(r"%(?:p|d|u|zu|PRIu64)")


def event(name: str, *args) -> str:
    """NAME ARGS as the log backend prints it: qemu_log("NAME " FMT "\\n", args...)."""
    vals = iter(args)

    def one(m):
        v = next(vals)
        if m.group(0) == "%p":
            return "(nil)" if v == 0 else f"0x{v:x}"
        return str(int(v))
    return f"{name} {_SPEC.sub(one, FMT[name])}"


class QemuLog:
    """Builds a log: lines with an optional -msg timestamp=on prefix of either QEMU era."""

    def __init__(self, prefix: str = "none", start_us: int = 1_700_000_000_000_000):
        self.prefix = prefix
        self.now_us = start_us
        self.lines: list[str] = []

    def emit(self, name: str, *args, dt_us: int = 1) -> None:
        self.now_us += dt_us
        text = event(name, *args)
        if self.prefix == "pid":          # QEMU <= 10.0: "%d@%zu.%06zu:" thread id, gettimeofday
            text = f"4242@{self.now_us // 1_000_000}.{self.now_us % 1_000_000:06d}:{text}"
        elif self.prefix == "iso":        # QEMU >= 10.1: g_date_time_format_iso8601() + " "
            import datetime
            dt = datetime.datetime.fromtimestamp(self.now_us / 1e6, datetime.timezone.utc)
            dt = dt.replace(microsecond=self.now_us % 1_000_000)
            text = dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ ") + text
        self.lines.append(text)

    def other(self, text: str) -> None:
        self.lines.append(text)

    def write(self, path) -> str:
        path.write_text("\n".join(self.lines) + "\n")
        return str(path)


VDEV, VQ = 0x55d4c0a1b2c0, 0x55d4c0a1f000
SHAPE = {"read": (2, 1), "write": (1, 2), "flush": (1, 1), "get-id": (2, 1), "discard": (1, 2),
         "write-zeroes": (1, 2)}          # (in_num, out_num) of one-segment requests


def render_qemu(requests, prefix="none", depth=4, vdev=VDEV, vq=VQ, log=None, gap_us=10):
    """The log of QEMU serving requests [(kind, sector, nsectors)] in batches of depth."""
    log = log or QemuLog(prefix)
    free = [0x7f00_0000_1000 + 0x400 * i for i in range(depth)]   # malloc reuses addresses
    idx = 0
    for b in range(0, len(requests), depth):
        batch = requests[b:b + depth]
        log.emit("virtio_queue_notify", vdev, 0, vq, dt_us=gap_us)
        popped = []
        for kind, sector, nsect in batch:
            elem = free.pop(0)
            in_num, out_num = SHAPE[kind]
            log.emit("virtqueue_pop", vq, elem, in_num, out_num)
            if kind == "read":
                log.emit("virtio_blk_handle_read", vdev, elem, sector, nsect)
            elif kind == "write":
                log.emit("virtio_blk_handle_write", vdev, elem, sector, nsect)
            popped.append((elem, kind, nsect))
        log.emit("virtio_blk_submit_multireq", vdev, 0x7ffd1000, 0, len(popped), 0, 4096, 1)
        for elem, kind, nsect in popped:
            if kind in ("read", "write"):
                log.emit("virtio_blk_rw_complete", vdev, elem, 0, dt_us=3)
            log.emit("virtio_blk_req_complete", vdev, elem, 0)
            in_len = nsect * 512 + 1 if kind == "read" else (21 if kind == "get-id" else 1)
            log.emit("virtqueue_fill", vq, elem, in_len, idx)
            idx += 1
            free.append(elem)
        log.emit("virtqueue_flush", vq, len(popped))
        log.emit("virtio_notify", vdev, vq)
    return log


def _import(tmp_path, path, **opts):
    out = tmp_path / "out.wl"
    stats = import_trace(str(path), "qemu-log", str(out), Options(**opts))
    body = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    return stats, body


REQS = [("write", 2048, 8), ("write", 2056, 8), ("flush", 0, 0), ("read", 0, 256),
        ("get-id", 0, 0), ("read", 100, 1), ("discard", 0, 0), ("write", 9, 7), ("flush", 0, 0)]


@pytest.mark.parametrize("prefix", ["none", "pid", "iso"])
def test_requests_rebuilt_from_events(tmp_path, prefix):
    path = render_qemu(REQS, prefix).write(tmp_path / "qemu.log")
    st, body = _import(tmp_path, path)
    assert body == ["write 0x100000 4096", "write 0x101000 4096", "flush", "read 0x0 131072",
                    "get-id", "read 0xc800 512", "write 0x1200 3584", "flush"]
    assert (st.reads, st.writes, st.flushes, st.get_ids) == (2, 3, 2, 1)
    assert st.notes == {"discard/write-zeroes requests skipped (no trace event carries their "
                        "range)": 1}


def test_timestamps_of_both_prefixes(tmp_path):
    for prefix in ("pid", "iso"):
        log = QemuLog(prefix)
        render_qemu([("write", 0, 8)], log=log)
        log.now_us += 1500
        render_qemu([("read", 8, 8)], log=log)
        _, body = _import(tmp_path, log.write(tmp_path / f"{prefix}.log"), timing="honour")
        # the read's handle event comes 1500 us + the batch's own events after the write's
        assert body[0] == "write 0x0 4096" and body[1].startswith("at ")
        assert body[2] == "read 0x1000 4096"
        from emu.workload import parse_time
        assert 1_500_000 < parse_time(body[1].split()[1]) < 1_600_000
    st, body = _import(tmp_path, render_qemu([("write", 0, 8)]).write(tmp_path / "n.log"),
                       timing="honour")
    assert st.untimed and body == ["write 0x0 4096"]


def test_other_devices_and_lines_are_ignored(tmp_path):
    log = QemuLog("pid")
    log.other("qemu-system-x86_64: -drive file=x.qcow2: warning: something")
    net_vq = 0x55d4c0b00000
    log.emit("virtio_queue_notify", 0x55d4c0b0f000, 1, net_vq)
    log.emit("virtqueue_pop", net_vq, 0x7f0000009000, 1, 0)      # a virtio-net buffer
    render_qemu([("write", 8, 8)], log=log)
    log.emit("virtqueue_pop", net_vq, 0x7f000000a000, 1, 0)
    log.emit("virtqueue_fill", net_vq, 0x7f0000009000, 60, 0)
    render_qemu([("flush", 0, 0), ("read", 8, 8)], log=log)
    log.other("virtio_set_status vdev 0x55d4c0b0f000 val 15")
    st, body = _import(tmp_path, log.write(tmp_path / "q.log"))
    assert body == ["write 0x1000 4096", "flush", "read 0x1000 4096"]
    assert st.notes == {}


def test_two_virtio_blk_devices_need_a_choice(tmp_path):
    log = QemuLog()
    render_qemu([("write", 8, 8)], log=log)
    render_qemu([("read", 16, 8), ("flush", 0, 0)], log=log, vdev=0x55d4c0c00000, vq=0x55d4c0c10000)
    path = log.write(tmp_path / "two.log")
    with pytest.raises(TraceImportError) as e:
        _import(tmp_path, path)
    assert "2 virtio-blk devices ('0x55d4c0a1b2c0', '0x55d4c0c00000')" in str(e.value)
    _, body = _import(tmp_path, path, device="0x55d4c0c00000")
    assert body == ["read 0x2000 4096", "flush"]


def test_without_virtqueue_pop_completions_are_taken_as_flushes(tmp_path):
    log = render_qemu([("write", 8, 8), ("flush", 0, 0), ("read", 8, 8)])
    log.lines = [ln for ln in log.lines if not ln.startswith(("virtqueue_pop", "virtqueue_fill"))]
    st, body = _import(tmp_path, log.write(tmp_path / "nopop.log"))
    # with no pop to place it, the flush comes where it completed: after the batch's read
    assert body == ["write 0x1000 4096", "read 0x1000 4096", "flush"]
    assert any("taken as flushes" in k for k in st.notes)


def test_a_log_that_starts_mid_run(tmp_path):
    log = render_qemu([("write", 8, 8), ("read", 0, 8), ("flush", 0, 0)], depth=3)
    # cut after the pops and handle events: the completions' requests are unknown
    cut = next(i for i, ln in enumerate(log.lines) if ln.startswith("virtio_blk_submit"))
    log.lines = log.lines[cut:] + render_qemu([("write", 16, 8)]).lines
    st, body = _import(tmp_path, log.write(tmp_path / "mid.log"))
    assert body == ["write 0x2000 4096"]
    assert st.notes == {"completions of requests popped before the log starts skipped": 3}


def test_no_virtio_blk_events(tmp_path):
    p = tmp_path / "x.log"
    p.write_text(event("virtqueue_pop", VQ, 0x1000, 1, 1) + "\n")
    with pytest.raises(TraceImportError, match="no virtio_blk_\\* events"):
        _import(tmp_path, p)


@pytest.mark.parametrize("bad,what", [
    ("virtio_blk_handle_write vdev 0x55d4c0a1b2c0 req 0x7f0000001000 sector 8",
     "virtio_blk_handle_write: arguments do not match"),
    ("virtqueue_pop vq 0x55d4c0a1f000 elem 0x7f0000001000 in_num x out_num 1",
     "virtqueue_pop: arguments do not match"),
    ("2025-13-45T99:00:00.000001Z virtio_blk_req_complete vdev 0x1 req 0x2 status 0",
     "bad timestamp"),
])
def test_bad_known_event_lines(tmp_path, bad, what):
    log = render_qemu([("write", 8, 8)])
    log.lines.insert(2, bad)
    path = log.write(tmp_path / "bad.log")
    out = tmp_path / "out.wl"
    with pytest.raises(TraceImportError) as e:
        import_trace(path, "qemu-log", str(out))
    assert str(e.value).startswith(f"{path}:3: {what}")
    assert str(e.value).endswith(f"(line: {bad!r})")
    assert not out.exists()
    st, body = _import(tmp_path, path, skip_bad=True)
    assert st.skipped == 1 and body == ["write 0x1000 4096"]
