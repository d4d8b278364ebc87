"""Astro-Colibri cone search (``services.astrocolibri`` + ``/cone_search``): transient events.

Request (POST, JSON)::

    {"uid": <user id>, "filter": {"type": "TrueSpecification", "isActivated": true, "defaultState": false},
     "time_range": {"min": <epoch - transient_days, ISO UTC>, "max": <epoch + transient_days>},
     "properties": {"position": {"ra": <deg>, "dec": <deg>}, "radius": <deg>},
     "return_format": "json", "optional_parameters": [], "include_watchlist": false}

The user id comes from the secrets file (``load_secrets()['astrocolibri_uid']``)
or ``ASTROCOLIBRI_UID``; it travels only in the request body, never in a URL,
a log line, an error message, the cache key or a cached answer.

Answer: ``{"voevents": [...], "sources": [...], ...}``. ``voevents`` are the
transients inside the time window; ``sources`` are catalogue sources (TeVCat,
4FGL, X-ray binaries ...) that the API returns whatever the window, so they
are kept apart: ``colibri_kind`` says ``transient`` or ``source``, and the
service status lists them under ``events`` and ``sources``. An event position
``ra``/``dec`` (deg) with an optional error radius ``err`` (deg) is matched to
the detections.

The API answers some errors with HTTP 200 (as its SDK documents): a list
``[{"message": ..., "status_code": 401}, 401]`` or a dict ``{"message": ...,
"status_code": "500"}``. Both are reported with their message and never
cached. Every search counts against a daily quota, so a 429 is not retried.

Columns: ``colibri_name``, ``colibri_type``, ``colibri_time`` (ISO UTC),
``colibri_trigger_id``, ``colibri_err_arcsec``, ``colibri_kind``.
"""

from __future__ import annotations

import json

import numpy as np
from astropy.table import Table
from astropy.time import Time, TimeDelta

from ..errors import ServiceError
from ..settings import ServicesSettings
from .http import MalformedAnswer, ServiceClient, ServiceSkipped

SERVICE = "astrocolibri"


def request_body(uid: str, ra: float, dec: float, radius_deg: float, epoch: Time, days: float) -> dict:
    t = Time(epoch).utc
    lo = (t - TimeDelta(days, format="jd")).isot[:19] + "+00:00"
    hi = (t + TimeDelta(days, format="jd")).isot[:19] + "+00:00"
    return {"uid": uid, "filter": {"type": "TrueSpecification", "isActivated": True, "defaultState": False},
            "time_range": {"min": lo, "max": hi},
            "properties": {"position": {"ra": round(float(ra), 6), "dec": round(float(dec), 6)},
                           "radius": round(float(radius_deg), 6)},
            "return_format": "json", "optional_parameters": [], "include_watchlist": False}


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def error_envelope(doc) -> tuple[int, str] | None:
    """``(status, message)`` when an answer is one of the API's error envelopes, else None."""
    if isinstance(doc, list) and len(doc) == 2 and isinstance(doc[0], dict):
        status, body = doc[1], doc[0]
    elif isinstance(doc, dict) and "status_code" in doc and set(doc) <= {"message", "status_code", "error"}:
        status, body = doc["status_code"], doc
    else:
        return None
    try:
        code = int(str(status).strip())
    except ValueError:
        return None
    if code < 400:
        return None
    message = next((str(body[k]).strip() for k in ("message", "error") if str(body.get(k) or "").strip()), "")
    return code, message


def parse(content: bytes) -> tuple[Table, list[dict], list[dict]]:
    """Astro-Colibri JSON -> (transients and sources with positions as a table, transients, sources)."""
    try:
        doc = json.loads(content.decode("utf-8", "replace"))
    except ValueError as exc:
        raise MalformedAnswer(f"astrocolibri: answer is not JSON ({exc}); first bytes {content[:60]!r}") from None
    envelope = error_envelope(doc)
    if envelope is not None:
        code, message = envelope
        hint = {401: "; check the user id (rpp secret set astrocolibri_uid)",
                403: "; the API does not accept this user id (rpp secret set astrocolibri_uid)",
                429: "; the daily search quota is spent"}.get(code, "")
        raise ServiceError(f"astrocolibri: the API answered error {code}: {message or 'no message'}{hint}")
    if not isinstance(doc, dict) or not ({"voevents", "sources"} & set(doc)):
        raise MalformedAnswer(f"astrocolibri: answer is not a cone-search result (starts with {content[:60]!r})")
    groups = {}
    for kind, group in (("transient", "voevents"), ("source", "sources")):
        groups[kind] = []
        for ev in doc.get(group) or []:
            if not isinstance(ev, dict):
                continue
            groups[kind].append({
                "kind": kind,
                "name": str(ev.get("source_name") or ev.get("name") or ev.get("trigger_id") or ""),
                "type": str(ev.get("type") or ev.get("classification") or ""),
                "time": str(ev.get("time") or ev.get("discovery_time") or ""),
                "trigger_id": str(ev.get("trigger_id") or ""),
                "ra": _f(ev.get("ra")), "dec": _f(ev.get("dec")),
                "err_arcsec": _f(ev.get("err")) * 3600.0,
            })
    rows = [e for e in groups["transient"] + groups["source"] if np.isfinite(e["ra"]) and np.isfinite(e["dec"])]
    tab = Table()
    tab["ra"] = np.array([e["ra"] for e in rows], float)
    tab["dec"] = np.array([e["dec"] for e in rows], float)
    for key in ("name", "type", "time", "trigger_id"):
        tab[f"colibri_{key}"] = np.array([e[key] for e in rows], dtype=str)
    tab["colibri_err_arcsec"] = np.array([e["err_arcsec"] for e in rows], float)
    tab["colibri_kind"] = np.array([e["kind"] for e in rows], dtype=str)
    return tab, groups["transient"], groups["source"]


async def query(ra: float, dec: float, radius_deg: float, epoch: Time, uid: str, settings: ServicesSettings, *,
                client: ServiceClient, cancel=None) -> tuple[Table, list[dict], list[dict]]:
    """Transients and catalogue sources of the cone: (table, transients, sources); see :func:`parse`."""
    if not uid:
        raise ServiceSkipped("astrocolibri: no user id; store it with `rpp secret set astrocolibri_uid` "
                           "(secrets file) or set ASTROCOLIBRI_UID")
    body = request_body(uid, ra, dec, radius_deg, epoch, settings.transient_days)
    key = {k: v for k, v in body.items() if k != "uid"}  # the cache key must not depend on the secret
    url = settings.astrocolibri.rstrip("/") + "/cone_search"
    return await client.request(SERVICE, "POST", url, json_body=body, key_extra=key, cancel=cancel, parse=parse,
                                retry_on_429=False,
                                describe=f"Astro-Colibri cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg "
                                         f"+-{settings.transient_days:g} d")
