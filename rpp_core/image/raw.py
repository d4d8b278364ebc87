"""Raw frames: overscan subtraction, trimming and multi-amplifier assembly, done once at loading.

FITS sections (``BIASSEC``, ``TRIMSEC``, ``DATASEC``, ``DETSEC``) are
``[x1:x2,y1:y2]``: 1-based, inclusive, x first; ``x1 > x2`` means the axis is
read backwards (an amplifier at the far side of the detector). Arrays are numpy
``[y, x]``, 0-based.

- One image with ``BIASSEC`` and ``TRIMSEC`` (or ``DATASEC``): the overscan level
  is subtracted (a robust median of the whole section, or per row/column when the
  level drifts along the readout significantly more than its noise), then the
  image is cut to TRIMSEC/DATASEC. Pixel coordinates are then those of the trimmed
  frame; :class:`RawLayout` says how to go back.
- A file whose image extensions are amplifiers of one detector (their ``DETSEC``
  rectangles tile one rectangle, e.g. LCO Sinistro): each amplifier's overscan is
  subtracted, its DATASEC converted to electrons with its own ``GAIN`` and placed
  (flipped as DETSEC says) into one image in DETSEC pixels, binned as the data are.
- ``SATURATE`` (raw ADU, bias included) becomes ``SATURATE - overscan`` (times the
  gain for a mosaic in electrons; the lowest amplifier's level for the mosaic).

Frames already processed (IRAF ``TRIM``/``OVERSCAN``, DES ``DESOSCN``, LCO
``L1STATOV``), or whose sections do not fit the data, are left as they are.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .keywords import parse_float

_SECTION = re.compile(r"\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]")
#: keywords saying overscan and trim were already done (IRAF ccdproc, DES/DECam CP, LCO BANZAI)
PROCESSED_KEYS = ("TRIM", "OVERSCAN", "DESOSCN", "L1STATOV", "BIASCORR")
#: a running median over this many rows smooths a drifting overscan without adding its pixel noise
ROW_WINDOW = 31


@dataclass(frozen=True)
class Section:
    """A FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive; ``x1 > x2`` means reversed)."""

    x1: int
    x2: int
    y1: int
    y2: int

    @classmethod
    def parse(cls, value) -> "Section | None":
        """The section in ``value``, None for anything else ('UNKNOWN', 'N/A', '')."""
        m = _SECTION.fullmatch(str(value).strip()) if value is not None else None
        if not m:
            return None
        x1, x2, y1, y2 = (int(v) for v in m.groups())
        if min(x1, x2, y1, y2) < 1:
            return None
        return cls(x1, x2, y1, y2)

    @property
    def nx(self) -> int:
        return abs(self.x2 - self.x1) + 1

    @property
    def ny(self) -> int:
        return abs(self.y2 - self.y1) + 1

    @property
    def x0(self) -> int:
        """0-based first column (of the forward range)."""
        return min(self.x1, self.x2) - 1

    @property
    def y0(self) -> int:
        return min(self.y1, self.y2) - 1

    @property
    def slices(self) -> tuple[slice, slice]:
        """numpy ``[y, x]`` slices of the forward range."""
        return slice(self.y0, self.y0 + self.ny), slice(self.x0, self.x0 + self.nx)

    def fits_in(self, shape) -> bool:
        return self.y0 + self.ny <= shape[0] and self.x0 + self.nx <= shape[1]

    def __str__(self) -> str:
        return f"[{self.x1}:{self.x2},{self.y1}:{self.y2}]"


@dataclass(frozen=True)
class Amplifier:
    """What was done to one amplifier (or the single raw image): its overscan, gain and placement."""

    hdu: int
    overscan: float            # median level subtracted, raw ADU
    overscan_mode: str         # "scalar" or "per row"/"per column"
    biassec: str
    datasec: str
    gain: float | None         # e-/ADU applied (None: left in ADU)
    saturation: float | None   # in the output units, bias removed
    detsec: str = ""


@dataclass(frozen=True)
class RawLayout:
    """How the loader turned raw pixels into the measured image.

    ``kind`` ``"trimmed"`` (one image, overscan removed and cut) or ``"mosaic"``
    (amplifiers assembled by DETSEC). Pixel (x, y) of the measured image (0-based)
    is pixel ``(x + x_offset, y + y_offset)`` of the raw image (``"trimmed"``), or
    the binned DETSEC pixel ``(x + x_offset, y + y_offset)`` (0-based, ``"mosaic"``);
    ``binning`` the DETSEC-to-data factor. ``text`` says it in words, for the log and
    the catalogue meta.
    """

    kind: str
    x_offset: int
    y_offset: int
    amplifiers: tuple[Amplifier, ...]
    binning: tuple[int, int] = (1, 1)
    text: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "x_offset": self.x_offset, "y_offset": self.y_offset, "binning": list(self.binning),
                "pixels": self.text,
                "amplifiers": [{"hdu": a.hdu, "overscan_adu": a.overscan, "overscan_mode": a.overscan_mode,
                                "biassec": a.biassec, "datasec": a.datasec, "detsec": a.detsec, "gain": a.gain,
                                "saturation": a.saturation} for a in self.amplifiers]}


def already_processed(header: fits.Header) -> str | None:
    """The keyword saying overscan/trim were done already, or None."""
    for k in PROCESSED_KEYS:
        if k in header and header[k] not in (False, 0, "F"):
            return k
    return None


def _robust_sigma(x: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if x.size else 0.0


def overscan_model(raw: np.ndarray, bias: Section, data: Section) -> tuple[float | np.ndarray, str, float]:
    """The overscan level to subtract from ``data``'s region: a scalar, or one value per row/column.

    A strip beside the data along x (serial overscan, spanning the data rows) gives one
    level per row; one along y (parallel overscan) one per column. The per-row levels
    are used, smoothed by a :data:`ROW_WINDOW` running median, only when they scatter
    more than three times what the strip's pixel noise explains (a drifting bias);
    else the whole strip's median (adds no row noise). Returns (level, mode, median).
    """
    strip = np.asarray(raw[bias.slices], np.float64)
    median = float(np.median(strip))
    dys, dxs = data.slices
    bys, bxs = bias.slices
    along_rows = bys.start <= dys.start and bys.stop >= dys.stop and bias.nx < bias.ny
    along_cols = bxs.start <= dxs.start and bxs.stop >= dxs.stop and bias.ny < bias.nx
    if not (along_rows or along_cols) or min(bias.nx, bias.ny) < 3:
        return median, "scalar", median
    axis = 1 if along_rows else 0
    profile = np.median(strip, axis=axis)
    resid = strip - (profile[:, None] if along_rows else profile[None, :])
    noise = 1.2533 * _robust_sigma(resid.ravel()) / math.sqrt(strip.shape[axis])  # of one row's median
    from scipy import ndimage as ndi  # here: the browser's header reads import this module

    smooth = ndi.median_filter(profile, ROW_WINDOW, mode="nearest")
    if noise <= 0 or np.ptp(smooth) <= 3 * noise:
        return median, "scalar", median
    if along_rows:
        return smooth[dys.start - bys.start: dys.stop - bys.start][:, None].astype(np.float32), "per row", median
    return smooth[dxs.start - bxs.start: dxs.stop - bxs.start][None, :].astype(np.float32), "per column", median


def _shift_wcs(header: fits.Header, dx: int, dy: int) -> None:
    """Keep the header's WCS on the sky after cutting ``dx`` columns and ``dy`` rows off the start (in place)."""
    for key, d in (("CRPIX1", dx), ("CRPIX2", dy)):
        v = parse_float(header.get(key))
        if v is not None and d:
            header[key] = v - d
    for key, d in (("LTV1", dx), ("LTV2", dy)):
        if d:
            header[key] = (parse_float(header.get(key)) or 0.0) - d


