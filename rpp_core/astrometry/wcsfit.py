"""A TAN or TAN-SIP WCS fitted to matched pixel and sky positions: astropy's
``fit_wcs_from_points(proj_point="center", projection="TAN")`` solved directly.

Why not astropy's function: it minimises with ``scipy.optimize.least_squares``
and finite-difference Jacobians (and builds an ``astropy.modeling`` SIP model
at every SIP evaluation); on the bundled sample that was 0.08 s a refinement,
and its first call imported scipy.optimize and astropy.modeling (0.19 s more).
Both of its models are linear in disguise, so the same minimum is found here
with a few linear least-squares solves:

* TAN: the intermediate (tangent-plane) coordinates are an affine function of
  the pixel; astropy's residuals are on the sky (``dlon cos(lat)``, ``dlat``),
  so a tangent-plane fit is polished with Gauss-Newton steps on those residuals.
* TAN-SIP of degree n: astropy fits ``CD (u + 1 - CRPIX + f(u - CRPIX))`` to the
  tangent-plane coordinates (``u`` 0-based; its own one-pixel convention, kept
  so the result is its result), which spans every 2-D polynomial of degree n
  in ``u``; the polynomial is fitted, then CRPIX is the point where the
  polynomial takes the form above, CD its gradient there and the SIP
  coefficients ``A``, ``B`` its higher terms.

When the minimum would put CRPIX outside the points' bounding box (astropy
bounds it there) or the points cannot fix the fit, astropy's function is used.
Conventions: ``x``, ``y`` 0-based pixels; ``ra``, ``dec`` ICRS degrees.
"""

from __future__ import annotations

import warnings
from math import comb

import numpy as np
from astropy.wcs import WCS, Sip

from .matching import angular_separation_rad

#: Gauss-Newton steps of the TAN fit stop when the largest parameter change, in units of
#: its own size (CD) or pixels (CRPIX), is below this
_TOL = 1e-12
_MAX_STEPS = 8


def _center(lon: np.ndarray, lat: np.ndarray) -> tuple[float, float]:
    """Mid-point of the great circle from (min lon, max lat) to (max lon, min lat), deg:
    astropy's ``proj_point="center"`` (its position_angle, separation and offset_by formulas)."""
    lon1, lat1, lon2, lat2 = np.radians([lon.min(), lat.max(), lon.max(), lat.min()])
    dlon = lon2 - lon1
    pa = np.arctan2(np.sin(dlon) * np.cos(lat2), np.sin(lat2) * np.cos(lat1) - np.cos(lat2) * np.sin(lat1) * np.cos(dlon))
    dist = angular_separation_rad(lon1, lat1, lon2, lat2) / 2
    cos_c, sin_c = np.sin(lat1), np.cos(lat1)
    cos_b = cos_c * np.cos(dist) + sin_c * np.sin(dist) * np.cos(pa)
    a = np.arctan2(np.sin(dist) * np.sin(pa) * sin_c, np.cos(dist) - cos_b * cos_c)
    return float(np.degrees(lon1 + a) % 360.0), float(np.degrees(np.arcsin(cos_b)))


def _tangent_wcs(crval: tuple[float, float]) -> WCS:
    """TAN WCS whose 1-based "pixels" are the intermediate coordinates in degrees (CD = 1, CRPIX = 0)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cd = np.eye(2)
    w.wcs.set()
    return w


def _powers(degree: int) -> list[tuple[int, int]]:
    return [(p, q) for p in range(degree + 1) for q in range(degree + 1 - p)]


def _design(u: np.ndarray, v: np.ndarray, powers) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in powers])


def _fit_tan(lon, lat, x, y, tp: WCS) -> tuple[np.ndarray, np.ndarray] | None:
    """CD and CRPIX minimising astropy's sky residuals, or None when the points do not fix them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = np.column_stack(tp.wcs_world2pix(lon, lat, 1))
    design = np.column_stack([x, y, np.ones_like(x)])
    if np.linalg.matrix_rank(design) < 3:
        return None
    coef = np.linalg.lstsq(design, t, rcond=None)[0]  # t = design @ coef: columns xi, eta
    coslat = np.cos(np.radians(lat))
    h = 1e-7  # deg, step of the numerical derivative of the deprojection (smooth on this scale)

    def sky_residuals(model_t):
        mlon, mlat = tp.wcs_pix2world(model_t[:, 0], model_t[:, 1], 1)
        return (np.mod(lon - mlon - 180.0, 360.0) - 180.0) * coslat, lat - mlat

    # Gauss-Newton with the derivative of the deprojection taken once, at the tangent-plane fit (the
    # residuals are arcsec-small, so it does not change over the steps and the steps converge to the minimum)
    model = design @ coef
    d = []
    for k in range(2):
        step = np.zeros(2)
        step[k] = h
        plon, plat = sky_residuals(model + step)
        mlon, mlat = sky_residuals(model - step)
        d.append(((plon - mlon) / (2 * h), (plat - mlat) / (2 * h)))
    # residuals linearised in coef (3 per tangent axis): r + J dcoef
    jac = np.zeros((2 * len(x), 6))
    for k in range(2):
        jac[: len(x), 3 * k:3 * k + 3] = d[k][0][:, None] * design
        jac[len(x):, 3 * k:3 * k + 3] = d[k][1][:, None] * design
    pinv = np.linalg.pinv(jac)
    for _ in range(_MAX_STEPS):
        rlon, rlat = sky_residuals(design @ coef)
        step = (pinv @ -np.concatenate([rlon, rlat])).reshape(2, 3).T
        coef = coef + step
        if np.max(np.abs(step)) < _TOL * np.max(np.abs(coef[:2])):  # CD relative, CRPIX in px
            break
    cd = coef[:2].T  # xi = cd[0] @ (x, y) + c0
    try:
        # xi = cd @ (x + 1 - crpix)  =>  cd @ (1 - crpix) = constant term
        crpix = 1.0 - np.linalg.solve(cd, coef[2])
    except np.linalg.LinAlgError:
        return None
    return cd, crpix


