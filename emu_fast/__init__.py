"""emu_fast: the compiled (Cython) engine for bulk runs, with exactly the emulator's semantics.

It runs the same Machine object, from the same state, to bit-identical results: the run loop
(pop an event, dispatch its handler, record the Step, finish the step), the scheduler's rules
and queue, the guest-memory and host-file accessors (with their undo/dirty/effect
bookkeeping) and the debugger's bulk loop with its breakpoint prefilter are compiled (_core,
_hostfile); handler modules translate step handlers of the emulator line for line (each
exports HANDLERS = {kind: (compiled, python)}); every other step runs the emulator's own
handler (emu.*), so every Step record (detail, effects, facts) is the one the Python engine
makes.  Switching engines between any two steps
needs nothing but calling the other engine's step/run: no state is converted or copied.

A run nobody observes (run() without on_step) goes further: the bulk core (_bulk and its layer
modules _bulk_guest, _bulk_dev, _bulk_blk) runs stretches of it with the scheduler converted
into C structures and back, and bulk handlers that change the machine exactly as the handlers
do but make no Step record; the compiled loop above runs the steps the core hands back (the
device probe, paths a bulk handler bails on, and a run's last step, whose record m.cur keeps).

    import emu_fast
    emu_fast.require()                  # EmuError subclass if the extension is not compiled
    reason = emu_fast.run(machine, max_steps=None, on_step=None)   # == Machine.run
    rec = emu_fast.step(machine)                                   # == Machine.step
    emu_fast.detach(machine)            # optional: back to pure-Python methods everywhere

There is no silent fallback: without the compiled extension every entry point raises
FastEngineMissing.  `available()` / `status()` tell which it is.
"""
from __future__ import annotations

from emu.errors import EmuError

BUILD_HINT = ("build it with `pip install .` (or `python setup.py build_ext --inplace` in a "
              "checkout) on a machine with a C compiler and the Python headers, e.g. "
              "`apt-get install gcc python3-dev`")


class FastEngineMissing(EmuError):
    """The compiled engine was asked for but the extension is not built."""


# Running from a source checkout (e.g. `python -m pytest` in the repository after
# `pip install .`) imports this package from the tree, while the compiled module was installed
# into site-packages: look for it in every emu_fast directory on sys.path.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)


BULK_LAYERS = ("_bulk_guest", "_bulk_dev", "_bulk_blk")    # the bulk core's layer modules (emu_fast/_bulk_<layer>.pyx: bulk handlers)
MODULES = ("_core", "_support", "_hostfile", "_virtio_blk_dev", "_blk_mq", "_block", "_vring",
           "_qcow2", "_bulk") + BULK_LAYERS   # compiled modules (emu_fast/<name>.pyx)


def _source_sha256(directory: str, name: str) -> str | None:
    """The hash of <directory>/<name>.pyx and every .pxd beside it (what setup.py compiles into
    the module as PYX_SHA256); None when there is no such source."""
    import hashlib
    import os
    src = os.path.join(directory, name + ".pyx")
    if not os.path.exists(src):
        return None
    h = hashlib.sha256()
    with open(src, "rb") as f:
        h.update(f.read())
    for pxd in sorted(n for n in os.listdir(directory) if n.endswith(".pxd")):
        with open(os.path.join(directory, pxd), "rb") as f:
            h.update(b"\0" + pxd.encode() + b"\0" + f.read())
    return h.hexdigest()


def _pyx_sha256(name: str) -> str | None:
    """The source hash of emu_fast/<name> next to this file (None when not a source tree)."""
    import os
    return _source_sha256(os.path.dirname(os.path.abspath(__file__)), name)


def _load():
    import importlib
    import importlib.util
    mods = {}
    for name in MODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is None:
            return None, f"no compiled module {full} is installed"
        try:
            mod = importlib.import_module(full)
        except ImportError as e:      # compiled for another Python, or a broken build
            return None, f"{full} does not load: {e}"
        want = _pyx_sha256(name)
        if want is not None and getattr(mod, "PYX_SHA256", None) != want:
            return None, (f"{mod.__file__} was compiled from another version of "
                          f"emu_fast/{name}.pyx (or the .pxd files beside it) than this source tree's: "
                          "rebuild it")
        mods[name] = mod
    for mod in mods.values():
        if hasattr(mod, "HANDLERS"):
            mods["_core"].register(mod.HANDLERS)
    _DETACH[:] = [mod.detach_machine for mod in mods.values() if hasattr(mod, "detach_machine")]
    return mods["_core"], ""


_DETACH: list = []      # the modules' detach_machine(machine) hooks (e.g. _qcow2's engine class)


_core, _IMPORT_ERROR = _load()


def available() -> bool:
    """True when the compiled extension is importable."""
    return _core is not None


def status() -> str:
    """One line for `vblkdbg --version`."""
    if _core is None:
        return "emu_fast: not compiled"
    import emu.machine  # noqa: F401  (imports every layer: all handlers registered)
    from emu.sim.steps import REGISTRY
    from emu_fast import _bulk
    return (f"emu_fast: compiled (Cython {_core.CYTHON_VERSION_STR}; "
            f"{len(_core.compiled_kinds())} of {len(REGISTRY)} step handlers compiled, "
            f"{len(_bulk.handled_kinds())} in the bulk core)")


def require():
    """The compiled module, or FastEngineMissing saying how to build it."""
    if _core is None:
        raise FastEngineMissing("the fast engine (emu_fast) is not compiled: the Cython extension "
                                f"is missing ({_IMPORT_ERROR}); {BUILD_HINT}")
    return _core


def step(machine):
    """Machine.step on the compiled engine: the next Step record, or None at the end."""
    return require().step(machine)


def run(machine, max_steps: int | None = None, on_step=None) -> str:
    """Machine.run on the compiled engine: 'end', 'steps' (max_steps run) or 'stopped'
    (on_step(rec) returned true)."""
    return require().run(machine, max_steps, on_step)


def run_count(machine, max_steps: int | None = None, on_step=None) -> tuple[str, int]:
    """run(), returning (stop_reason, steps run)."""
    return require().run_count(machine, max_steps, on_step)


def compiled_kinds() -> list[str]:
    """The step kinds whose handlers run compiled (the rest run the emulator's own Python
    handlers on the fast engine too)."""
    return list(require().compiled_kinds())


def attach(machine) -> None:
    """Have the machine's scheduler and guest memory use the compiled methods from now on
    (step/run do this themselves; handlers called between steps then use them too)."""
    require().attach(machine)


def detach(machine) -> None:
    """Back to the pure-Python methods (the Python engine does not need this: the compiled
    methods compute exactly the same, but `--engine py` should run pure Python)."""
    if _core is not None:
        _core.detach(machine)
        for hook in _DETACH:
            hook(machine)


def slot_paths() -> dict[str, bool]:
    """{"<module>.<class>": True} for each emulator class whose __slots__ members a compiled
    module reads and writes at their offsets (emu_fast/_slots.pxd); False where the class is
    not of the shape that needs (the module then uses getattr/setattr: exact, slower)."""
    import importlib
    require()
    out = {}
    for name in MODULES:
        for cls, ok in getattr(importlib.import_module(f"{__name__}.{name}"), "SLOT_PATHS", {}).items():
            out[f"{name}.{cls}"] = bool(ok)
    return out


def attached(machine) -> bool:
    return _core is not None and bool(_core.attached(machine))
