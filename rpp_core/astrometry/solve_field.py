"""astrometry.net ``solve-field`` fed our own source list (an xylist), planned against the index files.

Before solve-field starts, :func:`plan_astrometry_net` compares the frame with
the index files (:mod:`.coverage`): which have quads that fit the frame at the
hinted pixel scales, and which hold stars near the hinted pointing. Each try
gets only the index files that can solve it; a try no index can serve is not
started, and when no try is left the error says which index would solve the
frame, at once, instead of running to the time limit.

The tries, in order:

1. ``hinted``: the pointing (``--ra/--dec/--radius search_radius_deg``) and the
   pixel-scale range covering every hint (:class:`~.hints.SolveHints`), with the
   index files that fit that scale and lie near the pointing.
2. ``blind``: without the pointing, in case the header pointing is wrong; it
   keeps the scale range. It runs only when ``blind_fallback`` is on, the
   pointing is known, some fitting index file lies near it (else the frame could
   only be solved if the pointing were wrong) and there is a pixel-scale hint:
   a search of the whole sky at every scale is what runs to the time limit
   (measured on a 256 x 256 frame with the Tycho-2 indexes: 5.5 s hinted by the
   pointing alone, still searching after 90 s blind). With no hint at all it is
   the only try, at every scale (fields of 0.5' to 180 deg: solve-field's own
   default starts at 6').

A lone try gets the whole time limit; when there are two, each gets at most a
quarter of it (5 s at least): a right hint solves in about a second, and a
hinted try that failed leaves the blind one a long shot. So a frame that cannot
be solved spends at most half the limit in solve-field, and only when some
index file could have solved it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..progress import LogFn
from ..settings import AstrometrySettings
from .coverage import (IndexInfo, blind_scale_range, field_radius_deg, index_advice, index_infos, quad_range)
from .hints import SolveHints
from .index import index_dirs_for, index_files, write_backend_config
from ..image.pixscale import wcs_pixel_scale
from .matching import sky_sep_arcsec
from .process import run_solver_process
from .result import SolveResult, SolveTrail
from .wcsfile import read_wcs_header

#: index files named one by one in the log; more are counted
_NAMES_SHOWN = 4


@dataclass
class Attempt:
    """One solve-field run: its hints and the index files it may use.

    ``scale``: (low, high) arcsec/px given to solve-field;
    ``position``: (ra, dec, radius) deg, None for the whole sky.
    """

    label: str
    scale: tuple[float, float]
    position: tuple[float, float, float] | None
    indexes: list[IndexInfo]
    hinted_scale: bool = True

    def args(self) -> list[str]:
        out: list[str] = []
        out += ["--scale-units", "arcsecperpix", "--scale-low", f"{self.scale[0]:.6g}",
                "--scale-high", f"{self.scale[1]:.6g}"]
        if self.position is not None:
            ra, dec, radius = self.position
            out += ["--ra", f"{ra:.6f}", "--dec", f"{dec:.6f}", "--radius", f"{radius:g}"]
        return out

    def describe(self) -> str:
        words = []
        if self.position is not None:
            words.append(f"within {self.position[2]:g} deg of RA {self.position[0]:.4f} Dec {self.position[1]:+.4f}")
        words.append(f"scale {self.scale[0]:.3f}-{self.scale[1]:.3f}\"/px" + ("" if self.hinted_scale else
                     " (no scale hint: fields of 0.5' to 180 deg)"))
        names = [i.name for i in self.indexes[:_NAMES_SHOWN]]
        more = len(self.indexes) - len(names)
        files = ", ".join(names) + (f" and {more} more" if more > 0 else "")
        return f"{'; '.join(words)}; {len(self.indexes)} index file{'s' if len(self.indexes) != 1 else ''} ({files})"


@dataclass
class SolvePlan:
    """The solve-field tries worth starting, why others are not, and which index would help."""

    attempts: list[Attempt] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    advice: str = ""


def _quad_ranges(indexes: list[IndexInfo]) -> str:
    """The quad sizes of index files as merged ranges in arcmin: ``4'-16', 22'-2000'``."""
    spans = sorted((i.quad_lo / 60, i.quad_hi / 60) for i in indexes if np.isfinite(i.quad_lo))
    merged: list[list[float]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] * 1.001:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return ", ".join(f"{lo:.4g}'-{hi:.4g}'" for lo, hi in merged) or "unknown sizes"


def _width(shape, scale: float) -> str:
    return f"{max(shape) * scale / 60.0:.3g}'"


def plan_astrometry_net(shape: tuple[int, int], hints: SolveHints, indexes: list[IndexInfo],
                        settings: AstrometrySettings) -> SolvePlan:
    """Which solve-field tries can work with these index files (see the module docstring).

    Parameters
    ----------
    shape : (ny, nx)
    hints : SolveHints
    indexes : list of IndexInfo
        The readable index files (:func:`.coverage.index_infos`).
    settings : AstrometrySettings
        ``scale_tolerance``, ``search_radius_deg``, ``blind_fallback``.
    """
    plan = SolvePlan()
    srange = hints.scale_range(settings.scale_tolerance)
    scales = srange or blind_scale_range(shape)
    q_lo, q_hi = quad_range(shape, *scales)
    fit = [i for i in indexes if i.fits_quads(q_lo, q_hi)]
    frame_words = (f"a {_width(shape, scales[0])}-{_width(shape, scales[1])} wide field "
                   f"({shape[1]} x {shape[0]} px at {scales[0]:.3g}-{scales[1]:.3g}\"/px) needs quads of "
                   f"{q_lo / 60:.2g}'-{q_hi / 60:.3g}'")
    if not fit:
        plan.skipped.append(f"{frame_words}; the {len(indexes)} index files hold quads of {_quad_ranges(indexes)}")
    position = (hints.ra, hints.dec, settings.search_radius_deg) if hints.has_position else None
    near = fit
    if position is not None and fit:
        # the frame's own radius and the search radius: any index star that could fall in the frame
        margin = settings.search_radius_deg + (field_radius_deg(shape, srange[1]) if srange else 0.0)
        near = [i for i in fit if i.covers(hints.ra, hints.dec, margin)]
        if not near:
            cones = "; ".join(i.describe() for i in fit[:_NAMES_SHOWN])
            close = [i for i in indexes if i not in fit and i.covers(hints.ra, hints.dec, margin)]
            there = f" (those near it hold quads of {_quad_ranges(close)}: they do not fit)" if close else ""
            plan.skipped.append(f"no index file with quads that fit lies near RA {hints.ra:.4f} Dec {hints.dec:+.4f} "
                                f"({hints.position_source or 'the pointing'}){there}; those that fit cover: {cones}. "
                                "A blind solve would only help if that pointing were wrong")
    if near and (position is not None or srange is not None):
        plan.attempts.append(Attempt("hinted", scales, position, near, srange is not None))
    elif near:
        plan.attempts.append(Attempt("blind", scales, None, near, False))
    if position is not None and srange is not None and near and settings.blind_fallback:
        plan.attempts.append(Attempt("blind", srange, None, fit))
    if not plan.attempts:
        plan.advice = "Index files that would solve it: " + index_advice(
            shape, srange[0] if srange else None, srange[1] if srange else None, hints.ra, hints.dec)
    return plan


def _write_xylist(path: Path, x, y, flux) -> None:
    fits.BinTableHDU.from_columns([
        fits.Column(name="X", format="D", array=np.asarray(x, float) + 1.0),  # FITS pixels are 1-based
        fits.Column(name="Y", format="D", array=np.asarray(y, float) + 1.0),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)),
    ]).writeto(path, overwrite=True)


def _corr_stats(corr_path: Path, wcs: WCS) -> tuple[float, int]:
    try:
        corr = fits.getdata(corr_path, 1)
    except (OSError, IndexError, KeyError):
        return float("nan"), 0
    if len(corr) == 0:
        return float("nan"), 0
    sep = sky_sep_arcsec(wcs, np.asarray(corr["field_x"], float) - 1, np.asarray(corr["field_y"], float) - 1,
                          np.asarray(corr["index_ra"], float), np.asarray(corr["index_dec"], float))
    return float(np.sqrt(np.mean(sep**2))), int(len(corr))


def solve_astrometry_net(x, y, flux, shape, hints: SolveHints, settings: AstrometrySettings, deadline: float,
                         cancel, tick, log: LogFn, trail: SolveTrail) -> SolveResult | None:
    """Plan the solve-field tries (:func:`plan_astrometry_net`) and run them until one solves."""
    exe = shutil.which(settings.solve_field)
    if exe is None:
        trail.append(f"astrometry.net: {settings.solve_field} not found (apt-get install astrometry.net)")
        return None
    dirs = index_dirs_for(settings)
    files = index_files(dirs)
    where = ", ".join(str(d) for d in dirs) or "(none configured)"
    if not files:
        trail.append(f"astrometry.net: no index files in {where}: build indexes for your fields with "
                     "`rpp index build --field RA DEC --radius R` (Gaia DR3, into the folder rpp searches by "
                     "default) or `rpp index build CATALOG --out DIR` and add DIR to [astrometry] index_dirs, "
                     "or install Debian astrometry-data-tycho2 for fields of 30' and more")
        return None
    infos = index_infos(files)
    for bad in (i for i in infos if i.problem):
        log(f"astrometry.net: index file {bad.path} skipped: {bad.problem}")
    usable = [i for i in infos if not i.problem]
    plan = plan_astrometry_net(tuple(shape), hints, usable, settings)
    hint_line = f"astrometry.net hints: {hints.describe_position()}; {hints.describe_scales()}"
    log(hint_line)
    trail.append(hint_line)
    for why in plan.skipped:
        line = f"astrometry.net: {why}"
        log(line)
        trail.append(line)
    if not plan.attempts:
        trail.advice = f"{plan.advice} (index files searched: {where})"
        return None
    ny, nx = shape
    with tempfile.TemporaryDirectory(prefix="rpp-solve-") as tmp:
        tmpd = Path(tmp)
        xy = tmpd / "field.xy.fits"
        n = min(len(x), settings.max_solve_sources)
        _write_xylist(xy, x[:n], y[:n], flux[:n])
        for k, attempt in enumerate(plan.attempts):
            label = attempt.label
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0.5:
                trail.append(f"astrometry.net ({label}): no time left")
                break
            # a right hint solves in about a second, a wrong one runs until its limit: when there are two
            # tries, each gets at most a quarter of the limit (the blind retry is a long shot: a wrong pointing)
            cap = max(0.25 * settings.timeout_s, 5.0)
            if len(plan.attempts) == 1:
                budget = remaining
            else:
                budget = min(remaining if k == len(plan.attempts) - 1 else remaining / 2, cap)
            cfg = write_backend_config([i.path for i in attempt.indexes], tmpd / f"backend-{label}.cfg",
                                       cpulimit=budget)
            out = tmpd / label
            out.mkdir()
            cmd = [exe, "--config", str(cfg), "--dir", str(out), "--no-plots", "--overwrite",
                   # the xylist carries no WCS; solving from scratch is the point, so never verify a header one
                   "--no-verify",
                   "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX",
                   "--width", str(nx), "--height", str(ny),
                   "--crpix-center", "--tweak-order", str(max(1, settings.sip_order or 1)),
                   "--cpulimit", str(int(max(1, budget))),
                   # our list is already clean: skip the Python helpers that would thin it out
                   "--no-remove-lines", "--uniformize", "0",
                   "--new-fits", "none", "--rdls", "none", "--match", "none", "--index-xyls", "none",
                   "--temp-dir", str(tmpd),
                   *attempt.args(), str(xy)]
            msg = f"astrometry.net ({label}: {attempt.describe()}), {n} sources, limit {budget:.0f} s"
            log(msg)
            trail.append(msg)
            trail.runs += 1
            rc, _lines = run_solver_process(cmd, now + budget, cancel=cancel, log=log, cwd=tmp, progress=tick)
            spent = time.monotonic() - now
            wcs_path = out / "field.xy.wcs"
            if rc is None:
                trail.append(f"astrometry.net ({label}): stopped at the time limit ({budget:.0f} s)")
                continue
            if rc == 0 and (out / "field.xy.solved").exists() and wcs_path.exists():
                wcs = read_wcs_header(fits.getheader(wcs_path))
                wcs.pixel_shape = (nx, ny)
                rms, nm = _corr_stats(out / "field.xy.corr", wcs)
                scale = wcs_pixel_scale(wcs) or float("nan")
                done = (f"astrometry.net ({label}) solved in {spent:.1f} s: pixel scale {scale:.4f}\"/px, "
                        f"{nm} index stars matched, RMS {rms:.2f}\"")
                log(done)
                trail.append(done)
                return SolveResult(wcs, rms, nm, f"astrometry.net ({label})", list(trail), scale)
            failed = f"astrometry.net ({label}): no solution after {spent:.1f} s (exit {rc})"
            log(failed)
            trail.append(failed)
    if not hints.scales:
        trail.advice = ("Check the index files cover this field, or raise [astrometry] timeout_s; rpp knew no pixel "
                        "scale, so solve-field searched every scale: give it (header PIXSCALE, or XPIXSZ and "
                        "FOCALLEN, or [observatory] pixel_size_um and focal_length_mm)")
    return None
