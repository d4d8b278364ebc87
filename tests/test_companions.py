"""Weight maps and masks beside an image (rpp_core.image.companions): found, read, turned into the noise."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits

from rpp_core import image
from rpp_core.errors import InputError

from .datafiles import data_file

DECAM = "real/decam_cp_z_cutout/c4d_170316_062107_{}_z_ls9.N2.fits.gz"


def test_decam_weight_and_mask_are_found_by_the_community_pipeline_names():
    fr = image.load_frame(data_file(DECAM.format("ooi")))
    w = image.load_pixel_weights(fr)
    assert "oow" in w.weight_source and "ood" in w.mask_source
    truth_mask = fits.getdata(data_file(DECAM.format("ood")), 1) != 0
    truth_weight = fits.getdata(data_file(DECAM.format("oow")), 1)
    assert np.array_equal(w.bad, truth_mask | ~(truth_weight > 0))
    assert w.bad.sum() == 177


def test_decam_inverse_variance_agrees_with_the_sky_noise_and_is_used_as_it_is():
    fr = image.load_frame(data_file(DECAM.format("ooi")))
    w = image.load_pixel_weights(fr)
    sky = image.units.sky_noise(fr.data, w.bad)
    noise = image.noise_map(w, sky.sigma, ~w.bad)
    assert noise.scale == 1.0
    good = ~w.bad
    np.testing.assert_allclose(noise.rms[good], 1.0 / np.sqrt(fits.getdata(data_file(DECAM.format("oow")), 1)[good]),
                               rtol=1e-6)
    assert np.median(noise.rms[good]) == pytest.approx(sky.sigma, rel=0.05)


def test_relative_weights_are_scaled_to_the_measured_noise(tmp_path):
    """An exposure-style map (1 left, 1/5 right): scaled on the left's noise, it gives the right half's noise too."""
    rng = np.random.default_rng(4)
    data = (1000.0 + rng.normal(0.0, 10.0, (200, 200))).astype(np.float32)
    data[:, 100:] += rng.normal(0.0, 20.0, (200, 100)).astype(np.float32)  # right: sqrt(10^2 + 20^2) = 22.4
    img, wgt = tmp_path / "frame.fits", tmp_path / "exposure_map.fits"
    fits.PrimaryHDU(data).writeto(img)
    rel = np.ones((200, 200), np.float32)
    rel[:, 100:] = 1.0 / 5.0
    fits.PrimaryHDU(rel).writeto(wgt)
    w = image.load_pixel_weights(image.load_frame(img), weight=wgt)
    left = np.zeros((200, 200), bool)
    left[:, :100] = True
    noise = image.noise_map(w, float(np.std(data[:, :100])), left)
    assert noise.scale == pytest.approx(10.0, rel=0.02)
    assert np.median(noise.rms[:, 100:]) == pytest.approx(np.std(data[:, 100:]), rel=0.03)
    assert "relative weights" in noise.source


def test_a_good_pixel_map_is_read_the_right_way_round(tmp_path):
    data = np.random.default_rng(1).normal(100.0, 5.0, (50, 60)).astype(np.float32)
    good = np.ones((50, 60), np.int16)
    good[5, 7] = 0
    fits.PrimaryHDU(data).writeto(tmp_path / "f.fits")
    fits.PrimaryHDU(good).writeto(tmp_path / "good.fits")
    w = image.load_pixel_weights(image.load_frame(tmp_path / "f.fits"), mask=tmp_path / "good.fits")
    assert w.bad.sum() == 1 and w.bad[5, 7]
    assert any("good-pixel map" in n for n in w.notes)


def test_a_weight_file_of_another_shape_or_missing_is_an_error_naming_it(tmp_path):
    data = np.random.default_rng(1).normal(100.0, 5.0, (50, 60)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(tmp_path / "f.fits")
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(tmp_path / "w.fits")
    fr = image.load_frame(tmp_path / "f.fits")
    with pytest.raises(InputError, match="w.fits: no image of the frame's shape 60x50"):
        image.load_pixel_weights(fr, weight=tmp_path / "w.fits")
    with pytest.raises(InputError, match="nope.fits: no such mask file"):
        image.load_pixel_weights(fr, mask=tmp_path / "nope.fits")


def test_a_frame_without_companions_has_none(tmp_path):
    shutil.copy(data_file(DECAM.format("ooi")), tmp_path / "c4d_x_ooi_z.fits.gz")
    w = image.load_pixel_weights(image.load_frame(tmp_path / "c4d_x_ooi_z.fits.gz"))
    assert w.weight is None and w.bad is None
    assert image.noise_map(w, 10.0) is None
