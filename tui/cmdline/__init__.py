"""The `:` command line's language: parse a line, execute it on a Session, complete it.

`parser` and `commands` are pure Python (no Textual/Rich); `completer` holds the history,
completion and the Textual `Suggester` (import it from `tui.cmdline.completer`).
"""
from __future__ import annotations

from .commands import Result, execute, execute_line, execute_run, is_run, run_action
from .parser import ALIASES, COMMANDS, INFO_TOPICS, Command, CommandError, Spec, parse, register

__all__ = ["ALIASES", "COMMANDS", "INFO_TOPICS", "Command", "CommandError", "Result", "Spec",
           "execute", "execute_line", "execute_run", "is_run", "parse", "register", "run_action"]