def subtract_overscan_and_trim(data: np.ndarray, header: fits.Header, hdu: int = 0) -> tuple[np.ndarray, fits.Header, RawLayout] | None:
    """Overscan-subtracted, trimmed copy of one raw image, its header and what was done; None if not raw.

    Needs BIASSEC and TRIMSEC (or DATASEC) inside the image; the header gains IRAF's
    ``OVERSCAN`` and ``TRIM`` cards (so it reads as processed), SATURATE loses the
    overscan level, NAXIS, CRPIX and LTV follow the cut.
    """
    if already_processed(header):
        return None
    bias = Section.parse(header.get("BIASSEC"))
    # TRIMSEC first; a section that does not fit (one the primary wrote for the whole detector) is skipped
    keep_key, keep = next(((k, sec) for k in ("TRIMSEC", "DATASEC")
                           if (sec := Section.parse(header.get(k))) is not None and sec.fits_in(data.shape)), ("", None))
    if bias is None or keep is None or not bias.fits_in(data.shape):
        return None
    if (keep.ny, keep.nx) == data.shape:
        return None
    level, mode, median = overscan_model(data, bias, keep)
    out = np.array(data[keep.slices], np.float32) - np.float32(median if mode == "scalar" else 0.0)
    if mode != "scalar":
        out -= level
    h = header.copy()
    for k in ("BIASSEC", "TRIMSEC", "DATASEC"):
        h.remove(k, ignore_missing=True)
    h["NAXIS1"], h["NAXIS2"] = out.shape[1], out.shape[0]
    _shift_wcs(h, keep.x0, keep.y0)
    h["OVERSCAN"] = (f"{bias} {mode} median {median:.2f}", "rpp: overscan level subtracted (ADU)")
    h["TRIM"] = (f"{keep}", f"rpp: cut to {keep_key}")
    sat = parse_float(h.get("SATURATE"))
    if sat is not None and sat > 0:
        h["SATURATE"] = (sat - median, f"rpp: {sat:g} ADU less the overscan level")
        sat = sat - median
    amp = Amplifier(hdu, median, mode, str(bias), str(keep), None, sat)
    text = (f"pixel coordinates are those of the trimmed image ({keep_key} {keep}): raw x = x + {keep.x0}, "
            f"raw y = y + {keep.y0} (0-based)")
    return out, h, RawLayout("trimmed", keep.x0, keep.y0, (amp,), (1, 1), text)


