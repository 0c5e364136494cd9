"""emu.callchain: the Linux / QEMU call chain behind every step.

For every step that article.wl and mixed.wl execute (qcow2 and raw images, a fresh qcow2 that
allocates, discard=unmap), Session.chains() must give a chain that ends in the step's own
function, names a source file for every frame, follows the caller table, and starts at a known
root: a QEMU thread or entry point (QEMU_ROOTS) on the host; on the guest an entry point of the
table (a function whose static caller is "").
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu import views
from emu.block.qcow2.create import create_qcow2
from emu.callchain import _CALLERS, QEMU_ROOTS, call_chain, source_of, static_path
from emu.session import Session
from tests.conftest import build, make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE_QCOW2 = os.path.join(SAMPLES, "article.qcow2")
MiB = 1 << 20

LINUX_SOURCES = ("block/blk-", "block/fops.c", "drivers/", "kernel/", "fs/", "include/linux/", "mm/")


def is_linux(source: str) -> bool:
    return source.startswith(LINUX_SOURCES)


# the guest's entry points, from the table: functions that have no static caller
GUEST_ROOTS = frozenset(f for f, (caller, src) in _CALLERS.items() if not caller and is_linux(src))


def workload(name: str) -> str:
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


# -- the table itself -------------------------------------------------------------------------------

def test_every_table_entry_names_a_source_and_a_known_caller():
    for fn, (caller, src) in _CALLERS.items():
        assert src and src.endswith((".c", ".h")), fn
        assert not caller or caller in _CALLERS, f"{fn}: caller {caller} is not in the table"
        if caller:      # a caller is on the same side (Linux calls Linux, QEMU calls QEMU)
            assert is_linux(_CALLERS[caller][1]) == is_linux(src), (fn, caller)


def test_every_static_path_ends_at_a_root_without_a_cycle():
    for fn in _CALLERS:
        path = static_path(fn)
        assert path[-1] == fn and len(set(path)) == len(path)
        assert _CALLERS[path[0]][0] == "", f"{fn}: its callers loop back ({path})"
        for a, b in zip(path, path[1:]):
            assert _CALLERS[b][0] == a


def test_qemu_roots_are_table_roots_on_the_host():
    for r in QEMU_ROOTS:
        assert r in _CALLERS and _CALLERS[r][0] == "" and not is_linux(_CALLERS[r][1])
    assert GUEST_ROOTS and not GUEST_ROOTS & QEMU_ROOTS


@settings(max_examples=200)
@given(fn=st.sampled_from(sorted(_CALLERS)), source=st.sampled_from(["", "x/y.c"]))
def test_call_chain_without_a_run_time_caller_is_the_static_path(fn, source):
    chain = call_chain(fn, source)
    assert [f for f, _ in chain] == static_path(fn)
    assert chain[-1] == (fn, source or source_of(fn))
    assert all(s == source_of(f) for f, s in chain[:-1])


@settings(max_examples=200)
@given(fn=st.text("abcdef_", min_size=1, max_size=12), hops=st.lists(st.sampled_from(sorted(_CALLERS)), min_size=1, max_size=3))
def test_call_chain_with_a_run_time_caller(fn, hops):
    """caller "a>b": a's static callers, then a, then b, then the function."""
    chain = call_chain(fn, "f.c", ">".join(hops))
    names = [f for f, _ in chain]
    assert names == static_path(hops[0]) + hops[1:] + [fn]
    assert chain[-1] == (fn, "f.c")


def test_an_unknown_function_stands_alone():
    assert call_chain("no_such_function", "x.c") == [("no_such_function", "x.c")]
    assert source_of("no_such_function") == "" and static_path("no_such_function") == ["no_such_function"]


# -- every step of real runs ------------------------------------------------------------------------

def check_chain(rec, chain: list) -> str:
    """One step's chain: returns the side it was checked as."""
    side = views.step_view(rec).side
    names = [f for f, _ in chain]
    assert names[-1] == rec.function and chain[-1][1] == rec.source, (rec.n, chain)
    for f, src in chain:
        assert src, f"step {rec.n} ({rec.function}): frame {f} has no source file"
    for f, src in chain[:-1]:
        assert src == source_of(f), (rec.n, f, src)
    if side == "host":
        assert names[0] in QEMU_ROOTS, f"step {rec.n} ({rec.function}): host chain starts at {names[0]}"
        assert not any(is_linux(s) for _f, s in chain), (rec.n, chain)
    else:
        assert names[0] in GUEST_ROOTS, f"step {rec.n} ({rec.function}): guest chain starts at {names[0]}"
        assert all(is_linux(s) for _f, s in chain), (rec.n, chain)
    # each frame is called by the one above it: by the table, or by the step's run-time callers
    hops = rec.caller.split(">") if rec.caller else []
    runtime = set(zip(hops, hops[1:] + [rec.function]))
    for a, b in zip(names, names[1:]):
        assert (a, b) in runtime or _CALLERS.get(b, ("", ""))[0] == a, \
            f"step {rec.n}: {a} does not call {b} ({names})"
    return side


def run_checked(s: Session) -> set:
    functions = set()
    while s.step().reason == "step":
        rec = s.last
        chains = s.chains()
        side = views.step_view(rec).side
        n, chain = chains[side]
        assert n == rec.n
        assert check_chain(rec, chain) == side
        functions.add(rec.function)
    for side, (n, chain) in s.chains().items():       # the shutdown's last step too
        rec = next(r for r in reversed(s.history) if r.n == n)
        check_chain(rec, chain)
    return functions


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain-images")
    fresh = str(d / "fresh.qcow2")
    create_qcow2(fresh, 16 * MiB)
    return {"article": ARTICLE_QCOW2, "fresh": fresh, "raw": make_image(d / "disk.raw", 16 * MiB)}


@pytest.mark.parametrize("image, wl, cfg", [
    ("article", "article.wl", {}),
    ("article", "mixed.wl", {}),
    ("raw", "article.wl", {}),
    ("raw", "mixed.wl", {}),
    ("fresh", "mixed.wl", {"discard": "unmap"}),
    ("raw", "mixed.wl", {"discard": "unmap", "indirect": False, "event_idx": False}),
])
def test_every_step_has_a_rooted_chain(images, image, wl, cfg):
    s = Session(build(images[image], workload(wl), **cfg))
    functions = run_checked(s)
    assert {"virtqueue_add_split", "virtqueue_split_pop", "blk_mq_end_request"} <= functions
    s.m.hostfile.close()


def test_the_runs_cover_both_formats_and_every_layer(images):
    """The parametrized runs above do reach the qcow2 planned I/O and the raw/file layers."""
    seen = set()
    layers = set()
    for image, wl, cfg in (("fresh", "mixed.wl", {"discard": "unmap"}), ("raw", "mixed.wl", {})):
        s = Session(build(images[image], workload(wl), **cfg))
        while s.step().reason == "step":
            seen.add((s.last.function, s.last.caller))
            layers.add(s.last.layer)
        s.m.hostfile.close()
    assert any(caller for _f, caller in seen), "qcow2 planned I/O has run-time callers"
    assert {"app", "blk-mq", "virtio_blk", "virtio_ring", "virtio_pci", "virtio-pci", "virtio",
            "virtio-blk", "block", "raw", "qcow2", "file"} <= layers
