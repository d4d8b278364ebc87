"""Faults an observatory machine meets on its own side: names, disks, half-written folders, bad input.

Each test is one fault case of issue 14 (the service side lives in
tests/test_catalogs_faults.py): a profile name that reaches outside the
profiles folder, a full or read-only disk, a run killed while writing, a
frame or catalogue that is wrong in a way an observer can fix. The promise
checked is always the same: a documented exit code, one line naming the file
and what to do, and nothing half-written left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from rpp_cli.main import main as rpp_main
from rpp_core import rundir, settings
from rpp_core.events import STAGE_NAMES


def _rpp(capsys, *argv) -> tuple[int, str, str]:
    """``rpp ARGV`` in this process: (exit code, stdout, stderr)."""
    code = rpp_main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("rpp:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


# ---------------------------------------------------------------- profile names stay inside the profiles folder

@pytest.fixture
def victim(tmp_path):
    """A TOML file outside the profiles folder that a crafted name could reach."""
    folder = tmp_path / "victim"
    folder.mkdir()
    keep = folder / "keep.toml"
    keep.write_text(settings.dumps(settings.Profile(name="keep")))
    return keep


def _traversal_names(victim) -> dict[str, str]:
    """Names that point at ``victim`` from the profiles folder: relative, absolute, with separators."""
    profiles = settings.locations.profiles_dir()
    return {
        "relative": os.path.relpath(victim.with_suffix(""), profiles),  # ../../victim/keep
        "absolute": str(victim.with_suffix("")),
        "absolute .toml": str(victim),
    }


@pytest.mark.parametrize("how", ["relative", "absolute", "absolute .toml"])
def test_profile_delete_refuses_a_name_outside_the_profiles_folder(capsys, victim, how):
    name = _traversal_names(victim)[how]
    code, _, err = _rpp(capsys, "profile", "delete", name)
    assert code == 2
    _one_line_error(err, "profile name", "letters, digits")
    assert victim.exists()


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_profile_rename_refuses_to_move_a_file_from_outside_in(capsys, victim, how):
    name = _traversal_names(victim)[how]
    code, _, err = _rpp(capsys, "profile", "rename", name, "stolen")
    assert code == 2
    _one_line_error(err, "profile name")
    assert victim.exists() and not settings.profile_path("stolen").exists()


@pytest.mark.parametrize("target", ["../../victim/x", "/tmp/rpp-stolen-profile", "sub/x", "a\\b", "..", ""])
def test_profile_rename_refuses_a_new_name_outside_the_profiles_folder(capsys, target):
    settings.save_profile(settings.Profile(name="night1"))
    code, _, err = _rpp(capsys, "profile", "rename", "night1", target)
    assert code == 2
    _one_line_error(err, "profile name")
    assert settings.profile_path("night1").exists()
    assert not os.path.exists("/tmp/rpp-stolen-profile.toml")


@pytest.mark.parametrize("name", ["../../victim/new", "/tmp/rpp-new-profile", "sub/x", ".."])
def test_profile_new_refuses_a_name_outside_the_profiles_folder(capsys, name):
    code, _, err = _rpp(capsys, "profile", "new", name)
    assert code == 2
    _one_line_error(err, "profile name")
    assert not os.path.exists("/tmp/rpp-new-profile.toml")


@pytest.mark.parametrize("how", ["relative", "absolute", "absolute .toml"])
def test_profile_set_refuses_a_name_outside_the_profiles_folder(capsys, victim, how):
    before = victim.read_text()
    name = _traversal_names(victim)[how]
    code, _, err = _rpp(capsys, "profile", "set", name, "--set", "detection.threshold_sigma=9")
    assert code == 2
    _one_line_error(err, "profile name")
    assert victim.read_text() == before and settings.list_profiles() == []


def test_profile_new_with_force_cannot_overwrite_a_file_outside(capsys, victim):
    before = victim.read_text()
    code, _, err = _rpp(capsys, "profile", "new", _traversal_names(victim)["relative"], "--force")
    assert code == 2 and victim.read_text() == before


def test_reading_a_profile_by_path_stays_allowed(capsys, victim):
    code, out, _ = _rpp(capsys, "profile", "show", victim)
    assert code == 0 and 'name = "keep"' in out
    code, out, _ = _rpp(capsys, "profile", "new", "night2", "--base", victim, "--set", "detection.threshold_sigma=4")
    assert code == 0 and settings.load_profile("night2").detection.threshold_sigma == 4.0
    assert victim.exists()


def test_profile_commands_on_plain_names_still_work(capsys):
    assert _rpp(capsys, "profile", "new", "a.b-c_1")[0] == 0
    assert _rpp(capsys, "profile", "set", "a.b-c_1", "--set", "detection.threshold_sigma=4")[0] == 0
    assert _rpp(capsys, "profile", "rename", "a.b-c_1", "night")[0] == 0
    assert settings.list_profiles() == ["night"]
    assert _rpp(capsys, "profile", "delete", "night")[0] == 0
    assert settings.list_profiles() == []


# ---------------------------------------------------------------- runs: one small calibrated field

FAST = ["--offline", "--set", "astrometry.solve=never", "--set", "cosmic_rays.enabled=false",
        "--set", "photometry.psf=false", "--set", "services.enabled="]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """A 256^2 synthetic frame with a WCS and its reference catalogue (ECSV, degrees)."""
    from rpp_core.synthetic import make_frame

    folder = tmp_path_factory.mktemp("field")
    frame = make_frame(shape=(256, 256), n_stars=80, seed=3)
    frame.write(folder / "f.fits")
    frame.write_refcat(folder / "ref.ecsv")
    return SimpleNamespace(dir=folder, frame=frame, fits=folder / "f.fits", ref=folder / "ref.ecsv")


def _run(capfd, *argv) -> SimpleNamespace:
    """``rpp ARGV`` in this process, as on a terminal: exit code, stderr, stdout (file descriptors captured)."""
    code = rpp_main([str(a) for a in argv])
    out = capfd.readouterr()
    return SimpleNamespace(code=code, err=out.err, out=out.out)


def _only_run(out: Path) -> Path:
    (run,) = [p for p in Path(out).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


def _with_header(field, tmp_path, name="h.fits", **cards) -> Path:
    header = field.frame.header.copy()
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    path = tmp_path / name
    fits.PrimaryHDU(field.frame.data, header=header).writeto(path)
    return path


# ---------------------------------------------------------------- bad input: its exit code and one line, no "please report it"

def test_corrupt_tile_compressed_frame_exits_3_naming_the_file(field, tmp_path, capfd):
    path = tmp_path / "night.fz"
    field.frame.write(path, compress=True)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 2000] = bytes((b * 7 + 13) % 256 for b in raw[len(raw) // 2:len(raw) // 2 + 2000])
    path.write_bytes(bytes(raw))
    res = _run(capfd, "run", path, *FAST)
    assert res.code == 3
    _one_line_error(res.err, "night.fz", "corrupt")


def test_filter_keyword_with_bytes_ff_fe_still_gives_a_calibrated_catalogue(field, tmp_path, capfd):
    path = _with_header(field, tmp_path, FILTER="Vxx")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"FILTER  = '") + len(b"FILTER  = '")
    raw[at:at + 2] = b"\xff\xfe"
    path.write_bytes(bytes(raw))
    res = _run(capfd, "run", path, "--catalog", field.ref, "--out", tmp_path / "o", *FAST)
    assert res.code == 0, res.err
    assert "internal error" not in res.err and "Zero point" in res.out
    assert (_only_run(tmp_path / "o") / "catalog.fits").exists()


def _refcat(field, tmp_path, name, change) -> Path:
    table = field.frame.refcat.copy()
    table = change(table) or table
    path = tmp_path / name
    table.write(path, overwrite=True)
    return path


def _run_with_refcat(capfd, field, tmp_path, name, change) -> SimpleNamespace:
    """The field run against its reference catalogue changed by ``change(table)``, written as ``name``."""
    ref = _refcat(field, tmp_path, name, change)
    return _run(capfd, "run", field.fits, "--catalog", ref, "--out", tmp_path / "o", *FAST)


# A reference file rpp run can check before the run is a usage error (2, `rpp run`'s preflight); where
# nothing checks first (batch, watch, the app) the run degrades: calibration failed, exit 5.

def _text_magnitudes(t):
    t["G"] = [f"{v:.2f} mag" for v in t["G"]]


def test_reference_magnitudes_written_as_text_exit_2_naming_file_and_column(field, tmp_path, capfd):
    res = _run_with_refcat(capfd, field, tmp_path, "text.csv", _text_magnitudes)
    assert res.code == 2
    _one_line_error(res.err, "text.csv", "'G'", "not numbers")


def test_reference_magnitudes_written_as_text_fail_calibration_with_exit_5_in_a_run(field, tmp_path):
    from rpp_core import pipeline
    from rpp_core.settings import Profile

    ref = _refcat(field, tmp_path, "text.csv", _text_magnitudes)
    profile = Profile().replace(**{"astrometry.solve": "never", "cosmic_rays.enabled": False,
                                   "photometry.psf": False, "services.enabled": []})
    result = asyncio.run(pipeline.run(field.fits, profile, out_dir=tmp_path / "o", catalog_files=[ref], offline=True))
    assert result.exit_code == 5 and "text.csv" in result.message and "not numbers" in result.message
    assert (result.run_dir / "catalog.ecsv").exists()


def test_reference_declination_beyond_90_everywhere_exits_2_and_asks_for_the_unit(field, tmp_path, capfd):
    def beyond(t):
        t["dec"] = t["dec"] + 100.0
    res = _run_with_refcat(capfd, field, tmp_path, "dec.csv", beyond)
    assert res.code == 2
    _one_line_error(res.err, "dec.csv", "-90..90", "unit")


def test_a_few_reference_rows_with_dec_beyond_90_are_skipped_with_a_warning(field, tmp_path, capfd):
    def few(t):
        t["dec"][:3] = 95.0
    res = _run_with_refcat(capfd, field, tmp_path, "few.csv", few)
    assert res.code == 0, res.err
    assert "3 row(s) with dec outside -90..90 deg" in res.err


def test_profile_file_holding_binary_bytes_exits_2_naming_it(field, tmp_path, capfd):
    prof = tmp_path / "night.toml"
    prof.write_bytes(b"\x00\x01\x02\xff\xfe name = 'x'\n\x89PNG\r\n")
    res = _run(capfd, "run", field.fits, "--profile", prof, *FAST)
    assert res.code == 2
    _one_line_error(res.err, "night.toml", "not a text")


def test_secret_set_over_a_corrupt_secrets_file_exits_2_and_keeps_the_file(capfd, monkeypatch):
    path = settings.locations.secrets_path()
    path.write_bytes(b"astrocolibri_uid = 'abc\n[[[")
    monkeypatch.setattr("sys.stdin", io.StringIO("new-uid\n"))
    res = _run(capfd, "secret", "set", "astrocolibri_uid")
    assert res.code == 2
    _one_line_error(res.err, "secrets.toml", "fix or delete")
    assert path.read_bytes() == b"astrocolibri_uid = 'abc\n[[["


# ---------------------------------------------------------------- quiet acceptance of bad values

def test_unknown_service_in_a_profile_file_is_refused_at_load(field, tmp_path, capfd):
    prof = tmp_path / "svc.toml"
    prof.write_text('[services]\nenabled = ["gaia", "nosuch"]\n')
    res = _run(capfd, "run", field.fits, "--profile", prof, "--out", tmp_path / "o", "--offline")
    assert res.code == 2
    _one_line_error(res.err, "nosuch", "enabled")
    assert not (tmp_path / "o").exists()


def test_unknown_service_given_on_the_command_line_is_refused_before_the_run(field, tmp_path, capfd):
    res = _run(capfd, "run", field.fits, "--set", "services.enabled=gaia,nosuch", "--out", tmp_path / "o", "--offline")
    assert res.code == 2
    _one_line_error(res.err, "nosuch", "enabled")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["2026-13-45T25:61:00", "yesterday"])
def test_unreadable_date_obs_is_warned_about_naming_keyword_and_value(field, tmp_path, capfd, value):
    path = _with_header(field, tmp_path, DATE_OBS=value)
    res = _run(capfd, "run", path, "--catalog", field.ref, "--out", tmp_path / "o", *FAST)
    assert res.code == 0, res.err
    warned = [ln for ln in res.err.splitlines() if ln.startswith("warning") and "DATE-OBS" in ln]
    assert warned and value in warned[0], res.err


def test_reference_units_declared_in_the_file_are_honoured(field, tmp_path, capfd):
    """RA in hours and Dec in radians, said by the ECSV's units: the same zero point as in degrees."""
    res_deg = _run(capfd, "run", field.fits, "--catalog", field.ref, "--out", tmp_path / "deg", "--json", *FAST)

    def other_units(t):
        t["ra"] = t["ra"].to(u.hourangle) if t["ra"].unit else t["ra"] / 15.0 * u.hourangle
        t["dec"] = np.deg2rad(np.asarray(t["dec"])) * u.rad
    ref = _refcat(field, tmp_path, "units.ecsv", other_units)
    res = _run(capfd, "run", field.fits, "--catalog", ref, "--out", tmp_path / "o", "--json", *FAST)
    assert res_deg.code == 0 and res.code == 0, res.err
    zp_deg, zp = json.loads(res_deg.out)["zp"], json.loads(res.out)["zp"]
    assert zp == pytest.approx(zp_deg, abs=1e-6)
    assert json.loads(res.out)["n_calibrators"] == json.loads(res_deg.out)["n_calibrators"]


