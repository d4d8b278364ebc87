"""Image: the run's frame with detections and calibrators overlaid, pan and zoom."""

from __future__ import annotations

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.widgets import Static, TabPane
from textual.worker import get_current_worker

from .. import graphics, loaders
from ..summary import facts
from ..widgets.halfblock import HalfBlockImage, Marker

LEGEND = "+ source  o calibrator  x rejected"


def run_markers(catalog, label: str = "") -> list[Marker]:
    """Markers for the catalogue: calibrators (cyan), rejected calibrators (red), other detections (green).

    Ranked for thinning when zoomed out: calibrators first, then rejected ones,
    then detections from the brightest (``mag_<label>``, else ``flux``) down.
    """
    if catalog is None or "x" not in catalog.colnames or "y" not in catalog.colnames:
        return []
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)

    def column(name, fill):
        if name not in catalog.colnames:
            return None
        return np.asarray(np.ma.filled(np.ma.asarray(catalog[name]), fill))

    used = column("calib_used", False)
    rejected = column("calib_rejected", False)
    used = np.zeros(len(x), bool) if used is None else used.astype(bool)
    rejected = np.zeros(len(x), bool) if rejected is None else rejected.astype(bool)
    mag = column(f"mag_{label}", np.nan) if label else None
    if mag is None and "flux" in catalog.colnames:
        mag = -np.asarray(column("flux", np.nan), float)  # brighter = smaller, like a magnitude
    brightness = np.zeros(len(x)) if mag is None else np.asarray(mag, float)
    order = np.argsort(np.where(np.isfinite(brightness), brightness, np.inf), kind="stable")
    rank = np.empty(len(x))
    rank[order] = np.arange(len(x))
    markers = []
    for i in range(len(x)):
        if used[i]:
            markers.append(Marker(x[i], y[i], "o", "cyan", rank=-2e9 + rank[i]))
        elif rejected[i]:
            markers.append(Marker(x[i], y[i], "x", "red", rank=-1e9 + rank[i]))
        else:
            markers.append(Marker(x[i], y[i], "+", "green", rank=rank[i]))
    return markers


class ImagePane(TabPane):
    """The frame of the current run, drawn with half blocks; m toggles the overlay."""

    BINDINGS = [
        Binding("s", "stretch", "Stretch"),
        Binding("m", "markers", "Overlay", show=False),
    ]

    def __init__(self) -> None:
        super().__init__("6 Image", id="image")
        self.run = None

    def compose(self) -> ComposeResult:
        with Container(id="frame-box"):
            yield HalfBlockImage(id="frame-image", message="no run loaded: run a frame or open one from History (7)")
            if graphics.WIDGET is not None:
                # the terminal shows real images: textual-image draws the view over the (blank) half blocks,
                # which keep the keys, the zoom and the overlay
                yield graphics.WIDGET(id="frame-graphics")
        yield Static("", id="image-status", markup=False)

    def focus_main(self) -> None:
        self.query_one(HalfBlockImage).focus()

    def show_run(self, run) -> None:
        self.run = run
        image = self.query_one(HalfBlockImage)
        path = run.frame_path if run else None
        if path is None or not path.exists():
            image.set_image(None, message=f"frame not found: {path}" if path else "no frame")
            return
        image.set_image(None, message=f"loading {path.name}…")
        self.load(run)

    @work(thread=True, exclusive=True, group="image")
    def load(self, run) -> None:
        try:
            grey, message = loaders.full_image(run.frame_path), ""
        except Exception as exc:  # noqa: BLE001 - shown to the user
            grey, message = None, f"cannot read {run.frame_path}: {exc}"
        markers = run_markers(run.catalog, facts(run.summary).calibration_label)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._loaded, run, grey, markers, message)

    def _loaded(self, run, grey, markers, message) -> None:
        if run is not self.run:
            return
        image = self.query_one(HalfBlockImage)
        image.graphics = graphics.WIDGET is not None and grey is not None
        image.set_image(grey, markers, message)
        self._update_status()

    def _redraw_graphics(self) -> None:
        """Give textual-image the current view as a picture (only in terminals that show images)."""
        image = self.query_one(HalfBlockImage)
        if not image.graphics:
            return
        self.query_one("#frame-graphics").image = image.view_rgb(graphics.CELL_PX)

    def _update_status(self) -> None:
        image = self.query_one(HalfBlockImage)
        image.ensure_built()  # the marker count of this view, not of the one before
        if not image.show_markers:
            overlay = "overlay off (m)"
        else:
            total = len(image._markers)
            overlay = LEGEND + (f"  ({image.markers_shown} of {total}: the brightest)" if image.markers_shown < total else "")
        stretch = f"  {image.stretch}" if image.stretch else ""
        self.query_one("#image-status", Static).update(f"{image.describe_view()}{stretch}  {overlay}")

    def on_half_block_image_view_changed(self, _event) -> None:
        self._update_status()
        self._redraw_graphics()

    def action_stretch(self, name: str = "") -> None:
        """Next stretch (zscale, histogram equalisation, asinh), or the one named."""
        image = self.query_one(HalfBlockImage)
        names = image.stretches
        if not names:
            return
        if not name:
            name = names[(names.index(image.stretch) + 1) % len(names)] if image.stretch in names else names[0]
        image.set_stretch(name)
        self.notify(f"stretch: {loaders.STRETCH_LABELS.get(name, name)}", timeout=2)

    async def action_zoom(self, action: str) -> None:
        """Zoom from the palette: ``in``, ``out``, ``fit`` or ``actual`` (1:1)."""
        image = self.query_one(HalfBlockImage)
        await image.run_action({"in": "zoom(1)", "out": "zoom(-1)", "fit": "fit", "actual": "actual_size"}[action])

    def action_markers(self) -> None:
        image = self.query_one(HalfBlockImage)
        image.show_markers = not image.show_markers
        self._update_status()
        self._redraw_graphics()
