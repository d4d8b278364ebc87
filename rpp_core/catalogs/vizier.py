"""VizieR cone searches (ASU VOTable, ``services.vizier``): VSX, Milliquas and the 10 pc sample.

Request (GET)::

    <services.vizier>?-source=B/vsx/vsx&-c=<ra> <+dec>&-c.rd=<radius deg>&-out.max=N
                      &-out=<columns>&-out.add=_RAJ2000,_DEJ2000&-oc.form=d

Every query names its columns (``-out``, labels from the CDS ReadMe files)
instead of relying on VizieR's default set; VizieR refuses an unknown one. An
answer must hold every column asked for, or it is not used (nor cached).
``_RAJ2000``/``_DEJ2000`` are VizieR's computed J2000 positions (deg), used for
matching VSX and Milliquas. The 10 pc sample gives each star's ICRS position at
its own ``Epoch`` with proper motions of up to 10"/yr: those positions are
moved to the observation epoch (like Gaia's) before matching. An answer of
``-out.max = services.max_rows`` rows was cut, and the run log says so.

======================  ==========================  ==================================================
service (enabled name)  catalogue                   columns
======================  ==========================  ==================================================
``vsx``                 B/vsx/vsx (AAVSO VSX)       vsx_name, vsx_type, vsx_period (d), vsx_max, vsx_min
                                                    (mag; when ``f_min`` is ``(`` VSX gives an amplitude,
                                                    and the minimum is max + amplitude), vsx_band
                                                    (passband of max)
``milliquas``           VII/294 (Milliquas)         milliquas_name, milliquas_type, milliquas_z,
                                                    milliquas_rmag, milliquas_bmag, milliquas_qpct
``10pc``                J/A+A/650/A201/tablea1      pc10_name, pc10_sptype, pc10_plx (mas), pc10_type
                        (10 pc sample, Reyle+ 2021)
======================  ==========================  ==================================================
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..settings import ServicesSettings
from .gaia import propagate
from .http import MalformedAnswer, ServiceClient, column, read_votable, require_columns

CATALOGS = {
    # service: (VizieR table, -out columns, -out.add computed columns, prefix)
    "vsx": ("B/vsx/vsx", "OID,Name,Type,max,n_max,f_min,min,n_min,Period", "_RAJ2000,_DEJ2000", "vsx_"),
    "milliquas": ("VII/294/catalog", "Name,Type,Rmag,Bmag,z,Qpct", "_RAJ2000,_DEJ2000", "milliquas_"),
    # positions at each star's own Epoch: no computed J2000 columns, the client moves them itself
    "10pc": ("J/A+A/650/A201/tablea1", "ObjName,ObjType,RAdeg,DEdeg,Epoch,plx,pmRA,pmDE,SpType", "", "pc10_"),
}


def cone_params(source: str, ra: float, dec: float, radius_deg: float, max_rows: int, out: str,
                add: str = "_RAJ2000,_DEJ2000") -> dict:
    params = {"-source": source, "-c": f"{ra:.6f} {dec:+.6f}", "-c.rd": f"{radius_deg:.6f}",
              "-out.max": str(int(max_rows)), "-out": out, "-oc.form": "d"}
    if add:
        params["-out.add"] = add
    return params


def _find(tab: Table, names=(), ucds=(), exclude_ucd=()) -> str | None:
    lower = {c.lower(): c for c in tab.colnames}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    for want in ucds:
        for c in tab.colnames:
            ucd = str(tab[c].meta.get("ucd", "") or "").lower()
            if ucd and (ucd == want or ucd.startswith(want)) and not any(x in ucd for x in exclude_ucd):
                return c
    return None


def _get(tab, name, default=np.nan, dtype=float):
    if name is None:
        return np.full(len(tab), default, dtype=dtype) if dtype is not str else np.full(len(tab), "", dtype=object).astype(str)
    return column(tab, name, default, dtype)


def _positions(tab: Table) -> tuple[np.ndarray, np.ndarray]:
    ra_c = _find(tab, ("_RAJ2000", "RAJ2000", "RAdeg", "RA_ICRS", "ra"), ("pos.eq.ra;meta.main", "pos.eq.ra"))
    de_c = _find(tab, ("_DEJ2000", "DEJ2000", "DEdeg", "DE_ICRS", "dec"), ("pos.eq.dec;meta.main", "pos.eq.dec"))
    if ra_c is None or de_c is None:
        raise MalformedAnswer(f"VizieR answer has no position columns (columns: {', '.join(tab.colnames[:12])})")
    return column(tab, ra_c), column(tab, de_c)


def pick_table(tables: list[Table], source: str) -> Table:
    """The answer's table for ``source`` (VizieR may return several for a catalogue name)."""
    if not tables:
        return Table()
    wanted = [t for t in tables if str(t.meta.get("votable_name", "")).startswith(source)]
    pool = wanted or tables
    with_rows = [t for t in pool if len(t)]
    return with_rows[0] if with_rows else pool[0]


