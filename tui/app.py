"""The vblkdbg debugger: a Textual app over one emulator Session.

Attributes flow down (the app hands each pane the views it shows), messages flow up (panes
report selections); long runs happen in a worker thread and the panes refresh once at the
end.  Every pane title is the name the issue gives it.
"""
from __future__ import annotations

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from .screens import HelpScreen
from .palette import DebuggerCommands
from .widgets.avail_ring_pane import AvailRingPane
from .widgets.breakpoints_pane import BreakpointsPane
from .widgets.command_line import CommandLine
from .widgets.descriptors_pane import DescriptorsPane
from .widgets.device_pane import DevicePane
from .widgets.hex_view import HexView, Region
from .widgets.requests_pane import RequestsPane
from .widgets.status_bar import StatusBar
from .widgets.steps_pane import StepsPane
from .widgets.used_ring_pane import UsedRingPane

MIN_W, MIN_H = 120, 36
SYNC_STEPS = 200            # `step N` up to this runs on the UI thread; more goes to a worker
PANES = ("requests", "descriptors", "avail", "used", "device", "hex", "steps", "breakpoints")
TITLES = {"requests": "Requests", "descriptors": "Descriptors", "avail": "Avail ring",
          "used": "Used ring", "device": "Device", "hex": "Host image", "steps": "Steps",
          "breakpoints": "Breakpoints"}
# the F-key profile (vscode-like); the letters keep working
FKEYS = {"continue": "f5,c", "next": "f10,n", "step": "f11,s", "finish": "shift+f11,f",
         "reverse-continue": "shift+f5,C", "reverse-next": "shift+f10,N", "reverse-step": "ctrl+f11,S",
         "breakpoint": "f9,b"}
RUN_ACTIONS = ("step", "next", "finish", "continue", "command_line", "reverse_step", "reverse_next",
               "reverse_finish", "reverse_continue", "breakpoint")


