"""Widgets of the vblkdbg debugger, one per module."""
