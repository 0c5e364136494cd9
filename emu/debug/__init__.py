"""The debugger's headless engines: reverse execution (timeline), breakpoint expressions, ...

Each module here works on an emu.machine.Machine through its public state and needs no UI.
"""