# ---------------------------------------------------------------- multi-amplifier files


def to_physical(raw: np.ndarray, header: fits.Header, data: np.ndarray) -> tuple[int, float, float]:
    """``data`` (the float32 copy of ``raw``, stored values read with do_not_scale_image_data) made
    physical in place: BLANK pixels of integer data set to NaN, then BSCALE and BZERO applied.
    Returns the number of BLANK pixels, BSCALE and BZERO."""
    bscale = parse_float(header.get("BSCALE", 1.0)) or 1.0
    bzero = parse_float(header.get("BZERO", 0.0)) or 0.0
    n_blank = 0
    if np.issubdtype(raw.dtype, np.integer):
        blank = header.get("BLANK")
        if isinstance(blank, int) and not isinstance(blank, bool):
            bad = raw == blank
            n_blank = int(np.count_nonzero(bad))
            if n_blank:
                data[bad] = np.nan
    if bscale != 1.0:
        data *= np.float32(bscale)
    if bzero != 0.0:
        data += np.float32(bzero)
    return n_blank, bscale, bzero


def _scaled(h) -> np.ndarray:
    """float32 physical values of an image HDU read with do_not_scale_image_data (see :func:`to_physical`)."""
    data = np.array(h.data, dtype=np.float32)
    to_physical(h.data, h.header, data)
    return data


@dataclass(frozen=True)
class _AmpGeometry:
    hdu: int
    det: Section
    data: Section
    bias: Section | None
    bx: int
    by: int


