"""FWHM and star detection against injected stars (synthetic frames, fixed seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from rpp_core.detect import FwhmResult, find_stars, measure_fwhm
from rpp_core.flags import FLAG_EDGE, FLAG_MASKED, FLAG_SATURATED
from rpp_core.errors import Cancelled, NoStarsError
from rpp_core.preprocess import estimate_background, make_masks
from rpp_core.settings import BackgroundSettings, DetectionSettings, MaskSettings
from rpp_core.synthetic import make_frame, moffat_enclosed

from .datafiles import data_file

SEED = 11


def _prepare(frame, masking=MaskSettings()):
    """Masks and background as the pipeline makes them; the injected CR mask stands in for astroscrappy's."""
    p = frame.params
    masks = make_masks(frame.data, p["saturation"], masking)
    cr = ndi.binary_dilation(p["cosmic_mask"])
    bad = masks.combined | cr
    bkg = estimate_background(frame.data, bad, BackgroundSettings())
    return frame.data - bkg.background, bkg, masks, bad


def _true_snr(frame, rms):
    """S/N of each injected star in a radius-FWHM aperture."""
    p = frame.params
    f = np.asarray(frame.truth["flux"]) * moffat_enclosed(p["fwhm"], p["fwhm"], p["beta"])
    return f / np.sqrt(f / p["gain"] + np.pi * p["fwhm"] ** 2 * rms**2)


@pytest.fixture(scope="module")
def field():
    frame = make_frame(shape=(1024, 1024), n_stars=500, n_cosmics=80, n_saturated=4, border=4, seed=SEED)
    settings = DetectionSettings()
    sub, bkg, masks, bad = _prepare(frame)
    fw = measure_fwhm(sub, bkg.rms, bad, 2.5, settings)
    stars = find_stars(sub, bkg.rms, bad, fw.fwhm_px, settings, saturated_mask=masks.saturated)
    return frame, settings, sub, bkg, masks, bad, fw, stars


@pytest.mark.parametrize("fwhm", [2.5, 5.0])
def test_fwhm_within_5_percent_of_truth_with_scatter_reported(fwhm):
    frame = make_frame(shape=(768, 768), n_stars=250, fwhm=fwhm, n_cosmics=40, seed=SEED)
    settings = DetectionSettings()
    sub, bkg, _, bad = _prepare(frame)
    res = measure_fwhm(sub, bkg.rms, bad, 3.0, settings)
    assert isinstance(res, FwhmResult)
    assert abs(res.fwhm_px / fwhm - 1.0) < 0.05, f"FWHM {res.fwhm_px:.3f} for true {fwhm}"
    assert res.n_stars >= 30
    assert 0 < res.scatter_px < 0.05 * fwhm
    assert abs(res.beta - 3.0) < 0.5
    # same input, same answer: no random sampling
    again = measure_fwhm(sub, bkg.rms, bad, 3.0, settings)
    assert again.fwhm_px == res.fwhm_px and again.n_stars == res.n_stars


def test_fwhm_found_from_a_first_guess_off_by_a_factor_two(field):
    frame, settings, sub, bkg, _, bad, fw, _ = field
    for guess in (1.7, 7.0):
        res = measure_fwhm(sub, bkg.rms, bad, guess, settings)
        assert abs(res.fwhm_px / frame.params["fwhm"] - 1.0) < 0.05, (guess, res.fwhm_px)


def test_fwhm_uses_only_isolated_unsaturated_stars(field):
    frame, settings, *_, fw, _ = field
    sat = frame.truth[frame.truth["saturated"]]
    d = np.hypot(fw.x[:, None] - np.asarray(sat["x"])[None, :], fw.y[:, None] - np.asarray(sat["y"])[None, :])
    assert d.min() > 10
    assert fw.n_stars <= settings.fwhm_max_stars and len(fw.values) == fw.n_stars


