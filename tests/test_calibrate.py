"""Zero point: cross-match and robust fit against injected truth."""

import numpy as np
import pytest

from rpp_core import calibrate
from rpp_core.errors import CalibrationError
from rpp_core.settings import CalibrationSettings


def _stars(n=300, zp0=25.0, k=0.0, X=1.0, C=0.0, seed=1, outliers=0):
    rng = np.random.default_rng(seed)
    mag_ref = rng.uniform(12, 18, n)
    color = rng.normal(0.8, 0.4, n)
    err = 0.005 + 0.02 * 10 ** (0.4 * (mag_ref - 18))
    # instrumental magnitude seen through the atmosphere: fainter by k X
    mag_inst = mag_ref - zp0 + k * X - C * color + rng.normal(0, err)
    if outliers:
        mag_inst[:outliers] += rng.uniform(0.3, 2.0, outliers)  # blends, variables
    return mag_inst, err, mag_ref, np.full(n, 0.005), color


def test_zero_point_recovered_within_a_millimag_with_outliers():
    mi, e, mr, er, c = _stars(outliers=30)
    zp = calibrate.fit_zero_point(mi, e, mr, er, c, 1.0, CalibrationSettings())
    assert abs(zp.zp - 25.0) < 0.002
    assert zp.n_rejected >= 25
    assert zp.rejected[:30].sum() >= 25
    assert 0 < zp.zp_err < 0.002


def test_extinction_sign_zp0_above_atmosphere():
    """With k = 0.2 at airmass 2 the frame ZP is 0.4 mag smaller than ZP0."""
    mi, e, mr, er, c = _stars(zp0=24.0, k=0.2, X=2.0)
    zp = calibrate.fit_zero_point(mi, e, mr, er, c, 2.0, CalibrationSettings(extinction_k=0.2))
    assert abs(zp.zp0 - 24.0) < 0.002
    assert abs(zp.zp - (24.0 - 0.4)) < 0.002
    cal, cal_err = calibrate.apply_zero_point(mi, e, zp)
    assert abs(np.median(cal - mr)) < 0.002


def test_colour_term_recovered():
    mi, e, mr, er, c = _stars(C=0.1)
    zp = calibrate.fit_zero_point(mi, e, mr, er, c, 1.0, CalibrationSettings(color_term=True))
    assert abs(zp.color_coef - 0.1) < 0.005
    assert abs(zp.zp0 - 25.0) < 0.005


def test_zp_error_enters_every_calibrated_error():
    mi, e, mr, er, c = _stars()
    zp = calibrate.fit_zero_point(mi, e, mr, er, c, 1.0, CalibrationSettings())
    _, cal_err = calibrate.apply_zero_point(mi, e, zp)
    assert np.allclose(cal_err, np.hypot(e, zp.zp_err))


def test_too_few_calibrators_is_a_clear_error():
    mi, e, mr, er, c = _stars(n=2)
    with pytest.raises(CalibrationError, match="usable calibrators"):
        calibrate.fit_zero_point(mi, e, mr, er, c, 1.0, CalibrationSettings())


def test_crossmatch_is_one_to_one_within_radius():
    ra = np.array([10.0, 10.0 + 1 / 3600, 10.01, 10.5])
    dec = np.zeros(4)
    ref_ra = np.array([10.0 + 0.2 / 3600, 10.01 + 3 / 3600])
    i_src, i_ref, sep = calibrate.crossmatch(ra, dec, ref_ra, np.zeros(2), radius_arcsec=2.0)
    assert list(i_src) == [0]  # the second source loses the shared reference star; the 3rd is 3" away
    assert list(i_ref) == [0]
    assert sep[0] == pytest.approx(0.2, abs=1e-3)


def test_match_radius_follows_fwhm_and_floor():
    s = CalibrationSettings(match_radius_fwhm=1.0, match_radius_min_arcsec=1.0)
    assert calibrate.match_radius_arcsec(4.0, 1.5, s) == pytest.approx(6.0)
    assert calibrate.match_radius_arcsec(0.5, 0.5, s) == pytest.approx(1.0)
