"""Checks before a run: a missing reference file or column is reported at once, in the words of the interface."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpp_core import settings
from rpp_core.preflight import preflight
from rpp_core.synthetic import make_frame

from .test_tui_support import tui_env, wait_for  # noqa: F401 - fixtures

RPP = Path(sys.executable).with_name("rpp")


@pytest.fixture
def field(tmp_path):
    """f.fits (256x256 with a WCS) and ref.ecsv, its reference catalogue (columns source_id, ra, dec, G, ...)."""
    sf = make_frame(shape=(256, 256), n_stars=60)
    sf.write(tmp_path / "f.fits")
    sf.write_refcat(tmp_path / "ref.ecsv", format="ascii.ecsv")
    return tmp_path


def _profile(**changes):
    return settings.Profile(name="check").replace(**{"services.offline": True, **changes})


def test_a_good_profile_and_frame_have_no_problem(field):
    assert preflight(_profile(**{"calibration.catalog_files": [str(field / "ref.ecsv")]}), field / "f.fits") == []


def test_missing_frame_and_reference_file_are_named(field):
    problems = preflight(_profile(**{"calibration.catalog_files": [str(field / "nope.ecsv")]}), field / "gone.fits")
    assert [p.setting for p in problems] == ["frame", "calibration.catalog_files"]
    assert "gone.fits does not exist" in problems[0].message
    assert "nope.ecsv does not exist" in problems[1].message
    assert "--catalog FILE" in problems[1].advice("cli")
    assert "Parameters (2) › Calibration › catalog_files" in problems[1].advice("app")
    assert "--catalog" not in problems[1].advice("app")


def test_a_band_the_reference_file_lacks_is_found_with_its_columns_listed(field):
    problems = preflight(_profile(**{"calibration.catalog_files": [str(field / "ref.ecsv")],
                                     "calibration.band": "V"}), field / "f.fits")
    assert len(problems) == 1 and problems[0].setting == "calibration.band"
    assert "no magnitude column 'V'" in problems[0].message and "G" in problems[0].message
    assert problems[0].advice("cli").endswith("(--set calibration.band=...)")


def test_position_columns_follow_the_calibrations_own_rules(field):
    # 'RAJ' is not in the file, but the calibration falls back to 'ra': no problem, as in a real run
    assert preflight(_profile(**{"calibration.catalog_files": [str(field / "ref.ecsv")],
                                 "calibration.ra_column": "RAJ"})) == []
    from astropy.table import Table

    t = Table.read(field / "ref.ecsv")
    t.rename_columns(["ra", "dec"], ["alpha", "delta"])
    t.write(field / "odd.ecsv")
    problems = preflight(_profile(**{"calibration.catalog_files": [str(field / "odd.ecsv")]}))
    assert [p.setting for p in problems] == ["calibration.ra_column"]
    assert "alpha" in problems[0].message


def test_an_endpoint_that_is_not_a_url_is_refused():
    problems = preflight(_profile(**{"services.simbad_tap": "simbad.cds/tap"}))
    assert [p.setting for p in problems] == ["services.simbad_tap"]


def test_solving_without_index_files_is_a_warning(field, tmp_path):
    empty = tmp_path / "no-index"
    empty.mkdir()
    prof = _profile(**{"astrometry.solve": "always", "astrometry.index_dirs": [str(empty)],
                       "astrometry.use_system_indexes": False})
    problems = preflight(prof, field / "f.fits")
    assert [(p.setting, p.severity) for p in problems] == [("astrometry.index_dirs", "warning")]


def test_a_run_that_never_solves_leaves_the_frame_header_unread_before_it_starts(field):
    """The header facts (astropy.wcs, coordinates, time: 0.4 s of CPU) serve only the solver's checks."""
    code = ("import sys\nfrom rpp_core.settings import Profile\nfrom rpp_core.preflight import preflight\n"
            "p = Profile(name='c').replace(**{'services.offline': True, 'astrometry.solve': 'never'})\n"
            f"assert preflight(p, {str(field / 'f.fits')!r}) == []\n"
            "print(sorted(m for m in ('astropy.wcs', 'astropy.coordinates', 'astropy.io.fits') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["[]"]
    problems = preflight(_profile(**{"astrometry.solve": "never"}), field / "gone.fits")
    assert [p.setting for p in problems] == ["frame"]  # a missing frame is still said before the run


def test_rpp_run_stops_in_a_second_naming_the_option_not_after_the_run(field):
    t0 = time.perf_counter()
    proc = subprocess.run([str(RPP), "run", str(field / "f.fits"), "--catalog", str(field / "nope.ecsv"), "--offline",
                           "--out", str(field / "runs")], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert "nope.ecsv does not exist" in proc.stderr and "--catalog FILE" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (field / "runs").exists()  # no run folder: nothing was started
    print(f"rpp run refused in {elapsed:.2f} s")


def test_rpp_run_refuses_a_band_the_reference_lacks_before_any_stage_without_importing_astropy_itself(field):
    """The columns are read by the run's worker, which has astropy imported already: the CLI's own
    check imported astropy.table and coordinates (0.5 s of CPU beside the worker's imports)."""
    code = ("import sys\nfrom rpp_cli.main import main\n"
            f"code = main(['run', {str(field / 'f.fits')!r}, '--catalog', {str(field / 'ref.ecsv')!r}, '--offline', "
            f"'--set', 'calibration.band=V', '--set', 'astrometry.solve=never', '--out', {str(field / 'runs')!r}])\n"
            "print(code, sorted(m for m in ('astropy.table', 'astropy.io.fits', 'astropy.wcs') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr
    assert "rpp: ref.ecsv has no magnitude column 'V'" in proc.stderr
    assert "(--set calibration.band=...)" in proc.stderr and "Traceback" not in proc.stderr
    assert not (field / "runs").exists()  # no run folder: no stage started


async def test_the_app_does_not_start_a_run_and_names_the_parameters_field(field, tui_env):
    from rpp_tui.app import RppApp

    app = RppApp(str(field / "f.fits"))
    app.profile = _profile(**{"calibration.catalog_files": [str(field / "nope.ecsv")], "calibration.band": "G"})
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("r")
        await pilot.pause(0.2)
        assert app.runner.jobs == []
        assert app.query_one("#tabs").active == "run"
        headline = str(app.query_one("#run-headline").content)
        assert "nope.ecsv does not exist" in headline
        assert "Parameters (2) › Calibration › catalog_files" in headline
        assert "--catalog" not in headline
        assert app.query_one("#run-headline").display


@pytest.fixture(scope="module")
def field_indexes(tmp_path_factory):
    """A frame (256x256 at 1"/px, a valid WCS), an index built for its field, and one of 22'-42' quads round it."""
    import numpy as np
    from astropy.table import Table

    from rpp_core.astrometry import build_index

    root = tmp_path_factory.mktemp("preflight_idx")
    sf = make_frame(shape=(256, 256), n_stars=60)
    sf.write(root / "f.fits")
    sf.write_refcat(root / "ref.ecsv", format="ascii.ecsv")
    fits_idx, wide_idx = root / "fits", root / "wide"
    build_index(root / "ref.ecsv", fits_idx, field_width_arcmin=256 / 60.0, mag_col="G")
    ra0, dec0 = sf.wcs.wcs.crval
    rng = np.random.default_rng(3)
    n = 6000
    ra = ra0 + rng.uniform(-4, 4, n) / np.cos(np.radians(dec0))
    dec = dec0 + rng.uniform(-4, 4, n)
    build_index(Table({"ra": ra, "dec": dec, "mag": rng.uniform(6, 11, n)}), wide_idx, scales=[7, 8], name="wide")
    return root, fits_idx, wide_idx


def _solving(index_dir):
    return _profile(**{"astrometry.solve": "always", "astrometry.index_dirs": [str(index_dir)],
                       "astrometry.use_system_indexes": False})


def test_an_index_that_fits_the_field_raises_nothing(field_indexes):
    root, fits_idx, _ = field_indexes
    assert preflight(_solving(fits_idx), root / "f.fits") == []


def test_index_files_too_coarse_for_a_narrow_field_are_found_before_the_run_with_the_index_that_would_solve(
        field_indexes):
    """A 4' frame and only 22'-42' quads: said before starting, with `rpp index build` for the frame's field."""
    root, _, wide_idx = field_indexes
    problems = preflight(_solving(wide_idx), root / "f.fits")
    assert [(p.setting, p.severity) for p in problems] == [("astrometry.index_dirs", "warning")]
    text = problems[0].advice("cli")
    assert "none of the 2 index files" in text and "hold quads of" in text
    assert "rpp index build --field" in text and "--set astrometry.index_dirs=..." in text
    assert "Parameters (2) › Astrometry › index_dirs" in problems[0].advice("app")


def test_a_frame_whose_wcs_is_trusted_needs_no_index(field_indexes):
    root, _, wide_idx = field_indexes
    prof = _solving(wide_idx).replace(**{"astrometry.solve": "auto"})
    assert preflight(prof, root / "f.fits") == []