def test_negative_magnitude_errors_are_treated_as_unknown_with_a_warning(field, tmp_path, capfd):
    def negative(t):
        t["G_err"][:5] = -0.05
    res = _run_with_refcat(capfd, field, tmp_path, "neg.csv", negative)
    assert res.code == 0, res.err
    assert "5 negative value(s) in the error column 'G_err'" in res.err
    cat = Table.read(_only_run(tmp_path / "o") / "catalog.ecsv")
    assert np.nanmin(np.asarray(cat["mag_ref_err"], float)) >= 0


def test_all_nan_magnitude_column_is_reported_as_such_not_as_an_empty_field(field, tmp_path, capfd):
    def empty(t):
        t["G"] = np.nan
    res = _run_with_refcat(capfd, field, tmp_path, "nan.csv", empty)
    assert res.code == 2
    line = _one_line_error(res.err, "nan.csv", "'G'", "no values")
    assert "no stars in the field" not in line


# ---------------------------------------------------------------- a negative pedestal

def test_frame_offset_by_minus_5000_adu_is_calibrated_with_cosmic_rays_on_as_with_them_off(field, tmp_path, capfd):
    """The cosmic-ray stage works on the signal above the background: a negative pedestal marks no stars.
    SATURATE is left at the raw level, as a reduction that subtracts a pedestal leaves it: the clipped stars'
    flat tops (55,000 ADU) are found as saturated all the same, so the offset frame calibrates as the original."""
    offset = tmp_path / "pedestal.fits"
    fits.writeto(offset, field.frame.data - 5000.0, field.frame.header)
    base = ["--offline", "--set", "astrometry.solve=never", "--set", "photometry.psf=false", "--set", "services.enabled=",
            "--json"]
    off = _run(capfd, "run", offset, "--catalog", field.ref, "--out", tmp_path / "off", *base,
               "--set", "cosmic_rays.enabled=false")
    on = _run(capfd, "run", offset, "--catalog", field.ref, "--out", tmp_path / "on", *base,
              "--set", "cosmic_rays.enabled=true")
    orig = _run(capfd, "run", field.fits, "--catalog", field.ref, "--out", tmp_path / "orig", *base,
                "--set", "cosmic_rays.enabled=true")
    assert off.code == 0, off.err
    assert on.code == 0, on.err
    assert orig.code == 0, orig.err
    assert "a clipped plateau" in on.err and "SATURATE" in on.err  # said once, on the terminal and in the log
    assert "a clipped plateau" in (_only_run(tmp_path / "on") / "run.log").read_text()
    on, off, orig = (json.loads(r.out) for r in (on, off, orig))
    assert on["zp"] == pytest.approx(orig["zp"], abs=1e-4) and on["n_calibrators"] == orig["n_calibrators"]
    # cosmic rays on flag the calibrators a cosmic ray hit (4 of 16 here) and leave them out: 7 mmag
    assert on["zp"] == pytest.approx(off["zp"], abs=0.015)


