# ---- BEGIN catalogue loopback servers (owner: catalogue services, issue 3) ----
import pytest


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
# ---- END catalogue loopback servers ----
