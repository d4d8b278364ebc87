"""Cross-match the detected sources with every enabled catalogue service, concurrently.

:func:`crossmatch_services` queries each enabled service once for the whole
field (cone: ``field_center``, ``field_radius_deg``), all at the same time over
one :class:`~rpp_core.catalogs.http.ServiceClient`, then matches each answer
to the detections one-to-one (:func:`match_one_to_one`). A service that fails
(network, HTTP error, malformed answer, offline without cache) never fails the
run: it gets ``warn(service, reason)``, empty columns and a status entry.

Match radius (:func:`match_radius`)::

    r = max(r_min, sqrt((FWHM / 2)**2 + (3 * sigma_astrometry)**2))      [arcsec]

so a source matches a catalogue object within half the seeing disc plus
three times the astrometric scatter of the WCS. SkyBoT objects add their
ephemeris uncertainty in quadrature; Astro-Colibri events with an error
radius above 10" are only listed at field level (status ``events``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

from ..errors import Cancelled, ServiceError
from ..settings import ObservatorySettings, ServicesSettings, load_secrets_or_warning
from . import astrocolibri, gaia, simbad, skybot, vizier, vsx
from .http import ServiceClient, ServiceSkipped, redact, run_cancellable, snap_cone
from .sky import field_of_view  # noqa: F401 - re-exported: the cone of a frame, used with the services

#: service name in ``services.enabled`` -> column prefix
PREFIXES = {"gaia": "gaia_", "simbad": "simbad_", "skybot": "skybot_", "vsx": "vsx_", "milliquas": "milliquas_",
            "10pc": "pc10_", "astrocolibri": "colibri_"}

#: the columns each service adds (besides ``<prefix>sep_arcsec``) and their empty value type
COLUMNS: dict[str, dict[str, type]] = {
    "gaia": {"gaia_source_id": np.int64, "gaia_phot_g_mean_mag": float, "gaia_phot_bp_mean_mag": float,
             "gaia_phot_rp_mean_mag": float, "gaia_bp_rp": float, "gaia_parallax": float, "gaia_pmra": float,
             "gaia_pmdec": float, "gaia_ruwe": float, "gaia_phot_variable_flag": str},
    "simbad": {"simbad_main_id": str, "simbad_otype": str, "simbad_ids": str, "simbad_B": float, "simbad_V": float},
    "skybot": {"skybot_name": str, "skybot_number": np.int64, "skybot_class": str, "skybot_mv": float,
               "skybot_errpos": float, "skybot_dracosdec": float, "skybot_ddec": float, "skybot_dgeo": float},
    "vsx": dict(vizier.EMPTY_COLUMNS["vsx"]),
    "milliquas": dict(vizier.EMPTY_COLUMNS["milliquas"]),
    "10pc": dict(vizier.EMPTY_COLUMNS["10pc"]),
    "astrocolibri": {"colibri_name": str, "colibri_type": str, "colibri_time": str, "colibri_trigger_id": str,
                     "colibri_err_arcsec": float, "colibri_kind": str},
}
#: column giving the identifier shown in ``matches``
ID_COLUMN = {"gaia": "gaia_source_id", "simbad": "simbad_main_id", "skybot": "skybot_name", "vsx": "vsx_name",
             "milliquas": "milliquas_name", "10pc": "pc10_name", "astrocolibri": "colibri_name"}
LABEL = {"gaia": "Gaia DR3", "simbad": "SIMBAD", "skybot": "SkyBoT", "vsx": "VSX", "milliquas": "Milliquas",
         "10pc": "10pc", "astrocolibri": "Astro-Colibri"}
COLIBRI_MAX_ERR_ARCSEC = 10.0


def _empty_value(typ):
    if typ is str:
        return ""
    if typ is np.int64:
        return -1
    return np.nan


# ---------------------------------------------------------------- pure helpers

def match_radius(fwhm_arcsec: float, astrometric_rms_arcsec: float = 0.0, r_min_arcsec: float = 1.0) -> float:
    """Cross-match radius (arcsec): ``max(r_min, hypot(FWHM / 2, 3 * sigma_astrometry))``."""
    fw = float(fwhm_arcsec) if np.isfinite(fwhm_arcsec) else 0.0
    sa = float(astrometric_rms_arcsec) if np.isfinite(astrometric_rms_arcsec) else 0.0
    return max(float(r_min_arcsec), float(np.hypot(0.5 * fw, 3.0 * sa)))


def match_one_to_one(ra, dec, cat_ra, cat_dec, radius_arcsec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one sky match: each source and each catalogue row is used at most once.

    Pairs closer than the radius (scalar, or one value per catalogue row) are
    taken in order of increasing separation. Returns (source index, catalogue
    index, separation arcsec), sorted by source index.
    """
    ra = np.asarray(ra, float)
    cat_ra = np.asarray(cat_ra, float)
    empty = (np.array([], int), np.array([], int), np.array([], float))
    if len(ra) == 0 or len(cat_ra) == 0:
        return empty
    r = np.broadcast_to(np.asarray(radius_arcsec, float), cat_ra.shape)
    src = SkyCoord(ra * u.deg, np.asarray(dec, float) * u.deg)
    cat = SkyCoord(cat_ra * u.deg, np.asarray(cat_dec, float) * u.deg)
    if not np.any(r > 0):
        return empty
    # a.search_around_sky(b) returns (index into b, index into a, ...)
    i_cat, i_src, sep, _ = src.search_around_sky(cat, float(np.nanmax(r)) * u.arcsec)
    sep = sep.arcsec
    ok = sep <= r[i_cat]
    i_src, i_cat, sep = i_src[ok], i_cat[ok], sep[ok]
    order = np.argsort(sep, kind="stable")
    used_s, used_c = set(), set()
    keep = []
    for k in order:
        a, b = int(i_src[k]), int(i_cat[k])
        if a in used_s or b in used_c:
            continue
        used_s.add(a)
        used_c.add(b)
        keep.append(k)
    keep = np.array(sorted(keep, key=lambda k: i_src[k]), int)
    if len(keep) == 0:
        return empty
    return i_src[keep].astype(int), i_cat[keep].astype(int), sep[keep]


