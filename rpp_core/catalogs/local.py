"""Local reference catalogues: the offline source of calibrators.

Any table astropy reads (CSV, ECSV, FITS, VOTable) with sky positions and a
magnitude column can calibrate a frame. Column names are configurable in the
profile (``[calibration] ra_column, dec_column, mag_column, mag_err_column,
color_columns``); sensible aliases are tried when the configured name is absent
(Gaia exports: ``phot_g_mean_mag``; VizieR: ``Gmag``/``e_Gmag``; galactic
``l``/``b`` when there is no RA/Dec).

The result is the reference table of :mod:`.reference`, shared with the Gaia
client: ``ref_id`` from the file (or the row number), ``mag_err`` 0 when the
file has none, ``color`` the ``color_columns`` difference (or BP-RP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack

from ..errors import CalibrationError
from ..settings import CalibrationSettings
from .reference import as_float, reference_table

_FORMATS = {
    ".csv": "ascii.csv",
    ".txt": "ascii",
    ".dat": "ascii",
    ".ecsv": "ascii.ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".xml": "votable",
    ".vot": "votable",
    ".votable": "votable",
}

_MAG_ALIASES = {
    "G": ["phot_g_mean_mag", "Gmag", "gmag_gaia"],
    "BP": ["phot_bp_mean_mag", "BPmag"],
    "RP": ["phot_rp_mean_mag", "RPmag"],
}
_ID_NAMES = ["ref_id", "source_id", "id", "ID", "name", "Name", "designation", "main_id"]
_RA_NAMES = ["ra", "RA_ICRS", "RAJ2000", "_RAJ2000", "ra_deg", "ALPHA_J2000"]
_DEC_NAMES = ["dec", "DE_ICRS", "DEJ2000", "_DEJ2000", "dec_deg", "DELTA_J2000"]
#: magnitude columns tried when neither a band nor a column name is given
_MAG_NAMES = ["mag", "phot_g_mean_mag", "G", "Gmag", "rmag", "Vmag", "VTmag", "MAG_VT"]


def read_table(path: str | Path) -> Table:
    """Read a catalogue file, choosing the reader from its extension."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"reference catalogue {path} does not exist: check --catalog / calibration.catalog_files")
    suffixes = [s.lower() for s in path.suffixes]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None and len(suffixes) > 1 and suffixes[-1] == ".gz":
        fmt = _FORMATS.get(suffixes[-2])
    try:
        if fmt == "votable":
            import warnings

            from astropy.io.votable.exceptions import VOWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VOWarning)
                return Table.read(path, format="votable")
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many types for unreadable files
        raise CalibrationError(
            f"reference catalogue {path}: cannot read it as {fmt or 'a table'} ({type(exc).__name__}: {exc}); "
            "use CSV with a header line, ECSV, FITS or VOTable") from None


def _find(table: Table, wanted: str, aliases: Iterable[str] = ()) -> str | None:
    names = {n.lower(): n for n in table.colnames}
    for cand in [wanted, *aliases]:
        if cand and cand.lower() in names:
            return names[cand.lower()]
    return None


def standardize(table: Table, settings: CalibrationSettings, source: str = "catalogue") -> Table:
    """Map a raw table onto the reference-table columns with the profile's column names."""
    return from_columns(table, ra_column=settings.ra_column, dec_column=settings.dec_column,
                        mag_column=settings.mag_column, mag_err_column=settings.mag_err_column,
                        color_columns=settings.color_columns, band=settings.band, source=source)


