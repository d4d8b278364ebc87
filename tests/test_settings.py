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
    prof = settings.Profile().replace(**{"masks.border_px": "12", "cosmic_rays.enabled": "no",
                                         "calibration.catalog_files": "a.csv, b.ecsv"})
    assert prof.masks.border_px == 12
    assert prof.cosmic_rays.enabled is False
    assert prof.calibration.catalog_files == ["a.csv", "b.ecsv"]


@pytest.mark.parametrize("key,value,words", [
    ("detection.seeing_arcsec", 0.5, "out of range"),
    ("detection.seeing_arcsec", 7, "allowed 1.0 to 6.0"),
    ("detection.threshold_sigma", "abc", "expected a number"),
    ("masks.border_px", 2.5, "expected an integer"),
    ("photometry.aperture_factors", "1.5,abc", "expected a number"),
    ("photometry.aperture_factors", "1.5,50", "out of range"),
    ("services.enabled", "gaia,hubble", "not one of"),
    ("output.formats", ["csv", "xlsx"], "not one of"),
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


def test_list_settings_from_the_command_line_keep_their_element_types():
    from rpp_cli.options import apply_sets

    prof = apply_sets(settings.Profile(), ["photometry.aperture_factors=1.5,2,3", "services.enabled=[]",
                                           "calibration.color_columns=[\"BP\", \"RP\"]"])
    assert prof.photometry.aperture_factors == [1.5, 2.0, 3.0]
    assert all(type(v) is float for v in prof.photometry.aperture_factors)
    assert prof.services.enabled == []
    assert prof.calibration.color_columns == ["BP", "RP"]
    again = apply_sets(settings.Profile(), ["photometry.aperture_factors=[1, 2.5]", "services.enabled=gaia, simbad"])
    assert again.photometry.aperture_factors == [1.0, 2.5] and again.services.enabled == ["gaia", "simbad"]


def test_cli_toml_and_form_values_take_the_same_coercion_path(config_dir):
    from rpp_cli.options import apply_sets

    typed = settings.check_value(settings.PhotometrySettings, "aperture_factors", "1.5, 2, 3")  # what the form sends
    from_cli = apply_sets(settings.Profile(), ["photometry.aperture_factors=1.5,2,3"]).photometry.aperture_factors
    path = settings.profile_path("lists")
    path.write_text("[photometry]\naperture_factors = [1.5, 2, 3]\n")
    from_toml = settings.load_profile("lists").photometry.aperture_factors
    assert typed == from_cli == from_toml == [1.5, 2.0, 3.0]
    spec = settings.field_spec(settings.ServicesSettings, "enabled")
    assert (spec.kind, spec.element) == ("list", "choice") and "gaia" in spec.choices
    assert settings.field_spec(settings.AstrometrySettings, "solve").choices == ("auto", "always", "never")


def test_an_older_profile_loads_with_its_keys_moved_and_a_note_naming_them(config_dir):
    path = settings.profile_path("old")
    path.write_text("[detection]\nthreshold_sigma = 4.0\nborder_px = 25\nbackground_box = 128\n"
                    "[services]\ngaia_max_ruwe = 2.0\n[cosmic_rays]\ngain = 1.8\n")
    prof = settings.load_profile("old")
    assert prof.detection.threshold_sigma == 4.0
    assert prof.masks.border_px == 25 and prof.background.box == 128
    assert prof.calibration.gaia_max_ruwe == 2.0 and prof.observatory.gain == 1.8
    (note,) = prof.notes
    for moved in ("detection.border_px -> masks.border_px", "detection.background_box -> background.box",
                  "services.gaia_max_ruwe -> calibration.gaia_max_ruwe", "cosmic_rays.gain -> observatory.gain"):
        assert moved in note
    # saved again, it is in the new layout and loads without a note
    settings.save_profile(prof)
    assert settings.load_profile("old").notes == []
    assert "border_px" not in settings.dumps(prof).split("[masks]")[0]