def empty_columns(n: int, service: str) -> Table:
    out = Table()
    for name, typ in COLUMNS[service].items():
        out[name] = np.full(n, _empty_value(typ), dtype=object if typ is str else typ).astype(
            str if typ is str else typ)
    out[PREFIXES[service] + "sep_arcsec"] = np.full(n, np.nan)
    return out


def fill_columns(n: int, service: str, catalog: Table, i_src, i_cat, sep) -> Table:
    out = empty_columns(n, service)
    for name, typ in COLUMNS[service].items():
        if name not in catalog.colnames or len(i_src) == 0:
            continue
        vals = np.asarray(catalog[name])[i_cat]
        if typ is str:
            col = np.array(out[name], dtype=object)
            col[i_src] = [str(v) for v in vals]
            out[name] = col.astype(str)
        else:
            out[name][i_src] = vals
    out[PREFIXES[service] + "sep_arcsec"][i_src] = sep
    return out


# ---------------------------------------------------------------- a run's client

def service_secrets(warn: Callable[[str], None] | None = None) -> dict:
    """API keys for the services; a secrets file that cannot be read gives a warning, not a failure.

    The environment variables (``ASTROCOLIBRI_UID``) still count then. Only the
    services needing a key (Astro-Colibri) are skipped; calibration and the
    other services run as usual.
    """
    secrets, warning = load_secrets_or_warning()
    if warning and warn:
        warn(warning)
    return secrets


def open_client(settings: ServicesSettings, *, log: Callable[[str, str], None] | None = None,
                warn: Callable[[str], None] | None = None, secrets: dict | None = None,
                cache_dir=None) -> ServiceClient:
    """The one :class:`ServiceClient` of a run: calibration and cross-match share it, so a service that
    failed is asked once per run and the calibration cone is reused. Local faults (a secrets file or a
    cache folder that cannot be read or written) become warnings. Close it with ``await client.aclose()``."""
    secrets = service_secrets(warn) if secrets is None else secrets
    return ServiceClient(settings, secrets=secrets, cache_dir=cache_dir, log=log, warn=warn)


# ---------------------------------------------------------------- the service calls