def from_columns(table: Table, *, ra_column: str | None = "ra", dec_column: str | None = "dec",
                 mag_column: str | None = "", mag_err_column: str | None = "", color_columns=(),
                 band: str | None = "G", source: str = "catalogue") -> Table:
    """Map a raw table onto the reference table (:mod:`.reference`), finding its columns.

    Named columns first, then the aliases: RA/Dec (deg or sexagesimal), else
    galactic ``l``/``b``; the magnitude ``mag_column``, else the band's names
    (``G``: ``phot_g_mean_mag``, ``Gmag``...), else without a band the usual
    names (``mag``, ``Vmag``...) or any column with "mag" in its name.
    """
    notes: list[str] = []
    ra_name = _find(table, ra_column or "ra", _RA_NAMES)
    dec_name = _find(table, dec_column or "dec", _DEC_NAMES)
    if ra_name and dec_name:
        ra_col, dec_col = table[ra_name], table[dec_name]
        if ra_col.dtype.kind in "US":  # sexagesimal strings
            try:
                coord = SkyCoord(ra_col, dec_col, unit=(u.hourangle, u.deg))
            except ValueError as exc:
                raise CalibrationError(f"{source}: columns {ra_name!r}/{dec_name!r} are neither degrees nor "
                                       f"sexagesimal ({exc}); fix the file") from None
            ra, dec = coord.ra.deg, coord.dec.deg
        else:
            ra, dec = _angle_deg(ra_col, ra_name, source, notes), _angle_deg(dec_col, dec_name, source, notes)
    elif _find(table, "l", ["GLON"]) and _find(table, "b", ["GLAT"]):
        l_name, b_name = _find(table, "l", ["GLON"]), _find(table, "b", ["GLAT"])
        lon, lat = _angle_deg(table[l_name], l_name, source, notes), _angle_deg(table[b_name], b_name, source, notes)
        dec_name, lat = b_name, _latitudes(lat, b_name, source, notes)
        gal = SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic")
        ra, dec = gal.icrs.ra.deg, gal.icrs.dec.deg
    else:
        raise CalibrationError(
            f"{source}: no position columns: looked for {ra_column!r}/{dec_column!r} "
            f"(or l/b); columns are {table.colnames[:30]}; set calibration.ra_column / dec_column")
    dec = _latitudes(dec, dec_name, source, notes)

    if band:
        mag_name = _find(table, mag_column or band, _MAG_ALIASES.get(band, []) + [f"{band}mag", f"mag_{band}"])
    else:
        mag_name = _find(table, mag_column or "", _MAG_NAMES) or next((n for n in table.colnames if "mag" in n.lower()), None)
        if mag_name is None and table.meta.get("band") in table.colnames:
            mag_name = table.meta["band"]
    if mag_name is None:
        raise CalibrationError(
            f"{source}: no magnitude column for band {band!r} (looked for {mag_column or band!r}); "
            f"columns are {table.colnames[:30]}; set calibration.band or calibration.mag_column")
    mag = _numbers(table[mag_name], mag_name, source, notes, "magnitude")
    if len(mag) and not np.isfinite(mag).any():
        raise CalibrationError(
            f"{source}: magnitude column {mag_name!r} has no values (all {len(mag)} rows empty or NaN): "
            "choose a filled column with calibration.band or calibration.mag_column")
    err_name = _find(table, mag_err_column or "", [f"{mag_name}_err", f"e_{mag_name}", f"{mag_name}err",
                                                   f"{mag_name}_error", f"d{mag_name}", f"{band}_err", f"e_{band}mag"])
    mag_err = _numbers(table[err_name], err_name, source, notes, "magnitude error") if err_name else np.zeros(len(table))
    negative = mag_err < 0
    if negative.any():
        notes.append(f"{source}: {int(negative.sum())} negative value(s) in the error column {err_name!r} "
                     "(e.g. {:g}): treated as unknown".format(float(mag_err[negative][0])))
    mag_err = np.where(np.isfinite(mag_err) & ~negative, mag_err, 0.0)

    color = None
    if color_columns:
        c1, c2 = (_find(table, c, _MAG_ALIASES.get(c, [])) for c in color_columns)
        if c1 is None or c2 is None:
            raise CalibrationError(f"{source}: colour columns {list(color_columns)} not found; columns are {table.colnames[:30]}")
        color = as_float(table[c1]) - as_float(table[c2])
    else:
        name = _find(table, "bp_rp", ["BP-RP", "BPRP"])
        if name:
            color = as_float(table[name])
        elif _find(table, "BP", _MAG_ALIASES["BP"]) and _find(table, "RP", _MAG_ALIASES["RP"]):
            color = as_float(table[_find(table, "BP", _MAG_ALIASES["BP"])]) - as_float(table[_find(table, "RP", _MAG_ALIASES["RP"])])

    id_name = _find(table, "", _ID_NAMES)
    ref_id = np.asarray(table[id_name]).astype(str) if id_name else None
    return reference_table(ra, dec, mag, mag_err=mag_err, color=color, ref_id=ref_id,
                           band=band or mag_name, system=table.meta.get("system", "as in file"), source=source,
                           mag_column=mag_name, notes=notes)


