"""Run: start or cancel a run, follow its stages and log, see the summary."""

from __future__ import annotations

from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static, TabPane

from rpp_core import events as ev
from rpp_core.products import RunSummary

from ..paths import display_path
from ..summary import facts, value_with_error
from ..widgets.log_view import LEVELS, EventLog
from ..widgets.stage_list import StageList


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_summary(summary, run_dir: Path | str | None) -> str:
    """The few numbers an observer checks first, one per line (``summary``: anything :func:`facts` reads)."""
    f = facts(summary)

    def num(value, fmt):
        return "–" if value is None else format(value, fmt)

    zp = value_with_error(f.zp, f.zp_err) if f.calibrated else "not calibrated"
    lines = [
        f"FWHM         {num(f.fwhm_px, '.2f')} px",
        f"Sources      {num(f.n_sources, 'd')}",
        f"Calibrators  {num(f.n_calibrators, 'd')}" if not f.from_header
        else f"Calibration  {f.calibration_source} (no reference)",
        f"{'ZP ' + f.band:<13}{zp}",
        *([f"Header ZP    {f.header_zp:.4f} ({f.header_zp_source.removeprefix('header ')})"]
          if f.header_zp is not None and not f.from_header else []),
        f"Airmass      {num(f.airmass, '.3f')}",
        f"Output       {display_path(run_dir or f.run_dir or '')}",
    ]
    return "\n".join(lines)


def short_summary(summary) -> str:
    """One line for a notification: FWHM, counts and zero point."""
    f = facts(summary)
    parts = []
    if f.fwhm_px is not None:
        parts.append(f"FWHM {f.fwhm_px:.2f} px")
    parts.append(f"{f.n_sources or 0} sources")
    if f.calibrated and f.from_header:
        parts.append(f"ZP {value_with_error(f.zp, f.zp_err)} from the {f.calibration_source}")
    elif f.calibrated:
        parts.append(f"{f.n_calibrators or 0} calibrators, ZP {value_with_error(f.zp, f.zp_err)}")
    else:
        parts.append("not calibrated")
    return " · ".join(parts)


def failure_headline(state: str, message: str, stage: str = "") -> str:
    """``Run cancelled in stage fwhm`` or ``Run failed: <why>``, never the same words twice."""
    where = f" in stage {stage}" if stage else ""
    if not message or message.strip().lower() == f"run {state}":
        return f"Run {state}{where}"
    return f"Run {state}{where}: {message}"


def check_before_run(app, path: Path, profile) -> bool:
    """:func:`rpp_core.preflight.preflight` before a run; False (and the advice shown) when it must not start.

    Errors stop the run and are listed over the Run screen's full width with
    the Parameters field to change; warnings are notified and the run goes on.
    """
    from rpp_core.preflight import preflight

    problems = preflight(profile, path)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity != "error":
            app.notify(p.advice("app"), title="before the run", severity="warning", timeout=10)
    if not errors:
        return True
    pane = app.query_one(RunPane)
    pane.set_status(f"Not started: {len(errors)} problem{'s' if len(errors) > 1 else ''} with {path.name} or profile {profile.name!r}")
    pane.set_headline("\n".join(f"• {p.advice('app')}" for p in errors))
    app.notify(errors[0].advice("app"), title="run not started", severity="error", timeout=10)
    app.action_show_tab("run")
    return False


class RunPane(TabPane):
    """Per-stage status with progress bars and timings, the live log, and the result."""

    BINDINGS = [
        Binding("l", "cycle_level", "Log level"),
        Binding("enter", "results", "Results", key_display="⏎"),
        Binding("c", "copy_folder", "Copy folder"),
        Binding("s", "copy_sky", "Copy sky.html path", show=False),
    ]

    def __init__(self) -> None:
        super().__init__("3 Run", id="run")
        self.last_run_dir: Path | None = None

    def compose(self) -> ComposeResult:
        yield Static("No run yet: select a frame (1 Files) and press r.", id="run-status", markup=False)
        yield Static("", id="run-headline", markup=False)
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

    def set_headline(self, text: str) -> None:
        """A failure or cancel message over the whole width (wrapped), hidden when empty."""
        headline = self.query_one("#run-headline", Static)
        headline.update(text)
        headline.set_class(bool(text), "-shown")

    def handle(self, job, event) -> None:
        """Show one :mod:`rpp_core.events` event of ``job`` (called on the event-loop thread)."""
        stages = self.query_one(StageList)
        log = self.query_one(EventLog)
        if isinstance(event, ev.RunStarted):
            stages.reset()
            log.add("INFO", f"run #{job.id}: {event.path} with profile {event.profile!r}")
            self.query_one("#run-summary", Static).update("")
            self.set_headline("")
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
            self.query_one("#run-summary", Static).update(self._summary_text(result.summary, Path(result.run_dir)))
        elif isinstance(event, ev.RunFailed):
            state = "cancelled" if event.exit_code == 130 else "failed"
            if event.stage and event.stage in ev.STAGE_NAMES:
                stages.row(event.stage).set_state(state, event.message[:60])
            self.set_headline(f"{failure_headline(state, event.message, event.stage)}\n"
                              f"Log and summary in {display_path(event.run_dir)}")

    def _summary_text(self, summary, run_dir: Path) -> Text:
        """The summary lines and, when the run wrote one, the sky view as a terminal hyperlink (OSC 8)."""
        text = Text(format_summary(summary, run_dir))
        sky = run_dir / "sky.html"
        if sky.exists():
            text.append("\nSky view     ")
            text.append(display_path(sky), style=Style(link=sky.resolve().as_uri(), underline=True))
            text.append("  (s copies)", style="dim")
        return text

    # ------------------------------------------------------------ actions
    def action_cycle_level(self) -> None:
        log = self.query_one(EventLog)
        log.set_level(LEVELS[(LEVELS.index(log.level) + 1) % len(LEVELS)])
        self.notify(f"log shows {log.level} and above")

    def action_results(self) -> None:
        self.app.action_show_tab("catalogue")

    def action_copy_sky(self) -> None:
        """Copy the path of the last run's sky.html (open it in a browser: Aladin Lite with the overlays)."""
        sky = self.last_run_dir / "sky.html" if self.last_run_dir else None
        if sky is None or not sky.exists():
            self.notify("no sky.html: run a frame first", severity="warning")
            return
        self.app.copy_to_clipboard(str(sky.resolve()))
        self.notify(f"copied {sky.resolve()}")

    def action_copy_folder(self) -> None:
        if self.last_run_dir:
            self.app.copy_to_clipboard(str(self.last_run_dir))
            self.notify(f"copied {self.last_run_dir}")
