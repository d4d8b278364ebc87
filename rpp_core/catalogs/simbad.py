"""SIMBAD over TAP (``services.simbad_tap`` + ``/sync``): identifications of the field.

One ADQL cone over ``basic`` joined to ``ids`` (all identifiers, ``|``-separated)
and ``allfluxes`` (B, V; the only case-sensitive SIMBAD table, hence the quotes)::

    SELECT basic."main_id", basic."ra", basic."dec", basic."otype", basic."pmra", basic."pmdec",
           ids."ids", allfluxes."B", allfluxes."V"
    FROM basic LEFT JOIN ids ON basic."oid" = ids."oidref"
               LEFT JOIN allfluxes ON basic."oid" = allfluxes."oidref"
    WHERE CONTAINS(POINT('ICRS', basic."ra", basic."dec"), CIRCLE('ICRS', ra0, dec0, r)) = 1

The query sends ``TOP`` and ``MAXREC`` = ``services.max_rows``; an answer cut
there (``QUERY_STATUS = OVERFLOW`` or ``max_rows`` rows) is used, and the run
log says the field has more SIMBAD objects than were read.

Positions (J2000 epoch) are moved to the observation epoch with SIMBAD's proper
motions before matching. Columns after the cross-match: ``simbad_main_id``, ``simbad_otype``,
``simbad_ids``, ``simbad_B``, ``simbad_V`` (mag, NaN where SIMBAD has none).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..settings import ServicesSettings
from .gaia import propagate
from .http import ServiceClient, column, require_columns

SERVICE = "simbad"
PREFIX = "simbad_"


def cone_adql(ra: float, dec: float, radius_deg: float, max_rows: int) -> str:
    return (f'SELECT TOP {int(max_rows)} basic."main_id", basic."ra", basic."dec", basic."otype", basic."pmra", '
            f'basic."pmdec", ids."ids", allfluxes."B", allfluxes."V" FROM basic '
            f'LEFT JOIN ids ON basic."oid" = ids."oidref" '
            f'LEFT JOIN allfluxes ON basic."oid" = allfluxes."oidref" '
            f"WHERE CONTAINS(POINT('ICRS', basic.\"ra\", basic.\"dec\"), "
            f"CIRCLE('ICRS', {ra:.7f}, {dec:.7f}, {radius_deg:.7f})) = 1")


#: the ``basic`` columns an answer must have (ids, B and V come from LEFT JOINs and may be empty)
REQUIRED = ("main_id", "ra", "dec", "otype", "pmra", "pmdec")


def parse(tab: Table, what: str = "SIMBAD cone") -> Table:
    """SIMBAD TAP answer -> ``ra``, ``dec`` (deg) and ``simbad_*`` columns; rows without position dropped.

    Raises :class:`~rpp_core.catalogs.http.MalformedAnswer` when a queried column is missing.
    """
    require_columns(tab, REQUIRED, SERVICE, what)
    out = Table()
    out["ra"] = column(tab, "ra")
    out["dec"] = column(tab, "dec")
    out[PREFIX + "main_id"] = column(tab, "main_id", "", str)
    out[PREFIX + "otype"] = column(tab, "otype", "", str)
    out[PREFIX + "ids"] = column(tab, "ids", "", str)
    out[PREFIX + "B"] = column(tab, "B")
    out[PREFIX + "V"] = column(tab, "V")
    out["pmra"] = column(tab, "pmra")
    out["pmdec"] = column(tab, "pmdec")
    ok = np.isfinite(out["ra"]) & np.isfinite(out["dec"])
    return out[ok]


async def query(ra: float, dec: float, radius_deg: float, epoch, settings: ServicesSettings, *,
                client: ServiceClient, cancel=None, log=None) -> Table:
    what = f"SIMBAD cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg"
    out = await client.tap_sync(SERVICE, settings.simbad_tap, cone_adql(ra, dec, radius_deg, settings.max_rows),
                                cancel=cancel, describe=what, maxrec=settings.max_rows,
                                parse_table=lambda t: parse(t, what))
    if out.meta.get("overflow") and log is not None:
        log(f"simbad: the answer was cut at {len(out)} objects (services.max_rows = {settings.max_rows}): "
            f"the field has more SIMBAD objects than were read; raise services.max_rows", "WARNING")
    out["ra"], out["dec"] = propagate(out["ra"], out["dec"], out["pmra"], out["pmdec"], 2000.0, epoch)
    out.remove_columns(["pmra", "pmdec"])
    return out
