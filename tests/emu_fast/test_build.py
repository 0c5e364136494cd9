"""The extension is there (in CI), or says clearly that it is not and how to build it."""
from __future__ import annotations

import os

import pytest

import emu_fast
from emu import engine
from emu.errors import EmuError


def test_ci_builds_the_extension():
    """CI builds emu_fast (`pip install .` with a C compiler): there it must be importable."""
    if os.environ.get("VBLKDBG_CI") != "1":
        pytest.skip("only enforced in CI (VBLKDBG_CI=1)")
    assert emu_fast.available(), emu_fast._IMPORT_ERROR
    assert emu_fast.status().startswith("emu_fast: compiled (Cython ")


def test_status_line():
    s = emu_fast.status()
    assert s == "emu_fast: not compiled" or s.startswith("emu_fast: compiled (Cython 3")
    if emu_fast.available():
        import emu.machine  # noqa: F401  (registers every handler)
        from emu.sim.steps import REGISTRY
        from emu_fast import _bulk
        n = len(emu_fast.compiled_kinds())
        b = [k for k in _bulk.handled_kinds() if k in REGISTRY]
        assert 0 < n < len(REGISTRY) and 0 < len(b) == len(_bulk.handled_kinds()) < len(REGISTRY)
        assert s.endswith(f"; {n} of {len(REGISTRY)} step handlers compiled, {len(b)} in the bulk core)")
    assert engine.version_line() == s


def test_missing_extension_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(emu_fast, "_core", None)
    monkeypatch.setattr(emu_fast, "_IMPORT_ERROR", "No module named 'emu_fast._core'")
    assert not emu_fast.available()
    assert emu_fast.status() == "emu_fast: not compiled"
    with pytest.raises(emu_fast.FastEngineMissing) as ei:
        emu_fast.require()
    assert isinstance(ei.value, EmuError)
    msg = str(ei.value)
    assert "not compiled" in msg and "pip install ." in msg and "gcc python3-dev" in msg
    with pytest.raises(emu_fast.FastEngineMissing):
        engine.check_engine("fast")
    from tests.conftest import build, make_image
    m = build(make_image(tmp_path / "d.raw", 1 << 20), "write 0 4k\n", ram_size=1 << 20)
    for call in (lambda: emu_fast.run(m), lambda: emu_fast.step(m), lambda: engine.run(m, "fast"),
                 lambda: engine.stepper(m, "fast")):
        with pytest.raises(emu_fast.FastEngineMissing):
            call()
    assert m.steps == 0
    assert engine.check_engine("py") == "py"
    with pytest.raises(engine.EngineError):
        engine.check_engine("turbo")


def test_the_source_distribution_carries_every_cython_source(tmp_path):
    """An sdist (what `pip download`/PyPI users build from) holds every .pyx and .pxd, so the
    extension builds from it as from a checkout (MANIFEST.in)."""
    import glob
    import shutil
    import subprocess
    import sys
    import tarfile
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = tmp_path / "src"        # a copy: the sdist run writes egg-info next to setup.py
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "*.so", "*.c", "__pycache__", ".git", ".hypothesis", "dist"))
    p = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                       cwd=src, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    (tgz,) = glob.glob(str(tmp_path / "dist" / "*.tar.gz"))
    with tarfile.open(tgz) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    want = {f"emu_fast/{os.path.basename(f)}" for f in glob.glob(os.path.join(root, "emu_fast", "*.px[dy]"))}
    assert want and want <= names, sorted(want - names)
    assert not any(n.endswith((".c", ".so")) for n in names)


def test_the_source_hash_covers_the_pxd_files(tmp_path):
    """A module compiled before a .pxd beside it changed (inline code it cimports, the C
    scheduler's declarations) is stale too: the hash it is checked against covers them."""
    (tmp_path / "_m.pyx").write_text("x = 1\n")
    (tmp_path / "_a.pxd").write_text("cdef inline int f(): return 1\n")
    h0 = emu_fast._source_sha256(str(tmp_path), "_m")
    (tmp_path / "_a.pxd").write_text("cdef inline int f(): return 2\n")
    h1 = emu_fast._source_sha256(str(tmp_path), "_m")
    (tmp_path / "_m.pyx").write_text("x = 2\n")
    h2 = emu_fast._source_sha256(str(tmp_path), "_m")
    assert len({h0, h1, h2}) == 3
    assert emu_fast._source_sha256(str(tmp_path), "_missing") is None
    if emu_fast.available():       # and what setup.py compiled in is that same hash
        import importlib
        for name in emu_fast.MODULES:
            assert importlib.import_module(f"emu_fast.{name}").PYX_SHA256 == emu_fast._pyx_sha256(name)
