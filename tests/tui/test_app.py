"""Pilot tests of the debugger: every key and command, asserting on emulator state and panes."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tui.app import DebuggerApp
from tui.cli import build_tui_parser, open_session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "sample_images", "article.qcow2")
SIZE = (160, 45)


def make_app(*extra, keys="letters"):
    a = build_tui_parser().parse_args(list(extra))
    s = open_session(a)
    return DebuggerApp(s, keys=keys)


def run(coro):
    return asyncio.run(coro)


def text_of(widget) -> str:
    """All text a widget renders (tables: their cells; statics: their content)."""
    from textual.widgets import DataTable, Static

    from tui.widgets.device_pane import DevicePane
    from tui.widgets.step_log import StepLog

    from tui.widgets.hex_view import HexView
    out = []
    for w in [widget, *widget.query("*")]:
        if isinstance(w, HexView):
            out.extend(w.render_line(y).text for y in range(w.scrollable_content_region.height))
        elif isinstance(w, DataTable):
            for r in range(w.row_count):
                out.append(" ".join(str(c) for c in w.get_row_at(r)))
        elif isinstance(w, StepLog):
            out.extend(w.plain_lines)
        elif isinstance(w, DevicePane):
            out.append(w.plain)
        elif isinstance(w, Static):
            out.append(str(w.render()))
    return "\n".join(out)


async def _press_until(pilot, key, cond, limit=400):
    for _ in range(limit):
        if cond():
            return True
        await pilot.press(key)
    return cond()


def test_opens_on_the_sample_with_nothing_run():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.session.m.steps == 0
            status = text_of(app.query_one("#status"))
            assert "step 0" in status and "nothing run yet" in status
            for title in ("Requests", "Descriptors", "Avail ring", "Used ring", "Device", "Host image", "Steps"):
                assert any(str(w.border_title).startswith(title) for w in app.query(".pane")), title
            assert "qcow2 header" in text_of(app.query_one("#hex"))
    run(go())


def test_s_steps_one_event_and_the_log_shows_it():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("s")
            assert app.session.m.steps == 1
            await pilot.press("s", "s")
            assert app.session.m.steps == 3
            log = text_of(app.query_one("#steps"))
            assert "vp_reset" in log and "virtio_add_status" in log
            assert "step 3" in text_of(app.query_one("#status"))
    run(go())


def test_pressing_s_shows_every_hop_of_one_4k_write():
    """The article's question, answered pane by pane for the first 4 KiB write."""
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            seen = {}

            def note(key, cond):
                if key not in seen and cond:
                    seen[key] = s.m.steps

            for _ in range(400):
                await pilot.press("s")
                reqs = text_of(app.query_one("#requests"))
                descs = text_of(app.query_one("#descriptors"))
                avail = text_of(app.query_one("#avail"))
                used = text_of(app.query_one("#used"))
                dev = text_of(app.query_one("#device"))
                log = text_of(app.query_one("#steps"))
                note("request", "OUT" in reqs and "9296" in reqs)
                note("chain", "indirect table" in descs and "request header" in descs)
                note("avail", "idx 1" in avail)
                note("kick", "kicks=1" in dev)
                note("pop", "virtqueue_split_pop" in log and "head 0" in log)
                note("host write", "pwrite" in log.lower() and "0x8a000" in log)
                note("used", "idx 1" in used)
                note("irq", "vring_interrupt" in log)
                note("done", "done" in reqs and "OK" in reqs)
                if len(seen) == 9:
                    break
            assert set(seen) == {"request", "chain", "avail", "kick", "pop", "host write", "used", "irq", "done"}, seen
            order = sorted(seen, key=seen.get)
            assert order.index("chain") < order.index("kick") < order.index("pop") < order.index("host write") \
                < order.index("used") < order.index("irq") <= order.index("done")
    run(go())


def test_n_runs_to_the_next_layer():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("s")
            first = app.session.last.layer
            await pilot.press("n")
            assert app.session.last.layer != first
            assert "next" in text_of(app.query_one("#status"))
    run(go())


def test_f_finishes_the_selected_request_and_c_continues_to_the_end():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            assert await _press_until(pilot, "s", lambda: s.m.guest.blkmq.rqs)
            rid = min(s.m.guest.blkmq.rqs)
            app.selected = rid
            await pilot.press("f")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert rid not in s.m.guest.blkmq.rqs
            assert "finish" in text_of(app.query_one("#status"))
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.stop.reason == "end" and not app.running
            assert "stopped: end" in text_of(app.query_one("#status"))
            reqs = text_of(app.query_one("#requests"))
            assert reqs.count("OK") >= 5
    run(go())


