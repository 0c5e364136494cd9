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
    """The hash emu_fast/__init__.py compares with the source: each module has its own."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


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
        for f in pyx:       # one call per module: each is compiled with its own source's hash
            exts += cythonize([os.path.join("emu_fast", f)],
                              compiler_directives={"language_level": "3"},
                              compile_time_env={"CYTHON_VERSION": Cython.__version__,
                                                "PYX_HASH": _sha256(os.path.join(HERE, "emu_fast", f))},
                              build_dir=os.path.join("build", "cython"),    # generated C stays out of the tree
                              quiet=True)
    except Exception as e:  # noqa: BLE001
        _warn(f"cythonize failed ({e})")
        return []
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt},
      exclude_package_data={"emu_fast": ["*.c"]})
