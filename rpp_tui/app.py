"""The RPP terminal app: Files, Parameters, Run, Catalogue, Plots, Image, History.

It drives runs through :mod:`rpp_core.runner` (each in a worker process) and the event contract of
:mod:`rpp_core.events` and owns no science: every number shown comes from the
core or from a run folder.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.reactive import var
from textual.widgets import Footer, Header, TabbedContent

from rpp_core import settings
from rpp_core.errors import RppError, SettingsError

from . import loaders
from .commands import RppCommands
from .messages import FrameChosen, OpenRun, ProfileLoaded
from .paths import display_path
from .runner import RunQueue
from .screens.catalogue import CataloguePane
from .screens.files import FilesPane
from .screens.help import HelpScreen
from .screens.history import HistoryPane
from .screens.image import ImagePane
from .screens.parameters import ParametersPane
from .screens.plots import PlotsPane
from .screens.run import RunPane, check_before_run, short_summary

TABS = ("files", "parameters", "run", "catalogue", "plots", "image", "history")


class RppApp(App[int]):
    """The app. ``start_path`` is a folder to browse or a frame to select; ``profile`` a saved profile name or path."""

    CSS_PATH = "app.tcss"
    TITLE = "RPP"
    COMMANDS = App.COMMANDS | {RppCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    # focus is placed by the panes: auto-focusing the first widget (the Files tree) would switch tabs
    AUTO_FOCUS = None
    BINDINGS = [
        *[Binding(str(i + 1), f"show_tab('{name}')", name.capitalize(), show=False) for i, name in enumerate(TABS)],
        Binding("r", "run", "Run"),
        Binding("x", "cancel_run", "Cancel"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # "x Cancel" is in the footer only while a run is going: it saves room at 80 columns
        if action == "cancel_run":
            return bool(self.runner.busy)
        return True

    selected_path: var[Path | None] = var(None)
    profile_dirty: var[bool] = var(False)

    def __init__(self, start_path: str | os.PathLike | None = None, profile: str | None = None) -> None:
        super().__init__()
        start = Path(start_path) if start_path else Path.cwd()
        self._start_file: Path | None = None
        self._start_error = ""
        if start.is_file():
            self._start_file, start = start, start.parent
        elif not start.exists():
            self._start_error = f"{start} does not exist: showing {Path.cwd()}"
            start = Path.cwd()
        self.start_dir = start
        try:
            self.profile = settings.load_profile(profile) if profile else settings.load_profile("default")
        except SettingsError as exc:
            self._start_error = str(exc)
            self.profile = settings.Profile()
        self.current_run: loaders.RunView | None = None
        self.runner = RunQueue(self._on_run_event, self._start_run_worker)
        self._footer_busy = False  # what the footer last showed (see _on_run_event)

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="files", id="tabs"):
            yield FilesPane(self.start_dir)
            yield ParametersPane()
            yield RunPane()
            yield CataloguePane()
            yield PlotsPane()
            yield ImagePane()
            yield HistoryPane()
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_title()
        self.call_after_refresh(self._focus_if_active, self.query_one(FilesPane))
        if self._start_file is not None:
            self.query_one(FilesPane).show_frame(self._start_file)
            self.selected_path = self._start_file
        if self._start_error:
            self.notify(self._start_error, severity="error", timeout=10)
        self.call_after_refresh(_quiet_gc)

    def refresh_title(self) -> None:
        frame = display_path(self.selected_path) if self.selected_path else "no frame selected"
        self.sub_title = f"profile {self.profile.name}{'*' if self.profile_dirty else ''} · {frame}"

    def watch_selected_path(self) -> None:
        self.refresh_title()

    def watch_profile_dirty(self) -> None:
        self.refresh_title()

    def pane(self, name: str):
        return self.query_one(f"#{name}")

    # ------------------------------------------------------------ navigation
    def action_show_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        self.pane(name).focus_main()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane
        if hasattr(pane, "focus_main") and not pane.has_focus_within:
            self.call_after_refresh(self._focus_if_active, pane)

    def _focus_if_active(self, pane) -> None:
        # focusing a widget of a hidden pane would switch the tabs back to it
        if self.query_one(TabbedContent).active == pane.id and not pane.has_focus_within:
            pane.focus_main()

    async def action_pane(self, name: str, action: str) -> None:
        self.action_show_tab(name)
        await self.pane(name).run_action(action)

    def action_plot(self, figure: str) -> None:
        self.action_show_tab("plots")
        self.pane("plots").show_figure(figure)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # ------------------------------------------------------------ profile
    def load_profile(self, name: str | None) -> None:
        try:
            self.profile = settings.load_profile(name)
        except SettingsError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.profile_dirty = False
        self.pane("parameters").post_message(ProfileLoaded())
        self.refresh_title()
        self.notify(f"profile {self.profile.name!r} loaded")
        for note in self.profile.notes:
            self.notify(note, severity="warning", timeout=10)

    # ------------------------------------------------------------ runs
    def on_frame_chosen(self, message: FrameChosen) -> None:
        self.selected_path = message.path
        self.notify(f"selected {message.path.name}: press r to run", timeout=3)

    def action_run(self) -> None:
        path = self.selected_path
        if path is None:
            highlighted = self.pane("files").highlighted
            if highlighted is None:
                self.notify("select a frame first (1 Files, Enter)", severity="warning")
                return
            path = self.selected_path = highlighted
        bad = self.pane("parameters").invalid_fields()
        if bad:
            self.notify(f"fix {bad[0].key} first: {bad[0].error}", severity="error")
            return
        try:
            settings.validate(self.profile, f"profile {self.profile.name!r}")
        except SettingsError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        if not check_before_run(self, path, self.profile):
            return
        busy = self.runner.current is not None
        gc.freeze()  # what the session has built so far is never walked by a collection during the run
        job = self.runner.submit(path, self.profile)
        if busy:
            self.notify(f"run #{job.id} queued ({len(self.runner.waiting)} waiting)")
            current = self.runner.current
            self.pane("run").set_status(f"Run #{current.id} running: {current.path.name}  "
                                        f"(x cancels, {len(self.runner.waiting)} queued)")
        self.action_show_tab("run")

    def action_cancel_run(self) -> None:
        job = self.runner.cancel_current()
        if job is None:
            self.notify("no run to cancel", severity="warning")
        else:
            self.notify(f"cancelling run #{job.id}…")

    def action_cancel_queued(self) -> None:
        n = self.runner.cancel_waiting()
        self.notify(f"{n} queued run(s) dropped")

    def _start_run_worker(self, coro) -> None:
        self.run_worker(coro, group="pipeline", name="pipeline", exit_on_error=False)

    def _on_run_event(self, job, event) -> None:
        run_pane: RunPane = self.pane("run")
        busy = bool(self.runner.busy)
        if busy != self._footer_busy:
            # x Cancel shows only while a run is going (check_action); the footer is
            # rebuilt on each refresh, so only when that changes, not on every event
            self._footer_busy = busy
            self.refresh_bindings()
        if event is not None:
            run_pane.handle(job, event)
            return
        # the job is over
        waiting = len(self.runner.waiting)
        queued = f"  ({waiting} queued)" if waiting else ""
        if job.state == "finished":
            result = job.result
            self.show_run(loaders.from_result(result))
            self.apply_retention(job)
            code = result.exit_code
            if code:
                # the catalogue exists but part of the job could not be done (see rpp_core.errors)
                note = result.message or f"exit code {code}"
                run_pane.set_status(f"Run #{job.id} finished with a problem: {note}  (enter: results){queued}")
                self.notify(f"{note}\n{short_summary(result.summary)}", title=f"run #{job.id}: exit {code}",
                            severity="warning", timeout=10)
            else:
                run_pane.set_status(f"Run #{job.id} finished: {display_path(result.run_dir)}  (enter: results){queued}")
                self.notify(short_summary(result.summary), title=f"run #{job.id} finished", timeout=6)
        elif job.state == "cancelled":
            run_pane.set_status(f"Run #{job.id} cancelled{queued}")
            self.notify(f"run #{job.id} cancelled", severity="warning")
        else:
            run_pane.set_status(f"Run #{job.id} failed (exit {job.exit_code}): {job.error}{queued}")
            self.notify(job.error, title=f"run #{job.id} failed", severity="error", timeout=10)
        self.pane("history").action_reload()

    @work(thread=True, group="retention")
    def apply_retention(self, job) -> None:
        """The run's output.keep_days / max_total_gb after it finished, never removing that run."""
        from rpp_core.cleanup import apply_retention

        run_dir = job.result.run_dir
        removed = apply_retention(run_dir.parent, job.profile.output, keep=run_dir)
        if removed:
            self.call_from_thread(self.notify, f"retention: removed {len(removed)} old run(s)")

    # ------------------------------------------------------------ results
    def show_run(self, run: loaders.RunView) -> None:
        self.current_run = run
        for name in ("catalogue", "plots", "image"):
            self.pane(name).show_run(run)

    def on_open_run(self, message: OpenRun) -> None:
        self.open_run(message.run_dir)

    @work(thread=True, exclusive=True, group="open-run")
    def open_run(self, run_dir: Path) -> None:
        try:
            run = loaders.load_run(run_dir)
        except (OSError, ValueError, RppError) as exc:
            self.call_from_thread(self.notify, f"cannot open {run_dir}: {exc}", severity="error")
            return
        self.call_from_thread(self._opened, run)

    def _opened(self, run: loaders.RunView) -> None:
        self.show_run(run)
        self.action_show_tab("catalogue")
        self.notify(f"opened {run.run_dir.name}")

    # ------------------------------------------------------------ quit
    async def action_quit(self) -> None:
        if not self.runner.busy:
            self.exit(0)
            return
        from .screens.dialogs import Confirm

        def done(yes: bool | None) -> None:
            if yes:
                self.runner.cancel_waiting()
                self.runner.cancel_current()
                self.exit(0)

        self.push_screen(Confirm("A run is going: cancel it and quit?"), done)


def _quiet_gc() -> None:
    """Keep full garbage collections off the keys.

    Measured during a 2048^2 run: the app held 270,000 objects at start and
    560,000 at the end (Textual's render caches, the log); each full
    collection walked them all, 0.3-0.6 s of CPU, 33 times in 2.5 minutes, and
    a key pressed then waited for it. Objects alive once the screen is built
    (and again when a run starts) are frozen out of collection, and full
    collections come 100x less often.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1000)


def run_app(start_path: str | None = None, profile: str | None = None) -> int:
    """Open the app (``rpp`` or ``rpp tui [PATH] [--profile P]``); the exit code."""
    from . import graphics

    graphics.detect()  # asks the terminal about images: only possible before Textual starts
    app = RppApp(start_path, profile)
    code = app.run()
    return int(code or app.return_code or 0)
