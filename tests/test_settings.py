"""Profiles: defaults valid, TOML round trip, ranges enforced, secrets kept 0600."""

import os
import stat

import pytest

from rpp_core import settings
from rpp_core.errors import SettingsError


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RPP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("ASTROCOLIBRI_UID", raising=False)
    return tmp_path / "config"


def test_default_profile_is_valid():
    settings.validate(settings.Profile())


def test_profile_round_trips_through_toml_file():
    prof = settings.Profile(name="night1")
    prof = prof.replace(**{"detection.threshold_sigma": 3.5, "calibration.band": "r",
                           "photometry.aperture_factors": [1.0, 2.0, 4.0], "photometry.annulus_inner": 5.0,
                           "photometry.annulus_outer": 7.0, "observatory.latitude": -24.6, "cosmic_rays.enabled": False,
                           "calibration.color_columns": ["BP", "RP"]})
    path = settings.save_profile(prof)
    assert path.parent == settings.locations.profiles_dir()
    back = settings.load_profile("night1")
    assert back == prof
    assert settings.list_profiles() == ["night1"]


def test_text_values_from_forms_are_coerced():
    prof = settings.Profile().replace(**{"detection.border_px": "12", "cosmic_rays.enabled": "no",
                                         "calibration.catalog_files": "a.csv, b.ecsv"})
    assert prof.detection.border_px == 12
    assert prof.cosmic_rays.enabled is False
    assert prof.calibration.catalog_files == ["a.csv", "b.ecsv"]


@pytest.mark.parametrize("key,value,words", [
    ("detection.seeing_arcsec", 0.5, "out of range"),
    ("detection.seeing_arcsec", 7, "allowed 1.0 to 6.0"),
    ("detection.threshold_sigma", "abc", "expected a number"),
    ("detection.border_px", 2.5, "expected an integer"),
    ("astrometry.solver", "magic", "not one of"),
    ("photometry.calibration_aperture", 7, "only 4 apertures"),
    ("photometry.annulus_inner", 2.0, "must exceed the largest aperture"),
    ("calibration.mag_max", 5.0, "must be fainter"),
])
def test_out_of_range_values_are_refused_with_the_setting_named(key, value, words):
    with pytest.raises(SettingsError) as info:
        settings.Profile().replace(**{key: value})
    assert words in str(info.value)
    assert key.split(".")[1] in str(info.value)


def test_unknown_keys_in_a_file_are_named(config_dir):
    path = settings.profile_path("bad")
    path.write_text('[detection]\nthreshhold = 3\n')
    with pytest.raises(SettingsError, match="threshhold"):
        settings.load_profile("bad")


def test_broken_toml_names_the_file():
    path = settings.profile_path("broken")
    path.write_text("[detection\n")
    with pytest.raises(SettingsError, match="broken.toml"):
        settings.load_profile("broken")


def test_missing_profile_lists_known_ones():
    settings.save_profile(settings.Profile(name="alpha"))
    with pytest.raises(SettingsError, match="alpha"):
        settings.load_profile("beta")


def test_rename_and_delete():
    settings.save_profile(settings.Profile(name="one"))
    settings.rename_profile("one", "two")
    assert settings.list_profiles() == ["two"]
    settings.delete_profile("two")
    assert settings.list_profiles() == []


def test_secrets_file_is_private_and_env_overrides(monkeypatch):
    path = settings.save_secret("astrocolibri_uid", "s3cret-uid")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert settings.load_secrets()["astrocolibri_uid"] == "s3cret-uid"
    assert "s3cret" not in settings.mask_secret("s3cret-uid")
    monkeypatch.setenv("ASTROCOLIBRI_UID", "from-env")
    assert settings.load_secrets()["astrocolibri_uid"] == "from-env"
    # secrets never go into profiles
    assert "s3cret" not in settings.dumps(settings.Profile())
