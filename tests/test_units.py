"""Units, effective gain and header zero points (rpp_core.image.units), on headers, synthetic skies and real frames."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from astropy.io import fits

from rpp_core import image
from rpp_core.image.units import (GainSource, UnitKind, ZpConvention, classify_units, decide_gain, gain_from_sky,
                                  header_gain, header_zero_points, sky_noise)
from rpp_core.settings import ObservatorySettings
from rpp_core.synthetic import make_frame

from .datafiles import data_file


def _hdr(**cards) -> fits.Header:
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    return h


@pytest.mark.parametrize("bunit, kind", [
    (None, UnitKind.COUNTS), ("", UnitKind.COUNTS), ("ADU", UnitKind.COUNTS), ("counts", UnitKind.COUNTS),
    ("DN", UnitKind.COUNTS), ("ADU/s", UnitKind.COUNT_RATE), ("counts/s", UnitKind.COUNT_RATE),
    ("DN/s", UnitKind.COUNT_RATE), ("e-", UnitKind.ELECTRONS), ("electrons", UnitKind.ELECTRONS),
    ("e-/s", UnitKind.ELECTRON_RATE), ("ELECTRONS/S", UnitKind.ELECTRON_RATE), ("electron/sec", UnitKind.ELECTRON_RATE),
    ("nanomaggy", UnitKind.FLUX), ("nanomaggies", UnitKind.FLUX), ("nMgy", UnitKind.FLUX), ("uJy", UnitKind.FLUX),
    ("MJy/sr", UnitKind.SURFACE_BRIGHTNESS), ("mag", UnitKind.OTHER),
])
def test_bunit_spellings_observers_meet_are_read_as_what_they_mean(bunit, kind):
    h = fits.Header()
    if bunit is not None:
        h["BUNIT"] = bunit
    assert classify_units(h).kind is kind


def test_plate_keywords_make_a_plate_whatever_bunit_says():
    h = _hdr(BUNIT="ADU", PLTLABEL="E443")
    assert classify_units(h).kind is UnitKind.PHOTOGRAPHIC
    assert classify_units(_hdr(INSTRUME="Photographic Plate")).kind is UnitKind.PHOTOGRAPHIC


def test_gain_zero_means_unknown_and_amplifier_gains_are_averaged():
    assert header_gain(_hdr(GAIN=0.0))[0] is None
    assert header_gain(_hdr(GAIN=-1.0))[0] is None
    assert header_gain(_hdr(GAIN=0.0, EGAIN=2.2))[0] == 2.2
    g, src = header_gain(_hdr(GAINA=3.87, GAINB=3.89))
    assert g == pytest.approx(3.88) and "GAINA" in src and "GAINB" in src


def test_effective_gain_follows_the_units_as_sextractor_and_photutils_define_it():
    counts = decide_gain(_hdr(GAIN=2.0), classify_units(_hdr()), 100.0)
    assert counts.value == 2.0 and counts.source is GainSource.HEADER
    rate = decide_gain(_hdr(GAIN=2.0, BUNIT="ADU/s"), classify_units(_hdr(BUNIT="ADU/s")), 100.0)
    assert rate.value == pytest.approx(200.0)  # photutils: effective_gain = exposure time x gain for a rate
    e = decide_gain(_hdr(GAIN=2.0, BUNIT="e-"), classify_units(_hdr(BUNIT="e-")), 100.0)
    assert e.value == 1.0 and e.source is GainSource.ELECTRONS
    es = decide_gain(_hdr(BUNIT="e-/s"), classify_units(_hdr(BUNIT="e-/s")), 30.0)
    assert es.value == 30.0
    plate = decide_gain(_hdr(GAIN=1.0, PLATEID="A0JP"), classify_units(_hdr(PLATEID="A0JP")), 3000.0)
    assert plate.value is None and plate.source is GainSource.LEFT_OUT
    nmgy = decide_gain(_hdr(BUNIT="nanomaggy"), classify_units(_hdr(BUNIT="nanomaggy")), 53.9)
    assert nmgy.value is None and nmgy.source is GainSource.LEFT_OUT
    profile = decide_gain(_hdr(GAIN=0.0), classify_units(_hdr()), 10.0, profile_gain=1.7)
    assert profile.value == 1.7 and profile.source is GainSource.PROFILE
    assumed = decide_gain(_hdr(), classify_units(_hdr()), 10.0)
    assert assumed.value == 1.0 and assumed.source is GainSource.ASSUMED


def test_a_known_gain_is_recovered_from_the_sky_variance_of_a_synthetic_frame():
    """Poisson sky at 1.5 e-/ADU with 5 e- read noise, stars and cosmic rays: within 5 %."""
    fr = make_frame(shape=(1024, 1024), n_stars=300, gain=1.5, read_noise=5.0, sky=300.0, seed=5)
    sky = sky_noise(fr.data)
    assert gain_from_sky(sky, 5.0) == pytest.approx(1.5, rel=0.05)
    h = fr.header.copy()
    del h["GAIN"]
    g = decide_gain(h, classify_units(h), 60.0, sky=sky, read_noise_e=5.0, bias_removed=True)
    assert g.source is GainSource.SKY and g.value == pytest.approx(1.5, rel=0.05)


def test_the_sky_noise_is_measured_only_when_the_gain_must_come_from_it():
    """decide_gain takes the measurement as a callable: a header GAIN needs no pixels read."""
    fr = make_frame(shape=(512, 512), n_stars=50, gain=1.5, read_noise=5.0, sky=300.0, seed=5)
    calls = []

    def measure():
        calls.append(1)
        return sky_noise(fr.data)

    known = decide_gain(fr.header, classify_units(fr.header), 60.0, sky=measure)
    assert known.source is GainSource.HEADER and known.value == 1.5 and not calls
    h = fr.header.copy()
    del h["GAIN"]
    g = decide_gain(h, classify_units(h), 60.0, sky=measure, read_noise_e=5.0, bias_removed=True)
    assert calls == [1] and g == decide_gain(h, classify_units(h), 60.0, sky=sky_noise(fr.data), read_noise_e=5.0,
                                             bias_removed=True)
    assert g.source is GainSource.SKY and g.value == pytest.approx(1.5, rel=0.1)


def test_no_sky_in_the_image_means_no_gain_from_it():
    rng = np.random.default_rng(2)
    data = rng.normal(0.0, 10.0, (400, 400)).astype(np.float32)  # sky-subtracted
    g = decide_gain(_hdr(), classify_units(_hdr()), 10.0, sky=sky_noise(data))
    assert g.value is None and g.source is GainSource.LEFT_OUT


def test_casu_magzpt_is_per_second_at_airmass_one():
    h = _hdr(MAGZPT=24.053, MAGZRR=0.01, EXTINCT=0.05)
    z = header_zero_points(h, classify_units(h), 10.0, 1.067).best
    assert z.convention is ZpConvention.PER_SECOND
    assert z.zp == pytest.approx(24.053 - 0.05 * 0.067) and z.zp_err == 0.01 and z.source == "header MAGZPT"


def test_decam_magzero_per_exposure_and_magzpt_per_second_give_the_same_zero_point():
    h = fits.Header()
    h["MAGZERO"] = (29.915, "[mag] Magnitude zero point")
    h["MAGZPT"] = (24.842, "[mag] Magnitude zero point per sec")
    found = header_zero_points(h, classify_units(h), 107.0, 1.8).found
    assert [z.source for z in found] == ["header MAGZPT", "header MAGZERO"]
    assert found[0].zp == pytest.approx(24.842)
    assert found[1].zp == pytest.approx(24.842, abs=0.002)  # 29.915 - 2.5 log10(107)


def test_a_per_second_zero_point_on_a_rate_image_is_not_moved_and_needs_no_exptime():
    h = _hdr(BUNIT="ADU/s", MAGZPT=25.0)
    z = header_zero_points(h, classify_units(h), None, None).best
    assert z.zp == 25.0
    counts = _hdr(MAGZPT=25.0)
    assert header_zero_points(counts, classify_units(counts), None, None).best is None  # counts, no EXPTIME


def test_photzp_applies_to_the_image_values():
    h = _hdr(PHOTZP=30.0)
    z = header_zero_points(h, classify_units(h), 100.0, None).best
    assert z.convention is ZpConvention.IMAGE_VALUES and z.zp == pytest.approx(30.0 - 5.0)


def test_flux_units_define_their_ab_zero_point():
    h = _hdr(BUNIT="nanomaggy")
    assert header_zero_points(h, classify_units(h), 53.9, None, 0.396).best.zp == pytest.approx(22.5)
    h = _hdr(BUNIT="uJy")
    assert header_zero_points(h, classify_units(h), 1.0, None, 1.0).best.zp == pytest.approx(23.9, abs=0.001)
    h = _hdr(BUNIT="MJy/sr")
    z = header_zero_points(h, classify_units(h), 1.0, None, 1.2).best
    omega = (1.2 / 206264.806) ** 2
    assert z.zp == pytest.approx(-2.5 * math.log10(1e6 * omega / 3631.0))


def test_a_resampled_nanomaggy_image_moves_its_zero_point_by_the_pixel_area():
    """The detector pixel from a drift scan's row time; 3x3 block mean: 22.5 - 2.5 log10(9)."""
    h = _hdr(BUNIT="nanomaggy", CCDMODE="DRIFT", C_OBS=26322)
    units = classify_units(h)
    native = header_zero_points(h, units, 53.9, None, 0.396).best
    binned = header_zero_points(h, units, 53.9, None, 3 * 0.396).best
    assert native.zp == pytest.approx(22.5)
    assert binned.zp == pytest.approx(22.5 - 2.5 * math.log10(9.0), abs=0.01)
    focal = _hdr(BUNIT="nanomaggy", XPIXSZ=9.0, FOCALLEN=1000.0)  # 1.856"/px detector pixels, 2x2 binned WCS
    z = header_zero_points(focal, classify_units(focal), 1.0, None, 2 * 1.856).best
    assert z.zp == pytest.approx(22.5 - 2.5 * math.log10(4.0), abs=0.01)


