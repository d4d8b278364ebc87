"""Multi-aperture photometry with a local annulus, ePSF building and PSF photometry.

Conventions
-----------
* Pixel coordinates ``x``, ``y`` are 0-based (numpy/photutils); a pixel centre is
  at an integer coordinate.
* ``data_sub`` is the frame with the global 2-D background already subtracted
  (ADU, float32); ``rms`` is the per-pixel background RMS map (ADU); ``mask`` is
  True where a pixel must not be used (NaN, saturated, cosmic ray, border...).
* Fluxes are in ADU, magnitudes instrumental: ``mag = -2.5 log10(flux / exptime)``
  with ``exptime`` in s (``None`` means 1 s); ``magerr = 1.0857 fluxerr / flux``.
  A non-positive flux gives ``mag = NaN`` and flag 16.

Aperture photometry
-------------------
For every aperture radius ``r`` (``aperture_factors`` x FWHM, plus the fixed
radius when ``fixed_aperture_px > 0``)::

    sum      = sum of data_sub over the circle (sep_x.sum_circle, subpix 5)
    bkg      = median of the sigma-clipped annulus pixels (annulus_inner..annulus_outer x FWHM,
               masked and off-frame pixels removed); data are already globally
               background-subtracted, so this is the local residual level per pixel
    flux     = sum - bkg * area                       (area = pi r^2, or the in-frame part)
    fluxerr^2 = sum(rms^2) + max(flux, 0) / gain + (pi/2) area^2 std_ann^2 / n_ann

(the pi/2 is the variance of a median relative to a mean: the level is a median).

``gain`` is in e-/ADU; without a gain the Poisson term is left out.

Masked pixels inside an aperture are never summed. sep_x scales the unmasked
sum by (area / unmasked area), which for a masked pixel in the core of a star
loses several per cent (4.7 % measured for a masked central pixel, FWHM 3.5 px,
r = 2 FWHM). So a masked pixel is first replaced by the value at its mirror
position through the aperture centre (bilinear interpolation, as SExtractor's
``MASK_TYPE CORRECT``) when that point is unmasked; a pixel whose mirror is
masked too (the central pixel, a bad column through the star) gets the value of
a log-quadratic radial profile fitted to the unmasked pixels at the same radius
+- 1 px; only a pixel with no usable neighbours (a saturated core) falls back to
the area scaling. Either way flag 1 is set. Measured on a bright star, FWHM
3.5 px: central pixel masked -> flux within 0.1 %, a neighbour of it -> 0.1-0.6 %.

Flag bits (per aperture ``flag_<L>``; the calibration aperture's flag is OR-ed
into the overall ``flags`` column): 1 masked/NaN/CR pixel in the aperture,
2 saturated pixel in the aperture (needs ``saturated_mask``), 4 aperture cut by
the frame edge or source flagged 4 by detection (border), 8 local annulus
unreliable (fewer than max(10, 25 %) of its nominal pixels left), 16
non-positive flux, 32 crowded (another source's centre inside the aperture),
64 PSF fit failed or not attempted (``psf_flag`` only).

PSF photometry: why sep_x and how the ePSF is handed to it
-----------------------------------------------------------
The ePSF is built with photutils ``EPSFBuilder`` (oversampling
``psf_oversampling``, ``psf_iterations`` fixed iterations) from automatically
chosen isolated, unsaturated, unflagged, high-SNR stars. The ``psf_max_fit``
brightest sources are then fitted with ``sep_x.psf_fit`` (flux and position;
``grouped=True`` so overlapping neighbours are fitted together; only pixels
within ``psf_fit_radius`` x FWHM count), not photutils ``PSFPhotometry``.
Measured on the 4096 x 4096 synthetic frame with 6,000 stars (2-core machine,
same ePSF, same 300 bright isolated stars): ``PSFPhotometry`` (fit_shape 11)
2.2 ms/star, flux/truth 0.9997 +- 0.53 %; ``sep_x.psf_fit`` 0.08 ms/star,
0.9998 +- 0.35 %. Over all 6,000 stars sep_x takes 0.3-0.6 s (PERFORMANCE.md
has ~10 ms/star, 63 s, for ``PSFPhotometry`` with default grouping). Without
grouping and the fit radius, 306 of 6,000 fits failed (drifted onto a
neighbour); with them, 0-1.

sep_x is given the RMS map but not the gain: it would take the Poisson variance
from the data, which down-weights upward noise and biased 2,000-8,000 ADU stars
by -0.5 % (-0.23 sigma); without it they are unbiased (1.0002). The Poisson
term is added to ``psf_fluxerr`` analytically instead (see the fit loop).
Result on the 4k frame (truth sky): bright unsaturated stars (SNR > 100)
psf_flux/truth median 1.0008, MAD scatter 0.41 %; faint-star pulls
(flux - truth) / psf_fluxerr have MAD 1.06.

sep_x treats a supersampled PSF (``sampling < 1``) as the *intrinsic* PSF and
integrates it over image pixels (a delta-function PSF lands whole in one
pixel), while a photutils ePSF is already pixel-integrated. Handing it the
oversampled ePSF therefore convolves with the pixel twice: fluxes came out
+0.6 % (noisy frame) to +2 % (noise-free) high. With ``sampling = 1`` sep_x
instead shifts the stamp by Lanczos interpolation, the right operation for an
already pixel-integrated ePSF, so the ePSF is decimated to image-pixel steps
through its centre before fitting (first trial, ungrouped: flux ratio 0.9988
instead of 1.0058, with no dependence on sub-pixel phase). This relies on the
ePSF being reasonably sampled (FWHM >~ 2 px). The oversampled build still
matters: it is what lets EPSFBuilder average stars at many sub-pixel phases.

Normalisation: photutils normalises the ePSF to unit sum over its stamp
(``2 psf_radius`` FWHM wide) and sep_x renormalises the stamp to unit sum, so
``psf_flux`` is the flux inside that stamp: for a beta = 3 Moffat with the
default 5 FWHM half-size, 99.9 % of the total flux. ``psf_mag`` is put on the
scale of the calibration aperture by the aperture correction
(``PsfInfo.apcorr``): ``psf_mag = -2.5 log10(psf_flux / exptime) + apcorr``;
``psf_flux`` itself stays uncorrected.

Sensitivity to the global background: unlike the apertures, the ePSF and the
fit have no local background term, and the ePSF's unit-sum normalisation takes
in whatever residual level the stamps hold. With a 64-px-mesh background that
left -0.48 ADU/px round the stars (1k frame, 500 stars), bright-star PSF
fluxes came out 0.990 of truth instead of 0.997 with the true sky, while the
apertures stayed at 0.998. Subtracting an estimated pedestal from the ePSF
stamps did not help: annulus levels of faint sources (+1.1 ADU) and stamp-edge
rings (+0.5 ADU) both hold real wing light of neighbours and of the star
itself, and made it worse (0.980-0.989). The aperture correction removes such
a scale error from ``psf_mag``, which is what calibration uses.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sep_x
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from scipy.spatial import cKDTree

from .errors import Cancelled, InputError, SettingsError
from .settings import PhotometrySettings

__all__ = [
    "PsfInfo",
    "aperture_labels",
    "aperture_photometry",
    "build_epsf",
    "psf_photometry",
    "select_psf_stars",
]

FLAG_MASKED = 1
FLAG_SATURATED = 2
FLAG_EDGE = 4
FLAG_ANNULUS = 8
FLAG_NONPOSITIVE = 16
FLAG_CROWDED = 32
FLAG_PSF_FAILED = 64

MAG_ERR_FACTOR = 2.5 / math.log(10.0)  # 1.0857
SUBPIX = 5
_CHUNK = 2000  # sources per annulus / PSF-fit chunk: progress granularity and memory bound

Progress = Callable[[int, int], None] | None
Cancel = Callable[[], bool] | None


@dataclass
class PsfInfo:
    """What the PSF stage built and measured.

    Attributes
    ----------
    status : "ok", or why no PSF photometry was done (then the PSF columns are NaN).
    epsf : oversampled ePSF (photutils convention: pixel-integrated, sum = oversampling**2,
        centre at the middle pixel), or None.
    epsf_fit : the ePSF decimated to image-pixel steps, unit sum: what sep_x fits.
    oversampling : ePSF oversampling factor.
    stamp_px : side of the ePSF stamp in image pixels (odd).
    fwhm_px : FWHM used to size stamps and annuli (px).
    star_ids : ``id`` (or row index) of the stars selected for the ePSF.
    n_stars : stars the ePSF builder kept.
    n_fit, n_failed, n_skipped : sources fitted, failed fits, sources not fitted
        (beyond ``psf_max_fit`` or without a position).
    apcorr, apcorr_err, apcorr_n : aperture correction (mag) added to the raw PSF magnitude
        to put it on the scale of ``apcorr_aperture``; its error (mag, error of the
        median) and the number of stars it comes from.
    aperture_corrections : label -> (correction to the largest aperture in mag, error, n):
        ``mag_largest = mag_label + correction``; label "psf" gives it for the raw PSF mag.
    largest_aperture : label of the largest aperture.
    build_s, fit_s : wall time of the ePSF build and of the PSF fits (s).
    normalisation : one line saying what psf_flux measures.
    """

    status: str = "ok"
    relaxed_selection: bool = False  # ePSF stars chosen by the relaxed rules (crowded or nebulous frame)
    epsf: np.ndarray | None = None
    epsf_fit: np.ndarray | None = None
    oversampling: int = 1
    stamp_px: int = 0
    fwhm_px: float = float("nan")
    star_ids: list = field(default_factory=list)
    n_stars: int = 0
    n_fit: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    apcorr: float = 0.0
    apcorr_err: float = float("nan")
    apcorr_n: int = 0
    apcorr_aperture: str = ""
    aperture_corrections: dict = field(default_factory=dict)
    largest_aperture: str = ""
    build_s: float = 0.0
    fit_s: float = 0.0
    normalisation: str = "ePSF normalised to unit sum over its stamp: psf_flux = flux inside the stamp"

    @property
    def n_fitted(self) -> int:
        """Sources fitted successfully."""
        return self.n_fit - self.n_failed

    @property
    def epsf_data(self) -> np.ndarray | None:
        """The oversampled ePSF (alias of ``epsf``, the array a ``psf.fits`` should hold)."""
        return self.epsf


def aperture_labels(settings: PhotometrySettings) -> list[str]:
    """Column labels of the apertures, in order: ``ap1p5``, ``ap2``, ... then ``fix``."""
    labels = [f"ap{float(f):g}".replace(".", "p") for f in settings.aperture_factors]
    if settings.fixed_aperture_px > 0:
        labels.append("fix")
    return labels


def _radii(settings: PhotometrySettings, fwhm_px: float) -> dict[str, float]:
    radii = {lab: float(f) * fwhm_px for lab, f in zip(aperture_labels(settings), settings.aperture_factors)}
    if settings.fixed_aperture_px > 0:
        radii["fix"] = float(settings.fixed_aperture_px)
    return radii


def _calib_label(settings: PhotometrySettings) -> str:
    labels = aperture_labels(settings)
    idx = settings.calibration_aperture
    if not 0 <= idx < len(settings.aperture_factors):
        raise SettingsError(
            f"photometry.calibration_aperture = {idx} but aperture_factors has "
            f"{len(settings.aperture_factors)} entries: set it to 0..{len(settings.aperture_factors) - 1}"
        )
    return labels[idx]


def _check(cancel: Cancel) -> None:
    if cancel is not None and cancel():
        raise Cancelled()


def _report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _magnitudes(flux, fluxerr, exptime):
    t = 1.0 if exptime is None or not exptime > 0 else float(exptime)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = flux > 0
        mag = np.where(pos, -2.5 * np.log10(np.where(pos, flux, 1.0) / t), np.nan)
        magerr = np.where(pos, MAG_ERR_FACTOR * fluxerr / np.where(pos, flux, 1.0), np.nan)
    return mag, magerr


def _annulus_stats(data, mask, x, y, rin, rout, sigma, progress_cb=None, cancel=None):
    """Sigma-clipped median, std and pixel count of the annulus round each source.

    Annulus pixels are those whose centres lie between ``rin`` and ``rout`` of the
    source's nearest pixel centre (a <= 0.5 px shift of the annulus, irrelevant
    for a background level); masked, NaN and off-frame pixels are dropped.
    """
    # Why not a library call: sep_x.sum_circle(bkgann=...) and sum_circann give a
    # (clipped) mean only, and sep_x.stats_circann (median, unclipped) took 1.6 s for
    # 6,000 sources on a 4k frame. Gathering the annulus pixels into an
    # (n_sources, n_pixels) array with fancy indexing (0.14 s) and running astropy
    # sigma_clipped_stats(axis=1) on it (0.22 s) gives the clipped median in 0.36 s;
    # a hand-written sort + cumulative-sum clipper measured 0.30 s for the same
    # array, not worth owning.
    R = int(math.ceil(rout))
    dy, dx = np.mgrid[-R : R + 1, -R : R + 1]
    d = np.hypot(dx, dy)
    sel = (d >= rin) & (d <= rout)
    dy, dx = dy[sel], dx[sel]
    nominal = int(sel.sum())
    ny, nx = data.shape
    n = len(x)
    med = np.full(n, np.nan)
    std = np.full(n, np.nan)
    cnt = np.zeros(n, np.int64)
    ix_all = np.rint(np.nan_to_num(x, nan=-1e6)).astype(np.intp)
    iy_all = np.rint(np.nan_to_num(y, nan=-1e6)).astype(np.intp)
    for start in range(0, n, _CHUNK):
        _check(cancel)
        s = slice(start, min(start + _CHUNK, n))
        X = ix_all[s, None] + dx[None, :]
        Y = iy_all[s, None] + dy[None, :]
        inside = (X >= 0) & (X < nx) & (Y >= 0) & (Y < ny)
        np.clip(X, 0, nx - 1, out=X)
        np.clip(Y, 0, ny - 1, out=Y)
        v = data[Y, X].astype(np.float32, copy=False)
        bad = ~inside
        if mask is not None:
            bad |= mask[Y, X]
        v[bad] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, m, sd = sigma_clipped_stats(v, axis=1, sigma=sigma, maxiters=10)
        m = np.asarray(m, dtype=float)
        sd = np.asarray(sd, dtype=float)
        with np.errstate(invalid="ignore"):
            kept = np.abs(v - m[:, None]) <= sigma * sd[:, None]
        med[s], std[s], cnt[s] = m, sd, kept.sum(axis=1)
        if progress_cb is not None:
            progress_cb(s.stop)
    return med, std, cnt, nominal


def _mirror_repair(data, mask, x, y, rmax):
    """Cutout of ``data`` round (x, y) with masked pixels inside ``rmax`` replaced by
    their mirror through (x, y) where that point is unmasked; returns
    (cutout, remaining mask, x0, y0) or None when nothing could be repaired."""
    ny, nx = data.shape
    h = int(math.ceil(rmax)) + 2
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
    y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    cut = np.array(data[y0:y1, x0:x1], dtype=np.float32)
    m = np.array(mask[y0:y1, x0:x1], dtype=bool)
    yy, xx = np.nonzero(m)
    gx, gy = xx + x0, yy + y0
    near = (gx - x) ** 2 + (gy - y) ** 2 <= (rmax + 1) ** 2
    repaired = False
    still = []
    for cy, cx, px, py in zip(yy[near], xx[near], gx[near], gy[near]):
        mx, my = 2 * x - px, 2 * y - py
        jx, jy = int(math.floor(mx)), int(math.floor(my))
        if jx < 0 or jy < 0 or jx + 1 >= nx or jy + 1 >= ny or mask[jy : jy + 2, jx : jx + 2].any():
            still.append((cy, cx))
            continue
        fx, fy = mx - jx, my - jy
        q = data[jy : jy + 2, jx : jx + 2].astype(float)
        val = (q[0, 0] * (1 - fx) * (1 - fy) + q[0, 1] * fx * (1 - fy) + q[1, 0] * (1 - fx) * fy + q[1, 1] * fx * fy)
        if not np.isfinite(val):
            still.append((cy, cx))
            continue
        cut[cy, cx] = val
        m[cy, cx] = False
        repaired = True
    # Pixels whose mirror is masked too (the central pixel is its own mirror): fit
    # log(value) = a + b r^2 to the unmasked pixels within 1 px in radius and
    # evaluate it at the pixel's radius. The Gaussian-like core makes this good to
    # ~10 % of the pixel value; a flat neighbour mean loses ~25 % at the peak.
    if still:
        ry, rx = np.mgrid[y0:y1, x0:x1]
        rr = np.hypot(rx - x, ry - y)
        good = ~np.array(mask[y0:y1, x0:x1], dtype=bool)
        for cy, cx in still:
            rp = rr[cy, cx]
            sel = good & (np.abs(rr - rp) <= 1.0) & (cut > 0)
            if sel.sum() < 3:
                continue
            rs, vs = rr[sel], cut[sel].astype(float)
            A = np.c_[np.ones(len(rs)), rs**2]
            coef, *_ = np.linalg.lstsq(A, np.log(vs), rcond=None)
            val = math.exp(coef[0] + coef[1] * rp**2)
            # never beyond the range of what was seen round it: a bad fit must not invent flux
            val = min(val, 1.5 * vs.max())
            cut[cy, cx] = val
            m[cy, cx] = False
            repaired = True
    if not repaired:
        return None
    return cut, m, x0, y0


def _frame_area(shape, x, y, r):
    """In-frame area (px^2) of a circle cut by the frame edge."""
    ny, nx = shape
    h = int(math.ceil(r)) + 2
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
    y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return 0.0
    ones = np.ones((y1 - y0, x1 - x0), np.float32)
    s, _, _ = sep_x.sum_circle(ones, np.array([x - x0]), np.array([y - y0]), r, subpix=SUBPIX)
    return float(s[0])


def _clean_inputs(data, rms, mask):
    if data.ndim != 2:
        raise InputError(f"photometry needs a 2-D image, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if rms is not None:
        rms = np.ascontiguousarray(rms, dtype=np.float32)
        bad |= ~np.isfinite(rms)
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise InputError(f"mask shape {mask.shape} differs from image shape {data.shape}")
    if bad.any():
        # sep_x skips masked pixels but NaN would still poison the annulus gather.
        mask = bad if mask is None else (mask | bad)
        data = np.where(bad, np.float32(0), data)
        if rms is not None:
            rms = np.where(bad, np.float32(0), rms)
    return data, rms, mask


def aperture_photometry(
    data_sub: np.ndarray,
    rms: np.ndarray | float | None,
    mask: np.ndarray | None,
    sources: Table,
    fwhm_px: float,
    gain: float | None,
    exptime: float | None,
    settings: PhotometrySettings,
    saturated_mask: np.ndarray | None = None,
    progress: Progress = None,
    cancel: Cancel = None,
) -> Table:
    """Multi-aperture photometry with a sigma-clipped local annulus.

    Parameters
    ----------
    data_sub : 2-D float32 array, globally background-subtracted (ADU).
    rms : background RMS map (ADU) or a scalar.
    mask : bool array, True = bad pixel (excluded and flagged 1), or None.
    sources : table with ``x``, ``y`` (0-based px); ``flags`` (bit 4 = border) is honoured.
    fwhm_px : FWHM (px) that scales the apertures and the annulus.
    gain : e-/ADU for the Poisson term, None or <= 0 to leave it out.
    exptime : s; None means 1.
    settings : :class:`~rpp_core.settings.PhotometrySettings`.
    saturated_mask : bool array of saturated pixels (flag 2), or None.
    progress, cancel : ``progress(done, total)``; ``cancel()`` true raises ``Cancelled``.

    Returns
    -------
    Table
        A copy of ``sources`` with, per aperture label L: ``flux_L``, ``fluxerr_L`` (ADU),
        ``mag_L``, ``magerr_L`` (instrumental mag), ``snr_L``, ``flag_L``, ``bkg_L``
        (local annulus level, ADU/px). ``meta["apertures"]`` maps L to its radius (px).
        Rows whose calibration-aperture SNR is below ``settings.min_snr`` are dropped.

    Examples
    --------
    >>> tab = aperture_photometry(data_sub, bkg.rms, masks.combined, stars, 3.5, 1.5, 60.0,
    ...                           PhotometrySettings(), saturated_mask=masks.saturated)  # doctest: +SKIP
    """
    if not fwhm_px or not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise InputError(f"aperture photometry needs a positive FWHM, got {fwhm_px!r} px")
    data, rms_map, mask = _clean_inputs(data_sub, rms if isinstance(rms, np.ndarray) else None, mask)
    err = rms_map if rms_map is not None else (float(rms) if rms is not None else None)
    tab = Table(sources, copy=True)
    x = np.asarray(tab["x"], dtype=float)
    y = np.asarray(tab["y"], dtype=float)
    n = len(tab)
    radii = _radii(settings, fwhm_px)
    labels = list(radii)
    calib = _calib_label(settings)
    rin, rout = settings.annulus_inner * fwhm_px, settings.annulus_outer * fwhm_px
    if rout <= rin:
        raise SettingsError(
            f"photometry.annulus_outer ({settings.annulus_outer}) must exceed annulus_inner ({settings.annulus_inner})"
        )
    n_chunks = max(1, math.ceil(n / _CHUNK))
    total = n_chunks + len(labels)
    _check(cancel)

    ok = np.isfinite(x) & np.isfinite(y)
    src_flags = np.asarray(tab["flags"], dtype=np.int64) if "flags" in tab.colnames else np.zeros(n, np.int64)

    bkg, bkg_std, n_ann, nominal = _annulus_stats(
        data, mask, x, y, rin, rout, settings.annulus_sigma,
        progress_cb=lambda done: _report(progress, math.ceil(done / _CHUNK), total), cancel=cancel,
    )
    ann_bad = (n_ann < max(10, 0.25 * nominal)) | ~np.isfinite(bkg)
    bkg_use = np.where(np.isfinite(bkg), bkg, 0.0)
    std_use = np.where(np.isfinite(bkg_std), bkg_std, 0.0)
    # The local level is a median, whose variance is pi/2 that of a mean: with the
    # plain std^2/n the 3-FWHM aperture scatter over 40 noise realisations was 1.08x
    # the reported error, with the pi/2 factor it is ~1.0.
    ann_var_per_px2 = (math.pi / 2.0) * std_use**2 / np.maximum(n_ann, 1)

    # nearest-neighbour distance for the crowding flag
    if n > 1 and ok.sum() > 1:
        tree = cKDTree(np.c_[x[ok], y[ok]])
        dnn_ok, _ = tree.query(np.c_[x[ok], y[ok]], k=2)
        dnn = np.full(n, np.inf)
        dnn[ok] = dnn_ok[:, 1]
    else:
        dnn = np.full(n, np.inf)

    xs, ys = np.where(ok, x, -1e6), np.where(ok, y, -1e6)
    gain_ok = gain is not None and gain > 0
    rmax = max(radii.values())
    results = {}
    for k, lab in enumerate(labels):
        _check(cancel)
        r = radii[lab]
        s, serr, sflag = sep_x.sum_circle(data, xs, ys, r, err=err, mask=mask, subpix=SUBPIX)
        s = np.asarray(s, float)
        serr = np.asarray(serr, float)
        sflag = np.asarray(sflag, np.int64)
        results[lab] = [s, serr, sflag]
        _report(progress, n_chunks + k + 1, total)

    # Repair masked pixels by mirror symmetry for the (few) sources that touch one.
    if mask is not None:
        touched = np.nonzero(ok & ((results[labels[int(np.argmax([radii[lab] for lab in labels]))]][2] & sep_x.APER_HASMASKED) > 0))[0]
        for i in touched:
            rep = _mirror_repair(data, mask, x[i], y[i], rmax)
            if rep is None:
                continue
            cut, m, x0, y0 = rep
            ecut = err if not isinstance(err, np.ndarray) else np.ascontiguousarray(
                err[y0 : y0 + cut.shape[0], x0 : x0 + cut.shape[1]])
            for lab in labels:
                s1, e1, _ = sep_x.sum_circle(cut, np.array([x[i] - x0]), np.array([y[i] - y0]), radii[lab],
                                             err=ecut, mask=m, subpix=SUBPIX)
                results[lab][0][i] = s1[0]
                results[lab][1][i] = e1[0]

    sat_flags = {}
    if saturated_mask is not None:
        sat = np.ascontiguousarray(saturated_mask, dtype=bool)
        if sat.any():
            for lab in labels:
                _, _, f = sep_x.sum_circle(data, xs, ys, radii[lab], mask=sat, subpix=SUBPIX)
                sat_flags[lab] = (np.asarray(f) & sep_x.APER_HASMASKED) > 0

    tab.meta["apertures"] = {lab: radii[lab] for lab in labels}
    tab.meta["annulus_px"] = [float(rin), float(rout)]
    tab.meta["calibration_aperture"] = calib
    tab.meta["fwhm_px"] = float(fwhm_px)
    tab.meta["exptime_used"] = 1.0 if exptime is None or not exptime > 0 else float(exptime)
    for lab in labels:
        r = radii[lab]
        s, serr, sflag = results[lab]
        area = np.full(n, math.pi * r * r)
        trunc = (sflag & sep_x.APER_TRUNC) > 0
        for i in np.nonzero(trunc & ok)[0]:
            area[i] = _frame_area(data.shape, x[i], y[i], r)
        flux = s - bkg_use * area
        var = serr**2 + area**2 * ann_var_per_px2
        if gain_ok:
            var = var + np.clip(flux, 0, None) / gain
        fluxerr = np.sqrt(var)
        flux[~ok] = np.nan
        fluxerr[~ok] = np.nan
        mag, magerr = _magnitudes(flux, fluxerr, exptime)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / fluxerr
        flag = np.zeros(n, np.int32)
        flag[(sflag & (sep_x.APER_HASMASKED | sep_x.APER_ALLMASKED)) > 0] |= FLAG_MASKED
        if lab in sat_flags:
            flag[sat_flags[lab]] |= FLAG_SATURATED
        flag[trunc | ((src_flags & FLAG_EDGE) > 0) | ~ok] |= FLAG_EDGE
        flag[ann_bad] |= FLAG_ANNULUS
        flag[~(flux > 0)] |= FLAG_NONPOSITIVE
        flag[dnn < r] |= FLAG_CROWDED
        tab[f"flux_{lab}"] = flux
        tab[f"fluxerr_{lab}"] = fluxerr
        tab[f"mag_{lab}"] = mag
        tab[f"magerr_{lab}"] = magerr
        tab[f"snr_{lab}"] = snr
        tab[f"flag_{lab}"] = flag
        tab[f"bkg_{lab}"] = bkg
        tab[f"flux_{lab}"].unit = "adu"
        tab[f"fluxerr_{lab}"].unit = "adu"
        tab[f"mag_{lab}"].unit = "mag"
        tab[f"magerr_{lab}"].unit = "mag"
        tab[f"bkg_{lab}"].unit = "adu / pix"

    tab["flags"] = (src_flags | tab[f"flag_{calib}"]).astype(np.int32)
    if settings.min_snr > 0:
        keep = np.asarray(tab[f"snr_{calib}"] >= settings.min_snr)
        tab = tab[keep]
    _report(progress, total, total)
    return tab


def select_psf_stars(tab: Table, fwhm_px: float, shape, settings: PhotometrySettings,
                     n_max: int | None = None, min_snr: float = 50.0, relaxed: bool = False) -> np.ndarray:
    """Rows of an aperture-photometry table suitable for the ePSF and the aperture correction.

    A star qualifies when every aperture flag is 0 (no masked, saturated, edge,
    crowded pixel, good annulus), its calibration-aperture SNR exceeds ``min_snr``,
    its ePSF stamp lies inside the frame, no other source lies within 3 FWHM and no
    source brighter than 10 % of it lies within the stamp half-diagonal. Returns row
    indices, highest SNR first, at most ``n_max``.

    ``relaxed`` is the last resort for crowded or nebulous frames (a DSS plate of
    the Horsehead left 1 star under the strict rules): only the calibration
    aperture must be unflagged except for "crowded" and "annulus", neighbours
    must be 2 FWHM away and fainter than 30 %.
    """
    labels = aperture_labels(settings)
    calib = _calib_label(settings)
    x = np.asarray(tab["x"], float)
    y = np.asarray(tab["y"], float)
    flux = np.asarray(tab[f"flux_{calib}"], float)
    snr = np.asarray(tab[f"snr_{calib}"], float)
    half = _stamp_half(fwhm_px, settings)
    ny, nx = shape
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (snr > min_snr)
    if relaxed:
        good &= (np.asarray(tab[f"flag_{calib}"]) & ~(FLAG_CROWDED | FLAG_ANNULUS)) == 0
    else:
        for lab in labels:
            good &= np.asarray(tab[f"flag_{lab}"]) == 0
    good &= (x >= half) & (x <= nx - 1 - half) & (y >= half) & (y <= ny - 1 - half)
    idx = np.nonzero(good)[0]
    if len(idx) == 0:
        return idx
    fin = np.isfinite(x) & np.isfinite(y)
    all_i = np.nonzero(fin)[0]
    tree = cKDTree(np.c_[x[all_i], y[all_i]])
    fl_all = np.where(np.isfinite(flux), flux, np.inf)  # unknown flux: assume bright
    r_far = half * math.sqrt(2.0)
    keep = []
    for i, nb in zip(idx, tree.query_ball_point(np.c_[x[idx], y[idx]], r_far)):
        nb = all_i[nb]
        nb = nb[nb != i]
        if len(nb) == 0:
            keep.append(i)
            continue
        d = np.hypot(x[nb] - x[i], y[nb] - y[i])
        near, frac = (2.0, 0.3) if relaxed else (3.0, 0.1)
        if np.any(d < near * fwhm_px) or np.any(fl_all[nb] > frac * flux[i]):
            continue
        keep.append(i)
    keep = np.array(keep, dtype=np.intp)
    keep = keep[np.argsort(-snr[keep], kind="stable")]
    return keep if n_max is None else keep[:n_max]


def _stamp_half(fwhm_px: float, settings: PhotometrySettings) -> int:
    return int(min(max(math.ceil(settings.psf_radius * fwhm_px), 5), 75))


def build_epsf(data_sub, mask, x, y, fwhm_px, settings: PhotometrySettings, ids=None, pedestal: float = 0.0):
    """Build an ePSF with photutils EPSFBuilder from stars at (x, y) (0-based px).

    ``pedestal`` (ADU/px) is subtracted from every star stamp first. The ePSF is
    normalised to the stamp sum, so a residual background of p ADU/px over the N-pixel
    stamp scales every PSF flux by about 1 + N p / flux_star (see the module docstring
    for why :func:`psf_photometry` passes 0).

    Returns ``(epsf, epsf_fit, n_used)``: the oversampled ePSF (sum = oversampling**2), the
    same decimated to image-pixel steps through its centre with unit sum (what sep_x
    fits, see the module docstring), and the number of stars the builder kept.
    """
    from astropy.nddata.utils import NoOverlapError, PartialOverlapError, overlap_slices
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    size = 2 * _stamp_half(fwhm_px, settings) + 1
    o = int(settings.psf_oversampling)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    star_list = []
    for xc, yc, sid in zip(np.asarray(x, float), np.asarray(y, float), ids):
        try:
            big, _ = overlap_slices(data_sub.shape, (size, size), (yc, xc), mode="strict")
        except (PartialOverlapError, NoOverlapError):
            continue
        cut = np.asarray(data_sub[big], dtype=float) - pedestal
        weights = None if mask is None else (~mask[big]).astype(float)
        origin = (big[1].start, big[0].start)
        star_list.append(EPSFStar(cut, weights=weights, cutout_center=(xc - origin[0], yc - origin[1]),
                                  origin=origin, id_label=sid))
    if len(star_list) < 3:
        raise InputError(f"only {len(star_list)} PSF stars have their whole {size}-px stamp inside the frame")
    stars = EPSFStars(star_list)
    with warnings.catch_warnings():
        # photutils warns about each masked/odd star; the selection already excluded
        # flagged stars and the builder clips outliers.
        warnings.simplefilter("ignore")
        # A tiny center_accuracy makes the iteration count fixed, so runs are reproducible.
        builder = EPSFBuilder(oversampling=o, maxiters=int(settings.psf_iterations),
                              progress_bar=False, center_accuracy=1e-9)
        res = builder(stars)
    epsf_model = res.epsf if hasattr(res, "epsf") else res[0]
    epsf = np.asarray(epsf_model.data, dtype=np.float64)
    cy, cx = (epsf.shape[0] - 1) // 2, (epsf.shape[1] - 1) // 2
    dec = epsf[cy % o :: o, cx % o :: o]
    # keep the stamp odd and centred on the ePSF centre
    ny2 = min(cy // o, (epsf.shape[0] - 1 - cy) // o)
    nx2 = min(cx // o, (epsf.shape[1] - 1 - cx) // o)
    c0y, c0x = cy // o, cx // o
    dec = dec[c0y - ny2 : c0y + ny2 + 1, c0x - nx2 : c0x + nx2 + 1]
    dec = dec / dec.sum()
    n_used = int(getattr(res, "n_good_stars", getattr(stars, "n_good_stars", len(stars))))
    return epsf, np.ascontiguousarray(dec, dtype=np.float32), n_used


def _robust_offset(delta):
    delta = np.asarray(delta, float)
    delta = delta[np.isfinite(delta)]
    if len(delta) == 0:
        return float("nan"), float("nan"), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, med, std = sigma_clipped_stats(delta, sigma=3.0, maxiters=10)
    kept = int(np.sum(np.abs(delta - med) <= 3.0 * std)) if std > 0 else len(delta)
    # error of a median: sqrt(pi/2) x error of the mean
    err = 1.2533 * std / math.sqrt(max(kept, 1)) if kept > 1 else float("nan")
    return float(med), float(err), kept


def psf_photometry(
    data_sub: np.ndarray,
    rms: np.ndarray | float | None,
    mask: np.ndarray | None,
    sources: Table,
    fwhm_px: float,
    gain: float | None,
    exptime: float | None,
    settings: PhotometrySettings,
    progress: Progress = None,
    cancel: Cancel = None,
) -> tuple[Table, PsfInfo]:
    """Build an ePSF and fit it to the sources with sep_x; aperture-correct the magnitudes.

    Parameters
    ----------
    data_sub, rms, mask, fwhm_px, gain, exptime, settings : as :func:`aperture_photometry`.
    sources : output of :func:`aperture_photometry` (if its columns are missing it is run
        first, without a saturation mask).
    progress, cancel : ``progress(done, total)``: 1 after the ePSF build, then one step per
        strip of up to 2,000 fitted sources; ``cancel()`` true raises ``Cancelled``.

    Returns
    -------
    (Table, PsfInfo)
        The table gains ``psf_flux``, ``psf_fluxerr`` (ADU, flux inside the ePSF stamp),
        ``psf_mag`` (instrumental, + ``apcorr``: on the calibration-aperture scale),
        ``psf_magerr``, ``psf_flag``, ``psf_chi2`` (reduced chi^2), ``psf_x``, ``psf_y``
        (fitted 0-based position). Sources beyond the ``psf_max_fit`` brightest get NaN
        and flag 64. ``meta`` gains ``psf_apcorr``, ``psf_apcorr_err``, ``psf_apcorr_n``,
        ``psf_apcorr_aperture``, ``aperture_corrections``.
    """
    _check(cancel)
    calib = _calib_label(settings)
    labels = aperture_labels(settings)
    if f"flux_{calib}" not in sources.colnames:
        sources = aperture_photometry(data_sub, rms, mask, sources, fwhm_px, gain, exptime, settings, cancel=cancel)
    data, rms_map, mask = _clean_inputs(data_sub, rms if isinstance(rms, np.ndarray) else None, mask)
    err = rms_map if rms_map is not None else (float(rms) if rms is not None else None)
    tab = Table(sources, copy=True)
    n = len(tab)
    info = PsfInfo(oversampling=int(settings.psf_oversampling), fwhm_px=float(fwhm_px), apcorr_aperture=calib)
    x = np.asarray(tab["x"], float)
    y = np.asarray(tab["y"], float)
    cal_flag = np.asarray(tab[f"flag_{calib}"], np.int64)
    out_flux = np.full(n, np.nan)
    out_err = np.full(n, np.nan)
    out_x = np.full(n, np.nan)
    out_y = np.full(n, np.nan)
    out_chi2 = np.full(n, np.nan)
    out_flag = (cal_flag & (FLAG_MASKED | FLAG_SATURATED | FLAG_EDGE)).astype(np.int32) | FLAG_PSF_FAILED

    def finish(status: str):
        info.status = status
        mag, magerr = _magnitudes(out_flux, out_err, exptime)
        if np.isfinite(info.apcorr):
            mag = mag + info.apcorr
        tab["psf_flux"] = out_flux
        tab["psf_fluxerr"] = out_err
        tab["psf_mag"] = mag
        tab["psf_magerr"] = magerr
        tab["psf_flag"] = out_flag.astype(np.int32)
        tab["psf_chi2"] = out_chi2
        tab["psf_x"] = out_x
        tab["psf_y"] = out_y
        for c in ("psf_flux", "psf_fluxerr"):
            tab[c].unit = "adu"
        for c in ("psf_mag", "psf_magerr"):
            tab[c].unit = "mag"
        tab.meta.update(
            psf_status=status, psf_apcorr=info.apcorr, psf_apcorr_err=info.apcorr_err, psf_apcorr_n=info.apcorr_n,
            # lists of plain floats, so the meta survives ECSV/FITS writers
            psf_apcorr_aperture=calib,
            aperture_corrections={k: [float(v[0]), float(v[1]), int(v[2])] for k, v in info.aperture_corrections.items()},
            aperture_corrections_to=info.largest_aperture,
            psf_normalisation=info.normalisation,
        )
        return tab, info

    if settings.psf_max_fit <= 0:
        info.n_skipped = n
        return finish("photometry.psf_max_fit = 0: no PSF fits")

    # ---- ePSF
    t0 = time.perf_counter()
    stars = select_psf_stars(tab, fwhm_px, data.shape, settings)
    if len(stars) < 5:
        stars = select_psf_stars(tab, fwhm_px, data.shape, settings, min_snr=20.0)
    if len(stars) < 5:
        stars = select_psf_stars(tab, fwhm_px, data.shape, settings, min_snr=10.0, relaxed=True)
        info.relaxed_selection = True
    if mask is not None and len(stars):
        # A masked pixel anywhere in the stamp makes photutils fill it by 2-D cubic
        # interpolation, 0.5 s per star (measured): prefer stars with clean stamps.
        h = _stamp_half(fwhm_px, settings)
        clean = np.array([not mask[int(round(y[i])) - h : int(round(y[i])) + h + 1,
                                   int(round(x[i])) - h : int(round(x[i])) + h + 1].any() for i in stars])
        if clean.sum() >= 5:
            stars = stars[clean]
    stars = stars[: int(settings.psf_stars)]
    if len(stars) < 5:
        info.n_skipped = n
        return finish(f"only {len(stars)} isolated unflagged stars with SNR > 10, even by the relaxed rules: "
                      "no ePSF built (lower detection.threshold_sigma or photometry.psf_radius)")
    ids = np.asarray(tab["id"]) if "id" in tab.colnames else np.arange(n)
    _check(cancel)
    try:
        info.epsf, epsf_fit, info.n_stars = build_epsf(data, mask, x[stars], y[stars], fwhm_px, settings,
                                                       ids=ids[stars])
    except (ValueError, RuntimeError, InputError) as exc:
        info.n_skipped = n
        return finish(f"ePSF build failed on {len(stars)} stars: {exc}")
    info.epsf_fit = epsf_fit
    info.stamp_px = epsf_fit.shape[0]
    info.star_ids = ids[stars].tolist()
    info.build_s = time.perf_counter() - t0
    psf = sep_x.PSF(epsf_fit, sampling=1.0, fwhm=float(fwhm_px))

    # ---- fits of the psf_max_fit brightest, in horizontal strips (progress/cancel)
    t0 = time.perf_counter()
    cal_flux = np.asarray(tab[f"flux_{calib}"], float)
    ok = np.isfinite(x) & np.isfinite(y)
    order = np.nonzero(ok)[0]
    order = order[np.argsort(-np.where(np.isfinite(cal_flux[order]), cal_flux[order], -np.inf), kind="stable")]
    fit_idx = order[: int(settings.psf_max_fit)]
    info.n_skipped = n - len(fit_idx)
    r_fit = float(settings.psf_fit_radius * fwhm_px)
    # No gain for sep_x: it takes the Poisson variance from the data, which weights
    # down upward noise and biased faint-star fluxes by -0.5 % (-0.23 sigma; 4k frame,
    # 2,000-8,000 ADU stars; 0.0 % without). The Poisson term is added below instead.
    kw = dict(err=err, grouped=True, fit_radius=r_fit)
    if mask is not None:
        kw["mask"] = mask
    # Grouped fitting models overlapping neighbours together, so a strip is fitted
    # with a halo of the sources just outside it and only its own results are kept.
    by_y = fit_idx[np.argsort(y[fit_idx], kind="stable")]
    yy_sorted = y[by_y]
    halo = 2.0 * r_fit + info.stamp_px
    # With background-only weights the Poisson variance of the fitted flux
    # sum(P d) / sum(P^2) over the fit disc is flux * S3 / (gain S2^2), S_k = sum P^k.
    pc = (info.stamp_px - 1) / 2.0
    pyy, pxx = np.mgrid[0 : info.stamp_px, 0 : info.stamp_px]
    pd = epsf_fit[np.hypot(pxx - pc, pyy - pc) <= r_fit].astype(float)
    s2, s3 = (pd**2).sum(), (pd**3).sum()
    gain_ok = gain is not None and gain > 0
    n_strips = max(1, math.ceil(len(by_y) / _CHUNK))
    total = n_strips + 1
    _report(progress, 1, total)
    for k in range(n_strips):
        _check(cancel)
        core = by_y[k * _CHUNK : (k + 1) * _CHUNK]
        if len(core) == 0:
            continue
        lo, hi = y[core].min() - halo, y[core].max() + halo
        a_ = np.searchsorted(yy_sorted, lo, side="left")
        b_ = np.searchsorted(yy_sorted, hi, side="right")
        ctx = by_y[a_:b_]
        ctx = np.concatenate([core, np.setdiff1d(ctx, core, assume_unique=True)])
        fl, fe, xf, yf, fflag, chi2, _ = sep_x.psf_fit(data, x[ctx], y[ctx], psf, **kw)
        m = len(core)
        fl, fe, xf, yf, chi2 = (np.asarray(v, float)[:m] for v in (fl, fe, xf, yf, chi2))
        fflag = np.asarray(fflag, np.int64)[:m]
        fit_ok = np.isfinite(fl) & (fe > 0)  # sep_x returns 0 +- 0 for a degenerate grouped fit
        if gain_ok:
            fe = np.sqrt(fe**2 + np.clip(fl, 0, None) * s3 / (gain * s2**2))
        out_flux[core], out_err[core], out_x[core], out_y[core], out_chi2[core] = fl, fe, xf, yf, chi2
        # sep_x sets APER_HASMASKED / APER_TRUNC for masked or off-frame pixels in the
        # footprint: the fit is made without them, so they are quality flags, not failures.
        failed = ((fflag & ~(sep_x.APER_HASMASKED | sep_x.APER_TRUNC)) != 0) | ~fit_ok
        # a fit that wandered more than one FWHM has locked onto a neighbour
        failed |= np.hypot(xf - x[core], yf - y[core]) > fwhm_px
        f = out_flag[core] & ~FLAG_PSF_FAILED
        f[(fflag & sep_x.APER_HASMASKED) > 0] |= FLAG_MASKED
        f[(fflag & sep_x.APER_TRUNC) > 0] |= FLAG_EDGE
        f[failed] |= FLAG_PSF_FAILED
        f[~(fl > 0)] |= FLAG_NONPOSITIVE
        out_flag[core] = f
        out_flux[core[failed]] = np.nan
        out_err[core[failed]] = np.nan
        _report(progress, k + 2, total)
    info.n_fit = int(len(fit_idx))
    info.n_failed = int(np.sum((out_flag[fit_idx] & FLAG_PSF_FAILED) > 0))
    info.fit_s = time.perf_counter() - t0

    # ---- aperture correction: same star choice as the ePSF, but as many as qualify
    ap_stars = select_psf_stars(tab, fwhm_px, data.shape, settings, n_max=None, min_snr=50.0)
    ap_stars = ap_stars[(out_flag[ap_stars] == 0) & (out_flux[ap_stars] > 0)]
    for kw in (dict(min_snr=20.0), dict(min_snr=10.0, relaxed=True)):
        if len(ap_stars) >= 5:
            break
        ap_stars = select_psf_stars(tab, fwhm_px, data.shape, settings, n_max=None, **kw)
        ap_stars = ap_stars[(out_flag[ap_stars] == 0) & (out_flux[ap_stars] > 0)]
    psf_raw, _ = _magnitudes(out_flux, out_err, exptime)
    if len(ap_stars):
        corr, corr_err, corr_n = _robust_offset(np.asarray(tab[f"mag_{calib}"])[ap_stars] - psf_raw[ap_stars])
        info.apcorr, info.apcorr_err, info.apcorr_n = corr, corr_err, corr_n
        big = labels[int(np.argmax([_radii(settings, fwhm_px)[lab] for lab in labels]))]
        m_big = np.asarray(tab[f"mag_{big}"])[ap_stars]
        for lab in labels:
            info.aperture_corrections[lab] = _robust_offset(m_big - np.asarray(tab[f"mag_{lab}"])[ap_stars])
        info.aperture_corrections["psf"] = _robust_offset(m_big - psf_raw[ap_stars])
        info.largest_aperture = big
        status = ("ok, but the ePSF stars were chosen by the relaxed rules (crowded or nebulous frame): "
                  "look at psf.fits" if info.relaxed_selection else "ok")
        if not np.isfinite(corr):
            info.apcorr = 0.0
            status = "ok, but the aperture correction could not be measured: apcorr = 0"
    else:
        info.apcorr, info.apcorr_err, info.apcorr_n = 0.0, float("nan"), 0
        status = "ok, but no isolated unflagged star with SNR > 20 for the aperture correction: apcorr = 0"
    return finish(status)
