"""Repository contracts: the README's two commands, CI calling the same test command, layering."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_start():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"## Quick start\s+```(?:sh|bash)?\n(.*?)```", text, re.S)
    assert m, "README needs a code block under '## Quick start'"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_readme_quick_start_has_run_then_test():
    lines = _quick_start()
    assert len(lines) == 2
    assert lines[0].startswith("pip install") and "vblkdbg" in lines[0]
    assert lines[1].startswith("pip install") and "pytest" in lines[1]


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert _quick_start()[1] in ci.splitlines()


def test_emu_is_headless():
    code = ("import sys, emu.machine, emu.summary, emu.block.image; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tui')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_build_outputs_or_machine_paths_tracked():
    r = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        return
    files = r.stdout.split()
    assert not [f for f in files if re.search(r"\.(so|pyd|o)$|(^|/)build/|\.egg-info|__pycache__", f)]
