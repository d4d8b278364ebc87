"""Loading one image plane of a FITS file: file checks, HDU choice, scaling, header repair.

Uncompressed files are memory-mapped and converted to float32 once (a plane of
a cube is sliced from the memmap before the conversion, so only that plane is
read). ``.fits.gz`` is decompressed by astropy in memory; tile-compressed
``.fz`` (CompImageHDU) is decompressed by astropy. Keywords of the primary
header missing from an image extension are inherited (INHERIT convention,
unless ``INHERIT = F``). Raw frames are corrected here (:mod:`.raw`): overscan
subtracted and trimmed, or amplifier extensions assembled into one image.
"""

from __future__ import annotations

import bz2
import gzip
import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from ..errors import InputError
from ..products import Frame
from .header import copy_cards, repair_and_check, salvage_cards
from .keywords import one_line
from .raw import amplifier_extensions, assemble_amplifiers, subtract_overscan_and_trim, to_physical

try:  # cfitsio's errors on a damaged compressed tile derive from Exception only
    from astropy.io.fits.hdu.compressed._compression import CfitsioException
except ImportError:  # pragma: no cover - another astropy layout
    class CfitsioException(Exception):
        pass


def check_magic(path: Path) -> str:
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
            raise InputError(f"{path}: corrupt {comp} file ({one_line(exc)})") from None
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


def image_dims(h) -> tuple[int, ...]:
    """numpy-order shape of an image HDU from its header (no data read); () if not an image."""
    if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return ()
    hdr = h.header
    n = int(hdr.get("NAXIS", 0) or 0)
    dims = tuple(int(hdr.get(f"NAXIS{k}", 0) or 0) for k in range(n, 0, -1))
    return dims if dims and all(d > 0 for d in dims) else ()


def describe_hdus(hdul) -> str:
    parts = []
    for i, h in enumerate(hdul):
        dims = image_dims(h)
        name = h.name or "(unnamed)"
        if dims:
            parts.append(f"{i} {name} {_hdu_kind(h)} {'x'.join(map(str, dims[::-1]))}")
        elif isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)):
            parts.append(f"{i} {name} (no data)")
        else:
            parts.append(f"{i} {name} {_hdu_kind(h)}")
    return "; ".join(parts)


def is_usable_image(h) -> bool:
    dims = image_dims(h)
    return len(dims) >= 2 and dims[-1] > 1 and dims[-2] > 1


def _select_hdu(hdul, hdu: int | str | None, path: Path) -> int:
    if hdu is None:
        for i, h in enumerate(hdul):
            if is_usable_image(h):
                return i
        raise InputError(f"{path}: no 2-D image HDU (HDUs: {describe_hdus(hdul)})")
    if isinstance(hdu, str):
        names = [h.name.upper() for h in hdul]
        if hdu.upper() not in names:
            raise InputError(f"{path}: no HDU named {hdu!r} (HDUs: {describe_hdus(hdul)})")
        idx = names.index(hdu.upper())
    else:
        idx = int(hdu)
        if not 0 <= idx < len(hdul):
            raise InputError(
                f"{path}: HDU index {idx} out of range: file has {len(hdul)} HDU(s) ({describe_hdus(hdul)})"
            )
    if not is_usable_image(hdul[idx]):
        images = [str(i) for i, h in enumerate(hdul) if is_usable_image(h)]
        where = f"images are in HDU {', '.join(images)}" if images else "the file has no 2-D image"
        h = hdul[idx]
        dims = image_dims(h)
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) and not dims:
            kind = "header-only HDU (no data)"
        elif dims:
            kind = f"{len(dims)}-D image of shape {dims}"
        else:
            kind = _hdu_kind(h)
        raise InputError(f"{path}: HDU {idx} is a {kind}, not a 2-D image; {where}")
    return idx


def check_complete(hdul, idx: int, path: Path, comp: str) -> None:
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
        dims = image_dims(h)
        need = abs(int(h.header["BITPIX"])) // 8 * int(np.prod(dims))
    if info["datLoc"] + need > size:
        raise InputError(
            f"{path}: truncated file: HDU {idx} needs {info['datLoc'] + need} bytes, file has {size}"
        )