def test_escape_stops_a_continue():
    async def go():
        app = make_app(SAMPLE, "--workload", os.path.join(ROOT, "sample_images", "mixed.wl"))
        async with app.run_test(size=SIZE) as pilot:
            app.session.cont = _held_cont(app.session)
            await pilot.press("c")
            await pilot.pause()
            assert app.running
            await pilot.press("s")                          # stepping is refused while running
            assert app.session.m.steps == 0
            await pilot.press("escape")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.session.stop.reason == "interrupted" and not app.running
    run(go())


def _held_cont(session):
    """A continue that holds until the user cancels it (no timing involved), then runs the real one."""
    orig = session.cont

    def cont(cancelled=None, progress=None, every=500):
        import time
        for _ in range(20000):          # 20 s at most, so a broken Esc fails instead of hanging
            if cancelled():
                break
            time.sleep(0.001)
        return orig(cancelled=cancelled, progress=progress, every=every)
    return cont


def test_device_error_stops_continue_and_is_shown():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            while not any(r.kind == "vring.add_publish" for r in [s.last] if r):
                await pilot.press("s")
            vq = s.m.guest.vq
            head = s.m.mem.read_u16(vq.avail + 4)
            s.m.poke(vq.desc + 16 * head + 8, bytes(4))      # head descriptor len = 0
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.stop.reason == "error"
            dev = text_of(app.query_one("#device"))
            assert "DEVICE ERROR" in dev and "Invalid size for indirect buffer table" in dev
            assert "2.7.5.3.1" in dev
            assert "error" in text_of(app.query_one("#status"))
    run(go())


def test_colon_command_line_runs_commands_and_reports_errors():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("colon")
            assert app.focused.id == "cmdline"
            await pilot.press(*"step 12", "enter")
            assert app.session.m.steps == 12
            await pilot.press("colon", *"frobnicate", "enter")
            assert "unknown command" in text_of(app.query_one("#steps"))
            await pilot.press("colon", *"info virtio-status", "enter")
            log = text_of(app.query_one("#steps"))
            assert "status" in log and "ACKNOWLEDGE" in log
    run(go())


@pytest.mark.parametrize("line,expect", [
    ("info virtio-queue-status", "last_avail_idx"),
    ("info virtio-queue-element", "indirect"),
    ("x/16xb 0x10000", "0x"),
    ("help", "goto"),
])
def test_commands_show_their_output(line, expect):
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("step 40")
            await pilot.pause()
            app.run_command(line)
            await pilot.pause()
            assert expect in text_of(app.query_one("#steps"))
    run(go())


def test_goto_commands_move_the_hex_view():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("goto host 0x30000")
            await pilot.pause()
            hv = app.query_one("#hex")
            assert hv.space == "host" and hv.cursor == 0x30000
            app.run_command("goto ram 0x10000")
            await pilot.pause()
            assert hv.space == "ram" and hv.cursor == 0x10000
            assert "Guest RAM" in str(hv.border_title)
            app.run_command("goto host 0x999999999")
            await pilot.pause()
            assert "past the end" in text_of(app.query_one("#steps"))
            assert hv.cursor < app.session.host_size()
    run(go())


def test_m_toggles_host_and_ram_and_h_follows_a_request():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            hv = app.query_one("#hex")
            await pilot.press("m")
            assert hv.space == "ram"
            await pilot.press("m")
            assert hv.space == "host"
            assert await _press_until(pilot, "s", lambda: s.m.guest.blkmq.rqs)
            rid = min(s.m.guest.blkmq.rqs)
            app.selected = rid
            await pilot.press("h")
            await pilot.pause()
            want = s.guest_to_host(9296 * 512, 4096)[0][0]
            assert hv.space == "host" and hv.cursor == want
    run(go())


def test_help_and_quit_and_focus_keys():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
            assert app.screen.__class__.__name__ != "HelpScreen"
            await pilot.press("2")
            assert app.focused.id == "descriptors"
            await pilot.press("6")
            assert app.focused.id == "hex"
            await pilot.press("1")
            assert app.focused.id == "requests"
            await pilot.press("tab")
            assert app.focused.id != "requests"
            await pilot.press("q")
        assert app.return_code == 0 or app.return_code is None
    run(go())


