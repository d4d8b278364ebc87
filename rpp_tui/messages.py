"""Messages that travel between screens of the app."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message


class FrameChosen(Message):
    """The user picked a frame to process (Files screen, Enter)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path


class OpenRun(Message):
    """Show this run folder in the Catalogue, Plots and Image screens."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir


class ProfileLoaded(Message):
    """The working profile was replaced (loaded, renamed, reset)."""
