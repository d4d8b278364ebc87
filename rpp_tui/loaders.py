"""Blocking loaders the screens call from worker threads: never on the UI thread.

Presentation only: the header facts and the pixels come from
:mod:`rpp_core.image`; this module samples them for the screen (zscale from
astropy, then 8-bit grey levels) and reads run folders back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpp_core.products import RunSummary

# ---------------------------------------------------------------- header facts

def header_facts(path: str | Path) -> dict:
    """Key facts of a frame without reading its pixels (see ``rpp_core.image.header_summary``)."""
    from rpp_core.image import header_summary

    return dict(header_summary(path))


def _read_pixels(path: Path) -> np.ndarray:
    from rpp_core.image import load_frame

    return load_frame(path).data


def to_grey(data: np.ndarray, sample: int = 200_000) -> np.ndarray:
    """Map an image to 0-255 with astropy's zscale limits (computed on a subsample)."""
    from astropy.visualization import ZScaleInterval

    flat = data.ravel()
    step = max(1, flat.size // sample)
    sub = flat[::step]
    sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = ZScaleInterval().get_limits(sub)
    if not hi > lo:
        hi = lo + 1.0
    out = np.empty(data.shape, np.uint8)
    # chunked so a 9k x 6k frame never needs a float64 copy
    for r0 in range(0, data.shape[0], 512):
        block = (data[r0:r0 + 512].astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        np.nan_to_num(block, copy=False, nan=0.0)
        out[r0:r0 + 512] = np.clip(block, 0, 255).astype(np.uint8)
    return out


def max_pool(grey: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by ``factor`` keeping the brightest pixel of each block, so stars survive the shrinking."""
    if factor <= 1:
        return grey
    ny, nx = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    if ny == 0 or nx == 0:
        return grey
    return grey[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).max(axis=(1, 3))


def pyramid(grey: np.ndarray, min_px: int = 8) -> list[np.ndarray]:
    """``grey`` and its 2x2 max-pooled halvings down to ``min_px``: what a zoomed-out view samples."""
    levels = [grey]
    while min(levels[-1].shape) >= 2 * min_px:
        levels.append(max_pool(levels[-1], 2))
    return levels


def preview_image(path: str | Path, max_px: int = 600) -> np.ndarray:
    """A quick-look: the frame in grey levels, max-pooled to at most ``max_px`` on its long side."""
    grey = to_grey(_read_pixels(Path(path)))
    return max_pool(grey, int(np.ceil(max(grey.shape) / max_px)))


def full_image(path: str | Path) -> list[np.ndarray]:
    """The whole frame as grey levels (one byte per pixel) and its :func:`pyramid`, for pan and zoom."""
    return pyramid(to_grey(_read_pixels(Path(path))))


# ---------------------------------------------------------------- run folders

@dataclass
class RunView:
    """A run as the screens show it: folder, summary, catalogue."""

    run_dir: Path
    summary: RunSummary
    catalog: object | None = None  # astropy Table
    files: dict = field(default_factory=dict)

    @property
    def frame_path(self) -> Path | None:
        return Path(self.summary.frame) if self.summary.frame else None

    def plot_meta(self) -> RunSummary:
        """What the figures of :mod:`rpp_core.plots` read: the run's summary."""
        return self.summary


def load_run(run_dir: str | Path) -> RunView:
    """Read ``summary.json`` and the catalogue (ECSV, else CSV) of a run folder."""
    from astropy.table import Table

    run_dir = Path(run_dir)
    summary = RunSummary.read(run_dir / "summary.json") if (run_dir / "summary.json").exists() else RunSummary(frame="")
    catalog = None
    for name, fmt in (("catalog.ecsv", "ascii.ecsv"), ("catalog.csv", "ascii.csv")):
        if (run_dir / name).exists():
            catalog = Table.read(run_dir / name, format=fmt)
            break
    if catalog is not None and not summary.calibration_label:
        # a summary without the label (cut short, or older): the catalogue's meta says which aperture calibrates
        summary = dataclasses.replace(summary, calibration_label=str(catalog.meta.get("calibration_aperture", "")))
    files = {p.name: p for p in run_dir.iterdir() if p.is_file()}
    return RunView(run_dir, summary, catalog, files)


def from_result(result) -> RunView:
    """A :class:`RunView` from a ``rpp_core.pipeline.RunResult`` already in memory."""
    return RunView(Path(result.run_dir), result.summary, result.catalog, dict(result.files))
