"""FITS reading, header repair and observation metadata.

Conventions
-----------
- ``Frame.data`` is float32, 2-D, physical values (BSCALE/BZERO applied,
  BLANK pixels set to NaN), indexed ``data[y, x]`` with 0-based pixels.
- Sky coordinates are ICRS degrees; pixel scale in arcsec/px; times are
  :class:`astropy.time.Time` in UTC; exposure in seconds; site as
  :class:`astropy.coordinates.EarthLocation` (longitude east positive).
- Nothing here downloads anything: IERS tables are used as bundled with
  astropy (no internet at the telescope), see :func:`compute_airmass`.

Loading (:func:`load_frame`)
----------------------------
Uncompressed files are memory-mapped and converted to float32 once (a plane of
a cube is sliced from the memmap before the conversion, so only that plane is
read). ``.fits.gz`` is decompressed by astropy in memory; tile-compressed
``.fz`` (CompImageHDU) is decompressed by astropy. Keywords of the primary
header missing from an image extension are inherited (INHERIT convention,
unless ``INHERIT = F``).

Header repair (:func:`repair_header`)
-------------------------------------
Edits cards in place and never rebuilds the header from a WCS object, so SIP,
TPV/PV, non-TAN projections (e.g. galactic CAR) and alternate WCSs survive
untouched. Each change is one line in ``Frame.repairs``:

- unparsable cards are removed;
- ``RADECSYS`` -> ``RADESYS``; ``EPOCH`` copied to ``EQUINOX`` when EQUINOX is
  missing and EPOCH is 1950 or 2000; string ``EQUINOX`` ('J2000') -> number;
- dates (DATE-OBS, DATE-BEG, DATE-AVG, DATE-END, DATE) in odd formats
  ('29/11/51', '2025/01/02 03:04:05', trailing 'Z') -> ISO 8601;
- malformed celestial CTYPE padding ('RA--TAN', lower case) -> standard;
  SIP coefficients without '-SIP' (or '-SIP' without coefficients) made
  consistent;
- a celestial WCS that is truly unusable (unknown projection, singular CD/PC
  matrix, |CRVAL lat| > 90, non-finite values, astropy/wcslib refuses it) is
  removed (the primary WCS keywords only), with the reason in ``wcs_status``.
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, Angle, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.time import Time
from astropy.utils import iers
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area
from erfa import ErfaWarning

from .errors import InputError
from .settings import ObservatorySettings

__all__ = [
    "ObservationMeta",
    "Frame",
    "load_frame",
    "read_metadata",
    "repair_header",
    "check_wcs",
    "compute_airmass",
    "pixel_scale_from_wcs",
    "header_summary",
    "parse_date",
]


# ----------------------------------------------------------------------------
# data classes
# ----------------------------------------------------------------------------


@dataclass
class ObservationMeta:
    """Facts about the observation, each with its origin in ``sources``.

    Attributes
    ----------
    date_obs : Time or None
        Mid-exposure (UTC) when the exposure time is known, else the start;
        ``sources["date_obs"]`` says which.
    exptime : float or None
        Exposure time, s.
    filter : str or None
    gain : float or None
        e-/ADU.
    read_noise : float or None
        e-.
    saturation : float or None
        ADU (in the units of ``Frame.data``). Not estimated from the data here.
    site : EarthLocation or None
    ra, dec : float or None
        Pointing, ICRS deg.
    pixel_scale : float or None
        arcsec/px (geometric mean of the two axes).
    airmass : float or None
    object : str or None
    sources : dict
        field -> where the value came from, or why it is None.
    """

    date_obs: Time | None = None
    exptime: float | None = None
    filter: str | None = None
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    site: EarthLocation | None = None
    ra: float | None = None
    dec: float | None = None
    pixel_scale: float | None = None
    airmass: float | None = None
    object: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (time as ISO UTC, site as lat/lon deg and height m)."""
        site = None
        if self.site is not None:
            g = self.site.to_geodetic()
            site = {"lat_deg": float(g.lat.deg), "lon_deg": float(g.lon.deg), "height_m": float(g.height.to_value(u.m))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ErfaWarning)
            date = self.date_obs.utc.isot if self.date_obs is not None else None
        return {
            "date_obs": date,
            "exptime": self.exptime,
            "filter": self.filter,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "saturation": self.saturation,
            "site": site,
            "ra": self.ra,
            "dec": self.dec,
            "pixel_scale": self.pixel_scale,
            "airmass": self.airmass,
            "object": self.object,
            "sources": dict(self.sources),
        }


@dataclass
class Frame:
    """One image plane ready for processing.

    Attributes
    ----------
    path : Path
    hdu : int
        Index of the HDU in the file (0 = primary).
    data : ndarray
        float32, 2-D, physical units (scaling applied), 0-based ``[y, x]``.
    header : fits.Header
        Repaired header (plus inherited primary keywords for extensions);
        BSCALE/BZERO/BLANK removed and BITPIX = -32 so it matches ``data``.
    wcs : WCS or None
        Celestial 2-D WCS when ``wcs_status == "ok"``.
    wcs_status : str
        ``"ok"``, ``"missing"`` or ``"invalid: <why>"``.
    repairs : list of str
        One line per header change.
    notes : list of str
        Other facts worth logging (cube plane used, compression, scaling...).
    """

    path: Path
    hdu: int
    data: np.ndarray
    header: fits.Header
    wcs: WCS | None
    wcs_status: str
    repairs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------
# small parsers
# ----------------------------------------------------------------------------

_DATE_KEYS = ("DATE-OBS", "DATE-BEG", "DATE-AVG", "DATE-END", "DATE")


