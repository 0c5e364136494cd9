"""The stepped qcow2 driver against QEMU's own tools (qemu-img / qemu-io as oracles).

- random workloads through the emulated guest leave an image `qemu-img check` accepts (no
  errors, no leaks) and `qemu-img compare` finds identical to a raw image qemu-io built
  from the same operations;
- the same writes applied one at a time by qemu-io give the same `qemu-img map` (host
  offsets included: QEMU's first-fit allocation, reproduced);
- images QEMU wrote (data, zero clusters, compressed clusters, backing chains) read back
  byte-exact through the emulated guest.
"""
from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.workload import write_pattern
from tests.conftest import build, run_all
from tests.oracle import qemu_img, qemu_img_json, qemu_io, to_raw

SECT = 512


def _run(image, workload, **cfg):
    m = build(image, workload, mode="write", **cfg)
    run_all(m)
    m.shutdown()
    m.hostfile.close()
    return m


@st.composite
def workloads(draw, size):
    """Epochs of non-overlapping operations (the block layer orders nothing within an epoch)."""
    eps = []
    for _ in range(draw(st.integers(1, 5))):
        used, ops = [], []
        for _ in range(draw(st.integers(1, 7))):
            kind = draw(st.sampled_from(["write", "write", "write", "read", "zero", "zerou",
                                         "discard", "flush"]))
            if kind == "flush":
                ops.append(("flush",))
                continue
            nsect = draw(st.one_of(st.integers(1, 16), st.integers(1, 400), st.sampled_from([128, 256])))
            off = draw(st.integers(0, size // SECT - nsect)) * SECT
            ln = nsect * SECT
            if any(off < e and s < off + ln for s, e in used):
                continue
            used.append((off, off + ln))
            ops.append((kind, off, ln))
        eps.append(ops)
    return eps


def _lines(eps):
    out, n = [], 0
    for ops in eps:
        for op in ops:
            n += 1
            k = op[0]
            if k == "flush":
                out.append("flush")
            elif k == "zero":
                out.append(f"write-zeroes {op[1]} {op[2]}")
            elif k == "zerou":
                out.append(f"write-zeroes {op[1]} {op[2]} unmap")
            else:
                out.append(f"{k} {op[1]} {op[2]}")
        out.append("wait")
        n += 1
    return "\n".join(out) + "\n"


def _qemu_io_commands(eps, tmp_path):
    """The same operations as qemu-io commands (writes carry the same bytes, via -s FILE)."""
    cmds, n = [], 0
    for ops in eps:
        for op in ops:
            n += 1
            k = op[0]
            if k == "write":
                p = tmp_path / f"w{n}.bin"
                p.write_bytes(write_pattern(n, op[1], op[2]))
                cmds += ["-c", f"write -s {p} {op[1]} {op[2]}"]
            elif k == "zero":
                cmds += ["-c", f"write -z {op[1]} {op[2]}"]
            elif k == "zerou":
                cmds += ["-c", f"write -z -u {op[1]} {op[2]}"]
            elif k == "discard":
                cmds += ["-c", f"discard {op[1]} {op[2]}"]
            elif k == "flush":
                cmds += ["-c", "flush"]
        n += 1
    return cmds


@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data(), cluster=st.sampled_from([512, 4096, 65536, 2 << 20]),
       refbits=st.sampled_from([1, 16, 64]), discard=st.sampled_from(["ignore", "unmap"]),
       cache=st.sampled_from(["writeback", "writethrough"]), seed=st.integers(0, 99))
def test_random_workloads_check_clean_and_compare_identical(tmp_path_factory, data, cluster, refbits,
                                                            discard, cache, seed):
    size = 6 << 20
    eps = data.draw(workloads(size))
    d = tmp_path_factory.mktemp("q")
    img, ref, raw = str(d / "a.qcow2"), str(d / "ref.qcow2"), str(d / "ref.raw")
    for p in (img, ref):
        qemu_img("create", "-q", "-f", "qcow2", "-o",
                 f"cluster_size={cluster},refcount_bits={refbits}", p, size)
    m = _run(img, _lines(eps), discard=discard, cache=cache, seed=seed)
    assert m.vdev.error is None
    assert all(r["status"] == "OK" for r in m.guest.proc.results), m.guest.proc.results
    check = qemu_img("check", img, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors were found" in check.stdout and "leaked" not in check.stdout
    # QEMU applies the same operations to the same kind of image; its result, as raw:
    cmds = _qemu_io_commands(eps, d)
    if cmds:
        qemu_io("--image-opts", f"driver=qcow2,file.filename={ref},discard={discard}", *cmds)
    to_raw(ref, raw)
    cmp_ = qemu_img("compare", "-f", "qcow2", "-F", "raw", img, raw, check=False)
    assert cmp_.returncode == 0, cmp_.stdout


@pytest.mark.parametrize("cluster,refbits", [(65536, 16), (512, 16), (4096, 1), (1024, 64)])
def test_allocation_fidelity_against_qemu_io(tmp_path, cluster, refbits):
    """One write at a time: the same host offsets as QEMU (qemu-img map) for the same sequence."""
    size = 16 << 20
    ops = [("write", 0, 4096), ("write", 5 << 20, 3 * cluster), ("write", 65536 + 512, 7000 // 512 * 512),
           ("zero", 1 << 20, 2 * cluster), ("zerou", 5 << 20, cluster), ("write", 12 << 20, 300 * 512),
           ("discard", 12 << 20, 300 * 512), ("write", 3 << 20, 4096), ("write", 0, 512),
           ("write", 9 << 20, 128 * 1024)]
    ours, theirs = str(tmp_path / "ours.qcow2"), str(tmp_path / "qemu.qcow2")
    for p in (ours, theirs):
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster},refcount_bits={refbits}",
                 p, size)
    lines, cmds = [], []
    for i, (k, off, ln) in enumerate(ops):
        pat = (i % 250) + 1
        if k == "write":
            lines.append(f"write {off} {ln} fill={pat}")
            cmds += ["-c", f"write -P {pat} {off} {ln}"]
        elif k == "zero":
            lines.append(f"write-zeroes {off} {ln}")
            cmds += ["-c", f"write -z {off} {ln}"]
        elif k == "zerou":
            lines.append(f"write-zeroes {off} {ln} unmap")
            cmds += ["-c", f"write -z -u {off} {ln}"]
        else:
            lines.append(f"discard {off} {ln}")
            cmds += ["-c", f"discard {off} {ln}"]
        lines.append("wait")
    _run(ours, "\n".join(lines) + "\n", discard="unmap")
    qemu_io("--image-opts", f"driver=qcow2,file.filename={theirs},discard=unmap", *cmds)
    assert qemu_img_json("map", ours) == qemu_img_json("map", theirs)
    assert qemu_img("compare", ours, theirs, check=False).returncode == 0
    assert qemu_img("check", ours, check=False).returncode == 0


@pytest.mark.slow
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "write", "write", "zero", "zerou", "discard"]),
                              st.integers(0, (8 << 20) // SECT - 1), st.integers(1, 600)),
                    min_size=1, max_size=14),
       cluster=st.sampled_from([512, 4096, 65536]), refbits=st.sampled_from([2, 16, 64]))
