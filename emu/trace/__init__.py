"""Real I/O traces in and out of vblkdbg (importers: emu.trace.importer)."""