def _taylor(coef: np.ndarray, powers, c: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Coefficients (per output axis) of the polynomial sum coef[k] u^p v^q re-expanded about u, v = c."""
    out: dict[tuple[int, int], np.ndarray] = {}
    for k, (p, q) in enumerate(powers):
        for i in range(p + 1):
            for j in range(q + 1):
                term = coef[k] * comb(p, i) * comb(q, j) * c[0] ** (p - i) * c[1] ** (q - j)
                out[(i, j)] = out.get((i, j), 0.0) + term
    return out


def _fit_sip(lon, lat, x, y, tp: WCS, crpix0: np.ndarray, degree: int):
    """CRPIX, CD and SIP A, B minimising astropy's tangent-plane residuals, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = np.column_stack(tp.wcs_world2pix(lon, lat, 1))
    powers = _powers(degree)
    design = _design(x, y, powers)
    if len(x) <= len(powers) or np.linalg.matrix_rank(design) < len(powers):
        return None
    coef = np.linalg.lstsq(design, t, rcond=None)[0]
    # CRPIX = c where P(u) = CD (u + 1 - c + f(u - c)) with f free of constant and linear terms:
    # expanded about u = c, P(c) = CD (1, 1) and grad P(c) = CD (Newton from the TAN fit's CRPIX)
    c = np.array(crpix0, float)
    for _ in range(50):
        tay = _taylor(coef, powers, c)
        g = np.column_stack([tay[(1, 0)], tay[(0, 1)]])  # d(xi, eta)/d(u, v)
        f = tay[(0, 0)] - g @ np.ones(2)
        # derivative of f with respect to c: grad P - Hessian @ (1, 1)
        hxx = 2 * tay.get((2, 0), np.zeros(2))
        hxy = tay.get((1, 1), np.zeros(2))
        hyy = 2 * tay.get((0, 2), np.zeros(2))
        jac = g - np.column_stack([hxx + hxy, hxy + hyy])
        try:
            dc = np.linalg.solve(jac, -f)
        except np.linalg.LinAlgError:
            return None
        c = c + dc
        if np.max(np.abs(dc)) < 1e-12 * max(1.0, np.max(np.abs(c))):
            break
    else:
        return None
    tay = _taylor(coef, powers, c)
    cd = np.column_stack([tay[(1, 0)], tay[(0, 1)]])
    try:
        cd_inv = np.linalg.inv(cd)
    except np.linalg.LinAlgError:
        return None
    a = np.zeros((degree + 1, degree + 1))
    b = np.zeros((degree + 1, degree + 1))
    for (p, q), val in tay.items():
        if p + q >= 2:
            a[p, q], b[p, q] = cd_inv @ val
    return c, cd, a, b


def fit_wcs(x, y, ra, dec, sip_degree: int | None = None) -> WCS:
    """TAN (or TAN-SIP of ``sip_degree``) WCS fitted to matched positions, as
    ``astropy.wcs.utils.fit_wcs_from_points(proj_point="center", projection="TAN")``
    returns it (the same minimum, to its convergence tolerance).

    Parameters
    ----------
    x, y : array
        0-based pixel positions.
    ra, dec : array
        ICRS degrees of the same stars.
    sip_degree : int, optional
        Degree of the SIP distortion (2 or more); None fits TAN only.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    lon, lat = np.mod(np.asarray(ra, float), 360.0), np.asarray(dec, float)
    crval = _center(lon, lat)
    tp = _tangent_wcs(crval)
    lin = _fit_tan(lon, lat, x, y, tp) if len(x) >= 3 else None
    sip = None
    if lin is not None and sip_degree:
        sip = _fit_sip(lon, lat, x, y, tp, lin[1], sip_degree)
    xmin, xmax, ymin, ymax = x.min(), x.max(), y.min(), y.max()
    crpix = sip[0] if sip_degree and sip is not None else (lin[1] if lin is not None else None)
    if (crpix is None or (sip_degree and sip is None) or not (xmin + 1 <= crpix[0] <= xmax + 1)
            or not (ymin + 1 <= crpix[1] <= ymax + 1)):
        return _astropy_fit(x, y, lon, lat, sip_degree)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (1 if xmax <= 0 else int(np.ceil(xmax)), 1 if ymax <= 0 else int(np.ceil(ymax)))
    if sip_degree:
        c, cd, a, b = sip
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.wcs.crpix = c
        w.wcs.cd = cd
        zeros = np.zeros((sip_degree + 1, sip_degree + 1))
        w.sip = Sip(a, b, zeros, zeros, w.wcs.crpix)
    else:
        w.wcs.crpix = lin[1]
        w.wcs.cd = lin[0]
    return w


def _astropy_fit(x, y, lon, lat, sip_degree):
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_wcs_from_points((x, y), SkyCoord(lon, lat, unit="deg"), proj_point="center", projection="TAN",
                                   sip_degree=sip_degree)
