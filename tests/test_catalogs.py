"""Catalogue services against real loopback HTTP servers answering from the synthetic test sky.

The servers (tests/servers.py) speak TAP sync/ADQL, VizieR ASU, SkyBoT,
VSX JSON and Astro-Colibri JSON in the shape of the recorded real answers;
their sky is the truth of synthetic frames, so every number is checked
against what was injected.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rpp_core.catalogs import ServiceClient, crossmatch_services, fetch_gaia_reference, field_of_view
from rpp_core.errors import Cancelled, ServiceError
from rpp_core.settings import ObservatorySettings
from tests.catalog_helpers import UID, Recorder, sky_field
from tests.servers import MAIN_FRAME, SYNTH_MODEL, sep_deg, synthetic_mag


async def _crossmatch(server, settings, ra, dec, *, observatory=None, secrets=None, name="main", **kw):
    frame, epoch, _, _, (fra, fdec, fr) = sky_field(server, name)
    rec = Recorder()
    out, status = await crossmatch_services(
        ra, dec, 1.5, (fra, fdec), fr, kw.pop("epoch", epoch), settings,
        observatory if observatory is not None else ObservatorySettings(iau_code="J13"),
        {"astrocolibri_uid": UID} if secrets is None else secrets, warn=rec.warn, log=rec.log, **kw)
    return out, {s["service"]: s for s in status}, rec


# ---------------------------------------------------------------- calibration catalogue

async def test_gaia_reference_magnitudes_and_positions_equal_the_injected_truth(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    st = sky_server.settings()
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    k = np.asarray(ref["ref_id"]) - id0
    truth = frame.truth[k]
    assert ref.meta["band"] == "G" and ref.meta["system"] == "Vega"
    assert np.max(np.abs(ref["mag"] - truth["mag"])) < 1e-6
    assert np.max(np.abs(ref["color"] - truth["color"])) < 1e-6
    offset_mas = sep_deg(ref["ra"], ref["dec"], truth["ra"], truth["dec"]) * 3.6e6
    assert np.max(offset_mas) < 1.0
    assert np.all((ref["mag_err"] > 0.0027) & (ref["mag_err"] < 0.2))
    # the cuts, recomputed independently: variables, RUWE > 1.4, colour outside -0.5..4 and stars with a
    # neighbour within 5" that is less than 2.5 mag fainter are gone; every other star is there
    t = frame.truth
    crowded = {i for i in range(len(t))
               if np.any((sep_deg(t["ra"][i], t["dec"][i], t["ra"], t["dec"]) * 3600 < 5.0)
                         & (t["mag"] < t["mag"][i] + 2.5) & (np.arange(len(t)) != i))}
    red_or_blue = set(np.flatnonzero((t["color"] < -0.5) | (t["color"] > 4.0)))
    expected = set(range(len(t))) - crowded - red_or_blue - set(info["variable"]) - set(info["bad_ruwe"])
    assert set(k) == expected
    assert len(crowded) > 0 and ref.meta["rejected"]["variable"] == len(info["variable"])
    assert ref.meta["rejected"]["RUWE too high"] == len(info["bad_ruwe"])


async def test_high_proper_motion_stars_land_on_truth_only_after_propagation(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(), filters=False)
    assert len(ref) == len(frame.truth)
    k = np.asarray(ref["ref_id"]) - id0
    hpm = np.isin(k, info["high_pm"])
    assert hpm.sum() == len(info["high_pm"])
    t = frame.truth[k]
    moved = sep_deg(ref["ra"], ref["dec"], t["ra"], t["dec"]) * 3.6e6
    raw = sep_deg(ref["gaia_ra"], ref["gaia_dec"], t["ra"], t["dec"]) * 3.6e6
    assert np.all(moved[hpm] < 1.0)           # mas, at the observation epoch
    assert np.all(raw[hpm] > 2500.0)          # 9 years of 360 mas/yr at J2016.0


@pytest.mark.parametrize("band, system", [("V", "Vega"), ("r", "AB")])
async def test_synthetic_photometry_band_comes_from_gspc_by_source_id(sky_server, band, system):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    ref = await fetch_gaia_reference(ra, dec, r, epoch, band, sky_server.settings())
    t = frame.truth[np.asarray(ref["ref_id"]) - id0]
    assert ref.meta["system"] == system
    assert np.max(np.abs(ref["mag"] - synthetic_mag(t["mag"], t["color"], band))) < 1e-5
    assert np.all(t["mag"] <= 17.65)  # GSPC covers G < 17.65 only; fainter stars have no magnitude and are dropped
    assert ref.meta["rejected"]["no magnitude in band"] == int(np.sum(frame.truth["mag"] > 17.65))
    assert np.allclose(ref["mag_err"], 0.01, rtol=1e-3)
    queries = [r["params"]["QUERY"] for r in sky_server.requests_of("gaia")]
    synth = [q for q in queries if f"{SYNTH_MODEL[band][0]}_mag" in q and "synthetic_photometry_gspc" in q]
    assert len(synth) == 1  # 150 stars: one batch, and only for the stars the GSPC can have
    assert synth[0].count(",") - 3 == int(np.sum(frame.truth["mag"] <= 17.65)) - 1


async def test_wide_field_is_tiled_complete_and_synthetic_ids_go_in_batches_beyond_1000(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server, "wide")
    assert r > 3.0
    sky_server.max_rows = 300  # one cone would overflow; tiles of 0.5 deg stay far below
    st = sky_server.settings(gaia_tile_deg=0.5, gaia_mag_limit=17.5, gaia_batch_ids=250)
    t0 = time.monotonic()
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "B", st, filters=False)
    seconds = time.monotonic() - t0
    t = frame.truth
    in_cone = (sep_deg(ra, dec, t["ra"], t["dec"]) <= r) & (t["mag"] < 17.5)
    k = np.asarray(ref["ref_id"]) - id0
    assert len(k) == len(set(k)) == in_cone.sum() == len(t)  # every star once, none lost at tile edges
    with_b = np.isfinite(ref["mag"])
    assert with_b.sum() == np.sum(t["mag"] <= 17.65) and with_b.sum() > 1000
    assert np.max(np.abs(ref["mag"][with_b] - synthetic_mag(t["mag"][k[with_b]], t["color"][k[with_b]], "B"))) < 1e-5
    queries = [q["params"]["QUERY"] for q in sky_server.requests_of("gaia")]
    n_tiles = sum("gaia_source" in q for q in queries)
    n_batches = sum("synthetic_photometry_gspc" in q for q in queries)
    assert n_tiles == ref.meta["n_tiles"] > 30
    n_bright = int(np.sum(ref["gaia_phot_g_mean_mag"] <= 17.65))
    assert n_batches == int(np.ceil(n_bright / st.gaia_batch_ids)) >= 3
    assert seconds < 30


# ---------------------------------------------------------------- cross-match

async def test_every_service_identifies_the_injected_objects_and_nothing_else(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    rng = np.random.default_rng(5)
    order = rng.permutation(len(t))
    ra0, dec0 = MAIN_FRAME["ra0"], MAIN_FRAME["dec0"]
    ra = np.concatenate([t["ra"][order] + rng.normal(0, 0.2, len(t)) / 3600 / np.cos(np.radians(dec0)),
                         [ra0 + 0.01, ra0 - 0.01]])  # two sources with nothing in any catalogue
    dec = np.concatenate([t["dec"][order] + rng.normal(0, 0.2, len(t)) / 3600, [dec0 + 0.05, dec0 - 0.05]])
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(), ra, dec)
    assert rec.warnings == []
    assert all(s["status"] == "ok" for s in status.values())
    row_of = {int(k): i for i, k in enumerate(order)}
    assert np.all(out["gaia_source_id"][: len(t)] == id0 + order)
    assert np.all(out["gaia_source_id"][len(t):] == -1) and list(out["matches"][len(t):]) == ["", ""]
    for k in info["simbad"]:
        assert out["simbad_main_id"][row_of[k]] == f"SYN main {k}"
    assert np.sum(out["simbad_main_id"] != "") == len(info["simbad"])
    for k in info["vsx"]:
        assert out["vsx_name"][row_of[k]] == f"SYN-V{k} main" and out["vsx_period"][row_of[k]] > 0
    assert [out["milliquas_name"][row_of[k]] for k in info["milliquas"]] == [f"SYNQSO main {k}" for k in info["milliquas"]]
    assert out["pc10_name"][row_of[info["10pc"][0]]].startswith("SYN NEAR") and out["pc10_plx"][row_of[info["10pc"][0]]] == 250.0
    assert [out["skybot_name"][row_of[k]] for k in info["skybot"]] == ["2019 SYN1", "99942 Synthia"]
    assert status["skybot"]["location"] == "IAU code J13"
    assert out["colibri_name"][row_of[info["colibri"]]] == "AT SYNT-main-1"
    # field-level events: the one inside +-60 days, plus the GRB whose 2 deg error circle is too large to pin a star
    assert sorted(e["trigger_id"] for e in status["astrocolibri"]["events"]) == ["SYNGRB-main", "SYNT-main-1"]
    assert "SIMBAD:SYN main" in out["matches"][row_of[info["simbad"][0]]]
    assert np.all(out["simbad_sep_arcsec"][out["simbad_main_id"] != ""] < 1.5)


async def test_vsx_from_the_aavso_api_gives_the_same_variables(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    st = sky_server.settings(vsx_source="api", enabled=["vsx"])
    out, status, rec = await _crossmatch(sky_server, st, t["ra"], t["dec"])
    assert status["vsx"]["status"] == "ok" and sky_server.count("vsx") == 1 and sky_server.count("vizier") == 0
    for k in info["vsx"]:
        assert out["vsx_name"][k] == f"SYN-V{k} main"
        assert out["vsx_min"][k] - out["vsx_max"][k] == pytest.approx(0.5, abs=0.011)


async def test_skybot_asks_for_the_iau_code_and_the_geocentre_would_misplace_a_near_earth_object(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    st = sky_server.settings(enabled=["skybot"])
    out, status, _ = await _crossmatch(sky_server, st, t["ra"], t["dec"], observatory=ObservatorySettings(iau_code="j13"))
    assert sky_server.requests_of("skybot")[-1]["params"]["-loc"] == "J13"
    assert out["skybot_name"][info["skybot"][1]] == "99942 Synthia"
    assert float(sky_server.requests_of("skybot")[-1]["params"]["-ep"]) == pytest.approx(epoch.utc.jd, abs=1e-6)
    # site coordinates without a code: SkyBoT documents no geodetic -loc, so the geocentre, and a warning saying so
    site = ObservatorySettings(latitude=28.7606, longitude=-17.8792, elevation=2332)
    out, status, rec = await _crossmatch(sky_server, st, t["ra"], t["dec"], observatory=site)
    assert sky_server.requests_of("skybot")[-1]["params"]["-loc"] == "500"
    assert "geocentre" in status["skybot"]["location"] and "observatory.iau_code" in status["skybot"]["location"]
    assert out["skybot_name"][info["skybot"][1]] == ""  # 40" away as seen from the Earth's centre
    assert any("geocentre" in m and level == "WARNING" for level, m in rec.lines)


async def test_asteroid_is_not_matched_a_day_later(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    from astropy import units as u
    out, status, _ = await _crossmatch(sky_server, sky_server.settings(enabled=["skybot"]), t["ra"], t["dec"],
                                       epoch=epoch + 1 * u.day)
    assert np.all(out["skybot_name"] == "")


# ---------------------------------------------------------------- the client on a flaky link

async def test_second_run_of_a_field_needs_no_network(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    t = frame.truth
    st = sky_server.settings()
    ref1 = await fetch_gaia_reference(ra, dec, r, epoch, "V", st)
    out1, _, _ = await _crossmatch(sky_server, st, t["ra"], t["dec"])
    first = sky_server.count()
    assert first >= 8
    ref2 = await fetch_gaia_reference(ra, dec, r, epoch, "V", st)
    out2, status, _ = await _crossmatch(sky_server, st, t["ra"], t["dec"])
    assert sky_server.count() == first  # not one request more
    assert all(s["network_requests"] == 0 for s in status.values())
    assert np.all(ref1["mag"] == ref2["mag"]) and list(out1["matches"]) == list(out2["matches"])


async def test_offline_mode_uses_only_the_cache_and_names_what_it_skipped(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    t = frame.truth
    offline = sky_server.settings(offline=True)
    with pytest.raises(ServiceError, match="offline.*catalog_files"):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", offline)
    out, status, rec = await _crossmatch(sky_server, offline, t["ra"], t["dec"])
    assert sky_server.count() == 0
    assert sorted(s for s, _ in rec.warnings) == sorted(offline.enabled)
    assert all("offline" in why for _, why in rec.warnings)
    assert all(s["status"] == "skipped" for s in status.values())
    assert np.all(out["simbad_main_id"] == "") and len(out) == len(t)
    # once the field was fetched online, offline runs have everything
    await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings())
    await _crossmatch(sky_server, sky_server.settings(), t["ra"], t["dec"])
    n = sky_server.count()
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", offline)
    out, status, rec = await _crossmatch(sky_server, offline, t["ra"], t["dec"])
    assert sky_server.count() == n and rec.warnings == [] and len(ref) > 100
    assert np.sum(out["simbad_main_id"] != "") == len(info["simbad"])


async def test_server_errors_are_retried_with_backoff_until_the_answer_comes(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    sky_server.fail("simbad", status=500, times=2)
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["simbad"], retries=2),
                                         frame.truth["ra"], frame.truth["dec"])
    assert status["simbad"]["status"] == "ok" and status["simbad"]["network_requests"] == 3
    assert np.sum(out["simbad_main_id"] != "") == len(info["simbad"])
    assert sum("retry" in m for _, m in rec.lines) == 2


async def test_rate_limited_answer_waits_for_retry_after(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.fail("gaia", status=429, retry_after="1")
    t0 = time.monotonic()
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(backoff_s=0.01))
    waited = time.monotonic() - t0
    assert len(ref) > 100 and sky_server.count("gaia") == 2
    assert 1.0 <= waited < 4.0


async def test_rate_limit_spaces_requests_to_one_service(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server, "wide")
    rate = 5.0
    st = sky_server.settings(rate_limit_per_s=rate, gaia_tile_deg=1.5)
    await fetch_gaia_reference(ra, dec, r, epoch, "G", st, filters=False)
    times = np.sort([q["time"] for q in sky_server.requests_of("gaia")])
    assert len(times) >= 6
    # request k may not arrive earlier than k intervals after the first; 1.5 intervals of slack
    # absorb arrival jitter on a loaded machine (without the limit they all arrive within ~50 ms)
    k = np.arange(len(times))
    assert np.all(times - times[0] >= (k - 1.5) / rate)


async def test_calibration_catalogue_failure_is_a_clear_service_error(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.fail("gaia", status=503, times=3)
    with pytest.raises(ServiceError) as err:
        await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(retries=2))
    msg = str(err.value)
    assert "Gaia DR3 reference catalogue unavailable" in msg and "HTTP 503" in msg and "3 attempts" in msg
    assert "calibration.catalog_files" in msg
    with pytest.raises(ServiceError, match="band 'Q'"):
        await fetch_gaia_reference(ra, dec, r, epoch, "Q", sky_server.settings())


async def test_timeouts_are_retried_then_reported_with_the_limit(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.fail("gaia", delay=2.5, times=2)
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match=r"timed out after 1 s.*2 attempts"):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(timeout_s=1.0, retries=1))
    assert time.monotonic() - t0 < 4.0


async def test_unreachable_enrichment_service_only_warns(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    st = sky_server.settings(simbad_tap="http://127.0.0.1:9/nothing", retries=1)
    out, status, rec = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"])
    assert [s for s, _ in rec.warnings] == ["simbad"] and "connection failed" in rec.warnings[0][1]
    assert status["simbad"]["status"] == "failed" and status["vsx"]["status"] == "ok"
    assert "simbad_main_id" in out.colnames and np.all(out["simbad_main_id"] == "")
    assert np.sum(out["vsx_name"] != "") == len(info["vsx"])


async def test_malformed_and_truncated_answers_fail_one_service_and_are_never_cached(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    st = sky_server.settings(retries=1)
    sky_server.fail("simbad", truncate=True, times=2)
    sky_server.fail("vizier", body=b"<html><body>Proxy error</body></html>", times=6)
    out, status, rec = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"])
    why = dict(rec.warnings)
    assert set(why) == {"simbad", "vsx", "milliquas", "10pc"}
    assert "malformed or truncated" in why["simbad"] and "not a VOTable" in why["vsx"]
    assert status["gaia"]["status"] == status["skybot"]["status"] == status["astrocolibri"]["status"] == "ok"
    # the next run asks again (nothing bad was cached) and now gets the answers
    out, status, rec = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"])
    assert rec.warnings == [] and np.sum(out["simbad_main_id"] != "") == len(info["simbad"])


async def test_truncated_answer_is_retried_and_then_succeeds(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.fail("gaia", truncate=True)
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings())
    assert len(ref) > 100 and sky_server.count("gaia") == 2


async def test_empty_answers_are_empty_columns_not_failures(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    for svc in ("simbad", "skybot", "vsx", "astrocolibri"):
        sky_server.fail(svc, empty=True)
    st = sky_server.settings(enabled=["simbad", "skybot", "vsx", "astrocolibri"], vsx_source="api")
    out, status, rec = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"])
    assert rec.warnings == []
    assert all(s["status"] == "ok" and s["n_field"] == 0 for s in status.values())
    assert np.all(out["matches"] == "") and np.all(out["skybot_number"] == -1)


async def test_services_are_queried_concurrently(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    for svc in ("gaia", "simbad", "skybot", "vizier", "astrocolibri"):
        sky_server.fail(svc, delay=0.6, times=3)
    t0 = time.monotonic()
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(), frame.truth["ra"], frame.truth["dec"])
    assert rec.warnings == []
    assert time.monotonic() - t0 < 2.5  # 7 services one after another would take 4.2 s


async def test_slow_answer_is_abandoned_at_once_on_cancel(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.fail("gaia", delay=4.0)
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, cancel.set)
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(), cancel=cancel)
    assert time.monotonic() - t0 < 1.5  # the server would have answered after 4 s
    # the cross-match stops too, and a cancel is not reported as a failing service
    sky_server.fail("simbad", delay=4.0)
    flag = {"stop": False}
    asyncio.get_running_loop().call_later(0.3, lambda: flag.update(stop=True))
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        await _crossmatch(sky_server, sky_server.settings(enabled=["simbad"]), frame.truth["ra"], frame.truth["dec"],
                          cancel=lambda: flag["stop"])
    assert time.monotonic() - t0 < 1.5  # the server would have answered after 4 s


async def test_astrocolibri_user_id_never_reaches_logs_errors_or_disk(sky_server, tmp_path):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    wrong = "wrong-secret-uid-4242"
    st = sky_server.settings(enabled=["astrocolibri"], retries=0)
    out, status, rec = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"],
                                         secrets={"astrocolibri_uid": wrong})
    assert status["astrocolibri"]["status"] == "failed" and "error 401: Invalid user ID" in rec.warnings[0][1]
    out, status, rec2 = await _crossmatch(sky_server, st, frame.truth["ra"], frame.truth["dec"])
    assert status["astrocolibri"]["status"] == "ok"
    text = repr(rec.warnings) + repr(rec.lines) + repr(rec2.lines) + repr(status)
    assert wrong not in text and UID not in text
    for req in sky_server.requests_of("astrocolibri"):
        assert UID not in req["path"] and wrong not in req["path"]  # only in the POST body
    files = list((tmp_path / "cache").rglob("*"))
    assert any(f.name == "astrocolibri.db" for f in files)  # the answer was cached (without the id)
    for f in files:
        if f.is_file():
            data = f.read_bytes()
            assert UID.encode() not in data and wrong.encode() not in data


async def test_missing_astrocolibri_user_id_is_a_warning_that_says_how_to_set_it(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["astrocolibri", "simbad"]),
                                         frame.truth["ra"], frame.truth["dec"], secrets={})
    assert [s for s, _ in rec.warnings] == ["astrocolibri"] and "ASTROCOLIBRI_UID" in rec.warnings[0][1]
    assert sky_server.count("astrocolibri") == 0 and status["simbad"]["status"] == "ok"
    assert status["astrocolibri"]["status"] == "skipped"


async def test_one_shared_client_serves_calibration_and_crossmatch(sky_server, tmp_path):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    st = sky_server.settings()
    async with ServiceClient(st, secrets={"astrocolibri_uid": UID}, cache_dir=tmp_path / "c") as client:
        await fetch_gaia_reference(ra, dec, r, epoch, "G", st, client=client)
        out, status = await crossmatch_services(frame.truth["ra"], frame.truth["dec"], 1.5, (ra, dec), r, epoch, st,
                                                ObservatorySettings(iau_code="J13"), {"astrocolibri_uid": UID},
                                                client=client)
    assert {s["service"]: s["network_requests"] for s in status}["gaia"] == 0  # the calibration cone, from cache
    assert client.stats.cache_hits["gaia"] == 1


async def test_any_synthetic_frame_can_get_its_own_catalogue_server(frame_catalog_server, tmp_path, monkeypatch):
    from rpp_core.synthetic import make_frame
    from tests.servers import frame_epoch

    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path))
    frame = make_frame(shape=(256, 256), n_stars=60, seed=3, n_cosmics=0)
    server = frame_catalog_server(frame)
    ra, dec, r = field_of_view(frame.wcs, frame.data.shape)
    ref = await fetch_gaia_reference(ra, dec, r, frame_epoch(frame), "G", server.settings(), filters=False)
    assert len(ref) == np.sum(frame.truth["mag"] < server.settings().gaia_mag_limit) > 30
    k = np.asarray(ref["ref_id"]) - server.sky.info("frame0")[3]
    assert np.max(np.abs(ref["mag"] - frame.truth["mag"][k])) < 1e-6


# ---------------------------------------------------------------- what the real services answer (issue 13)

async def test_vsx_minimum_given_as_an_amplitude_becomes_a_magnitude(sky_server):
    """B/vsx: f_min = "(" means min is an amplitude; the faintest magnitude is then max + amplitude."""
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["vsx"]), t["ra"], t["dec"])
    assert "f_min" in sky_server.requests_of("vizier")[-1]["params"]["-out"].split(",")
    assert np.any(sky_server.sky.vsx["f_min"] == "(")  # the sky holds both kinds of rows
    for k in info["vsx"]:
        assert out["vsx_min"][k] - out["vsx_max"][k] == pytest.approx(0.5, abs=1e-4)


async def test_nearby_stars_moving_arcseconds_a_year_are_matched_at_the_observation_epoch(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["10pc"]), t["ra"], t["dec"])
    asked = sky_server.requests_of("vizier")[-1]["params"]
    assert asked["-source"] == "J/A+A/650/A201/tablea1"
    assert {"pmRA", "pmDE", "Epoch", "RAdeg", "DEdeg"} <= set(asked["-out"].split(","))
    # catalogue positions are 45" and 150" from where the stars are at the epoch; after propagation < 0.1"
    for k in info["10pc"]:
        assert out["pc10_name"][k] == f"SYN NEAR main {k}" and out["pc10_sep_arcsec"][k] < 0.1
    assert out["pc10_plx"][info["10pc"][0]] == 250.0 and out["pc10_type"][info["10pc"][1]] == "*"
    assert np.sum(out["pc10_name"] != "") == len(info["10pc"])


async def test_every_vizier_query_names_its_columns_and_vizier_refuses_unknown_ones(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    await _crossmatch(sky_server, sky_server.settings(enabled=["vsx", "milliquas", "10pc"]), t["ra"], t["dec"])
    reqs = sky_server.requests_of("vizier")
    assert len(reqs) == 3 and all(r["params"].get("-out") for r in reqs)
    # the loopback VizieR is as strict as the real one: an unknown column is an error naming it
    import httpx
    params = {**reqs[0]["params"], "-out": "Name,NoSuchColumn"}
    body = httpx.get(sky_server.url("vizier"), params=params).content
    from rpp_core.catalogs.http import read_votable
    with pytest.raises(ServiceError, match="Column 'NoSuchColumn' unknown"):
        read_votable(body, "vsx")


async def test_skybot_field_without_asteroids_is_empty_not_failed(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    st = sky_server.settings(enabled=["skybot"], retries=2)
    from astropy import units as u
    out, status, rec = await _crossmatch(sky_server, st, t["ra"], t["dec"], epoch=epoch + 30 * u.day)
    assert rec.warnings == [] and status["skybot"]["status"] == "ok" and status["skybot"]["n_field"] == 0
    assert status["skybot"]["network_requests"] == 1  # an empty answer is not retried as malformed
    assert np.all(out["skybot_name"] == "")


def test_loopback_skybot_accepts_the_epoch_forms_the_real_one_accepts(catalog_servers):
    import httpx
    name, frame, epoch, *_ = catalog_servers.sky.info("main")
    base = {"-ra": "120.0", "-dec": "35.0", "-rd": "0.2", "-loc": "J13", "-mime": "votable"}
    for ep in (f"{epoch.utc.jd:.6f}", epoch.utc.iso[:19], epoch.utc.isot[:19], epoch.utc.iso[:10]):
        r = httpx.get(catalog_servers.url("skybot"), params={**base, "-ep": ep})
        assert r.status_code == 200, (ep, r.text)
    assert httpx.get(catalog_servers.url("skybot"), params={**base, "-ep": "yesterday"}).status_code == 400
    assert httpx.get(catalog_servers.url("skybot"), params={**base, "-ep": "2460000.5",
                                                            "-loc": "-17.9 +28.8 2332"}).status_code == 400


def test_loopback_simbad_refuses_an_unquoted_allfluxes_band_and_a_wrong_join(catalog_servers):
    import httpx
    from rpp_core.catalogs import simbad

    good = simbad.cone_adql(120.0, 35.0, 0.1, 100)
    url = catalog_servers.url("simbad") + "/sync"
    form = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable"}
    assert httpx.post(url, data={**form, "QUERY": good}).status_code == 200
    r = httpx.post(url, data={**form, "QUERY": good.replace('allfluxes."B"', "allfluxes.B")})
    assert r.status_code == 400 and b"allfluxes.b does not exist" in r.content
    r = httpx.post(url, data={**form, "QUERY": good.replace('basic."oid" = ids."oidref"', 'basic."oid" = ids."oid"')})
    assert r.status_code == 400 and b"wrong join of ids" in r.content


async def test_simbad_answer_cut_at_maxrec_is_said_in_the_log(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    sky_server.max_rows = 2  # the service's own limit, below what the field holds
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["simbad"]), t["ra"], t["dec"])
    assert sky_server.requests_of("simbad")[-1]["params"]["MAXREC"] == str(sky_server.settings().max_rows)
    assert status["simbad"]["status"] == "ok" and status["simbad"]["n_field"] == 2
    assert any(level == "WARNING" and "simbad" in m and "cut" in m for level, m in rec.lines)


async def test_gaia_cone_cut_by_the_archive_is_split_until_every_star_is_there(sky_server):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(sky_server)
    sky_server.max_rows = 60  # the field holds 150 stars
    lines = []
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", sky_server.settings(), filters=False,
                                     log=lambda m, level="INFO": lines.append(m))
    assert len(ref) == len(frame.truth) and len(set(ref["ref_id"])) == len(ref)
    assert all("MAXREC" in q["params"] for q in sky_server.requests_of("gaia"))
    assert ref.meta["n_tiles"] > 1 and any("cut at 60 rows" in m for m in lines)


async def test_astrocolibri_catalogue_sources_are_kept_apart_from_transients(sky_server):
    frame, epoch, id0, info, _ = sky_field(sky_server)
    t = frame.truth
    out, status, rec = await _crossmatch(sky_server, sky_server.settings(enabled=["astrocolibri"]), t["ra"], t["dec"])
    st = status["astrocolibri"]
    assert [s["name"] for s in st["sources"]] == ["SYNXRB main"]
    assert all(e["kind"] == "transient" for e in st["events"]) and "SYNXRB main" not in [e["name"] for e in st["events"]]
    k = info["colibri_source"]
    assert out["colibri_name"][k] == "SYNXRB main" and out["colibri_kind"][k] == "source"
    assert out["colibri_kind"][info["colibri"]] == "transient"
