"""A directory tree that lists folders and FITS frames only."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from textual.widgets import DirectoryTree

from rpp_core.fitsnames import is_fits_name
from ..paths import display_path


class FitsTree(DirectoryTree):
    """Folders (hidden ones left out) and files named like FITS frames, compressed or not."""

    def render_label(self, node, base_style, style):
        if node is self.root:
            # the root says where we are, short: relative to the working directory, or with ~
            node._label = self.process_label(display_path(self.path) or ".")
        return super().render_label(node, base_style, style)

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
