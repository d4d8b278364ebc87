"""astrometry.net ``solve-field`` fed our own source list (an xylist), with scale and position hints."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..progress import LogFn
from ..settings import AstrometrySettings
from .index import index_dirs_for, index_files, write_backend_config
from .matching import pixel_scale_arcsec, sky_sep_arcsec
from .process import run_solver_process
from .result import SolveResult
from .wcsfile import read_wcs_header


def _write_xylist(path: Path, x, y, flux) -> None:
    fits.BinTableHDU.from_columns([
        fits.Column(name="X", format="D", array=np.asarray(x, float) + 1.0),  # FITS pixels are 1-based
        fits.Column(name="Y", format="D", array=np.asarray(y, float) + 1.0),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)),
    ]).writeto(path, overwrite=True)


def _hint_args(meta, settings: AstrometrySettings) -> tuple[list[str], list[str]]:
    args, words = [], []
    scale = getattr(meta, "pixel_scale", None) if meta is not None else None
    if scale and np.isfinite(scale) and scale > 0:
        lo, hi = scale * (1 - settings.scale_tolerance), scale * (1 + settings.scale_tolerance)
        args += ["--scale-units", "arcsecperpix", "--scale-low", f"{lo:.6g}", "--scale-high", f"{hi:.6g}"]
        words.append(f"scale {lo:.3f}-{hi:.3f}\"/px")
    ra = getattr(meta, "ra", None) if meta is not None else None
    dec = getattr(meta, "dec", None) if meta is not None else None
    if ra is not None and dec is not None and np.isfinite(ra) and np.isfinite(dec):
        args += ["--ra", f"{ra:.6f}", "--dec", f"{dec:.6f}", "--radius", f"{settings.search_radius_deg:g}"]
        words.append(f"within {settings.search_radius_deg:g} deg of RA {ra:.4f} Dec {dec:+.4f}")
    return args, words


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


def solve_astrometry_net(x, y, flux, shape, meta, settings: AstrometrySettings, deadline: float,
                          cancel, tick, log: LogFn, lines_out: list[str]) -> SolveResult | None:
    exe = shutil.which(settings.solve_field)
    if exe is None:
        lines_out.append(f"astrometry.net: {settings.solve_field} not found (apt-get install astrometry.net)")
        return None
    dirs = index_dirs_for(settings)
    files = index_files(dirs)
    if not files:
        where = ", ".join(str(d) for d in dirs) or "(none configured)"
        lines_out.append(f"astrometry.net: no index files in {where}: install astrometry-data-tycho2 for fields "
                         "of 30' and more, or build indexes with `rpp index build CATALOG --out DIR` and add DIR "
                         "to [astrometry] index_dirs")
        return None
    ny, nx = shape
    hint_args, hint_words = _hint_args(meta, settings)
    attempts: list[tuple[str, list[str]]] = []
    if hint_args:
        attempts.append(("hinted", hint_args))
    if not hint_args or settings.blind_fallback:
        attempts.append(("blind", []))
    with tempfile.TemporaryDirectory(prefix="rpp-solve-") as tmp:
        tmpd = Path(tmp)
        xy = tmpd / "field.xy.fits"
        n = min(len(x), settings.max_solve_sources)
        _write_xylist(xy, x[:n], y[:n], flux[:n])
        for k, (label, extra) in enumerate(attempts):
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0.5:
                lines_out.append(f"astrometry.net ({label}): no time left")
                break
            # a right hint solves in about a second, a wrong one runs until its limit: cap the hinted
            # attempt so that the blind retry keeps most of the budget
            budget = remaining if k == len(attempts) - 1 else min(remaining / 2, max(0.25 * settings.timeout_s, 5.0))
            cfg = write_backend_config(files, tmpd / f"backend-{label}.cfg", cpulimit=budget)
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
                   *extra, str(xy)]
            what = ", ".join(hint_words) if extra else "no hints"
            msg = f"astrometry.net ({label}: {what}), {n} sources, {len(files)} index files, limit {budget:.0f} s"
            log(msg)
            lines_out.append(msg)
            rc, _lines = run_solver_process(cmd, now + budget, cancel=cancel, log=log, cwd=tmp, progress=tick)
            wcs_path = out / "field.xy.wcs"
            if rc is None:
                lines_out.append(f"astrometry.net ({label}): stopped at the time limit ({budget:.0f} s)")
                continue
            if rc == 0 and (out / "field.xy.solved").exists() and wcs_path.exists():
                wcs = read_wcs_header(fits.getheader(wcs_path))
                wcs.pixel_shape = (nx, ny)
                rms, nm = _corr_stats(out / "field.xy.corr", wcs)
                scale = pixel_scale_arcsec(wcs)
                done = (f"astrometry.net ({label}) solved: pixel scale {scale:.4f}\"/px, {nm} index stars matched, "
                        f"RMS {rms:.2f}\"")
                log(done)
                lines_out.append(done)
                return SolveResult(wcs, rms, nm, f"astrometry.net ({label})", list(lines_out), scale)
            lines_out.append(f"astrometry.net ({label}): no solution (exit {rc})")
    return None
