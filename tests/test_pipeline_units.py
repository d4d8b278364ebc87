"""End to end (issue 9 items 4-6): header zero points, weight maps and masks, raw frames through ``pipeline.run``."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from rpp_core import pipeline
from rpp_core.synthetic import make_frame, moffat_enclosed

from .conftest_pipeline_helpers import offline_profile

pytestmark = pytest.mark.slow

GAIN, RN, SKY, ZP0 = 1.5, 5.0, 300.0, 25.0


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """512^2, no cosmic rays; the header carries MAGZPT (per second, ADU) = ZP0 - 2.5 log10(gain)."""
    d = tmp_path_factory.mktemp("units")
    fr = make_frame(shape=(512, 512), n_stars=150, fwhm=3.0, seed=21, zp0=ZP0, gain=GAIN, read_noise=RN, sky=SKY,
                    n_cosmics=0, n_saturated=0, mag_range=(13.0, 19.0), min_separation=12.0)
    fr.header["MAGZPT"] = (ZP0 - 2.5 * math.log10(GAIN), "[mag] zero point per sec")
    fr.write(d / "frame.fits")
    fr.write_refcat(d / "ref.ecsv")
    return fr, d


def _isolated_truth(fr, cat: Table, radius: float = 2.0):
    t = fr.truth
    d = np.hypot(np.asarray(cat["x"])[:, None] - np.asarray(t["x"])[None, :],
                 np.asarray(cat["y"])[:, None] - np.asarray(t["y"])[None, :])
    j = d.argmin(axis=1)
    return j, d[np.arange(len(cat)), j] < radius


def _true_snr_ap2(fr, cat: Table, s, j, model_var: float) -> np.ndarray:
    """The injected model's S/N in aperture ap2 for truth rows ``j``: source Poisson, sky noise
    (``model_var`` ADU^2 a pixel) in the aperture, and the local level's noise (median of the
    annulus: pi/2 the variance of a mean)."""
    r = s.apertures_px["ap2"]
    rin, rout = cat.meta["annulus_px"]
    area, n_ann = np.pi * r * r, np.pi * (rout**2 - rin**2)
    signal = np.asarray(fr.truth["flux"])[j] * moffat_enclosed(r, 3.0, 3.0)
    return signal / np.sqrt(signal / GAIN + area * model_var + area**2 * (np.pi / 2) * model_var / n_ann)


def test_header_zero_point_calibrates_a_frame_with_no_reference_within_30_mmag(frame, tmp_path):
    fr, d = frame
    res = asyncio.run(pipeline.run(d / "frame.fits", offline_profile(), out_dir=tmp_path))
    s, cat = res.summary, res.catalog
    assert s.calibration_source == "header MAGZPT"
    assert s.zp == pytest.approx(ZP0 - 2.5 * math.log10(GAIN), abs=1e-9)
    written = Table.read(res.run_dir / "catalog.ecsv", format="ascii.ecsv")
    assert written.meta["calibration_source"] == "header MAGZPT" and written.meta["gain_source"] == "header"
    assert any("calibration source: header MAGZPT" in line for line in (res.run_dir / "run.log").read_text().splitlines())
    # the largest aperture (3 FWHM) holds all but enclosed(3 FWHM) of a Moffat beta 3 star
    j, ok = _isolated_truth(fr, cat)
    ok &= np.asarray(cat["snr_ap3"]) > 50
    loss = -2.5 * np.log10(moffat_enclosed(s.apertures_px["ap3"], 3.0, 3.0))
    offset = np.median(np.asarray(cat["mag_cal_ap3"])[ok] - np.asarray(fr.truth["mag"])[j[ok]]) - loss
    assert ok.sum() >= 20 and abs(offset) < 0.03


def test_header_zero_point_is_reported_beside_the_fitted_one(frame, tmp_path):
    fr, d = frame
    res = asyncio.run(pipeline.run(d / "frame.fits", offline_profile(**{"calibration.mag_max": 18.0}), out_dir=tmp_path,
                                   catalog_files=[d / "ref.ecsv"]))
    s = res.summary
    assert s.calibration_source.startswith("fit to")
    assert s.header_zp["source"] == "header MAGZPT"
    # the fit is for the ap2 aperture, the header for the total flux: the fitted one is smaller by the aperture loss
    loss = -2.5 * np.log10(moffat_enclosed(s.apertures_px[s.calibration_label], 3.0, 3.0))
    assert s.header_zp["fitted_minus_header"] == pytest.approx(-loss, abs=0.02)


def test_weight_map_and_mask_keep_bad_regions_and_a_masked_star_out_and_set_the_errors(frame, tmp_path):
    """Zero weight over five star-like artefacts, a mask over one star, and the inverse variance of the injected noise.

    Without the weight map the artefacts are detected; with it they are not, the masked star
    is not measured, and the S/N of isolated stars matches the truth's within 10 % (the
    errors come from the weight map).
    """
    fr, d = frame
    data = fr.data.copy()
    rng = np.random.default_rng(7)
    tx, ty = np.asarray(fr.truth["x"]), np.asarray(fr.truth["y"])
    blobs = []
    while len(blobs) < 5:
        bx, by = rng.uniform(30, 480, 2)
        if np.min(np.hypot(tx - bx, ty - by)) > 20 and all(np.hypot(bx - x, by - y) > 20 for x, y in blobs):
            blobs.append((bx, by))
    model_var = (SKY * GAIN + RN**2) / GAIN**2  # sky Poisson and read noise, ADU^2 (the sky gradient is 5 %)
    weight = np.full(data.shape, 1.0 / model_var, np.float32)
    yy, xx = np.mgrid[0:512, 0:512]
    for bx, by in blobs:  # star-like artefacts (ghosts) the weight map knows about
        data += (5000.0 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 1.3**2))).astype(np.float32)
        weight[int(by) - 5:int(by) + 6, int(bx) - 5:int(bx) + 6] = 0.0
    bright = np.flatnonzero((np.asarray(fr.truth["mag"]) < 16) & (tx > 40) & (tx < 470) & (ty > 40) & (ty < 470))
    mx, my = float(tx[bright[0]]), float(ty[bright[0]])
    mask = np.zeros(data.shape, np.uint8)
    mask[int(my) - 6:int(my) + 7, int(mx) - 6:int(mx) + 7] = 1
    fits.PrimaryHDU(data, header=fr.header).writeto(tmp_path / "ghosts.fits")
    fits.PrimaryHDU(weight).writeto(tmp_path / "ghosts.weight.fits")
    fits.PrimaryHDU(mask).writeto(tmp_path / "ghosts.mask.fits")
    prof = offline_profile(**{"cosmic_rays.enabled": False})
    # the weight as a run option, the mask from the profile (a camera's bad-pixel mask)
    res = asyncio.run(pipeline.run(tmp_path / "ghosts.fits", prof.replace(**{"masks.mask_file": str(tmp_path / "ghosts.mask.fits")}),
                                   out_dir=tmp_path / "runs", weight=tmp_path / "ghosts.weight.fits"))
    cat, s = res.catalog, res.summary
    x, y = np.asarray(cat["x"]), np.asarray(cat["y"])

    def on_blobs(xs, ys):
        return sum(bool(np.any(np.hypot(xs - bx, ys - by) < 3)) for bx, by in blobs)

    assert on_blobs(x, y) == 0, "detections where the weight is zero"
    assert not np.any(np.hypot(x - mx, y - my) < 3), "the masked star was measured"
    assert s.companions["weight"].startswith("ghosts.weight.fits") and s.companions["mask"].startswith("ghosts.mask")
    bare = asyncio.run(pipeline.run(tmp_path / "ghosts.fits", prof, out_dir=tmp_path / "bare"))
    assert on_blobs(np.asarray(bare.catalog["x"]), np.asarray(bare.catalog["y"])) >= 4
    # errors: aperture S/N of isolated stars against the truth's: source Poisson, sky noise in the aperture, and the
    # noise of the local level (median of the annulus: pi/2 the variance of a mean), all from the injected model
    j, ok = _isolated_truth(fr, cat)
    true_snr = _true_snr_ap2(fr, cat, s, j, model_var)
    ok &= (true_snr > 10) & (true_snr < 200) & (np.asarray(cat["flag_ap2"]) == 0)
    ratio = np.median(np.asarray(cat["snr_ap2"])[ok] / true_snr[ok])
    assert ok.sum() >= 20 and ratio == pytest.approx(1.0, abs=0.1)


def test_without_a_gain_keyword_the_sky_gives_the_gain_and_the_errors_match_the_truth(frame, tmp_path):
    """GAIN removed (and GAIN = 0, which means unknown): the gain is measured from the sky and the S/N is the truth's."""
    fr, d = frame
    with fits.open(d / "frame.fits") as hdul:
        data, header = hdul[0].data, hdul[0].header.copy()
    del header["GAIN"]
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "nogain.fits")
    header["GAIN"] = 0.0
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "gain0.fits")
    for name in ("nogain", "gain0"):
        res = asyncio.run(pipeline.run(tmp_path / f"{name}.fits", offline_profile(**{"cosmic_rays.enabled": False}),
                                       out_dir=tmp_path / name))
        s, cat = res.summary, res.catalog
        assert s.gain_source == "sky" and s.gain == pytest.approx(GAIN, rel=0.05), name
        log = (res.run_dir / "run.log").read_text()
        assert "effective gain:" in log and "sky" in log
        # the S/N of isolated stars: source Poisson at the true gain, sky noise, the annulus level's noise
        j, ok = _isolated_truth(fr, cat)
        true_snr = _true_snr_ap2(fr, cat, s, j, (SKY * GAIN + RN**2) / GAIN**2)
        bright = ok & (true_snr > 100) & (np.asarray(cat["flag_ap2"]) == 0)  # where the Poisson term dominates
        assert bright.sum() >= 10, name
        assert np.median(np.asarray(cat["snr_ap2"])[bright] / true_snr[bright]) == pytest.approx(1.0, abs=0.1), name


def test_detection_skips_the_border_the_masks_set(frame, tmp_path):
    """One border: the profile's masks.border_px is masked and no star is sought in it (none centred within 60 px)."""
    fr, d = frame
    b = 60
    t = fr.truth
    near_edge = np.minimum(np.minimum(t["x"], 511 - t["x"]), np.minimum(t["y"], 511 - t["y"])) < b
    assert near_edge.sum() > 20  # stars the default 10 px border would keep
    res = asyncio.run(pipeline.run(d / "frame.fits", offline_profile(**{"masks.border_px": b}), out_dir=tmp_path))
    x, y = np.asarray(res.catalog["x"]), np.asarray(res.catalog["y"])
    assert len(x) > 50
    assert np.min(np.minimum(np.minimum(x, 511 - x), np.minimum(y, 511 - y))) >= b
