"""Gaia DR3 from the ESA archive TAP service: the calibration and astrometry reference.

Query (ADQL, ``services.gaia_tap`` + ``/sync``)::

    SELECT source_id, ra, dec, ref_epoch, pmra, pmdec, parallax, parallax_error,
           phot_g_mean_mag, phot_g_mean_flux_over_error, phot_bp_mean_mag, ...,
           bp_rp, phot_variable_flag, ruwe
    FROM gaiadr3.gaia_source
    WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r)) AND phot_g_mean_mag < G_lim

The cone covers the whole field (radius from the WCS footprint). Cones wider
than ``services.gaia_tile_deg`` are split into overlapping tiles (hexagonal
grid) so each answer stays within what a TAP sync request returns; rows are
de-duplicated by ``source_id``. Every query sends ``MAXREC = services.max_rows``;
a tile whose answer was cut (``QUERY_STATUS = OVERFLOW`` or ``max_rows`` rows)
is split again into tiles of half its radius, down to 1/8, and the run log
says when an answer still had to be cut. A tile whose answer is beyond the
size limit (``services.gaia_max_answer_mb``) is split once the same way; a
part still too large ends the query with the error that names the limit. Synthetic photometry (JKC ``U B V R I``,
Vega; SDSS ``u g r i z``, AB) comes from ``gaiadr3.synthetic_photometry_gspc``
in batches of ``services.gaia_batch_ids`` ids (``source_id IN (...)``), so
there is no limit on the number of stars.

Magnitude errors: ``sigma = sqrt((2.5/ln10 / flux_over_error)**2 + sigma_zp**2)``
with the DR3 zero-point errors (G 2.76, BP 2.79, RP 3.78 mmag); for synthetic
bands ``sigma = 2.5/ln10 * flux_error / flux``.

Positions are propagated from ``ref_epoch`` (J2016.0) to the observation epoch
with the proper motion (astropy ``apply_space_motion``, radial velocity 0)
before any matching.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from astropy.time import Time

from ..errors import Cancelled, ServiceError
from ..settings import CalibrationSettings, ServicesSettings
from .http import AnswerTooLarge, OfflineMiss, ServiceClient, column, require_columns, snap_cone
from .reference import reference_table

SERVICE = "gaia"

GAIA_COLUMNS = (
    "source_id", "ra", "dec", "ref_epoch", "pmra", "pmdec", "parallax", "parallax_error",
    "phot_g_mean_mag", "phot_g_mean_flux_over_error",
    "phot_bp_mean_mag", "phot_bp_mean_flux_over_error",
    "phot_rp_mean_mag", "phot_rp_mean_flux_over_error",
    "bp_rp", "phot_variable_flag", "ruwe",
)

#: band -> (column prefix or gaia_source column, photometric system)
BANDS: dict[str, tuple[str, str]] = {
    "G": ("phot_g_mean", "Vega"), "BP": ("phot_bp_mean", "Vega"), "RP": ("phot_rp_mean", "Vega"),
    "U": ("u_jkc", "Vega"), "B": ("b_jkc", "Vega"), "V": ("v_jkc", "Vega"), "R": ("r_jkc", "Vega"), "I": ("i_jkc", "Vega"),
    "u": ("u_sdss", "AB"), "g": ("g_sdss", "AB"), "r": ("r_sdss", "AB"), "i": ("i_sdss", "AB"), "z": ("z_sdss", "AB"),
}
#: DR3 photometric zero-point uncertainties (Riello et al. 2021), mag
ZP_ERR = {"G": 0.0027553202, "BP": 0.0027901700, "RP": 0.0037793818}
GAIA_EPOCH = 2016.0
#: an overflowing cone is split into cones of half its radius at most this many times
MAX_SPLIT_DEPTH = 3
#: a cone whose answer is beyond the size limit is split once: each part is then about a
#: quarter of it, and a part still too large means the limit or the magnitude cut is wrong
MAX_SIZE_SPLITS = 1
#: gaiadr3.synthetic_photometry_gspc holds only sources brighter than this G
GSPC_G_LIMIT = 17.65
_MAG_PER_LN = 2.5 / np.log(10.0)


# ---------------------------------------------------------------- pure functions

def cone_adql(ra: float, dec: float, radius_deg: float, mag_limit: float) -> str:
    """ADQL for one Gaia DR3 cone (degrees) down to ``G < mag_limit``."""
    cols = ", ".join(GAIA_COLUMNS)
    return (f"SELECT {cols} FROM gaiadr3.gaia_source WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra:.7f}, {dec:.7f}, {radius_deg:.7f})) AND phot_g_mean_mag < {mag_limit:.3f}")


def synthetic_adql(source_ids, prefix: str) -> str:
    """ADQL for the synthetic photometry of ``source_ids`` in one band (``prefix`` e.g. ``v_jkc``)."""
    ids = ", ".join(str(int(s)) for s in source_ids)
    return (f"SELECT source_id, {prefix}_mag, {prefix}_flux, {prefix}_flux_error "
            f"FROM gaiadr3.synthetic_photometry_gspc WHERE source_id IN ({ids})")


def tile_centres(ra: float, dec: float, radius_deg: float, tile_deg: float) -> list[tuple[float, float]]:
    """Centres of cones of radius ``tile_deg`` that together cover the cone ``(ra, dec, radius_deg)``.

    Hexagonal grid on the tangent plane, spacing ``sqrt(3) * tile_deg``, so
    every point of the field lies inside at least one tile.
    """
    if radius_deg <= tile_deg:
        return [(ra, dec)]
    step = np.sqrt(3.0) * tile_deg * 0.98  # 2 % overlap against rounding on the sphere
    n = int(np.ceil((np.degrees(np.tan(np.radians(radius_deg))) + tile_deg) / step)) + 2
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    edge = np.degrees(np.tan(np.radians(radius_deg)))  # the field edge on the tangent plane
    out = []
    for j in range(-n, n + 1):
        for i in range(-n, n + 1):
            x = (i + 0.5 * (j % 2)) * step
            y = j * step * np.sqrt(3.0) / 2.0
            rho = np.hypot(x, y)
            if rho > edge + tile_deg:
                continue
            pa = np.degrees(np.arctan2(x, y))
            # gnomonic distance rho (deg on the plane) -> angular distance
            sep = np.degrees(np.arctan(np.radians(rho)))
            c = centre.directional_offset_by(pa * u.deg, sep * u.deg)
            out.append((float(c.ra.deg), float(c.dec.deg)))
    return out


def propagate(ra, dec, pmra, pmdec, from_jyear: float, epoch: Time | None):
    """Propagate ICRS positions (deg) with proper motions (mas/yr) to ``epoch``.

    Missing proper motions count as zero. Returns (ra, dec) in degrees.
    """
    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    if epoch is None or len(ra) == 0:
        return ra.copy(), dec.copy()
    pmra = np.nan_to_num(np.asarray(pmra, float))
    pmdec = np.nan_to_num(np.asarray(pmdec, float))
    # radial velocity 0 makes the motion purely tangential, so the angular result does not depend on the
    # distance chosen; 10 pc keeps even a 10"/yr star far below ERFA's speed limit (0.1 c), which would warn
    c = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr, pm_dec=pmdec * u.mas / u.yr,
                 distance=10.0 * u.pc, radial_velocity=0.0 * u.km / u.s,
                 obstime=Time(from_jyear, format="jyear", scale="tdb"))
    with np.errstate(all="ignore"):
        moved = c.apply_space_motion(new_obstime=Time(epoch).tdb)
    return moved.ra.deg, moved.dec.deg


def parse_gaia_source(tab: Table, what: str = "Gaia DR3 cone") -> Table:
    """Normalise a gaia_source answer: plain float/int/str columns, masked values as NaN/''.

    Raises :class:`~rpp_core.catalogs.http.MalformedAnswer` when a queried column is missing.
    """
    require_columns(tab, GAIA_COLUMNS, SERVICE, what)
    out = Table()
    out["source_id"] = column(tab, "source_id", -1, np.int64)
    for name in GAIA_COLUMNS:
        if name in ("source_id", "phot_variable_flag"):
            continue
        out[name] = column(tab, name)
    out["phot_variable_flag"] = column(tab, "phot_variable_flag", "", str) if len(tab) else np.array([], str)
    if len(out) and np.all(~np.isfinite(out["ref_epoch"])):
        out["ref_epoch"] = GAIA_EPOCH
    return out


def parse_synthetic(tab: Table, prefix: str, what: str = "Gaia DR3 synthetic photometry") -> Table:
    require_columns(tab, ("source_id", f"{prefix}_mag", f"{prefix}_flux", f"{prefix}_flux_error"), SERVICE, what)
    out = Table()
    out["source_id"] = column(tab, "source_id", -1, np.int64)
    mag = column(tab, f"{prefix}_mag")
    flux = column(tab, f"{prefix}_flux")
    ferr = column(tab, f"{prefix}_flux_error")
    with np.errstate(all="ignore"):
        err = _MAG_PER_LN * ferr / flux
    out["mag"] = mag
    out["mag_err"] = np.where(np.isfinite(err) & (err > 0), err, np.nan)
    return out


def gaia_mag_err(flux_over_error, band: str):
    with np.errstate(all="ignore"):
        sig = _MAG_PER_LN / np.asarray(flux_over_error, float)
    return np.sqrt(sig ** 2 + ZP_ERR[band] ** 2)


def isolated(ra, dec, g, radius_arcsec: float, dmag: float = 2.5) -> np.ndarray:
    """True where no other star lies within ``radius_arcsec`` unless fainter by more than ``dmag``."""
    n = len(ra)
    ok = np.ones(n, bool)
    if n < 2 or radius_arcsec <= 0:
        return ok
    c = SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    i, j, _, _ = c.search_around_sky(c, radius_arcsec * u.arcsec)
    other = i != j
    g = np.nan_to_num(np.asarray(g, float), nan=99.0)
    bad = other & (g[j] < g[i] + dmag)
    ok[np.unique(i[bad])] = False
    return ok


def select_calibrators(tab: Table, settings: ServicesSettings, cuts: CalibrationSettings | None = None) -> tuple[np.ndarray, dict]:
    """Boolean mask of good calibration stars and the count rejected by each rule.

    Rules: finite magnitude in the band, ``G < services.gaia_mag_limit``, and the
    calibrator cuts of ``[calibration]``: not ``VARIABLE`` (if
    ``gaia_exclude_variable``), ``gaia_color_min <= BP-RP <= gaia_color_max``,
    ``RUWE <= gaia_max_ruwe``, isolated (see :func:`isolated`).
    """
    cuts = cuts or CalibrationSettings()
    n = len(tab)
    rules = {
        "no magnitude in band": np.isfinite(tab["mag"]),
        "fainter than limit": np.nan_to_num(tab["gaia_phot_g_mean_mag"], nan=99) < settings.gaia_mag_limit,
        "variable": (np.char.upper(np.asarray(tab["gaia_phot_variable_flag"], str)) != "VARIABLE")
        if cuts.gaia_exclude_variable else np.ones(n, bool),
        "colour out of range": (tab["color"] >= cuts.gaia_color_min) & (tab["color"] <= cuts.gaia_color_max),
        "RUWE too high": ~(np.nan_to_num(tab["gaia_ruwe"], nan=1.0) > cuts.gaia_max_ruwe),
        "not isolated": isolated(tab["ra"], tab["dec"], tab["gaia_phot_g_mean_mag"], cuts.gaia_isolation_arcsec),
    }
    keep = np.ones(n, bool)
    rejected = {}
    for name, ok in rules.items():
        ok = np.asarray(ok, bool)
        rejected[name] = int(np.sum(keep & ~ok))
        keep &= ok
    return keep, rejected


# ---------------------------------------------------------------- network

async def _gather_cancellable(coros):
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def fetch_gaia_field(center_ra: float, center_dec: float, radius_deg: float, epoch: Time | None,
                           settings: ServicesSettings, *, client: ServiceClient, cancel=None,
                           log: Callable[[str, str], None] | None = None) -> Table:
    """All Gaia DR3 sources of the field (no quality cuts), positions at ``epoch``.

    Columns: ``ra``, ``dec`` (deg, at ``epoch``) and every queried column prefixed ``gaia_``.
    The same cone gives the same cache key for calibration and cross-match.
    """
    log = log or (lambda message, level="INFO": None)
    # widen the cone by 10" for stars moving in or out since J2016 (0.5"/yr over 20 yr), then put it
    # on a fixed grid: the query text is the cache key, and a whole night on one field must share it
    ra_q, dec_q, radius_q = snap_cone(center_ra, center_dec, radius_deg + 10.0 / 3600.0)
    centres = tile_centres(ra_q, dec_q, radius_q, settings.gaia_tile_deg)
    tile_r = radius_q if len(centres) == 1 else settings.gaia_tile_deg
    if len(centres) > 1:
        log(f"gaia: field radius {radius_deg:.3f} deg queried as {len(centres)} tiles of {tile_r:g} deg")

    async def one(ra, dec, r, depth=0, size_splits=0):
        adql = cone_adql(ra, dec, r, settings.gaia_mag_limit)
        what = f"Gaia DR3 cone ra={ra:.5f} dec={dec:.5f} r={r:.4f} deg"
        try:
            tab = await client.tap_sync(SERVICE, settings.gaia_tap, adql, cancel=cancel, describe=what,
                                        maxrec=settings.max_rows, parse_table=lambda t: parse_gaia_source(t, what),
                                        too_large_hint="lower services.gaia_tile_deg or services.gaia_mag_limit")
        except AnswerTooLarge as exc:
            if size_splits >= MAX_SIZE_SPLITS:
                raise
            # a dense field: the same cone in smaller parts fits under the limit (none of this was cached)
            subs = tile_centres(ra, dec, r, r / 2.0)
            log(f"gaia: the answer for the cone ra={ra:.4f} dec={dec:.4f} r={r:.4f} deg was too large ({exc}); "
                f"asking again in {len(subs)} cones of {r / 2:.4f} deg", "WARNING")
            parts = await _gather_cancellable([one(a, d, r / 2.0, depth, size_splits + 1) for a, d in subs])
            return [t for p in parts for t in p]
        if not tab.meta.get("overflow"):
            return [tab]
        if depth >= MAX_SPLIT_DEPTH:
            log(f"gaia: the answer for the cone ra={ra:.4f} dec={dec:.4f} r={r:.4f} deg was cut at "
                f"{len(tab)} rows even after splitting it {depth} times: stars are missing there; lower "
                f"services.gaia_mag_limit or raise services.max_rows", "WARNING")
            return [tab]
        subs = tile_centres(ra, dec, r, r / 2.0)
        log(f"gaia: the answer for the cone ra={ra:.4f} dec={dec:.4f} r={r:.4f} deg was cut at {len(tab)} rows "
            f"(services.max_rows = {settings.max_rows}): asking again in {len(subs)} cones of {r / 2:.4f} deg")
        parts = await _gather_cancellable([one(a, d, r / 2.0, depth + 1, size_splits) for a, d in subs])
        return [t for p in parts for t in p]

    parts = [t for p in await _gather_cancellable([one(ra, dec, tile_r) for ra, dec in centres]) for t in p]
    raw = vstack([p for p in parts if len(p)], metadata_conflicts="silent") if any(len(p) for p in parts) else parts[0]
    if len(parts) > 1 and len(raw):
        _, first = np.unique(np.asarray(raw["source_id"]), return_index=True)
        raw = raw[np.sort(first)]
    ref_epoch = float(np.nanmedian(raw["ref_epoch"])) if len(raw) else GAIA_EPOCH
    ra, dec = propagate(raw["ra"], raw["dec"], raw["pmra"], raw["pmdec"], ref_epoch, epoch)
    out = Table()
    out["ra"] = ra
    out["dec"] = dec
    for name in raw.colnames:
        out[f"gaia_{name}"] = raw[name]
    if len(out):
        sep = SkyCoord(out["ra"] * u.deg, out["dec"] * u.deg).separation(
            SkyCoord(center_ra * u.deg, center_dec * u.deg)).deg
        out = out[sep <= radius_deg]
    out.meta["epoch"] = float(Time(epoch).jyear) if epoch is not None else ref_epoch
    out.meta["n_tiles"] = len(parts)  # answers that make up the field, split cones included
    return out


async def fetch_synthetic(source_ids, band: str, settings: ServicesSettings, *, client: ServiceClient,
                          cancel=None) -> Table:
    """Synthetic photometry (``mag``, ``mag_err``) of ``source_ids`` in a JKC/SDSS band, batched."""
    prefix = BANDS[band][0]
    ids = np.unique(np.asarray(source_ids, np.int64))
    batches = [ids[i:i + settings.gaia_batch_ids] for i in range(0, len(ids), settings.gaia_batch_ids)]

    async def one(k, batch):
        what = f"Gaia DR3 synthetic photometry {band}, batch {k + 1}/{len(batches)} ({len(batch)} ids)"
        tab = await client.tap_sync(SERVICE, settings.gaia_tap, synthetic_adql(batch, prefix), cancel=cancel,
                                    describe=what, maxrec=len(batch) + 1,
                                    parse_table=lambda t: parse_synthetic(t, prefix, what),
                                    too_large_hint="lower services.gaia_batch_ids")
        if tab.meta.get("overflow") and len(batch) > 1:
            # the archive cut the answer below one row per id: ask for each half
            halves = await _gather_cancellable([one(k, batch[: len(batch) // 2]), one(k, batch[len(batch) // 2:])])
            return vstack(halves, metadata_conflicts="silent")
        return tab

    parts = await _gather_cancellable([one(k, b) for k, b in enumerate(batches)])
    if not parts:
        return Table({"source_id": np.array([], np.int64), "mag": np.array([]), "mag_err": np.array([])})
    return vstack(parts, metadata_conflicts="silent")


async def fetch_gaia_reference(center_ra: float, center_dec: float, radius_deg: float, epoch: Time | None,
                               band: str, settings: ServicesSettings, *, client: ServiceClient | None = None,
                               cancel=None, log: Callable[[str, str], None] | None = None,
                               filters: bool = True, cuts: CalibrationSettings | None = None) -> Table:
    """Gaia DR3 reference catalogue of a field in one band, ready for calibration.

    Parameters
    ----------
    center_ra, center_dec, radius_deg : float
        Field centre (ICRS, deg) and radius (deg) covering the whole frame
        (:func:`rpp_core.catalogs.crossmatch.field_of_view`). Not capped.
    epoch : astropy.time.Time or None
        Observation epoch; positions are propagated to it (None: J2016.0).
    band : str
        ``G``, ``BP``, ``RP`` (Gaia, Vega), ``U B V R I`` (JKC synthetic, Vega)
        or ``u g r i z`` (SDSS synthetic, AB).
    settings : ServicesSettings
    client : ServiceClient, optional
        Shared client; a private one is made (and closed) otherwise.
    cancel : asyncio.Event or callable, optional
    log : callable(message, level="INFO"), optional
    filters : bool
        Apply the calibration-star cuts of :func:`select_calibrators`
        (False: every star, e.g. for astrometry).
    cuts : CalibrationSettings, optional
        The profile's ``[calibration]`` calibrator cuts (default: the defaults).

    Returns
    -------
    astropy.table.Table
        ``ra``, ``dec`` (deg, at ``epoch``), ``mag``, ``mag_err`` (mag, in ``band``),
        ``color`` (BP-RP, mag), ``ref_id`` (Gaia DR3 source_id) and the raw Gaia
        columns prefixed ``gaia_``. ``meta``: ``band``, ``system`` (``Vega``/``AB``), ``source``,
        ``catalog``, ``epoch`` (Julian year), ``n_field``, ``rejected`` (rule -> count).

    Raises
    ------
    ServiceError
        The archive could not be reached or answered badly (message says which
        and what to do); also in offline mode without a cached answer.
    Cancelled
    """
    if band not in BANDS:
        raise ServiceError(f"calibration band {band!r} is not available from Gaia DR3: use one of {', '.join(BANDS)}")
    own = client is None
    if own:
        client = ServiceClient(settings, log=log)
    try:
        field = await fetch_gaia_field(center_ra, center_dec, radius_deg, epoch, settings, client=client,
                                       cancel=cancel, log=log)
        prefix, system = BANDS[band]
        if band in ZP_ERR:
            mag = np.asarray(field[f"gaia_{prefix}_mag"], float)
            mag_err = gaia_mag_err(field[f"gaia_{prefix}_flux_over_error"], band)
        else:
            # no need to ask for ids the GSPC cannot have
            bright = np.nan_to_num(np.asarray(field["gaia_phot_g_mean_mag"], float), nan=99.0) <= GSPC_G_LIMIT
            synth = await fetch_synthetic(field["gaia_source_id"][bright], band, settings, client=client, cancel=cancel)
            lookup = {int(s): k for k, s in enumerate(synth["source_id"])}
            idx = np.array([lookup.get(int(s), -1) for s in field["gaia_source_id"]], int)
            have = idx >= 0
            mag = np.full(len(field), np.nan)
            mag_err = np.full(len(field), np.nan)
            mag[have] = np.asarray(synth["mag"], float)[idx[have]]
            mag_err[have] = np.asarray(synth["mag_err"], float)[idx[have]]
    except (Cancelled, asyncio.CancelledError):
        raise
    except OfflineMiss as exc:
        raise ServiceError(f"Gaia DR3 reference catalogue: {exc}. Run once with network, or give a local "
                           f"catalogue file (calibration.catalog_files)") from None
    except ServiceError as exc:
        raise ServiceError(f"Gaia DR3 reference catalogue unavailable: {exc}. Check services.gaia_tap "
                           f"({settings.gaia_tap}) and the network, or give a local catalogue file "
                           f"(calibration.catalog_files)") from None
    finally:
        if own:
            await client.aclose()

    out = reference_table(field["ra"], field["dec"], mag, mag_err=mag_err, color=field["gaia_bp_rp"],
                          ref_id=np.asarray(field["gaia_source_id"], np.int64), band=band, system=system,
                          source=f"Gaia DR3 ({settings.gaia_tap})", drop_incomplete=False,
                          extra={name: field[name] for name in field.colnames if name.startswith("gaia_")},
                          catalog="Gaia DR3", epoch=field.meta["epoch"], n_field=len(field),
                          n_tiles=field.meta.get("n_tiles", 1))
    if filters:
        keep, rejected = select_calibrators(out, settings, cuts)
        out = out[keep]
        out.meta["rejected"] = rejected
    else:
        out.meta["rejected"] = {}
    return out