def test_fkey_profile():
    async def go():
        app = make_app(keys="fkeys")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f11")
            assert app.session.m.steps == 1
            await pilot.press("f10")
            assert app.session.m.steps > 1
            n = app.session.m.steps
            await pilot.press("ctrl+f11")                # reverse-step
            assert app.session.m.steps == n - 1
            await pilot.press("f11")
            await pilot.press("f5")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.session.stop.reason == "end"
    run(go())


def test_too_small_terminal_gets_a_notice():
    async def go():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert app.screen.has_class("too-small")
            assert "needs at least 120" in text_of(app.query_one("#too-small"))
        app2 = make_app()
        async with app2.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            assert not app2.screen.has_class("too-small")
    run(go())


def test_sample_stays_pristine():
    with open(SAMPLE, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.session.stop.reason == "end"
    run(go())
    with open(SAMPLE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before


def test_snapshot_after_a_few_steps(snap_compare):
    app = make_app()

    async def before(pilot):
        app.run_command("step 60")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=before)


MIXED = os.path.join(ROOT, "sample_images", "mixed.wl")


def test_f_finishes_the_request_selected_in_the_requests_pane():
    async def go():
        app = make_app(SAMPLE, "--workload", MIXED)
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("step 120")
            await pilot.pause()
            assert await _press_until(pilot, "s", lambda: len(s.m.guest.blkmq.rqs) >= 3, limit=3000)
            live = sorted(s.m.guest.blkmq.rqs)
            table = app.query_one("#requests")
            await pilot.press("1", *["down"] * table._keys.index(live[-1]))   # to the newest row
            await pilot.pause()
            assert app.selected == live[-1]
            descs = app.query_one("#descriptors")
            await pilot.press("f")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert live[-1] not in s.m.guest.blkmq.rqs and s.stop.reason == "finish"
            assert s.last.function == "blk_mq_end_request"
            assert descs.selected_request == live[-1]
    run(go())


def test_the_selected_request_is_highlighted_in_descriptors_and_rings():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            assert await _press_until(pilot, "s", lambda: s.last and s.last.kind == "vring.add_publish")
            rid = min(s.m.guest.blkmq.rqs)
            await pilot.press("1", "home")
            await pilot.pause()
            assert app.selected == rid

            def marked(table):
                return [str(table.get_row_at(r)[0]) for r in range(table.row_count)
                        if "reverse" in str(getattr(table.get_row_at(r)[0], "style", ""))]
            assert marked(app.query_one("#descriptors"))            # its chain (head + table)
            assert marked(app.query_one("#avail-table"))            # its avail slot
    run(go())


def test_enter_on_a_descriptor_shows_its_buffer_in_guest_ram():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            assert await _press_until(pilot, "s", lambda: s.last and s.last.kind == "vring.add_publish")
            await pilot.press("2", "home", "enter")
            await pilot.pause()
            hv = app.query_one("#hex")
            head = s.descriptors()[0]
            assert hv.space == "ram" and hv.cursor == head.addr and head.addr != 0
    run(go())


def test_command_line_history_completion_and_escape():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("colon", *"step 3", "enter")
            assert app.session.m.steps == 3
            await pilot.press("colon", "up")
            cl = app.query_one("#cmdline")
            assert cl.value == "step 3"
            await pilot.press("enter")
            assert app.session.m.steps == 6
            await pilot.press("colon", *"inf", "tab")
            assert cl.value == "info "
            await pilot.press(*"virtio-queue-s", "tab")
            assert cl.value == "info virtio-queue-status "
            await pilot.press("enter")
            assert "last_avail_idx" in text_of(app.query_one("#steps"))
            await pilot.press("colon", *"step 5", "escape")
            assert not cl.display and app.session.m.steps == 6
            await pilot.press("s")                      # keys work again once it is closed
            assert app.session.m.steps == 7
    run(go())


def test_command_palette_offers_the_actions_and_any_command():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+p", *"Step")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            assert app.session.m.steps == 1
            await pilot.press("ctrl+p", *"step 9")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            assert app.session.m.steps == 10
    run(go())


def test_bt_prints_both_call_chains():
    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("step 45")
            await pilot.pause()
            app.run_command("bt")
            await pilot.pause()
            log = text_of(app.query_one("#steps-log"))
            assert "guest (step" in log and "host (step" in log and "#0" in log
            chain = text_of(app.query_one("#callchain"))
            assert "virtio_blk_handle_vq" in chain or "submit_requests" in chain
    run(go())


def test_a_step_does_not_relayout_the_screen():
    """Stepping stays fluid: after the first steps, a step repaints panes but never re-lays out
    the whole screen (a RichLog or Static.update with layout would do that on every step)."""
    from textual.screen import Screen
    calls = []
    orig = Screen._refresh_layout

    def counting(self, *a, **kw):
        calls.append(1)
        return orig(self, *a, **kw)

    async def go():
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("step 60")
            await pilot.pause()
            Screen._refresh_layout = counting
            try:
                for _ in range(30):
                    await pilot.press("s")
                await pilot.pause()
            finally:
                Screen._refresh_layout = orig
            assert app.session.m.steps == 90
    run(go())
    assert len(calls) < 10, f"{len(calls)} screen layouts for 30 steps"


def test_the_host_write_is_highlighted_and_annotated_in_the_hex_view():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            def wrote_data():
                last = s.last_step()
                return last is not None and any(lo <= 0x8a000 < lo + n for lo, n in last.host_writes)
            assert await _press_until(pilot, "s", wrote_data, limit=600)
            hv = app.query_one("#hex")
            last = s.last_step()
            assert [tuple(r) for r in hv._changed] == sorted({(lo, lo + n) for lo, n in last.host_writes}) \
                or sum(b - a for a, b in hv._changed) == sum(n for _, n in last.host_writes)
            app.run_command("goto host 0x8a000")
            await pilot.pause()
            y = hv.cursor // 16 - hv.scroll_offset.y
            line = hv.render_line(y).text
            want = s.read_host(0x8a000, 16)
            assert line.split()[1:17] == [f"{b:02x}" for b in want]        # the bytes in the file
            assert "sector 9296" in line                                    # the format map's label
            lit = list(hv.render_line(y))
            hv.set_changed([])
            assert list(hv.render_line(y)) != lit                          # the change was highlighted
    run(go())


def test_b_on_a_descriptor_sets_a_breakpoint_that_c_stops_at_and_the_pane_lists():
    async def go():
        app = make_app(SAMPLE, "--workload", MIXED)
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            assert await _press_until(pilot, "s", lambda: s.last and s.last.kind == "vring.add_publish",
                                      limit=3000)
            await pilot.press("2", "home", "b")
            await pilot.pause()
            bps = [b for b in s.breakpoints if b.kind == "desc"]
            assert len(bps) == 1 and bps[0].spec == "desc idx=0"
            pane = text_of(app.query_one("#breakpoints"))
            assert "desc idx=0" in pane and "catchpoint" in pane
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.stop.reason == "breakpoint" and s.stop.hit.id == bps[0].id
            assert "Breakpoint" in text_of(app.query_one("#status"))
            row = app.query_one("#breakpoints").get_row(str(bps[0].id))
            assert str(row[3]) == "1"                               # one hit, shown
    run(go())


def test_b_on_a_request_breaks_when_its_sectors_complete():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            assert await _press_until(pilot, "s", lambda: s.m.guest.blkmq.rqs)
            rid = min(s.m.guest.blkmq.rqs)
            await pilot.press("1", "home", "b")
            await pilot.pause()
            assert any(b.kind == "req" for b in s.breakpoints)
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.stop.reason == "breakpoint" and s.stop.hit.match["id"] == rid
            assert s.stop.hit.match["stage"] == "done"
    run(go())


def test_reverse_keys_go_back_exactly():
    async def go():
        app = make_app()
        s = app.session
        async with app.run_test(size=SIZE) as pilot:
            app.run_command("step 80")
            await pilot.pause()
            d79 = None
            app.run_command("step 1")
            await pilot.pause()
            want = s.m.digest()                 # at 81
            await pilot.press("S")
            await pilot.pause()
            assert s.m.steps == 80
            await pilot.press("s")
            assert s.m.steps == 81 and s.m.digest() == want
            assert "step 81" in text_of(app.query_one("#status"))
            # N: back to before this layer's run of steps
            layer = s.last.layer
            await pilot.press("N")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.m.steps < 81 and (s.last is None or s.last.layer != layer or s.m.steps == 0)
            # C: back to the previous breakpoint hit
            app.run_command("break step vp_notify")
            await pilot.pause()
            await pilot.press("c")
            await app.workers.wait_for_complete()
            await pilot.pause()
            first = s.stop.step
            app.run_command("step 40")
            await pilot.pause()
            await pilot.press("C")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.m.steps == first and s.stop.reason == "breakpoint"
            # F: back to before the selected request existed
            rid = max(r.id for r in s.requests())
            app.selected = rid
            await pilot.press("F")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert s.m.guest.blkmq.next_rq <= rid
            assert rid not in [r.id for r in s.requests()]
    run(go())
