"""Detections against reference stars in pixel space: the helpers the WCS check and the refinement share.

Conventions: pixel ``x``, ``y`` are 0-based; sky coordinates in degrees (ICRS); separations in arcsec.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from ..errors import AstrometryError


def source_arrays(sources: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (0-based px) and a brightness for ordering, brightest first.

    Any flux-like column works: ``flux``, then the first ``flux_<aperture>``,
    ``psf_flux``, ``peak``. Without one, the table order is taken as the
    brightness order.
    """
    if "x" not in sources.colnames or "y" not in sources.colnames:
        raise AstrometryError(f"source list has no x/y columns (columns: {sources.colnames}); run detection first")
    x = np.asarray(sources["x"], float)
    y = np.asarray(sources["y"], float)
    names = sources.colnames
    candidates = ["flux"] + [c for c in names if c.startswith("flux_") and not c.startswith("flux_err")
                             and "err" not in c] + ["psf_flux", "peak"]
    flux = None
    for c in candidates:
        if c in names:
            v = np.asarray(np.ma.filled(np.ma.asarray(sources[c], float), np.nan), float)
            if np.isfinite(v).sum() >= max(3, 0.5 * len(v)):
                flux = v
                break
    if flux is None:
        flux = np.arange(len(x), 0, -1, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    x, y, flux = x[good], y[good], flux[good]
    order = np.argsort(-flux, kind="stable")
    return x[order], y[order], flux[order]


def match_xy(x1, y1, x2, y2, radius_px: float):
    """One-to-one nearest-neighbour match in pixel space: (i1, i2, distance px)."""
    if len(x1) == 0 or len(x2) == 0:
        e = np.array([], int)
        return e, e, np.array([], float)
    tree = cKDTree(np.column_stack([x2, y2]))
    d, j = tree.query(np.column_stack([x1, y1]), distance_upper_bound=radius_px)
    ok = np.isfinite(d)
    i1, i2, d = np.nonzero(ok)[0], j[ok], d[ok]
    # several detections may claim one reference star: keep the closest
    order = np.argsort(d)
    i1, i2, d = i1[order], i2[order], d[order]
    _, first = np.unique(i2, return_index=True)
    return i1[first], i2[first], d[first]


def frame_shape(wcs: WCS, x: np.ndarray, y: np.ndarray, shape=None) -> tuple[int, int]:
    if shape is not None:
        return int(shape[0]), int(shape[1])
    if wcs.pixel_shape is not None and all(wcs.pixel_shape):
        nx, ny = wcs.pixel_shape
        return int(ny), int(nx)
    return int(np.nanmax(y)) + 2, int(np.nanmax(x)) + 2


def refs_in_frame(wcs: WCS, ref: Table, shape, margin_px: float):
    ny, nx = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rx, ry = wcs.all_world2pix(np.asarray(ref["ra"]), np.asarray(ref["dec"]), 0, quiet=True)
    inside = (np.isfinite(rx) & np.isfinite(ry) & (rx > -margin_px) & (rx < nx - 1 + margin_px)
              & (ry > -margin_px) & (ry < ny - 1 + margin_px))
    return np.nonzero(inside)[0], np.asarray(rx), np.asarray(ry)


def sky_sep_arcsec(wcs: WCS, x, y, ra, dec) -> np.ndarray:
    """Sky separation, arcsec, of pixel positions through ``wcs`` from ``ra``, ``dec`` (deg)."""
    sra, sdec = wcs.all_pix2world(x, y, 0)
    return angular_separation_deg(sra, sdec, np.asarray(ra, float), np.asarray(dec, float)) * 3600.0


def angular_separation_deg(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle separation, deg, by the Vincenty formula SkyCoord.separation uses
    (written out: its SkyCoord and Quantity set-up was a third of the refinement's time)."""
    return np.degrees(angular_separation_rad(np.radians(lon1), np.radians(lat1), np.radians(lon2), np.radians(lat2)))


def angular_separation_rad(lon1, lat1, lon2, lat2):
    """:func:`angular_separation_deg` in radians, of positions in radians."""
    sdlon, cdlon = np.sin(lon2 - lon1), np.cos(lon2 - lon1)
    slat1, slat2, clat1, clat2 = np.sin(lat1), np.sin(lat2), np.cos(lat1), np.cos(lat2)
    num1 = clat2 * sdlon
    num2 = clat1 * slat2 - slat1 * clat2 * cdlon
    return np.arctan2(np.hypot(num1, num2), slat1 * slat2 + clat1 * clat2 * cdlon)
