"""Shared fixtures: small raw images in tmp_path and a machine builder."""
from __future__ import annotations

import os

import pytest

from emu.block.image import open_image
from emu.config import Config
from emu.machine import Machine
from emu.workload import parse_workload

MiB = 1 << 20


def make_image(path, size: int = 16 * MiB, content: bytes | None = None) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        if content:
            f.write(content)
    return str(path)


def build(image: str, workload: str, **cfg) -> Machine:
    hf, fmt = open_image(image, cfg.pop("mode", "overlay"))
    m = Machine(hf, fmt, Config(**cfg), parse_workload(workload, "test.wl"))
    return m


def run_until(m: Machine, pred, limit: int = 100000):
    """Step until pred(step) is true; return that step (fails if the run ends first)."""
    for _ in range(limit):
        rec = m.step()
        assert rec is not None, "the run ended before the condition held"
        if pred(rec):
            return rec
    raise AssertionError("condition not reached")


def run_all(m: Machine, limit: int = 2_000_000) -> list:
    steps = []
    for _ in range(limit):
        rec = m.step()
        if rec is None:
            return steps
        steps.append(rec)
    raise AssertionError("run did not end")


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.raw")


@pytest.fixture(autouse=True)
def _tmpdir_for_overlays(tmp_path, monkeypatch):
    """Overlays go to the test's tmp dir, so nothing leaks between tests."""
    d = tmp_path / "overlays"
    os.makedirs(d, exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(d))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(d))