async def _query_service(name: str, client: ServiceClient, center, radius_deg: float, epoch: Time | None,
                         settings: ServicesSettings, observatory: ObservatorySettings, secrets: dict, site,
                         cancel, log, status: dict) -> Table:
    ra0, dec0 = center
    if name == "gaia":
        return await gaia.fetch_gaia_field(ra0, dec0, radius_deg, epoch, settings, client=client, cancel=cancel, log=log)
    if name == "simbad":
        return await simbad.query(ra0, dec0, radius_deg, epoch, settings, client=client, cancel=cancel, log=log)
    if name in ("milliquas", "10pc") or (name == "vsx" and settings.vsx_source == "vizier"):
        return await vizier.query(name, ra0, dec0, radius_deg, settings, client=client, cancel=cancel, epoch=epoch,
                                  log=log)
    if name == "vsx":
        return await vsx.query(ra0, dec0, radius_deg, settings, client=client, cancel=cancel)
    if epoch is None and name in ("skybot", "astrocolibri"):
        raise ServiceSkipped(f"{name}: the observation time is unknown (no DATE-OBS), so it cannot be queried")
    if name == "skybot":
        loc, where = skybot.observer_location(observatory, site)
        status["location"] = where
        if loc == "500":
            log(f"skybot: observer at the {where}: near-Earth objects may be misplaced by tens of arcsec",
                "WARNING")
        return await skybot.query(ra0, dec0, radius_deg, epoch, loc, settings, client=client, cancel=cancel)
    if name == "astrocolibri":
        tab, events, sources = await astrocolibri.query(ra0, dec0, radius_deg, epoch,
                                                        (secrets or {}).get("astrocolibri_uid", ""), settings,
                                                        client=client, cancel=cancel)
        status["events"] = events
        status["sources"] = sources
        return tab
    raise ServiceError(f"unknown service {name!r} in services.enabled; known: {', '.join(PREFIXES)}")


def _per_row_radius(name: str, catalog: Table, radius_arcsec: float):
    if name == "skybot" and "skybot_errpos" in catalog.colnames:
        err = np.nan_to_num(np.asarray(catalog["skybot_errpos"], float), nan=0.0)
        return np.hypot(radius_arcsec, np.minimum(err, 60.0))
    if name == "astrocolibri" and "colibri_err_arcsec" in catalog.colnames:
        err = np.asarray(catalog["colibri_err_arcsec"], float)
        r = np.where(np.isfinite(err), np.hypot(radius_arcsec, err), radius_arcsec)
        return np.where(np.nan_to_num(err, nan=0.0) > COLIBRI_MAX_ERR_ARCSEC, -1.0, r)
    return radius_arcsec


