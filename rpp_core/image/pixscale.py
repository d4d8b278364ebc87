"""Pixel scales, arcsec per pixel: one function per way of knowing it.

Each answers a different question, and callers pick the one they mean:

- :func:`wcs_pixel_scale`: the size on the sky of a pixel of this image, from its
  celestial WCS (what matching radii, FWHM in arcsec, the solver's scale hints and
  surface-brightness zero points need);
- :func:`keyword_pixel_scale`: the scale a keyword states (``PIXSCALE`` and kin),
  taken as written;
- :func:`plate_scan_pixel_scale`: a digitised plate's scale (``PLTSCALE`` arcsec/mm
  x the scan pixel ``XPIXELSZ`` um);
- :func:`optics_pixel_scale`: the formula 206.265 x pixel size (um) / focal length
  (mm), for whoever knows the two (header ``XPIXSZ``/``FOCALLEN`` or the profile);
- :func:`detector_pixel_scale`: the detector's own pixel from keywords independent
  of the WCS (drift-scan row time, or the optics), to tell a resampled image.

Rectangular or skewed pixels
----------------------------
A pixel is a parallelogram on the sky: its sides are the columns of the WCS's
CD (or PC x CDELT) matrix. One number cannot describe it; rpp's pixel scale is
the square root of its area, ``sqrt(|det CD|)``: rotation-free, independent of the
CD vs PC/CDELT form, the geometric mean of the side lengths for rectangular pixels
(``sqrt(a b)``), and smaller than the mean side when the sides are skewed. It is
the convention of astrometry.net (``solve-field --scale-low/--scale-high`` and the
scale it reports), and ``scale**2`` is exactly a pixel's solid angle, which is what
a surface-brightness unit needs. A keyword scale (``PIXSCALE``, ``SECPIX``) is one
number already; ``SECPIX1``/``PIXSCAL1`` are the first axis's and stand for both.

Pixel origin: the CD matrix is the linear part of the WCS at the reference pixel
``CRPIX`` (1-based in the header, whatever origin a caller uses for positions);
distortion terms (SIP, TPV) are ignored, being zero there by construction. Away
from ``CRPIX`` a wide field's real pixel differs (projection and distortion).
"""

from __future__ import annotations

import math

from astropy import units as u
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area

from .keywords import first_key, parse_float, parse_text

#: arcsec per pixel for 1 um over 1 mm: arcsec per radian / 1000 (the "206.265" of the formula)
ARCSEC_PER_UM_PER_MM = float(u.rad.to(u.arcsec)) / 1000.0
#: keywords stating the image's pixel scale in arcsec/px, first valid wins (SECPIX1/PIXSCAL1: the x axis's)
SCALE_KEYS = ("PIXSCALE", "SECPIX", "SECPIX1", "PIXSCAL1")
#: sidereal rate, arcsec of great circle per second of time (drift scans move at it)
SIDEREAL_ARCSEC_PER_S = 15.041067


def wcs_pixel_scale(wcs: WCS | None) -> float | None:
    """Pixel scale of a celestial WCS, arcsec/px: ``sqrt(|det|)`` of its CD (or PC x CDELT) matrix.

    Parameters
    ----------
    wcs : astropy.wcs.WCS or None
        Any WCS; only its celestial axes are read (a cube's spectral axis is not).

    Returns
    -------
    float or None
        The square root of a pixel's area on the sky at ``CRPIX`` (see the module
        notes: geometric mean of the sides for rectangular pixels, less than the
        mean side for skewed ones; SIP/TPV terms ignored); CUNIT arcmin, arcsec or
        rad converted. None when there is no WCS, no celestial pair of axes, or the
        matrix is singular or not finite: no scale, not a wrong one.
    """
    if wcs is None:
        return None
    try:
        if not wcs.has_celestial:
            return None
        cel = wcs.celestial
        area = float(proj_plane_pixel_area(cel))  # |det|, in CUNIT^2: degrees once wcsset has run
        unit = u.Unit(cel.wcs.cunit[0] or "deg")
    except Exception:  # noqa: BLE001 - wcslib raises many types for an inconsistent WCS: no scale
        return None
    if not math.isfinite(area) or area <= 0.0:
        return None
    return math.sqrt(area) * float(unit.to(u.arcsec))


def keyword_pixel_scale(header: fits.Header) -> tuple[float | None, str]:
    """The pixel scale a keyword states, arcsec/px: :data:`SCALE_KEYS` in order, values in (0, 3600).

    Returns ``(scale, "header KEY")``, or ``(None, "")`` when no keyword holds one.
    Such a keyword is taken as written (binning included), unlike the optics.
    """
    k, v = first_key(header, SCALE_KEYS, lambda x: 0 < x < 3600)
    return (v, f"header {k}") if k else (None, "")


def plate_scan_pixel_scale(header: fits.Header) -> tuple[float | None, str]:
    """A digitised plate's pixel, arcsec/px: ``PLTSCALE`` (arcsec/mm) x ``XPIXELSZ`` (um) / 1000 (DSS headers).

    ``(None, "")`` unless both are positive numbers.
    """
    plt, xps = parse_float(header.get("PLTSCALE")), parse_float(header.get("XPIXELSZ"))
    if plt and xps and plt > 0 and xps > 0:
        return plt * xps / 1000.0, "header PLTSCALE x XPIXELSZ"
    return None, ""


def optics_pixel_scale(pixel_um: float | None, focal_mm: float | None) -> float | None:
    """206.265 x pixel size (um) / focal length (mm), arcsec/px; None unless both are positive.

    The pixel size must be the image's pixel, binning included: MaxIm's ``XPIXSZ``
    already is; a camera's unbinned size is not (the caller multiplies by ``XBINNING``).
    """
    if pixel_um and focal_mm and pixel_um > 0 and focal_mm > 0:
        return ARCSEC_PER_UM_PER_MM * pixel_um / focal_mm
    return None


def header_optics_pixel_scale(header: fits.Header) -> tuple[float | None, str]:
    """:func:`optics_pixel_scale` of header ``XPIXSZ`` (um, binned as MaxIm writes it) and ``FOCALLEN`` (mm).

    ``(None, "")`` unless both are positive. Often written for the unbinned camera, so
    it may be a binning factor off (the solver's hints allow for that).
    """
    scale = optics_pixel_scale(parse_float(header.get("XPIXSZ")), parse_float(header.get("FOCALLEN")))
    return (scale, "206.265 x XPIXSZ / FOCALLEN") if scale else (None, "")


def detector_pixel_scale(header: fits.Header) -> tuple[float | None, str]:
    """The size of a detector pixel on the sky (arcsec) from keywords independent of the WCS.

    A drift scan (CCDMODE = 'DRIFT') reads one row per ``C_OBS`` microseconds while the
    sky moves at the sidereal rate along the scan: the row time gives the pixel. Else
    :func:`header_optics_pixel_scale`. ``(None, "")`` if neither. Compared with
    :func:`wcs_pixel_scale`, it tells an image resampled to other pixels.
    """
    mode = (parse_text(header.get("CCDMODE")) or "").upper()
    row_us = parse_float(header.get("C_OBS"))
    if mode == "DRIFT" and row_us and row_us > 0:
        return SIDEREAL_ARCSEC_PER_S * row_us * 1e-6, f"drift-scan row time C_OBS {row_us:g} us x the sidereal rate"
    return header_optics_pixel_scale(header)
