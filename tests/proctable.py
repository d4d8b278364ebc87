"""The machine's processes from /proc (Linux): for tests that must find or outlive workers."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Proc(NamedTuple):
    pid: int
    state: str  # "R", "S", "Z" (zombie: gone but not reaped)...
    ppid: int
    pgid: int


def processes() -> list[Proc]:
    """Every process readable now (one that ends while being read is left out)."""
    out = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()  # the name in brackets may hold spaces
        except OSError:
            continue
        out.append(Proc(int(path.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return out