def test_detection_complete_above_snr_20_with_few_spurious_sources(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    t = frame.truth
    nx = frame.data.shape[1]
    b = MaskSettings().border_px
    snr = _true_snr(frame, bkg.global_rms)
    inside = (t["x"] >= b) & (t["x"] <= nx - 1 - b) & (t["y"] >= b) & (t["y"] <= nx - 1 - b)
    d_truth, _ = cKDTree(np.c_[stars["x"], stars["y"]]).query(np.c_[t["x"], t["y"]])
    bright = (snr > 20) & inside
    completeness = (d_truth[bright] < 1.5).mean()
    assert completeness >= 0.95, f"completeness {completeness:.3f} over {bright.sum()} stars"
    d_det, _ = cKDTree(np.c_[t["x"], t["y"]]).query(np.c_[stars["x"], stars["y"]])
    spurious = (d_det > 1.5).sum()
    assert spurious < 0.02 * len(stars), f"{spurious} of {len(stars)} detections match no star"


def test_detection_table_has_the_contract_columns_sorted_by_flux(field):
    *_, stars = field
    for col in ("id", "x", "y", "peak", "flux", "sharpness", "roundness1", "roundness2", "flags"):
        assert col in stars.colnames
    assert list(stars["id"]) == list(range(1, len(stars) + 1))
    assert np.all(np.diff(stars["flux"]) <= 0)
    assert stars.meta["fwhm_px"] == pytest.approx(field[6].fwhm_px)


def test_no_source_centred_in_the_border_and_edge_sources_flagged(field):
    frame, settings, *_, stars = field
    ny, nx = frame.data.shape
    b = MaskSettings().border_px
    x, y = np.asarray(stars["x"]), np.asarray(stars["y"])
    assert (x >= b).all() and (x <= nx - 1 - b).all() and (y >= b).all() and (y <= ny - 1 - b).all()
    edge = np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])
    near = edge < b + stars.meta["fwhm_px"]
    assert near.any()
    assert np.array_equal((stars["flags"] & FLAG_EDGE) > 0, near)


def test_wider_border_drops_more_sources():
    frame = make_frame(shape=(512, 512), n_stars=300, n_cosmics=0, n_saturated=0, border=2, seed=SEED)
    out = []
    for border in (5, 60):
        sub, bkg, _, bad = _prepare(frame, MaskSettings(border_px=border))
        stars = find_stars(sub, bkg.rms, bad, 3.5, DetectionSettings(), border_px=border)
        assert min(stars["x"].min(), stars["y"].min()) >= border
        out.append(len(stars))
    assert out[1] < 0.8 * out[0]


