"""Whether a frame needs a new WCS: the header WCS checked against the sky."""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..catalogs.local import read_reference
from ..settings import AstrometrySettings
from ..image.pixscale import wcs_pixel_scale
from .matching import frame_shape, match_xy, refs_in_frame, sky_sep_arcsec, source_arrays


def wcs_sky_offsets(sources: Table, wcs: WCS, refcat: Table, radius_arcsec: float, shape=None,
              n_sources: int = 300) -> tuple[float, int, float]:
    """Match bright detections to the reference through ``wcs``.

    Returns
    -------
    (median_offset_arcsec, n_matched, rms_arcsec)
        nan offsets when nothing matched.
    """
    ref = read_reference(refcat) if not {"ra", "dec", "mag"} <= set(refcat.colnames) else refcat
    x, y, _ = source_arrays(sources)
    x, y = x[:n_sources], y[:n_sources]
    shape = frame_shape(wcs, x, y, shape)
    scale = wcs_pixel_scale(wcs) or float("nan")
    idx, rx, ry = refs_in_frame(wcs, ref, shape, margin_px=radius_arcsec / scale)
    idx = idx[: max(3 * len(x), 50)]
    i1, i2, _ = match_xy(x, y, rx[idx], ry[idx], radius_arcsec / scale)
    if len(i1) == 0:
        return float("nan"), 0, float("nan")
    sep = sky_sep_arcsec(wcs, x[i1], y[i1], ref["ra"][idx[i2]], ref["dec"][idx[i2]])
    return float(np.median(sep)), int(len(i1)), float(np.sqrt(np.mean(sep**2)))


def _quick_sources(data: np.ndarray, n: int = 300) -> Table:
    """Brightest compact sources of a frame, for the WCS check only (sep is ~10x faster than photutils)."""
    import sep_x

    d = np.ascontiguousarray(data, dtype=np.float32)
    mask = ~np.isfinite(d)
    if mask.any():
        d = np.where(mask, np.float32(np.nanmedian(d)), d)
    bkg = sep_x.Background(d, mask=mask)
    sub = d - bkg.back()
    obj = None
    for thresh in (10.0, 30.0, 100.0):
        try:
            obj = sep_x.extract(sub, thresh, err=bkg.globalrms, minarea=5, mask=mask)
            break
        except Exception:  # sep gives up on crowded or nebulous frames (pixel stack / deblend overflow)
            continue
    if obj is None:
        return Table({"x": [], "y": [], "flux": []}, dtype=[float, float, float])
    t = Table({"x": obj["x"], "y": obj["y"], "flux": obj["flux"]})
    t.sort("flux", reverse=True)
    return t[:n]


# ---------------------------------------------------------------- when to solve

def needs_solving(frame, meta, settings: AstrometrySettings, refcat: Table | None = None,
                  sources: Table | None = None) -> tuple[bool, str]:
    """Decide whether the frame needs a new WCS, and say why.

    Parameters
    ----------
    frame : rpp_core.image.Frame
        Uses ``data``, ``wcs`` and ``wcs_status`` only.
    meta : rpp_core.image.ObservationMeta
        Uses ``pixel_scale`` (arcsec/px) when present.
    settings : AstrometrySettings
    refcat : astropy.table.Table, optional
        Reference stars (``ra``, ``dec``, ``mag``); with it the WCS is checked
        against the sky: median offset of matched bright stars above
        ``check_tolerance_arcsec``, or fewer than ``min_matches`` matches,
        means re-solve.
    sources : Table, optional
        Detections (``x``, ``y``, flux-like column) to check with; without
        them the brightest stars are found here with sep.

    Returns
    -------
    (bool, str)
        Whether to solve, and the reason in words for the log.
    """
    if settings.solver == "none":
        return False, "solver = none: the header WCS is used as it is"
    if settings.solve == "never":
        return False, "solve = never: the header WCS is used as it is"
    if settings.solve == "always":
        return True, "solve = always"
    wcs = getattr(frame, "wcs", None)
    status = str(getattr(frame, "wcs_status", "ok" if wcs is not None else "missing"))
    if status.startswith("invalid"):
        return True, f"the header WCS is {status}"
    if wcs is None or status == "missing":
        return True, "the header has no WCS"
    if not wcs.has_celestial:
        return True, "the header WCS has no celestial axes"
    scale = wcs_pixel_scale(wcs)
    if scale is None:
        return True, "the header WCS has no usable pixel scale (singular or non-finite CD/PC matrix)"
    expected = getattr(meta, "pixel_scale", None)
    if expected and abs(scale / expected - 1.0) > settings.scale_tolerance:
        return True, (f"the header WCS pixel scale {scale:.3f}\"/px differs from the expected "
                      f"{expected:.3f}\"/px by more than {settings.scale_tolerance:.0%}")
    if refcat is None or len(refcat) == 0:
        return False, "header WCS present (not checked: no reference catalogue)"
    data = getattr(frame, "data", None)
    if data is None:
        return False, "header WCS present (not checked: no pixel data)"
    srcs = sources if sources is not None and len(sources) else _quick_sources(data)
    if len(srcs) < settings.min_matches:
        return False, f"header WCS present (not checked: only {len(srcs)} bright stars found)"
    radius = max(3.0 * settings.check_tolerance_arcsec, 5.0)
    med, n, _ = wcs_sky_offsets(srcs, wcs, refcat, radius, shape=data.shape)
    if n < settings.min_matches:
        return True, (f"the header WCS matches only {n} reference stars within {radius:.1f}\" "
                      f"(need {settings.min_matches})")
    if med > settings.check_tolerance_arcsec:
        return True, (f"the header WCS is off: median offset {med:.2f}\" of {n} matched stars exceeds "
                      f"check_tolerance_arcsec = {settings.check_tolerance_arcsec}\"")
    return False, f"header WCS checked: median offset {med:.2f}\" over {n} reference stars"
