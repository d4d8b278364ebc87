"""The `rpp` command as an observer types it: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from rpp_core.synthetic import make_frame

from .datafiles import data_file

RPP = [sys.executable, "-m", "rpp_cli"]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(RPP_CONFIG_DIR=str(tmp_path / "config"), RPP_CACHE_DIR=str(tmp_path / "cache"),
             RPP_WORKSPACE=str(tmp_path / "runs"))
    return e


def rpp(args, env, timeout=300):
    return subprocess.run([*RPP, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


OFFLINE = ["--offline", "--set", "astrometry.solve=never", "--set", "cosmic_rays.niter=1", "--set", "services.enabled="]


def assert_one_line_error(proc, code, *words):
    assert proc.returncode == code, proc.stderr
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rpp:")]
    assert len(err_lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w.lower() in err_lines[0].lower(), err_lines[0]


def test_demo_runs_on_the_bundled_sample_and_says_where_results_are(env, tmp_path):
    proc = rpp(["demo", "--out", tmp_path / "out", "--quiet"], env)
    assert proc.returncode == 0, proc.stderr
    assert "Results" in proc.stdout and str(tmp_path / "out") in proc.stdout
    assert "Zero point" in proc.stdout and "not calibrated" not in proc.stdout
    run_dir = next((tmp_path / "out").iterdir())
    assert (run_dir / "catalog.csv").exists()


def test_not_a_fits_file_exits_3(env, tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not a FITS file\n" * 100)
    assert_one_line_error(rpp(["run", bad, *OFFLINE], env), 3, "notes.fits")


def test_truncated_fits_exits_3(env, tmp_path):
    src = gzip.decompress(data_file("images/HorseHead.fits.gz").read_bytes())
    bad = tmp_path / "cut.fits"
    bad.write_bytes(src[: len(src) // 2])
    assert_one_line_error(rpp(["run", bad, *OFFLINE], env), 3, "cut.fits", "truncated")


def test_all_nan_frame_exits_3(env, tmp_path):
    bad = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32)).writeto(bad)
    assert_one_line_error(rpp(["run", bad, *OFFLINE], env), 3, "nan")


def test_frame_without_stars_exits_4(env, tmp_path):
    bad = tmp_path / "noise.fits"
    rng = np.random.default_rng(0)
    fits.PrimaryHDU(rng.normal(100, 5, (256, 256)).astype(np.float32)).writeto(bad)
    assert_one_line_error(rpp(["run", bad, *OFFLINE], env), 4, "star")


def test_reference_catalogue_elsewhere_on_the_sky_exits_5_with_catalogue_written(env, tmp_path):
    fr = make_frame(shape=(256, 256), n_stars=60, seed=3)
    fr.write(tmp_path / "f.fits")
    far = make_frame(shape=(256, 256), n_stars=60, seed=3, ra0=10.0, dec0=-40.0)
    far.write_refcat(tmp_path / "far.ecsv")
    proc = rpp(["run", tmp_path / "f.fits", "--catalog", tmp_path / "far.ecsv", "--out", tmp_path / "o", *OFFLINE], env)
    assert_one_line_error(proc, 5, "no stars in the field")
    run_dir = next((tmp_path / "o").iterdir())
    assert (run_dir / "catalog.csv").exists()


def test_missing_file_and_bad_setting_are_usage_errors(env, tmp_path):
    assert_one_line_error(rpp(["run", tmp_path / "nope.fits", *OFFLINE], env), 3, "nope.fits")
    fr = make_frame(shape=(128, 128), n_stars=10, seed=3)
    fr.write(tmp_path / "f.fits")
    assert_one_line_error(rpp(["run", tmp_path / "f.fits", "--set", "detection.seeing_arcsec=9"], env), 2, "seeing_arcsec")


def test_profile_commands_round_trip(env):
    assert rpp(["profile", "new", "night1", "--set", "detection.threshold_sigma=4"], env).returncode == 0
    shown = rpp(["profile", "show", "night1"], env).stdout
    assert "threshold_sigma = 4.0" in shown
    assert rpp(["profile", "list"], env).stdout.strip() == "night1"


def test_a_weight_file_that_does_not_exist_is_one_line_naming_it(env, tmp_path):
    make_frame(shape=(128, 128), n_stars=10, n_cosmics=0).write(tmp_path / "f.fits")
    proc = rpp(["run", tmp_path / "f.fits", *OFFLINE, "--weight", tmp_path / "nope.fits"], env)
    assert_one_line_error(proc, 3, "nope.fits", "no such weight file")


def test_a_header_zero_point_calibrates_offline_and_the_summary_says_so(env, tmp_path):
    fr = make_frame(shape=(256, 256), n_stars=40, n_cosmics=0, n_saturated=0, seed=3)
    fr.header["MAGZPT"] = (24.56, "zero point per second")
    fr.write(tmp_path / "f.fits")
    proc = rpp(["run", tmp_path / "f.fits", *OFFLINE], env)
    assert proc.returncode == 0, proc.stderr
    assert "Zero point  24.5600 mag from the header MAGZPT (no reference catalogue)" in proc.stdout


def test_the_header_zero_point_is_printed_beside_the_fitted_one(env, tmp_path):
    fr = make_frame(shape=(256, 256), n_stars=60, n_cosmics=0, n_saturated=0, seed=3)
    fr.header["MAGZPT"] = (24.56, "zero point per second")
    fr.write(tmp_path / "f.fits")
    fr.write_refcat(tmp_path / "ref.ecsv")
    proc = rpp(["run", tmp_path / "f.fits", *OFFLINE, "--catalog", tmp_path / "ref.ecsv"], env)
    assert proc.returncode == 0, proc.stderr
    fitted = next(line for line in proc.stdout.splitlines() if line.startswith("Zero point  "))
    header = next(line for line in proc.stdout.splitlines() if line.startswith("Header ZP   "))
    assert "24.5600 mag from the header MAGZPT (fitted - header " in header
    # the difference printed is the two zero points' difference
    diff = float(header.split("fitted - header ")[1].split(":")[0])
    assert diff == pytest.approx(float(fitted.split()[2]) - 24.56, abs=0.001)
