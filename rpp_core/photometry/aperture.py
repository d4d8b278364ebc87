"""Multi-aperture photometry with a sigma-clipped local annulus (the formulas: docs/photometry.md).

Pixel coordinates ``x``, ``y`` are 0-based; ``data_sub`` is the frame with the
global background subtracted (ADU, float32), ``rms`` the background RMS map,
``mask`` True where a pixel must not be used. Fluxes in ADU, magnitudes
instrumental: ``mag = -2.5 log10(flux / exptime)``, ``magerr = 1.0857 fluxerr / flux``.
"""

from __future__ import annotations

import math

import numpy as np
import sep_x
from astropy.table import Table
from scipy.spatial import cKDTree

from ..errors import InputError, SettingsError
from ..flags import FLAG_ANNULUS, FLAG_CROWDED, FLAG_EDGE, FLAG_MASKED, FLAG_NONPOSITIVE, FLAG_SATURATED
from ..progress import CancelFn, ProgressFn, check_cancel, report
from ..products import ApertureSet
from ..settings import PhotometrySettings

MAG_ERR_FACTOR = 2.5 / math.log(10.0)  # 1.0857
SUBPIX = 5
CHUNK = 2000  # sources per annulus / PSF-fit chunk: progress granularity and memory bound


def aperture_labels(settings: PhotometrySettings) -> list[str]:
    """Column labels of the apertures, in order: ``ap1p5``, ``ap2``, ... then ``fix``."""
    labels = [f"ap{float(f):g}".replace(".", "p") for f in settings.aperture_factors]
    if settings.fixed_aperture_px > 0:
        labels.append("fix")
    return labels


def aperture_fwhm(settings: PhotometrySettings, fwhm_px: float) -> float:
    """The FWHM (px) that sizes apertures, annulus and PSF stamps: the stellar FWHM, but never
    below ``min_aperture_px / min(aperture_factors)``.

    Undersampled stars (FWHM ~1 px) would otherwise get apertures of 1-2 px, where the
    centroid error and the pixel grid change the enclosed light from star to star.
    """
    floor = settings.min_aperture_px / min(float(f) for f in settings.aperture_factors) if settings.aperture_factors else 0.0
    return max(float(fwhm_px), floor)


def aperture_set(settings: PhotometrySettings, fwhm_px: float) -> ApertureSet:
    """The apertures of a run and the one that calibrates: decided here and nowhere else.

    Radii are ``aperture_factors`` x :func:`aperture_fwhm` (the stellar FWHM, or the
    floor for undersampled stars) plus ``fixed_aperture_px``; the calibration aperture
    is the fixed one when it is set (an observer fixes a radius to calibrate on it),
    else ``aperture_factors[calibration_aperture]``. ``ApertureSet.fwhm_px`` is the
    FWHM the radii scale with.
    """
    fwhm_px = aperture_fwhm(settings, fwhm_px)
    labels = aperture_labels(settings)
    radii = [float(f) * fwhm_px for f in settings.aperture_factors]
    if settings.fixed_aperture_px > 0:
        radii.append(float(settings.fixed_aperture_px))
        calibration = "fix"
    else:
        idx = settings.calibration_aperture
        if not 0 <= idx < len(settings.aperture_factors):
            raise SettingsError(
                f"photometry.calibration_aperture = {idx} but aperture_factors has "
                f"{len(settings.aperture_factors)} entries: set it to 0..{len(settings.aperture_factors) - 1}")
        calibration = labels[idx]
    annulus = (settings.annulus_inner * fwhm_px, settings.annulus_outer * fwhm_px)
    if annulus[1] <= annulus[0]:
        raise SettingsError(
            f"photometry.annulus_outer ({settings.annulus_outer}) must exceed annulus_inner ({settings.annulus_inner})")
    return ApertureSet(tuple(labels), tuple(radii), calibration, annulus, float(fwhm_px))


def magnitudes(flux, fluxerr, exptime):
    t = 1.0 if exptime is None or not exptime > 0 else float(exptime)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = flux > 0
        mag = np.where(pos, -2.5 * np.log10(np.where(pos, flux, 1.0) / t), np.nan)
        magerr = np.where(pos, MAG_ERR_FACTOR * fluxerr / np.where(pos, flux, 1.0), np.nan)
    return mag, magerr


