"""Small real images and workloads shipped with vblkdbg (see README.md in this folder)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The bundled file `name` (e.g. 'article.qcow2')."""
    return HERE / name
