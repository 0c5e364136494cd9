"""Build script: the optional compiled engine (emu_fast, Cython).

Everything else is configured in pyproject.toml.  The extension is optional: when Cython or a
C compiler is missing, or the build fails, the pure-Python package is installed with a
warning, and `emu_fast.require()` then says the extension is missing and how to build it.
"""
from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
WARNING = ("WARNING: vblkdbg's compiled engine (emu_fast) was not built: {0}\n"
           "         The pure-Python engine is installed; `--engine fast` will say the extension\n"
           "         is missing.  To build it: install a C compiler and the Python headers\n"
           "         (e.g. apt-get install gcc python3-dev) and run `pip install .` again.\n")


def _warn(reason) -> None:
    sys.stderr.write(WARNING.format(reason))


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a failed extension is left out."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001  (no compiler, no headers, ...)
            _warn(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            _warn(f"{ext.name}: {e}")


def _sha256(path: str) -> str:
    """The hash emu_fast/__init__.py compares with the source (emu_fast._source_sha256): the
    module's .pyx and every .pxd next to it (the C declarations and inline code it cimports)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    d = os.path.dirname(path)
    for name in sorted(n for n in os.listdir(d) if n.endswith(".pxd")):
        with open(os.path.join(d, name), "rb") as f:
            h.update(b"\0" + name.encode() + b"\0" + f.read())
    return h.hexdigest()


def _extensions() -> list:
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError as e:
        _warn(f"Cython is not installed ({e})")
        return []
    pyx = sorted(f for f in os.listdir(os.path.join(HERE, "emu_fast")) if f.endswith(".pyx"))
    exts = []
    try:
        build_dir = os.path.join("build", "cython")      # generated C stays out of the tree
        for f in pyx:       # one call per module: each is compiled with its own source's hash
            digest = _sha256(os.path.join(HERE, "emu_fast", f))
            # cythonize regenerates C only when a source is newer than it; the hash compiled into
            # the module changes with other things too, so a stale one forces a regeneration
            stamp = os.path.join(HERE, build_dir, "emu_fast", f + ".hash")
            try:
                with open(stamp) as sf:
                    stale = sf.read() != digest
            except OSError:
                stale = True
            exts += cythonize([os.path.join("emu_fast", f)],
                              compiler_directives={"language_level": "3"},
                              compile_time_env={"CYTHON_VERSION": Cython.__version__, "PYX_HASH": digest},
                              build_dir=build_dir, force=stale, quiet=True)
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            with open(stamp, "w") as sf:
                sf.write(digest)
    except Exception as e:  # noqa: BLE001
        _warn(f"cythonize failed ({e})")
        return []
    if sys.platform != "win32":
        # a CPython-internal macro missing from the public headers compiles as a call of an
        # undefined function and only fails when the module is imported: fail the build
        for e in exts:
            e.extra_compile_args.append("-Werror=implicit-function-declaration")
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt},
      exclude_package_data={"emu_fast": ["*.c"]})
