"""FWHM measurement and star detection on a background-subtracted frame.

Conventions: ``data_sub`` is float32 in ADU with the 2-D background removed,
``rms`` the background RMS map (ADU), masks are bool with ``True`` = bad.
Pixel coordinates are 0-based (numpy/photutils).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .errors import NoStarsError
from .flags import FLAG_EDGE, FLAG_MASKED, FLAG_SATURATED
from .preprocess import mark_border
from .progress import CancelFn, ProgressFn, check_cancel
from .settings import DetectionSettings, MaskSettings

def _finite(data: np.ndarray) -> np.ndarray:
    """float32 view of ``data`` with NaN/inf set to 0 (copy only when there are any)."""
    data = np.asarray(data, dtype=np.float32)
    good = np.isfinite(data)
    if not good.all():
        data = np.where(good, data, np.float32(0))
    return data


def _dao(data, rms, search_mask, fwhm, threshold_sigma, *, sharp=True):
    """DAOStarFinder with threshold in units of the local RMS; returns a QTable or None.

    The threshold is the 2-D map ``threshold_sigma * rms`` on the ADU image, so
    peak and flux stay in ADU (equivalent to running on data/rms).
    ``min_separation=0`` (the kernel footprint, as in DAOFIND): on a 4k frame
    with 6,000 stars it took 0.25 s against 1.8 s for the photutils 3 default
    (2.5 FWHM) and matched 5,913 stars instead of 5,604.
    """
    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    kwargs = {}
    if not sharp:
        kwargs = dict(sharpness_range=None, roundness_range=None)
    finder = DAOStarFinder(threshold=threshold_sigma * rms, fwhm=float(fwhm), min_separation=0,
                           peak_max=None, exclude_border=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        return finder.find_stars(data, mask=search_mask)


#: a point-sampled Moffat would read the FWHM ~2% wide at FWHM 2.5 px
_OVERSAMPLE = 3
#: Gaussian FWHMs (px) the first pass tries on each source
_SCAN_WIDTHS = np.geomspace(0.6, 24.0, 64)
#: brightest clean sources whose kernel widths make the first pass
_SCAN_STARS = 40
_SQRT8LN2 = 2.0 * np.sqrt(2.0 * np.log(2.0))


def star_peak_share(fwhm_px: float) -> float:
    """Brightest pixel over the 3 x 3 box round it, for a centred, pixel-integrated Gaussian star.

    The most a star can have (off-centre stars spread more): 0.14 at FWHM 4 px, 0.23 at
    2 px, 0.37 at 1.4 px, 0.58 at 1 px. A cosmic-ray hit or hot pixel has nearly all its
    light in one pixel; compare with :func:`_peak_share`.
    """
    from scipy.special import erf

    s = max(float(fwhm_px), 1e-3) / _SQRT8LN2 * np.sqrt(2.0)
    return float((erf(0.5 / s) / erf(1.5 / s)) ** 2)


def weighted_median(values, weights) -> float:
    """The value below which half the total weight lies."""
    v = np.asarray(values, float)
    w = np.asarray(weights, float)
    order = np.argsort(v, kind="stable")
    c = np.cumsum(w[order])
    return float(v[order][np.searchsorted(c, 0.5 * c[-1])])


@dataclass
class _Sources:
    """Bright sources of one ``sep_x.extract`` pass (0-based x, y; peak and flux in ADU)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    a: np.ndarray
    b: np.ndarray
    flag: np.ndarray

    @property
    def moment_fwhm(self) -> np.ndarray:
        return _SQRT8LN2 * np.sqrt(0.5 * (self.a**2 + self.b**2))



