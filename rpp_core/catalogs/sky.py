"""The sky a frame covers, in the terms catalogue queries use (no HTTP: local files need it too)."""

from __future__ import annotations

import numpy as np
from astropy.wcs.utils import pixel_to_skycoord


def field_of_view(wcs, shape, margin: float = 0.02) -> tuple[float, float, float]:
    """Centre (ICRS ra, dec, deg) and radius (deg) of the circle through the frame corners.

    ``shape`` is (ny, nx). ``margin`` enlarges the radius by that fraction, so
    stars on the edges are in every catalogue answer. Not capped: a wide field
    gives a wide cone.
    """
    ny, nx = shape[:2]
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    xs = np.array([cx, -0.5, nx - 0.5, -0.5, nx - 0.5, cx, cx, -0.5, nx - 0.5])
    ys = np.array([cy, -0.5, -0.5, ny - 0.5, ny - 0.5, -0.5, ny - 0.5, cy, cy])
    # ICRS whatever the WCS frame: a galactic mosaic must give RA/Dec cones
    c = pixel_to_skycoord(xs, ys, wcs, origin=0, mode="all").icrs
    ra, dec = c.ra.deg, c.dec.deg
    radius = float(np.max(c[0].separation(c[1:]).deg)) * (1.0 + margin)
    return float(ra[0]), float(dec[0]), radius
