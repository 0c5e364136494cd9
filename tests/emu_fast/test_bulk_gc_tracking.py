"""The dicts the bulk core fills in place (vb_fill_values, _qcow2's templates and stores) are
tracked by the cyclic GC whenever they hold a container, as PyDict_SetItem keeps them
(MAINTAIN_TRACKING): an untracked dict holding a list hides every cycle through it from the
collector.  (Whether an all-atomic dict is tracked depends on when full collections ran, so
only this direction is an invariant.)"""
from __future__ import annotations

import gc

import pytest

import emu_fast
from emu import engine
from tests.emu_fast.test_bulk_blk_virtual import WL
from tests.emu_fast.test_differential import machine, snapshot

pytestmark = pytest.mark.skipif(not emu_fast.available(),
                                reason="emu_fast is not compiled (python setup.py build_ext --inplace)")

SKIP = ("mem", "hostfile", "log", "config", "timing", "latency", "dev_ops")


def untracked_holders(m) -> list:
    """Paths of the dicts reachable from the machine's state that hold a container (a value
    the GC may track) while not tracked themselves."""
    out, seen = [], set()
    stack = [((k,), v) for k, v in m.attributes().items() if k not in SKIP]
    while stack:
        path, o = stack.pop()
        if id(o) in seen or len(path) > 12:
            continue
        seen.add(id(o))
        if type(o) is dict:
            if not gc.is_tracked(o) and any(type(v) in (list, dict, set) or gc.is_tracked(v)
                                            for v in o.values()):
                out.append(path)
            stack += [(path + (repr(k)[:24],), v) for k, v in o.items()]
        elif type(o) in (list, tuple):
            stack += [(path + (i,), v) for i, v in enumerate(o)]
        elif hasattr(o, "__dict__") or hasattr(type(o), "__slots__"):
            names = list(getattr(o, "__dict__", {}))
            names += [n for c in type(o).__mro__ for n in getattr(c, "__slots__", ())
                      if isinstance(n, str) and not n.startswith("__")]
            for n in names:
                if hasattr(o, n) and not callable(getattr(type(o), n, None)):
                    stack.append((path + (n,), getattr(o, n)))
    return out


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("chunk", [7, 23])
def test_dicts_holding_containers_are_tracked(tmp_path, fmt, chunk):
    py = machine(tmp_path, fmt, "", WL, dict(discard="unmap"))
    fast = machine(tmp_path, fmt, "", WL, dict(discard="unmap"))
    checked = 0
    for _ in range(3000):
        ra, rb = engine.run(py, "py", chunk), engine.run(fast, "fast", chunk)
        assert ra == rb
        assert untracked_holders(py) == []           # (the rule itself, on the Python engine)
        assert untracked_holders(fast) == [], fast.steps
        checked += bool(fast.block.reqs)
        if ra != "steps":
            break
    assert checked > 5                               # requests were in flight at the checks
    assert snapshot(py) == snapshot(fast)
