"""Header repair that keeps every valid WCS, and the check that a header's WCS is usable.

Edits cards in place and never rebuilds the header from a WCS object, so SIP,
TPV/PV, non-TAN projections (e.g. galactic CAR) and alternate WCSs survive
untouched. Each change is one line in ``Frame.repairs``:

- unparsable cards are removed;
- ``RADECSYS`` -> ``RADESYS``; ``EPOCH`` copied to ``EQUINOX`` when EQUINOX is
  missing and EPOCH is 1950 or 2000; string ``EQUINOX`` ('J2000') -> number;
- dates (:data:`.keywords.REPAIRED_DATE_KEYS`: DATE-OBS, DATE-AVG, DATE-END...) in odd formats
  ('29/11/51', '2025/01/02 03:04:05', trailing 'Z') -> ISO 8601;
- malformed celestial CTYPE padding ('RA--TAN', lower case) -> standard;
  SIP coefficients without '-SIP' (or '-SIP' without coefficients) made
  consistent;
- a celestial WCS that is truly unusable (unknown projection, singular CD/PC
  matrix, |CRVAL lat| > 90, non-finite values, astropy/wcslib refuses it) is
  removed (the primary WCS keywords only), with the reason in ``wcs_status``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from .keywords import REPAIRED_DATE_KEYS, one_line, parse_date, parse_float

_CEL_PREFIX = re.compile(r"^(RA|DEC|[GESH]LON|[GESH]LAT|[A-Z]{2}LN|[A-Z]{2}LT)-*")
WCS_PRIMARY_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d+|CRVAL\d+|CRPIX\d+|CDELT\d+|CUNIT\d+|CROTA\d+|CRDER\d+|CSYER\d+|CNAME\d+|"
    r"CD\d+_\d+|PC\d+_\d+|PV\d+_\d+|PS\d+_\d+|LONPOLE|LATPOLE|WCSNAME|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+)$"
)
STRUCTURAL_KEYS = {
    "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER",
    "EXTLEVEL", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "INHERIT",
    "END", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZTENSION",
}


def copy_cards(src: fits.Header, dst: fits.Header, skip=(), only_new: bool = False) -> list[str]:
    """Append ``src``'s cards to ``dst``, leaving out the structural, NAXIS and primary WCS keywords,
    those in ``skip`` and, with ``only_new``, those ``dst`` already has; an unparsable card is
    left out too. Returns the keywords copied."""
    added = []
    for card in src.cards:
        k = card.keyword
        if k in STRUCTURAL_KEYS or k.startswith("NAXIS") or WCS_PRIMARY_KEY.match(k) or k in skip \
                or (only_new and k in dst):
            continue
        try:
            dst.append((k, card.value, card.comment), end=True)
        except Exception:  # noqa: BLE001 - a card astropy cannot parse is not copied
            continue
        added.append(k)
    return added


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


def wcs_from_header(header: fits.Header) -> tuple[WCS | None, str, list[str]]:
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
        crval = parse_float(header.get(f"CRVAL{i}", 0.0))
        if crval is None:
            return None, f"invalid: CRVAL{i} = {header.get(f'CRVAL{i}')!r} is not a finite number", notes
        if re.match(r"^(DEC|[A-Z]LAT|[A-Z]{2}LT)-", ctype) and abs(crval) > 90.0:
            return None, f"invalid: CRVAL{i} = {crval:g} is not a latitude (|value| > 90)", notes
    header = _without_unreadable_plate_solution(header, notes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            full = WCS(header, relax=True, fix=True)
        except Exception as exc:  # wcslib raises many types; any of them means unusable
            plate = [k for k in header if _PLATE_SOLUTION.fullmatch(k)]
            if not plate:
                return None, f"invalid: astropy cannot build the WCS ({one_line(exc)})", notes
            # a partial or damaged DSS plate solution (XPIXELSZ alone: "coefficient scale for DSS is
            # zero") must not cost the FITS WCS beside it: built again from the FITS keywords alone
            try:
                full = WCS(_without(header, plate), relax=True, fix=True)
            except Exception:  # noqa: BLE001 - the FITS keywords are the trouble: say what astropy said first
                return None, f"invalid: astropy cannot build the WCS ({one_line(exc)})", notes
            notes.append(f"WCS built from the FITS keywords without the DSS plate solution ({', '.join(plate[:6])}"
                         f"{', ...' if len(plate) > 6 else ''}: {one_line(exc)})")
    for w in caught:
        msg = one_line(w.message)
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
        return None, f"invalid: CD/PC matrix unusable ({one_line(exc)})", notes
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
        return None, f"invalid: WCS transformation fails ({one_line(exc)})", notes
    if not np.all(np.isfinite(sky)):
        return None, "invalid: the frame centre has no sky position", notes
    return cel, "ok", notes


#: the DSS plate solution's numeric keywords, which wcslib's header parser reads whatever the CTYPEs say
_PLATE_SOLUTION = re.compile(r"PLTRA[HMS]|PLTDEC[DMS]|PLTSCALE|[XY]PIXELSZ|CNPIX[12]|PPO[1-6]|AMD[XY]\d+")


def _without_unreadable_plate_solution(header: fits.Header, notes: list[str]) -> fits.Header:
    """``header``, or a copy without the DSS plate-solution keywords whose value is not a number.

    astropy 8's ``WCS()`` (wcslib's header parser) ends the whole process with a segmentation fault
    on a text value in most of them (``XPIXELSZ = 'x'``, ``PLTRAH``, ``CNPIX1``, ``PPO3``, ``AMDX1``,
    measured), even beside a valid FITS WCS: a damaged plate header must cost its plate solution,
    not the run or the app. The WCS is built from the copy; the header itself is left as it is.
    """
    bad = [k for k, v in header.items() if _PLATE_SOLUTION.fullmatch(k) and (isinstance(v, (str, bool)) or v is None)]
    if not bad:
        return header
    notes.append("WCS built without " + ", ".join(f"{k} = {header[k]!r}" for k in bad)
                 + " (DSS plate-solution keywords that are not numbers: astropy cannot read the WCS beside them)")
    return _without(header, bad)


def _without(header: fits.Header, keys) -> fits.Header:
    """A copy of ``header`` without the cards ``keys`` (every card of each)."""
    header = header.copy()
    for k in keys:
        header.remove(k, remove_all=True)
    return header


def salvage_cards(h: fits.Header, repairs: list[str]) -> None:
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


def repair_and_check(header: fits.Header) -> tuple[fits.Header, list[str], WCS | None, str, list[str]]:
    h = header.copy()
    repairs: list[str] = []

    salvage_cards(h, repairs)

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
        ep = parse_float(h["EPOCH"])
        if ep is not None and (abs(ep - 2000.0) < 1e-6 or abs(ep - 1950.0) < 1e-6):
            h["EQUINOX"] = ep
            repairs.append(f"EQUINOX = {ep:g} taken from EPOCH (old usage)")

    for key in REPAIRED_DATE_KEYS:
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

    wcs, status, notes = wcs_from_header(h)
    if status.startswith("invalid"):
        dropped = [k for k in h if WCS_PRIMARY_KEY.match(k)]
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
    h, repairs, _, _, _ = repair_and_check(header)
    return h, repairs
