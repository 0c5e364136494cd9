"""Errors the emulator raises to its callers (never for guest-caused faults: those are diagnostics)."""
from __future__ import annotations


class EmuError(Exception):
    """A problem the user must fix: bad input, bad configuration, missing file."""


class ConfigError(EmuError):
    """An option or a combination of options that cannot work."""


class WorkloadError(EmuError):
    """A malformed workload; the message starts with FILE:LINE."""


class ImageError(EmuError):
    """An image file that cannot be used (missing, too small, unreadable, unknown format)."""