def parse_date(value: Any, file_date: bool = False) -> str | None:
    """Normalise a FITS date string to ISO 8601 (``YYYY-MM-DD[THH:MM:SS[.s]]``).

    Accepts ISO with ' ' or 'T' between date and time, '/' in the date,
    trailing 'Z'/'UTC'/'+00:00', and the pre-2000 FITS form 'DD/MM/YY'
    (meaning 19YY) or 'DD/MM/YYYY'. With ``file_date`` (the DATE keyword, a
    file creation date) a two-digit year below 79 means 20YY, since FITS files
    did not exist before 1979 and some writers kept the old form after 1999.
    Returns None when the string is not a date.
    """
    if not isinstance(value, str):
        return None
    s = value.strip().upper()
    s = re.sub(r"(Z|\s*UTC?|\+00:?00)$", "", s).strip()
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})", s)
    if m:
        day, month, year = int(m[1]), int(m[2]), m[3]
        if len(year) == 2:
            year = int(year) + (2000 if file_date and int(year) < 79 else 1900)
        else:
            year = int(year)
        s = f"{year:04d}-{month:02d}-{day:02d}"
    else:
        m = re.fullmatch(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[T\s]+(\d{1,2}):(\d{1,2})(?::(\d{1,2}(?:\.\d*)?))?)?", s)
        if not m:
            return None
        s = f"{int(m[1]):04d}-{int(m[2]):02d}-{int(m[3]):02d}"
        if m[4] is not None:
            sec = m[6] or "0"
            whole, _, frac = sec.partition(".")
            s += f"T{int(m[4]):02d}:{int(m[5]):02d}:{int(whole):02d}" + (f".{frac}" if frac else "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Time(s, format="isot" if "T" in s else "iso", scale="utc")
    except ValueError:
        return None
    return s


def _parse_time_of_day(value: Any) -> float | None:
    """'HH:MM:SS.s', 'HH MM SS' or decimal hours -> seconds since midnight."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        h = float(value)
        return h * 3600.0 if 0 <= h < 24 else None
    m = re.fullmatch(r"\s*(\d{1,2})[:\s](\d{1,2})(?:[:\s](\d{1,2}(?:\.\d*)?))?\s*", str(value))
    if not m:
        return None
    secs = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3] or 0)
    return secs if secs < 86401 else None


def _parse_angle(value: Any, hours: bool = False) -> float | None:
    """Angle in degrees from a number or a sexagesimal string.

    Numbers and plain numeric strings are degrees (numbers are hours only
    when ``hours`` is set). Strings with separators (':', ' ', 'h', 'd') are
    sexagesimal: hours when ``hours``, else degrees; a trailing W or S makes
    the value negative.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.floating, np.integer)):
        v = float(value)
        if not math.isfinite(v):
            return None
        return v * 15.0 if hours else v
    s = str(value).strip().upper()
    if not s:
        return None
    sign = 1.0
    m = re.fullmatch(r"(.*\d)\s*([NSEW])", s)
    if m:
        s, sign = m[1], (-1.0 if m[2] in "SW" else 1.0)
    try:
        return sign * float(s)
    except ValueError:
        pass
    try:
        a = Angle(s, unit=u.hourangle if hours else u.deg)
    except (ValueError, u.UnitsError):
        return None
    return sign * float(a.deg)


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else str(value).strip()


def _first(header: fits.Header, keys, test=lambda v: v is not None, parse=_float):
    """First key whose parsed value passes ``test``: (key, value) or (None, None)."""
    for k in keys:
        if k in header:
            v = parse(header[k])
            if v is not None and test(v):
                return k, v
    return None, None


# ----------------------------------------------------------------------------
# WCS checks and header repair
# ----------------------------------------------------------------------------

_CEL_PREFIX = re.compile(r"^(RA|DEC|[GESH]LON|[GESH]LAT|[A-Z]{2}LN|[A-Z]{2}LT)-*")
_WCS_PRIMARY_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d+|CRVAL\d+|CRPIX\d+|CDELT\d+|CUNIT\d+|CROTA\d+|CRDER\d+|CSYER\d+|CNAME\d+|"
    r"CD\d+_\d+|PC\d+_\d+|PV\d+_\d+|PS\d+_\d+|LONPOLE|LATPOLE|WCSNAME|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+)$"
)
_STRUCTURAL = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER",
    "EXTLEVEL", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "INHERIT",
    "END", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZTENSION",
}


def _celestial_ctype_axes(header: fits.Header) -> list[int]:
    out = []
    for key in header:
        m = re.fullmatch(r"CTYPE(\d+)", key)
        if m and isinstance(header[key], str) and _CEL_PREFIX.match(header[key].strip().upper()):
            out.append(int(m[1]))
    return sorted(out)


def _fix_ctype(value: str) -> str:
    """'ra--tan' -> 'RA---TAN', keeping any '-SIP'/'-TPV' style suffix."""
    s = value.strip().upper()
    m = re.fullmatch(r"([A-Z]{1,4})-+([A-Z0-9]{3})((?:-[A-Z0-9]+)*)", s)
    if not m:
        return value
    return f"{m[1]:-<4}-{m[2]}{m[3]}"


