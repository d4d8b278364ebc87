"""Frames of one field: grouped by pointing, so the first of each fetches the reference catalogue for the rest."""

from __future__ import annotations

import math
from pathlib import Path

from .worker import num

#: frames whose pointings are closer than this share a field (and a reference catalogue)
FIELD_RADIUS_DEG = 0.25


def pointing(path: Path) -> tuple[float, float] | str | None:
    """Pointing (deg) from the primary/first image header, else OBJECT, else None."""
    try:
        import warnings

        from astropy.io import fits

        # a damaged frame is its own run's to report (exit 3); here it only has no pointing
        with warnings.catch_warnings(), fits.open(path, lazy_load_hdus=True) as hdul:
            warnings.simplefilter("ignore")
            header = None
            for hdu in hdul:
                if hdu.header.get("NAXIS", 0) >= 2 or "CRVAL1" in hdu.header or "RA" in hdu.header:
                    header = hdu.header
                    break
            header = header if header is not None else hdul[0].header
    except Exception:
        return None
    ctype = str(header.get("CTYPE1", ""))
    if ctype.startswith("RA") and num(header.get("CRVAL1")) is not None and num(header.get("CRVAL2")) is not None:
        return float(header["CRVAL1"]), float(header["CRVAL2"])
    for rk, dk in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"), ("RA_OBJ", "DEC_OBJ")):
        ra, dec = header.get(rk), header.get(dk)
        if ra is None or dec is None:
            continue
        if num(ra) is not None and num(dec) is not None:
            return float(ra), float(dec)
        try:
            from astropy import units as u
            from astropy.coordinates import SkyCoord

            c = SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg))
            return float(c.ra.deg), float(c.dec.deg)
        except Exception:
            continue
    obj = str(header.get("OBJECT", "")).strip()
    return obj or None


def group_fields(frames: list[Path], radius_deg: float = FIELD_RADIUS_DEG) -> list[str]:
    """A field label per frame: ``"F1"``, ``"F2"``... by pointing, ``""`` when unknown."""
    centres: list[tuple[float, float]] = []
    names: dict[str, str] = {}
    labels = []
    for path in frames:
        pt = pointing(path)
        if pt is None:
            labels.append("")
        elif isinstance(pt, str):
            labels.append(names.setdefault(pt, f"F{len(centres) + len(names) + 1}"))
        else:
            ra, dec = pt
            label = ""
            for i, (ra0, dec0) in enumerate(centres):
                cosd = math.sin(math.radians(dec)) * math.sin(math.radians(dec0)) + \
                    math.cos(math.radians(dec)) * math.cos(math.radians(dec0)) * math.cos(math.radians(ra - ra0))
                if math.degrees(math.acos(max(-1.0, min(1.0, cosd)))) <= radius_deg:
                    label = f"F{i + 1}"
                    break
            if not label:
                centres.append((ra, dec))
                label = f"F{len(centres)}"
            labels.append(label)
    return labels