def clipped_rows(v: np.ndarray, sigma: float, maxiters: int = 10):
    """Per row of ``v`` (n, m; NaN = no pixel): sigma-clipped median, standard deviation (ddof 0)
    and number of values kept, as astropy's ``sigma_clipped_stats(v, axis=1, sigma=sigma)``.

    Why not astropy: on rows longer than 600 values (the 4-6 FWHM annulus holds 770 pixels at
    FWHM 3.5) numpy's ``nanmedian`` behind it loops over the rows in Python: 0.6 s for 6,500
    sources on a 4k frame, against 0.04 s here. The clipped set of a sorted row is a
    contiguous range, so one sort (NaN last) and two cumulative sums give every iteration's
    median, mean and std by indexing, and binary searches its new bounds; values agree with
    astropy's to 2e-5 ADU.
    """
    v = np.asarray(v)
    dtype = np.float64 if v.dtype == np.float64 else np.float32  # float64 rows are clipped in float64
    a = np.sort(np.where(np.isfinite(v), v, np.nan).astype(dtype, copy=False), axis=1)  # +-inf: no pixel either
    return _clipped_sorted(a, sigma, maxiters, _clipped_work(*a.shape, dtype))


def _leading(a: np.ndarray, passes, rows: np.ndarray | None = None) -> np.ndarray:
    """Per row of ``a`` (n, m) (or per row listed in ``rows``): how many leading values pass
    ``passes`` (a vectorised test of one value per row, true on a prefix of each row: a
    threshold test on rows sorted NaN last).

    Equal to counting the passing values over the whole row, found by a binary search in
    ~log2(m) gathers of one value per row instead of a pass over all n*m: those passes, two
    per clipping iteration and one for the accepted count, were 0.1 s on a 4k frame.
    """
    n, m = a.shape
    flat = a.reshape(-1)
    last = (np.arange(n) if rows is None else rows) * m - 1  # flat index of the value before each row's first
    count = np.zeros(len(last), np.intp)
    step = 1 << (max(m, 1).bit_length() - 1)
    with np.errstate(invalid="ignore"):  # NaN fails every test
        while step:
            cand = count + step
            ok = (cand <= m) & passes(flat[last + np.minimum(cand, m)])
            count = np.where(ok, cand, count)
            step >>= 1
    return count


def _clipped_work(n: int, m: int, dtype=np.float32):
    """Work arrays of :func:`_clipped_sorted` for up to n rows of m values (of ``dtype``, the rows'), reused
    from chunk to chunk: fresh ones cost a page fault per 4 kB (a quarter of the annulus time on a 4k frame)."""
    return np.empty((n, m), dtype), np.empty((m + 1, n)), np.empty((m + 1, n))


