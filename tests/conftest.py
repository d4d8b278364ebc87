"""Shared fixtures. Every test gets its own config, cache and workspace folders."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_rpp_dirs(tmp_path, monkeypatch):
    """RPP_CONFIG_DIR, RPP_CACHE_DIR, RPP_WORKSPACE, RPP_INDEX_DIR under the test's tmp_path (workspace: tmp_path/ws)."""
    monkeypatch.setenv("RPP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RPP_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("RPP_INDEX_DIR", str(tmp_path / "indexes"))


# ---- BEGIN catalogue loopback servers (owner: catalogue services, issue 3) ----


@pytest.fixture(scope="session")
def catalog_servers():
    """Loopback Gaia/SIMBAD TAP, VizieR, SkyBoT, VSX and Astro-Colibri servers on a random free port.

    The sky holds the truth of two synthetic frames (see ``tests.servers.make_test_sky``):
    ``"main"`` (512x512, 1"/px, 150 stars) and ``"wide"`` (4.4 deg wide, 1400 stars).
    Use ``catalog_servers.settings()`` for a ServicesSettings pointing at it and
    ``catalog_servers.reset()`` between tests.
    """
    from tests.servers import CatalogServers, make_test_sky

    server = CatalogServers(make_test_sky())
    yield server
    server.close()


@pytest.fixture
def frame_catalog_server():
    """Factory for a loopback catalogue server whose sky is the truth of YOUR synthetic frame(s).

    ``server = frame_catalog_server(frame)`` (or ``frame_catalog_server(f1, f2, ...)``) starts a
    server on its own port; ``server.settings(**changes)`` gives ServicesSettings pointing at it.
    Epoch = DATE-OBS + EXPTIME/2 of each frame. Servers stop at the end of the test.
    """
    from tests.servers import CatalogServers, SyntheticSky, frame_epoch

    started = []

    def make(*frames, with_objects=True, **server_kw):
        sky = SyntheticSky()
        for k, frame in enumerate(frames):
            sky.add_frame(f"frame{k}", frame, frame_epoch(frame), seed=k, with_objects=with_objects)
        server = CatalogServers(sky, **server_kw)
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()
@pytest.fixture
def sky_server(catalog_servers, tmp_path, monkeypatch):
    """The session servers, reset, with a fresh answer cache for this test."""
    catalog_servers.reset()
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "cache"))
    yield catalog_servers
    catalog_servers.reset()


@pytest.fixture
def fault_proxy(catalog_servers, tmp_path, monkeypatch):
    """A fault-injecting proxy (tests/faultproxy.py) in front of the session catalogue servers.

    ``fault_proxy.settings(**changes)`` points the services at the proxy; ``fault_proxy.inject(service,
    kind, ...)`` queues a fault. The servers are reset and the answer cache is fresh for the test.
    """
    from tests.faultproxy import FaultProxy

    catalog_servers.reset()
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "cache"))
    proxy = FaultProxy(catalog_servers)
    yield proxy
    proxy.close()
    catalog_servers.reset()
# ---- END catalogue loopback servers ----