def inherit_primary(hdul, idx: int, header: fits.Header, notes: list[str]) -> fits.Header:
    if idx == 0 or header.get("INHERIT") is False:
        return header
    added = copy_cards(hdul[0].header, header, only_new=True)
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
    comp = check_magic(path)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=not comp, do_not_scale_image_data=True, lazy_load_hdus=False)
        except (OSError, ValueError, EOFError, IndexError, TypeError) as exc:
            # the SIMPLE card was there, so a failure here is a cut or damaged file
            raise InputError(f"{path}: truncated or corrupt FITS file ({one_line(exc)})") from None
    trunc = [w for w in caught if "truncat" in str(w.message).lower()]
    layout = None
    try:
        amps = amplifier_extensions(hdul) if hdu is None and not is_usable_image(hdul[0]) else None
        if amps:
            for a in amps:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", VerifyWarning)
                    check_complete(hdul, a.hdu, path, comp)
            primary = hdul[0].header.copy()
            pre_repairs: list[str] = []
            salvage_cards(primary, pre_repairs)
            try:
                data, header, layout, amp_notes = assemble_amplifiers(hdul, amps, primary)
            except (OSError, ValueError, EOFError, TypeError, IndexError) as exc:
                raise InputError(_unreadable(path, amps[0].hdu, exc)) from None
            idx = amps[0].hdu
            notes.extend(amp_notes)
        else:
            idx = _select_hdu(hdul, hdu, path)
            data, header, pre_repairs = _read_plane(hdul, idx, path, comp, trunc, notes)
            corrected = subtract_overscan_and_trim(data, header, idx)
            if corrected is not None:
                data, header, layout = corrected
                amp = layout.amplifiers[0]
                notes.append(f"raw frame: overscan {amp.biassec} {amp.overscan_mode} median {amp.overscan:.2f} ADU "
                             f"subtracted, cut to {amp.datasec} ({data.shape[1]}x{data.shape[0]} px)")
        if layout is not None:
            notes.append(layout.text)
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
    header, repairs, wcs, status, wnotes = repair_and_check(header)
    repairs = pre_repairs + repairs
    notes.extend(wnotes)
    return Frame(path=path, hdu=idx, data=data, header=header, wcs=wcs, wcs_status=status, repairs=repairs, notes=notes,
                 layout=layout)


def _read_plane(hdul, idx: int, path: Path, comp: str, trunc: list, notes: list[str]) -> tuple[np.ndarray, fits.Header, list[str]]:
    """float32 physical values of HDU ``idx`` (first plane of a cube), its salvaged header with the primary's keywords."""
    h = hdul[idx]
    # copy and salvage first: fileinfo() below renders the header, which makes astropy
    # silently turn unparsable cards into text
    header = h.header.copy()
    pre_repairs: list[str] = []
    salvage_cards(header, pre_repairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # fileinfo() re-verifies the original cards
        check_complete(hdul, idx, path, comp)
    if trunc:
        # the size check above passed: only the final padding or a later HDU is missing
        notes.append(f"file shorter than its FITS layout but HDU {idx} is complete: {one_line(trunc[0].message)}")
    try:
        raw = h.data
    except (OSError, ValueError, EOFError, TypeError, IndexError, CfitsioException) as exc:
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
    except (OSError, ValueError, EOFError, CfitsioException) as exc:
        raise InputError(_unreadable(path, idx, exc)) from None
    if isinstance(h, fits.CompImageHDU):
        method = getattr(h, "compression_type", None) or "unknown method"
        notes.append(f"tile-compressed HDU ({method}) decompressed")
    if comp:
        notes.append(f"{comp}-compressed file decompressed in memory")
    n_blank, bscale, bzero = to_physical(raw, header, data)
    if n_blank:
        notes.append(f"{n_blank} BLANK pixel(s) set to NaN")
    if np.issubdtype(raw.dtype, np.integer) and (bscale != 1.0 or bzero != 0.0):
        notes.append(f"{raw.dtype.name} data scaled with BSCALE={bscale:g} BZERO={bzero:g} to float32")
    return data, inherit_primary(hdul, idx, header, notes), pre_repairs


def _unreadable(path: Path, idx: int, exc: Exception) -> str:
    return f"{path}: cannot read the pixel data of HDU {idx}, truncated or corrupt ({one_line(exc)})"


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