def test_allocation_fidelity_random_sequences(tmp_path_factory, ops, cluster, refbits):
    size = 8 << 20
    d = tmp_path_factory.mktemp("f")
    ours, theirs = str(d / "ours.qcow2"), str(d / "qemu.qcow2")
    for p in (ours, theirs):
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster},refcount_bits={refbits}",
                 p, size)
    lines, cmds = [], []
    for i, (k, sect, nsect) in enumerate(ops):
        off, ln = sect * SECT, min(nsect, size // SECT - sect) * SECT
        pat = (i % 250) + 1
        lines.append({"write": f"write {off} {ln} fill={pat}", "zero": f"write-zeroes {off} {ln}",
                      "zerou": f"write-zeroes {off} {ln} unmap", "discard": f"discard {off} {ln}"}[k])
        lines.append("wait")
        cmds += ["-c", {"write": f"write -P {pat} {off} {ln}", "zero": f"write -z {off} {ln}",
                        "zerou": f"write -z -u {off} {ln}", "discard": f"discard {off} {ln}"}[k]]
    _run(ours, "\n".join(lines) + "\n", discard="unmap")
    qemu_io("--image-opts", f"driver=qcow2,file.filename={theirs},discard=unmap", *cmds)
    assert qemu_img_json("map", ours) == qemu_img_json("map", theirs)
    assert qemu_img("compare", ours, theirs, check=False).returncode == 0
    assert qemu_img("check", ours, check=False).returncode == 0


def _guest_reads(tmp_path, image, size, chunk):
    wl = "".join(f"read {o} {min(chunk, size - o)}\n" for o in range(0, size, chunk))
    m = build(image, wl)
    run_all(m)
    assert m.vdev.error is None
    return sorted(m.guest.proc.reads, key=lambda r: r["n"])


def _assert_guest_sees(tmp_path, image, size, chunk=256 * 1024):
    expect = to_raw(image, str(tmp_path / "expect.raw"))
    for r in _guest_reads(tmp_path, image, size, chunk):
        want = expect[r["offset"]:r["offset"] + r["length"]]
        assert r["status"] == "OK"
        assert r["sha256"] == hashlib.sha256(want).hexdigest(), f"mismatch at {r['offset']:#x}"


@pytest.mark.parametrize("opts", ["cluster_size=65536", "cluster_size=512", "compat=0.10",
                                  "cluster_size=2M,refcount_bits=64"])
def test_qemu_written_data_and_zero_clusters_read_back(tmp_path, opts):
    size = 4 << 20
    img = str(tmp_path / "q.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, img, size)
    zero = [] if "0.10" in opts else ["-c", "write -z 0x50000 0x30000"]
    qemu_io("-f", "qcow2", img, "-c", "write -P 0x11 0 0x30000", "-c", "write -P 0x22 0x101000 0x1800",
            *zero, "-c", "write -P 0x33 0x3ff000 0x1000")
    _assert_guest_sees(tmp_path, img, size)


def test_compressed_clusters_read_back(tmp_path):
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.truncate(2 << 20)
        f.seek(0)
        f.write(b"compressible " * 20000)
        f.seek(1 << 20)
        f.write(os.urandom(70000))
    img = str(tmp_path / "c.qcow2")
    qemu_img("convert", "-q", "-c", "-O", "qcow2", src, img)
    # compressed clusters show as data without a host offset
    assert any(e["data"] and "offset" not in e for e in qemu_img_json("map", img))
    _assert_guest_sees(tmp_path, img, 2 << 20)


@pytest.mark.parametrize("base_fmt", ["raw", "qcow2"])
def test_backing_chain_reads_and_cow(tmp_path, base_fmt):
    size = 4 << 20
    base = str(tmp_path / f"base.{base_fmt}")
    qemu_img("create", "-q", "-f", base_fmt, base, size)
    qemu_io("-f", base_fmt, base, "-c", "write -P 0x5a 0 2M")
    top = str(tmp_path / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base." + base_fmt, "-F", base_fmt, top)
    qemu_io("-f", "qcow2", top, "-c", "write -P 0x77 0x10000 0x1000")
    _assert_guest_sees(tmp_path, top, size)
    # a partial write into a backed cluster copies the rest of the cluster from the backing file
    m = _run(top, "write 0x200000 4k fill=0x99\nwrite 0x30200 512 fill=0x66\nwait\n")
    assert m.vdev.error is None
    assert qemu_img("check", top, check=False).returncode == 0
    _assert_guest_sees(tmp_path, top, size)
    with open(base, "rb") as f:
        head = f.read(16)
    assert head[:4] != b"\x99" * 4        # the backing file was never written