def check_wcs(header: fits.Header) -> tuple[WCS | None, str, list[str]]:
    """Build and validate the celestial WCS of ``header`` (not modified).

    Returns
    -------
    wcs : WCS or None
        Celestial WCS (2 axes) when usable.
    status : str
        ``"ok"``, ``"missing"`` or ``"invalid: <why>"``.
    notes : list of str
        Fixes astropy/wcslib applied on the fly and other remarks.
    """
    notes: list[str] = []
    cel_axes = _celestial_ctype_axes(header)
    if not cel_axes:
        if any(k.startswith("AMDX") for k in header) or "PLTRAH" in header:
            notes.append("no FITS WCS (DSS plate solution keywords present, not used)")
            return None, "missing", notes
        if any(re.fullmatch(r"CTYPE\d+", k) for k in header):
            notes.append("CTYPE keywords present but none celestial (linear/pixel WCS only)")
        return None, "missing", notes
    if len(cel_axes) != 2:
        why = f"{len(cel_axes)} celestial CTYPE axis found ({cel_axes}), need a longitude/latitude pair"
        return None, f"invalid: {why}", notes
    for i in cel_axes:
        ctype = header[f"CTYPE{i}"].strip().upper()
        crval = _float(header.get(f"CRVAL{i}", 0.0))
        if crval is None:
            return None, f"invalid: CRVAL{i} = {header.get(f'CRVAL{i}')!r} is not a finite number", notes
        if re.match(r"^(DEC|[A-Z]LAT|[A-Z]{2}LT)-", ctype) and abs(crval) > 90.0:
            return None, f"invalid: CRVAL{i} = {crval:g} is not a latitude (|value| > 90)", notes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            full = WCS(header, relax=True, fix=True)
        except Exception as exc:  # wcslib raises many types; any of them means unusable
            return None, f"invalid: astropy cannot build the WCS ({_one_line(exc)})", notes
    for w in caught:
        msg = _one_line(w.message)
        if "datfix" in msg or "'obsfix'" in msg:
            continue
        notes.append(f"WCS: {msg}")
    if not full.has_celestial:
        ct = [header.get(f"CTYPE{i}") for i in cel_axes]
        return None, f"invalid: CTYPE{cel_axes[0]}/{cel_axes[1]} = {ct!r} do not form a celestial pair", notes
    cel = full.celestial if full.naxis > 2 else full
    if full.naxis > 2 and sorted((full.wcs.lng, full.wcs.lat)) != [0, 1]:
        return None, "invalid: the celestial axes are not the first two image axes", notes
    lat = cel.wcs.lat
    crval = np.asarray(cel.wcs.crval, float)
    if not np.all(np.isfinite(crval)) or not np.all(np.isfinite(cel.wcs.crpix)):
        return None, "invalid: CRVAL/CRPIX not finite", notes
    if abs(crval[lat]) > 90.0:
        return None, f"invalid: CRVAL{lat + 1} = {crval[lat]:g} is not a latitude (|value| > 90)", notes
    try:
        matrix = np.asarray(cel.pixel_scale_matrix, float)
    except Exception as exc:
        return None, f"invalid: CD/PC matrix unusable ({_one_line(exc)})", notes
    det = np.linalg.det(matrix) if np.all(np.isfinite(matrix)) else np.nan
    scale = np.max(np.abs(matrix)) if np.all(np.isfinite(matrix)) else np.nan
    if not np.isfinite(det) or scale == 0 or abs(det) <= 1e-12 * scale**2:
        kind = "CD" if cel.wcs.has_cd() else "PC/CDELT"
        return None, f"invalid: singular {kind} matrix (det = {det:.3g})", notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cel.wcs.set()
            nx = header.get("NAXIS1") or header.get("ZNAXIS1") or 1
            ny = header.get("NAXIS2") or header.get("ZNAXIS2") or 1
            sky = cel.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)
    except Exception as exc:
        return None, f"invalid: WCS transformation fails ({_one_line(exc)})", notes
    if not np.all(np.isfinite(sky)):
        return None, "invalid: the frame centre has no sky position", notes
    return cel, "ok", notes


def _one_line(obj: Any) -> str:
    text = " ".join(str(obj).split())
    # wcslib prefixes every message with its C source location: keep the message only
    text = re.sub(r"ERROR \d+ in \w+\(\) at line \d+ of file \S+?:\s*", "", text)
    return text if len(text) <= 200 else text[:197] + "..."


def _salvage_cards(h: fits.Header, repairs: list[str]) -> None:
    """Fix or remove cards whose value astropy cannot parse (in place).

    A decimal comma ('1,5') becomes a number, an unterminated string loses its
    quote; anything else is removed. Must run before other header edits,
    because astropy silently turns such cards into text on some operations.
    """
    bad = []
    for i, card in enumerate(h.cards):
        try:
            card.value  # noqa: B018
        except Exception:  # astropy raises VerifyError/ValueError variants
            bad.append(i)
    lines: list[str] = []
    for i in reversed(bad):
        card = h.cards[i]
        # the raw 80 characters: the public .image would "fix" the card into text first
        key, image = card.keyword, getattr(card, "_image", None) or card.image
        text, _, comment = image[10:].partition(" /") if image[8:10] == "= " else ("", "", "")
        text = text.strip()
        if re.fullmatch(r"[-+]?\d+,\d+", text):
            value: Any = float(text.replace(",", "."))
        elif text.startswith("'") and text.count("'") == 1:
            value = text[1:].strip()
        else:
            lines.append(f"removed unparsable card {image.strip()[:60]!r}")
            del h[i]
            continue
        del h[i]
        h.insert(i, (key, value, comment.strip()))
        lines.append(f"{key} {text!r} -> {value!r} (non-standard value)")
    repairs.extend(reversed(lines))


def _repair(header: fits.Header) -> tuple[fits.Header, list[str], WCS | None, str, list[str]]:
    h = header.copy()
    repairs: list[str] = []

    _salvage_cards(h, repairs)

    if "RADECSYS" in h:
        if "RADESYS" not in h:
            h.rename_keyword("RADECSYS", "RADESYS")
            repairs.append("RADECSYS renamed RADESYS")
        else:
            del h["RADECSYS"]
            repairs.append("RADECSYS removed (RADESYS present)")

    if "EQUINOX" in h and isinstance(h["EQUINOX"], str):
        m = re.fullmatch(r"\s*([JB]?)(\d{4}(?:\.\d*)?)\s*", h["EQUINOX"].upper())
        if m:
            old = h["EQUINOX"]
            h["EQUINOX"] = float(m[2])
            repairs.append(f"EQUINOX {old!r} -> {float(m[2])}")
            if m[1] == "B" and "RADESYS" not in h:
                h["RADESYS"] = "FK4"
                repairs.append("RADESYS = 'FK4' added (Besselian EQUINOX)")
    if "EQUINOX" not in h and "EPOCH" in h:
        ep = _float(h["EPOCH"])
        if ep is not None and (abs(ep - 2000.0) < 1e-6 or abs(ep - 1950.0) < 1e-6):
            h["EQUINOX"] = ep
            repairs.append(f"EQUINOX = {ep:g} taken from EPOCH (old usage)")

    for key in _DATE_KEYS:
        if key in h and isinstance(h[key], str):
            raw = h[key]
            iso = parse_date(raw, file_date=key == "DATE")
            if iso is not None and iso != raw.strip():
                try:
                    Time(raw.strip(), format="fits", scale="utc")
                    ok = True
                except ValueError:
                    ok = False
                if not ok:
                    h[key] = iso
                    repairs.append(f"{key} {raw.strip()!r} -> {iso!r}")

    for key in list(h):
        if re.fullmatch(r"CTYPE\d+", key) and isinstance(h[key], str):
            fixed = _fix_ctype(h[key])
            if fixed != h[key] and fixed != h[key].strip():
                if _CEL_PREFIX.match(fixed):
                    repairs.append(f"{key} {h[key]!r} -> {fixed!r}")
                    h[key] = fixed

    cel_axes = _celestial_ctype_axes(h)
    if len(cel_axes) == 2:
        k1, k2 = (f"CTYPE{i}" for i in cel_axes)
        has_sip = "A_ORDER" in h and "B_ORDER" in h
        c1, c2 = h[k1].strip(), h[k2].strip()
        if has_sip and not (c1.endswith("-SIP") and c2.endswith("-SIP")) and c1[5:8] == "TAN" and c2[5:8] == "TAN":
            h[k1], h[k2] = c1[:8] + "-SIP", c2[:8] + "-SIP"
            repairs.append(f"{k1}/{k2} -> {h[k1]!r}/{h[k2]!r} (SIP coefficients present)")
        elif not has_sip and (c1.endswith("-SIP") or c2.endswith("-SIP")):
            h[k1], h[k2] = c1.removesuffix("-SIP"), c2.removesuffix("-SIP")
            repairs.append(f"'-SIP' removed from {k1}/{k2} (no A_ORDER/B_ORDER coefficients)")

    wcs, status, notes = check_wcs(h)
    if status.startswith("invalid"):
        dropped = [k for k in h if _WCS_PRIMARY_KEY.match(k)]
        for k in dropped:
            del h[k]
        repairs.append(f"WCS removed ({status[len('invalid: '):]}): dropped {', '.join(dropped)}")
    return h, repairs, wcs, status, notes


