"""Pixel scales (arcsec/px): the WCS's, a keyword's, a plate scan's, the optics', and that every reader agrees."""

from __future__ import annotations

import types

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from rpp_core.astrometry import needs_solving, solve_hints
from rpp_core.image import header_metadata, wcs_pixel_scale
from rpp_core.image.pixscale import (
    detector_pixel_scale,
    header_optics_pixel_scale,
    keyword_pixel_scale,
    optics_pixel_scale,
    plate_scan_pixel_scale,
)
from rpp_core.products import Origin
from rpp_core.settings import AstrometrySettings, ObservatorySettings


def _tan(cd_arcsec, crval=(150.0, 2.0), crpix=(50.0, 50.0)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = list(crval), list(crpix)
    w.wcs.cd = np.asarray(cd_arcsec, float) / 3600.0
    return w


def _sky_area_arcsec2(w: WCS, half: float = 5.0) -> float:
    """Area on the sky of a (2 half) px square round CRPIX, from its projected corners (tangent plane at CRPIX)."""
    cx, cy = w.wcs.crpix[0] - 1, w.wcs.crpix[1] - 1
    corners = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
    ra, dec = w.all_pix2world(corners[:, 0], corners[:, 1], 0)
    ra0, dec0 = np.deg2rad(w.wcs.crval)
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    # gnomonic projection of the corners back onto the plane at CRVAL: the area there is the pixel's
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    xi, eta = np.rad2deg(xi) * 3600, np.rad2deg(eta) * 3600
    return 0.5 * abs(np.dot(xi, np.roll(eta, 1)) - np.dot(eta, np.roll(xi, 1))) / (2 * half) ** 2


def test_skewed_pixels_scale_is_the_root_of_their_sky_area_not_the_mean_side():
    # sides of 1.2" and 1.2" at 50 degrees to each other (a sheared fit): area 1.44 sin(50) arcsec^2
    angle = np.deg2rad(50.0)
    w = _tan([[-1.2, -1.2 * np.cos(angle)], [0.0, 1.2 * np.sin(angle)]])
    scale = wcs_pixel_scale(w)
    assert scale == pytest.approx(1.2 * np.sqrt(np.sin(angle)), rel=1e-9)
    assert scale**2 == pytest.approx(_sky_area_arcsec2(w), rel=1e-6)  # a pixel's solid angle, measured on the sky
    assert scale < 0.9 * 1.2  # the mean side (1.2") overstates the pixel by 14 %


def test_rectangular_pixels_scale_is_the_geometric_mean_of_the_sides():
    w = _tan([[-2.0, 0.0], [0.0, 0.5]])  # 4:1 pixels, e.g. binned 4x1
    assert wcs_pixel_scale(w) == pytest.approx(1.0, rel=1e-12)  # not (2 + 0.5) / 2
    assert wcs_pixel_scale(w) ** 2 == pytest.approx(_sky_area_arcsec2(w), rel=1e-6)


def test_pixel_scale_in_arcsec_cunit_and_of_a_cube_is_the_celestial_pixel():
    w = WCS(naxis=3)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN", "FREQ"]
    w.wcs.cunit = ["arcsec", "arcsec", "Hz"]
    w.wcs.cdelt = [-0.4, 0.4, 1e6]
    w.wcs.crval = [10.0, 20.0, 1e9]
    assert wcs_pixel_scale(w) == pytest.approx(0.4, rel=1e-12)


def test_no_celestial_wcs_or_a_singular_one_gives_no_scale_not_a_zero():
    assert wcs_pixel_scale(None) is None
    assert wcs_pixel_scale(WCS(naxis=2)) is None  # linear pixel axes only
    assert wcs_pixel_scale(_tan([[1.0, 2.0], [0.5, 1.0]])) is None  # det = 0
    assert wcs_pixel_scale(_tan([[0.0, 0.0], [0.0, 0.0]])) is None


def test_keyword_scale_skips_unusable_values_and_takes_secpix1():
    h = fits.Header()
    h["PIXSCALE"] = 0.0
    h["SECPIX"] = "n/a"
    h["SECPIX1"] = 1.37
    assert keyword_pixel_scale(h) == (1.37, "header SECPIX1")
    h["PIXSCALE"] = 0.62
    assert keyword_pixel_scale(h) == (0.62, "header PIXSCALE")


def test_plate_scan_and_optics_scales():
    h = fits.Header()
    h["PLTSCALE"], h["XPIXELSZ"] = 67.2, 25.28  # POSS-I E plate (arcsec/mm) scanned at 25.28 um
    assert plate_scan_pixel_scale(h)[0] == pytest.approx(1.6988, abs=1e-4)
    # 9 um behind 1000 mm: 206264.8 / 1e6 x 9 arcsec; the constant is arcsec per radian, not a rounded 206.265
    assert optics_pixel_scale(9.0, 1000.0) == pytest.approx(1.85638, abs=1e-5)
    assert optics_pixel_scale(9.0, 0.0) is None and optics_pixel_scale(None, 1000.0) is None
    h["XPIXSZ"], h["FOCALLEN"] = 9.0, 1000.0
    assert header_optics_pixel_scale(h)[0] == optics_pixel_scale(9.0, 1000.0)
    assert detector_pixel_scale(h) == header_optics_pixel_scale(h)
    h["CCDMODE"], h["C_OBS"] = "DRIFT", 26.7e3  # a drift scan: the row time decides
    assert detector_pixel_scale(h)[0] == pytest.approx(15.041067 * 0.0267, rel=1e-9)


def test_header_without_any_scale_reads_as_missing_and_names_what_was_looked_for():
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 100, 100
    assert keyword_pixel_scale(h) == (None, "") and plate_scan_pixel_scale(h) == (None, "")
    assert header_optics_pixel_scale(h) == (None, "") and detector_pixel_scale(h) == (None, "")
    meta = header_metadata(h, None, (100, 100), ObservatorySettings())
    assert meta.pixel_scale is None
    src = meta.sources["pixel_scale"]
    assert src.origin is Origin.MISSING
    for key in ("PIXSCALE", "SECPIX1", "PLTSCALE", "XPIXSZ", "focal_length_mm"):
        assert key in src


def test_metadata_and_solver_hints_read_the_same_keyword_scale():
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 100, 100
    h["SECPIX"] = 0.95
    h["XPIXSZ"], h["FOCALLEN"] = 9.0, 1000.0
    meta = header_metadata(h, None, (100, 100), ObservatorySettings())
    assert (meta.pixel_scale, meta.sources["pixel_scale"]) == (0.95, "header SECPIX")
    frame = types.SimpleNamespace(header=h, wcs=None, wcs_status="missing")
    hints = solve_hints(frame, meta)
    scales = {(s.arcsec_per_px, s.binning_unknown) for s in hints.scales}
    assert (0.95, False) in scales  # as written
    assert (optics_pixel_scale(9.0, 1000.0), True) in scales  # may be a binning factor off


def test_wcs_check_does_not_reject_a_wcs_with_rectangular_pixels_against_its_own_scale():
    # the check used the mean side (2.5"), the metadata sqrt |det| (2"): 25 % apart, beyond scale_tolerance 20 %
    w = _tan([[-4.0, 0.0], [0.0, 1.0]])
    h = w.to_header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 100, 100
    meta = header_metadata(h, w, (100, 100), ObservatorySettings())
    assert meta.pixel_scale == pytest.approx(2.0)
    frame = types.SimpleNamespace(header=h, wcs=w, wcs_status="ok", data=None)
    solve, why = needs_solving(frame, meta, AstrometrySettings(), refcat=None)
    assert not solve, why


def test_finder_chart_compass_arrows_have_their_length_on_a_frame_rotated_by_90_degrees():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from rpp_core.figures import _compass

    nx = ny = 400
    for cd in ([[-1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]):  # north up, and rotated 90 degrees (flipped)
        ax = Figure().add_subplot()
        _compass(ax, _tan(cd, crpix=(200.0, 200.0)), nx, ny)
        x0, y0 = 0.15 * nx, 0.15 * ny
        labels = [t for t in ax.texts if t.get_text()]  # the arrows are annotations without text
        lengths = [np.hypot(t.get_position()[0] - x0, t.get_position()[1] - y0) for t in labels]
        assert [t.get_text() for t in labels] == ["N", "E"]
        assert lengths == pytest.approx([0.12 * nx] * 2, rel=0.01)
