"""A directory tree that lists folders and FITS frames only."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from textual.widgets import DirectoryTree

from ..loaders import is_fits_name


class FitsTree(DirectoryTree):
    """Folders (hidden ones left out) and files named like FITS frames, compressed or not."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or is_fits_name(p.name):
                    out.append(p)
            except OSError:  # unreadable entry (dangling link, permissions): not worth a crash
                continue
        return out