def repair_header(header: fits.Header) -> tuple[fits.Header, list[str]]:
    """Repaired copy of ``header`` and one line per repair.

    See the module docstring for the list of repairs. Valid WCSs (SIP, TPV,
    any wcslib projection) are never rewritten; an unusable primary celestial
    WCS is removed and the reason is in the repair line.
    """
    h, repairs, _, _, _ = _repair(header)
    return h, repairs


def pixel_scale_from_wcs(wcs: WCS) -> float:
    """Pixel scale in arcsec/px: sqrt(|det|) of the celestial CD (or PC x CDELT) matrix.

    Independent of rotation and of the CD vs PC/CDELT form; for non-square
    pixels it is the geometric mean of the two axes. SIP terms are ignored
    (they are zero at CRPIX by construction).
    """
    cel = wcs.celestial
    area = proj_plane_pixel_area(cel)  # in CUNIT^2, deg^2 after wcsset
    unit = u.Unit(cel.wcs.cunit[0] or "deg")
    return float(math.sqrt(abs(area)) * unit.to(u.arcsec))


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def _check_magic(path: Path) -> str:
    """Return the compression ('', 'gzip', 'bzip2'); raise InputError when not FITS."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(80)
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a FITS file") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if not head:
        raise InputError(f"{path}: empty file (0 bytes), not a FITS file")
    comp = ""
    if head[:2] == b"\x1f\x8b":
        comp = "gzip"
        opener = gzip.open
    elif head[:3] == b"BZh":
        comp = "bzip2"
        opener = bz2.open
    if comp:
        try:
            with opener(path, "rb") as fh:
                head = fh.read(80)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: corrupt {comp} file ({_one_line(exc)})") from None
    if not head.startswith(b"SIMPLE  ="):
        what = "text" if _looks_text(head) else "binary data"
        raise InputError(f"{path}: not a FITS file (starts with {what} {head[:20]!r}, no SIMPLE card)")
    return comp


def _looks_text(b: bytes) -> bool:
    return all(32 <= c < 127 or c in (9, 10, 13) for c in b)


def _hdu_kind(h) -> str:
    if isinstance(h, fits.CompImageHDU):
        return "compressed image"
    if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)):
        return "image"
    if isinstance(h, fits.BinTableHDU):
        return "binary table"
    if isinstance(h, fits.TableHDU):
        return "ASCII table"
    return type(h).__name__


def _image_dims(h) -> tuple[int, ...]:
    """numpy-order shape of an image HDU from its header (no data read); () if not an image."""
    if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return ()
    hdr = h.header
    n = int(hdr.get("NAXIS", 0) or 0)
    dims = tuple(int(hdr.get(f"NAXIS{k}", 0) or 0) for k in range(n, 0, -1))
    return dims if dims and all(d > 0 for d in dims) else ()


def _describe(hdul) -> str:
    parts = []
    for i, h in enumerate(hdul):
        dims = _image_dims(h)
        name = h.name or "(unnamed)"
        if dims:
            parts.append(f"{i} {name} {_hdu_kind(h)} {'x'.join(map(str, dims[::-1]))}")
        elif isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)):
            parts.append(f"{i} {name} (no data)")
        else:
            parts.append(f"{i} {name} {_hdu_kind(h)}")
    return "; ".join(parts)


def _is_usable_image(h) -> bool:
    dims = _image_dims(h)
    return len(dims) >= 2 and dims[-1] > 1 and dims[-2] > 1


def _select_hdu(hdul, hdu: int | str | None, path: Path) -> int:
    if hdu is None:
        for i, h in enumerate(hdul):
            if _is_usable_image(h):
                return i
        raise InputError(f"{path}: no 2-D image HDU (HDUs: {_describe(hdul)})")
    if isinstance(hdu, str):
        names = [h.name.upper() for h in hdul]
        if hdu.upper() not in names:
            raise InputError(f"{path}: no HDU named {hdu!r} (HDUs: {_describe(hdul)})")
        idx = names.index(hdu.upper())
    else:
        idx = int(hdu)
        if not 0 <= idx < len(hdul):
            raise InputError(
                f"{path}: HDU index {idx} out of range: file has {len(hdul)} HDU(s) ({_describe(hdul)})"
            )
    if not _is_usable_image(hdul[idx]):
        images = [str(i) for i, h in enumerate(hdul) if _is_usable_image(h)]
        where = f"images are in HDU {', '.join(images)}" if images else "the file has no 2-D image"
        h = hdul[idx]
        dims = _image_dims(h)
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and not dims:
            kind = "header-only HDU (no data)"
        elif dims:
            kind = f"{len(dims)}-D image of shape {dims}"
        else:
            kind = _hdu_kind(h)
        raise InputError(f"{path}: HDU {idx} is a {kind}, not a 2-D image; {where}")
    return idx


def _check_complete(hdul, idx: int, path: Path, comp: str) -> None:
    """Raise InputError when the data of HDU ``idx`` runs past the end of the file."""
    if comp:
        return  # the decompressor reports a short stream itself
    info = hdul.fileinfo(idx)
    if info is None:
        return
    h = hdul[idx]
    size = path.stat().st_size
    if isinstance(h, fits.CompImageHDU):
        # on-disk size of the compressed table (rows + heap) without its final padding; the
        # table header is private in astropy, so fall back to the padded span minus one block
        try:
            bt = h._bintable.header
            need = int(bt["NAXIS1"]) * int(bt["NAXIS2"]) + int(bt.get("PCOUNT", 0))
        except (AttributeError, KeyError, TypeError, ValueError):
            need = info["datSpan"] - 2879
    else:
        dims = _image_dims(h)
        need = abs(int(h.header["BITPIX"])) // 8 * int(np.prod(dims))
    if info["datLoc"] + need > size:
        raise InputError(
            f"{path}: truncated file: HDU {idx} needs {info['datLoc'] + need} bytes, file has {size}"
        )


def _inherit_primary(hdul, idx: int, header: fits.Header, notes: list[str]) -> fits.Header:
    if idx == 0 or header.get("INHERIT") is False:
        return header
    prim = hdul[0].header
    added = []
    for card in prim.cards:
        k = card.keyword
        if k in _STRUCTURAL or k in header or k.startswith("NAXIS") or _WCS_PRIMARY_KEY.match(k):
            continue
        try:
            header.append((k, card.value, card.comment), end=True)
        except Exception:  # an unparsable primary card is simply not inherited
            continue
        added.append(k)
    if added:
        shown = ", ".join(added[:8]) + (" ..." if len(added) > 8 else "")
        notes.append(f"{len(added)} keyword(s) inherited from the primary header ({shown})")
    return header


def load_frame(path, hdu: int | str | None = None) -> Frame:
    """Read one image plane of a FITS file as float32, with a repaired header and WCS.

    Parameters
    ----------
    path : str or Path
        ``.fits``/``.fit``/``.fts``, ``.fits.gz``, ``.fits.bz2`` or tile-compressed ``.fz``.
    hdu : int, str or None
        HDU index (0 = primary) or EXTNAME; default: the first HDU holding a
        2-D or larger image (primary or extension, compressed or not).

    Returns
    -------
    Frame
        ``data`` float32 physical values; for cubes the first plane
        (``data[0]``, or ``[0, 0]`` for 4-D), said in ``notes``.

    Raises
    ------
    InputError
        Not a FITS file, truncated or corrupt, no image HDU, HDU index out of
        range or not an image, all pixels NaN/Inf, or a constant image.
    """
    path = Path(path)
    comp = _check_magic(path)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=not comp, do_not_scale_image_data=True, lazy_load_hdus=False)
        except (OSError, ValueError, EOFError, IndexError, TypeError) as exc:
            # the SIMPLE card was there, so a failure here is a cut or damaged file
            raise InputError(f"{path}: truncated or corrupt FITS file ({_one_line(exc)})") from None
    trunc = [w for w in caught if "truncat" in str(w.message).lower()]
    try:
        idx = _select_hdu(hdul, hdu, path)
        h = hdul[idx]
        # copy and salvage first: fileinfo() below renders the header, which makes astropy
        # silently turn unparsable cards into text
        header = h.header.copy()
        pre_repairs: list[str] = []
        _salvage_cards(header, pre_repairs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # fileinfo() re-verifies the original cards
            _check_complete(hdul, idx, path, comp)
        if trunc:
            # the size check above passed: only the final padding or a later HDU is missing
            notes.append(f"file shorter than its FITS layout but HDU {idx} is complete: {_one_line(trunc[0].message)}")
        try:
            raw = h.data
        except (OSError, ValueError, EOFError, TypeError, IndexError) as exc:
            raise InputError(_unreadable(path, idx, exc)) from None
        if raw is None:
            raise InputError(f"{path}: HDU {idx} has no pixel data")
        if raw.ndim > 2:
            lead = raw.shape[:-2]
            raw = raw[(0,) * len(lead)]
            notes.append(
                f"{len(lead) + 2}-D data {'x'.join(map(str, h.data.shape[::-1]))}: using the first plane"
                f" ({'x'.join(map(str, raw.shape[::-1]))})"
            )
        try:
            data = np.array(raw, dtype=np.float32)  # the one conversion; from a memmap this reads the plane once
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(_unreadable(path, idx, exc)) from None
        if isinstance(h, fits.CompImageHDU):
            method = getattr(h, "compression_type", None) or "unknown method"
            notes.append(f"tile-compressed HDU ({method}) decompressed")
        if comp:
            notes.append(f"{comp}-compressed file decompressed in memory")
        bscale = _float(header.get("BSCALE", 1.0)) or 1.0
        bzero = _float(header.get("BZERO", 0.0)) or 0.0
        if np.issubdtype(raw.dtype, np.integer):
            blank = header.get("BLANK")
            if isinstance(blank, int) and not isinstance(blank, bool):
                bad = raw == blank
                if bad.any():
                    data[bad] = np.nan
                    notes.append(f"{int(bad.sum())} BLANK pixel(s) set to NaN")
            if bscale != 1.0 or bzero != 0.0:
                notes.append(f"{raw.dtype.name} data scaled with BSCALE={bscale:g} BZERO={bzero:g} to float32")
        if bscale != 1.0:
            data *= np.float32(bscale)
        if bzero != 0.0:
            data += np.float32(bzero)
        header = _inherit_primary(hdul, idx, header, notes)
    finally:
        hdul.close()

    for k in ("BSCALE", "BZERO", "BLANK"):
        header.remove(k, ignore_missing=True, remove_all=True)
    header["BITPIX"] = -32
    if header.get("NAXIS", 2) > 2:
        for k in range(3, int(header["NAXIS"]) + 1):
            header.remove(f"NAXIS{k}", ignore_missing=True)
        header["NAXIS"] = 2

    _check_values(data, path, idx)
    header, repairs, wcs, status, wnotes = _repair(header)
    repairs = pre_repairs + repairs
    notes.extend(wnotes)
    return Frame(path=path, hdu=idx, data=data, header=header, wcs=wcs, wcs_status=status, repairs=repairs, notes=notes)


def _unreadable(path: Path, idx: int, exc: Exception) -> str:
    return f"{path}: cannot read the pixel data of HDU {idx}, truncated or corrupt ({_one_line(exc)})"


def _check_values(data: np.ndarray, path: Path, idx: int) -> None:
    # fmin/fmax skip NaN without building a mask: one cheap pass each
    lo = float(np.fmin.reduce(data, axis=None))
    hi = float(np.fmax.reduce(data, axis=None))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        finite = np.isfinite(data)
        if not finite.any():
            raise InputError(f"{path}: HDU {idx}: all {data.size} pixels are NaN/Inf, nothing to measure")
        lo, hi = float(data[finite].min()), float(data[finite].max())
    if lo == hi:
        raise InputError(f"{path}: HDU {idx}: constant image (every valid pixel = {lo:g}), nothing to measure")


# ----------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------

_TIME_KEYS = ("TIME-OBS", "UT", "UTSTART", "UT-START")


def _timescale(header: fits.Header) -> str:
    ts = str(header.get("TIMESYS", "UTC")).strip().lower()
    return ts if ts in ("utc", "tai", "tt", "tdb", "tcg", "tcb") else "utc"


def _read_time(header: fits.Header) -> tuple[Time | None, str, bool]:
    """(time, source, is_start). Fallback order, first hit wins:

    1. DATE-AVG, then MJD-AVG: already mid-exposure;
    2. DATE-OBS with a time of day; DATE-OBS with only a date + TIME-OBS, UT,
       UTSTART or UT-START;
    3. DATE-BEG; 4. MJD-OBS; 5. JD / JD-OBS (start);
    6. DATE-OBS date only (00:00 UT assumed, not good enough for airmass);
    7. DATE (file creation date: an upper bound, flagged as such).
    """
    scale = _timescale(header)

    def mk(val, fmt):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ERFA 'dubious year' for pre-1960 plates
            return Time(val, format=fmt, scale=scale).utc

    iso = parse_date(header.get("DATE-AVG"))
    if iso and "T" in iso:
        return mk(iso, "isot"), "header DATE-AVG (mid-exposure)", False
    k, v = _first(header, ["MJD-AVG"], lambda x: 0 < x < 100000)
    if k:
        return mk(v, "mjd"), "header MJD-AVG (mid-exposure)", False
    iso = parse_date(header.get("DATE-OBS"))
    if iso and "T" in iso:
        return mk(iso, "isot"), "header DATE-OBS", True
    if iso:
        tk, secs = _first(header, _TIME_KEYS, parse=_parse_time_of_day)
        if tk:
            t = mk(iso, "iso") + secs * u.s
            return t, f"header DATE-OBS + {tk}", True
    iso_beg = parse_date(header.get("DATE-BEG"))
    if iso_beg and "T" in iso_beg:
        return mk(iso_beg, "isot"), "header DATE-BEG", True
    k, v = _first(header, ["MJD-OBS", "MJD-BEG"], lambda x: 0 < x < 100000)
    if k:
        return mk(v, "mjd"), f"header {k}", True
    k, v = _first(header, ["JD", "JD-OBS", "JD_OBS"], lambda x: 2.4e6 < x < 2.6e6)
    if k:
        return mk(v, "jd"), f"header {k}", True
    if iso:
        return mk(iso, "iso"), "header DATE-OBS (date only, 00:00 assumed)", True
    iso = parse_date(header.get("DATE"), file_date=True)
    if iso:
        return mk(iso, "isot" if "T" in iso else "iso"), "header DATE (file creation date, not the observation)", False
    return None, "not in header (DATE-AVG, DATE-OBS, TIME-OBS/UT, DATE-BEG, MJD-OBS, JD, DATE)", False


def _read_exptime(header: fits.Header) -> tuple[float | None, str]:
    """EXPTIME, then EXPOSURE, then ITIME (s; a comment saying minutes or ms converts)."""
    for k in ("EXPTIME", "EXPOSURE", "ITIME"):
        if k not in header:
            continue
        v = _float(header[k])
        if v is None or v < 0:
            continue
        comment = header.comments[k].lower()
        if re.search(r"\bmin(ute)?s?\b", comment):
            return v * 60.0, f"header {k} (minutes per comment, x60)"
        if re.search(r"\b(ms|msec|millisec\w*)\b", comment):
            return v / 1000.0, f"header {k} (ms per comment, /1000)"
        return v, f"header {k}"
    return None, "not in header (EXPTIME, EXPOSURE, ITIME)"


def _read_site(header: fits.Header, obs: ObservatorySettings) -> tuple[EarthLocation | None, str]:
    """SITELAT/SITELONG/SITEELEV, LAT-OBS/LONG-OBS/ALT-OBS, OBSGEO-B/L/H, OBSGEO-X/Y/Z,
    else the profile's observatory when its latitude and longitude are not both 0.

    Longitudes are east positive (degrees or sexagesimal, 'W' suffix = west).
    A missing height is taken as 0 m (said in the source).
    """
    for klat, klon, kel in (("SITELAT", "SITELONG", "SITEELEV"), ("LAT-OBS", "LONG-OBS", "ALT-OBS"),
                            ("OBSGEO-B", "OBSGEO-L", "OBSGEO-H")):
        if klat in header and klon in header:
            lat, lon = _parse_angle(header[klat]), _parse_angle(header[klon])
            if lat is None or lon is None or abs(lat) > 90 or not -180 <= lon <= 360:
                continue
            el = _float(header.get(kel))
            src = f"header {klat}/{klon}" + (f"/{kel}" if el is not None else f" (no {kel}: height 0 m)")
            return EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, (el or 0.0) * u.m), src
    xyz = [_float(header.get(f"OBSGEO-{c}")) for c in "XYZ"]
    if all(v is not None for v in xyz) and 6.2e6 < math.sqrt(sum(v * v for v in xyz)) < 6.5e6:
        return EarthLocation.from_geocentric(*xyz, unit=u.m), "header OBSGEO-X/Y/Z"
    if obs.latitude != 0.0 or obs.longitude != 0.0:
        name = f" '{obs.name}'" if obs.name else ""
        return (
            EarthLocation.from_geodetic(obs.longitude * u.deg, obs.latitude * u.deg, obs.elevation * u.m),
            f"profile observatory{name}",
        )
    return None, "not in header (SITELAT/SITELONG, LAT-OBS/LONG-OBS, OBSGEO-*) nor in the profile"


def _read_pointing(header: fits.Header, wcs: WCS | None, shape) -> tuple[float | None, float | None, str]:
    """RA/DEC (deg, or sexagesimal strings in hours/deg), then OBJCTRA/OBJCTDEC,
    then the sky position of the frame centre through a valid WCS.

    The WCS fallback uses the frame centre rather than CRVAL because CRPIX may
    lie far outside the frame (mosaic cut-outs) and CRVAL may be galactic.
    An EQUINOX of 1950 makes RA/DEC FK4 B1950 and they are converted to ICRS.
    """
    for kra, kdec in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC")):
        if kra in header and kdec in header:
            vra = header[kra]
            hours = isinstance(vra, str) and not re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", vra)
            if not isinstance(vra, str) and re.search(r"\bhours?\b|\[h\]", header.comments[kra].lower()):
                hours = True
            ra, dec = _parse_angle(vra, hours=hours), _parse_angle(header[kdec])
            if ra is None or dec is None or not 0 <= ra < 360.0 + 1e-9 or abs(dec) > 90:
                continue
            src = f"header {kra}/{kdec}" + (" (sexagesimal)" if isinstance(vra, str) and hours else "")
            eq = _float(header.get("EQUINOX"))
            if eq is not None and abs(eq - 1950.0) < 1e-6:
                c = SkyCoord(ra * u.deg, dec * u.deg, frame="fk4", equinox="B1950").icrs
                ra, dec = float(c.ra.deg), float(c.dec.deg)
                src += ", FK4 B1950 -> ICRS"
            return ra % 360.0, dec, src
    if wcs is not None:
        ny, nx = shape
        c = wcs.celestial.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
        if isinstance(c, SkyCoord):
            c = c.icrs
            return float(c.ra.deg), float(c.dec.deg), "WCS, sky position of the frame centre"
    return None, None, "not in header (RA/DEC, OBJCTRA/OBJCTDEC) and no valid WCS"


def _read_pixel_scale(header: fits.Header, wcs: WCS | None, obs: ObservatorySettings) -> tuple[float | None, str]:
    """WCS (sqrt|det CD|), then PIXSCALE/SECPIX/SECPIX1/PIXSCAL1, then DSS
    PLTSCALE (arcsec/mm) x XPIXELSZ (um), then 206.265 x pixel size (um) /
    focal length (mm): header XPIXSZ (already binned, MaxIm convention) or
    profile pixel_size_um x XBINNING; header FOCALLEN or profile focal length.
    """
    if wcs is not None:
        return pixel_scale_from_wcs(wcs), "WCS (sqrt |det| of the CD/PC matrix)"
    k, v = _first(header, ["PIXSCALE", "SECPIX", "SECPIX1", "PIXSCAL1"], lambda x: 0 < x < 3600)
    if k:
        return v, f"header {k}"
    plt, xps = _float(header.get("PLTSCALE")), _float(header.get("XPIXELSZ"))
    if plt and xps and plt > 0 and xps > 0:
        return plt * xps / 1000.0, "header PLTSCALE x XPIXELSZ (photographic plate scan)"
    binning = _float(header.get("XBINNING")) or 1.0
    px, px_src = _float(header.get("XPIXSZ")), "header XPIXSZ"
    if (not px or px <= 0) and obs.pixel_size_um > 0:
        px, px_src = obs.pixel_size_um * binning, f"profile pixel_size_um x XBINNING {binning:g}"
    fl, fl_src = _float(header.get("FOCALLEN")), "header FOCALLEN"
    if (not fl or fl <= 0) and obs.focal_length_mm > 0:
        fl, fl_src = obs.focal_length_mm, "profile focal_length_mm"
    if px and px > 0 and fl and fl > 0:
        return 206.265 * px / fl, f"206.265 x {px_src} / {fl_src}"
    return None, "no WCS, no PIXSCALE/SECPIX, no pixel size and focal length (header or profile)"


def compute_airmass(site: EarthLocation, time: Time, ra: float, dec: float) -> tuple[float | None, float]:
    """Airmass sec(z) of ICRS (ra, dec) deg seen from ``site`` at ``time``.

    Uses astropy AltAz without refraction and without any download: IERS
    tables bundled with astropy, stale predictions accepted, and UT1 = UTC
    outside the tables (|UT1-UTC| < 0.9 s changes the airmass by < 1e-4).

    Returns
    -------
    airmass : float or None
        sec(z) (plane-parallel, within 1% of refined formulas below X = 3);
        None when the target is below the horizon.
    alt_deg : float
        Altitude in degrees.
    """
    coord = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
                iers.conf.set_temp("iers_degraded_accuracy", "ignore"):
            t = Time(time)
            try:
                aa = coord.transform_to(AltAz(obstime=t, location=site))
            except (ValueError, IndexError, iers.IERSRangeError):
                t.delta_ut1_utc = 0.0
                aa = coord.transform_to(AltAz(obstime=t, location=site))
    alt = float(aa.alt.deg)
    if alt <= 0:
        return None, alt
    return float(1.0 / math.sin(math.radians(alt))), alt


def read_metadata(frame: Frame, observatory: ObservatorySettings) -> ObservationMeta:
    """Observation metadata of ``frame`` with documented fallbacks.

    Fallback orders (first hit wins; ``sources[field]`` names the hit, or why
    the value is None):

    - date_obs: see :func:`_read_time` (DATE-AVG, DATE-OBS [+TIME-OBS/UT],
      DATE-BEG, MJD-OBS, JD, DATE); a start time is moved to mid-exposure by
      + exptime/2 when the exposure time is known.
    - exptime: EXPTIME, EXPOSURE, ITIME (seconds; comments saying minutes/ms
      are honoured, e.g. DSS 'EXPOSURE = 50 / Exposure time minutes').
    - filter: FILTER, FILTNAME, BAND.
    - gain: GAIN, EGAIN, CCDGAIN (> 0), else profile ``observatory.gain`` if > 0.
    - read_noise: RDNOISE, READNOIS, RON (>= 0), else profile if > 0.
    - saturation: SATURATE, SATLEVEL, DATAMAX, else profile if > 0, else None
      (estimating it from the data is the detection stage's business).
    - site: :func:`_read_site`.
    - ra/dec: :func:`_read_pointing`.
    - pixel_scale: :func:`_read_pixel_scale`.
    - airmass: AIRMASS (or SECZ) if 1 <= X <= 40, else computed with
      :func:`compute_airmass` from site, time (a real time of day, not the
      file date) and pointing, else None.
    - object: OBJECT, OBJNAME.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # pre-1960 plates: 'dubious year' from ERFA
        return _read_metadata(frame, observatory)


def _read_metadata(frame: Frame, observatory: ObservatorySettings) -> ObservationMeta:
    h = frame.header
    m = ObservationMeta()
    src = m.sources

    m.exptime, src["exptime"] = _read_exptime(h)

    t, tsrc, is_start = _read_time(h)
    if t is not None and is_start and m.exptime is not None and m.exptime > 0:
        t = t + (m.exptime / 2.0) * u.s
        tsrc += " + exptime/2 (mid-exposure)"
    elif t is not None and is_start:
        tsrc += " (exposure start: exposure time unknown)"
    m.date_obs, src["date_obs"] = t, tsrc

    k, v = _first(h, ["FILTER", "FILTNAME", "BAND"], bool, parse=_text)
    m.filter, src["filter"] = (v, f"header {k}") if k else (None, "not in header (FILTER, FILTNAME, BAND)")

    def header_or_profile(keys, prof_value, prof_name, test):
        k, v = _first(h, keys, test)
        if k:
            return v, f"header {k}"
        if prof_value and prof_value > 0:
            return float(prof_value), f"profile observatory.{prof_name}"
        return None, f"not in header ({', '.join(keys)}) nor in the profile"

    m.gain, src["gain"] = header_or_profile(["GAIN", "EGAIN", "CCDGAIN"], observatory.gain, "gain", lambda x: x > 0)
    m.read_noise, src["read_noise"] = header_or_profile(
        ["RDNOISE", "READNOIS", "RON"], observatory.read_noise, "read_noise", lambda x: x >= 0)
    m.saturation, src["saturation"] = header_or_profile(
        ["SATURATE", "SATLEVEL", "DATAMAX"], observatory.saturation, "saturation", lambda x: x > 0)
    if src["saturation"] == "header DATAMAX":
        src["saturation"] += " (maximum data value, may lie below the true saturation)"

    m.site, src["site"] = _read_site(h, observatory)
    m.ra, m.dec, src["ra"] = _read_pointing(h, frame.wcs, frame.data.shape)
    src["dec"] = src["ra"]
    m.pixel_scale, src["pixel_scale"] = _read_pixel_scale(h, frame.wcs, observatory)

    k, v = _first(h, ["AIRMASS", "SECZ"])
    if k and 1.0 <= v <= 40.0:
        m.airmass, src["airmass"] = v, f"header {k}"
    else:
        why = f"header {k} = {v:g} implausible; " if k else ""
        if m.site is None:
            src["airmass"] = why + "not computed: no site"
        elif m.date_obs is None or "00:00 assumed" in tsrc or "file creation" in tsrc:
            src["airmass"] = why + "not computed: no usable observation time"
        elif m.ra is None:
            src["airmass"] = why + "not computed: no pointing"
        else:
            m.airmass, alt = compute_airmass(m.site, m.date_obs, m.ra, m.dec)
            if m.airmass is None:
                src["airmass"] = why + f"not computed: target below the horizon (alt {alt:.1f} deg)"
            else:
                when = "mid-exposure time" if "mid" in tsrc else "time"
                src["airmass"] = why + f"computed sec(z) from site, {when} and pointing (alt {alt:.2f} deg)"

    k, v = _first(h, ["OBJECT", "OBJNAME"], bool, parse=_text)
    m.object, src["object"] = (v, f"header {k}") if k else (None, "not in header (OBJECT, OBJNAME)")
    return m


# ----------------------------------------------------------------------------
# quick look for the file browser
# ----------------------------------------------------------------------------


def header_summary(path) -> dict[str, Any]:
    """Key facts of a FITS file from its headers only (no pixel data read).

    Returns a dict with ``path``, ``size_bytes``, ``n_hdus``, ``hdu`` (first
    image HDU or None), ``shape`` (numpy order), ``bitpix``, ``compressed``,
    ``object``, ``filter``, ``exptime`` (s), ``date_obs`` (string as in the
    header, normalised when odd), ``has_wcs`` (a usable celestial WCS),
    ``wcs_status`` and ``error`` (None, or the one-line reason the file cannot
    be used). Never raises for a bad file: the browser shows ``error``.
    """
    path = Path(path)
    out: dict[str, Any] = {
        "path": str(path), "size_bytes": None, "n_hdus": 0, "hdu": None, "shape": None, "bitpix": None,
        "compressed": False, "object": None, "filter": None, "exptime": None, "date_obs": None,
        "has_wcs": False, "wcs_status": None, "error": None,
    }
    try:
        comp = _check_magic(path)
        out["size_bytes"] = path.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=not comp, lazy_load_hdus=True) as hdul:
                out["n_hdus"] = len(hdul)
                idx = next((i for i, h in enumerate(hdul) if _is_usable_image(h)), None)
                if idx is None:
                    out["error"] = f"no 2-D image HDU (HDUs: {_describe(hdul)})"
                    return out
                h = hdul[idx]
                header = h.header.copy()
                _salvage_cards(header, [])
                out.update(hdu=idx, shape=_image_dims(h), bitpix=int(header.get("BITPIX", 0)),
                           compressed=bool(comp) or isinstance(h, fits.CompImageHDU))
                try:
                    _check_complete(hdul, idx, path, comp)  # sizes only, no pixel read
                except InputError as exc:
                    out["error"] = str(exc).removeprefix(f"{path}: ")
                header = _inherit_primary(hdul, idx, header, [])
        obj = header.get("OBJECT")
        out["object"] = str(obj).strip() if obj is not None else None
        k, v = _first(header, ["FILTER", "FILTNAME", "BAND"], bool, parse=_text)
        out["filter"] = v
        out["exptime"], _ = _read_exptime(header)
        for key in ("DATE-OBS", "DATE-BEG", "DATE-AVG"):
            if key in header:
                iso = parse_date(header[key])
                if iso and "T" not in iso:
                    tk, secs = _first(header, _TIME_KEYS, parse=_parse_time_of_day)
                    if tk:
                        hh, rest = divmod(secs, 3600)
                        iso += f"T{int(hh):02d}:{int(rest // 60):02d}:{rest % 60:04.1f}"
                out["date_obs"] = iso or str(header[key]).strip()
                break
        _, _, _, status, _ = _repair(header)
        out["wcs_status"] = status
        out["has_wcs"] = status == "ok"
    except InputError as exc:
        out["error"] = str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # the browser must survive any file
        out["error"] = f"unreadable ({_one_line(exc)})"
    return out
