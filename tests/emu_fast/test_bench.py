"""emu_fast/bench.py: the qemu-img peer is the command the issue names, at its defaults."""
from __future__ import annotations

import os
import shutil

import pytest

from emu_fast import bench as B
from tests.oracle import qemu_img, require


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_img_bench_runs_the_default_command_on_the_same_kind_of_image(tmp_path, fmt):
    require("qemu-img")
    img = B.make_image(str(tmp_path / f"q.{fmt}"), fmt)
    r = B.qemu_img_bench(img, fmt, 64)
    assert "error" not in r, r
    # qemu-img bench -d 1 with its own default cache mode: no -t, no O_DIRECT
    assert r["command"].split() == ["bench", "-w", "-d", "1", "-s", "4k", "-c", "64",
                                    "-f", fmt, f"q.{fmt}"]
    assert r["cache"] == "writeback" and r["requests"] == 64 and r["req_per_s"] > 0
    # it really wrote: 64 sequential 4 KiB writes of qemu-img bench's pattern (0 by default)
    # allocate the first 256 KiB of a qcow2 image, which qemu-img's own check accepts
    if fmt == "qcow2":
        qemu_img("check", "-f", "qcow2", img)
        info = qemu_img("map", "--output=json", "-f", "qcow2", img).stdout
        assert '"data": true' in info


def test_qemu_img_bench_without_qemu_img_is_none_and_a_failure_is_reported(tmp_path, monkeypatch):
    img = B.make_image(str(tmp_path / "q.raw"), "raw")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert B.qemu_img_bench(img, "raw", 4) is None
    monkeypatch.undo()
    require("qemu-img")
    r = B.qemu_img_bench(str(tmp_path / "missing.raw"), "raw", 4)
    assert set(r) == {"error"} and r["error"]
    assert not os.path.exists(tmp_path / "missing.raw")
