"""Catalogue: the run's sources, sortable, filterable, columns chosen, details and export."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Static, TabPane

from rpp_core.fsio import atomic_path

from ..summary import facts
from ..widgets.catalogue_table import CatalogueTable, column_arrays, filter_mask, format_value, magnitude_aliases

#: shown first when present; the rest stay available through the column chooser
DEFAULT_COLUMNS = (
    "id", "x", "y", "ra", "dec", "mag_cal", "magerr_cal", "mag", "magerr", "snr", "fwhm", "flags",
    "psf_mag", "calib_used", "ref_id", "simbad_id", "simbad_name", "name",
)


def default_columns(columns: list[str], label: str = "") -> list[str]:
    chosen = []
    for want in DEFAULT_COLUMNS:
        for c in columns:
            if c in chosen:
                continue
            if c == want or (label and c == f"{want}_{label}"):
                chosen.append(c)
    if len(chosen) < 4:
        chosen = columns[:12]
    return chosen


def sky_links(ra: float, dec: float) -> dict[str, str]:
    """Where to look at a position: SIMBAD, ESA Sky and Aladin Lite (degrees, ICRS)."""
    target = quote(f"{ra:.6f} {dec:+.6f}")
    return {
        "SIMBAD": f"https://simbad.cds.unistra.fr/simbad/sim-coo?Coord={target}&Radius=5&Radius.unit=arcsec",
        "ESA Sky": f"https://sky.esa.int/esasky/?target={target}&fov=0.05",
        "Aladin": f"https://aladin.cds.unistra.fr/AladinLite/?target={target}&fov=0.05",
    }


class CataloguePane(TabPane):
    """A virtual table of the catalogue with a filter line and a details panel."""

    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("v", "columns", "Columns", show=False),
        Binding("d", "details", "Details", show=False),
        Binding("e", "export", "Export CSV", show=False),
        Binding("c", "copy_value", "Copy", show=False),
        Binding("L", "copy_link('SIMBAD')", "Copy SIMBAD link"),
        Binding("S", "copy_link('ESA Sky')", "Copy ESA Sky link", show=False),
        Binding("A", "copy_link('Aladin')", "Copy Aladin link", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__("4 Catalogue", id="catalogue")
        self.run = None
        self.label = ""
        self.aliases: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter: snr>10 and (flags==0 or mag<15), or a name to find",
                    id="cat-filter", compact=True)
        yield Static("", id="cat-filter-error", markup=False)
        with Horizontal(id="cat-body"):
            yield CatalogueTable(id="cat-table")
            with VerticalScroll(id="cat-details"):
                yield Static("", id="cat-details-text")
        yield Static("no catalogue: run a frame or open one from History (7)", id="cat-status", markup=False)

    def focus_main(self) -> None:
        self.query_one(CatalogueTable).focus()

    # ------------------------------------------------------------ data
    def show_run(self, run) -> None:
        self.run = run
        table = self.query_one(CatalogueTable)
        if run is None or run.catalog is None:
            table.set_data({})
            self._status("this run has no catalogue")
            return
        arrays = column_arrays(run.catalog)
        label = facts(run.summary).calibration_label or str(run.catalog.meta.get("calibration_aperture", "") or "")
        self.label = label
        self.aliases = magnitude_aliases(arrays, label)
        table.set_data(arrays, default_columns(list(arrays), label))
        self._warm_filter()
        with self.prevent(Input.Changed):
            self.query_one("#cat-filter", Input).value = ""
        self._show_filter_error("")
        self._status()

    @work(thread=True, group="warm-filter")
    def _warm_filter(self) -> None:
        """Import pandas (the filter's grammar) now, in a thread, not on the first filter typed (seconds)."""
        import pandas  # noqa: F401

    def _status(self, extra: str = "") -> None:
        table = self.query_one(CatalogueTable)
        if not table.arrays:
            self.query_one("#cat-status", Static).update(extra or "no catalogue")
            return
        sort = f"  sorted by {table.sort_column} {'▼' if table.sort_reverse else '▲'}" if table.sort_column else ""
        where = f"  {self.run.run_dir.name}" if self.run else ""
        self.query_one("#cat-status", Static).update(
            f"{table.row_count} of {table.total_rows} sources{sort}{where}" + (f"  {extra}" if extra else ""))

    def on_catalogue_table_sorted(self, _event) -> None:
        self._status()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "cat-filter":
            return
        event.stop()
        table = self.query_one(CatalogueTable)
        if not table.arrays:
            return
        try:
            mask = filter_mask(table.arrays, event.value, self.label, self.aliases)
        except ValueError as exc:
            # no rows rather than the rows of an older filter: what is shown always matches what is typed
            table.apply_filter(np.zeros(table.total_rows, bool), empty_message="the filter above does not parse")
            self._show_filter_error(str(exc))
            self._status()
            return
        self._show_filter_error("")
        table.apply_filter(mask)
        self._status()

    def _show_filter_error(self, message: str) -> None:
        """The filter's problem on its own line under the box; the typed text stays as it is."""
        self.query_one("#cat-filter", Input).set_class(bool(message), "-invalid-filter")
        error = self.query_one("#cat-filter-error", Static)
        error.update(message)
        error.set_class(bool(message), "-shown")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "cat-filter":
            event.stop()
            self.focus_main()

    def on_catalogue_table_cursor_moved(self, event: CatalogueTable.CursorMoved) -> None:
        self.query_one("#cat-details-text", Static).update(self.details(event.row))

    def details(self, row: int | None) -> Text:
        table = self.query_one(CatalogueTable)
        if row is None or not table.arrays:
            return Text("no source selected")
        arrays = table.arrays
        text = Text()
        ids = [c for c in arrays if c.lower() == "id" or c.lower().endswith("_id") or "name" in c.lower()]
        rows = [(name, format_value(name, arrays[name][row])) for name in ids + [c for c in arrays if c not in ids]]
        rows = [(name, value) for name, value in rows if value != ""]
        # names in a column one wider than the longest, so a long name never runs into its value
        width = min(max((len(n) for n, _ in rows), default=8) + 1, 22)
        for name, value in rows:
            if len(name) >= width:
                text.append(f"{name}\n", style="bold")
                text.append(" " * width)
            else:
                text.append(f"{name:<{width}}", style="bold")
            text.append(f"{value}\n")
        ra, dec = self._radec(row)
        if ra is not None:
            text.append("\n")
            for label, url in sky_links(ra, dec).items():
                text.append(label, style=Style(link=url, underline=True))
                text.append("  ")
        return text

    def _radec(self, row: int):
        arrays = self.query_one(CatalogueTable).arrays
        if "ra" in arrays and "dec" in arrays:
            ra, dec = float(arrays["ra"][row]), float(arrays["dec"][row])
            if np.isfinite(ra) and np.isfinite(dec):
                return ra, dec
        return None, None

    # ------------------------------------------------------------ actions
    def action_filter(self) -> None:
        self.query_one("#cat-filter", Input).focus()

    def action_focus_table(self) -> None:
        self.focus_main()

    def action_details(self) -> None:
        self.toggle_class("-toggle-details")

    def action_columns(self) -> None:
        from .dialogs import ChooseColumns

        table = self.query_one(CatalogueTable)
        if not table.arrays:
            return

        def done(columns: list[str] | None) -> None:
            if columns:
                table.set_columns(columns)
                self._status()

        self.app.push_screen(ChooseColumns(list(table.arrays), table.columns), done)

    def action_copy_value(self) -> None:
        table = self.query_one(CatalogueTable)
        row, col = table.current_source(), table.current_column()
        if row is None or col is None:
            return
        value = format_value(col, table.arrays[col][row])
        self.app.copy_to_clipboard(value)
        self.notify(f"copied {col} = {value}")

    def action_copy_link(self, service: str = "SIMBAD") -> None:
        """Copy the SIMBAD, ESA Sky or Aladin link of the highlighted source's position."""
        row = self.query_one(CatalogueTable).current_source()
        if row is None:
            return
        ra, dec = self._radec(row)
        if ra is None:
            self.notify("this source has no sky position (the frame has no WCS)", severity="warning")
            return
        url = sky_links(ra, dec)[service]
        self.app.copy_to_clipboard(url)
        self.notify(f"copied the {service} link")

    def action_export(self) -> None:
        from .dialogs import AskText

        table = self.query_one(CatalogueTable)
        if not table.arrays or self.run is None:
            return
        default = str(self.run.run_dir / "catalog_view.csv")

        def done(path: str | None) -> None:
            if path:
                self.export(Path(path).expanduser())

        self.app.push_screen(AskText("Export the current view (rows and columns shown) to CSV", default), done)

    @work(thread=True, group="export")
    def export(self, path: Path) -> None:
        table = self.query_one(CatalogueTable)
        sub = self.run.catalog[table.order][table.columns]
        try:
            with atomic_path(path) as tmp:
                sub.write(tmp, format="ascii.csv", overwrite=True)
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"cannot write {path}: {exc}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"wrote {len(sub)} rows x {len(table.columns)} columns to {path}")
