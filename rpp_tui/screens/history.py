"""History: earlier runs in the workspace; reopen, delete, clean up."""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static, TabPane

from rpp_core import locations
from rpp_core.products import RunSummary

from ..messages import OpenRun
from ..paths import display_path


def _run_row(run) -> tuple:
    from rpp_core import cleanup

    summary, status = None, run.state  # "running", or "interrupted": killed before its summary
    if run.finished:
        try:
            summary = RunSummary.read(run.path / "summary.json")
            status = summary.status
        except (OSError, ValueError, TypeError):
            status = "unreadable summary"
    # the frame last: the folder name already starts with it, and at 80 columns it is what gets cut, not Size
    return (
        run.path.name,
        status,
        str(summary.n_sources) if summary and summary.n_sources is not None else "",
        f"{summary.zp:.3f}" if summary and summary.zp is not None else "",
        cleanup.format_size(run.size),
        Path(summary.frame).name if summary and summary.frame else "?",
    )


class HistoryPane(TabPane):
    """Run folders of the workspace, newest first."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("o", "open", "Open"),
        Binding("d,delete", "delete", "Delete"),
        Binding("C", "cleanup", "Clean up"),
        Binding("R,f5", "reload", "Reload", key_display="R"),
        Binding("c", "copy_path", "Copy path", show=False),
    ]

    def __init__(self) -> None:
        super().__init__("7 History", id="history")
        self.runs: list = []

    def compose(self) -> ComposeResult:
        yield Static("", id="history-status", markup=False)
        yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Run folder", "Status", "Sources", "ZP", "Size", "Frame")
        self.action_reload()

    def focus_main(self) -> None:
        self.query_one(DataTable).focus()

    def action_reload(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="history")
    def scan(self) -> None:
        # imported here, in the worker: rpp_core.cleanup brings astropy, a second of the app's start
        from rpp_core import cleanup

        workspace = locations.workspace_dir()
        runs = list(reversed(cleanup.find_runs(workspace)))
        rows = [_run_row(r) for r in runs]
        self.app.call_from_thread(self._fill, workspace, runs, rows)

    def _fill(self, workspace: Path, runs, rows) -> None:
        from rpp_core import cleanup

        self.runs = runs
        table = self.query_one(DataTable)
        table.clear()
        for run, row in zip(runs, rows):
            table.add_row(*row, key=str(run.path))
        total = sum(r.size for r in runs)
        self.query_one("#history-status", Static).update(
            f"{len(runs)} run{'' if len(runs) == 1 else 's'}, {cleanup.format_size(total)} in {display_path(workspace)}")

    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.runs or table.cursor_row is None or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row].path

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        path = self.selected()
        if path is not None:
            self.post_message(OpenRun(path))

    def action_copy_path(self) -> None:
        path = self.selected()
        if path is not None:
            self.app.copy_to_clipboard(str(path))
            self.notify(f"copied {path}")

    def action_delete(self) -> None:
        from .dialogs import Confirm

        path = self.selected()
        if path is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                from rpp_core import rundir  # not results: its writers' imports would stall the screen

                try:
                    rundir.remove_run(path)
                except (ValueError, OSError) as exc:
                    self.notify(str(exc), severity="error")
                    return
                self.notify(f"deleted {path.name}")
                self.action_reload()

        self.app.push_screen(Confirm(f"Delete run folder {path.name} and everything in it?"), done)

    def action_cleanup(self) -> None:
        from .dialogs import AskText

        def done(age: str | None) -> None:
            if not age:
                return
            from rpp_core import cleanup

            try:
                removed = cleanup.clean(locations.workspace_dir(), older_than=age)
            except Exception as exc:  # noqa: BLE001 - a bad age string is a message
                self.notify(str(exc), severity="error")
                return
            self.notify(f"removed {sum(1 for r in removed if getattr(r, 'removed', False))} runs older than {age}")
            self.action_reload()

        self.app.push_screen(AskText("Remove runs older than (e.g. 30d, 12h, 2w)", "30d"), done)
