"""Catalogue answers parsed without network: the recorded real answers in tests/data/fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time

from rpp_core.catalogs import astrocolibri, gaia, simbad, skybot, vizier, vsx
from rpp_core.catalogs.crossmatch import field_of_view, match_one_to_one, match_radius
from rpp_core.catalogs.http import MalformedAnswer, read_votable, redact, retry_after_seconds
from rpp_core.errors import ServiceError
from rpp_core.settings import ObservatorySettings

from .datafiles import data_file

FIX = data_file("fixtures")


def test_recorded_gaia_archive_votable_gives_source_ids_flags_and_positions():
    tab = gaia.parse_gaia_source(read_votable((FIX / "gaia_tap/1710099405832VAL-result.vot").read_bytes(), "gaia"))
    assert list(tab["source_id"]) == [4583627001381815936, 5348723816842275584]
    assert list(tab["phot_variable_flag"]) == ["VARIABLE", "VARIABLE"]
    assert tab["ra"][0] == pytest.approx(268.0676646661466, abs=1e-12)
    assert np.all(tab["ref_epoch"] == 2016.0)
    assert np.all(np.isfinite(tab["phot_g_mean_mag"]))


def test_recorded_simbad_answer_gives_main_id_and_object_type():
    tab = simbad.parse(read_votable((FIX / "simbad/simbad-cone-mivot.xml").read_bytes(), "simbad"))
    assert list(tab["simbad_main_id"]) == ["NAME Barnard's Star c"]
    assert list(tab["simbad_otype"]) == ["Planet"]
    assert tab["ra"][0] == pytest.approx(269.452076958619)
    assert np.isnan(tab["simbad_V"][0])  # no allfluxes in this answer: empty, not an error


def test_recorded_skybot_answer_gives_four_objects_with_decimal_and_sexagesimal_positions_agreeing():
    tab = skybot.parse((FIX / "skybot/skybot_query.vot").read_bytes())
    assert list(tab["skybot_name"]) == ["G!kun||'homdima", "2014 UP224", "2019 RB21", "2007 TE366"]
    assert list(tab["skybot_number"]) == [229762, 523748, -1, -1]
    assert list(tab["skybot_class"])[3] == "Mars-Crosser"
    assert tab["ra"][0] == pytest.approx(81.303190599627357)
    # the RA/DEC text columns say the same (to their 0.15" rounding)
    from astropy.coordinates import Angle
    raw = read_votable((FIX / "skybot/skybot_query.vot").read_bytes(), "skybot")
    ra_sex = Angle(list(raw["RA"]), unit="hourangle").deg
    assert np.max(np.abs(ra_sex - tab["ra"])) * 3600 * np.cos(np.radians(4.5)) < 0.15


def test_vizier_multi_catalogue_answer_yields_the_vsx_table():
    tables = read_votable((FIX / "vizier/viz.xml").read_bytes(), "vsx", all_tables=True)
    tab = vizier.pick_table(tables, "B/vsx/vsx")
    assert tab.meta["votable_name"] == "B/vsx/vsx"
    out = vizier.parse_vsx(tab)
    assert len(out) == 2
    assert out["ra"][0] == pytest.approx(101.28708)
    assert out["dec"][1] == pytest.approx(-16.71694)


def test_vizier_columns_found_by_ucd_when_names_differ():
    tab = read_votable((FIX / "vizier/kang2010.xml").read_bytes(), "10pc")
    name_col = vizier._find(tab, ("NoSuchName",), ("meta.id;meta.main",))
    assert name_col == "SSTGLMC"


@pytest.mark.parametrize("fname, n", [("avg_case_partly_modified.json", None), ("has_epoch_period_as_float_1row.json", 1),
                                      ("no_epoch_as_float_1row.json", 1), ("empty_result.json", 0)])
def test_vsx_api_answers_parse_including_empty(fname, n):
    content = (FIX / "vsx" / fname).read_bytes()
    tab = vsx.parse(content)
    doc = json.loads(content)
    objs = doc["VSXObjects"]["VSXObject"] if isinstance(doc["VSXObjects"], dict) else []
    assert len(tab) == (n if n is not None else len(objs))
    if n == 1:
        assert np.isfinite(tab["vsx_period"][0]) and np.isfinite(tab["vsx_max"][0])


def test_vsx_magnitudes_amplitudes_and_uncertain_periods():
    tab = vsx.parse((FIX / "vsx/avg_case_partly_modified.json").read_bytes())
    y_com = tab[list(tab["vsx_name"]).index("Y Com")]
    assert y_com["vsx_period"] == 95.0 and y_com["vsx_max"] == 13.4 and y_com["vsx_band"] == "B"
    asas = tab[list(tab["vsx_name"]).index("ASAS J130830+1828.1")]
    assert asas["vsx_min"] == pytest.approx(12.382 + 0.160)  # "(0.160) V" is an amplitude
    assert vsx.parse_mag("<13.14 V") == (13.14, "V", False)
    assert np.isnan(vsx.parse_mag("?")[0])


def test_astrocolibri_answer_in_the_documented_shape():
    body = json.dumps({"voevents": [{"trigger_id": "T1", "source_name": "SN 2026abc", "type": "SN", "time": "2026-09-02T00:00:00",
                                     "ra": 83.63, "dec": 22.01, "err": 0.001},
                                    {"trigger_id": "G1", "source_name": "GRB 260901A", "type": "GRB", "time": "2026-09-01T00:00:00"}],
                       "sources": [], "Xsources": [], "icecat": [], "search_region": "circle"}).encode()
    tab, events, sources = astrocolibri.parse(body)
    assert len(events) == 2 and len(tab) == 1 and sources == []  # the GRB has no position: field level only
    assert tab["colibri_name"][0] == "SN 2026abc" and tab["colibri_err_arcsec"][0] == pytest.approx(3.6)
    req = astrocolibri.request_body("uid", 83.633, 22.0145, 2.0, Time("2026-09-10T00:00:00"), 60)
    assert req["time_range"]["min"] == "2026-07-12T00:00:00+00:00" and req["properties"]["radius"] == 2.0


@pytest.mark.parametrize("mangle, message", [
    (lambda b: b[: len(b) // 2], "malformed or truncated"),
    (lambda b: b"<html><body>502 Bad Gateway</body></html>", "not a VOTable"),
    (lambda b: b"", "empty answer"),
])
def test_truncated_or_foreign_answers_raise_a_retryable_error(mangle, message):
    content = mangle((FIX / "gaia_tap/1710099405832VAL-result.vot").read_bytes())
    with pytest.raises(MalformedAnswer, match=message):
        read_votable(content, "gaia")


def test_tap_error_document_raises_with_the_server_message():
    body = (b'<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results">'
            b'<INFO name="QUERY_STATUS" value="ERROR">Column foo not found</INFO></RESOURCE></VOTABLE>')
    with pytest.raises(ServiceError, match="Column foo not found") as err:
        read_votable(body, "gaia")
    assert not isinstance(err.value, MalformedAnswer)


def test_one_to_one_match_gives_each_catalogue_object_to_the_closest_source_only():
    cat_ra, cat_dec = np.array([10.0, 10.01]), np.array([0.0, 0.0])
    src_ra = np.array([10.0 + 0.5 / 3600, 10.0 + 1.0 / 3600, 10.01, 10.5])
    src_dec = np.zeros(4)
    i_src, i_cat, sep = match_one_to_one(src_ra, src_dec, cat_ra, cat_dec, 2.0)
    assert list(i_src) == [0, 2] and list(i_cat) == [0, 1]
    assert sep[0] == pytest.approx(0.5, abs=1e-6)
    # per-row radii: the second object only accepts sources within 0.1"
    i_src, i_cat, _ = match_one_to_one(src_ra + 0.2 / 3600, src_dec, cat_ra, cat_dec, np.array([2.0, 0.1]))
    assert list(i_cat) == [0]


def test_match_radius_follows_seeing_and_astrometric_scatter():
    assert match_radius(3.0, 0.0) == pytest.approx(1.5)
    assert match_radius(3.0, 1.0) == pytest.approx(np.hypot(1.5, 3.0))
    assert match_radius(0.5, 0.0, r_min_arcsec=1.0) == 1.0


def test_proper_motion_propagation_matches_linear_motion():
    ra, dec = gaia.propagate([150.0], [20.0], [300.0], [-200.0], 2016.0, Time(2025.0, format="jyear"))
    dt = 9.0
    assert (dec[0] - 20.0) * 3.6e6 == pytest.approx(-200.0 * dt, abs=1.0)  # mas
    assert (ra[0] - 150.0) * 3.6e6 * np.cos(np.radians(20.0)) == pytest.approx(300.0 * dt, abs=1.0)


def test_field_radius_reaches_the_frame_corners_without_a_cap():
    from rpp_core.synthetic import make_frame
    fr = make_frame(shape=(64, 96), n_stars=3, pixscale=200.0, n_cosmics=0, n_saturated=0)
    ra, dec, r = field_of_view(fr.wcs, fr.data.shape)
    assert r > 3.0  # a 5 x 3.5 deg frame: no 0.3 deg cap
    c_ra, c_dec = fr.wcs.all_pix2world([-0.5, 95.5], [-0.5, 63.5], 0)
    from tests.servers import sep_deg
    assert np.all(sep_deg(ra, dec, c_ra, c_dec) < r)


def test_wide_cone_tiles_cover_every_point_of_the_field():
    from tests.servers import sep_deg
    centres = np.array(gaia.tile_centres(10.0, 60.0, 3.0, 0.5))
    rng = np.random.default_rng(3)
    pts_ra = 10.0 + rng.uniform(-7, 7, 20000)
    pts_dec = 60.0 + rng.uniform(-3.2, 3.2, 20000)
    inside = sep_deg(10.0, 60.0, pts_ra, pts_dec) <= 3.0
    d = np.min([sep_deg(c[0], c[1], pts_ra[inside], pts_dec[inside]) for c in centres], axis=0)
    assert np.all(d <= 0.5)


def test_skybot_location_is_the_iau_code_else_the_geocentre_with_the_reason():
    assert skybot.observer_location(ObservatorySettings(iau_code="j13"))[0] == "J13"
    loc, why = skybot.observer_location(ObservatorySettings(latitude=28.76, longitude=342.12, elevation=2332))
    assert loc == "500" and "IAU observatory code" in why and "observatory.iau_code" in why
    loc, why = skybot.observer_location(ObservatorySettings())
    assert loc == "500" and "geocentre" in why


def test_secrets_are_redacted_and_retry_after_dates_understood():
    assert redact("uid=abc123 failed", {"k": "abc123"}) == "uid=*** failed"
    assert retry_after_seconds("7") == 7.0
    from email.utils import formatdate
    import time
    assert 25 < retry_after_seconds(formatdate(time.time() + 30, usegmt=True)) <= 30
    assert retry_after_seconds("soon") is None


def test_frames_of_one_field_share_one_snapped_cone():
    """Pointing jitter of a few arcsec and footprint changes keep the same query (cache key) and cover the field."""
    import numpy as np
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from rpp_core.catalogs.http import snap_cone

    rng = np.random.default_rng(3)
    base = (150.01234, 20.0321, 0.21)
    cones = set()
    for _ in range(20):
        ra = base[0] + rng.normal(0, 3 / 3600)
        dec = base[1] + rng.normal(0, 3 / 3600)
        r = base[2] + rng.normal(0, 1e-4)
        ra_s, dec_s, r_s = snap_cone(ra, dec, r)
        sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(ra_s * u.deg, dec_s * u.deg)).deg
        assert sep + r <= r_s  # the snapped cone contains the field
        cones.add((ra_s, dec_s, r_s))
    assert len(cones) <= 2  # at most a grid boundary between them


@pytest.mark.parametrize("doc, expected", [
    ([{"message": "Invalid user ID", "status_code": 401}, 401], (401, "Invalid user ID")),
    ({"message": "Internal error", "status_code": "500"}, (500, "Internal error")),
    ({"error": "Daily quota exceeded", "status_code": 429}, (429, "Daily quota exceeded")),
    ({"voevents": [], "sources": [], "status_code": 500}, None),  # a result that happens to carry the key
    ({"message": "ok", "status_code": 200}, None),
])
def test_astrocolibri_error_envelopes_are_told_from_results(doc, expected):
    assert astrocolibri.error_envelope(doc) == expected
    if expected is not None:
        with pytest.raises(ServiceError, match=f"error {expected[0]}: {expected[1]}") as err:
            astrocolibri.parse(json.dumps(doc).encode())
        assert not isinstance(err.value, MalformedAnswer)  # final: reported, not retried or cached


def test_secrets_are_redacted_from_answer_bodies_in_every_encoding():
    from rpp_core.catalogs.http import redact_bytes

    secret = "a b/c+d"
    body = b'{"uid": "a b/c+d", "url": "x?uid=a+b%2Fc%2Bd", "p": "a%20b%2Fc%2Bd"}'
    assert redact_bytes(body, {"astrocolibri_uid": secret}) == b'{"uid": "***", "url": "x?uid=***", "p": "***"}'
