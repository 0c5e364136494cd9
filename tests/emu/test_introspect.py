"""emu.introspect: QEMU's `info virtio-status / virtio-queue-status / virtio-queue-element`.

The dicts carry the field names of QEMU's QMP structures (qapi/virtio.json: VirtioStatus,
VirtQueueStatus, VirtioQueueElement, as filled by hw/virtio/virtio.c and virtio-qmp.c), and
at every step they agree with the rings view and with an independent decode of guest RAM.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu import introspect, views
from emu.session import Session
from tests import specdecode as S
from tests.conftest import build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "sample_images")
ARTICLE_QCOW2 = os.path.join(SAMPLES, "article.qcow2")

# qmp_x_query_virtio_status / _queue_status / _queue_element fill these members
QEMU_STATUS_FIELDS = {"name", "device_id", "vhost_started", "device_endian", "guest_features",
                      "host_features", "backend_features", "num_vqs", "status", "isr",
                      "queue_sel", "vm_running", "broken", "disabled", "use_started", "started",
                      "start_on_kick", "disable_legacy_check", "bus_name",
                      "use_guest_notifier_mask"}
QEMU_QUEUE_FIELDS = {"name", "queue_index", "inuse", "vring_num", "vring_num_default",
                     "vring_align", "vring_desc", "vring_avail", "vring_used", "used_idx",
                     "signalled_used", "signalled_used_valid", "last_avail_idx",
                     "shadow_avail_idx"}
QEMU_ELEMENT_FIELDS = {"index", "ndescs", "descs", "avail", "used"}
FLAG_WORDS = {S.NEXT: "next", S.WRITE: "write", S.INDIRECT: "indirect"}   # qmp_decode_vring_desc_flags
STATUS_BITS = {"ACKNOWLEDGE": 1, "DRIVER": 2, "DRIVER_OK": 4, "FEATURES_OK": 8,
               "DEVICE_NEEDS_RESET": 64, "FAILED": 128}
VIRTIO_ID_BLOCK = 2      # virtio spec 5 "Device Types"


def workload(name: str) -> str:
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read()


def flag_words(flags: int) -> set:
    return {w for bit, w in FLAG_WORDS.items() if flags & bit}


def check_element(m, elem: dict, head: int) -> None:
    """The element at head is the chain a spec decode of guest RAM follows from head."""
    q = m.vdev.vqs[0]
    ram = m.mem.ram
    av, us = S.avail(ram, q.avail, q.num), S.used(ram, q.used, q.num)
    assert QEMU_ELEMENT_FIELDS <= set(elem)
    assert elem["index"] == head and elem["avail"]["ring"] == head
    assert (elem["avail"]["flags"], elem["avail"]["idx"]) == (av["flags"], av["idx"])
    assert (elem["used"]["flags"], elem["used"]["idx"]) == (us["flags"], us["idx"])
    descs = list(elem["descs"])
    first = S.desc(ram, q.desc, head)
    if first.flags & S.INDIRECT:
        # the descriptor that points at the table leads (QEMU lists only the table's entries)
        lead = descs.pop(0)
        assert (lead["addr"], lead["len"], set(lead["flags"])) == (first.addr, first.len, {"indirect"})
    chain = S.chain(ram, q.desc, head, q.num)
    limit = first.len // 16 if first.flags & S.INDIRECT else q.num
    cut = next((k for k, c in enumerate(chain) if c.flags & S.NEXT and c.next >= limit), None)
    if cut is not None:             # a stale chain pointing out of its table ends there (QEMU:
        chain = chain[:cut + 1]     # virtqueue_split_read_next_desc -> VIRTQUEUE_READ_DESC_ERROR)
    assert [(d["addr"], d["len"], set(d["flags"])) for d in descs] == \
        [(c.addr, c.len, flag_words(c.flags)) for c in chain]
    assert elem["ndescs"] == len(elem["descs"])


def check_introspection(s: Session) -> None:
    m = s.m
    st_ = introspect.virtio_status(m)
    assert QEMU_STATUS_FIELDS <= set(st_)
    dv = views.device(m)
    assert (st_["name"], st_["device_id"], st_["num_vqs"]) == ("virtio-blk", VIRTIO_ID_BLOCK, 1)
    assert st_["device_endian"] == "little" and st_["vhost_started"] is False
    assert (st_["status"], st_["isr"], st_["broken"]) == (dv.status, dv.isr, dv.broken)
    assert set(st_["status_names"]) == {k for k, v in STATUS_BITS.items() if st_["status"] & v}
    assert st_["guest_features"] == list(dv.features_negotiated)
    assert st_["host_features"] == list(dv.features_offered)
    assert set(st_["guest_features"]) <= set(st_["host_features"])
    assert st_["config_generation"] == dv.config_generation
    rings = views.rings(m)
    q = m.vdev.vqs[0]
    if rings is None or not q.desc:
        return
    qs = introspect.virtio_queue_status(m, 0)
    assert QEMU_QUEUE_FIELDS <= set(qs)
    assert qs["queue_index"] == 0 and qs["vring_num"] == rings.size
    assert (qs["vring_desc"], qs["vring_avail"], qs["vring_used"]) == (rings.desc, rings.avail, rings.used)
    assert (qs["last_avail_idx"], qs["shadow_avail_idx"], qs["used_idx"], qs["signalled_used"],
            qs["signalled_used_valid"], qs["inuse"]) == \
        (rings.last_avail_idx, rings.shadow_avail_idx, rings.used_idx, rings.signalled_used,
         rings.signalled_used_valid, rings.inuse)
    ram = m.mem.ram
    av, us = S.avail(ram, q.avail, q.num), S.used(ram, q.used, q.num)
    assert qs["used_idx"] == us["idx"], "the device's used_idx is what it published"
    assert (av["idx"] - qs["last_avail_idx"]) & 0xFFFF <= q.num
    assert (av["idx"] - qs["shadow_avail_idx"]) & 0xFFFF <= q.num
    assert qs["inuse"] == (qs["last_avail_idx"] - qs["used_idx"]) & 0xFFFF
    if not q.caches:
        with pytest.raises(ValueError):
            introspect.virtio_queue_element(m)
        return
    # the default element: the next chain to pop, from avail.ring[last_avail_idx % num]
    nxt = av["ring"][qs["last_avail_idx"] % q.num]
    check_element(m, introspect.virtio_queue_element(m), nxt)
    # and every chain on the ring, asked for by its head
    for d in views.descriptors(m):
        if d.owner is not None and d.role in ("request header", "indirect table"):
            check_element(m, introspect.virtio_queue_element(m, d.index), d.index)


def run_checked(s: Session) -> int:
    checked = 0
    while True:
        check_introspection(s)
        checked += 1
        if s.step().reason != "step":
            check_introspection(s)
            return checked


@pytest.mark.parametrize("cfg", [dict(), dict(indirect=False, queue_size=32),
                                 dict(event_idx=False, queue_size=16)], ids=["default", "direct", "no-event-idx"])
@pytest.mark.parametrize("wl", ["article.wl", "mixed.wl"])
def test_introspection_agrees_with_views_and_ram(wl, cfg):
    s = Session(build(ARTICLE_QCOW2, workload(wl), **cfg))
    assert run_checked(s) > 100
    s.m.hostfile.close()


def test_element_arguments_are_checked():
    s = Session(build(ARTICLE_QCOW2, workload("article.wl")))
    with pytest.raises(ValueError):
        introspect.virtio_queue_element(s.m)             # no queue yet
    while not (s.rings() and s.rings().avail_idx):
        s.step()
    n = s.rings().size
    for bad in (n, n + 1, 65535, -1):
        with pytest.raises(ValueError):
            introspect.virtio_queue_element(s.m, bad)
    assert introspect.virtio_queue_element(s.m, n - 1)["index"] == n - 1


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(0, 480), head=st.integers(0, 255))
def test_element_of_any_head_follows_the_spec_decode(steps, head):
    """Any head (free or not) decodes like the spec's chain walk (bounded, never loops)."""
    s = Session(build(ARTICLE_QCOW2, workload("mixed.wl")))
    s.step(steps)
    q = s.m.vdev.vqs[0]
    if not q.caches:
        return
    check_element(s.m, introspect.virtio_queue_element(s.m, head), head)
    s.m.hostfile.close()


def test_a_broken_device_shows_in_the_status():
    s = Session(build(ARTICLE_QCOW2, workload("article.wl")))
    while not (s.rings() and s.rings().avail_idx):
        s.step()
    s.m.poke(s.rings().avail + 4, (s.rings().size + 5).to_bytes(2, "little"))   # a head out of range
    assert s.cont().reason == "error"
    st_ = introspect.virtio_status(s.m)
    assert st_["broken"] is True and st_["status"] & STATUS_BITS["DEVICE_NEEDS_RESET"]
    assert "DEVICE_NEEDS_RESET" in st_["status_names"]
    assert st_["error"]["message"] == s.stop.message
