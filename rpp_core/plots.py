"""Text figures (plotext) shared by the run folder and the TUI.

Each function takes the catalogue (astropy Table with the columns written by
the pipeline) and the run's :class:`~rpp_core.products.RunSummary` (calibration
aperture, zero point, band) and draws on a plotext-like object; :func:`render`
returns the figure as a string, ``color=False`` gives plain text for files. The TUI may instead call :func:`draw` with its own plotext
object (textual-plotext) to fill a widget of any size.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np
import plotext

from .products import RunSummary

# plotext keeps one global figure: serialise access
_LOCK = threading.Lock()


def _col(table, name) -> np.ndarray:
    if name not in table.colnames:
        return np.zeros(0)
    return np.asarray(np.ma.filled(np.ma.asarray(table[name]).astype(float), np.nan))


def flagged_rows(table, name) -> np.ndarray:
    """A per-row boolean column (``calib_used``...), all False when the column is absent (an uncalibrated run)."""
    if name not in table.colnames:
        return np.zeros(len(table), bool)
    return _col(table, name) > 0


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _finite(*arrays):
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(a)
    return [a[ok] for a in arrays]


def value_with_error(value: float | None, error: float | None, min_decimals: int = 3) -> str:
    """``value ± error`` with the error to two significant digits: 24.51900 ± 0.00040, 24.519 ± 0.012.

    At least ``min_decimals`` decimals, more when the error needs them, so an
    error of 0.0004 mag never prints as ``± 0.000``.
    """
    if value is None:
        return "–"
    if error is None or not np.isfinite(error):
        return f"{value:.{min_decimals}f}"
    decimals = min_decimals
    if error > 0:
        decimals = min(max(min_decimals, 1 - int(np.floor(np.log10(error)))), 8)
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


def robust_limits(values, used=None, min_half_range: float = 0.02, include_zero: bool = True) -> tuple[float, float]:
    """Axis limits that show every used point and are not stretched by outliers (magnitudes).

    The range spans the used points (all finite points when none is marked
    used), padded by 15 %, at least ``min_half_range`` either side of its
    centre, and includes 0 when ``include_zero``. Points beyond are drawn at
    the edge (:func:`clip_to_limits`): one rejected calibrator at +1 mag no
    longer flattens 0.01-mag residuals onto a line.
    """
    values = np.asarray(values, float)
    base = values[np.asarray(used, bool)] if used is not None else values
    base = base[np.isfinite(base)]
    if base.size == 0:
        base = values[np.isfinite(values)]
    if base.size == 0:
        return (-1.0, 1.0)
    lo, hi = float(base.min()), float(base.max())
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    mid = 0.5 * (lo + hi)
    half = max(0.5 * (hi - lo), min_half_range)
    return (mid - half, mid + half)


def clip_to_limits(values, limits: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``values`` pulled onto ``limits`` and a mask of those that were outside (drawn at the edge)."""
    values = np.asarray(values, float)
    lo, hi = limits
    outside = (values < lo) | (values > hi)
    return np.clip(values, lo, hi), outside


def _scatter(plt, x: np.ndarray, y: np.ndarray, **kwargs) -> None:
    """``plt.scatter`` of two arrays; drawn by :func:`render_figure`, only the points its canvas can show."""
    thin = getattr(plt, "thin_points", None)  # plotext itself and textual-plotext's plt have none
    if thin is not None:
        x, y = thin(x, y, kwargs.get("marker"))
    plt.scatter(x.tolist(), y.tolist(), **kwargs)


