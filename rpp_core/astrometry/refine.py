"""WCS refinement against a reference catalogue: TAN, TAN-SIP when it pays; the better of old and new is kept.

A rough starting WCS is first brought close with stdpipe's quad-hash matcher.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..catalogs.local import read_reference
from ..settings import AstrometrySettings
from ..image.pixscale import wcs_pixel_scale
from .matching import frame_shape, match_xy, refs_in_frame, sky_sep_arcsec, source_arrays
from .result import SolveResult
from .wcsfit import fit_wcs


def _match_and_measure(wcs: WCS, x, y, ref: Table, shape, radius_arcsec: float):
    scale = wcs_pixel_scale(wcs) or float("nan")
    idx, rx, ry = refs_in_frame(wcs, ref, shape, margin_px=radius_arcsec / scale)
    i1, i2, _ = match_xy(x, y, rx[idx], ry[idx], radius_arcsec / scale)
    j = idx[i2]
    if len(i1) == 0:
        return i1, j, np.array([], float)
    sep = sky_sep_arcsec(wcs, x[i1], y[i1], np.asarray(ref["ra"])[j], np.asarray(ref["dec"])[j])
    return i1, j, sep


def _rms(sep: np.ndarray) -> float:
    return float(np.sqrt(np.mean(sep**2))) if len(sep) else float("inf")


def refine(sources: Table, wcs: WCS, refcat: Table, settings: AstrometrySettings,
           shape: tuple[int, int] | None = None) -> SolveResult:
    """Refine a WCS against a reference catalogue; keep the better of old and new.

    A WCS whose bright stars do not land on the reference within
    ``check_tolerance_arcsec`` is first brought close with
    :func:`stdpipe.astrometry.refine_wcs_quadhash` (pattern matching: copes with
    offsets of tens of arcsec and rotations of degrees). Then matches are fitted
    with a TAN WCS, iterating with a shrinking match radius and 3-sigma
    clipping; a TAN-SIP fit of order ``sip_order`` replaces it when it lowers the
    RMS by more than 15% with enough stars (3 per coefficient).

    Parameters
    ----------
    sources : Table
        ``x``, ``y`` (0-based px) and a flux-like column.
    wcs : astropy.wcs.WCS
        Starting WCS.
    refcat : Table
        ``ra``, ``dec`` (deg) and ``mag`` (other names are recognised, see
        :func:`rpp_core.catalogs.local.read_reference`).
    settings : AstrometrySettings
    shape : (ny, nx), optional
        Image shape; taken from ``wcs.pixel_shape`` or the sources otherwise.

    Returns
    -------
    SolveResult
        ``method`` is ``"kept original"`` when the starting WCS was better;
        ``.wcs`` is then the very object passed in.
    """
    t0 = time.monotonic()
    ref = read_reference(refcat)
    x, y, flux = source_arrays(sources)
    x, y, flux = x[:3000], y[:3000], flux[:3000]
    shape = frame_shape(wcs, x, y, shape)
    ny, nx = shape
    lines: list[str] = []
    tol = settings.check_tolerance_arcsec
    wcs0 = wcs.celestial
    wcs0.pixel_shape = (nx, ny)

    # quality of the starting WCS at a radius both candidates are judged with
    judge_r = max(2.0 * tol, 2.0)
    _, _, sep0 = _match_and_measure(wcs0, x, y, ref, shape, judge_r)
    med0 = float(np.median(sep0)) if len(sep0) else float("inf")
    start = wcs0
    if len(sep0) < settings.min_matches or med0 > tol:
        import stdpipe.astrometry as sa

        obj = Table({"x": x, "y": y, "flux": np.where(np.isfinite(flux), flux, 0.0)})
        idx, _, _ = refs_in_frame(wcs0, ref, shape, margin_px=0.1 * max(nx, ny))
        cat = ref[idx]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                coarse = sa.refine_wcs_quadhash(obj, cat, wcs0, sr=max(2.0 * tol, 3.0) / 3600.0, order=1,
                                                cat_col_ra="ra", cat_col_dec="dec", cat_col_mag="mag",
                                                obj_col_flux="flux", verbose=False)
        except Exception as exc:  # stdpipe raises plain exceptions on degenerate inputs
            coarse = None
            lines.append(f"refine: pattern matching failed ({exc})")
        if coarse is not None and coarse.has_celestial:
            coarse = coarse.celestial
            coarse.pixel_shape = (nx, ny)
            start = coarse
            lines.append("refine: starting WCS was off; pattern matching (stdpipe quad-hash) brought it close")
        else:
            lines.append("refine: starting WCS off and pattern matching found no solution; fitting from it anyway")

    current, radius = start, max(2.0 * tol, 2.0)
    best_lin = None
    for _ in range(5):
        i1, j, sep = _match_and_measure(current, x, y, ref, shape, radius)
        if len(i1) < max(settings.min_matches, 4):
            break
        keep = sep <= max(3.0 * 1.4826 * np.median(np.abs(sep - np.median(sep))) + np.median(sep), 0.05)
        if keep.sum() < max(settings.min_matches, 4):
            keep[:] = True
        new = fit_wcs(x[i1[keep]], y[i1[keep]], np.asarray(ref["ra"])[j[keep]],
                           np.asarray(ref["dec"])[j[keep]], None)
        new.pixel_shape = (nx, ny)
        current = new
        best_lin = new
        radius = max(min(radius, 4.0 * _rms(sep[keep])), 1.0)
    if best_lin is None:
        lines.append(f"refine: fewer than {settings.min_matches} reference stars matched: WCS not refined")
        rms0 = _rms(sep0)
        return SolveResult(wcs, rms0 if np.isfinite(rms0) else float("nan"), int(len(sep0)), "kept original",
                           lines, wcs_pixel_scale(wcs0) or float("nan"), time.monotonic() - t0)

    # final matches with the linear fit, then see whether distortion terms pay
    i1, j, sep = _match_and_measure(best_lin, x, y, ref, shape, radius)
    keep = sep <= 3.0 * max(_rms(sep), 0.01)
    rms_lin = _rms(sep[keep])
    chosen, label, chosen_rms, chosen_n = best_lin, "TAN", rms_lin, int(keep.sum())
    order = settings.sip_order
    if order >= 2:
        n_coef = sum(1 for p in range(order + 1) for q in range(order + 1) if 2 <= p + q <= order) * 2
        if keep.sum() >= 3 * (n_coef + 6):
            sip = fit_wcs(x[i1[keep]], y[i1[keep]], np.asarray(ref["ra"])[j[keep]],
                               np.asarray(ref["dec"])[j[keep]], order)
            sip.pixel_shape = (nx, ny)
            si1, sj, ssep = _match_and_measure(sip, x, y, ref, shape, radius)
            skeep = ssep <= 3.0 * max(_rms(ssep), 0.01)
            rms_sip = _rms(ssep[skeep])
            lines.append(f"refine: TAN RMS {rms_lin:.3f}\" vs TAN-SIP {order} RMS {rms_sip:.3f}\"")
            if rms_sip < 0.85 * rms_lin and skeep.sum() >= 0.9 * keep.sum():
                chosen, label, chosen_rms, chosen_n = sip, f"TAN-SIP {order}", rms_sip, int(skeep.sum())
        else:
            lines.append(f"refine: {int(keep.sum())} matches are too few for SIP order {order}: TAN only")

    # keep the better of old and new, judged at the same radius
    _, _, sep_new = _match_and_measure(chosen, x, y, ref, shape, judge_r)
    _, _, sep_old = _match_and_measure(wcs0, x, y, ref, shape, judge_r)
    new_ok = len(sep_new) >= settings.min_matches
    old_better = (len(sep_old) >= settings.min_matches and len(sep_old) >= len(sep_new)
                  and np.median(sep_old) <= np.median(sep_new)) or not new_ok
    if old_better:
        lines.append(f"refine: kept the original WCS ({len(sep_old)} matches, median offset "
                     f"{np.median(sep_old) if len(sep_old) else float('nan'):.2f}\")")
        return SolveResult(wcs, _rms(sep_old) if len(sep_old) else float("nan"), int(len(sep_old)),
                           "kept original", lines, wcs_pixel_scale(wcs0) or float("nan"), time.monotonic() - t0)
    scale = wcs_pixel_scale(chosen) or float("nan")
    lines.append(f"refine: {label} fit to {chosen_n} reference stars, RMS {chosen_rms:.3f}\", "
                 f"pixel scale {scale:.4f}\"/px")
    return SolveResult(chosen, chosen_rms, chosen_n, f"refine {label}", lines, scale, time.monotonic() - t0)
