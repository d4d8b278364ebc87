"""Masks, cosmic rays and background against the truth of synthetic frames (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from rpp_core.errors import Cancelled, InputError
from rpp_core.preprocess import (Background, Masks, estimate_background, make_masks, remove_cosmics,
                                 remove_cosmics_near)
from rpp_core.settings import BackgroundSettings, CosmicRaySettings, DetectionSettings, MaskSettings
from rpp_core.synthetic import make_frame, moffat_alpha

SEED = 7


@pytest.fixture(scope="module")
def frame():
    return make_frame(shape=(1024, 1024), n_stars=400, n_cosmics=120, n_saturated=4, seed=SEED)


@pytest.fixture(scope="module")
def masks(frame):
    return make_masks(frame.data, frame.params["saturation"], MaskSettings())


@pytest.fixture(scope="module")
def cleaned(frame, masks):
    p = frame.params
    return remove_cosmics(frame.data, masks.nan | masks.saturated, p["gain"], p["saturation"], CosmicRaySettings())


def _sky_map(frame):
    ny, nx = frame.data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    return frame.params["sky"] * (1.0 + 0.05 * (xx / nx) - 0.03 * (yy / ny))


def test_injected_cosmic_rays_are_found_and_star_cores_are_left_alone(frame, cleaned):
    image, crmask = cleaned
    truth_cr = frame.params["cosmic_mask"]
    assert image.dtype == np.float32 and crmask.dtype == bool
    recall = (crmask & truth_cr).sum() / truth_cr.sum()
    assert recall >= 0.9, f"CR recall {recall:.3f}"
    # false alarms are rare single noise peaks, not stars
    false_px = crmask & ~ndi.binary_dilation(truth_cr, iterations=2)
    assert false_px.sum() < 1e-4 * crmask.size
    t = frame.truth[~frame.truth["saturated"]]
    ix, iy = np.round(t["x"]).astype(int), np.round(t["y"]).astype(int)
    core_hit = np.zeros(len(t), bool)
    real_hit = np.zeros(len(t), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            core_hit |= crmask[iy + dy, ix + dx]
            real_hit |= ndi.binary_dilation(truth_cr, iterations=2)[iy + dy, ix + dx]
    wrongly = (core_hit & ~real_hit).sum()
    assert wrongly <= 0.01 * len(t), f"{wrongly} of {len(t)} star cores flagged as cosmic rays"


def test_cleaned_cosmic_ray_pixels_match_the_frame_without_cosmic_rays(frame, cleaned):
    # same seed, no cosmics: every other pixel is identical, so the CR pixels have a truth
    clean_truth = make_frame(shape=(1024, 1024), n_stars=400, n_cosmics=0, n_saturated=4, seed=SEED).data
    image, crmask = cleaned
    truth_cr = frame.params["cosmic_mask"]
    resid = (image - clean_truth)[truth_cr]
    noise = np.sqrt(frame.params["sky"] / frame.params["gain"] + (frame.params["read_noise"] / frame.params["gain"]) ** 2)
    assert np.median(np.abs(resid)) < noise
    # pixels not flagged are untouched
    assert np.array_equal(image[~crmask], frame.data[~crmask])


def test_tiled_cosmic_ray_cleaning_equals_one_piece_and_reports_progress(frame, masks):
    p = frame.params
    sub = frame.data[:512, :512]
    m = (masks.nan | masks.saturated)[:512, :512]
    ref_img, ref_mask = remove_cosmics(sub, m, p["gain"], p["saturation"], CosmicRaySettings(tile_px=0))
    seen = []
    for workers in (1, 2):
        seen.clear()
        img, crm = remove_cosmics(sub, m, p["gain"], p["saturation"],
                                  CosmicRaySettings(tile_px=128, workers=workers), progress=lambda d, t: seen.append((d, t)))
        assert np.array_equal(crm, ref_mask)
        assert np.array_equal(img, ref_img)
        assert seen[-1] == (16, 16) and len(seen) == 16


@pytest.mark.parametrize("workers", [1, 2])
def test_cosmic_ray_removal_stops_when_cancelled(frame, workers):
    p = frame.params
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        remove_cosmics(frame.data, None, p["gain"], p["saturation"],
                       CosmicRaySettings(tile_px=256, workers=workers), cancel=cancel)
    assert len(calls) == 3  # stopped at the first check after cancel turned true


def test_cosmic_rays_found_without_gain_or_read_noise_in_the_header(frame):
    sub = frame.data[:512, :512]
    truth_cr = frame.params["cosmic_mask"][:512, :512]
    _, crm = remove_cosmics(sub, sub >= 0.95 * frame.params["saturation"], None, None, CosmicRaySettings())
    assert (crm & truth_cr).sum() / truth_cr.sum() >= 0.9
    # astroscrappy flags the core of a star cut by the array edge: leave out the 10 px border
    false_px = (crm & ~ndi.binary_dilation(truth_cr, iterations=2))[10:-10, 10:-10]
    assert false_px.sum() < 1e-4 * crm.size


def test_nan_pixels_survive_cosmic_ray_cleaning_as_nan(frame):
    sub = frame.data[:256, :256].copy()
    sub[100:110, 50:60] = np.nan
    img, crm = remove_cosmics(sub, None, 1.5, 60000.0, CosmicRaySettings())
    assert np.isnan(img[100:110, 50:60]).all()
    assert not crm[100:110, 50:60].any()
    assert np.isfinite(img[:90]).all()


def test_background_within_1_percent_of_injected_sky_and_rms_matches_noise(frame, masks, cleaned):
    image, crmask = cleaned
    bkg = estimate_background(image, masks.combined | crmask, BackgroundSettings())
    assert isinstance(bkg, Background)
    assert bkg.background.dtype == np.float32 and bkg.rms.dtype == np.float32
    sky = _sky_map(frame)
    rel = bkg.background / sky - 1.0
    assert abs(np.median(rel)) < 0.01
    assert np.percentile(np.abs(rel), 99) < 0.01
    p = frame.params
    noise = np.sqrt(sky / p["gain"] + (p["read_noise"] / p["gain"]) ** 2)
    assert abs(np.median(bkg.rms / noise) - 1.0) < 0.05
    assert abs(bkg.global_bkg / sky.mean() - 1.0) < 0.01
    assert abs(bkg.global_rms / np.median(noise) - 1.0) < 0.05


def test_background_ignores_masked_pixels():
    f = make_frame(shape=(512, 512), n_stars=50, n_cosmics=0, n_saturated=0, seed=SEED)
    data = f.data.copy()
    data[100:300, 100:300] += 5000.0  # a masked blemish must not raise the sky
    mask = np.zeros(data.shape, bool)
    mask[100:300, 100:300] = True
    bkg = estimate_background(data, mask, BackgroundSettings(box=32))
    sky = _sky_map(f)
    assert np.abs(bkg.background / sky - 1.0)[150:250, 150:250].max() < 0.02
    unmasked = estimate_background(data, None, BackgroundSettings(box=32))
    assert (unmasked.background / sky)[150:250, 150:250].min() > 2.0  # the test can tell


def test_background_with_nan_pixels_is_the_same_given_the_masks_nan_or_not():
    """The pipeline hands Masks.nan over so that the non-finite pixels are not found twice: same maps, bit for bit."""
    f = make_frame(shape=(512, 512), n_stars=50, n_cosmics=0, n_saturated=2, seed=SEED)
    data = f.data.copy()
    data[40:60, 200:260] = np.nan
    data[300, 10:20] = np.inf
    masks = make_masks(data, 60000.0, MaskSettings())
    assert masks.nan[50, 210] and masks.nan[300, 15] and masks.combined[50, 210]
    given = estimate_background(data, masks.combined, BackgroundSettings(box=32), nan=masks.nan)
    found = estimate_background(data, masks.combined, BackgroundSettings(box=32))
    b = masks.border_px
    assert b > 0  # else b:-b below would be empty
    edge = np.ones(data.shape, bool)
    edge[b:-b, b:-b] = False
    bare = estimate_background(data, edge | masks.saturated, BackgroundSettings(box=32))
    for other in (found, bare):
        assert np.array_equal(given.background, other.background) and np.array_equal(given.rms, other.rms)
        assert (given.global_bkg, given.global_rms) == (other.global_bkg, other.global_rms)
    assert np.isfinite(given.background).all() and (given.rms > 0).all()


def test_saturated_mask_covers_the_injected_saturated_stars(frame, masks):
    assert isinstance(masks, Masks)
    sat_stars = frame.truth[frame.truth["saturated"]]
    assert len(sat_stars) == 4
    for row in sat_stars:
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        assert masks.saturated[iy, ix]
    # the brightest catalogue stars clip too: predict every star's peak from its flux
    t = frame.truth
    beta = t.meta["beta"]
    alpha = moffat_alpha(t.meta["fwhm"], beta)
    peak = np.asarray(t["flux"]) * (beta - 1) / (np.pi * alpha**2)
    level = masks.saturation_level
    assert level == pytest.approx(0.95 * 60000.0)
    ix, iy = np.round(t["x"]).astype(int), np.round(t["y"]).astype(int)
    assert masks.saturated[iy, ix][peak > 1.2 * level].all()
    assert not masks.saturated[iy, ix][peak < 0.5 * level].any()
    # every saturated blob sits on a star that should clip
    labels, n = ndi.label(masks.saturated)
    on_blob = labels[iy, ix]
    assert set(on_blob[peak > 0.8 * level]) - {0} == set(range(1, n + 1))
    raw = frame.data >= level
    assert masks.saturated[raw].all() and masks.saturated.sum() > raw.sum()  # grown by 1 px


def test_border_nan_and_combined_masks():
    f = make_frame(shape=(256, 300), n_stars=20, n_cosmics=0, n_saturated=1, seed=SEED)
    data = f.data.copy()
    data[50, 60] = np.nan
    data[70, 80] = np.inf
    m = make_masks(data, 60000.0, MaskSettings(border_px=12))
    assert m.nan[50, 60] and m.nan[70, 80] and m.nan.sum() == 2
    assert m.border_px == 12
    edge = np.ones(data.shape, bool)
    edge[12:-12, 12:-12] = False  # a 12 px strip on each side, nothing inside
    assert np.array_equal(m.combined, m.nan | m.saturated | edge)
    assert np.array_equal(make_masks(data, 60000.0, MaskSettings(border_px=0)).combined, m.nan | m.saturated)


def test_the_measurable_image_carries_the_border_the_masks_set():
    """Detection reads ``MeasurableImage.border_px``: the border of ``combined``, decided once in make_masks."""
    from rpp_core.preprocess import measurable_image
    from rpp_core.products import ExposureValues

    data = np.random.default_rng(SEED).normal(100.0, 5.0, (64, 80)).astype(np.float32)
    m = make_masks(data, None, MaskSettings(border_px=7))
    bkg = estimate_background(data, m.combined, BackgroundSettings(box=16))
    image = measurable_image(data, m, bkg, ExposureValues(gain=1.0, read_noise=5.0, exptime=1.0, saturation=None,
                                                          exptime_magnitudes=1.0))
    assert image.border_px == 7 and image.mask is m.combined
    assert image.mask[:, 6].all() and not image.mask[7:-7, 7].any()


def test_saturation_level_found_from_a_clipped_plateau_when_unknown(frame, masks):
    m = make_masks(frame.data, None, MaskSettings())
    assert m.saturation_level == pytest.approx(0.95 * 60000.0)  # the plateau, less the same non-linear margin
    assert np.array_equal(m.saturated, masks.saturated) and m.plateau_note is None
    for row in frame.truth[frame.truth["saturated"]]:
        assert m.saturated[int(round(row["y"])), int(round(row["x"]))]
    noise_only = np.random.default_rng(1).normal(100, 10, (128, 128)).astype(np.float32)
    assert not make_masks(noise_only, None, MaskSettings()).saturated.any()


def test_a_clipped_plateau_below_the_header_level_is_masked_as_saturated(frame, masks):
    """A bias or pedestal subtracted after readout leaves SATURATE above the flat tops of the clipped stars."""
    p = frame.params
    low = (frame.data - np.float32(5000.0)).astype(np.float32)
    m = make_masks(low, p["saturation"], MaskSettings())  # the header still says 60000
    assert m.saturation_level == pytest.approx(0.95 * (p["saturation"] - 5000.0))
    assert np.array_equal(m.saturated, masks.saturated)  # the same pixels as with the level that applies
    assert "below the saturation level" in m.plateau_note and "SATURATE" in m.plateau_note
    # a level the pixels reach, or a maximum that is a single pixel, is left as the header gives it
    assert masks.plateau_note is None
    yy, xx = np.mgrid[:128, :128]
    star = np.random.default_rng(2).normal(100, 10, (128, 128)) + 30000.0 * np.exp(-((xx - 64.3) ** 2 + (yy - 63.8) ** 2) / 4.5)
    peak = make_masks(star.astype(np.float32), 60000.0, MaskSettings())
    assert peak.saturation_level == pytest.approx(57000.0) and peak.plateau_note is None
    assert not peak.saturated.any()


def test_ties_at_the_maximum_that_are_no_flat_top_leave_the_saturation_level_alone():
    """A faint integer frame ties at its maximum by chance, a bad column sits at a constant: neither is clipping."""
    rng = np.random.default_rng(3)
    faint = rng.poisson(5.0, (1024, 1024)).astype(np.float32)
    # the brightest pixels of a few faint stars, equal as small integers often are: 4 places, one pair adjacent
    for y, x in [(253, 104), (395, 403), (507, 773), (617, 633), (617, 634)]:
        faint[y, x] = 48.0
    assert np.count_nonzero(faint == faint.max()) == 5
    for level in (65535.0, None):
        m = make_masks(faint, level, MaskSettings())
        assert not m.saturated.any() and m.plateau_note is None
    column = rng.normal(1000, 10, (256, 256)).astype(np.float32)
    column[:, 100] = 30000.0
    m = make_masks(column, 65535.0, MaskSettings(saturation_dilate_px=0))
    assert m.saturation_level == pytest.approx(0.95 * 65535.0) and not m.saturated.any()


def test_all_nan_frame_is_refused_with_a_clear_error():
    with pytest.raises(InputError, match="NaN"):
        make_masks(np.full((64, 64), np.nan, np.float32), 60000.0, MaskSettings())


def test_cosmic_rays_round_sources_match_the_whole_frame_result_there(frame, masks, cleaned):
    """Stamps round the sources find the same hits as the whole-frame run, inside the measured discs."""
    p = frame.params
    t = frame.truth
    radius = 10.0
    progress = []
    near_clean, near_mask = remove_cosmics_near(
        frame.data, masks.nan | masks.saturated, np.asarray(t["x"]), np.asarray(t["y"]), radius,
        p["gain"], p["saturation"], CosmicRaySettings(), chunk=150,
        progress=lambda d, n: progress.append((d, n)))
    assert len(progress) >= 2 and progress[-1][0] == progress[-1][1] and sorted(progress) == progress
    ny, nx = frame.data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    near = np.zeros((ny, nx), bool)
    for x, y in zip(t["x"], t["y"]):
        near |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    injected = p["cosmic_mask"] & near & ~masks.saturated
    full_mask = cleaned[1]
    assert injected.sum() > 20
    recall = (near_mask & injected).sum() / injected.sum()
    assert recall >= 0.9
    # agreement with the whole-frame run inside the discs, nothing flagged outside the stamps
    inside = near & ~masks.saturated
    assert (near_mask[inside] == full_mask[inside]).mean() > 0.9999
    # nothing is flagged beyond the kept stamp interiors (squares of half-size ceil(r))
    fy, fx = np.nonzero(near_mask)
    cheb = np.min(np.maximum(np.abs(fx[:, None] - np.round(np.asarray(t["x"]))[None, :]),
                             np.abs(fy[:, None] - np.round(np.asarray(t["y"]))[None, :])), axis=1)
    assert cheb.max() <= np.ceil(radius)
    # only flagged pixels change
    assert np.array_equal(near_clean[~near_mask], frame.data[~near_mask])


def test_cosmic_rays_round_sources_stop_when_cancelled(frame, masks):
    t = frame.truth
    with pytest.raises(Cancelled):
        remove_cosmics_near(frame.data, masks.combined, np.asarray(t["x"]), np.asarray(t["y"]), 8.0, 1.5,
                            60000, CosmicRaySettings(), cancel=lambda: True)


# ---------------------------------------------------------------- background-relative signal, sharp stars


def test_a_frame_offset_by_minus_5000_adu_gives_the_same_cosmic_rays(frame, masks, cleaned):
    """Issue 14: the hits are found on the signal above the background, whatever the pedestal."""
    p = frame.params
    low = frame.data - np.float32(5000.0)
    img, crm = remove_cosmics(low, masks.nan | masks.saturated, p["gain"], p["saturation"] - 5000.0, CosmicRaySettings())
    ref_img, ref_mask = cleaned
    assert (crm != ref_mask).sum() <= 0.02 * ref_mask.sum(), f"{crm.sum()} vs {ref_mask.sum()} pixels"
    assert np.allclose(img[crm & ref_mask] + 5000.0, ref_img[crm & ref_mask], atol=1.0)


def test_cosmic_ray_plan_skips_when_stars_are_as_sharp_as_hits_and_checks_shapes_below_2_5_px():
    from rpp_core.preprocess import cosmic_ray_plan

    skip = cosmic_ray_plan(0.78, 0.74)  # the binned SDSS frame
    assert not skip.run and "as sharp as cosmic-ray hits" in skip.note
    sharp = cosmic_ray_plan(1.4, 0.33)
    assert sharp.run and sharp.star_share == pytest.approx(1.25 * 0.33) and "sharp stars" in sharp.note
    normal = cosmic_ray_plan(3.5, 0.16)
    assert normal.run and normal.star_share is None and normal.note == ""


def test_undersampled_frame_keeps_its_stars_through_cosmic_ray_cleaning():
    """FWHM 1.3 px: astroscrappy alone takes star cores for hits; with the shape test the stars stay, the hits go."""
    from rpp_core.detect import measure_fwhm
    from rpp_core.preprocess import cosmic_ray_plan

    fr = make_frame(shape=(768, 768), n_stars=400, fwhm=1.3, n_cosmics=100, n_saturated=0, seed=SEED)
    p = fr.params
    settings = DetectionSettings()
    m = make_masks(fr.data, p["saturation"], MaskSettings())
    bkg = estimate_background(fr.data, m.combined, BackgroundSettings())
    fw = measure_fwhm(fr.data - bkg.background, bkg.rms, m.combined, None, settings)
    plan = cosmic_ray_plan(fw.fwhm_px, fw.peak_share)
    assert plan.run and plan.star_share is not None
    t = fr.truth
    ix, iy = np.round(np.asarray(t["x"])).astype(int), np.round(np.asarray(t["y"])).astype(int)
    hits = p["cosmic_mask"]
    near_hit = ndi.binary_dilation(hits, iterations=2)[iy, ix]
    out = {}
    for share in (None, plan.star_share):
        _, crm = remove_cosmics(fr.data, m.nan | m.saturated, p["gain"], p["saturation"], CosmicRaySettings(),
                                background=bkg.background, rms=bkg.rms, star_share=share)
        eaten = crm[iy, ix] & ~near_hit
        out[share] = (eaten.sum(), (crm & hits).sum() / hits.sum())
    eaten_raw, _ = out[None]
    eaten, recall = out[plan.star_share]
    assert eaten_raw > 0.1 * len(t)  # what astroscrappy does to undersampled stars on its own
    assert eaten <= 0.01 * len(t), f"{eaten} of {len(t)} star centres still flagged"
    assert recall >= 0.6, f"hit recall {recall:.2f}"  # multi-pixel tracks shaped like stars are let through


def test_cosmic_rays_round_sources_on_a_crowded_frame_equal_a_whole_frame_run_and_hits_on_stars_are_found():
    """Issue 10: the pre-tested path round the sources must flag exactly what astroscrappy flags on the whole
    frame there, find hits landing on bright stars, and leave the stars' cores alone."""
    fr = make_frame(shape=(768, 768), n_stars=1500, n_cosmics=120, n_saturated=2, seed=11)
    p, t = fr.params, fr.truth
    data = fr.data.copy()
    truth = p["cosmic_mask"].copy()
    # 40 hits 0-2 px from the centres of bright unsaturated stars: the case a pre-test could miss
    rng = np.random.default_rng(3)
    bright = np.flatnonzero(~np.asarray(t["saturated"]) & (np.asarray(t["flux"]) > 2e4))[:40]
    assert bright.size == 40
    hy = np.round(np.asarray(t["y"])[bright]).astype(int) + rng.integers(-2, 3, 40)
    hx = np.round(np.asarray(t["x"])[bright]).astype(int) + rng.integers(-2, 3, 40)
    data[hy, hx] += rng.uniform(1500, 4000, 40).astype(np.float32)
    truth[hy, hx] = True
    m = make_masks(data, p["saturation"], MaskSettings())
    protect = m.nan | m.saturated
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    radius = 10.0
    whole_img, whole = remove_cosmics(data, protect, p["gain"], p["saturation"], CosmicRaySettings(tile_px=0))
    near_img, near = remove_cosmics_near(data, protect, x, y, radius, p["gain"], p["saturation"], CosmicRaySettings())
    ny, nx = data.shape
    kept = np.zeros((ny, nx), bool)
    for xi, yi in zip(np.round(x).astype(int), np.round(y).astype(int)):
        kept[max(yi - 10, 0):yi + 11, max(xi - 10, 0):xi + 11] = True
    assert not (near & ~kept).any()
    assert np.array_equal(near, whole & kept), f"{(near & ~whole).sum()} extra, {(whole & kept & ~near).sum()} missed"
    assert np.allclose(near_img[near], whole_img[near], atol=0.01)
    on_stars = np.zeros((ny, nx), bool)
    on_stars[hy, hx] = True
    injected = truth & kept & ~m.saturated & ~on_stars
    assert (near & injected).sum() >= 0.95 * injected.sum(), f"recall {(near & injected).sum()} / {injected.sum()}"
    # L.A.Cosmic's contrast test (objlim) lets most hits on a bright core pass, whole frame or not (12 of 40 here)
    assert (near & on_stars).sum() >= 10, f"{(near & on_stars).sum()} of 40 hits on stars found"
    # the other stars' cores: nothing flagged within 1 px of a centre unless a hit lies within 2 px
    grown = ndi.binary_dilation(truth, iterations=2)
    ok = ~np.asarray(t["saturated"])
    ok[bright] = False
    ix, iy = np.round(x[ok]).astype(int), np.round(y[ok]).astype(int)
    eaten = np.zeros(ix.size, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            eaten |= near[iy + dy, ix + dx] & ~grown[iy + dy, ix + dx]
    assert eaten.sum() <= 0.01 * ix.size, f"{eaten.sum()} of {ix.size} star cores flagged"  # 9 of 1,458 here