def test_saturated_stars_are_kept_and_flagged(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    sat = frame.truth[frame.truth["saturated"]]
    d, i = cKDTree(np.c_[stars["x"], stars["y"]]).query(np.c_[sat["x"], sat["y"]])
    assert (d < 1.5).all(), f"saturated stars found at {d} px"
    assert (stars["flags"][i] & FLAG_SATURATED).all()
    # one detection per clipped star, not one per peak of its flat top
    labels, n = ndi.label(masks.saturated)
    ix, iy = np.round(stars["x"]).astype(int), np.round(stars["y"]).astype(int)
    on_blob = labels[iy, ix]
    on_blob = on_blob[on_blob > 0]
    assert len(on_blob) == len(set(on_blob)) == n
    flagged = (stars["flags"] & FLAG_SATURATED) > 0
    assert flagged.sum() <= n + 3


def test_saturated_star_rejected_by_daofind_is_added_back():
    # a flat-topped 10 px wide plateau fails DAOFIND's sharpness test
    frame = make_frame(shape=(512, 512), n_stars=60, n_cosmics=0, n_saturated=0, seed=SEED)
    data = frame.data.copy()
    yy, xx = np.mgrid[0:512, 0:512]
    blob = (xx - 300.0) ** 2 + (yy - 200.0) ** 2 < 36
    data[blob] = 60000.0
    settings = DetectionSettings()
    masks = make_masks(data, 60000.0, MaskSettings())
    bkg = estimate_background(data, masks.combined, BackgroundSettings())
    stars = find_stars(data - bkg.background, bkg.rms, masks.combined, 3.5, settings, saturated_mask=masks.saturated)
    d = np.hypot(stars["x"] - 300.0, stars["y"] - 200.0)
    assert d.min() < 1.0
    row = stars[np.argmin(d)]
    assert row["flags"] & FLAG_SATURATED and row["id"] == 1


def test_masked_pixels_flag_the_sources_on_them(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    other = bad & ~masks.saturated & ~masks.border
    flagged = (stars["flags"] & FLAG_MASKED) > 0
    ix, iy = np.round(stars["x"]).astype(int), np.round(stars["y"]).astype(int)
    assert flagged[other[iy, ix]].all()  # a masked centre pixel is always flagged


def test_max_sources_keeps_the_brightest(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    few = find_stars(sub, bkg.rms, bad, fw.fwhm_px, DetectionSettings(max_sources=50), saturated_mask=masks.saturated)
    assert len(few) == 50
    assert np.allclose(few["flux"], stars["flux"][:50])


def test_pure_noise_frame_raises_no_stars_error():
    frame = make_frame(shape=(512, 512), n_stars=0, n_cosmics=0, n_saturated=0, seed=SEED)
    settings = DetectionSettings()
    sub, bkg, _, bad = _prepare(frame)
    with pytest.raises(NoStarsError, match="FWHM"):
        measure_fwhm(sub, bkg.rms, bad, 3.0, settings)
    with pytest.raises(NoStarsError, match="threshold_sigma"):
        find_stars(sub, bkg.rms, bad, 3.0, DetectionSettings(threshold_sigma=20))


def test_cancel_stops_fwhm_and_detection(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    with pytest.raises(Cancelled):
        measure_fwhm(sub, bkg.rms, bad, 3.0, settings, cancel=lambda: True)
    with pytest.raises(Cancelled):
        find_stars(sub, bkg.rms, bad, 3.5, settings, cancel=lambda: True)
    seen = []
    measure_fwhm(sub, bkg.rms, bad, 3.5, settings, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]


def test_nan_pixels_do_not_break_detection(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    holed = sub.copy()
    holed[500:520, 500:520] = np.nan
    m = bad.copy()
    m[500:520, 500:520] = True
    again = find_stars(holed, bkg.rms, m, fw.fwhm_px, settings, saturated_mask=masks.saturated)
    assert abs(len(again) - len(stars)) <= 3
    assert np.isfinite(again["flux"]).all()


def test_real_plate_detects_the_gaia_stars_of_m67():
    """DSS plate of M67 with its independent astrometry.net WCS: Gaia G 11-18 stars are found within 2 px."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    data = fits.getdata(data_file("images/M6707HH.fits.gz")).astype(np.float32)
    wcs = WCS(fits.getheader(data_file("wcs_truth/m67_custom_gaia_index_solve.wcs.fits")), naxis=2)
    gaia = Table.read(data_file("refcats/M67_gaia_dr2_cone40arcmin_plx_gt_0.5.csv"))
    settings = DetectionSettings()
    masks = make_masks(data, None, MaskSettings())
    bkg = estimate_background(data, masks.combined, BackgroundSettings())
    sub = data - bkg.background
    fw = measure_fwhm(sub, bkg.rms, masks.combined, 2.5 / 1.70, settings)
    assert 2.0 < fw.fwhm_px < 4.0 and fw.n_stars >= 50  # 2.9 px (4.9") on this 1951 plate
    stars = find_stars(sub, bkg.rms, masks.combined, fw.fwhm_px, settings, saturated_mask=masks.saturated)
    x, y = wcs.all_world2pix(gaia["ra"], gaia["dec"], 0)
    ny, nx = data.shape
    sel = (x > 20) & (x < nx - 21) & (y > 20) & (y < ny - 21) & (gaia["phot_g_mean_mag"] > 11) & (gaia["phot_g_mean_mag"] < 18)
    d, _ = cKDTree(np.c_[stars["x"], stars["y"]]).query(np.c_[x[sel], y[sel]])
    found = (d < 2.0).mean()
    assert sel.sum() > 500 and found >= 0.95, f"{found:.3f} of {sel.sum()} Gaia stars found"


def test_fwhm_of_a_big_frame_comes_from_its_central_window_in_frame_pixels():
    from rpp_core.detect import _FWHM_WINDOW

    fr = make_frame(shape=(3000, 3000), n_stars=900, fwhm=4.0, seed=12, n_cosmics=0, n_saturated=0)
    sky = np.median(fr.data)
    rms = np.full(fr.data.shape, np.std(fr.data[fr.data < sky + 30]), np.float32)
    res = measure_fwhm(fr.data - sky, rms, None, 3.0, DetectionSettings())
    assert abs(res.fwhm_px / 4.0 - 1) < 0.05
    lo, hi = (3000 - _FWHM_WINDOW) // 2, (3000 - _FWHM_WINDOW) // 2 + _FWHM_WINDOW
    assert (res.x >= lo).all() and (res.x < hi).all() and (res.y >= lo).all() and (res.y < hi).all()
    # the positions are frame pixels: each lies on an injected star
    d = np.hypot(res.x[:, None] - np.asarray(fr.truth["x"])[None, :], res.y[:, None] - np.asarray(fr.truth["y"])[None, :])
    assert np.median(d.min(axis=1)) < 0.05 and (d.min(axis=1) < 0.5).mean() > 0.9
