"""``siril-cli`` as second plate solver, when the installed Siril can plate-solve from scripts (1.2 and newer)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..progress import LogFn
from ..settings import AstrometrySettings
from ..image.pixscale import ARCSEC_PER_UM_PER_MM, wcs_pixel_scale
from .process import run_solver_process
from .result import SolveResult, SolveTrail
from .wcsfile import read_wcs_header

#: First Siril release whose scripts have the ``platesolve`` command.
SIRIL_MIN_PLATESOLVE = (1, 2, 0)


@dataclass
class SirilInfo:
    """What the installed ``siril-cli`` can do."""

    path: str | None
    version: tuple[int, int, int] | None
    can_platesolve: bool
    message: str


def _parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def siril_info(executable: str = "siril-cli", timeout_s: float = 10.0) -> SirilInfo:
    """Find ``siril-cli``, read its version, and say whether it can plate-solve from scripts."""
    path = shutil.which(executable)
    if path is None:
        return SirilInfo(None, None, False, f"{executable} not found on PATH: Siril is not installed")
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL, errors="replace")
        text = (res.stdout or "") + (res.stderr or "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SirilInfo(path, None, False, f"{path} --version failed ({exc}): cannot tell which Siril this is")
    version = _parse_version(text)
    if version is None:
        return SirilInfo(path, None, False, f"{path} --version printed no version ({text.strip()[:80]!r})")
    vs = ".".join(map(str, version))
    if version < SIRIL_MIN_PLATESOLVE:
        return SirilInfo(path, version, False,
                         f"Siril {vs} at {path} cannot plate-solve from scripts (the platesolve script command "
                         f"came with Siril 1.2); install Siril 1.2 or newer, or use solver = astrometry.net")
    return SirilInfo(path, version, True, f"Siril {vs} at {path} can plate-solve from scripts")


def _star_image(x, y, flux, shape, fwhm_px: float = 3.0) -> np.ndarray:
    """A clean uint16 star field rendered from the source list, for solvers that want an image."""
    ny, nx = shape
    img = np.full(shape, 1000.0, np.float32)
    rng = np.random.default_rng(0)
    img += rng.normal(0, 10.0, shape).astype(np.float32)
    f = np.asarray(flux, float)
    f = np.where(np.isfinite(f) & (f > 0), f, np.nanmin(f[f > 0]) if np.any(f > 0) else 1.0)
    amp = 20000.0 * (f / f.max()) ** 0.5 + 300.0
    sig = fwhm_px / 2.355
    half = int(4 * sig) + 1
    for xi, yi, ai in zip(x, y, amp):
        ix, iy = int(round(xi)), int(round(yi))
        x0, x1, y0, y1 = max(ix - half, 0), min(ix + half + 1, nx), max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.arange(x0, x1) - xi
        gy = np.arange(y0, y1) - yi
        img[y0:y1, x0:x1] += (ai * np.exp(-0.5 * (gy[:, None] ** 2 + gx[None, :] ** 2) / sig**2)).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def solve_siril(x, y, flux, shape, hints, settings: AstrometrySettings, deadline: float, cancel, tick,
                 log: LogFn, lines_out: SolveTrail) -> SolveResult | None:
    info = siril_info(settings.siril_cli)
    lines_out.append(info.message)
    log(info.message)
    if not info.can_platesolve:
        return None
    ny, nx = shape
    with tempfile.TemporaryDirectory(prefix="rpp-siril-") as tmp:
        tmpd = Path(tmp)
        n = min(len(x), settings.max_solve_sources)
        hdr = fits.Header()
        # Siril takes one scale: the first hint (the header WCS or keyword, as astrometry.net's range starts there)
        scale = hints.scales[0].arcsec_per_px if hints.scales else None
        args = []
        if scale:
            # Siril derives the scale from focal length and pixel size; any pair with the right ratio works
            pix_um = 10.0
            focal_mm = ARCSEC_PER_UM_PER_MM * pix_um / scale
            hdr["XPIXSZ"], hdr["YPIXSZ"], hdr["FOCALLEN"] = pix_um, pix_um, focal_mm
            args += [f"-focal={focal_mm:.3f}", f"-pixelsize={pix_um:.3f}"]
        ra, dec = (hints.ra, hints.dec) if hints.has_position else (None, None)
        coords = f"{ra:.6f},{dec:+.6f} " if ra is not None and dec is not None else ""
        if not coords:
            # without a pointing Siril's own solver has nowhere to look: hand the blind search to local astrometry.net
            args.append("-localasnet")
        fits.PrimaryHDU(_star_image(x[:n], y[:n], flux[:n], shape), header=hdr).writeto(tmpd / "stars.fit")
        script = tmpd / "solve.ssf"
        script.write_text("requires 1.2.0\n" f"load stars\n" f"platesolve {coords}{' '.join(args)}\n" "save solved\n")
        cmd = [info.path, "-d", str(tmpd), "-s", str(script)]
        log(f"siril-cli platesolve, {n} sources")
        lines_out.runs += 1
        rc, _ = run_solver_process(cmd, deadline, cancel=cancel, log=log, cwd=tmp, progress=tick)
        out = tmpd / "solved.fit"
        if rc != 0 or not out.exists():
            lines_out.append(f"siril: no solution (exit {rc})")
            return None
        wcs = read_wcs_header(fits.getheader(out))
        if not wcs.has_celestial:
            lines_out.append("siril: finished but wrote no WCS")
            return None
        wcs.pixel_shape = (nx, ny)
        sc = wcs_pixel_scale(wcs) or float("nan")
        lines_out.append(f"siril solved: pixel scale {sc:.4f}\"/px")
        return SolveResult(wcs, float("nan"), 0, f"siril {'.'.join(map(str, info.version))}", list(lines_out), sc)
