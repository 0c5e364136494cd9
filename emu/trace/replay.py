"""Re-execute a vblkdbg trace and check it against its recorded digests (`vblkdbg replay`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .record import Trace, _point, close_session, open_origin, origin_of_trace


@dataclass
class Divergence:
    """The first recorded point the replay does not reproduce."""
    step: int
    recorded: str
    replayed: str
    differs: list = field(default_factory=list)      # names of the differing state parts
    note: str = ""

    def to_json(self) -> dict:
        return {"step": self.step, "recorded": self.recorded, "replayed": self.replayed,
                "differs": self.differs, "note": self.note}

    def describe(self) -> str:
        parts = ", ".join(self.differs) if self.differs else "the digest"
        return (f"diverges at step {self.step}: {parts} differ(s) (recorded digest "
                f"{self.recorded[:16]}…, replayed {self.replayed[:16]}…)"
                + (f"; {self.note}" if self.note else ""))


@dataclass
class ReplayResult:
    trace: str
    steps: int
    digest: str
    checked: int                      # digests compared (the end included)
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def to_json(self) -> dict:
        return {"trace": self.trace, "ok": self.ok, "steps": self.steps, "digest": self.digest,
                "checked": self.checked,
                "divergence": self.divergence.to_json() if self.divergence else None}


def _compare(rec: dict, now: dict) -> Divergence | None:
    if rec["digest"] == now["digest"]:
        return None
    differs = sorted(k for k in set(rec["parts"]) | set(now["parts"])
                     if rec["parts"].get(k) != now["parts"].get(k))
    return Divergence(rec["step"], rec["digest"], now["digest"], differs)


def replay(t: Trace, image: str | None = None, check: bool = False, progress=None,
           session=None, engine: str = "auto") -> ReplayResult:
    """Run the trace's inputs to its end step.  check: compare every stored digest and stop
    at the first that differs; otherwise only the end state is compared."""
    own = session is None
    if own:
        session = open_origin(origin_of_trace(t, image))
    try:
        session.set_engine(engine)
        session._use(bulk=True)
        session.schedule(t.inputs)
        points = (t.digests if check else []) + [t.end]
        checked = 0
        for p in points:
            end = t.end["step"]
            st = session._run(p["step"], check=False, every=1000,
                              progress=None if progress is None
                              else lambda n, _live: progress(n, end))
            if st is not None:
                now = _point(session.m)
                return ReplayResult(t.path, session.m.steps, now["digest"], checked,
                                    Divergence(p["step"], p["digest"], now["digest"], [],
                                               f"the replay ended at step {session.m.steps}"))
            now = _point(session.m)
            checked += 1
            div = _compare(p, now)
            if div is not None:
                return ReplayResult(t.path, session.m.steps, now["digest"], checked, div)
        return ReplayResult(t.path, session.m.steps, session.m.digest(), checked)
    finally:
        if own:
            close_session(session)
