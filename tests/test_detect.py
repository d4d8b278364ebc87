"""FWHM and star detection against injected stars (synthetic frames, fixed seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from rpp_core.detect import FwhmResult, _component_at, _label_sparse, find_stars, measure_fwhm
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


@pytest.mark.parametrize("fwhm", [1.0, 1.3, 2.5, 5.0])
def test_fwhm_within_3_percent_of_truth_with_scatter_reported_and_undersampled_stars_said(fwhm):
    frame = make_frame(shape=(768, 768), n_stars=250, fwhm=fwhm, n_cosmics=40, seed=SEED)
    settings = DetectionSettings()
    sub, bkg, _, bad = _prepare(frame)
    res = measure_fwhm(sub, bkg.rms, bad, 3.0, settings)
    assert isinstance(res, FwhmResult)
    assert abs(res.fwhm_px / fwhm - 1.0) < 0.03, f"FWHM {res.fwhm_px:.3f} for true {fwhm}"
    assert res.n_stars >= 30
    assert res.undersampled == (fwhm < 1.5) and ("undersampled" in res.summary()) == (fwhm < 1.5)
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
    for col in ("id", "x", "y", "peak", "flux", "a", "b", "theta", "npix", "flags"):
        assert col in stars.colnames
    assert list(stars["id"]) == list(range(1, len(stars) + 1))
    assert np.all(np.diff(stars["flux"]) <= 0)
    assert stars.meta["fwhm_px"] == pytest.approx(field[6].fwhm_px)
    assert stars.meta["finder"] == "sep"


def test_daofind_finder_gives_sharpness_and_roundness_and_finds_the_same_bright_stars(field):
    frame, settings, sub, bkg, masks, bad, fw, stars = field
    dao = find_stars(sub, bkg.rms, bad, fw.fwhm_px, DetectionSettings(finder="daofind"), saturated_mask=masks.saturated)
    for col in ("sharpness", "roundness1", "roundness2"):
        assert col in dao.colnames and np.isfinite(dao[col][~np.asarray(dao["flags"] & FLAG_SATURATED, bool)]).all()
    bright = stars[:200]
    d, _ = cKDTree(np.c_[dao["x"], dao["y"]]).query(np.c_[bright["x"], bright["y"]])
    assert (d < 1.0).mean() > 0.97


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


def test_saturated_blobs_are_numbered_and_boxed_as_scipy_labels_them():
    # find_stars labels only the saturated pixels (in 32 px blocks first): the blobs, their numbers and boxes must
    # be ndi.label's, or the brightest detection per blob and the added stars would change; blobs that span
    # blocks, touch diagonally (two blobs under 4-connectivity), nest in another's box, or fill a frame
    rng = np.random.default_rng(SEED)
    masks = [ndi.binary_dilation(rng.random((200, 300)) < 0.001, iterations=12), rng.random((97, 131)) < 0.45,
             np.eye(70, dtype=bool), np.ones((40, 33), bool), np.zeros((50, 50), bool)]
    ring = np.zeros((100, 100), bool)
    ring[10:90, 10:90] = True
    ring[12:88, 12:88] = False
    ring[40:60, 40:60] = True
    masks.append(ring)
    order = np.zeros((64, 300), bool)  # the second blob's first row comes first, its block second
    order[20:23, 200:203] = order[5:8, 270:273] = True
    masks.append(order)
    grid = np.zeros((1010, 1010), bool)  # 26 x 26 blobs 40 px apart: more groups than are labelled one by one
    grid[5::40, 5::40] = grid[6::40, 5::40] = True
    masks.append(grid)
    for m in masks:
        labels, n = ndi.label(m)
        blobs = _label_sparse(m)
        assert len(blobs) == n
        assert [sl for sl, _ in blobs] == ndi.find_objects(labels)
        for k, (sl, piece) in enumerate(blobs, start=1):
            assert np.array_equal(piece, labels[sl] == k)
        iy, ix = np.nonzero(np.ones(m.shape, bool))
        assert np.array_equal(_component_at(blobs, ix, iy, m.shape[1]), labels[iy, ix])


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
    other = bad & ~masks.saturated
    e = masks.border_px  # off the border strip: sources there are dropped, not flagged
    assert e > 0  # else [-e:] below would be the whole frame
    other[:e] = other[-e:] = other[:, :e] = other[:, -e:] = False
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
    # the faint, unsaturated stars of this 1951 plate: Moffat 1.6 px, a Gaussian fit 1.9 px (bright ones are wider)
    assert 1.4 < fw.fwhm_px < 4.0 and fw.n_stars >= 40
    stars = find_stars(sub, bkg.rms, masks.combined, fw.fwhm_px, settings, saturated_mask=masks.saturated)
    x, y = wcs.all_world2pix(gaia["ra"], gaia["dec"], 0)
    ny, nx = data.shape
    sel = (x > 20) & (x < nx - 21) & (y > 20) & (y < ny - 21) & (gaia["phot_g_mean_mag"] > 11) & (gaia["phot_g_mean_mag"] < 18)
    d, _ = cKDTree(np.c_[stars["x"], stars["y"]]).query(np.c_[x[sel], y[sel]])
    found = (d < 2.0).mean()
    assert sel.sum() > 500 and found >= 0.95, f"{found:.3f} of {sel.sum()} Gaia stars found"


def test_fwhm_stars_of_a_big_frame_are_injected_stars_in_frame_pixels():
    fr = make_frame(shape=(3000, 3000), n_stars=900, fwhm=4.0, seed=12, n_cosmics=0, n_saturated=0)
    sky = np.median(fr.data)
    rms = np.full(fr.data.shape, np.std(fr.data[fr.data < sky + 30]), np.float32)
    res = measure_fwhm(fr.data - sky, rms, None, 3.0, DetectionSettings())
    assert abs(res.fwhm_px / 4.0 - 1) < 0.03
    d = np.hypot(res.x[:, None] - np.asarray(fr.truth["x"])[None, :], res.y[:, None] - np.asarray(fr.truth["y"])[None, :])
    assert np.median(d.min(axis=1)) < 0.05 and (d.min(axis=1) < 0.5).mean() > 0.9


# ---------------------------------------------------------------- FWHM without a trusted prior (issue 9)


@pytest.mark.parametrize("factor", [3.0, 1 / 3.0])
def test_fwhm_of_a_frame_with_a_3x_wrong_seeing_hint_is_the_stars_and_the_log_says_so(factor):
    frame = make_frame(shape=(768, 768), n_stars=250, fwhm=3.0, n_cosmics=40, seed=SEED)
    settings = DetectionSettings()
    sub, bkg, _, bad = _prepare(frame)
    res = measure_fwhm(sub, bkg.rms, bad, 3.0 * factor, settings)
    assert abs(res.fwhm_px / 3.0 - 1) < 0.03, res.summary()
    assert res.method == "moffat" and res.n_stars >= 30
    line = res.summary()
    assert "ignored: 3.0x" in line and ("too large" if factor > 1 else "too small") in line
    assert "kernel scan" in line and f"{res.fwhm_px:.2f} px" in line


def test_fwhm_needs_no_hint_at_all():
    frame = make_frame(shape=(768, 768), n_stars=250, fwhm=4.2, n_cosmics=40, seed=SEED)
    sub, bkg, _, bad = _prepare(frame)
    res = measure_fwhm(sub, bkg.rms, bad, None, DetectionSettings())
    assert abs(res.fwhm_px / 4.2 - 1) < 0.03 and "header" not in res.summary()


def test_cosmic_rays_and_hot_pixels_are_never_chosen_as_fwhm_stars():
    """Hits outnumber the stars (the SAAO frame: 3 stars, dozens of hits); none is a FWHM star."""
    frame = make_frame(shape=(512, 512), n_stars=12, fwhm=6.0, n_cosmics=400, n_saturated=0, seed=SEED,
                       mag_range=(13.0, 15.0), min_separation=60.0)
    data = frame.data.copy()
    rng = np.random.default_rng(1)
    hot = rng.integers(20, 492, (150, 2))
    data[hot[:, 1], hot[:, 0]] += rng.uniform(2000, 20000, 150)  # hot pixels brighter than most stars
    settings = DetectionSettings()
    masks = make_masks(data, frame.params["saturation"], MaskSettings())
    bkg = estimate_background(data, masks.combined, BackgroundSettings())
    res = measure_fwhm(data - bkg.background, bkg.rms, masks.combined, 3.0, settings)  # no CR mask given
    assert abs(res.fwhm_px / 6.0 - 1) < 0.05, res.summary()
    d, _ = cKDTree(np.c_[frame.truth["x"], frame.truth["y"]]).query(np.c_[res.x, res.y])
    assert (d < 1.0).all(), f"FWHM stars off the injected stars: {d}"


def test_galaxies_blends_and_saturated_stars_are_not_fwhm_stars():
    frame = make_frame(shape=(768, 768), n_stars=80, fwhm=3.0, n_cosmics=0, n_saturated=5, seed=SEED,
                       mag_range=(13.0, 16.0), min_separation=40.0)
    from rpp_core.synthetic import render_moffat

    rng = np.random.default_rng(5)
    gx, gy = rng.uniform(30, 738, 40), rng.uniform(30, 738, 40)
    extra = render_moffat(frame.data.shape, gx, gy, np.full(40, 6e5), 9.0, 1.5)  # bright galaxies
    bx, by = gx[:20] + 10.0, gy[:20] + 3.0
    extra = render_moffat(frame.data.shape, np.r_[bx, bx + 2.2], np.r_[by, by], np.full(40, 4e5), 3.0, 3.0, out=extra)
    data = (frame.data + extra).astype(np.float32)
    settings = DetectionSettings()
    masks = make_masks(data, frame.params["saturation"], MaskSettings())
    bkg = estimate_background(data, masks.combined, BackgroundSettings())
    res = measure_fwhm(data - bkg.background, bkg.rms, masks.combined, None, settings)
    assert abs(res.fwhm_px / 3.0 - 1) < 0.03, res.summary()
    t = frame.truth
    star_ok = ~np.asarray(t["saturated"])
    d, i = cKDTree(np.c_[t["x"], t["y"]]).query(np.c_[res.x, res.y])
    assert (d < 0.5).all() and star_ok[i].all()


def test_gaussian_fit_width_of_moffat_stars_reads_wide_as_photutils_does():
    """``gauss_fwhm_px`` is the references' definition: wider than the Moffat FWHM on Moffat stars."""
    frame = make_frame(shape=(768, 768), n_stars=250, fwhm=3.0, beta=2.5, n_cosmics=0, seed=SEED)
    sub, bkg, _, bad = _prepare(frame)
    res = measure_fwhm(sub, bkg.rms, bad, None, DetectionSettings())
    assert abs(res.fwhm_px / 3.0 - 1) < 0.03
    assert 1.07 < res.gauss_fwhm_px / res.fwhm_px < 1.25  # photutils fit_fwhm: 3.51 on these stars


