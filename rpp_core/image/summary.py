"""Key facts of a FITS file for the file browser, from its headers only."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from astropy.io import fits

from ..errors import InputError
from .header import repair_and_check, salvage_cards
from .keywords import START_DATES, TIME_KEYS, first_key, one_line, parse_date, parse_text, parse_time_of_day
from .load import check_complete, check_magic, describe_hdus, image_dims, inherit_primary, is_usable_image
from .metadata import read_exptime


def header_summary(path) -> dict[str, Any]:
    """Key facts of a FITS file from its headers only (no pixel data read).

    Returns a dict with ``path``, ``size_bytes``, ``n_hdus``, ``hdu`` (first
    image HDU or None), ``shape`` (numpy order), ``bitpix``, ``compressed``,
    ``object``, ``filter``, ``exptime`` (s), ``date_obs`` (string as in the
    header, normalised when odd), ``has_wcs`` (a usable celestial WCS),
    ``wcs_status``, ``header`` (the repaired header, primary keywords
    inherited; None when unreadable), ``wcs`` (its checked celestial WCS or
    None), ``n_images`` (image HDUs in the file) and ``error`` (None, or the
    one-line reason the file cannot be used). Never raises for a bad file: the
    browser shows ``error``.
    """
    path = Path(path)
    out: dict[str, Any] = {
        "path": str(path), "size_bytes": None, "n_hdus": 0, "hdu": None, "shape": None, "bitpix": None,
        "compressed": False, "object": None, "filter": None, "exptime": None, "date_obs": None,
        "has_wcs": False, "wcs_status": None, "header": None, "wcs": None, "n_images": 0, "error": None,
    }
    try:
        comp = check_magic(path)
        out["size_bytes"] = path.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=not comp, lazy_load_hdus=True) as hdul:
                out["n_hdus"] = len(hdul)
                out["n_images"] = sum(1 for h in hdul if is_usable_image(h))
                idx = next((i for i, h in enumerate(hdul) if is_usable_image(h)), None)
                if idx is None:
                    out["error"] = f"no 2-D image HDU (HDUs: {describe_hdus(hdul)})"
                    return out
                h = hdul[idx]
                header = h.header.copy()
                salvage_cards(header, [])
                out.update(hdu=idx, shape=image_dims(h), bitpix=int(header.get("BITPIX", 0)),
                           compressed=bool(comp) or isinstance(h, fits.CompImageHDU))
                try:
                    check_complete(hdul, idx, path, comp)  # sizes only, no pixel read
                except InputError as exc:
                    out["error"] = str(exc).removeprefix(f"{path}: ")
                header = inherit_primary(hdul, idx, header, [])
        obj = header.get("OBJECT")
        out["object"] = str(obj).strip() if obj is not None else None
        k, v = first_key(header, ["FILTER", "FILTNAME", "BAND"], bool, parse=parse_text)
        out["filter"] = v
        out["exptime"], _ = read_exptime(header)
        for tk in START_DATES:
            key = tk.key
            if key in header:
                iso = parse_date(header[key])
                if iso and "T" not in iso and tk.time_of_day:
                    time_key, secs = first_key(header, TIME_KEYS, parse=parse_time_of_day)
                    if time_key:
                        hh, rest = divmod(secs, 3600)
                        iso += f"T{int(hh):02d}:{int(rest // 60):02d}:{rest % 60:04.1f}"
                out["date_obs"] = iso or str(header[key]).strip()
                break
        header, _, wcs, status, _ = repair_and_check(header)
        out.update(header=header, wcs=wcs if status == "ok" else None, wcs_status=status, has_wcs=status == "ok")
    except InputError as exc:
        out["error"] = str(exc).removeprefix(f"{path}: ")
    except Exception as exc:  # the browser must survive any file
        out["error"] = f"unreadable ({one_line(exc)})"
    return out
