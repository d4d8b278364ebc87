"""Real frames from other telescopes (issue 9 item 8): ``rpp run`` on every one, against its truths.

Every frame of ``tests/data/real`` and ``tests/data/images`` is run once per session as a
user would (``rpp run --offline``, default profile, the local catalogues the corpus has),
and scored by ``tests/realframes.py`` (its docstring defines the truths, the SExtractor
reference and the S/N). To stay within a few minutes the runs here skip the PSF stage and
the ZIP (neither enters a score) and run two at a time; ``bench/real_frames.py`` runs the
plain default profile and prints the same numbers as a table.

Cases that fail today carry ``xfail(strict=True)`` with what is wrong; when a fix makes
one pass, the suite fails until its mark is removed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from . import realframes as R
from .datafiles import data_file

pytestmark = [pytest.mark.slow, pytest.mark.solver, pytest.mark.timeout(900)]

#: settings that change no score, only the time: no ePSF fit, one catalogue format, no ZIP
FAST = ("photometry.psf=false", "output.zip=false", "output.formats=ecsv")

#: frames where SExtractor has 10 or more reference sources at S/N > 20 (issue 9 item 3 applies)
JUDGED = ("sdss_g", "sdss_binned3", "dss_poss1e", "lco_raw", "ntt_emmi", "m67_dss", "spitzer", "horsehead")

#: what is wrong today, per (check, frame); see docs/real-frames-diagnosis.md
KNOWN: dict[tuple[str, str], str] = {}  # every check passes since items 1-3 and 4-6 met


def cases(check: str, names):
    """``pytest.param`` per frame name, with a strict xfail where :data:`KNOWN` says it fails today."""
    out = []
    for name in names:
        reason = KNOWN.get((check, name))
        marks = [pytest.mark.xfail(strict=True, reason=f"issue 9: {reason}")] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> dict[str, R.RppRun]:
    """One ``rpp run`` per real frame (two at a time), by frame name."""
    root = tmp_path_factory.mktemp("real_frames")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda case: R.run_rpp(case, root, extra_sets=FAST), R.FRAMES))
    return {run.case.name: run for run in runs}


@pytest.fixture(scope="session")
def references() -> dict:
    """(reference image, SExtractor catalogue) per frame with a reference FWHM, made once."""
    out = {}
    for case in R.FRAMES:
        if case.fwhm_ref:
            ref = R.reference_image(case)
            out[case.name] = (ref, R.sextractor_reference(case, ref))
    return out


@pytest.fixture(scope="session")
def scores(real_runs, references) -> dict[str, R.Score]:
    out = {}
    for case in R.FRAMES:
        ref, sex = references.get(case.name, (None, None))
        out[case.name] = R.score(case, real_runs[case.name], ref, sex)
    return out


# ---------------------------------------------------------------- the yardstick itself


def test_sextractor_as_run_here_recovers_injected_stars_and_their_snr():
    """On a synthetic frame (FWHM 3.5 px, 80 cosmic rays) SExtractor agrees with the injected truth."""
    got = R.synthetic_agreement(fwhm=3.5)
    assert got["completeness"] >= 0.98, got
    assert got["purity"] >= 0.98, got  # the artefact rule removes the cosmic-ray hits
    assert got["cosmics_kept"] == 0, got
    assert abs(got["snr_ratio"] - 1.0) < 0.05 and got["snr_scatter"] < 0.05, got


def test_sextractor_snr_matches_truth_on_undersampled_synthetic_stars():
    """At FWHM 1.2 px the S/N still agrees; cosmic rays can no longer be told from stars (purity lower)."""
    got = R.synthetic_agreement(fwhm=1.2)
    assert got["completeness"] >= 0.98, got
    assert abs(got["snr_ratio"] - 1.0) < 0.05, got
    assert got["purity"] >= 0.85, got


def test_sextractor_wrapper_finds_what_sextractor_itself_found_on_the_ntt_frame(references):
    """The wrapper's catalogue against ``ntt_emmi_sep/image.cat`` (made with SExtractor elsewhere), at S/N > 20."""
    ref, sex = references["ntt_emmi"]
    own = R.read_sextractor_catalog(data_file("real/ntt_emmi_sep/image.cat"), "FLUX_RADIUS_1")
    bright = own["snr"] > R.SNR_CUT
    assert bright.sum() >= 15
    found = R.match_any(own["x"][bright], own["y"][bright], sex["x"], sex["y"], 2.0)
    assert found.mean() >= 0.9, f"{found.sum()}/{bright.sum()}"


@pytest.mark.parametrize("name", ["sdss_g", "sdss_binned3", "ukidss_k", "dss_poss1e", "ntt_emmi"])
def test_reference_fwhm_method_reproduces_the_readme_values(name):
    case = R.frame(name)
    fwhm, n = R.reference_fwhm(R.reference_image(case).data)
    assert fwhm == pytest.approx(case.fwhm_ref, rel=0.05), (fwhm, n)


def test_sextractor_judges_detection_on_exactly_the_frames_listed(references):
    """The frames with 10 or more reference sources at S/N > 20 are :data:`JUDGED` (the list the tests use)."""
    judged = []
    for name, (ref, sex) in references.items():
        case = R.frame(name)
        real = R.reference_set(sex, case.fwhm_ref) & ~R.diffuse(sex, case.fwhm_ref)
        n = int((real & (sex["snr"] > R.SNR_CUT) & R._inside(ref, sex["x"], sex["y"], case.border)).sum())
        if n >= R.DETECTION_MIN_SOURCES:
            judged.append(name)
    assert sorted(judged) == sorted(JUDGED)


