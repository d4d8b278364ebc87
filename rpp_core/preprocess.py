"""Pixel masks, cosmic-ray removal and the 2-D background of a frame.

Order in the pipeline: :func:`make_masks` and :func:`estimate_background` on the
raw frame, FWHM and detection, then :func:`remove_cosmics_near` (round the
detected sources) or :func:`remove_cosmics` (whole frame, ``scope = "frame"``)
on the frame's signal above its background, with the RMS map as the noise (so a
pedestal does not matter). The FWHM and the detection do not need cleaned data:
the FWHM stage weighs sources by flux and rejects single-pixel peaks, and a
detection whose peak pixel is a cosmic ray is dropped after this stage; how the
stage treats sharp stars is :func:`cosmic_ray_plan`'s decision. Images are
float32, pixel origin 0, values in ADU.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .products import ExposureValues, MeasurableImage
from .progress import CancelFn, ProgressFn, check_cancel
from .settings import BackgroundSettings, CosmicRaySettings, MaskSettings


@dataclass
class Masks:
    """Boolean pixel masks, same shape as the frame; ``True`` = do not trust.

    ``saturated`` holds pixels at or above ``saturation_level`` (``saturation_fraction
    * saturation``, or the frame's clipped plateau, see :func:`make_masks`), dilated by
    ``saturation_dilate_px``; ``combined`` is their union with the frame edge, a strip
    ``border_px`` wide (px) on each side. The border is that number, not a frame-sized
    array of its own (16 MB on a 4096^2 frame): detection reads the same ``border_px``
    (:attr:`~rpp_core.products.MeasurableImage.border_px`). ``plateau_note`` says why a
    clipped plateau below the given level was taken instead (None otherwise).
    """

    nan: np.ndarray
    saturated: np.ndarray
    combined: np.ndarray
    border_px: int
    saturation_level: float | None = None  # ADU threshold used, None = no saturation mask
    plateau_note: str | None = None


@dataclass
class Background:
    """2-D background and RMS maps (float32, ADU) and their global values."""

    background: np.ndarray
    rms: np.ndarray
    global_bkg: float
    global_rms: float


#: pixels exactly on the frame maximum that make it a clipped plateau (a star's peak is one pixel)
PLATEAU_PIXELS = 5


def _is_clipped_plateau(data: np.ndarray, top: float) -> bool:
    """Whether the pixels exactly on the frame maximum ``top`` form a flat top: at least
    :data:`PLATEAU_PIXELS` of them, and at least 4 with 3 or more such pixels among their 8
    neighbours (a 2-D blob, as a clipped star's core is). Scattered ties at the maximum of a
    low-count integer frame, or a bad column or row set to a constant, are not one."""
    ny, nx = data.shape
    # np.nonzero on a 2-D mask costs 20x np.flatnonzero (37 against 1.7 ms on 4096^2)
    flat = np.flatnonzero(data == top).astype(np.int64)  # sorted
    ys, xs = np.divmod(flat, nx)
    if ys.size < PLATEAU_PIXELS:
        return False
    neighbours = np.zeros(ys.size, np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                y, x = ys + dy, xs + dx
                inside = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
                at = np.searchsorted(flat, y.astype(np.int64) * nx + x)
                hit = inside & (at < flat.size)
                hit[hit] = flat[at[hit]] == (y[hit].astype(np.int64) * nx + x[hit])
                neighbours += hit
    return int(np.count_nonzero(neighbours >= 3)) >= 4


def make_masks(data: np.ndarray, saturation: float | None, settings: MaskSettings) -> Masks:
    """Masks of non-finite, saturated and border pixels.

    Parameters
    ----------
    data : 2-D float32 array, ADU (raw frame, background included)
    saturation : float or None
        Saturation level in ADU (the header's; the mask starts at
        ``saturation_fraction`` of it). ``None`` or <= 0: the level is the frame
        maximum when the pixels on it form a flat top (:func:`_is_clipped_plateau`: a
        clipped plateau; the mask again starts at ``saturation_fraction`` of it),
        else no pixel is flagged saturated. A clipped plateau
        below the given level is taken too: the header's level then no longer
        describes these pixels (a bias or pedestal subtracted after readout left
        SATURATE as it was), and its flat-topped stars would pass as measurable.
    settings : MaskSettings
        ``saturation_fraction``, ``saturation_dilate_px``, ``border_px``.
    """
    if data.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {data.shape}")
    nan = nonfinite(data)
    if nan.all():
        raise InputError("every pixel of the frame is NaN or infinite: nothing to measure")
    level, note = None, None
    if saturation is not None and saturation > 0:
        level = float(saturation) * settings.saturation_fraction
    top = float(np.nanmax(data))
    if (level is None or top < level) and _is_clipped_plateau(data, top):
        n_top = int(np.count_nonzero(data == top))
        if level is not None:
            note = (f"{n_top} pixels sit exactly on the frame maximum {top:g} ADU, below the saturation level "
                    f"{level:g} ADU from the header: a clipped plateau, so the mask starts at "
                    f"{top * settings.saturation_fraction:g} ADU (was a bias or pedestal subtracted without updating SATURATE?)")
        level = top * settings.saturation_fraction  # the pixels next to clipping are no more linear
    saturated = np.zeros(data.shape, bool)
    if level is not None:
        with np.errstate(invalid="ignore"):
            np.greater_equal(data, level, out=saturated)
        if settings.saturation_dilate_px > 0 and saturated.any():
            # dilate only round the saturated pixels: a full-frame dilation costs ~0.2 s on 4k
            saturated = _dilate_sparse(saturated, settings.saturation_dilate_px)
    combined = nan | saturated
    b = int(settings.border_px)
    mark_border(combined, b)
    return Masks(nan=nan, saturated=saturated, combined=combined, border_px=max(b, 0), saturation_level=level,
                 plateau_note=note)


def mark_border(mask: np.ndarray, border_px: int) -> np.ndarray:
    """Set a strip ``border_px`` wide (px) along each edge of the 2-D bool ``mask``, in place; ``mask``.
    Nothing for ``border_px`` <= 0."""
    b = int(border_px)
    if b > 0:
        mask[:b, :] = mask[-b:, :] = True
        mask[:, :b] = mask[:, -b:] = True
    return mask


def nonfinite(data: np.ndarray) -> np.ndarray:
    """Bool mask of the NaN and infinite pixels of ``data``, made in one array (no second frame-sized
    temporary for the negation: 16 MB on a 4096^2 frame)."""
    out = np.isfinite(data)
    return np.logical_not(out, out=out)


def _dilate_sparse(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, by index arithmetic on the set pixels only: ``mask``
    itself is dilated and returned (a new array only when the whole-frame dilation is used).

    Saturated pixels are a few thousand of millions: offsetting their indices costs ~5 ms on
    a 4k frame where labelling the frame and dilating each blob took 0.3 s (a full-frame
    ``binary_dilation`` 0.2 s); the whole-frame dilation is used when they are many.
    """
    ny, nx = mask.shape
    iy, ix = np.divmod(np.flatnonzero(mask), nx)  # not np.nonzero: see _is_clipped_plateau
    if iy.size * (2 * radius + 1) ** 2 > mask.size // 4:
        return ndi.binary_dilation(mask, structure=np.ones((2 * radius + 1, 2 * radius + 1), bool))
    out = mask  # in place (the indices are taken above): a copy is 16 MB of page faults on 4k
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out[np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)] = True
    return out


def _tiles(shape: tuple[int, int], size: int, overlap: int):
    ny, nx = shape
    if size <= 0:
        size = max(ny, nx)
    for y0 in range(0, ny, size):
        for x0 in range(0, nx, size):
            y1, x1 = min(y0 + size, ny), min(x0 + size, nx)
            outer = (max(y0 - overlap, 0), min(y1 + overlap, ny), max(x0 - overlap, 0), min(x1 + overlap, nx))
            yield (y0, y1, x0, x1), outer


def _signal_and_variance(data, inmask, gain, background, rms):
    """Background-relative signal (ADU), its variance (ADU^2) and the background, for astroscrappy.

    Working on ``data - background`` with the variance from the RMS map (plus the
    sources' Poisson term when the gain is known) makes the detection independent of
    the frame's pedestal: a frame offset by -5,000 ADU gives the same hits (issue 14).
    """
    if background is None or rms is None:
        import sep_x

        d = np.where(inmask, np.float32(0), data).astype(np.float32)
        bkg = sep_x.Background(np.ascontiguousarray(d), mask=np.ascontiguousarray(inmask))
        background, rms = bkg.back(dtype=np.float32), bkg.rms(dtype=np.float32)
    # in place, float32 throughout: this set-up was 1 s of the 4096^2 benchmark frame's cosmic-ray stage
    sig = np.subtract(data, background, dtype=np.float32)
    var = np.square(np.asarray(rms, np.float32), dtype=np.float32)
    if gain is not None and gain > 0:
        var += np.maximum(sig, 0) * np.float32(1.0 / gain)
    sig[inmask] = 0.0
    bad = inmask | ~np.isfinite(var) | ~(var > 0)
    if bad.any():
        good = var[~bad]
        # the median of every 16th good pixel: the fill only has to be a typical variance
        var[bad] = np.float32(np.median(good[::16])) if good.size else np.float32(1)
    return sig, var, np.asarray(background, np.float32)


def _scrappy_kwargs(sig, inmask, saturation, background, settings: CosmicRaySettings) -> dict:
    """astroscrappy parameters for the background-relative signal (gain 1: the variance is given in ADU^2)."""
    if saturation is not None and saturation > 0:
        # a smooth map: the median of every 8th row and column is its median
        satlevel = float(saturation) - float(np.median(np.asarray(background)[::8, ::8]))
    else:
        # astroscrappy protects stars reaching satlevel; without one, the wings of
        # clipped stars were flagged (28 of 50 false pixels in a 512 px test cut)
        top = float(np.max(sig[~inmask])) if (~inmask).any() else 0.0
        satlevel = top if np.count_nonzero(sig == top) >= 5 else float(np.finfo(np.float32).max)
    return dict(sigclip=settings.sigclip, sigfrac=settings.sigfrac, objlim=settings.objlim, gain=1.0,
                readnoise=0.0, satlevel=satlevel, niter=settings.niter, sepmed=True, cleantype="meanmask",
                fsmode="median", verbose=False)


def _scrappy_setup(data, mask, gain, saturation, settings: CosmicRaySettings, background, rms):
    """NaN mask, astroscrappy's inmask, the signal, variance and background, and the parameters."""
    nan = nonfinite(data)
    inmask = nan if mask is None else (np.asarray(mask, bool) | nan)
    sig, var, background = _signal_and_variance(data, inmask, gain, background, rms)
    return nan, inmask, sig, var, background, _scrappy_kwargs(sig, inmask, saturation, background, settings)


def spare_star_like_hits(crmask: np.ndarray, sig: np.ndarray, share_limit: float) -> np.ndarray:
    """Pixels of ``crmask`` to keep as cosmic rays: the flagged groups sharper than a star.

    Round the brightest pixel of each flagged group: when that pixel holds at most
    ``share_limit`` of the 3 x 3 light (:data:`HIT_SHARE_FACTOR` x what the measured
    stars' brightest pixels hold, :attr:`rpp_core.detect.FwhmResult.peak_share`), the
    group is shaped like a star and astroscrappy took a star for a hit (on undersampled
    frames a star's Laplacian looks like a hit's). Measured: on the Spitzer mosaic (FWHM
    1.4 px, no cosmic rays) 17 of its 1,459 bright stars stay flagged instead of 758, on
    the binned SDSS frame 0 of 380 instead of 358; on a synthetic frame with FWHM 1.3 px,
    0 of 400 star centres instead of 373, while 81 of 100 injected hits stay flagged
    (multi-pixel tracks spread their light like a star and are let through).
    """
    labels, n = ndi.label(crmask, structure=np.ones((3, 3), bool))
    if n == 0:
        return crmask
    ny, nx = sig.shape
    pos = ndi.maximum_position(sig, labels, np.arange(1, n + 1))
    py = np.clip(np.array([p[0] for p in pos]), 1, ny - 2)
    px = np.clip(np.array([p[1] for p in pos]), 1, nx - 2)
    b3 = sum(sig[py + dy, px + dx].astype(float) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(b3 > 0, sig[py, px] / b3, 1.0)
    hit = np.r_[False, share > share_limit]
    return hit[labels]


#: a flagged group is a hit, not a star, when its brightest pixel holds more than this times the share
#: of its 3 x 3 light the measured stars' brightest pixels hold (their 90th percentile)
HIT_SHARE_FACTOR = 1.25
#: below this FWHM (px) astroscrappy's Laplacian test takes stars for hits; its flags are then checked
#: against the stars' shape (the Spitzer mosaic, 1.4 px: 2,935 of 6,193 detections dropped without it)
SHAPE_TEST_FWHM_PX = 2.5


@dataclass
class CosmicRayPlan:
    """How the cosmic-ray stage treats a frame whose stars have this FWHM and sharpness.

    ``run`` False: stars are as sharp as hits, nothing can tell them apart, so no
    cosmic-ray removal (``note`` says why, for a warning). ``star_share``: pass to
    :func:`remove_cosmics` (None: astroscrappy's flags are used as they are).
    """

    run: bool
    star_share: float | None = None
    note: str = ""


def cosmic_ray_plan(fwhm_px: float, star_peak_share: float) -> CosmicRayPlan:
    """Decide how to look for cosmic rays given the measured stars (issue 9 item 2).

    ``star_peak_share``: how much of its 3 x 3 light a star's brightest pixel holds
    (:attr:`rpp_core.detect.FwhmResult.peak_share`). When :data:`HIT_SHARE_FACTOR` times
    that reaches 0.9, a single-pixel hit and a star look alike: no removal, with a
    warning. Below :data:`SHAPE_TEST_FWHM_PX` hits are kept only where they are sharper
    than the stars (:func:`spare_star_like_hits`; astroscrappy alone marked 253-326 of the
    380 bright stars of the binned SDSS frame whatever its settings, and 2,935 of the
    6,193 detections of the Spitzer mosaic).
    """
    share = float(star_peak_share)
    if np.isfinite(share) and HIT_SHARE_FACTOR * share >= 0.9:
        return CosmicRayPlan(False, None, (
            f"stars are as sharp as cosmic-ray hits (FWHM {fwhm_px:.2f} px, brightest pixel {share:.0%} of its 3x3 "
            "light): cosmic rays not removed, a hit in an aperture is not masked (set cosmic_rays.enabled = false "
            "to silence this)"))
    if fwhm_px < SHAPE_TEST_FWHM_PX and np.isfinite(share):
        limit = HIT_SHARE_FACTOR * share
        return CosmicRayPlan(True, limit, (
            f"sharp stars (FWHM {fwhm_px:.2f} px, below {SHAPE_TEST_FWHM_PX:g}): a cosmic-ray flag is kept only where "
            f"the brightest pixel holds more than {limit:.0%} of its 3x3 light (stars: up to {share:.0%})"))
    return CosmicRayPlan(True, None)


def remove_cosmics(
    data: np.ndarray,
    mask: np.ndarray | None,
    gain: float | None,
    saturation: float | None,
    settings: CosmicRaySettings,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    *,
    background: np.ndarray | None = None,
    rms: np.ndarray | None = None,
    star_share: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect and clean cosmic-ray hits with astroscrappy (L.A.Cosmic) on the background-relative signal.

    Parameters
    ----------
    data : 2-D array, ADU, with or without its sky, any pedestal.
    mask : bool array or None
        Pixels never flagged nor used (astroscrappy ``inmask``); pass
        ``masks.nan | masks.saturated``. NaN pixels are always added.
    gain : e-/ADU for the sources' Poisson term of the noise model
        (:func:`rpp_core.image.exposure_values`); None: the RMS map alone.
    saturation : ADU (sky included), astroscrappy's ``satlevel`` (stars reaching it
        are protected); ``None``: the signal maximum if at least 5 pixels sit on it (a
        clipped plateau), else no level.
    settings : CosmicRaySettings
        ``sigclip``, ``sigfrac``, ``objlim``, ``niter``, ``tile_px``, ``workers``;
        ``enabled=False`` returns the data unchanged and an empty mask.
    background, rms : the 2-D background and its RMS (ADU), e.g. from
        :func:`estimate_background`; estimated here with sep when not given.
    star_share : the brightest-pixel share of its 3 x 3 light above which a flagged group
        is a hit (:class:`CosmicRayPlan`); when given, flagged groups shaped like the
        stars are left alone (:func:`spare_star_like_hits`; sharp stars).

    The detection runs on ``data - background`` with the variance ``rms^2 + signal /
    gain`` (astroscrappy ``invar``), so it does not depend on the pedestal of the frame.

    Returns
    -------
    cleaned : float32 array, CR pixels replaced by the mean of the unflagged
        pixels round them (``cleantype='meanmask'``); all other pixels are the
        input values exactly; NaN pixels stay NaN.
    crmask : bool array, ``True`` on pixels flagged as cosmic rays.

    Notes
    -----
    The frame is processed in tiles of ``tile_px`` with a 32 px overlap, each
    tile's interior being kept, so progress can be reported and ``cancel``
    honoured between tiles; tiled masks and cleaned pixels are identical to
    the one-call result (0 pixels differ). Measured on a 4096x4096 frame with
    6,000 stars (2 cores, niter=2), wall time for one call / 1024 px tiles in
    turn / two threads over tiles: 8.2 / 7.2 / 6.3 s (800 CR tracks, direct
    astroscrappy calls) and 12.0 / 9.3 / 6.6 s (60 tracks, this function);
    512 px tiles 8.3 / 7.1 s. astroscrappy runs its filters with OpenMP and
    releases the GIL, so two threads gain 10-30 %, not 2x; CPU time is about
    12.5 s whatever the split. Recall of injected CRs 0.99 at niter 1 and 2;
    on a 2k cut niter 1 took 1.2 s and niter 2 1.7 s.
    ``cleantype``: residual of cleaned CR pixels against the CR-free frame,
    MAD 10.5 ADU for meanmask, 11.6 medmask, 10.8 idw (sky noise 14.5 ADU).
    False alarms: about 470 pixels in 16.7 M (sigclip 4.5), single noise
    peaks in the sky, none on star cores; astroscrappy does flag the cores of
    stars cut by the edge of the array it is given, which the 32 px tile
    overlap keeps away from the kept interiors (the frame's own edge is in
    the detection border). Undersampled stars look like hits to it: on the
    Spitzer mosaic (FWHM 1.4 px, no CRs) 17,053 pixels were flagged at objlim
    5 and 2,325 at objlim 15; ``star_share`` is for them.
    """
    import astroscrappy

    if data.ndim != 2:
        raise InputError(f"expected a 2-D image, got shape {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    if not settings.enabled:
        return data, np.zeros(data.shape, bool)
    nan, inmask, sig, var, background, kwargs = _scrappy_setup(data, mask, gain, saturation, settings, background, rms)

    cleaned = data.copy()
    crmask = np.zeros(data.shape, bool)
    tiles = list(_tiles(data.shape, settings.tile_px, 32))

    def run(tile):
        (y0, y1, x0, x1), (a, b, c, d) = tile
        m, cl = astroscrappy.detect_cosmics(sig[a:b, c:d], inmask=inmask[a:b, c:d], invar=var[a:b, c:d], **kwargs)
        inner = (slice(y0 - a, y1 - a), slice(x0 - c, x1 - c))
        m = m[inner]
        crmask[y0:y1, x0:x1] = m
        # astroscrappy returns every pixel through a gain round trip: replace only the flagged pixels
        out = cleaned[y0:y1, x0:x1]
        out[m] = cl[inner][m] + background[y0:y1, x0:x1][m]

    total = len(tiles)
    done = 0
    workers = max(1, min(settings.workers, os.cpu_count() or 1, total))
    if workers == 1:
        for tile in tiles:
            check_cancel(cancel)
            run(tile)
            done += 1
            if progress:
                progress(done, total)
    else:
        pending = iter(tiles)
        with ThreadPoolExecutor(workers, thread_name_prefix="rpp-cr") as pool:
            running = set()
            try:
                while True:
                    while len(running) < workers:
                        tile = next(pending, None)
                        if tile is None:
                            break
                        check_cancel(cancel)
                        running.add(pool.submit(run, tile))
                    if not running:
                        break
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()
                        done += 1
                        if progress:
                            progress(done, total)
            except BaseException:
                for fut in running:
                    fut.cancel()
                raise
    crmask &= ~nan
    if star_share is not None:
        keep = spare_star_like_hits(crmask, sig, star_share)
        cleaned[crmask & ~keep] = data[crmask & ~keep]
        crmask = keep
    cleaned[nan] = data[nan]
    return cleaned, crmask


#: comparator networks of astroscrappy's own medians of 5, 7 and 9 (Devillard's ``opt_med``), applied with
#: ``np.minimum``/``np.maximum`` to whole arrays: 4-6x faster than ``np.partition`` on windows of this size
_MEDIAN_NETWORKS = {
    5: ((0, 1), (3, 4), (0, 3), (1, 4), (1, 2), (2, 3), (1, 2)),
    7: ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4)),
    9: ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7), (3, 6),
        (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)),
}


def _median_along(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Running median of ``k`` values along ``axis`` (valid part only: ``k - 1`` shorter)."""
    n = a.shape[axis] - k + 1
    v = [np.take(a, np.arange(i, i + n), axis=axis) for i in range(k)]
    for i, j in _MEDIAN_NETWORKS[k]:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    return v[k // 2]


def _sepmed(a: np.ndarray, k: int) -> np.ndarray:
    """astroscrappy's separable median of the last two axes (rows, i.e. x, first), valid part only."""
    return _median_along(_median_along(a, k, -1), k, -2)


def _lplus(a: np.ndarray) -> np.ndarray:
    """astroscrappy's L+ (Laplacian of the 2x sub-sampled image, clipped at 0, re-binned), valid part only.

    Each of a pixel's four sub-pixels sees itself twice and one horizontal and one vertical
    neighbour; the float32 operations are astroscrappy's, in its order.
    """
    c = a[..., 1:-1, 1:-1]
    c4 = c * np.float32(4)
    left, right, up, down = a[..., 1:-1, :-2], a[..., 1:-1, 2:], a[..., :-2, 1:-1], a[..., 2:, 1:-1]
    zero = np.float32(0)
    out = np.maximum(c4 - c - left - c - up, zero)  # top-left sub-pixel
    out += np.maximum(c4 - c - left - down - c, zero)  # bottom-left
    out += np.maximum(c4 - right - c - down - c, zero)  # bottom-right
    out += np.maximum(c4 - right - c - c - up, zero)  # top-right
    return out / np.float32(4)


def _dilate3(m: np.ndarray) -> np.ndarray:
    """3 x 3 dilation of the last two axes, valid part only (1 px shorter each side)."""
    ny, nx = m.shape[-2] - 2, m.shape[-1] - 2
    out = m[..., 1:1 + ny, 1:1 + nx].copy()
    for dy in range(3):
        for dx in range(3):
            out |= m[..., dy:dy + ny, dx:dx + nx]
    return out


def _lplus_bound(a: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """An upper bound of :func:`_lplus` (its largest sub-pixel term) into ``out``; ``tmp`` same shape."""
    np.multiply(a[1:-1, 1:-1], np.float32(2), out=out)
    out -= np.minimum(a[1:-1, :-2], a[1:-1, 2:], out=tmp)
    out -= np.minimum(a[:-2, 1:-1], a[2:, 1:-1], out=tmp)
    return out


#: side (px) of the cells in which candidate pixels are tested
_CELL = 8
#: frame padding (px): cells, windows (+- 11 px) and their context never leave the padded array
_PAD = 3 * _CELL
#: relative slack of the numpy pre-test against astroscrappy's float32 arithmetic
_PRETEST_SLACK = 0.05


def _variance_at(sig_p, rms, inmask_p, iy, ix, gain, fill):
    """The variance astroscrappy is given (see :func:`_signal_and_variance`) at padded indices ``iy, ix``:
    1 outside the frame (as the stamp mosaic's padding), ``fill`` on masked or invalid pixels."""
    ny, nx = rms.shape
    fy, fx = iy - _PAD, ix - _PAD
    inside = (fy >= 0) & (fy < ny) & (fx >= 0) & (fx < nx)
    r = np.asarray(rms[np.clip(fy, 0, ny - 1), np.clip(fx, 0, nx - 1)], np.float32)
    var = np.square(r, dtype=np.float32)
    if gain is not None and gain > 0:
        var += np.maximum(sig_p[iy, ix], 0) * np.float32(1.0 / gain)
    bad = inmask_p[iy, ix] | ~np.isfinite(var) | ~(var > 0)
    var[bad] = fill
    var[~inside] = 1.0
    return var


def _cover_seeds(sy: np.ndarray, sx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of 3 x 3 px boxes that together hold every seed (greedy, raster order: a hit's track
    runs down or sideways from its first pixel)."""
    order = np.lexsort((sx, sy))
    pending = set(zip(sy[order].tolist(), sx[order].tolist()))
    cy, cx = [], []
    for y, x in zip(sy[order].tolist(), sx[order].tolist()):
        if (y, x) not in pending:
            continue
        cy.append(y + 1)
        cx.append(x)
        for dy in (0, 1, 2):
            for dx in (-1, 0, 1):
                pending.discard((y + dy, x + dx))
    return np.array(cy, int), np.array(cx, int)


def _saturated_stars(sig_p: np.ndarray, satlevel: float) -> np.ndarray | None:
    """astroscrappy's saturated-star mask (``update_mask``): pixels at ``satlevel`` whose 7 x 7 separable
    median exceeds a tenth of it, grown twice by its 5 x 5 cornerless footprint; None when there are none."""
    yy, xx = np.nonzero(sig_p >= satlevel)
    if yy.size == 0:
        return None
    off = np.arange(-3, 4)
    med = _sepmed(sig_p[yy[:, None, None] + off[None, :, None], xx[:, None, None] + off[None, None, :]], 7)[:, 0, 0]
    yy, xx = yy[med > satlevel / 10], xx[med > satlevel / 10]
    foot = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if abs(dy) + abs(dx) < 4]
    grown = {(a + b, c + d) for a, c in foot for b, d in foot}
    out = np.zeros(sig_p.shape, bool)
    ny, nx = out.shape
    for dy, dx in grown:
        out[np.clip(yy + dy, 0, ny - 1), np.clip(xx + dx, 0, nx - 1)] = True
    return out


def _lacosmic_first_pass(sig_p, inmask_p, sat_p, var_of, cy, cx, settings: CosmicRaySettings):
    """astroscrappy's first L.A.Cosmic iteration on the 7 x 7 px round each centre (padded indices).

    Returns the flags (n, 7, 7) and the bad-pixel mask astroscrappy cleans round (n, 11, 11, centre
    +- 5). Same float32 arithmetic and order as astroscrappy 1.3 (``sepmed=True``, ``fsmode='median'``):
    its L+, separable medians (the same comparator networks), noise, fine structure and the two
    growth steps; the window (centre +- 11) holds everything the 7 x 7 flags depend on.
    """
    off = np.arange(-11, 12)
    iy = cy[:, None, None] + off[None, :, None]
    ix = cx[:, None, None] + off[None, None, :]
    iy, ix = np.broadcast_arrays(iy, ix)
    d = sig_p[iy, ix]
    noise = np.sqrt(np.maximum(_sepmed(var_of(iy, ix), 7), np.float32(1e-5)))  # +- 8
    s = _lplus(d[:, 2:-2, 2:-2]) / (np.float32(2) * noise)  # +- 8
    sp = s[:, 3:-3, 3:-3] - _sepmed(s, 7)  # +- 5
    m5 = _sepmed(d, 5)  # +- 9
    f = np.maximum((m5[:, 4:-4, 4:-4] - _sepmed(m5, 9)) / noise[:, 3:-3, 3:-3], np.float32(0.01))  # +- 5
    bad = _dilate3(inmask_p[iy[:, 5:-5, 5:-5], ix[:, 5:-5, 5:-5]])  # +- 5
    if sat_p is not None:
        bad |= sat_p[iy[:, 6:-6, 6:-6], ix[:, 6:-6, 6:-6]]
    good = ~bad
    sigclip = np.float32(settings.sigclip)
    low = np.float32(settings.sigfrac) * sigclip
    seeds = good & (sp > sigclip) & (sp / f > np.float32(settings.objlim))
    grown = _dilate3(seeds) & good[:, 1:-1, 1:-1] & (sp[:, 1:-1, 1:-1] > sigclip)  # +- 4
    flags = _dilate3(grown) & good[:, 2:-2, 2:-2] & (sp[:, 2:-2, 2:-2] > low)  # +- 3
    return flags, bad


def _first_pass_cleaned(sig_p, inmask_p, var_of, cy, cx, satlevel, settings: CosmicRaySettings):
    """:func:`_lacosmic_first_pass` flags and the flagged pixels' values cleaned as astroscrappy's
    ``meanmask`` does: the mean of the unflagged, unmasked pixels within 2 px (float64 sum)."""
    flags, bad = _lacosmic_first_pass(sig_p, inmask_p, _saturated_stars(sig_p, satlevel), var_of, cy, cx, settings)
    clean = np.zeros(flags.shape, np.float32)
    w, a, b = np.nonzero(flags)
    if w.size == 0:
        return flags, clean
    py, px = cy[w] + a - 3, cx[w] + b - 3
    width = sig_p.shape[1]
    flagged = np.unique(py * width + px)
    total = np.zeros(w.size)
    count = np.zeros(w.size)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            use = ~(bad[w, a + 2 + dy, b + 2 + dx] | np.isin((py + dy) * width + px + dx, flagged))
            total += np.where(use, sig_p[py + dy, px + dx], 0.0)
            count += use
    # no usable pixel round it: astroscrappy's "background level", the median of the good signal (~0 here)
    good = sig_p[::4, ::4][~inmask_p[::4, ::4]]
    level = float(np.median(good)) if good.size else 0.0
    clean[w, a, b] = np.where(count > 0, total / np.maximum(count, 1), level)
    return flags, clean


def _scrappy_windows(sig_p, inmask_p, var_of, cy, cx, kwargs):
    """astroscrappy itself (``niter`` > 1) on a mosaic of windows round the centres (padded indices):
    flags and cleaned values on the ``2 k + 1`` px square round each centre, ``k = 3 + 8 (niter - 1)``.

    Each iteration after the first cleans the flagged pixels and looks again: the L.A.Cosmic values
    change within 6 px of a cleaned pixel and a flag reaches 2 px from a seed, so the flags can grow by
    8 px per iteration, and the context each needs by as much.
    """
    import astroscrappy

    k = 3 + 8 * (kwargs["niter"] - 1)
    h = k + 8 * kwargs["niter"]
    m, size = len(cy), 2 * h + 1
    off = np.arange(-h, h + 1)
    iy = cy[:, None, None] + off[None, :, None]
    ix = cx[:, None, None] + off[None, None, :]
    iy, ix = np.broadcast_arrays(iy, ix)
    # beyond the padding (many iterations, a source at the edge): masked, as the padding is
    outside = (iy < 0) | (iy >= sig_p.shape[0]) | (ix < 0) | (ix >= sig_p.shape[1])
    iy, ix = np.clip(iy, 0, sig_p.shape[0] - 1), np.clip(ix, 0, sig_p.shape[1] - 1)
    data, bad, var = sig_p[iy, ix], inmask_p[iy, ix] | outside, var_of(iy, ix)
    data[outside], var[outside] = 0.0, 1.0
    cols = int(np.ceil(np.sqrt(m)))
    rows = (m + cols - 1) // cols
    pad = rows * cols - m

    def mosaic(a, value):
        a = np.concatenate([a, np.full((pad, size, size), value, a.dtype)]) if pad else a
        return a.reshape(rows, cols, size, size).transpose(0, 2, 1, 3).reshape(rows * size, cols * size)

    def unmosaic(a):
        a = a.reshape(rows, size, cols, size).transpose(0, 2, 1, 3).reshape(rows * cols, size, size)
        return a[:m, h - k:h + k + 1, h - k:h + k + 1]

    mos_cr, mos_clean = astroscrappy.detect_cosmics(mosaic(data, 0.0), inmask=mosaic(bad, True),
                                                    invar=mosaic(var, 1.0), **kwargs)
    return unmosaic(mos_cr).astype(bool), unmosaic(mos_clean)


def _candidate_cells(sig_p, near, rms, fill, settings: CosmicRaySettings, shape):
    """Step (1) of :func:`remove_cosmics_near`: of the pixels ``near`` (padded indices; narrowed in
    place), those whose L+ exceeds ``2 sigclip`` times the frame's lowest noise (astroscrappy's ``s``
    can only fall below that bound), and the 8 x 8 px cells holding them (their corners)."""
    ny, nx = shape
    P, C = _PAD, _CELL
    r_lo = float(np.min(rms))
    if not (np.isfinite(r_lo) and r_lo > 0):  # invalid RMS pixels get the fill variance
        finite = rms[np.isfinite(rms) & (rms > 0)]
        r_lo = float(np.min(finite)) if finite.size else 1.0
    var_lo = min(r_lo**2, float(fill))
    slack = 1 - _PRETEST_SLACK
    thr = 2 * settings.sigclip * np.sqrt(max(var_lo, 1e-5)) * slack
    # within 3 px of the frame's edge the noise median also sees the padding's variance (1)
    thr_edge = 2 * settings.sigclip * np.sqrt(max(min(var_lo, 1.0), 1e-5)) * slack
    cand = near  # narrowed in place, in blocks of rows: no whole-frame temporaries
    rows = 64
    buf = np.empty((2, rows, sig_p.shape[1] - 2), np.float32)
    edge_cols = [P - 1, P, P + 1, P + nx - 4, P + nx - 3, P + nx - 2]  # frame columns 0-2, nx-3..nx-1 in lp
    for y0 in range(1, sig_p.shape[0] - 1, rows):
        y1 = min(y0 + rows, sig_p.shape[0] - 1)
        lp = _lplus_bound(sig_p[y0 - 1:y1 + 1], buf[0, :y1 - y0], buf[1, :y1 - y0])
        test = lp > thr
        test[:, edge_cols] |= lp[:, edge_cols] > thr_edge
        edge_rows = [i for i, y in enumerate(range(y0, y1)) if P <= y < P + 3 or P + ny - 3 <= y < P + ny]
        if edge_rows:
            test[edge_rows] |= lp[edge_rows] > thr_edge
        cand[y0:y1, 1:-1] &= test
    cand[0] = cand[-1] = False
    cand[:, 0] = cand[:, -1] = False
    cy, cx = np.nonzero(cand)
    # the exact L+ of those pixels against the same thresholds
    lpc = _lplus(np.stack([sig_p[cy + dy, cx + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1).reshape(-1, 3, 3))
    ok = lpc[:, 0, 0] > np.where((cy < P + 3) | (cy >= P + ny - 3) | (cx < P + 3) | (cx >= P + nx - 3), thr_edge, thr)
    cand[cy[~ok], cx[~ok]] = False
    cy, cx = cy[ok], cx[ok]
    cells = np.unique((cy // C) * (sig_p.shape[1] // C + 1) + cx // C)
    width = sig_p.shape[1] // C + 1
    cell_y, cell_x = (cells // width) * C, (cells % width) * C
    return cand, cell_y, cell_x


def _seed_pixels(sig_p, cand, cell_y, cell_x, rms, inmask_p, gain, fill, settings: CosmicRaySettings, chunk,
                 progress, cancel):
    """Step (2) of :func:`remove_cosmics_near`: astroscrappy's seed test in numpy on the cells (cell + 6 px
    of context), with 5 % slack; the seeds' padded indices and the number of progress steps."""
    C = _CELL
    slack = 1 - _PRETEST_SLACK
    h = 6
    off = np.arange(-h, C + h)
    seeds_y, seeds_x = [], []
    steps = (len(cell_y) + chunk - 1) // chunk + 1
    for k in range(0, len(cell_y), chunk):
        check_cancel(cancel)
        if progress and k:
            progress(k // chunk, steps)
        iy = cell_y[k:k + chunk, None, None] + off[None, :, None]
        ix = cell_x[k:k + chunk, None, None] + off[None, None, :]
        iy, ix = np.broadcast_arrays(iy, ix)
        s_ = sig_p[iy, ix]
        m5 = _sepmed(s_, 5)  # cell +- 4
        fine = m5[:, 4:-4, 4:-4] - _sepmed(m5, 9)  # the fine structure f times the noise
        # sp <= s = L+ / (2 noise) and f >= fine / noise: sp / f <= L+ / (2 fine), whatever the noise; this
        # drops the stars' cores before the costlier noise median
        seed = cand[iy[:, h:-h, h:-h], ix[:, h:-h, h:-h]]
        seed &= (fine <= 0) | (_lplus(s_[:, 5:-5, 5:-5]) > 2 * settings.objlim * fine * slack)
        busy = seed.any(axis=(1, 2))
        iy, ix, s_, seed = iy[busy], ix[busy], s_[busy], seed[busy]
        noise = np.sqrt(np.maximum(_sepmed(_variance_at(sig_p, rms, inmask_p, iy, ix, gain, fill), 7), 1e-5))
        s = _lplus(s_[:, 2:-2, 2:-2]) / (2 * noise)  # cell +- 3
        sp = s[:, 3:-3, 3:-3] - _sepmed(s, 7)
        f = np.maximum(fine[busy] / noise[:, 3:-3, 3:-3], 0.01)
        seed &= (sp > settings.sigclip * slack) & (sp / f > settings.objlim * slack)
        seeds_y.append(iy[:, h:-h, h:-h][seed])
        seeds_x.append(ix[:, h:-h, h:-h][seed])
    if progress:
        progress(steps - 1, steps)
    return (np.concatenate(seeds_y) if seeds_y else np.zeros(0, int),
            np.concatenate(seeds_x) if seeds_x else np.zeros(0, int), steps)


def remove_cosmics_near(
    data: np.ndarray,
    mask: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    radius_px: float,
    gain: float | None,
    saturation: float | None,
    settings: CosmicRaySettings,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    chunk: int = 2048,
    *,
    background: np.ndarray | None = None,
    rms: np.ndarray | None = None,
    star_share: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic rays found and cleaned only where they change a measurement: round the sources.

    Same detector, noise model and parameters as :func:`remove_cosmics` (background-relative
    signal, ``star_share``), kept only inside the squares of half-size ``ceil(radius_px)``
    round each source (0-based ``x``, ``y``; ``radius_px`` the largest aperture / PSF fit
    radius). Cosmic rays in the local-background annulus need no mask there (its
    sigma-clipped median rejects them), and hits elsewhere touch no measurement.

    How: astroscrappy flags a pixel only within 2 px of a "seed", a pixel whose
    Laplacian-to-noise ``sp`` exceeds ``sigclip`` and whose ratio to the fine structure
    ``sp / f`` exceeds ``objlim``. Seeds are looked for in numpy, each step keeping every
    pixel the next could call a seed: (1) ``L+ > 2 sigclip`` times the frame's lowest
    noise, near the sources (stars' cores pass, with the hits); (2) on the 8 x 8 px cells
    holding such pixels, ``L+ > 2 objlim (m5 - m9)`` (``sp / f`` can never exceed it,
    whatever the noise: this drops the stars' cores), then astroscrappy's own ``sp`` and
    ``f`` with 5 % slack; (3) astroscrappy's first iteration on 23 x 23 px windows round
    the seeds (:func:`_lacosmic_first_pass`: its float32 arithmetic, median networks,
    growth and ``meanmask`` cleaning in numpy), or astroscrappy itself on larger windows
    when ``niter`` > 1. The flags equal those of one astroscrappy call on the whole frame,
    inside the squares (tests/test_preprocess.py checks it on a crowded frame).

    Why: astroscrappy costs ~0.6 s of CPU per megapixel, whatever the window size. The
    previous version ran it on a 35 x 35 px stamp per source: on the 4096^2 benchmark
    frame A (6,575 detections) 8.1 Mpx and 5.3-5.7 s of CPU for the stage, 17.7 s with
    22,490 detections (overlapping stamps processed again); now 0.65-1.0 s and 1.4-1.8 s,
    the same hit masks (bench/cosmics.py). Running astroscrappy on the ~1,300 seed windows
    instead of (3) in numpy cost 0.55 s more on frame A.

    Returns
    -------
    cleaned : float32 copy of ``data`` with flagged pixels replaced (meanmask)
    crmask : bool array, ``True`` on cosmic-ray pixels (only near sources)
    """
    data = np.asarray(data, dtype=np.float32)
    crmask = np.zeros(data.shape, bool)
    cleaned = data.copy()
    n = len(x)
    if not settings.enabled or n == 0:
        return cleaned, crmask
    ny, nx = data.shape
    P = _PAD
    nan = nonfinite(data)
    inmask = nan if mask is None else (np.asarray(mask, bool) | nan)
    if background is None or rms is None:
        import sep_x

        d = np.where(inmask, np.float32(0), data).astype(np.float32)
        bkg = sep_x.Background(np.ascontiguousarray(d), mask=np.ascontiguousarray(inmask))
        background, rms = bkg.back(dtype=np.float32), bkg.rms(dtype=np.float32)
    background = np.asarray(background, np.float32)
    rms = np.asarray(rms, np.float32)
    # the signal padded by masked zeros, as the frame's edge looked to the stamp mosaic
    sig_p = np.zeros((ny + 2 * P, nx + 2 * P), np.float32)
    sig = sig_p[P:P + ny, P:P + nx]
    np.subtract(data, background, out=sig, dtype=np.float32)
    sig[inmask] = 0.0
    inmask_p = np.ones(sig_p.shape, bool)
    inmask_p[P:P + ny, P:P + nx] = inmask
    kwargs = _scrappy_kwargs(sig, inmask, saturation, background, settings)
    # the fill of masked pixels' variance: a typical variance (every 16th pixel's)
    r16 = rms.ravel()[::16]
    v16 = np.square(r16, dtype=np.float32)
    if gain is not None and gain > 0:
        v16 += np.maximum(sig.ravel()[::16], 0) / np.float32(gain)
    good16 = ~inmask.ravel()[::16] & np.isfinite(v16) & (v16 > 0)
    fill = np.float32(np.median(v16[good16])) if good16.any() else np.float32(1)

    # where a flag is kept (stamp interiors) and where a seed can flag it (2 px more)
    inner = int(np.ceil(radius_px))
    keep = np.zeros(sig_p.shape, bool)
    near = np.zeros(sig_p.shape, bool)
    xc = np.round(np.asarray(x, float)).astype(int) + P
    yc = np.round(np.asarray(y, float)).astype(int) + P
    ok = (xc >= P - inner) & (xc < nx + P + inner) & (yc >= P - inner) & (yc < ny + P + inner)
    for a, b in zip(yc[ok], xc[ok]):
        keep[a - inner:a + inner + 1, b - inner:b + inner + 1] = True
        near[a - inner - 2:a + inner + 3, b - inner - 2:b + inner + 3] = True
    keep &= ~inmask_p
    near &= ~inmask_p

    # (1) candidate pixels and their cells, (2) the seeds among them
    cand, cell_y, cell_x = _candidate_cells(sig_p, near, rms, fill, settings, (ny, nx))
    check_cancel(cancel)
    sy, sx, steps = _seed_pixels(sig_p, cand, cell_y, cell_x, rms, inmask_p, gain, fill, settings, chunk, progress, cancel)

    # (3) astroscrappy's first iteration on windows, each round up to 3 x 3 seeds: the flags within 2 px of
    # the seeds (3 px of the window's centre) depend only on the data within 11 px of the centre
    sy, sx = _cover_seeds(sy, sx)
    if len(sy):
        check_cancel(cancel)

        def var_of(iy, ix):
            return _variance_at(sig_p, rms, inmask_p, iy, ix, gain, fill)

        if settings.niter == 1:
            flags, clean = _first_pass_cleaned(sig_p, inmask_p, var_of, sy, sx, kwargs["satlevel"], settings)
        else:
            flags, clean = _scrappy_windows(sig_p, inmask_p, var_of, sy, sx, kwargs)
        d = np.arange(flags.shape[1]) - flags.shape[1] // 2
        kiy = np.broadcast_to(sy[:, None, None] + d[None, :, None], flags.shape)
        kix = np.broadcast_to(sx[:, None, None] + d[None, None, :], flags.shape)
        hit = flags & keep[kiy, kix]
        if hit.any():
            yy, xx = kiy[hit] - P, kix[hit] - P
            crmask[yy, xx] = True
            cleaned[yy, xx] = clean[hit] + background[yy, xx]
    if progress:
        progress(steps, steps)
    crmask &= ~nan
    if star_share is not None:
        kept_px = spare_star_like_hits(crmask, sig, star_share)
        cleaned[crmask & ~kept_px] = data[crmask & ~kept_px]
        crmask = kept_px
    return cleaned, crmask


def estimate_background(data: np.ndarray, mask: np.ndarray | None, settings: BackgroundSettings, *,
                        nan: np.ndarray | None = None) -> Background:
    """2-D background and RMS maps with ``sep_x.Background`` (SExtractor's estimator).

    Parameters
    ----------
    data : 2-D array, ADU (cosmic rays already cleaned).
    mask : bool array or None; masked pixels (and non-finite ones) are not used.
    settings : BackgroundSettings
        ``box`` (mesh size, px) and ``filter`` (median filter size, meshes).
    nan : bool array or None
        The frame's non-finite pixels when already known (:attr:`Masks.nan`): not computed again.

    Notes
    -----
    sep_x: 0.5-0.7 s on a 4096x4096 float32 frame against 6.7 s for
    photutils ``Background2D`` with the same bias (PERFORMANCE.md); measured
    here 0.5 s, level within 0.1% of the injected sky.
    """
    import sep_x

    data = np.ascontiguousarray(data, dtype=np.float32)
    if nan is None:
        nan = nonfinite(data)
    has_nan = bool(nan.any())
    if mask is None:
        m = nan
    else:
        # the union only when it adds pixels: the pipeline's mask already holds the non-finite ones
        m = np.asarray(mask, bool)
        if has_nan:
            m = m | nan
    if m.all():
        raise InputError("every pixel is masked: no background can be estimated (check the saturation level and border)")
    if has_nan:
        # sep skips masked pixels, but NaNs must not reach its arithmetic
        data = np.where(nan, np.float32(0), data)
    box = int(min(settings.box, max(data.shape)))
    _heap_for_buffers(data.size)
    bkg = sep_x.Background(data, mask=np.ascontiguousarray(m), bw=box, bh=box,
                           fw=settings.filter, fh=settings.filter)
    back = bkg.back(dtype=np.float32)
    rms = bkg.rms(dtype=np.float32)
    # a zero RMS (flat synthetic or fully masked mesh) would make S/N infinite downstream
    if not np.min(rms) > 0:  # one reduction; the mask only when needed (a NaN minimum lands here too)
        bad = ~(rms > 0)
        positive = rms[~bad]
        rms[bad] = np.median(positive) if positive.size else 1.0
    return Background(background=back, rms=rms, global_bkg=float(bkg.globalback), global_rms=float(bkg.globalrms))


def _heap_for_buffers(nbytes: int) -> None:
    """Have glibc serve blocks up to ``nbytes`` (at most its 32 MB cap) from the heap, not from fresh mmaps.

    ``sep_x.Background`` allocates and frees a buffer of about 1 MB per row of meshes on a
    4k frame; above glibc's mmap threshold (128 kB until a larger block is freed) each
    one is a new mapping and 256 page faults: 236 -> 182 ms of CPU for the call, measured
    first in a fresh process. Freeing a block of that size raises the dynamic threshold (a
    side effect make_masks' 16 MB temporaries used to have). Elsewhere it costs nothing.
    """
    block = np.empty(max(int(nbytes), 0), np.uint8)  # not touched: no page faults
    del block


def measurable_image(data: np.ndarray, masks: Masks, background: Background, exposure: ExposureValues) -> MeasurableImage:
    """The frame ready to measure: background subtracted (float32), the masks, the exposure values.

    ``exptime`` is what magnitudes divide by (:attr:`ExposureValues.exptime_magnitudes`).
    """
    return MeasurableImage(
        data=(data - background.background).astype(np.float32, copy=False), rms=background.rms, mask=masks.combined,
        saturated=masks.saturated, saturation=masks.saturation_level, gain=exposure.gain,
        read_noise=exposure.read_noise, exptime=exposure.exptime_magnitudes, background=background.global_bkg,
        background_rms=background.global_rms, border_px=masks.border_px)


def clean_cosmic_rays(raw: np.ndarray, image: MeasurableImage, background: Background, masks: Masks,
                      settings: CosmicRaySettings, x=None, y=None, radius_px: float = 0.0,
                      progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                      star_share: float | None = None) -> tuple[MeasurableImage, np.ndarray]:
    """Cosmic rays found on the frame's signal above its background, and the measurable image
    rebuilt from the cleaned pixels.

    ``settings.scope == "sources"``: :func:`remove_cosmics_near` round the 0-based
    positions ``x``, ``y`` out to ``radius_px`` (the largest aperture or PSF fit
    radius); ``"frame"``: :func:`remove_cosmics` everywhere. ``star_share``: see
    :class:`CosmicRayPlan`. The image's mask grows by the hits. Returns ``(image, crmask)``.
    """
    protect = masks.nan | masks.saturated
    # a gain left out (plates, calibrated units) is None: the noise model is then the RMS map alone
    gain = image.gain
    # on the background-relative signal with the RMS map as noise: the frame's pedestal must not matter (issue 14)
    kw = dict(progress=progress, cancel=cancel, background=background.background, rms=background.rms,
              star_share=star_share)
    if settings.scope == "frame":
        cleaned, crmask = remove_cosmics(raw, protect, gain, image.saturation, settings, **kw)
    else:
        cleaned, crmask = remove_cosmics_near(raw, protect, np.asarray(x), np.asarray(y), radius_px, gain,
                                              image.saturation, settings, **kw)
    data = (cleaned - background.background).astype(np.float32, copy=False)
    return dataclasses.replace(image, data=data, mask=image.mask | crmask), crmask
