"""Catalogue services: Gaia DR3 (with synthetic photometry), SIMBAD, SkyBoT, VSX, Milliquas, 10 pc, Astro-Colibri.

Public entry points (see docs/catalogs.md)::

    from rpp_core.catalogs import fetch_gaia_reference, crossmatch_services, field_of_view, match_radius, ServiceClient
    from rpp_core.catalogs import open_client, cache_info, clear_cache

``catalogs.local`` (local reference files) is separate and imported on its own.

The names are imported on first use (PEP 562): a run calibrating against a
local file reaches ``catalogs.local`` through this package and must not pay
for httpx, rich and tenacity (0.2-0.6 s) to do it.
"""

import importlib

_WHERE = {
    "AnswerCache": "cache", "cache_info": "cache", "clear_cache": "cache",
    "crossmatch_services": "crossmatch", "match_one_to_one": "crossmatch", "match_radius": "crossmatch",
    "open_client": "crossmatch", "field_of_view": "sky", "BANDS": "gaia", "fetch_gaia_reference": "gaia",
    "OfflineMiss": "http", "ServiceClient": "http",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
