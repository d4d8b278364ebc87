"""Run: start or cancel a run, follow its stages and log, see the summary."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static, TabPane

from rpp_core import events as ev
from rpp_core.products import RunSummary

from ..paths import display_path
from ..widgets.log_view import LEVELS, EventLog
from ..widgets.stage_list import StageList


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_summary(summary: RunSummary, run_dir: Path | str | None) -> str:
    """The few numbers an observer checks first, one per line."""

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) and value == value else "–"

    zp = f"{num(summary.zp, '.3f')} ± {num(summary.zp_err, '.3f')}" if summary.zp is not None else "not calibrated"
    band = summary.band or ""
    lines = [
        f"FWHM         {num(summary.fwhm_px, '.2f')} px",
        f"Sources      {summary.n_sources if summary.n_sources is not None else '–'}",
        f"Calibrators  {summary.n_calibrators if summary.n_calibrators is not None else '–'}",
        f"{'ZP ' + band:<13}{zp}",
        f"Airmass      {num(summary.airmass, '.3f')}",
        f"Output       {display_path(run_dir or summary.run_dir)}",
    ]
    return "\n".join(lines)


def short_summary(summary: RunSummary) -> str:
    """One line for a notification: FWHM, counts and zero point."""
    parts = []
    if summary.fwhm_px is not None:
        parts.append(f"FWHM {summary.fwhm_px:.2f} px")
    parts.append(f"{summary.n_sources or 0} sources")
    if summary.zp is not None:
        parts.append(f"{summary.n_calibrators or 0} calibrators, ZP {summary.zp:.3f} ± {summary.zp_err:.3f}")
    else:
        parts.append("not calibrated")
    return " · ".join(parts)


class RunPane(TabPane):
    """Per-stage status with progress bars and timings, the live log, and the result."""

    BINDINGS = [
        Binding("l", "cycle_level", "Log level"),
        Binding("enter", "results", "Results"),
        Binding("c", "copy_folder", "Copy folder"),
    ]

    def __init__(self) -> None:
        super().__init__("3 Run", id="run")
        self.last_run_dir: Path | None = None

    def compose(self) -> ComposeResult:
        yield Static("No run yet: select a frame (1 Files) and press r.", id="run-status", markup=False)
        with Horizontal(id="run-body"):
            with Vertical(id="run-left"):
                yield StageList(id="stages")
                yield Static("", id="run-summary", markup=False)
            yield EventLog(id="run-log")

    def on_mount(self) -> None:
        self.query_one(EventLog).border_title = "Log"
        self.query_one(EventLog).border_subtitle = "level ≥ INFO"

    def focus_main(self) -> None:
        self.query_one(EventLog).focus()

    # ------------------------------------------------------------ events from the core
    def set_status(self, text: str) -> None:
        self.query_one("#run-status", Static).update(text)

    def handle(self, job, event) -> None:
        """Show one :mod:`rpp_core.events` event of ``job`` (called on the event-loop thread)."""
        stages = self.query_one(StageList)
        log = self.query_one(EventLog)
        if isinstance(event, ev.RunStarted):
            stages.reset()
            log.add("INFO", f"run #{job.id}: {event.path} with profile {event.profile!r}")
            self.query_one("#run-summary", Static).update("")
            self.last_run_dir = Path(event.run_dir)
            runner = getattr(self.app, "runner", None)
            waiting = len(runner.waiting) if runner is not None else 0
            queued = f", {waiting} queued" if waiting else ""
            self.set_status(f"Run #{job.id} running: {Path(event.path).name}  (x cancels{queued})")
        elif isinstance(event, ev.StageStarted):
            stages.row(event.stage).set_state("running", "…")
        elif isinstance(event, ev.StageProgress):
            row = stages.row(event.stage)
            row.set_progress(event.done, event.total)
            if event.message:
                row.query_one(".stage-info", Static).update(event.message)
        elif isinstance(event, ev.StageFinished):
            figures = ", ".join(f"{k}={_short(v)}" for k, v in list(event.figures.items())[:2])
            stages.row(event.stage).set_state("done", f"{event.seconds:.2f} s" + (f"  {figures}" if figures else ""))
        elif isinstance(event, ev.StageSkipped):
            stages.row(event.stage).set_state("skipped", event.reason)
        elif isinstance(event, ev.Warning):
            log.add("WARNING", event.message, event.stage)
        elif isinstance(event, ev.LogLine):
            log.add(event.level, event.message, event.stage)
        elif isinstance(event, ev.RunFinished):
            result = event.result
            self.last_run_dir = Path(result.run_dir)
            self.query_one("#run-summary", Static).update(format_summary(result.summary, result.run_dir))
        elif isinstance(event, ev.RunFailed):
            state = "cancelled" if event.exit_code == 130 else "failed"
            if event.stage and event.stage in ev.STAGE_NAMES:
                stages.row(event.stage).set_state(state, event.message[:60])
            self.query_one("#run-summary", Static).update(
                f"Run {state}: {event.message}\nLog and summary in {event.run_dir}")

    # ------------------------------------------------------------ actions
    def action_cycle_level(self) -> None:
        log = self.query_one(EventLog)
        log.set_level(LEVELS[(LEVELS.index(log.level) + 1) % len(LEVELS)])
        self.notify(f"log shows {log.level} and above")

    def action_results(self) -> None:
        self.app.action_show_tab("catalogue")

    def action_copy_folder(self) -> None:
        if self.last_run_dir:
            self.app.copy_to_clipboard(str(self.last_run_dir))
            self.notify(f"copied {self.last_run_dir}")