def _numbers(col, name: str, source: str, notes: list[str], what: str) -> np.ndarray:
    """A column as floats (masked -> NaN); text that is not a number -> NaN with a note, or an error if all is."""
    try:
        return as_float(col)
    except (TypeError, ValueError):
        pass
    texts = np.ma.filled(np.ma.asarray(col).astype(str), "").tolist()
    values = np.full(len(texts), np.nan)
    bad = []
    for i, text in enumerate(texts):
        try:
            values[i] = float(text) if text.strip() else np.nan
        except ValueError:
            bad.append(text)
    if bad and not np.isfinite(values).any():
        raise CalibrationError(f"{source}: {what} column {name!r} holds text, not numbers (e.g. '{bad[0]}'); "
                               "fix the file or name the right column in the profile ([calibration])")
    if bad:
        notes.append(f"{source}: {len(bad)} row(s) of column {name!r} are not numbers (e.g. '{bad[0]}'): skipped")
    return values


def _angle_deg(col, name: str, source: str, notes: list[str]) -> np.ndarray:
    """Degrees from a position column, honouring the unit declared in the file (deg, hourangle, rad, arcsec...)."""
    values = _numbers(col, name, source, notes, "position")
    unit = getattr(col, "unit", None)
    if unit is None:
        return values
    try:
        if unit.physical_type == "time":  # RA written in "h": hours of right ascension
            return values * unit.to(u.hour) * 15.0
        return values * unit.to(u.deg)
    except (u.UnitsError, ValueError, AttributeError):
        raise CalibrationError(f"{source}: column {name!r} has unit {unit}, not an angle: give positions in deg, "
                               "hourangle or rad (or fix the unit in the file)") from None


def _latitudes(dec: np.ndarray, name: str, source: str, notes: list[str]) -> np.ndarray:
    """Dec (or b) in deg with values beyond +-90 deg set to NaN (dropped later); an error if none is valid."""
    outside = np.abs(dec) > 90.0  # NaN compares False: left for the row filter
    if not outside.any():
        return dec
    example = float(dec[outside][0])
    if outside.all():
        raise CalibrationError(f"{source}: every value of column {name!r} is outside -90..90 deg (e.g. {example:g}): "
                               "declare the column's unit in the file (e.g. rad) or fix the values")
    notes.append(f"{source}: {int(outside.sum())} row(s) with {name} outside -90..90 deg (e.g. {example:g}): skipped")
    return np.where(outside, np.nan, dec)


def read_reference(source: Table | str | Path, *, ra_column: str | None = None, dec_column: str | None = None,
                   mag_column: str | None = None, band: str | None = None) -> Table:
    """Any table or catalogue file as a reference table, brightest first (index building, WCS checks).

    Columns are found as :func:`from_columns` does; without ``band`` or
    ``mag_column`` the first usual magnitude column is taken.
    """
    if isinstance(source, Table):
        table, where = source, str(source.meta.get("source", "reference table"))
    else:
        table, where = read_table(source), str(source)
    ref = from_columns(table, ra_column=ra_column, dec_column=dec_column, mag_column=mag_column, band=band,
                       source=where)
    ref.sort("mag")
    return ref


def load_reference(paths: Iterable[str | Path], settings: CalibrationSettings,
                   center: tuple[float, float] | None = None, radius_deg: float | None = None) -> Table:
    """Read, standardise and merge local reference catalogues; keep the cone if given.

    ``center`` is (ra, dec) in deg; ``radius_deg`` the cone radius in deg.
    """
    tables = [standardize(read_table(p), settings, str(p)) for p in paths]
    if not tables:
        raise CalibrationError("no local reference catalogue given (calibration.catalog_files or --catalog)")
    ref = vstack(tables, metadata_conflicts="silent") if len(tables) > 1 else tables[0]
    ref.meta["source"] = ", ".join(str(p) for p in paths)
    ref.meta["notes"] = [note for t in tables for note in t.meta.get("notes", [])]
    if center is not None and radius_deg is not None:
        ref = cone_cut(ref, center, radius_deg)
    return ref


def cone_cut(ref: Table, center: tuple[float, float], radius_deg: float) -> Table:
    """Rows of a reference table within ``radius_deg`` of ``center`` (ra, dec in deg)."""
    if len(ref) == 0:
        return ref
    c0 = SkyCoord(center[0] * u.deg, center[1] * u.deg)
    sep = SkyCoord(ref["ra"], ref["dec"], unit=u.deg).separation(c0).deg
    return ref[sep <= radius_deg]