def _sep_sources(data, rms, mask, threshold, kernel=None, minarea=5, deblend_cont=0.005, **deblend) -> np.ndarray:
    """``sep_x.extract`` in SExtractor's convention (``filter_type='conv'``: the threshold is
    ``threshold`` x the RMS map on the kernel-filtered image); the structured array."""
    import sep_x

    if kernel is None:
        kernel = sep_x.default_kernel
    sep_x.set_sub_object_limit(max(sep_x.get_sub_object_limit(), 4096))
    m = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    args = (np.ascontiguousarray(data, np.float32), float(threshold))
    kwargs = dict(err=np.ascontiguousarray(rms, np.float32), mask=m, minarea=int(minarea), filter_kernel=kernel,
                  filter_type="conv", deblend_cont=deblend_cont, **deblend)
    # The pixel stack bounds the pixels above threshold at once; sep allocates and initialises all of it
    # at every call (about 46 bytes a pixel: 5 M pixels raised a 4k run's peak by 215 MB; on a 768^2 frame
    # a whole-frame stack was half of the call, in page faults). A bright plate star or a nebula can need
    # more than the first stack: the call is made again with the larger one when sep says so.
    first = min(data.size, _PIXSTACK, max(data.size // 4, _PIXSTACK_MIN))
    sep_x.set_extract_pixstack(first)
    try:
        return sep_x.extract(*args, **kwargs)
    except Exception as exc:  # sep raises a bare Exception
        if "pixel buffer full" not in str(exc) or data.size <= first:
            raise
    sep_x.set_extract_pixstack(min(data.size, _PIXSTACK_MAX))
    return sep_x.extract(*args, **kwargs)


#: sep's pixel stack (pixels above threshold at once): the first try (a quarter of the frame, within these
#: bounds), and the retry's
_PIXSTACK_MIN, _PIXSTACK, _PIXSTACK_MAX = 100_000, 1_000_000, 5_000_000


def _peak_share(data: np.ndarray, x, y) -> np.ndarray:
    """Brightest pixel of the 3 x 3 box round (x, y) over the box's sum (1 for a single hot pixel)."""
    ny, nx = data.shape
    ix = np.clip(np.round(x).astype(int), 1, nx - 2)
    iy = np.clip(np.round(y).astype(int), 1, ny - 2)
    box = np.stack([data[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1).astype(float)
    tot = box.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tot > 0, box.max(axis=1) / tot, 1.0)


def _isolated(src: "_Sources", idx: np.ndarray, reach: np.ndarray, near: np.ndarray, frac: float) -> np.ndarray:
    """For sources ``idx``: no other source within ``near`` px, none brighter than ``frac`` of it within ``reach`` px.

    Faint neighbours further out (noise peaks, cosmic-ray hits round a bright star) do not
    change a bright star's profile; brighter ones or close ones do.
    """
    out = np.ones(len(idx), bool)
    if len(src.x) < 2 or len(idx) == 0:
        return out
    tree = cKDTree(np.c_[src.x, src.y])
    for k, (i, nb) in enumerate(zip(idx, tree.query_ball_point(np.c_[src.x[idx], src.y[idx]], reach))):
        nb = np.asarray([j for j in nb if j != i], int)
        if nb.size == 0:
            continue
        d = np.hypot(src.x[nb] - src.x[i], src.y[nb] - src.y[i])
        if (d < near[k]).any() or (src.flux[nb] > frac * src.flux[i]).any():
            out[k] = False
    return out


def kernel_scan(data: np.ndarray, x, y, half) -> np.ndarray:
    """Per source, the Gaussian FWHM (px) whose matched filter gives the highest S/N.

    For each source at 0-based (x, y), with a box of half-size ``half[i]`` px, the width
    ``w`` of :data:`_SCAN_WIDTHS` that maximises ``sum(K_w d) / sqrt(sum(K_w^2))`` for a
    Gaussian kernel ``K_w`` centred on the source. Needs no prior and is robust to the
    wings (it weighs the core); reads 3-20 % above a Moffat star's FWHM. One vectorised
    operation per source over all widths.
    """
    ny, nx = data.shape
    s2 = (_SCAN_WIDTHS / _SQRT8LN2) ** 2
    out = np.full(len(x), np.nan)
    for i, (x0, y0, h) in enumerate(zip(x, y, half)):
        ix, iy, h = int(round(x0)), int(round(y0)), int(h)
        ya, yb, xa, xb = max(iy - h, 0), min(iy + h + 1, ny), max(ix - h, 0), min(ix + h + 1, nx)
        cut = data[ya:yb, xa:xb].astype(float)
        # the Gaussian is separable: K_w = gy_w gx_w, so sum(K d) = gy_w . d . gx_w and sum(K^2) =
        # sum(gy_w^2) sum(gx_w^2) (64 x box side exponentials, not 64 x box area)
        gy = np.exp(-0.5 * ((np.arange(ya, yb) - y0) ** 2)[None, :] / s2[:, None])
        gx = np.exp(-0.5 * ((np.arange(xa, xb) - x0) ** 2)[None, :] / s2[:, None])
        score = ((gy @ cut) * gx).sum(axis=1) / np.sqrt((gy * gy).sum(axis=1) * (gx * gx).sum(axis=1))
        out[i] = _SCAN_WIDTHS[int(np.argmax(score))]
    return out


def _moffat_batch(stamps, weights, fwhm0, max_iter=50, beta_fixed: float | None = None, fit_sky: bool = True):
    """Pixel-integrated 2-D Moffat plus constant fitted to each stamp, all at once.

    ``stamps`` (n, m, m) with the source near the centre pixel, ``weights`` (n,) 1/sigma.
    Parameters per stamp: flux, x0, y0 (from the centre pixel, |.| < 2), FWHM, beta
    (1.2-15, or held at ``beta_fixed``: 100 is a Gaussian within 0.3 % in FWHM), sky
    (held at 0 unless ``fit_sky``). Returns (n, 6) parameters and a bool array of fits
    that sit on no bound.

    Why not ``scipy.optimize.least_squares`` per star: 5-13 ms a fit, 208 ms with a 20 px
    box (docs/performance-profile.md). This Levenberg-Marquardt with the analytic Jacobian
    runs every star's iteration as one set of array operations, and only on the stars not
    yet converged: 60 stars of 15 x 15 px in about 0.1 s of CPU.
    """
    n, m, _ = stamps.shape
    half = m // 2
    o = _OVERSAMPLE
    chunk = max(1, int(1e6 // (m * o) ** 2))  # the oversampled model of a chunk stays under ~8 MB an array
    if n > chunk:
        parts = [_moffat_batch(stamps[i:i + chunk], np.asarray(weights)[i:i + chunk], fwhm0, max_iter, beta_fixed, fit_sky)
                 for i in range(0, n, chunk)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([ok for _, ok in parts])
    sub = (np.arange(o) + 0.5) / o - 0.5
    g = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()  # (m o,)
    d = stamps.reshape(n, -1).astype(float)
    w = np.asarray(weights, float)[:, None]
    edge = np.ones((m, m), bool)
    edge[1:-1, 1:-1] = False
    sky0 = np.median(stamps[:, edge], axis=1)
    p = np.empty((n, 6))
    p[:, 0] = np.clip((d - (sky0[:, None] if fit_sky else 0.0)).sum(axis=1), 1e-9, None)
    p[:, 1:3] = 0.0
    p[:, 3] = fwhm0
    p[:, 4] = 3.0 if beta_fixed is None else beta_fixed
    p[:, 5] = sky0 if fit_sky else 0.0
    lo = np.array([1e-12, -2.0, -2.0, 0.3, 1.2 if beta_fixed is None else beta_fixed, -np.inf])
    hi = np.array([np.inf, 2.0, 2.0, 4.0 * half, 15.0 if beta_fixed is None else beta_fixed, np.inf])
    free = np.array([True, True, True, True, beta_fixed is None, fit_sky])

    def integrate(a):
        # sub-pixels summed slice by slice: numpy's sum over the two strided axes at once was 10x slower
        k = a.shape[0]
        rows = a.reshape(k, m, o, m * o)
        acc = rows[:, :, 0].copy()
        for i in range(1, o):
            acc += rows[:, :, i]
        cols = acc.reshape(k, m, m, o)
        out = cols[..., 0].copy()
        for j in range(1, o):
            out += cols[..., j]
        return out.reshape(k, -1)

    # work arrays of the oversampled model, made once: a fresh array per operation came from the kernel
    # each time (about a megabyte, glibc gives it back at once), page faults were half of the fit's time
    work = np.empty((6, n, m * o, m * o))

    def evaluate(p, jac=True):
        """Model (k, m^2) and, with ``jac``, its Jacobian (k, m^2, 6) for parameter rows ``p``.

        The operations, and their order, of the plain expressions in the comments, in the work arrays.
        """
        k = p.shape[0]
        r2, u, prof, q, d_alpha, tmp = work[:, :k]
        flux, x0, y0, fwhm, beta, sky = (p[:, j][:, None, None] for j in range(6))
        t = 2.0 ** (1.0 / beta) - 1.0
        kk = 0.5 / np.sqrt(t)
        alpha = fwhm * kk
        a2 = alpha * alpha
        dx = g[None, None, :] - x0          # (k, 1, m o)
        dy = g[None, :, None] - y0          # (k, m o, 1)
        np.add(dx * dx, dy * dy, out=r2)    # r2 = dx dx + dy dy, (k, m o, m o)
        np.divide(r2, a2, out=u)
        u += 1.0                            # u = 1 + r2 / a2
        c = (beta - 1.0) / (np.pi * a2 * o * o)
        np.power(u, -beta, out=prof)
        np.multiply(c, prof, out=prof)      # prof = c u^-beta
        j_flux = integrate(prof)
        model = flux[:, :, 0] * j_flux + sky[:, :, 0]
        if not jac:
            return model, None
        # q = flux beta prof / u (2 / a2): common factor of the position and width terms
        np.multiply(flux * beta, prof, out=q)
        q /= u
        q *= 2.0 / a2
        # d_alpha = -2 / alpha flux prof + q r2 / alpha
        np.multiply(-2.0 / alpha * flux, prof, out=d_alpha)
        np.multiply(q, r2, out=tmp)
        tmp /= alpha
        d_alpha += tmp
        dk_dbeta = 0.25 * t ** -1.5 * 2.0 ** (1.0 / beta) * np.log(2.0) / beta**2
        cols = [j_flux]
        for factor in (dx, dy):
            np.multiply(q, factor, out=tmp)
            cols.append(integrate(tmp))
        np.multiply(d_alpha, kk, out=tmp)
        cols.append(integrate(tmp))
        if free[4]:
            # flux prof (1 / (beta - 1) - log u) + d_alpha fwhm dk_dbeta; r2 and u are not needed any more
            np.multiply(flux, prof, out=tmp)
            np.log(u, out=r2)
            np.subtract(1.0 / (beta - 1.0), r2, out=r2)
            tmp *= r2
            np.multiply(d_alpha, fwhm, out=u)
            u *= dk_dbeta
            tmp += u
            cols.append(integrate(tmp))
        else:
            cols.append(np.zeros_like(j_flux))
        cols.append(np.ones_like(j_flux))
        return model, np.stack(cols, axis=2)

    model, J = evaluate(p)
    cost = (((model - d) * w) ** 2).sum(axis=1)
    lam = np.full(n, 1e-3)
    act = np.arange(n)
    eye = np.eye(6)[None]
    fixed = np.diag((~free).astype(float))[None]
    for _ in range(max_iter):
        Jw = J * w[act, :, None]
        JwT = Jw.transpose(0, 2, 1)
        A = JwT @ Jw  # batched matrix products: a third of the time of the same einsum
        grad = (JwT @ ((model - d[act]) * w[act])[:, :, None])[:, :, 0]
        # fixed parameters: a unit diagonal and no gradient, so their step is 0
        A = A * free[None, :, None] * free[None, None, :] + fixed
        grad = grad * free[None, :]
        diag = np.einsum("nii->ni", A)
        try:
            step = -np.linalg.solve(A + lam[act, None, None] * diag[:, :, None] * eye + 1e-12 * eye,
                                    grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        p_new = np.clip(p[act] + step, lo, hi)
        model_new, _ = evaluate(p_new, jac=False)
        cost_new = (((model_new - d[act]) * w[act]) ** 2).sum(axis=1)
        better = cost_new < cost[act]
        rel = np.where(better, (cost[act] - cost_new) / np.maximum(cost[act], 1e-300), 0.0)
        p[act[better]] = p_new[better]
        cost[act[better]] = cost_new[better]
        lam[act] = np.where(better, np.maximum(lam[act] / 3.0, 1e-9), lam[act] * 4.0)
        converged = (better & (rel < 1e-7)) | (lam[act] >= 1e8)
        act = act[~converged]
        if act.size == 0:
            break
        model, J = evaluate(p[act])
    ok = ((p[:, 3] > lo[3] * 1.01) & (p[:, 3] < hi[3] * 0.99) & (np.abs(p[:, 1]) < 1.99) & (np.abs(p[:, 2]) < 1.99)
          & np.isfinite(p).all(axis=1))
    return p, ok


@dataclass
class FwhmResult:
    """Seeing measured on isolated stars, and how.

    ``fwhm_px`` is the median FWHM (px) of pixel-integrated 2-D Moffat fits (free beta)
    on the stars chosen with the first pass, ``scatter_px`` the robust standard deviation
    (1.4826 x MAD) of the individual values, ``n_stars`` how many fits were used, ``beta``
    the median Moffat beta. ``first_pass_px`` is the prior-free first estimate (flux-weighted
    median of the matched-filter kernel widths of the brightest clean sources) and
    ``method`` says which value ``fwhm_px`` is ("moffat" or "kernel scan" when no star
    could be fitted). ``gauss_fwhm_px`` is what a Gaussian fit (no sky term, box
    +-1.5 FWHM: the convention of ``photutils.psf.fit_fwhm``) reads on the same stars,
    10-30 % more on Moffat stars. ``peak_share`` is the 90th percentile, over the stars
    used, of the brightest pixel's share of its 3 x 3 light: how sharp a star can be
    (:func:`star_peak_share`), which the cosmic-ray stage compares hits with.
    ``guess_px`` is the header hint (seeing / pixel scale, NaN if none):
    never used for the measurement, only compared with it in ``notes``. ``x``, ``y``
    (0-based) and ``values`` are the stars used and their FWHMs.
    """

    fwhm_px: float
    scatter_px: float
    n_stars: int
    beta: float = float("nan")
    guess_px: float = float("nan")
    first_pass_px: float = float("nan")
    gauss_fwhm_px: float = float("nan")
    peak_share: float = float("nan")
    method: str = "moffat"
    notes: list = field(default_factory=list)
    x: np.ndarray = field(default_factory=lambda: np.empty(0))
    y: np.ndarray = field(default_factory=lambda: np.empty(0))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def undersampled(self) -> bool:
        """Stars as sharp as cosmic-ray hits: FWHM below :data:`UNDERSAMPLED_PX`."""
        return self.fwhm_px < UNDERSAMPLED_PX

    def summary(self) -> str:
        """One log line: the value, from what, and what became of the header hint."""
        how = (f"FWHM {self.fwhm_px:.2f} px from {self.n_stars} stars (kernel scan {self.first_pass_px:.2f} px, "
               f"Moffat refinement, beta {self.beta:.1f}, scatter {self.scatter_px:.2f} px)") if self.method == "moffat" else (
               f"FWHM {self.fwhm_px:.2f} px from the kernel scan of {self.n_stars} sources (no star could be fitted)")
        return "; ".join([how, *self.notes])


#: below this FWHM (px) stars are as sharp as cosmic-ray hits and need care (issue 9 item 2)
UNDERSAMPLED_PX = 1.5
#: side (px) of the central window whose sources the FWHM of a frame larger than about 2900^2 comes from
#: (the whole frame when it holds fewer than 80 clean stars)
_FWHM_WINDOW = 2048


def _clean_candidates(data, rms, mask, src: _Sources, min_snr: float, peak_max: float) -> np.ndarray:
    """Indices of sources fit to measure a width on: unflagged, bright but below ``peak_max``, round,
    isolated, unmasked, not a spike."""
    ny, nx = data.shape
    ix = np.clip(np.round(src.x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(src.y).astype(int), 0, ny - 1)
    mf = src.moment_fwhm
    ok = (src.flag == 0) & (src.peak >= min_snr * rms[iy, ix]) & (src.peak < peak_max)
    ok &= src.b / np.maximum(src.a, 1e-6) > 0.6
    ok &= _peak_share(data, src.x, src.y) < 0.7
    edge = np.minimum.reduce([src.x, src.y, nx - 1 - src.x, ny - 1 - src.y])
    ok &= edge > 2.0 * mf + 2
    if mask is not None and ok.any():
        ok &= ~_any_in_disk(mask, src.x, src.y, max(float(np.median(mf[ok])), 1.0))
    idx = np.flatnonzero(ok)
    return idx[_isolated(src, idx, 4.0 * mf[idx], 1.5 * mf[idx], 0.1)]


def measure_fwhm(
    data_sub: np.ndarray,
    rms: np.ndarray,
    mask: np.ndarray | None,
    guess_px: float | None,
    settings: DetectionSettings,
    *,
    peak_max: float | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> FwhmResult:
    """Measure the stellar FWHM (px) with no prior: a kernel scan, then Moffat fits.

    1. **Sources**: one ``sep_x.extract`` at 5 sigma with the default 3 x 3 kernel (on a
       frame over about 2900^2 px, its central 2048^2 window unless that holds fewer than
       80 clean stars).
    2. **First pass** (no prior): of the sources that are unflagged, with peak S/N >= 20
       (10 if fewer than 5), round (b/a > 0.6), isolated (no source brighter than 10 % of
       it within 4 moment-FWHMs, none at all within 1.5), not a spike (brightest pixel under 0.7 of its 3 x 3 light) and away
       from masked pixels, the :data:`_SCAN_STARS` brightest get :func:`kernel_scan`;
       the first pass is the median of those widths *weighted by flux*, so a few
       bright stars outweigh many cosmic-ray hits or hot pixels.
    3. **Refinement**: sources whose own kernel width lies within 0.65-1.6 x the first
       pass (not a hit, not a galaxy or blend), whose brightest pixel holds at most twice
       a star's share of its 3 x 3 light (:func:`star_peak_share`), with no brighter
       neighbour reaching their box (half-size ``2 x`` first pass) and nothing masked in
       it: the ``settings.fwhm_max_stars`` brightest are fitted at once with a
       pixel-integrated Moffat (:func:`_moffat_batch`); with 3 or more fits, every star
       is fitted again with the median beta held fixed (FWHM and beta trade off on a
       single star); the result is the median FWHM of those fits.

    ``guess_px`` (header seeing / pixel scale) is a hint only: compared with the result
    in the notes, never used to select or fit. ``mask`` should include saturated, NaN
    and border pixels. Deterministic. Raises :class:`NoStarsError` when no source
    qualifies for the first pass.

    Measured on the real-frame corpus and synthetic frames: docs/real-frames-diagnosis.md.
    """
    check_cancel(cancel)
    data = _finite(data_sub)
    rms = np.asarray(rms, dtype=np.float32)
    if rms.shape != data.shape:
        rms = np.full(data.shape, rms, np.float32)
    hint = float(guess_px) if guess_px and np.isfinite(guess_px) and guess_px > 0 else float("nan")
    if peak_max is None or not peak_max > 0:
        # stars near saturation are wider (plates, non-linear CCDs): when pixels pile up just below the
        # maximum (a clipped or photographically saturated top: 3,000 on the M67 plate, 1 on a frame whose
        # maximum is a cosmic ray) only stars peaking below half of it are used
        top = float(np.max(data))
        peak_max = 0.5 * top if np.count_nonzero(data >= 0.95 * top) >= 10 else np.inf
    thr = max(settings.threshold_sigma, 5.0)
    ny, nx = data.shape
    windows = [(slice(0, ny), slice(0, nx))]
    if ny * nx > 2 * _FWHM_WINDOW**2:
        # a big frame's central window holds enough stars and costs a quarter of the pass
        y0, x0 = max((ny - _FWHM_WINDOW) // 2, 0), max((nx - _FWHM_WINDOW) // 2, 0)
        windows.insert(0, (slice(y0, y0 + _FWHM_WINDOW), slice(x0, x0 + _FWHM_WINDOW)))
    for win in windows:
        raw = _sep_sources(data[win], rms[win], None if mask is None else mask[win], thr, minarea=3)
        src = _Sources(np.asarray(raw["x"], float) + win[1].start, np.asarray(raw["y"], float) + win[0].start,
                       *(np.asarray(raw[k], float) for k in ("flux", "peak", "a", "b")), np.asarray(raw["flag"], int))
        check_cancel(cancel)
        cand = np.empty(0, int)
        for min_snr in (20.0, 10.0):
            cand = _clean_candidates(data, rms, mask, src, min_snr, peak_max)
            if len(cand) >= 5:
                break
        if len(cand) >= 2 * _SCAN_STARS:
            break
    if progress:
        progress(1, 4)
    if len(cand) == 0:
        raise NoStarsError(
            f"no star could be measured for the FWHM ({len(src.x)} sources above {thr:g} sigma, none bright, "
            "round, isolated and unmasked): the frame may be empty, out of focus or all saturated; "
            "check the exposure or lower detection.threshold_sigma")
    first = cand[np.argsort(-src.flux[cand], kind="stable")][:_SCAN_STARS]
    half_scan = np.clip(np.ceil(3.0 * src.moment_fwhm[first]), 4, 40)
    widths = kernel_scan(data, src.x[first], src.y[first], half_scan)
    w0 = weighted_median(widths, np.clip(src.flux[first], 1e-30, None))
    if progress:
        progress(2, 4)
    check_cancel(cancel)

    # refinement: every clean candidate, judged on the measured scale
    half = int(np.clip(np.ceil(2.0 * w0), 3, 30))
    pool = cand[np.argsort(-src.flux[cand], kind="stable")][: 4 * settings.fwhm_max_stars]
    w_pool = kernel_scan(data, src.x[pool], src.y[pool], np.full(len(pool), max(half, int(np.ceil(3 * w0)))))
    keep = (w_pool > 0.65 * w0) & (w_pool < 1.6 * w0)
    keep &= _peak_share(data, src.x[pool], src.y[pool]) <= min(2.0 * star_peak_share(w0), 0.9)
    ix, iy = np.round(src.x[pool]).astype(int), np.round(src.y[pool]).astype(int)
    keep &= (ix - half >= 0) & (iy - half >= 0) & (ix + half < nx) & (iy + half < ny)
    # no neighbour within 2 FWHM, none brighter than 5 % of the star whose light reaches the box
    keep &= _isolated(src, pool, np.full(len(pool), half + 2.0 * w0), np.full(len(pool), 2.0 * w0), 0.05)
    if mask is not None:
        keep &= ~_any_in_disk(mask, src.x[pool], src.y[pool], half * 1.0)
    chosen = pool[keep][: settings.fwhm_max_stars]
    result = None
    if len(chosen):
        check_cancel(cancel)
        ixc, iyc = np.round(src.x[chosen]).astype(int), np.round(src.y[chosen]).astype(int)
        off = np.arange(-half, half + 1)
        stamps = data[iyc[:, None, None] + off[None, :, None], ixc[:, None, None] + off[None, None, :]]
        weights = 1.0 / np.maximum(rms[iyc, ixc], 1e-12)
        params, good = _moffat_batch(stamps, weights, w0)
        # the same stars as a Gaussian fit would see them (the convention of photutils fit_fwhm, IRAF imexam)
        hg = min(int(np.ceil(1.5 * w0)), half)
        gpar, ggood = _moffat_batch(stamps[:, half - hg:half + hg + 1, half - hg:half + hg + 1], weights, w0,
                                    beta_fixed=100.0, fit_sky=False)
        if good.sum() >= 3:
            # FWHM and beta trade off on a faint or few-pixel star: one beta for the frame (the median) and each
            # star's FWHM fitted again with it (NTT: 10 stars 1.9-4.3 px with free beta)
            beta_frame = float(np.median(params[good, 4]))
            params, good = _moffat_batch(stamps, weights, w0, beta_fixed=beta_frame)
            params[:, 4] = beta_frame
        if good.any():
            vals = params[good, 3]
            med = float(np.median(vals))
            scatter = float(1.4826 * np.median(np.abs(vals - med))) if vals.size > 1 else float("nan")
            result = FwhmResult(fwhm_px=med, scatter_px=scatter, n_stars=int(vals.size),
                                beta=float(np.median(params[good, 4])), guess_px=hint, first_pass_px=w0,
                                method="moffat",
                                peak_share=float(np.percentile(_peak_share(data, src.x[chosen][good], src.y[chosen][good]), 90)),
                                gauss_fwhm_px=float(np.median(gpar[ggood, 3])) if ggood.any() else float("nan"),
                                x=ixc[good] + params[good, 1], y=iyc[good] + params[good, 2],
                                values=vals)
    if result is None:
        result = FwhmResult(fwhm_px=w0, scatter_px=float("nan"), n_stars=len(first), guess_px=hint,
                            first_pass_px=w0, method="kernel scan", gauss_fwhm_px=w0,
                            peak_share=float(np.percentile(_peak_share(data, src.x[first], src.y[first]), 90)),
                            x=src.x[first], y=src.y[first], values=widths)
    if np.isfinite(hint):
        ratio = hint / result.fwhm_px
        if 0.75 <= ratio <= 1.33:
            result.notes.append(f"header seeing {hint:.2f} px agrees")
        else:
            result.notes.append(f"header seeing {hint:.2f} px ignored: {max(ratio, 1 / ratio):.1f}x "
                                f"{'too large' if ratio > 1 else 'too small'}")
    if result.undersampled:
        result.notes.append(f"undersampled: stars below {UNDERSAMPLED_PX:g} px are as sharp as cosmic-ray hits")
    if progress:
        progress(4, 4)
    return result


def _disk_offsets(radius: float):
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dx**2 + dy**2 <= radius**2
    return dy[keep], dx[keep]


def _disk_pixels(shape, x, y, radius: float):
    """Pixels within ``radius`` of each (x, y): rows ``yy``, columns ``xx`` (n, k), clipped to the frame,
    and ``ok``, False where the unclipped pixel lies outside it."""
    dy, dx = _disk_offsets(radius)
    ny, nx = shape
    yy = np.round(y).astype(int)[:, None] + dy[None, :]
    xx = np.round(x).astype(int)[:, None] + dx[None, :]
    ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1), ok


def _any_in_disk(m: np.ndarray, x, y, radius: float) -> np.ndarray:
    """For each (x, y), whether any ``m`` pixel lies within ``radius``; out-of-frame pixels are ignored."""
    if len(x) == 0:
        return np.zeros(0, bool)
    yy, xx, ok = _disk_pixels(m.shape, x, y, radius)
    return (m[yy, xx] & ok).any(axis=1)


#: block side (px) of :func:`_label_sparse`'s first grouping, and the most groups it labels one by one
_BLOCK, _MAX_GROUPS = 32, 500


def _label_sparse(m: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """The 4-connected components of bool ``m``, numbered as ``ndi.label`` numbers them (by the
    first pixel in raster order): per component, its bounding box (``ndi.find_objects``'
    slices) and its pixels within that box.

    Only the set pixels are looked at: ``ndi.label`` and ``find_objects`` over a whole
    4096^2 saturated mask cost 55-80 ms of CPU and a 64 MB label array for frame A's 79
    saturated blobs, against 5 ms here. Pixels are first grouped by blocks (two 4-adjacent
    pixels lie in the same or in 4-adjacent blocks, so a component never spans two groups),
    then each group's box is labelled; past :data:`_MAX_GROUPS` groups (~50 us each), or when
    the groups' boxes add up to more than the frame, the whole frame is labelled instead.
    """
    ny, nx = m.shape
    flat = np.flatnonzero(m)
    if flat.size == 0:
        return []
    yy, xx = np.divmod(flat, nx)
    by, bx = yy // _BLOCK, xx // _BLOCK
    coarse = np.zeros((by.max() + 1, bx.max() + 1), bool)
    coarse[by, bx] = True
    groups, n_groups = ndi.label(coarse)
    # groups' boxes (in blocks) covering more than the frame (nested rings, crossing bleed trails)
    # would cost more than one labelling of the whole frame
    area = sum((sy.stop - sy.start) * (sx.stop - sx.start) for sy, sx in ndi.find_objects(groups)) * _BLOCK**2 \
        if n_groups <= _MAX_GROUPS else 0
    if n_groups > _MAX_GROUPS or area > m.size:
        labels, _ = ndi.label(m)
        return [(sl, labels[sl] == k) for k, sl in enumerate(ndi.find_objects(labels), start=1)]
    gid = groups[by, bx]
    order = np.argsort(gid, kind="stable")
    cuts = np.flatnonzero(np.diff(gid[order])) + 1
    comps = []
    for idx in np.split(order, cuts):
        gy, gx = yy[idx], xx[idx]
        y0, x0 = int(gy.min()), int(gx.min())
        box = np.zeros((int(gy.max()) - y0 + 1, int(gx.max()) - x0 + 1), bool)
        box[gy - y0, gx - x0] = True
        lab, _ = ndi.label(box)
        for k, sl in enumerate(ndi.find_objects(lab), start=1):
            piece = lab[sl] == k
            first = divmod(int(np.argmax(piece)), piece.shape[1])
            gsl = (slice(y0 + sl[0].start, y0 + sl[0].stop), slice(x0 + sl[1].start, x0 + sl[1].stop))
            comps.append(((gsl[0].start + first[0]) * nx + gsl[1].start + first[1], gsl, piece))
    comps.sort(key=lambda c: c[0])
    return [(sl, piece) for _, sl, piece in comps]


def _component_at(comps, ix, iy, nx: int) -> np.ndarray:
    """1-based number of the :func:`_label_sparse` component holding each pixel (iy, ix) of a frame
    ``nx`` px wide, 0 for none (a binary search among the components' pixels)."""
    keys, nums = [], []
    for k, ((sy, sx), piece) in enumerate(comps, start=1):
        py, px = np.nonzero(piece)
        keys.append((py + sy.start) * nx + px + sx.start)
        nums.append(np.full(py.size, k, np.int64))
    if not keys:
        return np.zeros(len(ix), np.int64)
    keys, nums = np.concatenate(keys), np.concatenate(nums)
    order = np.argsort(keys)
    keys, nums = keys[order], nums[order]
    q = np.asarray(iy, np.int64) * nx + np.asarray(ix, np.int64)
    at = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return np.where(keys[at] == q, nums[at], 0)


def detection_kernel(fwhm_px: float) -> tuple[np.ndarray, float]:
    """The Gaussian filter of the detection pass and the FWHM it was made for (px).

    SExtractor's convention: a Gaussian of the stellar FWHM on the support of the
    filter SExtractor ships for it (``gauss_1.5_3x3``, ``gauss_2.5_5x5``,
    ``gauss_3.0_7x7``, ``gauss_4.0_7x7``, ``gauss_5.0_9x9``: ``2 round(0.85 FWHM) + 1``
    px). Undersampled stars (FWHM < 1.5 px) get the 1.5 px filter: a narrower one is
    a single pixel and would detect noise peaks; stars wider than 5 px the 9 x 9 one,
    as the cost grows with the filter's area (the detection pass on 4096^2 with 6,000
    stars, 2026-12-02: 0.60 s of CPU with 7 x 7, 0.54 s with the same Gaussian on
    5 x 5, 0.47 s on 3 x 3). A smaller support was measured and not kept: it loses the
    faint end (34.6 % -> 32.4 % / 18.4 % of the stars at S/N 5-10 on frame B) and a
    faint extended knot of horsehead that SExtractor's 7 x 7 finds
    (docs/performance-profile.md, section 5.3; ``bench/detect_variants.py``).
    """
    f = float(np.clip(fwhm_px, UNDERSAMPLED_PX, None))
    half = int(np.clip(np.round(0.85 * f), 1, 4))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return np.exp(-0.5 * (xx * xx + yy * yy) / (f / _SQRT8LN2) ** 2).astype(np.float32), f


def _peak_response(kernel: np.ndarray, fwhm_px: float) -> float:
    """What the kernel-filtered image reads at the centre of a star of unit peak amplitude and this FWHM."""
    half = kernel.shape[0] // 2
    s = max(float(fwhm_px), 0.3) / _SQRT8LN2 * np.sqrt(2.0)
    from scipy.special import erf

    edges = np.arange(-half, half + 2) - 0.5
    prof = np.diff(erf(edges / s)) / np.diff(erf(np.array([-0.5, 0.5]) / s))[0]  # pixel-integrated, peak 1
    star = prof[:, None] * prof[None, :]
    return float((kernel * star).sum() / kernel.sum())


def _find_sep(data, rms, search, fwhm_px, settings: DetectionSettings) -> dict:
    """Detections of one ``sep_x.extract`` pass (SExtractor's way): arrays by column name.

    The threshold is ``settings.threshold_sigma`` x the RMS map on the peak amplitude of
    a star of the measured FWHM (DAOFIND's meaning, kept so profiles keep their depth):
    on the filtered image that is ``threshold_sigma x rms x`` :func:`_peak_response`.
    SExtractor's deblending (32 levels, contrast ``settings.deblend_contrast``; 24 or 16 levels
    were 5-20 % faster and merged 6-17 of frame A's 6,000 stars: docs/performance-profile.md,
    section 5.3) and cleaning; positions are the
    windowed centroids (``sep_x.winpos``, 30-40 % closer to the truth than the isophotal
    barycentre on synthetic stars), the barycentre where the window does not converge.
    """
    import sep_x

    kernel, kf = detection_kernel(fwhm_px)
    thr = settings.threshold_sigma * _peak_response(kernel, fwhm_px)
    deblend = {"deblend_method": "watershed", "deblend_fwhm": float(fwhm_px)} if settings.deblend_method == "watershed" else {}
    obj = _sep_sources(data, rms, search, thr, kernel=kernel, minarea=5, deblend_cont=settings.deblend_contrast, **deblend)
    x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    if len(x):
        sig = np.full(len(x), kf / _SQRT8LN2)
        # subpix 5 as the apertures: on frame A the same error to truth as sep's default 11 (0.0345 px rms), a third of the time (0.12 s)
        xw, yw, fl = sep_x.winpos(data, x, y, sig, mask=search, subpix=5)
        ok = (fl == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 0.5 * kf + 0.5)
        x, y = np.where(ok, xw, x), np.where(ok, yw, y)
    return {"x": x, "y": y, "peak": np.asarray(obj["peak"], float), "flux": np.asarray(obj["flux"], float),
            "a": np.asarray(obj["a"], float), "b": np.asarray(obj["b"], float),
            "theta": np.asarray(obj["theta"], float), "npix": np.asarray(obj["npix"], np.int64)}


def _find_daofind(data, rms, search, fwhm_px, settings: DetectionSettings) -> dict:
    """DAOStarFinder detections (``detection.finder = "daofind"``): arrays by column name, with its
    ``sharpness``, ``roundness1``, ``roundness2``."""
    tab = _dao(data, rms, search, fwhm_px, settings.threshold_sigma)
    names = {"x": "x_centroid", "y": "y_centroid", "peak": "peak", "flux": "flux", "sharpness": "sharpness",
             "roundness1": "roundness1", "roundness2": "roundness2"}
    if tab is None:
        return {c: np.empty(0) for c in names}
    return {c: np.asarray(tab[src], float) for c, src in names.items()}


def find_stars(
    data_sub: np.ndarray,
    rms: np.ndarray,
    mask: np.ndarray | None,
    fwhm_px: float,
    settings: DetectionSettings,
    saturated_mask: np.ndarray | None = None,
    *,
    border_px: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Table:
    """Detect stars at ``settings.threshold_sigma`` x the RMS map.

    ``settings.finder``: ``"sep"`` (default) is SExtractor's way, one filtered
    thresholding pass with deblending in C (:func:`_find_sep`); ``"daofind"`` is
    DAOStarFinder, slower, for its ``sharpness`` and ``roundness`` columns.

    Parameters
    ----------
    data_sub : background-subtracted float32 image, ADU.
    rms : background RMS map, ADU.
    mask : bool, pixels where no star centre is sought (NaN, cosmic rays,
        border...). Saturated pixels in it are still searched so bright stars
        are kept.
    fwhm_px : stellar FWHM, px (from :func:`measure_fwhm`): sizes the filter.
    saturated_mask : bool or None; stars touching it get flag 2 and are never
        dropped: a saturated star the finder misses is added at the centroid of
        its saturated pixels, and of several detections centred on one saturated
        blob only the brightest is kept.
    border_px : px; no star centre is sought this close to the frame edge
        (``masks.border_px``; None: the default of :class:`~rpp_core.settings.MaskSettings`).

    Returns
    -------
    Table sorted by decreasing ``flux``, columns ``id`` (1-based), ``x``, ``y``
    (0-based px), ``peak`` (ADU, highest pixel above background), ``flux`` (ADU:
    isophotal sum for sep, DAOFIND's sum over the kernel footprint), the finder's
    own columns (sep's ellipse ``a``, ``b`` (px), ``theta``
    (rad) and ``npix``; DAOFIND's ``sharpness``, ``roundness1``, ``roundness2``; NaN
    for added saturated stars), ``flags``: 1 a masked pixel within 1 FWHM, 2 a
    saturated pixel within 1 FWHM, 4 within ``border_px`` + 1 FWHM of the frame
    edge. Sources centred inside the border are dropped. ``meta``: fwhm_px,
    threshold_sigma, finder, n_saturated_added. If ``settings.max_sources`` > 0
    only that many brightest are kept.

    Notes
    -----
    4096x4096, 6,600 stars, CPU time on the 2-core machine: sep 0.6-0.8 s with the 7 x 7
    filter (``sep_x.extract`` 0.45-0.6 s, the windowed centroids 0.11 s, the rest 0.03 s);
    DAOStarFinder 1.0-1.6 s with ``min_separation=0`` (docs/performance-profile.md).
    """
    check_cancel(cancel)
    data = _finite(data_sub)
    rms = np.asarray(rms, dtype=np.float32)
    if rms.shape != data.shape:
        rms = np.full(data.shape, rms, np.float32)
    ny, nx = data.shape
    b = MaskSettings().border_px if border_px is None else int(border_px)
    sat = None if saturated_mask is None else np.asarray(saturated_mask, bool)
    # mask and not saturated in one pass (mask > sat on bools): full-frame temporaries cost page faults
    if mask is None:
        search = np.zeros(data.shape, bool)
    elif sat is None:
        search = np.array(mask, bool)
    else:
        search = np.greater(np.asarray(mask, bool), sat)
    mark_border(search, b)
    if progress:
        progress(0, 3)
    finder = getattr(settings, "finder", "sep")
    arrs = (_find_daofind if finder == "daofind" else _find_sep)(data, rms, search, fwhm_px, settings)
    cols = tuple(arrs)
    check_cancel(cancel)
    if progress:
        progress(1, 3)
    n_added = 0
    blobs = [] if sat is None else _label_sparse(sat)
    if blobs:
        # a clipped flat top can give several peaks (up to 5 on one star with DAOFIND in the
        # tests): keep the brightest detection centred on each saturated blob
        ix = np.clip(np.round(arrs["x"]).astype(int), 0, nx - 1)
        iy = np.clip(np.round(arrs["y"]).astype(int), 0, ny - 1)
        lab = _component_at(blobs, ix, iy, nx)
        keep = lab == 0
        on = np.flatnonzero(~keep)
        if on.size:
            best = on[np.lexsort((-arrs["flux"][on], lab[on]))]
            first = np.r_[True, lab[best][1:] != lab[best][:-1]]
            keep[best[first]] = True
            for c in cols:
                arrs[c] = arrs[c][keep]
        added = _missing_saturated(data, blobs, arrs["x"], arrs["y"], fwhm_px)
        n_added = len(added)
        if added:
            ax, ay, apk, afl = (np.array(v, float) for v in zip(*added))
            for c, v in zip(("x", "y", "peak", "flux"), (ax, ay, apk, afl)):
                arrs[c] = np.concatenate([arrs[c], v])
            for c in cols[4:]:
                fill = np.full(n_added, np.nan if arrs[c].dtype.kind == "f" else 0, arrs[c].dtype)
                arrs[c] = np.concatenate([arrs[c], fill])
    x, y = arrs["x"], arrs["y"]
    inside = (x >= b) & (x <= nx - 1 - b) & (y >= b) & (y <= ny - 1 - b)
    for c in cols:
        arrs[c] = arrs[c][inside]
    order = np.argsort(-np.nan_to_num(arrs["flux"], nan=-np.inf), kind="stable")
    if settings.max_sources > 0:
        order = order[: settings.max_sources]
    for c in cols:
        arrs[c] = arrs[c][order]
    if len(arrs["x"]) == 0:
        raise NoStarsError(
            f"no star found above {settings.threshold_sigma:g} sigma with FWHM {fwhm_px:.2f} px "
            f"outside a {b} px border: lower detection.threshold_sigma or check the frame")
    check_cancel(cancel)
    x, y = arrs["x"], arrs["y"]
    r = max(float(fwhm_px), 1.5)
    flags = np.zeros(len(x), np.int32)
    yy, xx, ok = _disk_pixels(data.shape, x, y, r)
    if mask is not None:
        # masked and not saturated is ``search`` off the border strip, read at the disks' pixels only
        inner = ok & (yy >= b) & (yy < ny - b) & (xx >= b) & (xx < nx - b)
        flags |= np.where((search[yy, xx] & inner).any(axis=1), FLAG_MASKED, 0).astype(np.int32)
    if sat is not None:
        flags |= np.where((sat[yy, xx] & ok).any(axis=1), FLAG_SATURATED, 0).astype(np.int32)
    edge = np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])
    flags |= np.where(edge < b + r, FLAG_EDGE, 0).astype(np.int32)
    out = Table()
    out["id"] = np.arange(1, len(x) + 1, dtype=np.int64)
    for c in cols:
        out[c] = arrs[c]
    out["flags"] = flags
    out.meta.update({"fwhm_px": float(fwhm_px), "threshold_sigma": float(settings.threshold_sigma),
                     "finder": finder, "n_saturated_added": int(n_added)})
    if progress:
        progress(3, 3)
    return out


def _missing_saturated(data, blobs, x, y, fwhm):
    """Saturated blobs (:func:`_label_sparse`) with no detection on them: (x, y, peak, flux) at their pixel centroid."""
    tree = cKDTree(np.c_[x, y]) if len(x) else None
    out = []
    ny, nx = data.shape
    rad = int(np.ceil(1.5 * fwhm / 2.3548 * 1.5)) + 1
    for sl, piece in blobs:
        yy, xx = np.nonzero(piece)
        cy, cx = yy.mean() + sl[0].start, xx.mean() + sl[1].start
        reach = 0.5 * np.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) + fwhm
        if tree is not None and tree.query_ball_point([cx, cy], reach):
            continue
        y0, y1 = max(int(round(cy)) - rad, 0), min(int(round(cy)) + rad + 1, ny)
        x0, x1 = max(int(round(cx)) - rad, 0), min(int(round(cx)) + rad + 1, nx)
        box = data[y0:y1, x0:x1]
        out.append((cx, cy, float(box.max()), float(box.sum())))
    return out


def drop_cosmic_ray_peaks(sources: Table, crmask: np.ndarray) -> tuple[Table, int]:
    """Detections whose peak pixel is a cosmic-ray hit removed (a finder lets a few through); ids renumbered.

    Returns the kept sources and how many were dropped.
    """
    px = np.clip(np.round(np.asarray(sources["x"])).astype(int), 0, crmask.shape[1] - 1)
    py = np.clip(np.round(np.asarray(sources["y"])).astype(int), 0, crmask.shape[0] - 1)
    is_cr = crmask[py, px]
    if not is_cr.any():
        return sources, 0
    kept = sources[~is_cr]
    kept["id"] = np.arange(1, len(kept) + 1)
    return kept, int(is_cr.sum())