# ---------------------------------------------------------------- library warnings go to the run log

def _rpp_process(argv, env_dir: Path, **env) -> subprocess.CompletedProcess:
    """``rpp ARGV`` as its own process, the way cron or a terminal runs it."""
    e = dict(os.environ, RPP_CONFIG_DIR=str(env_dir / "config"), RPP_CACHE_DIR=str(env_dir / "cache"),
             RPP_WORKSPACE=str(env_dir / "ws"), **env)
    e.pop("RPP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rpp_cli", *map(str, argv)], capture_output=True, text=True,
                          env=e, timeout=600)


#: what rpp itself writes on stderr: progress, its warnings, its one-line errors (all else is a library talking)
OWN_LINE = re.compile(r"^(rpp[ :]|\[ ?\d+/\d+\]|warning \[|  \w+: |\s*$|FAILED |frames: |zero point: |FWHM: |"
                      r"processing time: |night summary: )")


def _foreign_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if not OWN_LINE.match(ln)]


def test_dubious_year_of_a_1951_plate_goes_to_the_run_log_not_the_terminal(field, tmp_path):
    path = _with_header(field, tmp_path, "plate1951.fits", DATE_OBS="1951-03-04T05:06:07")
    proc = _rpp_process(["run", path, "--catalog", field.ref, "--out", tmp_path / "o", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _foreign_lines(proc.stderr) == []
    assert "dubious year" in (_only_run(tmp_path / "o") / "run.log").read_text()


def test_astropy_header_fixes_go_to_the_run_log_not_the_terminal(field, tmp_path):
    """An old-style header (RADECSYS, a DATE-OBS as dd/mm/yy, which astropy repairs with FITSFixedWarning
    and ERFA calls a dubious year): the repairs are in the run log in rpp's words, the terminal stays clean."""
    header = field.frame.header.copy()
    header.remove("RADESYS", ignore_missing=True)
    header["RADECSYS"] = "ICRS"
    header["DATE-OBS"] = "04/03/21"
    path = tmp_path / "old_header.fits"
    fits.writeto(path, field.frame.data, header)
    proc = _rpp_process(["run", path, "--catalog", field.ref, "--out", tmp_path / "o", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _foreign_lines(proc.stderr) == [] and "Warning" not in proc.stderr, proc.stderr
    log = (_only_run(tmp_path / "o") / "run.log").read_text()
    assert "header repair: RADECSYS renamed RADESYS" in log and "'04/03/21' -> '1921-03-04'" in log
    assert "dubious year" in log


def test_non_ascii_frame_name_reaches_catalog_fits_without_a_warning(field, tmp_path):
    path = tmp_path / "M31_ñé.fits"
    path.write_bytes(field.fits.read_bytes())
    proc = _rpp_process(["run", path, "--catalog", field.ref, "--out", tmp_path / "o", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _foreign_lines(proc.stderr) == []
    cat = Table.read(_only_run(tmp_path / "o") / "catalog.fits")
    assert "M31_" in cat.meta["FRAME"] and cat.meta["FRAME"].endswith(".fits")
    assert Table.read(_only_run(tmp_path / "o") / "catalog.ecsv").meta["frame"].endswith("M31_ñé.fits")


def test_batch_over_a_truncated_frame_shows_only_its_own_lines(field, tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    raw = field.fits.read_bytes()
    (night / "cut.fits").write_bytes(raw[: len(raw) // 2])
    proc = _rpp_process(["batch", night, "--jobs", "1", "--catalog", field.ref, "--out", tmp_path / "o", *FAST], tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert _foreign_lines(proc.stderr) == [] and "truncated" in proc.stdout


# ---------------------------------------------------------------- nothing half-written: full and read-only disks

@pytest.fixture(scope="module")
def small_disks(field, tmp_path_factory):
    """The field run with ``--out`` on tmpfs of several sizes, on a read-only tmpfs and on a roomy one.

    Sizes are fractions of what a complete run folder of this field takes, so
    the disk fills in different places: the log and header, the catalogue
    formats, the ZIP.
    """
    from tests.smalldisk import run_on_tmpfs

    work = tmp_path_factory.mktemp("disks")
    env = dict(os.environ, RPP_CONFIG_DIR=str(work / "config"), RPP_CACHE_DIR=str(work / "cache"))
    argv = [sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--catalog", str(field.ref), *FAST]
    probe = subprocess.run([*argv, "--out", str(work / "probe")], capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr
    total = sum(p.stat().st_size for p in (work / "probe").rglob("*") if p.is_file())
    cases = [(f"{frac:.2f}", f"size={max(16, int(total * frac / 1024))}k") for frac in DISK_FRACTIONS]
    cases += [("ro", "ro,size=1m"), ("roomy", f"size={int(total * 4 / 1024) + 256}k")]
    report = run_on_tmpfs(cases, argv, work / "mnt", env=env)
    return SimpleNamespace(total=total, report=report)


DISK_FRACTIONS = (0.05, 0.3, 0.6, 0.85, 0.97)


@pytest.mark.parametrize("fraction", DISK_FRACTIONS)
def test_full_disk_leaves_no_catalogue_no_part_file_and_a_failed_summary(small_disks, fraction):
    run = small_disks.report[f"{fraction:.2f}"]
    assert run["code"] == 8, run["stderr"]
    _one_line_error(run["stderr"], "no space left", "free some space")
    assert not [f for f in run["files"] if "catalog." in f or f.endswith(".part") or ".staging" in f
                or f.endswith(".zip")], run["files"]
    (summary,) = run["summaries"].values()
    assert summary["status"] == "failed" and summary["exit_code"] == 8


def test_read_only_out_folder_exits_8_naming_it(small_disks):
    run = small_disks.report["ro"]
    assert run["code"] == 8
    _one_line_error(run["stderr"], "runs", "read-only", "writable --out")


def test_enough_room_gives_the_complete_run_folder(small_disks):
    run = small_disks.report["roomy"]
    assert run["code"] == 0, run["stderr"]
    (name, summary), = run["summaries"].items()
    assert summary["status"] == "ok"
    for f in ("catalog.csv", "catalog.ecsv", "catalog.fits", "catalog.parquet", "regions.reg", f"{name}.zip"):
        assert f"runs/{name}/{f}" in run["files"]
    assert not [f for f in run["files"] if ".staging" in f or ".in-progress" in f or f.endswith(".part")]


# ---------------------------------------------------------------- killed while writing: recognisably unfinished

FAULTINJECT = Path(__file__).parent / "faultinject"


@pytest.mark.parametrize("hold", ["catalog.ecsv", ".zip"])
def test_run_killed_while_writing_outputs_is_left_unfinished_and_cleanable(field, tmp_path, hold):
    """SIGKILL to every process of the run while ``hold`` is being put in place: no catalogue, no summary,
    a folder that ``rpp clean`` and History call interrupted (the machine lost power, say)."""
    from rpp_core import cleanup
    from rpp_tui.screens.history import _run_row

    ready = tmp_path / "ready"
    env = dict(os.environ, RPP_CONFIG_DIR=str(tmp_path / "config"), RPP_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(FAULTINJECT), os.environ.get("PYTHONPATH", "")]),
               RPP_FAULT_HOLD_REPLACE=hold, RPP_FAULT_READY=str(ready))
    out = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--catalog", str(field.ref),
                             "--out", str(out), *FAST], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the run never reached the file to hold"
        holder = int(ready.read_text())
    finally:
        # the caller and the writer die together (power cut): nobody is left to tidy up
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if ready.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)
        proc.wait(30)
    for _ in range(100):  # the holder may be a worker process of its own
        try:
            os.kill(holder, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    run = _only_run(out)
    assert not list(run.glob("catalog.*")) and not (run / "summary.json").exists()
    assert not list(run.glob("*.zip"))
    (found,) = cleanup.find_runs(out)
    assert found.state == "interrupted" and "interrupted" in _run_row(found)
    assert [r.run.path for r in cleanup.clean(out, interrupted=True)] == [run] and not run.exists()


# ---------------------------------------------------------------- a run is in progress until its last file is in place

def test_retention_while_a_run_writes_its_zip_never_deletes_that_run(field, tmp_path, monkeypatch):
    """Another process applies a 1-byte size bound while this run is writing its ZIP."""
    from rpp_core import cleanup, pipeline
    from rpp_core.settings import OutputSettings, Profile

    writing, go = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_replace(src, dst, *a, **k):
        if str(dst).endswith(".zip") and not go.is_set():
            writing.set()
            go.wait(60)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", slow_replace)
    out = tmp_path / "ws"
    profile = Profile().replace(**{"astrometry.solve": "never", "cosmic_rays.enabled": False,
                                   "photometry.psf": False, "services.enabled": []})
    outcome = {}

    def run():
        try:
            outcome["result"] = asyncio.run(pipeline.run(field.fits, profile, out_dir=out, catalog_files=[field.ref],
                                                         offline=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert writing.wait(120), outcome
        removed = cleanup.apply_retention(out, OutputSettings(max_total_gb=1e-9, keep_days=1e-9))
        assert removed == []
        (running,) = cleanup.find_runs(out)
        assert running.state == "running"
        with pytest.raises(ValueError, match="in progress"):
            rundir.remove_run(running.path)  # History's delete key
    finally:
        go.set()
        worker.join(120)
    result = outcome["result"]
    assert result.exit_code == 0
    for path in result.files.values():
        assert Path(path).exists(), path
    assert cleanup.find_runs(out)[0].state == "finished"


def test_cancel_during_outputs_leaves_no_catalogue_and_a_cancelled_summary(field, tmp_path):
    from rpp_core import events as ev
    from rpp_core import pipeline
    from rpp_core.errors import Cancelled
    from rpp_core.settings import Profile

    cancel = asyncio.Event()

    def on_event(event):
        if isinstance(event, ev.StageStarted) and event.stage == "output":
            cancel.set()

    profile = Profile().replace(**{"astrometry.solve": "never", "cosmic_rays.enabled": False,
                                   "photometry.psf": False, "services.enabled": []})
    with pytest.raises(Cancelled):
        asyncio.run(pipeline.run(field.fits, profile, on_event, cancel, out_dir=tmp_path, catalog_files=[field.ref],
                                 offline=True))
    run = _only_run(tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ["run.log", "summary.json"]
    assert json.loads((run / "summary.json").read_text())["status"] == "cancelled"


# ---------------------------------------------------------------- signals: Ctrl-C and SIGTERM at any moment

def _faulty_env(tmp_path: Path, **faults) -> dict:
    env = dict(os.environ, RPP_CONFIG_DIR=str(tmp_path / "config"), RPP_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(FAULTINJECT), os.environ.get("PYTHONPATH", "")]), **faults)
    env.pop("RPP_DEBUG", None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t_end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"rpp ended before {path.name}: {proc.communicate()}"
        assert time.monotonic() < t_end, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def _send(proc: subprocess.Popen, signum: int) -> None:
    """As a terminal does: Ctrl-C to the foreground process group; SIGTERM (kill, systemd) to the process."""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)


WORDS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
def test_signal_while_rpp_starts_ends_it_with_one_line_and_exit_130(field, tmp_path, signum, delay):
    """In the first moments (imports, argument parsing): no traceback, no run folder.

    A run that never solves hands itself to the worker about 0.1 s after rpp's first line (its checks
    read no header): a signal after that cancels the run, as the tests below check."""
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--out", str(tmp_path / "o"),
                             *FAST], env=_faulty_env(tmp_path, RPP_FAULT_STARTED=str(started)),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(started, proc)
    time.sleep(delay)
    _send(proc, signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("rpp:")] == [f"rpp: {WORDS[signum]}"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_worker_checks_the_catalogue_leaves_no_run_folder(field, tmp_path, signum):
    """rpp run's checks that read files run in the worker before the run starts: a signal while they read
    ends rpp with exit 130 and its one line, and no run folder, although the reading then ends well."""
    ready, go, out_dir = tmp_path / "ready", tmp_path / "go", tmp_path / "o"
    env = _faulty_env(tmp_path, RPP_FAULT_HOLD_CHECK=str(go), RPP_FAULT_READY=str(ready))
    proc = subprocess.Popen([sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--catalog", str(field.ref),
                             "--out", str(out_dir), *FAST], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc)
        _send(proc, signum)
        time.sleep(0.2)  # the worker has the cancel; the reading ends within the runner's grace
        go.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    _one_line_error(err, "cancelled", WORDS[signum])
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.rglob("*"))


def _signalled_run(proc: subprocess.Popen, ready: Path, signum: int) -> tuple[str, float]:
    """Wait for the fault to be reached, send ``signum``, and return (stderr, seconds until rpp ended)."""
    try:
        _wait_for(ready, proc)
        t0 = time.monotonic()
        _send(proc, signum)
        _, err = proc.communicate(timeout=25)
        return err, time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if ready.exists():  # the worker, in a session of its own
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(ready.read_text()), signal.SIGKILL)


def _assert_cancelled_cleanly(proc: subprocess.Popen, err: str, waited: float, signum: int, out_dir: Path) -> Path:
    """Exit 130 soon after the signal, one line naming it, a cancelled summary and nothing else published."""
    assert proc.returncode == 130 and waited < 20, (proc.returncode, waited, err)
    _one_line_error(err, "cancelled", WORDS[signum])
    run = _only_run(out_dir)
    assert sorted(p.name for p in run.iterdir()) == ["run.log", "summary.json"], sorted(run.rglob("*"))
    assert json.loads((run / "summary.json").read_text())["status"] == "cancelled"
    assert rundir.run_state(run) == "finished"
    return run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("file", ["catalog.csv", ".zip"])
def test_signal_while_outputs_are_written_cancels_the_run_at_once(field, tmp_path, signum, file):
    """The catalogue (or the ZIP) is being written to a disk that takes 30 s: the run stops long before,
    exit 130, one line saying which signal, no catalogue, a cancelled summary."""
    ready = tmp_path / "ready"
    env = _faulty_env(tmp_path, RPP_FAULT_SLOW_REPLACE=file, RPP_FAULT_SLOW_S="30", RPP_FAULT_READY=str(ready))
    out_dir = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--catalog", str(field.ref),
                             "--out", str(out_dir), *FAST], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err, waited = _signalled_run(proc, ready, signum)
    _assert_cancelled_cleanly(proc, err, waited, signum, out_dir)


#: every stage runs: cosmic rays, PSF, the header WCS checked against the reference, an (offline) service
ALL_STAGES = ["--offline", "--set", "cosmic_rays.enabled=true", "--set", "photometry.psf=true",
              "--set", "astrometry.solve=auto", "--set", "services.enabled=simbad"]
STAGE_SIGNALS = [(stage, (signal.SIGINT, signal.SIGTERM)[i % 2]) for i, stage in enumerate(STAGE_NAMES)]


def _stage_run(field, tmp_path, stage: str, signum: int, **faults) -> None:
    from rpp_core.events import STAGE_LABELS

    ready, out_dir = tmp_path / "ready", tmp_path / "o"
    env = _faulty_env(tmp_path, RPP_FAULT_SLOW_STAGE=stage, RPP_FAULT_SLOW_S="60", RPP_FAULT_READY=str(ready), **faults)
    proc = subprocess.Popen([sys.executable, "-m", "rpp_cli", "run", str(field.fits), "--catalog", str(field.ref),
                             "--out", str(out_dir), *ALL_STAGES], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err, waited = _signalled_run(proc, ready, signum)
    run = _assert_cancelled_cleanly(proc, err, waited, signum, out_dir)
    log = (run / "run.log").read_text()
    assert f"{STAGE_LABELS[stage]}: started" in log and f"{STAGE_LABELS[stage]}: done" not in log, log
    return log


@pytest.mark.parametrize(("stage", "signum"), STAGE_SIGNALS, ids=[f"{s}-{sig.name}" for s, sig in STAGE_SIGNALS])
def test_signal_during_each_stage_ends_the_run_with_exit_130_and_a_cancelled_folder(field, tmp_path, stage, signum):
    """A stage that checks for a cancel (as rpp's do) stops there; the worker writes its own log and summary."""
    log = _stage_run(field, tmp_path, stage, signum)
    assert f"run cancelled in stage '{stage}'" in log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["fwhm", "output"])
def test_signal_during_a_stage_that_never_checks_still_ends_the_run_at_once(field, tmp_path, stage, signum):
    """A stage stuck in a C library holds the worker: the runner kills it and writes the summary itself."""
    log = _stage_run(field, tmp_path, stage, signum, RPP_FAULT_DEAF="1")
    assert "run cancelled: run cancelled" in log, log  # written by the runner, not the worker