def amplifier_extensions(hdul) -> list[_AmpGeometry] | None:
    """The image extensions of ``hdul`` when they are amplifiers of one detector, else None.

    Each has a DATASEC inside its data and a DETSEC; DETSEC spans are the same whole
    multiple of DATASEC's on every amplifier (the binning); the DETSEC rectangles do
    not overlap and fill their bounding box (separate CCDs of a focal plane leave gaps
    and are not assembled).
    """
    amps: list[_AmpGeometry] = []
    for i, h in enumerate(hdul):
        if i == 0 or not isinstance(h, (fits.ImageHDU, fits.CompImageHDU)):
            continue
        hdr = h.header
        if int(hdr.get("NAXIS", 0) or 0) != 2:
            continue
        shape = (int(hdr.get("NAXIS2", 0) or hdr.get("ZNAXIS2", 0) or 0), int(hdr.get("NAXIS1", 0) or hdr.get("ZNAXIS1", 0) or 0))
        det, dat = Section.parse(hdr.get("DETSEC")), Section.parse(hdr.get("DATASEC"))
        if det is None or dat is None or not dat.fits_in(shape):
            return None
        if det.nx % dat.nx or det.ny % dat.ny:
            return None
        bias = Section.parse(hdr.get("BIASSEC"))
        amps.append(_AmpGeometry(i, det, dat, bias if bias is not None and bias.fits_in(shape) else None,
                                 det.nx // dat.nx, det.ny // dat.ny))
    if len(amps) < 2 or len({(a.bx, a.by) for a in amps}) != 1:
        return None
    xs = [(a.det.x0, a.det.x0 + a.det.nx) for a in amps]
    ys = [(a.det.y0, a.det.y0 + a.det.ny) for a in amps]
    area = sum(a.det.nx * a.det.ny for a in amps)
    bbox = (max(x[1] for x in xs) - min(x[0] for x in xs)) * (max(y[1] for y in ys) - min(y[0] for y in ys))
    if area != bbox:
        return None
    for j, a in enumerate(amps):
        for b in amps[j + 1:]:
            if a.det.x0 < b.det.x0 + b.det.nx and b.det.x0 < a.det.x0 + a.det.nx and \
                    a.det.y0 < b.det.y0 + b.det.ny and b.det.y0 < a.det.y0 + a.det.ny:
                return None
    return amps


def assemble_amplifiers(hdul, amps: list[_AmpGeometry], primary: fits.Header) -> tuple[np.ndarray, fits.Header, RawLayout, list[str]]:
    """One image in electrons from the amplifiers (see the module docstring), its header, layout and log lines.

    The header is the primary's (pointing, time, filter, exposure) without its WCS
    (a pointing-model WCS of the raw file is not trusted; see ``header.WCS_PRIMARY_KEY``),
    with BUNIT = 'electron', GAIN = 1, SATURATE the lowest amplifier's level in
    electrons, RDNOISE the amplifiers' mean if they give one.
    """
    from .header import copy_cards

    bx, by = amps[0].bx, amps[0].by
    x_lo = min(a.det.x0 for a in amps)
    y_lo = min(a.det.y0 for a in amps)
    nx = (max(a.det.x0 + a.det.nx for a in amps) - x_lo) // bx
    ny = (max(a.det.y0 + a.det.ny for a in amps) - y_lo) // by
    mosaic = np.full((ny, nx), np.nan, np.float32)
    notes: list[str] = []
    gains = {}
    for a in amps:
        g = parse_float(hdul[a.hdu].header.get("GAIN"))
        gains[a.hdu] = g if g is not None and g > 0 else None
    in_electrons = all(g is not None for g in gains.values())
    if not in_electrons:
        missing = [str(k) for k, g in gains.items() if g is None]
        notes.append(f"amplifier(s) in HDU {', '.join(missing)} have no positive GAIN: the mosaic stays in ADU, "
                     "amplifiers not equalised")
    sat_raw_primary = parse_float(primary.get("SATURATE"))
    done: list[Amplifier] = []
    rdn = []
    for a in amps:
        h = hdul[a.hdu]
        hdr = h.header
        raw = _scaled(h)
        level, mode, median = (overscan_model(raw, a.bias, a.data) if a.bias is not None else (0.0, "none", 0.0))
        block = raw[a.data.slices] - (np.float32(median) if mode in ("scalar", "none") else level)
        g = gains[a.hdu] if in_electrons else None
        if g is not None:
            block = block * np.float32(g)
        sat_raw = parse_float(hdr.get("SATURATE")) or sat_raw_primary
        sat = None if not sat_raw or sat_raw <= 0 else (sat_raw - median) * (g or 1.0)
        if a.det.x1 > a.det.x2:
            block = block[:, ::-1]
        if a.det.y1 > a.det.y2:
            block = block[::-1, :]
        ox, oy = (a.det.x0 - x_lo) // bx, (a.det.y0 - y_lo) // by
        mosaic[oy: oy + block.shape[0], ox: ox + block.shape[1]] = block
        r = parse_float(hdr.get("RDNOISE"))
        if r is not None and r > 0:
            rdn.append(r)
        done.append(Amplifier(a.hdu, median, mode, str(a.bias) if a.bias else "none", str(a.data), g, sat, str(a.det)))
        notes.append(f"amplifier HDU {a.hdu}: overscan {mode} {median:.1f} ADU ({a.bias or 'no BIASSEC'}), DATASEC "
                     f"{a.data} -> DETSEC {a.det}" + (f", x GAIN {g:g} e-/ADU" if g else "")
                     + (f", saturation {sat:.0f} {'e-' if g else 'ADU'}" if sat else ""))
    h = fits.Header()
    copy_cards(primary, h, skip=("BIASSEC", "TRIMSEC", "DATASEC", "DETSEC", "CCDSEC", "GAIN", "SATURATE", "BUNIT"))
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, nx, ny
    if in_electrons:
        h["BUNIT"] = ("electron", "rpp: amplifiers converted with their GAIN")
        h["GAIN"] = (1.0, "rpp: data in electrons")
    sats = [a.saturation for a in done if a.saturation]
    if sats:
        h["SATURATE"] = (min(sats), "rpp: lowest amplifier level, overscan removed")
    if rdn and in_electrons:
        h["RDNOISE"] = (float(np.mean(rdn)), "rpp: amplifiers' mean (e-)")
    det = Section(x_lo + 1, x_lo + nx * bx, y_lo + 1, y_lo + ny * by)
    h["DETSEC"] = (str(det), "rpp: detector section of the assembled image")
    h["OVERSCAN"] = ("per amplifier", "rpp: see the run log")
    h["TRIM"] = ("per amplifier DATASEC", "rpp: amplifiers assembled by DETSEC")
    text = (f"pixel coordinates are those of the assembled image: detector x = {x_lo + 1} + {bx} x, "
            f"y = {y_lo + 1} + {by} y (DETSEC, 1-based, unbinned; x, y 0-based, binned {bx}x{by})")
    layout = RawLayout("mosaic", x_lo // bx, y_lo // by, tuple(done), (bx, by), text)
    notes.insert(0, f"{len(amps)} amplifiers (HDU {', '.join(str(a.hdu) for a in amps)}) assembled by DETSEC into "
                    f"{nx}x{ny} px" + (" in electrons" if in_electrons else " (ADU)"))
    return mosaic, h, layout, notes
