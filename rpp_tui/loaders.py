"""Blocking loaders the screens call from worker threads: never on the UI thread.

Presentation only: the header facts and the pixels come from
:mod:`rpp_core.image`; this module samples them for the screen (zscale from
astropy, then 8-bit grey levels) and reads run folders back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".fits.gz", ".fit.gz", ".fts.gz")


def is_fits_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(FITS_SUFFIXES) or (low.endswith(".gz") and low[:-3].endswith((".fits", ".fit", ".fts")))


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
    """A run as the screens show it: folder, catalogue, summary."""

    run_dir: Path
    summary: dict
    catalog: object | None = None  # astropy Table
    files: dict = field(default_factory=dict)

    @property
    def frame_path(self) -> Path | None:
        frame = self.summary.get("frame")
        return Path(frame) if frame else None

    def plot_meta(self) -> dict:
        s = self.summary
        meta = {}
        if self.catalog is not None:
            meta.update({k: v for k, v in self.catalog.meta.items() if isinstance(v, (str, int, float)) or v is None})
        meta.update({"calibration_label": s.get("calibration_label", meta.get("calibration_aperture", "")),
                     "zp": s.get("zp"), "zp_err": s.get("zp_err"), "n_calibrators": s.get("n_calibrators", 0),
                     "band": s.get("band", ""), "zp_rms": s.get("zp_rms", float("nan"))})
        return meta


#: catalogue files of a run folder, fastest to read first: a 17k-row ECSV takes seconds to parse,
#: the same rows in FITS a few tens of milliseconds (Parquet, when a run writes it, likewise)
CATALOG_FILES = (("catalog.parquet", "parquet"), ("catalog.fits", "fits"), ("catalog.ecsv", "ascii.ecsv"),
                 ("catalog.csv", "ascii.csv"))


def read_catalog(run_dir: Path):
    """The run's catalogue from its fastest readable file (see :data:`CATALOG_FILES`), or None."""
    import warnings

    from astropy.table import Table
    from astropy.units import UnitsWarning

    for name, fmt in CATALOG_FILES:
        path = run_dir / name
        if not path.exists():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = Table.read(path, format=fmt, **({"character_as_bytes": False} if fmt == "fits" else {}))
        except (OSError, ValueError, ImportError):
            continue  # a damaged or unreadable binary file: the text formats hold the same rows
        return table
    return None


def load_run(run_dir: str | Path) -> RunView:
    """Read ``summary.json`` and the catalogue of a run folder (binary file first, see :func:`read_catalog`)."""
    run_dir = Path(run_dir)
    summary = {}
    if (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
    catalog = read_catalog(run_dir)
    files = {p.name: p for p in run_dir.iterdir() if p.is_file()}
    return RunView(run_dir, summary, catalog, files)


def from_result(result) -> RunView:
    """A :class:`RunView` from a ``rpp_core.pipeline.RunResult`` already in memory."""
    return RunView(Path(result.run_dir), dict(result.summary), result.catalog, dict(result.files))