class DebuggerApp(App):
    """Panes for requests, descriptors, rings, device, host image / guest RAM and steps."""

    CSS_PATH = ["styles/app.tcss", "styles/widgets.tcss", "styles/hex_view.tcss"]
    TITLE = "vblkdbg"
    COMMANDS = App.COMMANDS | {DebuggerCommands}
    BINDINGS = [
        Binding("s", "step", "step", id="step"),
        Binding("n", "next", "next", id="next"),
        Binding("f", "finish", "finish", id="finish"),
        Binding("c", "continue", "cont", id="continue"),
        Binding("S", "reverse_step", "↶step", id="reverse-step"),
        Binding("N", "reverse_next", "↶next", id="reverse-next"),
        Binding("F", "reverse_finish", "↶finish", id="reverse-finish"),
        Binding("C", "reverse_continue", "↶cont", id="reverse-continue"),
        Binding("b", "breakpoint", "break", id="breakpoint"),
        Binding("colon", "command_line", "cmd", id="command-line"),
        Binding("m", "toggle_space", "host/RAM", id="toggle-space"),
        Binding("h", "follow", "follow", id="follow"),
        Binding("question_mark", "help", "help", id="help"),
        Binding("q", "quit", "quit", id="quit"),
        Binding("escape", "stop", "stop", id="stop", show=False),
        Binding("tab", "focus_next", "next pane", show=False),
        *(Binding(str(i + 1), f"focus_pane('{p}')", TITLES[p], show=False) for i, p in enumerate(PANES)),
    ]

    running = reactive(False, bindings=True)
    selected = reactive(None)

    def __init__(self, session, keys: str = "letters") -> None:
        super().__init__()
        self.session = session
        self.keys_profile = keys
        self.space = "host"
        self._shown_steps = 0
        self._map_cache = None
        self._map_step = -1
        self.sub_title = f"{session.image}  ·  {session.workload}"

    # -- layout -----------------------------------------------------------------------------------
    def compose(self):
        yield Header(show_clock=False, icon="")
        with Vertical(id="panes"):
            with Horizontal(id="row-top", classes="row"):
                with Vertical(id="col-requests"):
                    yield RequestsPane(id="requests", classes="pane")
                    yield BreakpointsPane(id="breakpoints", classes="pane")
                yield DescriptorsPane(id="descriptors", classes="pane")
                yield DevicePane(id="device", classes="pane")
            with Horizontal(id="row-mid", classes="row"):
                yield AvailRingPane(id="avail", classes="pane")
                yield UsedRingPane(id="used", classes="pane")
                yield HexView(id="hex", classes="pane")
            yield StepsPane(id="steps", classes="pane")
        yield Static("", id="too-small")
        yield StatusBar(id="status")
        yield CommandLine(id="cmdline")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        if self.keys_profile == "fkeys":
            self.set_keymap(FKEYS)
        for p in PANES:
            self.query_one(f"#{p}").border_title = f"{TITLES[p]} ({PANES.index(p) + 1})"
        self.query_one(CommandLine).display = False
        self._set_hex_source()
        self.refresh_panes(full=True)
        self._check_size(self.size.width, self.size.height)
        self.query_one("#requests").focus()

    def on_resize(self, event) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, w: int, h: int) -> None:
        small = w < MIN_W or h < MIN_H
        notice = self.query_one("#too-small", Static)
        notice.update(f"This terminal is {w}×{h}; vblkdbg needs at least {MIN_W}×{MIN_H} "
                      "(160×45 shows every pane comfortably). Enlarge the window, or press q to quit.")
        self.screen.set_class(small, "too-small")

    # -- refreshing the panes --------------------------------------------------------------------------
    def refresh_panes(self, full: bool = False) -> None:
        s = self.session
        reqs = s.requests()
        owners = {r.head: r.id for r in reqs if r.head is not None}
        self.query_one(RequestsPane).show(reqs)
        self.query_one(DescriptorsPane).show(s.descriptors(), self.selected)
        rings = s.rings()
        self.query_one(AvailRingPane).show(rings, owners, self.selected)
        sel_head = next((r.head for r in reqs if r.id == self.selected), None)
        self.query_one(UsedRingPane).show(rings, sel_head)
        self.query_one(DevicePane).show(s.device())
        hit = s.stop.hit.id if s.stop.hit is not None else None
        self.query_one(BreakpointsPane).show(s.breakpoints.list(), hit)
        steps = self.query_one(StepsPane)
        new = s.m.steps - self._shown_steps
        if new < 0:                      # went back in time: everything may have changed
            full = True
        if full or new > 200:
            steps.reset(s.recent_steps(200))
        elif new > 0:
            steps.append(s.recent_steps(new))
        self._shown_steps = s.m.steps
        steps.show_chains(s.chains())
        self._refresh_hex(full)
        self.query_one(StatusBar).show(s.status_line())

    def _changed(self) -> list:
        last = self.session.last_step()
        if last is None:
            return []
        return list(last.host_writes if self.space == "host" else last.ram_writes)

    def _refresh_hex(self, full: bool) -> None:
        hv = self.query_one(HexView)
        changed = self._changed()
        if self.space == "host":
            if hv.data_size != self.session.host_size():
                self._set_hex_source()
            moved = self.session.m.steps - self._map_step
            if full or (moved and (changed or moved != 1)):
                hv.set_regions(self._host_regions())
        else:
            hv.set_regions(self._ram_regions())
        hv.refresh_data(None if full else changed)
        hv.set_changed(changed)

    def _host_regions(self) -> list:
        labels = {"header": "qcow2 header", "l1": "L1 table", "l2": "L2 table",
                  "refcount-table": "refcount table", "refcount-block": "refcount block",
                  "compressed": "compressed", "free": "free", "snapshot-table": "snapshot table"}
        out = []
        for r in self.session.host_map():
            if r.kind == "data" and r.guest is not None:
                label = f"guest {r.guest:#x} sector {r.guest // 512}"
            else:
                label = labels.get(r.kind, r.kind)
            out.append(Region(r.host, r.length, r.kind, label,
                              origin=r.guest if r.kind == "data" else None, origin_name="guest"))
        self._map_step = self.session.m.steps
        return out

    def _ram_regions(self) -> list:
        rings = self.session.rings()
        out = []
        if rings is not None:
            n = rings.size
            out += [Region(rings.desc, 16 * n, "desc", "descriptor table"),
                    Region(rings.avail, 6 + 2 * n, "avail", "avail ring"),
                    Region(rings.used, 6 + 8 * n, "used", "used ring")]
        for r in self.session.requests():
            for gpa, ln in r.data:
                out.append(Region(gpa, ln, "buffer", f"request {r.id} data"))
        out.sort(key=lambda r: r.start)
        return out

    def _set_hex_source(self) -> None:
        hv = self.query_one(HexView)
        s = self.session
        if self.space == "host":
            hv.set_source("host", s.read_host, s.host_size(), self._host_regions(),
                          title="Host image")
        else:
            hv.set_source("ram", s.read_ram_clamped, s.ram_size(), self._ram_regions(),
                          title="Guest RAM")
        hv.border_title = ("Host image" if self.space == "host" else "Guest RAM") + " (6)"

    # -- selection follows through the panes ---------------------------------------------------------------
    def on_requests_pane_selected(self, msg: RequestsPane.Selected) -> None:
        if self.selected != msg.rid:
            self.selected = msg.rid
            if not self.running:
                self.refresh_panes()

    def on_descriptors_pane_selected(self, msg: DescriptorsPane.Selected) -> None:
        self._desc_selected = msg

    def on_data_table_row_selected(self, event) -> None:
        if isinstance(event.data_table, RequestsPane) or event.data_table.id == "requests":
            self.action_follow()
        elif isinstance(event.data_table, DescriptorsPane):
            d = getattr(self, "_desc_selected", None)
            if d is not None and d.addr is not None:
                self._goto("ram", d.addr)

    # -- actions -----------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters) -> bool | None:
        if self.running and action in RUN_ACTIONS:
            return None
        return True

    def _after_run(self, stop, before: int | None = None) -> None:
        self.running = False
        self.query_one(StatusBar).running = False
        self.refresh_panes()
        if before is not None:
            from .cmdline.commands import stop_lines
            for ln in stop_lines(self.session, stop, self.session.m.steps - before):
                self.query_one(StepsPane).note(ln, error=stop.reason == "error")
        if stop.reason == "error":
            self.notify(f"device error at step {stop.step}: {stop.message}", severity="error",
                        title="virtio_error", timeout=10)

    def action_step(self) -> None:
        self._after_run(self.session.step(1))

    def action_next(self) -> None:
        self._after_run(self.session.next())

    def action_finish(self) -> None:
        """Finish the request selected in Requests (1), or the oldest one in flight."""
        from .cmdline.commands import default_request
        live = [r.id for r in self.session.requests() if r.stage != "done"]
        rid = self.selected if self.selected in live else default_request(self.session)
        if rid is None:
            self.notify("no request is in flight: nothing to finish", severity="warning")
            return
        self._run(("run", "finish", rid))

    def action_continue(self) -> None:
        self._run(("run", "continue"))

    # reverse execution: back through the checkpoints (a re-run from the nearest one)
    def action_reverse_step(self) -> None:
        from .cmdline.commands import run_action
        before = self.session.m.steps
        self._after_run(run_action(self.session, ("run", "reverse-step", 1)), before)

    def action_reverse_next(self) -> None:
        self._run(("run", "reverse-next"), report=True)

    def action_reverse_finish(self) -> None:
        """Back to before the selected request (or the newest in flight) was created."""
        reqs = self.session.requests()
        known = [r.id for r in reqs]
        live = [r.id for r in reqs if r.stage != "done"]
        rid = self.selected if self.selected in known else (max(live) if live else None)
        if rid is None:
            self.notify("select a request in Requests (1) to go back to its creation", severity="warning")
            return
        self._run(("run", "reverse-finish", rid), report=True)

    def action_reverse_continue(self) -> None:
        self._run(("run", "reverse-continue"), report=True)

    def action_breakpoint(self) -> None:
        """b: a breakpoint on the descriptor or request selected in its pane."""
        focused = self.focused
        line = None
        if isinstance(focused, DescriptorsPane):
            d = focused.selected_descriptor()
            if d is not None:
                line = (f"break desc idx={d.index}" if d.ring else
                        f"break desc indirect=yes addr={d.addr:#x}")
        if line is None:
            req = next((r for r in self.session.requests() if r.id == self.selected), None)
            if req is not None and not isinstance(focused, DescriptorsPane):
                sectors = max(1, req.length // 512)
                rng = f" sector={req.sector}..{req.sector + sectors - 1}" if req.length else ""
                line = f"break req type={req.type}{rng} stage=done"
        if line is None:
            self.notify("select a descriptor in Descriptors (2) or a request in Requests (1) first",
                        severity="warning")
            return
        self.run_command(line)

    def _run(self, action: tuple, report: bool = False) -> None:
        self.running = True
        self.query_one(StatusBar).running = True
        self._run_worker(action, report)

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def _run_worker(self, action: tuple, report: bool) -> None:
        """A long run off the UI thread; the panes refresh once, when it stops."""
        from .cmdline.commands import run_action
        worker = get_current_worker()
        bar = self.query_one(StatusBar)
        before = self.session.m.steps

        def progress(steps: int, inflight: int) -> None:
            self.call_from_thread(bar.progress, steps, inflight)

        stop = run_action(self.session, action, cancelled=lambda: worker.is_cancelled, progress=progress)
        self.call_from_thread(self._after_run, stop, before if report else None)

    def action_stop(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "run")

    def action_toggle_space(self) -> None:
        self.space = "ram" if self.space == "host" else "host"
        self._set_hex_source()
        self._refresh_hex(True)

    def action_follow(self) -> None:
        """Jump the hex view to the host bytes the selected request's data lives in."""
        rid = self.selected
        req = next((r for r in self.session.requests() if r.id == rid), None)
        if req is None:
            self.notify("select a request in Requests (1) first", severity="warning")
            return
        if not req.length or req.type in ("FLUSH", "GET_ID"):
            self.notify(f"request {rid} ({req.type}) has no disk data to follow", severity="warning")
            return
        where = self.session.guest_to_host(req.sector * 512, req.length)
        if not where:
            self.notify(f"request {rid}: guest sector {req.sector} has no host cluster yet "
                        "(unallocated or zero)", severity="warning")
            return
        self._goto("host", where[0][0])
        self.notify(f"request {rid}: guest {req.sector * 512:#x} is at host {where[0][0]:#x}"
                    + (f" (+{len(where) - 1} more range(s))" if len(where) > 1 else ""))

    def _goto(self, space: str, offset: int) -> bool:
        if space != self.space:
            self.space = space
            self._set_hex_source()
        try:
            self.query_one(HexView).goto(offset)
        except ValueError as e:
            self.notify(str(e), severity="error")
            return False
        self.query_one(HexView).focus()
        return True

    def action_focus_pane(self, name: str) -> None:
        w = self.query_one(f"#{name}")
        target = w.query("SyncTable").first() if name in ("avail", "used") else w
        if name == "steps":
            target = w.query_one("#steps-log")
        target.focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.commands_help()))

    def commands_help(self) -> str:
        try:
            from .cmdline.commands import help_lines
            return "\n".join("  " + ln for ln in help_lines())
        except ImportError:
            return "  (command line not available)"

    # -- the command line ------------------------------------------------------------------------------------
    def action_command_line(self) -> None:
        self.query_one(CommandLine).open()

    def on_command_line_closed(self, _msg) -> None:
        self.query_one("#requests").focus()

    def on_command_line_run(self, msg: CommandLine.Run) -> None:
        self.query_one("#requests").focus()
        if msg.line:
            self.run_command(msg.line)

    def run_command(self, line: str) -> None:
        """Parse and run one command line (the command line, the palette and tests use it)."""
        from .cmdline.commands import execute
        from .cmdline.parser import CommandError, parse
        log = self.query_one(StepsPane)
        log.note(f":{line}")
        try:
            cmd = parse(line)
        except CommandError as e:
            log.note(str(e), error=True)
            self.notify(str(e), severity="error")
            return
        if self.running and cmd.name in ("step", "next", "finish", "continue"):
            self.notify("a run is in progress (Esc stops it)", severity="warning")
            return
        res = execute(cmd, self.session)
        for ln in res.lines:
            log.note(ln, error=not res.ok)
        if not res.ok:
            self.notify(res.lines[0] if res.lines else "error", severity="error")
            return
        if not res.action:
            self.refresh_panes()         # break, delete, poke, ... change what the panes show
            return
        if res.action[0] == "goto":
            self._goto(res.action[1], res.action[2])
        elif res.action[0] == "run":
            what = res.action[1]
            if what == "finish":
                self.selected = res.action[2]
            if what == "next" or (what == "step" and res.action[2] <= SYNC_STEPS):
                before = self.session.m.steps
                from .cmdline.commands import run_action
                self._after_run(run_action(self.session, res.action), before)
            else:
                self._run(res.action, report=True)
