"""Image: the run's frame with detections and calibrators overlaid, pan and zoom."""

from __future__ import annotations

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static, TabPane
from textual.worker import get_current_worker

from .. import loaders
from ..widgets.halfblock import HalfBlockImage, Marker

LEGEND = "+ source  o calibrator  x rejected"


def run_markers(catalog, limit: int = 5000) -> list[Marker]:
    """Markers for the catalogue: calibrators (cyan), rejected calibrators (red), other detections (green)."""
    if catalog is None or "x" not in catalog.colnames or "y" not in catalog.colnames:
        return []
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)

    def flag(name):
        if name not in catalog.colnames:
            return np.zeros(len(catalog), bool)
        return np.asarray(np.ma.filled(np.ma.asarray(catalog[name]), False)).astype(bool)

    used, rejected = flag("calib_used"), flag("calib_rejected")
    markers = []
    # the brightest first would need a magnitude; keep calibrators and cap plain detections
    for i in np.flatnonzero(~used & ~rejected)[:limit]:
        markers.append(Marker(x[i], y[i], "+", "green"))
    for i in np.flatnonzero(rejected):
        markers.append(Marker(x[i], y[i], "x", "red"))
    for i in np.flatnonzero(used):
        markers.append(Marker(x[i], y[i], "o", "cyan"))
    return markers


class ImagePane(TabPane):
    """The frame of the current run, drawn with half blocks; m toggles the overlay."""

    BINDINGS = [Binding("m", "markers", "Overlay")]

    def __init__(self) -> None:
        super().__init__("6 Image", id="image")
        self.run = None

    def compose(self) -> ComposeResult:
        yield HalfBlockImage(id="frame-image", message="no run loaded: run a frame or open one from History (7)")
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
        markers = run_markers(run.catalog)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._loaded, run, grey, markers, message)

    def _loaded(self, run, grey, markers, message) -> None:
        if run is not self.run:
            return
        self.query_one(HalfBlockImage).set_image(grey, markers, message)
        self._update_status()

    def _update_status(self) -> None:
        image = self.query_one(HalfBlockImage)
        overlay = LEGEND if image.show_markers else "overlay off"
        self.query_one("#image-status", Static).update(f"{image.describe_view()}  {overlay}")

    def on_half_block_image_view_changed(self, _event) -> None:
        self._update_status()

    def action_markers(self) -> None:
        image = self.query_one(HalfBlockImage)
        image.show_markers = not image.show_markers
        self._update_status()
