"""How paths are shown: relative to the working directory when inside it, else with ``~``.

Short paths fit an 80-column terminal, and make screenshots independent of
where the app was started.
"""

from __future__ import annotations

import os
from pathlib import Path


def display_path(path: str | os.PathLike | None) -> str:
    if path is None or str(path) == "":
        return ""
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        pass
    try:
        rel = p.relative_to(Path.cwd().resolve())
        return str(rel) if str(rel) != "." else "."
    except ValueError:
        pass
    home = Path.home().resolve()
    try:
        return "~/" + str(p.relative_to(home))
    except ValueError:
        return str(p)
