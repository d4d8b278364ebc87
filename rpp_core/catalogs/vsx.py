"""AAVSO VSX JSON API (``services.vsx``), used when ``services.vsx_source = "api"``.

Request (GET)::

    <services.vsx>?view=api.list&ra=<deg>&dec=<deg>&radius=<deg>&format=json

Answer: ``{"VSXObjects": {"VSXObject": [ {...}, ... ]}}``, or
``{"VSXObjects": []}`` when nothing is there. Magnitudes come as text with the
passband (``"13.4 B"``, ``"<13.14 V"``); a minimum in brackets is an amplitude
(``"(0.160) V"``) and is added to the maximum. Periods may end in ``:``
(uncertain). Output columns are those of the VizieR B/vsx path
(:func:`rpp_core.catalogs.vizier.parse_vsx`).
"""

from __future__ import annotations

import json
import re

import numpy as np
from astropy.table import Table

from ..errors import ServiceError
from ..settings import ServicesSettings
from .http import MalformedAnswer, ServiceClient

SERVICE = "vsx"
_NUM = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def cone_params(ra: float, dec: float, radius_deg: float) -> dict:
    return {"view": "api.list", "ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "radius": f"{radius_deg:.6f}",
            "format": "json"}


def _num(text) -> float:
    m = _NUM.search(str(text or ""))
    return float(m.group()) if m else np.nan


def parse_mag(text) -> tuple[float, str, bool]:
    """``"<13.14 V"`` -> (13.14, "V", False); ``"(0.20) V"`` -> (0.20, "V", True = amplitude)."""
    text = str(text or "").strip()
    if not text or text == "?":
        return np.nan, "", False
    value = _num(text)
    band = text.split()[-1] if len(text.split()) > 1 else ""
    return value, band, text.startswith("(")


def parse(content: bytes) -> Table:
    """VSX API JSON -> ``ra``, ``dec`` and ``vsx_*`` columns."""
    try:
        doc = json.loads(content.decode("utf-8", "replace"))
    except ValueError as exc:
        raise MalformedAnswer(f"vsx: answer is not JSON ({exc}); first bytes {content[:60]!r}") from None
    objs = doc.get("VSXObjects", []) if isinstance(doc, dict) else None
    if objs is None:
        raise ServiceError("vsx: answer has no 'VSXObjects' entry")
    if isinstance(objs, dict):
        objs = objs.get("VSXObject", [])
    if isinstance(objs, dict):
        objs = [objs]
    rows = {"ra": [], "dec": [], "vsx_name": [], "vsx_type": [], "vsx_period": [], "vsx_max": [],
            "vsx_min": [], "vsx_band": []}
    for o in objs:
        ra, dec = _num(o.get("RA2000")), _num(o.get("Declination2000"))
        if not (np.isfinite(ra) and np.isfinite(dec)):
            continue
        mx, band, _ = parse_mag(o.get("MaxMag"))
        mn, _, amplitude = parse_mag(o.get("MinMag"))
        if amplitude and np.isfinite(mx):
            mn = mx + mn
        rows["ra"].append(ra)
        rows["dec"].append(dec)
        rows["vsx_name"].append(str(o.get("Name", "")))
        rows["vsx_type"].append(str(o.get("VariabilityType", "")))
        rows["vsx_period"].append(_num(o.get("Period")))
        rows["vsx_max"].append(mx)
        rows["vsx_min"].append(mn)
        rows["vsx_band"].append(band)
    out = Table()
    for k, v in rows.items():
        out[k] = np.array(v, dtype=float if k in ("ra", "dec", "vsx_period", "vsx_max", "vsx_min") else str)
    return out


async def query(ra: float, dec: float, radius_deg: float, settings: ServicesSettings, *, client: ServiceClient,
                cancel=None) -> Table:
    return await client.request(SERVICE, "GET", settings.vsx, params=cone_params(ra, dec, radius_deg), cancel=cancel,
                                describe=f"VSX API cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg", parse=parse)