def test_stars_on_the_wings_of_saturated_stars_are_deblended_and_watershed_finds_at_least_as_many():
    """A crowded 256^2 frame, FWHM 4.5 px, three saturated stars: SExtractor's 0.005 contrast lost 15 of 60."""
    frame = make_frame(shape=(256, 256), n_stars=60, seed=11, fwhm=4.5, zp0=25.1, gain=1.5, n_cosmics=10)
    sub, bkg, masks, bad = _prepare(frame)
    t = frame.truth
    inside = (t["x"] > 10) & (t["x"] < 245) & (t["y"] > 10) & (t["y"] < 245)
    found = {}
    for kw in ({"deblend_contrast": 0.005}, {}, {"deblend_method": "watershed"}):
        stars = find_stars(sub, bkg.rms, bad, 4.5, DetectionSettings(**kw), saturated_mask=masks.saturated)
        d, _ = cKDTree(np.c_[stars["x"], stars["y"]]).query(np.c_[t["x"], t["y"]])
        found[tuple(kw.items())] = int((d[inside] < 1.5).sum())
    sextractor, default, watershed = found.values()
    assert default >= 0.8 * inside.sum() and default > sextractor, found
    assert watershed >= default, found


def test_an_object_over_a_million_pixels_above_threshold_is_detected_with_the_stars_round_it():
    """A nebula or a bright plate star's halo can hold more pixels above threshold than the first
    pixel stack (1 M, kept small because sep allocates all of it at every call): the pass is made
    again with a larger one, and the stars are found."""
    from rpp_core import detect

    ny = nx = 1300
    yy, xx = np.mgrid[0:ny, 0:nx]
    rng = np.random.default_rng(3)
    data = 200.0 * np.exp(-0.5 * ((xx - 650) ** 2 + (yy - 650) ** 2) / 500.0**2)  # ~1.2 M px above 5 sigma
    stars = rng.uniform(60, 1240, (40, 2))
    for x0, y0 in stars:
        data += 3000.0 * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / 1.5**2)
    data = (data + rng.normal(0.0, 5.0, data.shape)).astype(np.float32)
    rms = np.full(data.shape, 5.0, np.float32)
    assert (data > 5 * 5.0 * 3).sum() > detect._PIXSTACK  # more than the first stack, even on the filtered image
    tab = find_stars(data, rms, None, 3.5, DetectionSettings(), border_px=10)
    d, _ = cKDTree(np.c_[tab["x"], tab["y"]]).query(stars)
    assert (d < 1.0).sum() >= 38
