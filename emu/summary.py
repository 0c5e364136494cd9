"""The structured result of a run (the `run --json` contract) and the queue status views."""
from __future__ import annotations

from .spec import virtio as V


def queue_status(m, qi: int = 0) -> dict:
    """One queue as both ends see it, with QEMU's and Linux's field names."""
    vq = m.vdev.vqs[qi]
    dq = m.guest.vq
    mem = m.mem
    ready = bool(dq.num)
    return {"index": qi, "size": vq.num,
            "desc": dq.desc, "avail": dq.avail, "used": dq.used,
            "avail_idx": mem.read_u16(dq.avail + V.AVAIL_IDX) if ready else 0,
            "used_idx": mem.read_u16(dq.used + V.USED_IDX) if ready else 0,
            "last_avail_idx": vq.last_avail_idx, "shadow_avail_idx": vq.shadow_avail_idx,
            "signalled_used": vq.signalled_used, "inuse": vq.inuse,
            "last_used_idx": dq.last_used_idx, "avail_idx_shadow": dq.avail_idx_shadow,
            "num_free": dq.num_free, "free_head": dq.free_head,
            "used_event": mem.read_u16(dq.avail + V.avail_used_event_off(dq.num)) if ready else 0,
            "avail_event": mem.read_u16(dq.used + V.used_avail_event_off(dq.num)) if ready else 0,
            "vector": vq.vector, "broken": dq.broken}


def summary(m, stop: str) -> dict:
    s = m.vblk
    vdev = m.vdev
    return {
        "steps": m.steps, "time_ns": m.sim.now, "digest": m.digest(), "stop": stop,
        "requests": {"submitted": s.submitted, "completed": s.completed, "errors": s.errors,
                     "by_type": dict(s.by_type), "merged": s.merged},
        "device": {"status": vdev.status, "status_names": V.status_names(vdev.status),
                   "features_offered": V.feature_names(vdev.host_features & ~V.LEGACY_FEATURES),
                   "features_negotiated": V.feature_names(vdev.guest_features),
                   "broken": vdev.broken, "error": vdev.error,
                   "write_cache": m.block.wce},
        "queues": [queue_status(m, 0)],
        "kicks": m.counters["kicks"], "interrupts": m.counters["interrupts"],
        "kicks_suppressed": m.counters["kicks_suppressed"],
        "interrupts_suppressed": m.counters["irqs_suppressed"],
        "reads": [{"offset": r["offset"], "length": r["length"], "sha256": r["sha256"],
                   "status": r["status"]}
                  for r in sorted(m.guest.proc.reads, key=lambda r: r["n"])],
        "ops": sorted(m.guest.proc.results, key=lambda r: r["n"]),
        "guest": {"probe_error": m.guest.probe_error or None, "log": list(m.guest.log),
                  "outstanding_ops": m.guest.proc.inflight},
        "image": {"format": m.fmt.name, "file_size": m.hostfile.size,
                  "virtual_size": m.fmt.virtual_size(), "host_writes": m.hostfile.writes,
                  "fdatasyncs": m.hostfile.syncs, "warnings": list(m.fmt.warnings),
                  **m.fmt.summary()},
    }

