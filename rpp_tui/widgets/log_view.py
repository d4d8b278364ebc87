"""The run log: every line kept, shown from a chosen level up."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_STYLE = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "bold red"}


class EventLog(RichLog):
    """A RichLog that remembers (level, stage, text) so the level filter can be changed afterwards."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; border: round $primary-darken-2; }
    """

    def __init__(self, *, id=None, classes=None) -> None:  # noqa: A002
        # min_width=1: RichLog renders at 78 columns at least by default, which clips a 40-column pane instead of wrapping
        super().__init__(id=id, classes=classes, wrap=True, markup=False, highlight=False, max_lines=20000, min_width=1)
        self.records: list[tuple[str, str, str]] = []
        self.level = "INFO"

    def add(self, level: str, message: str, stage: str = "") -> None:
        level = level if level in LEVELS else "INFO"
        self.records.append((level, stage, message))
        if LEVELS.index(level) >= LEVELS.index(self.level):
            self.write(self._line(level, stage, message))

    @staticmethod
    def _line(level: str, stage: str, message: str) -> Text:
        prefix = f"{level[0]} " + (f"[{stage}] " if stage else "")
        return Text(prefix + message, style=_STYLE[level])

    def set_level(self, level: str) -> None:
        self.level = level
        self.clear()
        for lvl, stage, message in self.records:
            if LEVELS.index(lvl) >= LEVELS.index(level):
                self.write(self._line(lvl, stage, message))
        self.border_subtitle = f"level ≥ {level}"

    def reset(self) -> None:
        self.records.clear()
        self.clear()

    def shown_text(self) -> str:
        """The lines currently shown, as plain text (for tests and copying)."""
        keep = LEVELS.index(self.level)
        return "\n".join(self._line(lvl, st, msg).plain for lvl, st, msg in self.records if LEVELS.index(lvl) >= keep)
