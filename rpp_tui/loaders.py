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
    frame = frame_image(data, sample=sample, pyramid_levels=False)
    return frame.luts["zscale"][frame.levels[0]]


def _subsample(data: np.ndarray, sample: int) -> np.ndarray:
    flat = data.ravel()
    sub = flat[:: max(1, flat.size // sample)]
    return sub[np.isfinite(sub)].astype(np.float32)


#: the stretches the Image screen offers, in the order ``s`` cycles through them
STRETCHES = ("zscale", "histeq", "asinh")
STRETCH_LABELS = {"zscale": "zscale (linear)", "histeq": "histogram equalisation", "asinh": "asinh"}


@dataclass
class FrameImage:
    """A frame ready to draw: 16-bit levels and one 8-bit lookup table per stretch.

    ``levels[0]`` is the frame quantised to 0-65535 from its 0.5th percentile
    to its brightest pixel (row 0 = bottom of the frame); ``levels[k]`` halve it
    ``k`` times (:func:`pool`). A stretch is a table ``luts[name][q]`` of grey
    levels 0-255, so changing the stretch never touches the pixels.
    """

    levels: list[np.ndarray]
    luts: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0].shape


def _luts(sub_q: np.ndarray, z1: float, z2: float, hi: float) -> dict[str, np.ndarray]:
    """Grey-level tables over the 65536 quantised values: zscale, histogram equalisation, asinh."""
    from astropy.visualization import AsinhStretch

    q = np.arange(65536, dtype=np.float32)
    z2 = max(z2, z1 + 1.0)
    zscale = np.clip((q - z1) / (z2 - z1), 0, 1)
    hist = np.bincount(sub_q, minlength=65536).astype(np.float64)
    cdf = np.cumsum(hist)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    # asinh from the sky level (zscale's low limit) to the brightest pixel: faint and bright both readable
    span = max(hi - z1, 1.0)
    asinh = AsinhStretch(a=0.02)(np.clip((q - z1) / span, 0, 1))
    return {name: np.round(np.asarray(v, np.float32) * 255).astype(np.uint8)
            for name, v in (("zscale", zscale), ("histeq", cdf), ("asinh", asinh))}


def pool(level: np.ndarray, noise: float, peak_fraction: float = 0.1) -> np.ndarray:
    """Halve a 16-bit level: the 2x2 median, or the 2x2 maximum where a star stands out.

    The median keeps the sky at the sky's grey when zoomed out (a plain maximum
    turns a crowded field white: the largest of many pixels is always bright).
    A block keeps its maximum when it exceeds the mean by 5 noise sigmas and is
    among the ``peak_fraction`` most outstanding blocks: a star of one pixel stays
    visible in a sparse field, and in a crowded one the brightest stars do.
    """
    ny, nx = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
    four = np.sort(level[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).transpose(0, 2, 1, 3).reshape(ny // 2, nx // 2, 4),
                   axis=2)
    # the median of the four, not the mean: star light spread over a crowded field would lift the mean
    # far above the sky that the zscale limits were set on, and the view would turn white
    median = ((four[..., 1].astype(np.uint32) + four[..., 2] + 1) // 2).astype(np.uint16)
    peak = four[..., 3]
    excess = peak.astype(np.float32) - median
    limit = max(5.0 * noise, float(np.percentile(excess[:: max(1, excess.shape[0] // 256)], 100 * (1 - peak_fraction))))
    return np.where(excess > limit, peak, median)


def frame_image(data: np.ndarray, sample: int = 200_000, min_px: int = 8, pyramid_levels: bool = True) -> FrameImage:
    """Quantise ``data`` (any 2-D array, NaN allowed) and build its pyramid and stretch tables."""
    from astropy.visualization import ZScaleInterval

    sub = _subsample(data, sample)
    if sub.size == 0:
        zero = np.zeros(data.shape, np.uint16)
        flat = np.zeros(65536, np.uint8)
        return FrameImage([zero], {name: flat for name in STRETCHES})
    lo, top = np.percentile(sub, [0.5, 99.99])
    z1, z2 = ZScaleInterval().get_limits(sub)
    sigma = 1.4826 * float(np.median(np.abs(sub - np.median(sub)))) or 1.0
    # up to the brightest pixel (stars are rarer than any percentile of a subsample) but not to a
    # wild value (1e30 in a bad column): 10^4 noise sigmas above the 99.99th percentile at most
    with np.errstate(invalid="ignore"):
        peak = float(np.nanmax(data)) if np.isfinite(data).any() else top
    lo, hi = float(min(lo, z1)), float(max(min(peak, top + 1e4 * sigma), z2))
    if not hi > lo:
        hi = lo + 1.0
    scale = np.float32(65535.0 / (hi - lo))
    q0 = np.empty(data.shape, np.uint16)
    for r0 in range(0, data.shape[0], 512):
        block = (np.asarray(data[r0:r0 + 512], np.float32) - np.float32(lo)) * scale
        np.nan_to_num(block, copy=False, nan=0.0)
        q0[r0:r0 + 512] = np.clip(block, 0, 65535).astype(np.uint16)

    def to_q(v):
        return float(np.clip((v - lo) * float(scale), 0, 65535))

    sub_q = np.clip((sub - lo) * scale, 0, 65535).astype(np.uint16)
    # the noise in quantised units, from the MAD of the subsample (mostly sky)
    noise = 1.4826 * float(np.median(np.abs(sub_q.astype(np.float32) - np.median(sub_q)))) or 1.0
    luts = _luts(sub_q, to_q(z1), to_q(z2), 65535.0)
    levels = [q0]
    while pyramid_levels and min(levels[-1].shape) >= 2 * min_px:
        levels.append(pool(levels[-1], noise))
    return FrameImage(levels, luts)


def max_pool(grey: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by ``factor`` keeping the brightest pixel of each block (8-bit images, e.g. tests)."""
    if factor <= 1:
        return grey
    ny, nx = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    if ny == 0 or nx == 0:
        return grey
    return grey[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).max(axis=(1, 3))


def pyramid(grey: np.ndarray, min_px: int = 8) -> list[np.ndarray]:
    """``grey`` and its 2x2 max-pooled halvings down to ``min_px`` (8-bit images without noise)."""
    levels = [grey]
    while min(levels[-1].shape) >= 2 * min_px:
        levels.append(max_pool(levels[-1], 2))
    return levels


def preview_image(path: str | Path, max_px: int = 600) -> np.ndarray:
    """A quick-look: the frame in zscale grey levels, pooled to at most ``max_px`` on its long side."""
    frame = frame_image(_read_pixels(Path(path)))
    level = next((lv for lv in frame.levels if max(lv.shape) <= max_px), frame.levels[-1])
    return frame.luts["zscale"][level]


def full_image(path: str | Path) -> FrameImage:
    """The whole frame as a :class:`FrameImage` (16-bit pyramid and stretch tables), for pan, zoom and stretch."""
    return frame_image(_read_pixels(Path(path)))


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
    summary = RunSummary.read(run_dir / "summary.json") if (run_dir / "summary.json").exists() else RunSummary(frame="")
    catalog = read_catalog(run_dir)
    if catalog is not None and not summary.calibration_label:
        # a summary without the label (cut short, or older): the catalogue's meta says which aperture calibrates
        summary = dataclasses.replace(summary, calibration_label=str(catalog.meta.get("calibration_aperture", "")))
    files = {p.name: p for p in run_dir.iterdir() if p.is_file()}
    return RunView(run_dir, summary, catalog, files)


def from_result(result) -> RunView:
    """A :class:`RunView` from a ``rpp_core.products.RunResult`` already in memory."""
    return RunView(Path(result.run_dir), result.summary, result.catalog, dict(result.files))
