"""SkyBoT cone search (IMCCE, ``services.skybot``): solar-system objects in the field.

Request (GET)::

    <services.skybot>?-ep=<JD UTC>&-ra=<deg>&-dec=<deg>&-rd=<deg>&-loc=<observer>
                     &-mime=votable&-output=basic&-filter=120&-objFilter=111&-refsys=EQJ2000&-from=rpp

``-loc`` is the observatory's IAU/MPC code (``observatory.iau_code``), the form
SkyBoT documents; without one, the geocentre (``500``) with a warning that says
to set it (the parallax of a near-Earth asteroid can exceed the match radius).
Site coordinates are not sent: SkyBoT documents no geodetic ``-loc`` form.

An empty field is an empty answer (no body, or HTTP 204) or a VOTable without
rows: no objects, not a failure.

Columns: ``skybot_name``, ``skybot_number``, ``skybot_class``, ``skybot_mv``
(mag), ``skybot_errpos`` (arcsec), ``skybot_dracosdec``, ``skybot_ddec``
(arcsec/h), ``skybot_dgeo`` (au).
"""

from __future__ import annotations

import numpy as np
from astropy.coordinates import Angle
from astropy.table import Table
from astropy.time import Time

from ..settings import ObservatorySettings, ServicesSettings
from .http import ServiceClient, column, read_votable, require_columns

SERVICE = "skybot"


def observer_location(obs: ObservatorySettings | None, site=None) -> tuple[str, str]:
    """SkyBoT ``-loc`` value and a note of where it came from.

    ``site`` (an ``astropy.coordinates.EarthLocation`` from the FITS header) only
    shapes the note: SkyBoT takes an IAU code, so a site without one is observed
    from the geocentre.
    """
    if obs is not None and obs.iau_code.strip():
        return obs.iau_code.strip().upper(), f"IAU code {obs.iau_code.strip().upper()}"
    known = site is not None or (obs is not None and (obs.latitude != 0.0 or obs.longitude != 0.0))
    why = ("the site coordinates are known but SkyBoT takes an IAU observatory code" if known
           else "no IAU observatory code in the profile")
    return "500", f"geocentre ({why}; set observatory.iau_code)"


def cone_params(ra: float, dec: float, radius_deg: float, epoch: Time, location: str) -> dict:
    return {"-ep": f"{Time(epoch).utc.jd:.6f}", "-ra": f"{ra:.6f}", "-dec": f"{dec:.6f}", "-rd": f"{radius_deg:.6f}",
            "-loc": location, "-mime": "votable", "-output": "basic", "-filter": "120", "-objFilter": "111",
            "-refsys": "EQJ2000", "-from": "rpp"}


def parse(content: bytes) -> Table:
    """SkyBoT VOTable -> ``ra``, ``dec`` (deg, at the epoch) and ``skybot_*`` columns.

    An empty answer, a "No solar system object was found" answer or a VOTable
    without rows give an empty table. Raises
    :class:`~rpp_core.catalogs.http.MalformedAnswer` when the rows lack a name or a position.
    """
    if not content.strip():
        return _empty()
    text = content[:4000].decode("utf-8", "replace").lower()
    if "no solar system object" in text:
        return _empty()
    tab = read_votable(content, SERVICE, "SkyBoT cone search")
    if len(tab) == 0:
        return _empty()
    require_columns(tab, ["Name", *(("_RAJ2000", "_DECJ2000") if "_RAJ2000" in tab.colnames else ("RA", "DEC"))],
                    SERVICE, "SkyBoT cone search")
    if "_RAJ2000" in tab.colnames:
        ra, dec = column(tab, "_RAJ2000"), column(tab, "_DECJ2000")
    else:
        ra = Angle(column(tab, "RA", "", str), unit="hourangle").deg
        dec = Angle(column(tab, "DEC", "", str), unit="deg").deg
    out = Table()
    out["ra"] = np.asarray(ra, float)
    out["dec"] = np.asarray(dec, float)
    out["skybot_name"] = column(tab, "Name", "", str)
    num = column(tab, "Num", "", str)
    out["skybot_number"] = np.array([int(n) if n.isdigit() else -1 for n in num], np.int64)
    out["skybot_class"] = column(tab, "Class", "", str)
    out["skybot_mv"] = column(tab, "Mv")
    out["skybot_errpos"] = column(tab, "ErrPos")
    out["skybot_dracosdec"] = column(tab, "dRAcosDec")
    out["skybot_ddec"] = column(tab, "dDEC")
    out["skybot_dgeo"] = column(tab, "Dgeo")
    return out


def _empty() -> Table:
    out = Table({"ra": np.array([], float), "dec": np.array([], float)})
    for name, typ in (("skybot_name", str), ("skybot_number", np.int64), ("skybot_class", str), ("skybot_mv", float),
                      ("skybot_errpos", float), ("skybot_dracosdec", float), ("skybot_ddec", float),
                      ("skybot_dgeo", float)):
        out[name] = np.array([], dtype=typ)
    return out


async def query(ra: float, dec: float, radius_deg: float, epoch: Time, location: str, settings: ServicesSettings, *,
                client: ServiceClient, cancel=None) -> Table:
    params = cone_params(ra, dec, radius_deg, epoch, location)
    return await client.request(SERVICE, "GET", settings.skybot, params=params, cancel=cancel, parse=parse,
                                describe=f"SkyBoT cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg "
                                         f"JD {params['-ep']} loc {location}")
