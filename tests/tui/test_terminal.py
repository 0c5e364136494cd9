"""The README's first command in a real terminal (tmux): it opens the debugger on the sample,
a key steps the emulator, q quits cleanly, and the sample is unchanged."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.test_repo import _quick_start

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "sample_images", "article.qcow2")

pytestmark = pytest.mark.slow


# a tmux server of this test process's own: parallel test workers do not share one
_SOCKET = f"vblkdbg-test-{os.getpid()}"


def _tmux(*args, check=True):
    return subprocess.run(["tmux", "-L", _SOCKET, *args], capture_output=True, text=True, check=check)


def _screen() -> str:
    return _tmux("capture-pane", "-p", "-t", "t").stdout


def _wait_for(pred, timeout=60.0) -> str:
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = _screen()
        if pred(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError("the terminal never showed what was expected; it shows:\n" + screen)


@pytest.fixture
def tmux():
    if shutil.which("tmux") is None:
        if os.environ.get("VBLKDBG_CI"):
            pytest.fail("tmux is missing (.ci/run installs it)")
        pytest.skip("tmux is not installed")
    yield
    _tmux("kill-server", check=False)


def test_readme_first_command_opens_the_debugger_in_a_terminal(tmux, tmp_path):
    command = _quick_start()[0].split("&&")[-1].strip()        # the part after the install
    assert command.split()[0] == "vblkdbg"
    before = hashlib.sha256(open(SAMPLE, "rb").read()).hexdigest()
    env_path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    done = tmp_path / "exit-status"
    # the shell records the exit status, so a crash after q is seen too
    _tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "45", "-c", str(tmp_path),
          f"env -u COLUMNS -u LINES PATH='{env_path}' TERM=xterm-256color {command}; echo $? > '{done}'; sleep 30")
    _wait_for(lambda s: "Requests (1)" in s and "step 0" in s)
    screen = _screen()
    for title in ("Descriptors (2)", "Avail ring (3)", "Used ring (4)", "Device (5)", "Host image (6)", "Steps (7)"):
        assert title in screen, title
    _tmux("send-keys", "-t", "t", "s")
    _wait_for(lambda s: "step 1 " in s)
    _tmux("send-keys", "-t", "t", "q")
    end = time.monotonic() + 30
    while not done.exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert done.exists() and done.read_text().strip() == "0", _screen()
    assert hashlib.sha256(open(SAMPLE, "rb").read()).hexdigest() == before
