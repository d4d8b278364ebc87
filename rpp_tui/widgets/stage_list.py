"""Per-stage status of a run: one row per pipeline stage with a progress bar and time."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import ProgressBar, Static

from rpp_core.events import STAGES

ICONS = {"waiting": " ", "running": "▶", "done": "✓", "skipped": "–", "failed": "✗", "cancelled": "■"}


class StageRow(Horizontal):
    """Status icon and name, a progress bar, and the time or the reason it was skipped."""

    DEFAULT_CSS = """
    StageRow { height: 1; }
    StageRow > .stage-name { width: 22; }
    StageRow > ProgressBar { width: 12; }
    StageRow > ProgressBar Bar { width: 10; }
    StageRow > .stage-info { width: 1fr; color: $text-muted; }
    StageRow.-running > .stage-name { color: $accent; text-style: bold; }
    StageRow.-done > .stage-name { color: $success; }
    StageRow.-failed > .stage-name { color: $error; text-style: bold; }
    StageRow.-skipped > .stage-name { color: $text-muted; }
    """

    def __init__(self, stage: str, label: str) -> None:
        super().__init__(id=f"stage-{stage}", classes="-waiting")
        self.stage = stage
        self.label = label
        self.state = "waiting"

    def compose(self) -> ComposeResult:
        yield Static(f"  {self.label}", classes="stage-name")
        # an empty bar, not an indeterminate one: nothing is happening yet
        yield ProgressBar(total=1, show_eta=False, show_percentage=False)
        yield Static("", classes="stage-info")

    def set_state(self, state: str, info: str | None = None) -> None:
        if state != self.state:
            # one restyle of the row, not two: each class change re-applies the stylesheet to its widgets
            self.remove_class(f"-{self.state}", update=False)
            self.state = state
            self.add_class(f"-{state}")
        self.query_one(".stage-name", Static).update(f"{ICONS[state]} {self.label}")
        bar = self.query_one(ProgressBar)
        if state == "done":
            bar.update(total=1, progress=1)
        elif state == "waiting":
            bar.update(total=1, progress=0)
        elif state == "running":
            bar.update(total=None, progress=0)
        elif state in ("skipped", "failed", "cancelled") and bar.total is None:
            bar.update(total=1, progress=0)
        if info is not None:
            self.query_one(".stage-info", Static).update(info)

    def set_progress(self, done: int, total: int) -> None:
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)


class StageList(VerticalScroll):
    """All stages of :data:`rpp_core.events.STAGES`, in order."""

    DEFAULT_CSS = """
    StageList { height: auto; max-height: 100%; }
    """

    def compose(self) -> ComposeResult:
        for stage, label in STAGES:
            yield StageRow(stage, label)

    def row(self, stage: str) -> StageRow:
        return self.query_one(f"#stage-{stage}", StageRow)

    def reset(self) -> None:
        for row in self.query(StageRow):
            row.set_state("waiting", "")

    def states(self) -> dict[str, str]:
        return {row.stage: row.state for row in self.query(StageRow)}
