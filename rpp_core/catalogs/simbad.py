"""SIMBAD over TAP (``services.simbad_tap`` + ``/sync``): identifications of the field.

One ADQL cone over ``basic`` joined to ``ids`` (all identifiers, ``|``-separated)
and ``allfluxes`` (B, V; the only case-sensitive SIMBAD table, hence the quotes)::

    SELECT basic."main_id", basic."ra", basic."dec", basic."otype", basic."pmra", basic."pmdec",
           ids."ids", allfluxes."B", allfluxes."V"
    FROM basic LEFT JOIN ids ON basic."oid" = ids."oidref"
               LEFT JOIN allfluxes ON basic."oid" = allfluxes."oidref"
    WHERE CONTAINS(POINT('ICRS', basic."ra", basic."dec"), CIRCLE('ICRS', ra0, dec0, r)) = 1

Positions (J2000 epoch) are moved to the observation epoch with SIMBAD's proper
motions before matching. Columns after the cross-match: ``simbad_main_id``, ``simbad_otype``,
``simbad_ids``, ``simbad_B``, ``simbad_V`` (mag, NaN where SIMBAD has none).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..settings import ServicesSettings
from .gaia import propagate
from .http import ServiceClient, column

SERVICE = "simbad"
PREFIX = "simbad_"


def cone_adql(ra: float, dec: float, radius_deg: float, max_rows: int) -> str:
    return (f'SELECT TOP {int(max_rows)} basic."main_id", basic."ra", basic."dec", basic."otype", basic."pmra", '
            f'basic."pmdec", ids."ids", allfluxes."B", allfluxes."V" FROM basic '
            f'LEFT JOIN ids ON basic."oid" = ids."oidref" '
            f'LEFT JOIN allfluxes ON basic."oid" = allfluxes."oidref" '
            f"WHERE CONTAINS(POINT('ICRS', basic.\"ra\", basic.\"dec\"), "
            f"CIRCLE('ICRS', {ra:.7f}, {dec:.7f}, {radius_deg:.7f})) = 1")


def parse(tab: Table) -> Table:
    """SIMBAD TAP answer -> ``ra``, ``dec`` (deg) and ``simbad_*`` columns; rows without position dropped."""
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
                client: ServiceClient, cancel=None) -> Table:
    tab = await client.tap_sync(SERVICE, settings.simbad_tap, cone_adql(ra, dec, radius_deg, settings.max_rows),
                                cancel=cancel, describe=f"SIMBAD cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg")
    out = parse(tab)
    out["ra"], out["dec"] = propagate(out["ra"], out["dec"], out["pmra"], out["pmdec"], 2000.0, epoch)
    out.remove_columns(["pmra", "pmdec"])
    return out
