"""The catalogue answer cache: time to live per service, size bound, dropping stale entries, `rpp cache`."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from rpp_core.catalogs import cache, crossmatch_services, fetch_gaia_reference, field_of_view
from rpp_core.catalogs.cache import AnswerCache, cache_info, clear_cache
from rpp_core.settings import ObservatorySettings, ServicesSettings

from .catalog_helpers import UID
from .datafiles import data_file



class Clock:
    """Wall clock of the cache (hishel's storage and cache_info), moved forward by the test."""

    def __init__(self):
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch):
    import hishel._core._storages._async_sqlite as sqlite_store

    c = Clock()
    monkeypatch.setattr(sqlite_store, "time", c)
    monkeypatch.setattr(cache, "time", c)
    return c


async def _crossmatch(server, settings):
    name, frame, epoch, id0, info = server.sky.info("main")
    ra, dec, r = field_of_view(frame.wcs, frame.data.shape)
    out, status = await crossmatch_services(frame.truth["ra"], frame.truth["dec"], 1.5, (ra, dec), r, epoch, settings,
                                            ObservatorySettings(iau_code="J13"), {"astrocolibri_uid": UID})
    return out, {s["service"]: s for s in status}


async def test_epoch_keyed_answers_expire_after_a_day_while_catalogue_answers_stay(sky_server, clock, tmp_path):
    st = sky_server.settings(enabled=["skybot", "astrocolibri", "simbad", "vsx"])
    out1, status = await _crossmatch(sky_server, st)
    assert all(s["network_requests"] == 1 for s in status.values())
    clock.offset = 3 * 3600.0  # three hours later: everything from the cache
    out2, status = await _crossmatch(sky_server, st)
    assert all(s["network_requests"] == 0 for s in status.values())
    clock.offset = 2 * 86400.0  # two days later: SkyBoT and Astro-Colibri are asked again, the catalogues are not
    out3, status = await _crossmatch(sky_server, st)
    assert {k: s["network_requests"] for k, s in status.items()} == {"skybot": 1, "astrocolibri": 1, "simbad": 0, "vsx": 0}
    assert list(out3["matches"]) == list(out1["matches"])
    info = {r.service: r for r in cache_info(st, tmp_path / "cache" / "catalogs")}
    assert info["skybot"].ttl_days == 1.0 and info["simbad"].ttl_days == 180.0
    assert info["simbad"].answers == 1 and info["skybot"].answers == 1 and info["skybot"].size_bytes > 0
    assert info["skybot"].next_expiry == pytest.approx(clock.time() + 86400.0, abs=120.0)


async def test_cached_answer_that_no_longer_reads_is_dropped_and_fetched_again(sky_server, tmp_path):
    name, frame, epoch, id0, info = sky_server.sky.info("main")
    ra, dec, r = field_of_view(frame.wcs, frame.data.shape)
    st = sky_server.settings()
    await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    root = tmp_path / "cache" / "catalogs"
    con = sqlite3.connect(root / "gaia.db")
    key = con.execute("SELECT cache_key FROM entries").fetchone()[0].decode()
    con.close()
    # an answer stored by an older version: a readable VOTable, but not the columns this version needs
    clear_cache("gaia", root)
    store = AnswerCache(root, st)
    await store.put("gaia", key, data_file("fixtures/simbad/simbad-cone-mivot.xml").read_bytes(), "old answer")
    await store.aclose()
    n = sky_server.count("gaia")
    ref = await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    assert sky_server.count("gaia") == n + 1 and len(ref) > 100
    assert {r.service: r.answers for r in cache_info(st, root)}["gaia"] == 1  # the good answer replaced the bad
    await fetch_gaia_reference(ra, dec, r, epoch, "G", st)
    assert sky_server.count("gaia") == n + 1


async def test_cache_stays_within_its_size_bound_dropping_the_least_recently_used(tmp_path, clock):
    st = ServicesSettings(cache_max_mb=1.0)
    store = AnswerCache(tmp_path, st)
    blob = bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8))
    for k in range(20):
        clock.offset = 100.0 * k
        await store.put("simbad", f"k{k}", blob, f"answer {k}")
    clock.offset = 2500.0
    assert [b for _, b in await store.get("simbad", "k0")] == [blob]  # read again: now recently used
    for k in range(20, 26):
        clock.offset = 2600.0 + 100.0 * k
        await store.put("simbad", f"k{k}", blob, f"answer {k}")
    assert await store.get("simbad", "k0") and await store.get("simbad", "k25")
    assert await store.get("simbad", "k1") == []  # the least recently used went first
    await store.aclose()
    size = sum(p.stat().st_size for p in tmp_path.glob("simbad.db*"))
    assert cache_info(st, tmp_path)[1].answers < 26 and size < 2.0 * 1024 * 1024


async def test_an_offline_run_knows_from_the_folder_whether_a_service_has_answers(tmp_path, clock):
    """A lookup in a service never asked creates no store, and a store whose answers all expired
    holds none: an offline run then skips the HTTP client (and its imports) altogether."""
    store = AnswerCache(tmp_path, ServicesSettings(cache_days=1.0))
    assert await store.get("gaia", "k") == []
    assert not cache.has_answers("gaia", tmp_path) and not list(tmp_path.glob("gaia.db*"))
    await store.put("gaia", "k", b"answer", "a cone")
    assert [b for _, b in await store.get("gaia", "k")] == [b"answer"]
    assert cache.has_answers("gaia", tmp_path)
    clock.offset = 2 * 86400.0
    assert not cache.has_answers("gaia", tmp_path)
    await store.aclose()


async def test_cache_clear_forgets_one_service_or_all(sky_server, tmp_path):
    st = sky_server.settings(enabled=["skybot", "simbad"])
    await _crossmatch(sky_server, st)
    root = tmp_path / "cache" / "catalogs"
    done = clear_cache("skybot", root)
    assert done.services == ("skybot",) and done.freed_bytes > 0
    info = {r.service: r.answers for r in cache_info(st, root)}
    assert info["skybot"] == 0 and info["simbad"] == 1
    _, status = await _crossmatch(sky_server, st)
    assert status["skybot"]["network_requests"] == 1 and status["simbad"]["network_requests"] == 0
    clear_cache(None, root)
    assert all(r.answers == 0 and r.size_bytes == 0 for r in cache_info(st, root))


def test_cli_knows_every_cached_service():
    from rpp_cli.cache import SERVICES

    assert SERVICES == cache.SERVICES


def test_rpp_cache_info_and_clear_from_the_command_line(tmp_path, monkeypatch, capsys):
    import asyncio

    from rpp_cli.main import main

    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path))
    store = AnswerCache(None, ServicesSettings())
    asyncio.run(store.put("skybot", "k", b"<VOTABLE/>", "a SkyBoT answer"))
    asyncio.run(store.aclose())
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("skybot"))
    assert row.split()[1] == "1" and "1 d" in row and str(tmp_path / "catalogs") in out
    assert main(["cache", "clear", "skybot"]) == 0
    assert "skybot" in capsys.readouterr().out
    main(["cache", "info"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("skybot"))
    assert row.split()[1] == "0"
    with pytest.raises(SystemExit) as err:
        main(["cache", "clear", "nosuch"])
    assert err.value.code == 2