def _hist(plt, values: np.ndarray, bins: int, **kwargs) -> None:
    """``plt.hist(values, bins)``, the counting done in numpy: plotext counts in a Python loop (8 ms for 20,000).

    The same bars: plotext's ``hist_data`` arithmetic element by element
    (``int((v - min) / (max - min) * bins)``, the maximum in the last bin) and
    its ``draw_hist`` call of ``bar``.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    with np.errstate(divide="ignore", invalid="ignore"):
        index = ((values - lo) / (hi - lo) * bins).astype(np.int64)
    index[values == hi] = bins - 1
    if index.max() >= bins or index.min() < 0:  # rounding put a value past the last bin: plotext's own way
        plt.hist(values.tolist(), bins=bins, **kwargs)
        return
    slope = (hi - lo) / (bins - 1) if bins > 1 else 0  # plotext's linspace
    edges = [lo + i * slope for i in range(bins)]
    plt.bar(edges, np.bincount(index, minlength=bins).tolist(), minimum=None, reset_ticks=False, **kwargs)


def zp_fit(plt, table, summary: RunSummary) -> None:
    """Reference magnitude vs instrumental magnitude, the fitted line, rejected points marked."""
    label = summary.calibration_label
    mi, mr = _col(table, f"mag_{label}"), _col(table, "mag_ref")
    used = flagged_rows(table, "calib_used")
    rej = flagged_rows(table, "calib_rejected")
    zp = summary.zp
    if len(mi) == 0 or zp is None:
        plt.title("no zero point: run not calibrated")
        return
    x, y = _finite(mi[used], mr[used])
    xr, yr = _finite(mi[rej], mr[rej])
    if len(x):
        # the line first: points drawn later stay visible on top of it
        lo, hi = float(np.min(x)), float(np.max(x))
        plt.plot([lo, hi], [lo + zp, hi + zp], color="yellow", label=f"ZP {zp:.3f}")
    # rejected points under the used ones: the used points are what the fit is made of
    if len(xr):
        _scatter(plt, xr, yr, marker="x", color="red", label="rejected")
    if len(x):
        _scatter(plt, x, y, marker="dot", color="cyan", label="used")
    plt.title(f"Zero point {value_with_error(zp, summary.zp_err)}  (n={summary.n_calibrators or 0})")
    plt.xlabel(f"instrumental mag ({label})")
    plt.ylabel(f"catalogue {summary.band or ''}")


def residuals_mag(plt, table, summary: RunSummary) -> None:
    """Calibration residual (catalogue - calibrated) vs catalogue magnitude."""
    _residuals(plt, table, summary, "mag_ref", f"catalogue {summary.band or ''}")


def residuals_color(plt, table, summary: RunSummary) -> None:
    """Calibration residual vs reference colour."""
    _residuals(plt, table, summary, "ref_color", "reference colour")


def _residuals(plt, table, summary: RunSummary, xname, xlabel) -> None:
    x = _col(table, xname)
    res = _col(table, "calib_residual")
    used = flagged_rows(table, "calib_used")
    rej = flagged_rows(table, "calib_rejected")
    if len(res) == 0:
        plt.title("no calibration residuals")
        return
    a, b = _finite(x[used], res[used])
    if len(a) == 0:
        plt.title(f"no calibrator has a {xlabel}")
        return
    limits = robust_limits(b)
    plt.horizontal_line(0.0, color="yellow")
    # rejected first so the used points are drawn over them; outliers sit on the edge of the plot
    ar, br = _finite(x[rej], res[rej])
    if len(ar):
        br, outside = clip_to_limits(br, limits)
        label = "rejected" + (f" ({int(outside.sum())} off scale, at the edge)" if outside.any() else "")
        _scatter(plt, ar, br, marker="x", color="red", label=label)
    _scatter(plt, a, b, marker="dot", color="cyan", label="used")
    plt.ylim(*limits)
    plt.title(f"Residuals vs {xlabel} (rms {_num(summary.zp_rms):.3f})")
    plt.xlabel(xlabel)
    plt.ylabel("residual (mag)")


def mag_histogram(plt, table, summary: RunSummary) -> None:
    """Histogram of calibrated (or instrumental) magnitudes of all sources."""
    label = summary.calibration_label
    m = _col(table, f"mag_cal_{label}")
    what = "calibrated"
    if len(m) == 0 or not np.isfinite(m).any():
        m, what = _col(table, f"mag_{label}"), "instrumental"
    (m,) = _finite(m)
    if len(m) == 0:
        plt.title("no magnitudes")
        return
    _hist(plt, m, bins=30, color="cyan")
    plt.title(f"{len(m)} sources, {what} magnitudes")
    plt.xlabel(f"{what} mag")
    plt.ylabel("N")


def error_vs_mag(plt, table, summary: RunSummary) -> None:
    """Magnitude error vs magnitude of the calibration aperture."""
    label = summary.calibration_label
    m, e = _col(table, f"mag_cal_{label}"), _col(table, f"magerr_cal_{label}")
    if len(m) == 0 or not np.isfinite(m).any():
        m, e = _col(table, f"mag_{label}"), _col(table, f"magerr_{label}")
    m, e = _finite(m, e)
    if len(m) == 0:
        plt.title("no magnitudes")
        return
    _scatter(plt, m, e, marker="dot", color="cyan")
    plt.title("Error vs magnitude")
    plt.xlabel("mag")
    plt.ylabel("error (mag)")


FIGURES: dict[str, tuple[str, Callable]] = {
    "zp_fit": ("Zero-point fit", zp_fit),
    "residuals_mag": ("Residuals vs magnitude", residuals_mag),
    "residuals_color": ("Residuals vs colour", residuals_color),
    "mag_hist": ("Magnitude histogram", mag_histogram),
    "err_mag": ("Error vs magnitude", error_vs_mag),
}


def draw(name: str, plt, table, summary: RunSummary) -> None:
    """Draw figure ``name`` on a plotext-like object (plotext module or textual-plotext's ``plt``)."""
    FIGURES[name][1](plt, table, summary)


def render_figure(draw_fn: Callable, width: int = 100, height: int = 30, color: bool = False,
                  what: str = "figure") -> str:
    """Text of the figure ``draw_fn(plt)`` draws on plotext (ANSI colours only when ``color``).

    The one place that touches plotext's global figure: every text figure of the
    core (run plots, night summaries) goes through it, under one lock. A scatter
    of many points (:func:`_scatter`) is drawn from the points the canvas can
    show, one per character cell (see :class:`_Thinning`): the same text.
    """
    with _LOCK:
        thinning = _Thinning(plotext)
        try:
            text = _build(draw_fn, thinning, width, height, color)
            if thinning.thinned:
                thinning.learn_layout()
                text = _build(draw_fn, thinning, width, height, color)
        except Exception as exc:  # plotext has edge-case bugs; a figure must never fail a run
            text = f"{what}: could not be drawn ({type(exc).__name__}: {exc})\n"
        finally:
            plotext.clear_figure()
    if not color:
        text = plotext.uncolorize(text)
    return text


def _build(draw_fn: Callable, plt, width: int, height: int, color: bool) -> str:
    plotext.clear_figure()
    plotext.plotsize(width, height)
    if not color:
        plotext.theme("clear")
    draw_fn(plt)
    return plotext.build()


class _Thinning:
    """plotext for :func:`render_figure`, whose :func:`_scatter` keeps only the points that can be seen.

    plotext maps every point of a scatter to a character cell in Python
    (``get_matrix_data``, then ``brush`` drops the repeats): 20,000 points cost
    20-30 ms a figure, for a 100 x 30 canvas. Here the figure is drawn twice:
    first with each big scatter reduced to its extreme points (so the axis
    limits, and with them ticks, labels and the canvas, are those of all the
    points), which gives the limits and the canvas size; then with one point
    per cell, found with plotext's own arithmetic in numpy (plus the extremes):
    the cells, and so the text, are those plotext draws from every point.
    Markers of sub-cell resolution (hd, braille) are drawn in full.
    """

    #: scatters up to this many points are drawn as they are
    SMALL = 1000

    def __init__(self, plt) -> None:
        self._plt = plt
        self.thinned = False
        self._layout = None  # (x limits, y limits, canvas width, canvas height) once learnt

    def __getattr__(self, name):
        return getattr(self._plt, name)

    def thin_points(self, x: np.ndarray, y: np.ndarray, marker) -> tuple[np.ndarray, np.ndarray]:
        if len(x) <= self.SMALL or marker in (None, "hd", "fhd", "braille"):
            return x, y
        self.thinned = True
        keep = [np.argmin(x), np.argmax(x), np.argmin(y), np.argmax(y)]
        if self._layout is not None:
            xlim, ylim, width, height = self._layout
            cell = _cells(x, xlim, width) * (height + 2) + _cells(y, ylim, height)
            keep = np.concatenate([np.unique(cell, return_index=True)[1], keep])
        keep = np.unique(keep)
        return x[keep], y[keep]

    def learn_layout(self) -> None:
        """The limits and canvas size of the figure just built (plotext's state before it is cleared)."""
        monitor = self._plt._core._figure._active.monitor
        canvas = monitor.matrix
        self._layout = (list(monitor.xlim[0]), list(monitor.ylim[0]), len(canvas.Cols_canvas), len(canvas.Rows_canvas))


def _cells(values: np.ndarray, lim, bins: int) -> np.ndarray:
    """plotext's ``get_matrix_data``: ``floor(round(0.5 + (bins - 1) * (v - lo) / (hi - lo), 8))``, in numpy.

    The same floating-point operations in the same order, so the same values;
    ``round(v, 8)`` changes the floor only within 1e-8 below an integer, where
    Python's own rounding is used.
    """
    lo, hi = lim
    v = 0.5 + (bins - 1) * (values - lo) / (hi - lo)
    cells = np.floor(v)
    near = v - cells > 1 - 1e-8
    if near.any():
        cells[near] = [math.floor(round(c, 8)) for c in v[near].tolist()]
    # outside the canvas (plotext drops those): one key for all, so no row wraps onto the next column
    return np.clip(cells, -1, bins).astype(np.int64)


def render(name: str, table, summary: RunSummary, width: int = 100, height: int = 30, color: bool = False) -> str:
    """Figure ``name`` of :data:`FIGURES` as text."""
    return render_figure(lambda plt: draw(name, plt, table, summary), width, height, color, FIGURES[name][0])
