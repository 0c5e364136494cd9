"""The real QEMU tools as test oracles: qemu-img and qemu-io (Debian qemu-utils).

Missing tools skip the test locally but fail it under CI (VBLKDBG_CI=1): the oracle tests
must never silently skip there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest


def require(tool: str) -> str:
    """The tool's path; skip (locally) or fail (CI) when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (install qemu-utils)"
        if os.environ.get("VBLKDBG_CI") == "1":
            pytest.fail(msg + "; CI must run the oracle tests", pytrace=False)
        pytest.skip(msg)
    return path


def _run(tool: str, args, check: bool, timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run([require(tool), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(map(str, args))} failed with status "
                             f"{r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def qemu_img(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run qemu-img; with check (default) a non-zero status fails the test with its output."""
    return _run("qemu-img", args, check, timeout)


def qemu_io(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run qemu-io; qemu-io reports some failures on stdout with status 0, so check that too."""
    r = _run("qemu-io", args, check, timeout)
    if check and ("failed" in r.stdout or "error" in r.stdout.lower()):
        raise AssertionError(f"qemu-io {' '.join(map(str, args))}:\n{r.stdout}{r.stderr}")
    return r


def qemu_img_json(*args):
    """qemu-img ... --output=json, parsed."""
    return json.loads(qemu_img(*args, "--output=json").stdout)


def to_raw(image: str, out: str) -> bytes:
    """The guest-visible content of any image, as QEMU sees it (qemu-img convert -O raw)."""
    qemu_img("convert", "-O", "raw", image, out)
    with open(out, "rb") as f:
        return f.read()
