"""--engine on the command line, `set engine`, `vblkdbg --version` and `vblkdbg bench`."""
from __future__ import annotations

import json
import os

import pytest

import emu_fast
from tui.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "sample_images", "article.qcow2")
MIXED = os.path.join(ROOT, "sample_images", "mixed.wl")


def test_version_says_whether_the_engine_is_compiled(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    out = capsys.readouterr().out
    assert out.startswith("vblkdbg ") and emu_fast.status() in out


def test_both_engines_give_the_same_run(capsys):
    digests = []
    for eng in ("py", "fast"):
        assert main(["run", SAMPLE, "--workload", MIXED, "--engine", eng, "--json",
                     "--ram-size", "4M"]) == 0
        digests.append(json.loads(capsys.readouterr().out)["digest"])
    assert digests[0] == digests[1]


def test_engine_fast_without_the_extension_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(emu_fast, "_core", None)
    monkeypatch.setattr(emu_fast, "_IMPORT_ERROR", "No module named 'emu_fast._core'")
    for argv in (["run", SAMPLE, "--workload", MIXED, "--engine", "fast"],
                 ["batch", SAMPLE, "--workload", MIXED, "--engine", "fast", "-ex", "when"],
                 [SAMPLE, "--engine", "fast"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not compiled" in err and "pip install ." in err, err
    # set engine fast in a batch: that command fails, the others run
    assert main(["batch", SAMPLE, "--workload", MIXED, "-ex", "set engine fast", "-ex",
                 "continue"]) == 1
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out[0]["ok"] is False and "pip install ." in out[0]["error"]
    assert out[1]["ok"] is True and out[1]["reason"] == "end"


def test_bench_prints_requests_per_second_and_ratios(capsys):
    assert main(["bench", "--json", "--requests", "8", "--repeat", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = res["results"]
    assert {(r["workload"], r["format"]) for r in rows} == {
        (w, f) for w in ("rand4k", "seq64k", "mixed") for f in ("raw", "qcow2")}
    for r in rows:
        assert r["identical"] and r["fast_over_py"] > 0
        assert r["py"]["req_per_s"] > 0 and r["fast"]["req_per_s"] > 0


def test_bench_dir_must_be_a_directory(tmp_path, capsys):
    assert main(["bench", "--dir", str(tmp_path / "missing"), "--requests", "1"]) != 0
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_set_engine_in_the_debugger_shows_in_the_status_line():
    import asyncio

    from tests.tui.test_app import SIZE, make_app, text_of

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("s")
            assert "engine py" in text_of(app.query_one("#status"))
            await pilot.press("colon", *"set engine py", "enter")
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            status = text_of(app.query_one("#status"))
            assert "engine py (set)" in status and "stopped: end" in status
    asyncio.run(go())
