"""The face of vblkdbg: the command line (and, later, the Textual debugger)."""

__version__ = "0.1.0"
