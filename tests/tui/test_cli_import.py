"""`vblkdbg import`: the subcommand's options, one-line summary, notes and clean errors."""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest

from tests.conftest import make_image
from tui.cli_import import add_parser, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIO = ("fio version 3 iolog\n1 /dev/vdb add\n2 /dev/vdb open\n"
       "10 /dev/vdb write 0 4096\n"
       "30 /dev/vdb read 8192 4096\n"
       "2030 /dev/vdb sync 8192 0\n"
       "2040 /dev/vdb write 1048576 4096\n"      # line 7: past a 1 MiB disk
       "2050 /dev/vdb close\n")


def parser():
    p = argparse.ArgumentParser(prog="vblkdbg")
    sub = p.add_subparsers(dest="cmd")
    add_parser(sub)
    return p


def cli(*argv):
    return run(parser().parse_args(["import", *argv]))


@pytest.fixture
def log(tmp_path):
    p = tmp_path / "t.iolog"
    p.write_text(FIO)
    return str(p)


def test_import_writes_the_workload_and_a_summary(tmp_path, log, capsys):
    out = str(tmp_path / "o.wl")
    assert cli("fio", log, "-o", out) == 0
    o, e = capsys.readouterr()
    assert o == (f"{log} -> {out}: 1 reads (4096 bytes), 2 writes (8192 bytes), 1 flushes, "
                 "0 discards (0 bytes), 0 write-zeroes, 0 lines skipped\n")
    assert "note: no --disk-size or --image" in e
    text = open(out).read()
    assert text.startswith("# imported from fio iolog v3 t.iolog by vblkdbg import\n")
    assert "write 0x0 4096\nread 0x2000 4096\nwait\nflush\nwrite 0x100000 4096\n" in text


def test_options_reach_the_workload(tmp_path, log, capsys):
    out = str(tmp_path / "o.wl")
    assert cli("fio", log, "-o", out, "--timing", "honour", "--queue-depth", "32",
               "--disk-size", "2M") == 0
    body = [ln for ln in open(out).read().splitlines() if not ln.startswith("#")]
    assert body == ["queue-depth 32", "write 0x0 4096", "at 20us", "read 0x2000 4096", "at 2020us",
                    "wait", "flush", "at 2030us", "write 0x100000 4096"]
    assert "note: no --disk-size" not in capsys.readouterr().err


def test_beyond_with_an_image(tmp_path, log, capsys):
    image = make_image(tmp_path / "disk.raw", 1 << 20)
    out = tmp_path / "o.wl"
    assert cli("fio", log, "-o", str(out), "--image", image) == 1
    err = capsys.readouterr().err
    assert err == (f"vblkdbg: error: {log}:7: write at 0x100000+0x1000 goes past the end of the "
                   "disk (1048576 bytes = 2048 sectors; see --beyond) "
                   "(line: '2040 /dev/vdb write 1048576 4096')\n")
    assert not out.exists()
    assert cli("fio", log, "-o", str(out), "--image", image, "--beyond", "clip") == 0
    o = capsys.readouterr().out
    assert "1 writes (4096 bytes)" in o and "0 clipped, 1 dropped past the end of the disk" in o
    assert cli("fio", log, "-o", str(out), "--image", image, "--beyond", "wrap") == 0
    assert "write 0x0 4096\nread 0x2000 4096\nwait\nflush\nwrite 0x0 4096\n" in out.read_text()
    assert cli("fio", log, "-o", str(out), "--image", str(tmp_path / "nope.raw")) == 1
    assert capsys.readouterr().err.startswith("vblkdbg: error: ")


def test_skip_bad_reports_the_count(tmp_path, log, capsys):
    bad = tmp_path / "bad.iolog"
    bad.write_text(FIO.replace("30 /dev/vdb read", "30 /dev/vdb reed").replace(
        "2030 /dev/vdb sync 8192 0", "2030 /dev/vdb sync"))
    out = tmp_path / "o.wl"
    assert cli("fio", str(bad), "-o", str(out)) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if not ln.startswith("vblkdbg: note:")]
    assert len(errors) == 1 and errors[0].startswith(f"vblkdbg: error: {bad}:5: unknown action 'reed'")
    assert "Traceback" not in err and not out.exists()
    assert cli("fio", str(bad), "-o", str(out), "--skip-bad") == 0
    o, e = capsys.readouterr()
    assert o.endswith("2 lines skipped\n")
    assert f"note: skipped 2 malformed line(s) (first: {bad}:5: unknown action 'reed'" in e