async def crossmatch_services(ra, dec, radius_arcsec: float, field_center: tuple[float, float],
                              field_radius_deg: float, epoch: Time | None, settings: ServicesSettings,
                              observatory: ObservatorySettings, secrets: dict | None, *, cancel=None,
                              log: Callable[[str, str], None] | None = None,
                              warn: Callable[[str, str], None] | None = None, client: ServiceClient | None = None,
                              site=None) -> tuple[Table, list[dict]]:
    """Query every service of ``settings.enabled`` concurrently and match it to the sources.

    Parameters
    ----------
    ra, dec : array-like
        Source positions (ICRS, deg), one per catalogue row.
    radius_arcsec : float
        Match radius (see :func:`match_radius`).
    field_center : (ra, dec)
        Field centre in degrees; ``field_radius_deg`` the cone radius covering the frame
        (:func:`field_of_view`). Use the same values as for :func:`fetch_gaia_reference`
        so the Gaia answer comes from the cache.
    epoch : astropy.time.Time or None
        Observation time (mid-exposure): proper motions, SkyBoT ephemerides,
        Astro-Colibri time window. None skips SkyBoT and Astro-Colibri with a warning.
    settings, observatory : profile sections; ``secrets`` from :func:`service_secrets` (None: the client's).
    cancel : asyncio.Event or callable, optional
    log : callable(message, level="INFO"), optional
    warn : callable(service, reason), optional
        Called once per service that failed or was skipped; ``reason`` does not repeat the service name.
    client : ServiceClient, optional
        Shared client; a private one is made and closed otherwise.
    site : astropy.coordinates.EarthLocation, optional
        Site from the FITS header, used by SkyBoT when the profile has no IAU code.

    Returns
    -------
    (Table, list of dict)
        The table has one row per source: each service's prefixed columns
        (``gaia_``, ``simbad_``, ``skybot_``, ``vsx_``, ``milliquas_``, ``pc10_``,
        ``colibri_``) plus ``<prefix>sep_arcsec``, empty ('' / NaN / -1) where
        nothing matched, and ``matches`` ("SIMBAD:HD 1; VSX:V* X" style summary).
        Each status dict has ``service``, ``status`` (``ok``, ``failed``,
        ``skipped``), ``reason``, ``n_field``, ``n_matched``, ``seconds``,
        ``network_requests``, and ``events`` and ``sources`` (Astro-Colibri) / ``location`` (SkyBoT).

    Raises
    ------
    Cancelled
        When ``cancel`` fires; a service failure never raises.
    """
    log = log or (lambda message, level="INFO": None)
    warn = warn or (lambda service, reason: None)
    ra = np.atleast_1d(np.asarray(ra, float))
    dec = np.atleast_1d(np.asarray(dec, float))
    n = len(ra)
    own = client is None
    if own:
        client = ServiceClient(settings, secrets=secrets, log=log)
    secrets = client.secrets if secrets is None else secrets
    names = list(dict.fromkeys(settings.enabled))
    # one grid-snapped cone per field: frames of the same field hit the same cache entries
    cone = snap_cone(field_center[0], field_center[1], field_radius_deg)
    statuses = {name: {"service": name, "status": "ok", "reason": "", "n_field": 0, "n_matched": 0, "seconds": 0.0,
                       "network_requests": 0} for name in names}

    async def one(name):
        st = statuses[name]
        t0 = time.monotonic()
        before = client.stats.network.get(name, 0)
        try:
            if name not in PREFIXES:
                raise ServiceError(f"unknown service {name!r} in services.enabled; known: {', '.join(PREFIXES)}")
            # gaia snaps its own cone (shared with the calibration query)
            center, radius = (field_center, field_radius_deg) if name == "gaia" else (cone[:2], cone[2])
            cat = await _query_service(name, client, center, radius, epoch, settings, observatory,
                                       secrets or {}, site, cancel, log, st)
            return cat
        except ServiceSkipped as exc:
            st.update(status="skipped", reason=redact(str(exc).removeprefix(f"{name}: "), secrets))
        except ServiceError as exc:
            st.update(status="failed", reason=redact(str(exc).removeprefix(f"{name}: "), secrets))
        except (Cancelled, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - an enrichment service must never fail the run
            st.update(status="failed", reason=redact(f"unexpected {type(exc).__name__}: {exc}", secrets))
        finally:
            st["seconds"] = round(time.monotonic() - t0, 3)
            st["network_requests"] = client.stats.network.get(name, 0) - before
        return None

    try:
        tasks = [asyncio.ensure_future(one(name)) for name in names]
        try:
            results = await run_cancellable(asyncio.gather(*tasks), cancel)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        if own:
            await client.aclose()

    out = Table()
    summary = [[] for _ in range(n)]
    for name, cat in zip(names, results):
        st = statuses[name]
        if name not in PREFIXES:
            warn(name, st["reason"])
            continue
        if cat is None:
            cols = empty_columns(n, name)
            warn(name, st["reason"])
            log(f"{LABEL[name]}: {st['status']}: {st['reason']}", "DEBUG")  # warn() carries the warning
        else:
            st["n_field"] = len(cat)
            i_src, i_cat, sep = match_one_to_one(ra, dec, cat["ra"], cat["dec"], _per_row_radius(name, cat, radius_arcsec))
            st["n_matched"] = int(len(i_src))
            cols = fill_columns(n, name, cat, i_src, i_cat, sep)
            idcol = ID_COLUMN[name]
            for a in i_src:
                summary[a].append(f"{LABEL[name]}:{cols[idcol][a]}")
            log(f"{LABEL[name]}: {len(cat)} objects in the field, {len(i_src)} matched"
                        + (" (from cache)" if st["network_requests"] == 0 else ""), "INFO")
        for c in cols.colnames:
            out[c] = cols[c]
    out["matches"] = np.array(["; ".join(s) for s in summary], dtype=str) if n else np.array([], dtype=str)
    return out, [statuses[name] for name in names]
