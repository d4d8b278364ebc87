"""Catalogue services: Gaia DR3 (with synthetic photometry), SIMBAD, SkyBoT, VSX, Milliquas, 10 pc, Astro-Colibri.

Public entry points (see docs/catalogs.md)::

    from rpp_core.catalogs import fetch_gaia_reference, crossmatch_services, field_of_view, match_radius, ServiceClient
    from rpp_core.catalogs import open_client, cache_info, clear_cache

``catalogs.local`` (local reference files) is separate and imported on its own.
"""

from .cache import AnswerCache, cache_info, clear_cache
from .crossmatch import crossmatch_services, field_of_view, match_one_to_one, match_radius, open_client
from .gaia import BANDS, fetch_gaia_reference
from .http import OfflineMiss, ServiceClient

__all__ = [
    "AnswerCache", "BANDS", "OfflineMiss", "ServiceClient", "cache_info", "clear_cache", "crossmatch_services",
    "fetch_gaia_reference", "field_of_view", "match_one_to_one", "match_radius", "open_client",
]