def test_selection_options(tmp_path, capsys):
    two = tmp_path / "two.iolog"
    two.write_text("fio version 2 iolog\n/a add\n/b add\n/a write 0 512\n/b read 0 1024\n")
    out = str(tmp_path / "o.wl")
    assert cli("fio", str(two), "-o", out) == 1
    assert "2 files ('/a', '/b'): choose one with --file NAME|INDEX" in capsys.readouterr().err
    assert cli("fio", str(two), "-o", out, "--file", "1") == 0
    assert "1 reads (1024 bytes), 0 writes" in capsys.readouterr().out
    msr = tmp_path / "t.csv"
    msr.write_text("1,hm,0,Read,0,512,1\n2,hm,1,Write,512,512,1\n")
    assert cli("msr", str(msr), "-o", out, "--disk", "1") == 0
    assert "1 writes (512 bytes)" in capsys.readouterr().out
    bp = tmp_path / "t.txt"
    bp.write_text("  8,0    0        1     0.000000000  1  Q   W 0 + 8 [a]\n"
                  "  8,16   0        2     0.000001000  1  Q   R 8 + 8 [a]\n")
    assert cli("blkparse", str(bp), "-o", out, "--device", "8,16") == 0
    assert "1 reads (4096 bytes), 0 writes" in capsys.readouterr().out


def test_progress_bar_on_a_terminal(tmp_path, log, monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    out = tmp_path / "o.wl"
    assert cli("fio", log, "-o", str(out), "--disk-size", "4M") == 0
    assert out.exists() and "importing" in fake.getvalue()      # rich's bar, then erased
    fake2 = Tty()
    monkeypatch.setattr(sys, "stderr", fake2)
    assert cli("fio", log, "-o", str(out), "--disk-size", "4M", "--no-progress") == 0
    assert fake2.getvalue() == ""


@pytest.mark.parametrize("argv,msg", [
    (["fio", "x"], "the following arguments are required: -o/--output"),
    (["tar", "x", "-o", "y"], "invalid choice: 'tar'"),
    (["fio", "x", "-o", "y", "--queue-depth", "0"], "queue depth must be a positive integer"),
    (["fio", "x", "-o", "y", "--disk-size", "1M", "--image", "i"], "not allowed with argument"),
    (["fio", "x", "-o", "y", "--beyond", "fold"], "invalid choice: 'fold'"),
    (["fio", "x", "-o", "y", "--disk-size", "12q"], "not a size"),
])
def test_usage_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(["import", *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_no_traceback_in_a_real_process(tmp_path):
    script = ("import argparse, sys\nfrom tui.cli_import import add_parser, run\n"
              "p = argparse.ArgumentParser(prog='vblkdbg'); s = p.add_subparsers(dest='cmd')\n"
              "add_parser(s)\nsys.exit(run(p.parse_args(sys.argv[1:])))\n")
    bad = tmp_path / "q.log"
    bad.write_bytes(b"virtio_blk_handle_write vdev 0x1 req 0x2 sector 0 nsectors 8\n\xff\xfe\n")
    r = subprocess.run([sys.executable, "-c", script, "import", "qemu-log", str(bad), "-o",
                        str(tmp_path / "o.wl")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr == f"vblkdbg: note: no --disk-size or --image: I/O past the end of the disk " \
        f"is not checked (--beyond does not apply)\nvblkdbg: error: {bad}:2: not UTF-8 text " \
        "(byte 0 of the line) (line: '\ufffd\ufffd')\n"
    r = subprocess.run([sys.executable, "-c", script, "import", "qemu-log", str(tmp_path / "none"),
                        "-o", str(tmp_path / "o.wl")], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.endswith("none: no such file\n")
    assert not (tmp_path / "o.wl").exists()