def test_plates_have_no_zero_point():
    h = _hdr(PLTLABEL="E443", MAGZPT=25.0)
    zps = header_zero_points(h, classify_units(h), 3000.0, 1.0)
    assert zps.best is None and "plate" in zps.rejected[0]


# ---------------------------------------------------------------- real frames: the truths of tests/data/real/README.md

REAL = {
    # frame: (path, effective gain (None = left out), gain source, zero point in rpp's convention or None)
    "sdss_g": ("real/sdss_g_1737-5-47/sdss_g_1737-5-47.fits.gz", None, GainSource.LEFT_OUT, 22.5),
    "sdss_binned3": ("real/sdss_gri_binned3/reprojected_sdss_g.fits.gz", None, GainSource.LEFT_OUT,
                     22.5 - 2.5 * math.log10(9)),
    "ukidss_k": ("real/ukidss_k_taurus/ukidss_wfcam_k.fits.gz", 4.5, GainSource.HEADER, 24.053 - 0.05 * 0.067),
    "decam_z": ("real/decam_cp_z_cutout/c4d_170316_062107_ooi_z_ls9.N2.fits.gz", 3.877, GainSource.HEADER, 24.842),
    "lco_raw": ("real/lco1m_sinistro_raw/elp1m008-fa05-20211007-0042-e00.fits.gz", 1.0, GainSource.ELECTRONS, None),
    "saao_raw": ("real/saao1m_raw/a8280271.fits.gz", 1.9, GainSource.HEADER, None),
    "dss_poss1e": ("real/dss_poss1e_wcstest/dss_poss1e_0243+1821.fits.gz", None, GainSource.LEFT_OUT, None),
    "m67": ("images/M6707HH.fits.gz", None, GainSource.LEFT_OUT, None),
    "horsehead": ("images/HorseHead.fits.gz", None, GainSource.LEFT_OUT, None),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_frames_get_their_gain_and_header_zero_point(name):
    path, gain, source, zp = REAL[name]
    meta = image.read_metadata(image.load_frame(data_file(path)), ObservatorySettings())
    assert meta.effective_gain.source is source, meta.effective_gain.text
    if gain is None:
        assert meta.effective_gain.value is None
    else:
        assert meta.effective_gain.value == pytest.approx(gain, rel=1e-3)
    best = meta.zero_points.best
    if zp is None:
        assert best is None
    else:
        assert best is not None and best.zp == pytest.approx(zp, abs=0.005), meta.sources["zero_point"]


def test_ukidss_exposure_time_is_read_from_exp_time_and_airmass_from_amstart_amend():
    meta = image.read_metadata(image.load_frame(data_file("real/ukidss_k_taurus/ukidss_wfcam_k.fits.gz")),
                               ObservatorySettings())
    assert meta.exptime == 10.0 and meta.sources["exptime"] == "header EXP_TIME"
    assert meta.airmass == pytest.approx(1.067) and "AMSTART" in meta.sources["airmass"]


def test_sdss_nanomaggies_are_not_divided_by_the_exposure_time():
    meta = image.read_metadata(image.load_frame(data_file("real/sdss_g_1737-5-47/sdss_g_1737-5-47.fits.gz")),
                               ObservatorySettings())
    assert meta.exptime == pytest.approx(53.907456)
    assert not meta.units.divide_by_exptime


def test_decam_saturates_at_its_lowest_amplifier_level():
    """DECam's SATURATE is the higher of SATURATA/SATURATB: a star on amplifier A saturates at A's level first."""
    frame = image.load_frame(data_file(REAL["decam_z"][0]))
    meta = image.read_metadata(frame, ObservatorySettings())
    levels = (frame.header["SATURATA"], frame.header["SATURATB"])
    assert frame.header["SATURATE"] == max(levels) and meta.saturation == min(levels)
    assert "SATURATA" in meta.sources["saturation"]
    # a lone SATURATE (no amplifier levels) is used as it is
    h = frame.header.copy()
    del h["SATURATA"], h["SATURATB"]
    alone = image.read_metadata(dataclasses.replace(frame, header=h), ObservatorySettings())
    assert alone.saturation == frame.header["SATURATE"] and alone.sources["saturation"] == "header SATURATE"