def parse_vsx(tab: Table) -> Table:
    """B/vsx/vsx rows -> ``ra``, ``dec`` and ``vsx_*`` columns."""
    out = Table()
    if len(tab) == 0:
        return _empty("vsx")
    out["ra"], out["dec"] = _positions(tab)
    out["vsx_name"] = _get(tab, _find(tab, ("Name",), ("meta.id;meta.main",)), "", str)
    out["vsx_type"] = _get(tab, _find(tab, ("Type",), ("meta.code;src.var", "src.var")), "", str)
    out["vsx_period"] = _get(tab, _find(tab, ("Period",), ("time.period", "src.var;time.period")))
    vmax = _get(tab, _find(tab, ("max",), ("phot.mag;stat.max",)))
    vmin = _get(tab, _find(tab, ("min",), ("phot.mag;stat.min",)))
    # B/vsx ReadMe: f_min = "(" means min is an amplitude, not a magnitude
    amplitude = np.char.strip(_get(tab, _find(tab, ("f_min",), ()), "", str).astype(str)) == "("
    out["vsx_max"] = vmax
    out["vsx_min"] = np.where(amplitude, vmax + vmin, vmin)
    out["vsx_band"] = _get(tab, _find(tab, ("n_max",), ()), "", str)
    return out[np.isfinite(out["ra"]) & np.isfinite(out["dec"])]


def parse_milliquas(tab: Table) -> Table:
    out = Table()
    if len(tab) == 0:
        return _empty("milliquas")
    out["ra"], out["dec"] = _positions(tab)
    out["milliquas_name"] = _get(tab, _find(tab, ("Name",), ("meta.id;meta.main",)), "", str)
    out["milliquas_type"] = _get(tab, _find(tab, ("Type",), ("src.class",)), "", str)
    out["milliquas_z"] = _get(tab, _find(tab, ("z",), ("src.redshift",)))
    out["milliquas_rmag"] = _get(tab, _find(tab, ("Rmag",), ()))
    out["milliquas_bmag"] = _get(tab, _find(tab, ("Bmag",), ()))
    out["milliquas_qpct"] = _get(tab, _find(tab, ("Qpct",), ("stat.likelihood",)))
    return out[np.isfinite(out["ra"]) & np.isfinite(out["dec"])]


def parse_10pc(tab: Table) -> Table:
    """J/A+A/650/A201/tablea1 rows -> ``pc10_*`` columns, with ``ra``, ``dec`` still at each row's
    ``pc10_epoch`` (Julian year) and ``pmra``/``pmdec`` (mas/yr) to move them (:func:`move_to_epoch`)."""
    out = Table()
    if len(tab) == 0:
        return _empty("10pc")
    if "RAdeg" in tab.colnames and "DEdeg" in tab.colnames:
        out["ra"], out["dec"] = column(tab, "RAdeg"), column(tab, "DEdeg")
    else:
        out["ra"], out["dec"] = _positions(tab)
    out["pc10_epoch"] = _get(tab, _find(tab, ("Epoch",), ("time.epoch",)))
    out["pmra"] = _get(tab, _find(tab, ("pmRA",), ("pos.pm;pos.eq.ra",)))
    out["pmdec"] = _get(tab, _find(tab, ("pmDE",), ("pos.pm;pos.eq.dec",)))
    out["pc10_name"] = _get(tab, _find(tab, ("ObjName", "Name", "OBJ_NAME"), ("meta.id;meta.main", "meta.id")), "", str)
    out["pc10_sptype"] = _get(tab, _find(tab, ("SpType", "SP_TYPE"), ("src.spType",)), "", str)
    out["pc10_plx"] = _get(tab, _find(tab, ("Plx", "PARALLAX", "plx"), ("pos.parallax",), exclude_ucd=("stat.error",)))
    out["pc10_type"] = _get(tab, _find(tab, ("ObjType", "OBJ_CAT", "Type"), ("src.class",)), "", str)
    return out[np.isfinite(out["ra"]) & np.isfinite(out["dec"])]


