"""python -m tui == vblkdbg."""
from .cli import main

raise SystemExit(main())
