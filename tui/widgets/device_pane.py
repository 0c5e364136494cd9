"""Device: status bits, features, config space, queue registers, counters, and the error."""
from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static


def _short(name: str) -> str:
    return name.replace("VIRTIO_BLK_F_", "").replace("VIRTIO_RING_F_", "").replace("VIRTIO_F_", "")


class DevicePane(Static):
    """Everything `info virtio-status` says, plus counters; a device error in red on top."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._last = None
        self.plain = ""

    def show(self, dev) -> None:
        if dev == self._last:
            return
        self._last = dev
        parts = []
        if dev.error:
            e = dev.error
            parts.append(Text(f"DEVICE ERROR at step {e['step']}: {e['message']}\n"
                              f"  breaks virtio spec {e['spec']}; device needs reset",
                              style="bold white on red"))
        st = Text("status ", style="dim")
        st.append(f"{dev.status:#04x} ")
        for name in dev.status_names:
            st.append(name + " ", style="bold red" if name in ("DEVICE_NEEDS_RESET", "FAILED") else "green")
        if dev.broken:
            st.append(" broken", style="bold red")
        parts.append(st)
        neg = set(dev.features_negotiated)
        ft = Text("features ", style="dim")
        for f in dev.features_offered:
            ft.append(_short(f) + " ", style="" if f in neg else "dim strike")
        parts.append(ft)
        parts.append(Text("config  " + "  ".join(f"{k}={v}" for k, v in dev.config), style=""))
        parts.append(Text("queue   " + "  ".join(f"{k}={v:#x}" if k.startswith("queue_d") else f"{k}={v}"
                                               for k, v in dev.queue_regs)))
        parts.append(Text("counters " + "  ".join(f"{k}={v}" for k, v in dev.counters)))
        parts.append(Text(f"isr {dev.isr:#x}  config_generation {dev.config_generation}  write cache "
                          + ("on" if dev.write_cache else "off"), style="dim"))
        self.plain = "\n".join(p.plain for p in parts)
        self.update(Group(*parts), layout=False)