PARSERS = {"vsx": parse_vsx, "milliquas": parse_milliquas, "10pc": parse_10pc}
EMPTY_COLUMNS = {
    "vsx": {"vsx_name": str, "vsx_type": str, "vsx_period": float, "vsx_max": float, "vsx_min": float, "vsx_band": str},
    "milliquas": {"milliquas_name": str, "milliquas_type": str, "milliquas_z": float, "milliquas_rmag": float,
                  "milliquas_bmag": float, "milliquas_qpct": float},
    "10pc": {"pc10_name": str, "pc10_sptype": str, "pc10_plx": float, "pc10_type": str},
}


def _empty(service: str) -> Table:
    out = Table({"ra": np.array([], float), "dec": np.array([], float)})
    for name, typ in EMPTY_COLUMNS[service].items():
        out[name] = np.array([], dtype=typ)
    if service == "10pc":
        for name in ("pc10_epoch", "pmra", "pmdec"):
            out[name] = np.array([], float)
    return out


def move_to_epoch(tab: Table, epoch) -> Table:
    """Move 10 pc positions from each row's ``pc10_epoch`` to ``epoch`` (proper motion; J2000 if unknown)."""
    out = tab.copy()
    if len(out) and epoch is not None:
        epochs = np.nan_to_num(np.asarray(out["pc10_epoch"], float), nan=2000.0)
        for ep in np.unique(epochs):
            rows = epochs == ep
            out["ra"][rows], out["dec"][rows] = propagate(out["ra"][rows], out["dec"][rows], out["pmra"][rows],
                                                          out["pmdec"][rows], float(ep), epoch)
    out.remove_columns([c for c in ("pc10_epoch", "pmra", "pmdec") if c in out.colnames])
    return out


def parse(content: bytes, service: str) -> Table:
    """A VizieR VOTable answer for ``service`` (``vsx``, ``milliquas``, ``10pc``) -> standard columns.

    Raises :class:`~rpp_core.catalogs.http.MalformedAnswer` when a column asked for is missing.
    """
    source, out, add, _ = CATALOGS[service]
    what = f"VizieR {source} cone"
    tables = read_votable(content, service, what, all_tables=True)
    tab = pick_table(tables, source)
    if not tab.colnames:
        raise MalformedAnswer(f"{service}: answer to {what} holds no {source} table")
    require_columns(tab, [c for c in (add.split(",") if add else []) + out.split(",")], service, what)
    return PARSERS[service](tab)


async def query(service: str, ra: float, dec: float, radius_deg: float, settings: ServicesSettings, *,
                client: ServiceClient, cancel=None, epoch=None, log=None) -> Table:
    """One VizieR cone for ``service``; positions at ``epoch`` (10 pc) or J2000 (VSX, Milliquas)."""
    source, out, add, _ = CATALOGS[service]
    params = cone_params(source, ra, dec, radius_deg, settings.max_rows, out, add)
    tab = await client.request(service, "GET", settings.vizier, params=params, cancel=cancel,
                               describe=f"VizieR {source} cone ra={ra:.5f} dec={dec:.5f} r={radius_deg:.4f} deg",
                               parse=lambda body: parse(body, service))
    if len(tab) >= settings.max_rows and log is not None:
        log(f"{service}: the VizieR answer was cut at {len(tab)} rows (services.max_rows = {settings.max_rows}): "
            f"the field has more {source} objects than were read; raise services.max_rows", "WARNING")
    if service == "10pc":
        tab = move_to_epoch(tab, epoch)
    return tab