# ---------------------------------------------------------------- rpp on the real frames


@pytest.mark.parametrize("name", cases("fwhm", [c.name for c in R.FRAMES if c.fwhm_ref and c.fwhm_checked]))
def test_fwhm_within_tolerance_of_the_reference(scores, name):
    """15 % of the reference FWHM, 25 % below 1.5 px (issue 9 item 1): rpp's Gaussian-fit width on its FWHM
    stars against the reference (a Gaussian fit too), and rpp's FWHM itself (the Moffat's, with its beta) read
    the reference's way against the reference (realframes docstring)."""
    s = scores[name]
    assert s.fwhm is not None, f"{name}: no FWHM (exit {s.exit_code}: {s.message})"
    assert s.fwhm_ok, (f"{name}: FWHM {s.fwhm:.2f} px (Gaussian fit {s.fwhm_gauss}, that Moffat read as the "
                       f"reference reads {s.fwhm_model}), reference {s.fwhm_ref:.2f} px ({100 * s.fwhm_error:+.0f} %)")


@pytest.mark.parametrize("name", cases("completeness", JUDGED))
def test_detection_finds_90_percent_of_what_sextractor_finds_at_snr_20(scores, name):
    d = scores[name].detection
    assert d.judged, d
    assert d.completeness is not None and d.completeness >= R.DETECTION_MIN, \
        f"{name}: {d.n_found}/{d.n_reference} found ({d.note})"


@pytest.mark.parametrize("name", cases("purity", JUDGED))
def test_detections_at_snr_20_are_90_percent_real_sources(scores, name):
    d = scores[name].detection
    assert d.n_rpp > 0, f"{name}: no rpp detection reaches S/N {R.SNR_CUT:g} ({d.note})"
    assert d.purity >= R.DETECTION_MIN, f"{name}: {d.n_pure}/{d.n_rpp} paired with a SExtractor source"


@pytest.mark.parametrize("name", cases("snr", JUDGED))
def test_snr_agrees_with_sextractor_for_the_same_sources(scores, name):
    """Median rpp S/N over SExtractor's for the same sources within 0.75-1.33 (issue 9 item 4: units and gain)."""
    ratio = scores[name].detection.snr_ratio
    assert ratio is not None and 0.75 <= ratio <= 1.33, f"{name}: S/N ratio {ratio}"


def test_ntt_detection_agrees_with_sextractors_own_catalogue_of_the_frame(real_runs, references):
    """``image.cat`` (65 objects, S/N from FLUX_AUTO) as the reference instead of the run made here."""
    case = R.frame("ntt_emmi")
    ref, _ = references["ntt_emmi"]
    own = R.read_sextractor_catalog(data_file("real/ntt_emmi_sep/image.cat"), "FLUX_RADIUS_1")
    d = R.detection_scores(case, ref, own, real_runs["ntt_emmi"])
    assert d.n_reference >= R.DETECTION_MIN_SOURCES, d
    assert d.completeness >= R.DETECTION_MIN and d.purity >= R.DETECTION_MIN, d


@pytest.mark.parametrize("name", cases("zp", [c.name for c in R.FRAMES if c.zp_image is not None]))
def test_zero_point_matches_the_frames_own_calibration(scores, name):
    """Header / survey zero points (issue 9 item 4) and Spitzer's 16.71, for pixel sums over the exposure."""
    s, case = scores[name], R.frame(name)
    assert s.zp_image is not None, f"{name}: not calibrated (exit {s.exit_code}: {s.message})"
    assert abs(s.zp_error) <= case.zp_tol, f"{name}: {s.zp_image:.3f} vs {case.zp_image:.3f} ({case.zp_note})"


def test_dss_plate_positions_within_1_arcsec_of_the_dss_plate_solution(scores):
    a = scores["dss_poss1e"].astrometry
    assert a.ok, a


def test_m67_plate_solved_within_1_arcsec_of_the_dss_plate_solution(scores):
    a = scores["m67_dss"].astrometry
    assert a.ok, a


def test_decam_gaia_stars_within_0_3_px_of_their_catalogue_positions(scores):
    a = scores["decam_z"].astrometry
    assert a.ok, a


def test_m13_with_almost_no_signal_ends_with_an_exit_code_and_one_clear_line(scores, real_runs):
    s = scores["m13_dsi"]
    assert s.exit_code != 0
    assert s.one_line, real_runs["m13_dsi"].stderr


def test_every_frame_leaves_a_summary_and_a_log(real_runs):
    for name, run in real_runs.items():
        assert run.run_dir is not None and run.summary is not None, f"{name}: exit {run.exit_code}, {run.stderr[-300:]}"
        assert (run.run_dir / "run.log").exists(), name
        assert np.isfinite(run.seconds)


def test_decam_run_uses_its_weight_map_and_mask_and_flags_what_they_mask(real_runs):
    """The community pipeline's _oow_ and _ood_ files beside the image are found and used (issue 9 item 6)."""
    from astropy.io import fits

    run = real_runs["decam_z"]
    comp = run.summary["companions"]
    assert "_oow_" in comp["weight"] and "_ood_" in comp["mask"] and comp["n_bad"] == 177
    assert "weight map" in (run.run_dir / "run.log").read_text()
    bad = fits.getdata(data_file("real/decam_cp_z_cutout/c4d_170316_062107_ood_z_ls9.N2.fits.gz"), 1) != 0
    x, y = np.round(np.asarray(run.catalog["x"])).astype(int), np.round(np.asarray(run.catalog["y"])).astype(int)
    on_bad = bad[y, x]
    assert (np.asarray(run.catalog["flags"])[on_bad] & 1).all()
