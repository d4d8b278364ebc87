"""Faults an observatory machine meets on its own side: names, disks, half-written folders, bad input.

Each test is one fault case of issue 14 (the service side lives in
tests/test_catalogs_faults.py): a profile name that reaches outside the
profiles folder, a full or read-only disk, a run killed while writing, a
frame or catalogue that is wrong in a way an observer can fix. The promise
checked is always the same: a documented exit code, one line naming the file
and what to do, and nothing half-written left behind.
"""

from __future__ import annotations

import os

import pytest

from rpp_cli.main import main as rpp_main
from rpp_core import settings


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
