"""Faults an observatory machine meets, through a fault-injecting proxy in front of the loopback servers.

Each test is one fault case of issue 14 (and the Astro-Colibri error answers of
issue 13): the service misbehaves, and the run must stay bounded, say what
happened, cache nothing wrong and, for enrichment services, carry on.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest

from rpp_core.catalogs import crossmatch_services, fetch_gaia_reference
from rpp_core.errors import ServiceError
from rpp_core.settings import ObservatorySettings
from tests.catalog_helpers import UID, Recorder, sky_field


async def _crossmatch(server, settings, *, secrets=None, name="main", **kw):
    frame, epoch, _, _, (fra, fdec, fr) = sky_field(server, name)
    rec = Recorder()
    out, status = await crossmatch_services(
        frame.truth["ra"], frame.truth["dec"], 1.5, (fra, fdec), fr, epoch, settings, ObservatorySettings(iau_code="J13"),
        {"astrocolibri_uid": UID} if secrets is None else secrets, warn=rec.warn, log=rec.log, **kw)
    return out, {s["service"]: s for s in status}, rec


def _cache_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- time: every request is bounded

async def test_gaia_answer_trickled_byte_by_byte_fails_within_the_timeout(fault_proxy, catalog_servers):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "drip", seconds=8.0, times=4)  # each answer would take 8 s to arrive
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match="timed out after 1 s"):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", fault_proxy.settings(timeout_s=1.0, retries=1, backoff_s=0.05))
    assert time.monotonic() - t0 < 4.0  # two attempts of at most 1 s each
    assert fault_proxy.count("gaia") == 2


async def test_enrichment_service_trickling_its_answer_only_warns_and_the_others_answer(fault_proxy, catalog_servers):
    frame, epoch, id0, info, _ = sky_field(catalog_servers)
    fault_proxy.inject("simbad", "drip", seconds=8.0, times=3)
    st = fault_proxy.settings(enabled=["simbad", "vsx", "skybot"], timeout_s=1.0, retries=1, backoff_s=0.05)
    t0 = time.monotonic()
    out, status, rec = await _crossmatch(catalog_servers, st)
    assert time.monotonic() - t0 < 4.0
    assert [s for s, _ in rec.warnings] == ["simbad"] and "timed out" in rec.warnings[0][1]
    assert status["vsx"]["status"] == status["skybot"]["status"] == "ok"
    assert np.sum(out["vsx_name"] != "") == len(info["vsx"])


# ---------------------------------------------------------------- size: every answer is bounded

async def test_endless_gaia_answer_is_cut_at_the_size_limit_and_the_error_says_so(fault_proxy, catalog_servers, tmp_path):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "huge", mb=60, times=20)  # the cone and each of its parts: chunked, no Content-Length
    st = fault_proxy.settings(gaia_max_answer_mb=1.0, retries=2)
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match=r"larger than 1 MB.*gaia_max_answer_mb"):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    assert time.monotonic() - t0 < 30.0  # reading 60 MB answers to their end would take minutes
    # the cone, then its parts once (each too large again: no further split, none retried)
    assert 2 <= fault_proxy.count("gaia") <= 20
    # the client stopped reading each answer long before its 60 MB (what was sent fills the socket buffers)
    assert fault_proxy.sent["gaia"] < fault_proxy.count("gaia") * 10 * 1024 * 1024
    fault_proxy.faults["gaia"].clear()
    n = fault_proxy.count("gaia")
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", st)  # nothing was cached: asked again, now fine
    assert len(ref) > 100 and fault_proxy.count("gaia") == n + 1


async def test_a_gaia_cone_too_large_for_the_limit_is_asked_again_in_parts_with_the_same_stars(
        fault_proxy, catalog_servers, tmp_path, monkeypatch):
    """A dense field: the one answer beyond gaia_max_answer_mb is asked again as cones of half the radius."""
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    st = fault_proxy.settings(gaia_max_answer_mb=1.0)
    whole = await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    n0 = fault_proxy.count("gaia")
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "another-cache"))  # the whole cone's answer is asked again
    fault_proxy.inject("gaia", "huge", mb=60)
    lines = []
    parts = await fetch_gaia_reference(ra, dec, r, epoch, "G", st, log=lambda m, level="INFO": lines.append((level, m)))
    said = [m for level, m in lines if level == "WARNING" and "too large" in m and "gaia_max_answer_mb" in m]
    n_parts = int(re.search(r"asking again in (\d+) cones of", said[0]).group(1))
    assert n_parts >= 7 and fault_proxy.count("gaia") - n0 == 1 + n_parts  # each part asked once
    assert sorted(np.asarray(parts["ref_id"])) == sorted(np.asarray(whole["ref_id"])) and len(whole) > 100


async def test_answer_announced_larger_than_the_limit_is_refused_without_reading_it(fault_proxy, catalog_servers):
    fault_proxy.inject("vizier", "huge", mb=30, declare=True)
    st = fault_proxy.settings(enabled=["vsx"], max_answer_mb=1.0)
    out, status, rec = await _crossmatch(catalog_servers, st)
    assert status["vsx"]["status"] == "failed" and "larger than 1 MB" in rec.warnings[0][1]
    assert "max_answer_mb" in rec.warnings[0][1]
    assert fault_proxy.sent["vizier"] < 5 * 1024 * 1024


# ---------------------------------------------------------------- content: only what parsed is kept

async def test_valid_votable_with_the_wrong_columns_is_never_cached(fault_proxy, catalog_servers):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "wrong_columns", times=2)
    st = fault_proxy.settings(retries=1)
    with pytest.raises(ServiceError, match="phot_g_mean_mag"):  # the error names a missing column
        await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    # the next run asks the archive again instead of failing from the cache
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    assert len(ref) > 100 and fault_proxy.count("gaia") == 3


async def test_html_page_under_http_200_is_retried_and_never_cached(fault_proxy, catalog_servers, tmp_path):
    frame, epoch, id0, info, _ = sky_field(catalog_servers)
    fault_proxy.inject("simbad", "html")
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["simbad"], retries=1))
    assert rec.warnings == [] and status["simbad"]["network_requests"] == 2
    assert np.sum(out["simbad_main_id"] != "") == len(info["simbad"])
    assert b"under maintenance" not in _cache_bytes(tmp_path / "cache")


# ---------------------------------------------------------------- connections

async def test_connection_reset_before_the_answer_is_retried(fault_proxy, catalog_servers):
    frame, epoch, id0, info, _ = sky_field(catalog_servers)
    fault_proxy.inject("skybot", "reset")
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["skybot"], retries=1))
    assert rec.warnings == [] and status["skybot"]["network_requests"] == 2
    assert [out["skybot_name"][k] for k in info["skybot"]] == ["2019 SYN1", "99942 Synthia"]


async def test_connection_reset_in_the_middle_of_the_answer_is_retried(fault_proxy, catalog_servers):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "reset_mid")
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", fault_proxy.settings(retries=1))
    k = np.asarray(ref["ref_id"]) - id0
    assert np.max(np.abs(ref["mag"] - frame.truth["mag"][k])) < 1e-6 and fault_proxy.count("gaia") == 2


# ---------------------------------------------------------------- busy services

async def test_busy_vizier_429_is_asked_again_after_retry_after(fault_proxy, catalog_servers):
    frame, epoch, id0, info, _ = sky_field(catalog_servers)
    fault_proxy.inject("vizier", "status", status=429, retry_after="1")
    t0 = time.monotonic()
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["vsx"], backoff_s=0.01))
    assert time.monotonic() - t0 >= 1.0
    assert rec.warnings == [] and np.sum(out["vsx_name"] != "") == len(info["vsx"])


async def test_gaia_503_with_a_retry_after_date_is_asked_again_at_that_time(fault_proxy, catalog_servers):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "status", status=503, retry_after=formatdate(time.time() + 2, usegmt=True))
    t0 = time.monotonic()
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", fault_proxy.settings(backoff_s=0.01))
    assert 0.9 <= time.monotonic() - t0 < 5.0 and len(ref) > 100


async def test_retry_after_beyond_the_allowed_wait_fails_at_once_saying_so(fault_proxy, catalog_servers):
    frame, epoch, id0, info, (ra, dec, r) = sky_field(catalog_servers)
    fault_proxy.inject("gaia", "status", status=503, retry_after="600")
    t0 = time.monotonic()
    with pytest.raises(ServiceError, match=r"retry after 600 s.*retry_after_max_s"):
        await fetch_gaia_reference(ra, dec, r, epoch, "G", fault_proxy.settings(retry_after_max_s=5.0))
    assert time.monotonic() - t0 < 2.0


async def test_astrocolibri_quota_429_is_reported_and_not_asked_again(fault_proxy, catalog_servers):
    """Each Astro-Colibri search spends the daily quota: a 429 is final."""
    fault_proxy.inject("astrocolibri", "status", status=429, retry_after="1",
                       body=b'{"message": "Daily quota exceeded. Renewal at 2026-01-01T00:00:00"}')
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["astrocolibri"], retries=3))
    assert status["astrocolibri"]["status"] == "failed" and fault_proxy.count("astrocolibri") == 1
    assert "quota" in rec.warnings[0][1].lower()


# ---------------------------------------------------------------- Astro-Colibri errors under HTTP 200

async def test_astrocolibri_error_list_under_200_reports_the_message_and_is_not_cached(fault_proxy, catalog_servers, tmp_path):
    wrong = "wrong-secret-uid-4242"
    st = fault_proxy.settings(enabled=["astrocolibri"], retries=2)
    out, status, rec = await _crossmatch(catalog_servers, st, secrets={"astrocolibri_uid": wrong})
    assert status["astrocolibri"]["status"] == "failed"
    why = rec.warnings[0][1]
    assert "Invalid user ID" in why and "not a JSON object" not in why and wrong not in why
    assert fault_proxy.count("astrocolibri") == 1  # a refused user id is not retried
    out, status, rec = await _crossmatch(catalog_servers, st)  # the right id: asked again, answered
    assert status["astrocolibri"]["status"] == "ok" and fault_proxy.count("astrocolibri") == 2
    assert wrong.encode() not in _cache_bytes(tmp_path / "cache")


async def test_astrocolibri_server_error_under_200_is_not_zero_events(fault_proxy, catalog_servers):
    frame, epoch, id0, info, _ = sky_field(catalog_servers)
    catalog_servers.fail("astrocolibri", envelope="dict500", times=3)
    st = fault_proxy.settings(enabled=["astrocolibri"], retries=0)
    out, status, rec = await _crossmatch(catalog_servers, st)
    assert status["astrocolibri"]["status"] == "failed" and "Internal error while searching" in rec.warnings[0][1]
    catalog_servers.reset()
    out, status, rec = await _crossmatch(catalog_servers, st)  # nothing was cached: the events come now
    assert status["astrocolibri"]["status"] == "ok" and status["astrocolibri"]["n_field"] >= 1
    assert out["colibri_name"][info["colibri"]] == "AT SYNT-main-1"


async def test_user_id_echoed_by_the_server_never_reaches_the_cache(fault_proxy, catalog_servers, tmp_path):
    catalog_servers.fail("astrocolibri", echo_uid=True)
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["astrocolibri"]))
    assert status["astrocolibri"]["status"] == "ok"
    stored = _cache_bytes(tmp_path / "cache")
    assert len(stored) > 0 and UID.encode() not in stored
    out2, status2, _ = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["astrocolibri"]))
    assert status2["astrocolibri"]["network_requests"] == 0  # the redacted answer still answers the next run
    assert list(out2["colibri_name"]) == list(out["colibri_name"])


# ---------------------------------------------------------------- whole runs

def _pipeline_profile(settings, **changes):
    from tests.conftest_pipeline_helpers import offline_profile

    svc = {f"services.{k}": getattr(settings, k) for k in
           ("gaia_tap", "simbad_tap", "vizier", "vsx", "skybot", "astrocolibri", "timeout_s", "retries", "backoff_s",
            "rate_limit_per_s")}
    return offline_profile(**{"services.offline": False, "calibration.catalog": "auto", "calibration.mag_max": 18.0,
                              "cosmic_rays.enabled": False, "photometry.psf": False, "output.zip": False,
                              "observatory.iau_code": "J13", **svc, **changes})


def _run(frame, profile, tmp_path):
    from rpp_core import pipeline

    path = tmp_path / "main.fits"
    if not path.exists():
        frame.write(path)
    return asyncio.run(pipeline.run(path, profile, out_dir=tmp_path / "runs"))


def test_failing_gaia_is_asked_once_per_run_not_again_in_the_cross_match(fault_proxy, catalog_servers, tmp_path):
    frame = catalog_servers.sky.info("main")[1]
    fault_proxy.inject("gaia", "status", status=503, times=20)
    prof = _pipeline_profile(fault_proxy.settings(retries=1, backoff_s=0.05),
                             **{"services.enabled": ["gaia", "simbad"]})
    res = _run(frame, prof, tmp_path)
    assert res.exit_code == 5 and (res.run_dir / "catalog.csv").exists()  # not calibrated, still written
    assert fault_proxy.count("gaia") == 2  # calibration's two attempts; the cross-match did not ask again
    status = {s["service"]: s for s in res.summary.services}
    assert status["gaia"]["status"] == "failed" and status["simbad"]["status"] == "ok"


def _unwritable_dir(path: Path) -> Path:
    """A folder this process cannot write into (as root, where modes do not bind, a path under a file)."""
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o500)
        return path
    path.write_text("a file, not a folder")
    return path / "cache"


def test_cache_folder_that_cannot_be_written_still_gives_the_calibrated_catalogue(fault_proxy, catalog_servers, tmp_path,
                                                                                  monkeypatch):
    frame = catalog_servers.sky.info("main")[1]
    monkeypatch.setenv("RPP_CACHE_DIR", str(_unwritable_dir(tmp_path / "ro")))
    prof = _pipeline_profile(fault_proxy.settings(), **{"services.enabled": ["gaia", "simbad", "vsx"]})
    res = _run(frame, prof, tmp_path)
    assert res.exit_code == 0, res.message
    assert res.summary.calibrated and res.summary.zp is not None
    assert (res.run_dir / "catalog.csv").exists() and (res.run_dir / "catalog.ecsv").exists()
    assert any("cache" in w and "without" in w for w in res.warnings)
    assert np.sum(np.asarray(res.catalog["simbad_main_id"]) != "") > 0


def test_corrupt_secrets_file_still_gives_the_calibrated_catalogue(fault_proxy, catalog_servers, tmp_path, monkeypatch):
    frame = catalog_servers.sky.info("main")[1]
    config = tmp_path / "config"
    config.mkdir()
    (config / "secrets.toml").write_bytes(b"astrocolibri_uid = \"unterminated\n\xff\xfe[[[")
    monkeypatch.setenv("RPP_CONFIG_DIR", str(config))
    prof = _pipeline_profile(fault_proxy.settings(), **{"services.enabled": ["gaia", "astrocolibri", "simbad"]})
    res = _run(frame, prof, tmp_path)
    assert res.exit_code == 0, res.message
    assert res.summary.calibrated and (res.run_dir / "catalog.csv").exists()
    status = {s["service"]: s for s in res.summary.services}
    assert status["astrocolibri"]["status"] == "skipped" and status["simbad"]["status"] == "ok"
    assert any("secrets.toml" in w for w in res.warnings)


def test_config_folder_that_cannot_be_created_still_gives_the_calibrated_catalogue(fault_proxy, catalog_servers,
                                                                                    tmp_path, monkeypatch):
    frame = catalog_servers.sky.info("main")[1]
    (tmp_path / "plainfile").write_text("x")
    monkeypatch.setenv("RPP_CONFIG_DIR", str(tmp_path / "plainfile" / "config"))
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "plainfile" / "cache"))
    prof = _pipeline_profile(fault_proxy.settings(), **{"services.enabled": ["gaia", "astrocolibri", "vsx"]})
    res = _run(frame, prof, tmp_path)
    assert res.exit_code == 0, res.message
    assert res.summary.calibrated and (res.run_dir / "catalog.csv").exists()
    status = {s["service"]: s for s in res.summary.services}
    assert status["vsx"]["status"] == "ok" and status["astrocolibri"]["status"] == "skipped"


async def test_skybot_204_no_content_is_an_empty_field(fault_proxy, catalog_servers):
    fault_proxy.inject("skybot", "status", status=204, body=b"")
    out, status, rec = await _crossmatch(catalog_servers, fault_proxy.settings(enabled=["skybot"], retries=2))
    assert rec.warnings == [] and status["skybot"]["status"] == "ok" and status["skybot"]["n_field"] == 0
    assert fault_proxy.count("skybot") == 1


@pytest.mark.parametrize("fault", ["corrupt secrets.toml", "cache folder not writable", "config folder cannot be made"])
def test_rpp_run_with_a_local_fault_on_the_enrichment_side_still_writes_the_calibrated_catalogue(
        fault_proxy, catalog_servers, tmp_path, monkeypatch, capfd, fault):
    """As the observer meets it: ``rpp run`` (the caller resolves keys and cache, the worker runs), exit 0,
    the calibrated catalogue written, a warning line saying what was wrong."""
    import json

    from rpp_cli.main import main as rpp_main
    from rpp_core import settings

    frame = catalog_servers.sky.info("main")[1]
    path = tmp_path / "main.fits"
    frame.write(path)
    if fault == "corrupt secrets.toml":
        config = tmp_path / "config"
        config.mkdir()
        (config / "secrets.toml").write_bytes(b"astrocolibri_uid = \"unterminated\n\xff\xfe[[[")
        monkeypatch.setenv("RPP_CONFIG_DIR", str(config))
        said = "secrets.toml"
    elif fault == "cache folder not writable":
        monkeypatch.setenv("RPP_CACHE_DIR", str(_unwritable_dir(tmp_path / "ro")))
        said = "cache"
    else:
        (tmp_path / "plainfile").write_text("x")
        monkeypatch.setenv("RPP_CONFIG_DIR", str(tmp_path / "plainfile" / "config"))
        monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "plainfile" / "cache"))
        said = "plainfile"
    prof = _pipeline_profile(fault_proxy.settings(), **{"services.enabled": ["gaia", "astrocolibri", "simbad"]})
    (tmp_path / "night.toml").write_text(settings.dumps(prof))
    code = rpp_main(["run", str(path), "--profile", str(tmp_path / "night.toml"), "--out", str(tmp_path / "runs"),
                     "--json"])
    out = capfd.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["zp"] is not None and summary["status"] == "ok"
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert (run / "catalog.csv").exists() and (run / "catalog.fits").exists()
    assert any(ln.startswith("warning [") and said in ln for ln in out.err.splitlines()), out.err
    assert not [ln for ln in out.err.splitlines() if ln.startswith("rpp:")], out.err
