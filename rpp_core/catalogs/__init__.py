"""Catalogue services: Gaia DR3 (with synthetic photometry), SIMBAD, SkyBoT, VSX, Milliquas, 10 pc, Astro-Colibri.

Public entry points (see docs/catalogs.md)::

    from rpp_core.catalogs import fetch_gaia_reference, crossmatch_services, field_of_view, match_radius, ServiceClient

``catalogs.local`` (local reference files) is separate and imported on its own.
"""

from .crossmatch import crossmatch_services, field_of_view, match_one_to_one, match_radius
from .gaia import BANDS, fetch_gaia_reference
from .http import AnswerCache, OfflineMiss, ServiceClient

__all__ = [
    "AnswerCache", "BANDS", "OfflineMiss", "ServiceClient", "crossmatch_services", "fetch_gaia_reference",
    "field_of_view", "match_one_to_one", "match_radius",
]