def _clipped_sorted(a: np.ndarray, sigma: float, maxiters: int = 10, work=None):
    """:func:`clipped_rows` of rows already sorted ascending (NaN last, as ``np.sort`` leaves them; no
    infinities); ``work``: :func:`_clipped_work` arrays of the rows' dtype with at least as many rows."""
    n, m = a.shape
    d, c1, c2 = work or _clipped_work(n, m)
    d, c1, c2 = d[:n], c1[:, :n], c2[:, :n]
    hi = np.count_nonzero(~np.isnan(a), axis=1)
    lo = np.zeros(n, np.intp)
    ref = a[np.arange(n), np.maximum(hi - 1, 0) // 2].astype(np.float64)  # a level within the row: the float64 sums stay exact
    ref[hi == 0] = 0.0
    np.subtract(a, ref[:, None].astype(d.dtype), out=d)
    # Running sums of d and d^2 in float64, one column (position in the sorted row) per row
    # of c1, c2: c1[k, i] is the sum of row i's first k values, added in order as np.cumsum
    # along the row would, but each step adds a whole column (vectorised across the rows):
    # 40 % less time than two cumsums along the rows. Only prefixes up to hi (the finite
    # values, sorted first) are ever read, so the NaN tail is not summed.
    c1[0] = 0.0
    c2[0] = 0.0
    c1[1:] = d.T
    np.multiply(c1[1:], c1[1:], out=c2[1:])  # exact: a float32 squared fits a float64
    for k in range(1, int(hi.max(initial=0)) + 1):
        np.add(c1[k - 1], c1[k], out=c1[k])
        np.add(c2[k - 1], c2[k], out=c2[k])
    med = np.empty(n)
    std = np.empty(n)
    # A row whose clipped range stops changing keeps the same level and spread, so each
    # iteration works only on the rows still changing (most settle within 3-4).
    act = np.arange(n)
    for it in range(maxiters + 1):
        lo_a, hi_a = lo[act], hi[act]
        k = np.maximum(hi_a - lo_a, 1)
        med_a = 0.5 * (d[act, np.minimum(lo_a + (k - 1) // 2, m - 1)].astype(np.float64) + d[act, np.minimum(lo_a + k // 2, m - 1)])
        mean = (c1[hi_a, act] - c1[lo_a, act]) / k
        std_a = np.sqrt(np.maximum((c2[hi_a, act] - c2[lo_a, act]) / k - mean * mean, 0.0))
        med[act], std[act] = med_a, std_a
        if it == maxiters:
            break
        below, upto = (med_a - sigma * std_a).astype(np.float32), (med_a + sigma * std_a).astype(np.float32)
        new_lo = np.maximum(lo_a, _leading(d, lambda v: v < below, act))
        new_hi = np.maximum(np.minimum(hi_a, _leading(d, lambda v: v <= upto, act)), new_lo)
        moved = (new_lo != lo_a) | (new_hi != hi_a)
        lo[act], hi[act] = new_lo, new_hi
        act = act[moved]
        if not act.size:
            break
    empty = hi <= lo
    return np.where(empty, np.nan, med + ref), np.where(empty, np.nan, std), hi - lo


def _accepted(a: np.ndarray, level: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Per sorted row of ``a`` (NaN last): how many values v have ``|v - level| <= half_width``,
    computed in float64 (NaN level or width: none). ``v - level`` grows with v, so the accepted
    values are a run between two binary-searched bounds."""
    upto = _leading(a, lambda v: v.astype(np.float64) - level <= half_width)
    below = _leading(a, lambda v: v.astype(np.float64) - level < -half_width)
    return np.maximum(upto - below, 0)


def _annulus_stats(data, mask, x, y, rin, rout, sigma, progress_cb=None, cancel=None):
    """Sigma-clipped median, std and pixel count of the annulus round each source.

    Annulus pixels are those whose centres lie between ``rin`` and ``rout`` of the
    source's nearest pixel centre (a <= 0.5 px shift of the annulus, irrelevant
    for a background level); masked, NaN and off-frame pixels are dropped.
    """
    # Why not a library call: sep_x.sum_circle(bkgann=...) and sum_circann give a
    # (clipped) mean only, and sep_x.stats_circann (median, unclipped) took 1.6 s for
    # 6,000 sources on a 4k frame. Gathering the annulus pixels into an
    # (n_sources, n_pixels) array and clipping each sorted row
    # (:func:`_clipped_sorted`) gives the clipped median.
    R = int(math.ceil(rout))
    win = 2 * R + 1
    dy, dx = np.mgrid[-R : R + 1, -R : R + 1]
    d = np.hypot(dx, dy)
    sel = (d >= rin) & (d <= rout)
    in_box = np.flatnonzero(sel)  # the annulus pixels within a source's (win, win) box
    dy, dx = dy[sel], dx[sel]
    nominal = int(sel.sum())
    ny, nx = data.shape
    n = len(x)
    med = np.full(n, np.nan)
    std = np.full(n, np.nan)
    cnt = np.zeros(n, np.int64)
    ix_all = np.rint(np.nan_to_num(x, nan=-1e6)).astype(np.intp)
    iy_all = np.rint(np.nan_to_num(y, nan=-1e6)).astype(np.intp)
    # Sources whose whole box lies on the frame copy it as win rows of win contiguous pixels
    # (a window view indexed at the box corners), then keep the annulus: a third of the
    # cost of gathering each annulus pixel by its own index, and no bounds checks.
    inner_all = (ix_all >= R) & (ix_all < nx - R) & (iy_all >= R) & (iy_all < ny - R)
    if inner_all.any():
        boxes = np.lib.stride_tricks.sliding_window_view(data, (win, win))
        mask_boxes = None if mask is None else np.lib.stride_tricks.sliding_window_view(mask, (win, win))
    rows_max = min(CHUNK, n)
    v_buf = np.empty((rows_max, nominal), np.float32)
    bad_buf = np.empty((rows_max, nominal), bool)
    work = _clipped_work(rows_max, nominal)
    for start in range(0, n, CHUNK):
        check_cancel(cancel)
        s = slice(start, min(start + CHUNK, n))
        ix, iy, inner = ix_all[s], iy_all[s], inner_all[s]
        v = v_buf[: len(ix)]
        bad = bad_buf[: len(ix)] if mask is not None or not inner.all() else None
        rows = np.flatnonzero(inner)
        for b in range(0, rows.size, 256):  # small temporaries, reused from the heap
            r = rows[b : b + 256]
            corner = (iy[r] - R, ix[r] - R)
            v[r] = boxes[corner].reshape(r.size, win * win)[:, in_box]
            if bad is not None:
                bad[r] = False if mask is None else mask_boxes[corner].reshape(r.size, win * win)[:, in_box]
        rows = np.flatnonzero(~inner)
        if rows.size:  # off-frame pixels: read a clipped position, then dropped
            X = ix[rows, None] + dx[None, :]
            Y = iy[rows, None] + dy[None, :]
            off = ~((X >= 0) & (X < nx) & (Y >= 0) & (Y < ny))
            np.clip(X, 0, nx - 1, out=X)
            np.clip(Y, 0, ny - 1, out=Y)
            v[rows] = data[Y, X]
            bad[rows] = off if mask is None else (off | mask[Y, X])
        if bad is not None:
            np.copyto(v, np.float32(np.nan), where=bad)
        v.sort(axis=1)  # the pixels' order within a row does not matter from here on
        m, sd, _ = _clipped_sorted(v, sigma, work=work)
        cnt[s] = _accepted(v, m, sigma * sd)  # the pixels the final level and spread accept (NaN: none)
        med[s], std[s] = m, sd
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
    cy, cx = yy[near], xx[near]
    # each masked pixel's mirror point, bilinearly interpolated where its 4 neighbours are unmasked
    # (all pixels at once: a loop over them was half of the stage's repair time on a 4k frame)
    mx, my = 2 * x - gx[near], 2 * y - gy[near]
    jx, jy = np.floor(mx).astype(np.intp), np.floor(my).astype(np.intp)
    free = (jx >= 0) & (jy >= 0) & (jx + 1 < nx) & (jy + 1 < ny)
    qx, qy = np.where(free, jx, 0), np.where(free, jy, 0)
    qx1, qy1 = np.minimum(qx + 1, nx - 1), np.minimum(qy + 1, ny - 1)
    free &= ~(mask[qy, qx] | mask[qy, qx1] | mask[qy1, qx] | mask[qy1, qx1])
    fx, fy = mx - jx, my - jy
    q00, q01 = data[qy, qx].astype(float), data[qy, qx1].astype(float)
    q10, q11 = data[qy1, qx].astype(float), data[qy1, qx1].astype(float)
    with np.errstate(invalid="ignore", over="ignore"):
        val = q00 * (1 - fx) * (1 - fy) + q01 * fx * (1 - fy) + q10 * (1 - fx) * fy + q11 * fx * fy
    fixed = free & np.isfinite(val)
    cut[cy[fixed], cx[fixed]] = val[fixed]
    m[cy[fixed], cx[fixed]] = False
    repaired = bool(fixed.any())
    # Pixels whose mirror is masked too (the central pixel is its own mirror): fit
    # log(value) = a + b r^2 to the unmasked pixels within 1 px in radius and
    # evaluate it at the pixel's radius. The Gaussian-like core makes this good to
    # ~10 % of the pixel value; a flat neighbour mean loses ~25 % at the peak.
    still = ~fixed
    if still.any():
        sy, sx = cy[still], cx[still]
        rr = np.hypot((np.arange(x0, x1) - x)[None, :], (np.arange(y0, y1) - y)[:, None])
        # the fit's candidates: unmasked positive pixels, which no repair above changes
        cand = np.flatnonzero(~np.asarray(mask[y0:y1, x0:x1], dtype=bool) & (cut > 0))
        rc, vc = rr.reshape(-1)[cand], cut.reshape(-1)[cand].astype(float)
        rps = rr[sy, sx]
        fits = {}  # pixels with the same neighbours share a fit (a third of them in saturated cores)
        step = max(1, (1 << 22) // max(len(rc), 1))  # pixels per pass: the (pixels, candidates) test stays under 4 MB
        for j0 in range(0, len(rps), step):
            within = np.abs(rc[None, :] - rps[j0:j0 + step, None]) <= 1.0
            for j in np.flatnonzero(np.count_nonzero(within, axis=1) >= 3) + j0:
                rp, pick = rps[j], within[j - j0]
                rs, vs = rc[pick], vc[pick]
                key = pick.tobytes()
                coef = fits.get(key)
                if coef is None:
                    A = np.empty((len(rs), 2))
                    A[:, 0] = 1.0
                    A[:, 1] = rs**2
                    coef = fits[key] = np.linalg.lstsq(A, np.log(vs), rcond=None)[0]
                # never beyond the range of what was seen round it: a bad fit must not invent flux (nor overflow)
                val = math.exp(min(coef[0] + coef[1] * rp**2, math.log(1.5 * vs.max())))
                cut[sy[j], sx[j]] = val
                m[sy[j], sx[j]] = False
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


def clean_inputs(data, rms, mask):
    if data.ndim != 2:
        raise InputError(f"photometry needs a 2-D image, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    good = np.isfinite(data)  # the bad map only when there is one: two fewer passes over the frame
    if rms is not None:
        rms = np.ascontiguousarray(rms, dtype=np.float32)
        good &= np.isfinite(rms)
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise InputError(f"mask shape {mask.shape} differs from image shape {data.shape}")
    if not good.all():
        bad = ~good
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
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    *,
    apertures: ApertureSet | None = None,
) -> Table:
    """Multi-aperture photometry with a sigma-clipped local annulus.

    Parameters
    ----------
    data_sub : 2-D float32 array, globally background-subtracted (ADU).
    rms : background RMS map (ADU) or a scalar.
    mask : bool array, True = bad pixel (excluded and flagged 1), or None.
    sources : table with ``x``, ``y`` (0-based px); ``flags`` (bit 4 = border) is honoured.
    fwhm_px : stellar FWHM (px); the apertures and the annulus scale with :func:`aperture_fwhm`.
    gain : e-/ADU for the Poisson term, None or <= 0 to leave it out.
    exptime : s; None means 1.
    settings : :class:`~rpp_core.settings.PhotometrySettings`.
    saturated_mask : bool array of saturated pixels (flag 2), or None.
    progress, cancel : ``progress(done, total)``; ``cancel()`` true raises ``Cancelled``.
    apertures : the run's :class:`~rpp_core.products.ApertureSet`; by default
        :func:`aperture_set` of ``settings`` and ``fwhm_px``.

    Returns
    -------
    Table
        A copy of ``sources`` with, per aperture label L: ``flux_L``, ``fluxerr_L`` (ADU),
        ``mag_L``, ``magerr_L`` (instrumental mag), ``snr_L``, ``flag_L``, ``bkg_L``
        (local annulus level, ADU/px). ``meta["apertures"]`` maps L to its radius (px),
        ``meta["aperture_fwhm_px"]`` is the FWHM they were sized with.
        Rows whose calibration-aperture SNR is below ``settings.min_snr`` are dropped.

    Examples
    --------
    >>> tab = aperture_photometry(data_sub, bkg.rms, masks.combined, stars, 3.5, 1.5, 60.0,
    ...                           PhotometrySettings(), saturated_mask=masks.saturated)  # doctest: +SKIP
    """
    if not fwhm_px or not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise InputError(f"aperture photometry needs a positive FWHM, got {fwhm_px!r} px")
    data, rms_map, mask = clean_inputs(data_sub, rms if isinstance(rms, np.ndarray) else None, mask)
    err = rms_map if rms_map is not None else (float(rms) if rms is not None else None)
    tab = Table(sources, copy=True)
    x = np.asarray(tab["x"], dtype=float)
    y = np.asarray(tab["y"], dtype=float)
    n = len(tab)
    apertures = apertures or aperture_set(settings, fwhm_px)
    radii = apertures.as_dict()
    labels = list(apertures.labels)
    calib = apertures.calibration
    rin, rout = apertures.annulus_px
    n_chunks = max(1, math.ceil(n / CHUNK))
    total = n_chunks + len(labels)
    check_cancel(cancel)

    ok = np.isfinite(x) & np.isfinite(y)
    src_flags = np.asarray(tab["flags"], dtype=np.int64) if "flags" in tab.colnames else np.zeros(n, np.int64)

    bkg, bkg_std, n_ann, nominal = _annulus_stats(
        data, mask, x, y, rin, rout, settings.annulus_sigma,
        progress_cb=lambda done: report(progress, math.ceil(done / CHUNK), total), cancel=cancel,
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
        check_cancel(cancel)
        r = radii[lab]
        s, serr, sflag = sep_x.sum_circle(data, xs, ys, r, err=err, mask=mask, subpix=SUBPIX)
        s = np.asarray(s, float)
        serr = np.asarray(serr, float)
        sflag = np.asarray(sflag, np.int64)
        results[lab] = [s, serr, sflag]
        report(progress, n_chunks + k + 1, total)

    # Repair masked pixels by mirror symmetry for the (few) sources that touch one.
    if mask is not None:
        touched = np.nonzero(ok & ((results[apertures.largest][2] & sep_x.APER_HASMASKED) > 0))[0]
        for i in touched:
            rep = _mirror_repair(data, mask, x[i], y[i], rmax)
            if rep is None:
                continue
            cut, m, x0, y0 = rep
            ecut = err if not isinstance(err, np.ndarray) else np.ascontiguousarray(
                err[y0 : y0 + cut.shape[0], x0 : x0 + cut.shape[1]])
            # every radius in one call (sep measures each (x, y, r) on its own: the same sums)
            s1, e1, _ = sep_x.sum_circle(cut, np.full(len(labels), x[i] - x0), np.full(len(labels), y[i] - y0),
                                         np.array([radii[lab] for lab in labels]), err=ecut, mask=m, subpix=SUBPIX)
            for k, lab in enumerate(labels):
                results[lab][0][i] = s1[k]
                results[lab][1][i] = e1[k]

    sat_flags = {}
    if saturated_mask is not None:
        sat = np.ascontiguousarray(saturated_mask, dtype=bool)
        sy, sx = np.divmod(np.flatnonzero(sat), sat.shape[1])  # np.nonzero of the 2-D mask: 12x slower
        if sx.size:
            # sep decides which apertures touch a saturated pixel, asked only for the sources with one
            # within reach (a pixel's corner is 0.71 px from its centre): 4 whole passes cost 0.15 s on 4k
            dist, _ = cKDTree(np.c_[sx, sy]).query(np.c_[xs, ys], distance_upper_bound=rmax + 1.0)
            near = np.flatnonzero(ok & (dist <= rmax + 1.0))
            for lab in labels:
                sat_flags[lab] = np.zeros(n, bool)
                if near.size:
                    _, _, f = sep_x.sum_circle(data, xs[near], ys[near], radii[lab], mask=sat, subpix=SUBPIX)
                    sat_flags[lab][near] = (np.asarray(f) & sep_x.APER_HASMASKED) > 0

    tab.meta["apertures"] = {lab: radii[lab] for lab in labels}
    tab.meta["annulus_px"] = [float(rin), float(rout)]
    tab.meta["calibration_aperture"] = calib
    tab.meta["fwhm_px"] = float(fwhm_px)
    tab.meta["aperture_fwhm_px"] = float(apertures.fwhm_px)
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
        mag, magerr = magnitudes(flux, fluxerr, exptime)
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
    report(progress, total, total)
    return tab
