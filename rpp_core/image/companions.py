"""Weight maps and bad-pixel masks that come with an image: found, read, and turned into a noise map.

A *weight* map is inverse variance (1 / image unit^2) pixel by pixel: the noise map
is ``RMS = 1 / sqrt(w)`` where ``w > 0``; ``w <= 0`` or NaN marks a pixel unusable.
A *mask* is nonzero where a pixel is bad (DECam community pipeline ``ood`` codes,
most bad-pixel masks); a map that is nonzero on more than half the frame is read as a
good-pixel map (nonzero = good) and said so.

Found, in this order: the files given (``--weight``, ``--mask``); the DECam community
pipeline's naming, ``..._ooi_...`` (image) beside ``..._oow_...`` (weight) and
``..._ood_...`` (mask), with any processing letter (``opi``/``opw``/``opd``...); a
header keyword (WTMAP, WEIGHT, WGTMAP; BPM, BPMFILE, MASK) naming a file in the
image's folder. The extension used is the image's (same index, else same EXTNAME,
else the only image of that shape).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import InputError
from .keywords import one_line, parse_text

_CP_IMAGE = re.compile(r"_(o[a-z])i_")
_SUFFIXES = ("", ".fits", ".fits.fz", ".fits.gz", ".fz", ".fit")
WEIGHT_KEYS = ("WTMAP", "WGTMAP", "WEIGHT")
MASK_KEYS = ("BPM", "BPMFILE", "MASK")
#: a weight map whose noise differs from the measured sky noise by more than this factor is relative
RELATIVE_FACTOR = 1.5


@dataclass(frozen=True)
class PixelWeights:
    """The weight and mask of a frame (:func:`load_pixel_weights`), on the frame's pixel grid.

    ``weight`` inverse variance (float32) or None; ``bad`` True where the mask or a
    zero weight says a pixel must not be used, or None; ``weight_source`` and
    ``mask_source`` say which file and extension (and how it was found); ``notes``
    are lines for the log.
    """

    weight: np.ndarray | None = None
    bad: np.ndarray | None = None
    weight_source: str | None = None
    mask_source: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"weight": self.weight_source, "mask": self.mask_source,
                "n_bad": int(self.bad.sum()) if self.bad is not None else 0}


@dataclass(frozen=True)
class NoiseMap:
    """The per-pixel noise (image units) used for detection and errors, and where it came from."""

    rms: np.ndarray
    source: str
    scale: float = 1.0


def _existing(stem: Path) -> Path | None:
    for suffix in _SUFFIXES:
        p = stem.with_name(stem.name + suffix)
        if p.is_file():
            return p
    return None


def find_companions(path: Path, header: fits.Header | None = None) -> dict[str, tuple[Path, str]]:
    """Weight and mask files next to ``path``: ``{"weight": (file, how found), "mask": (...)}``."""
    path = Path(path)
    found: dict[str, tuple[Path, str]] = {}
    m = _CP_IMAGE.search(path.name)
    if m:
        for kind, letter in (("weight", "w"), ("mask", "d")):
            other = path.with_name(path.name[:m.start()] + f"_{m[1]}{letter}_" + path.name[m.end():])
            if other.is_file():
                found[kind] = (other, f"community-pipeline name (_{m[1]}i_ -> _{m[1]}{letter}_)")
    if header is not None:
        for kind, keys in (("weight", WEIGHT_KEYS), ("mask", MASK_KEYS)):
            if kind in found:
                continue
            for k in keys:
                name = parse_text(header.get(k))
                if not name:
                    continue
                name = re.sub(r"\[.*\]$", "", name).strip()
                if not name or "/" in name:
                    continue
                p = _existing(path.parent / name)
                if p is not None and p != path:
                    found[kind] = (p, f"header {k}")
                    break
    return found


def _plane(path: Path, hdu: int, extname: str, shape) -> tuple[np.ndarray, str]:
    """The 2-D plane of ``path`` that matches the image (same HDU index, else EXTNAME, else the one of its shape)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                order = []
                if hdu < len(hdul):
                    order.append(hdu)
                order += [i for i, h in enumerate(hdul) if extname and h.name.upper() == extname.upper() and i not in order]
                order += [i for i, h in enumerate(hdul) if i not in order]
                for i in order:
                    h = hdul[i]
                    if getattr(h, "is_image", False) and h.data is not None and h.data.shape == tuple(shape):
                        return np.asarray(h.data), f"{path.name}[{i}]"
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise InputError(f"{path}: cannot read it as a weight or mask ({one_line(exc)})") from None
    raise InputError(f"{path}: no image of the frame's shape {shape[1]}x{shape[0]} (HDU {hdu}"
                     f"{f' {extname}' if extname else ''}): give the matching weight or mask file")


def load_pixel_weights(frame, weight: str | Path | None = None, mask: str | Path | None = None,
                       find: bool = True) -> PixelWeights:
    """The weight map and mask of ``frame`` (given files first, then :func:`find_companions` when ``find``).

    Raises :class:`InputError` when a file given cannot be read or has no plane of the
    frame's shape. Found files that do not fit (a raw frame trimmed or assembled here)
    are skipped with a note.
    """
    notes: list[str] = []
    given = {"weight": (Path(weight), "given") if weight else None, "mask": (Path(mask), "given") if mask else None}
    for kind, item in given.items():
        if item is not None and not item[0].is_file():
            raise InputError(f"{item[0]}: no such {kind} file")
    found = find_companions(frame.path, frame.header) if find else {}
    extname = parse_text(frame.header.get("EXTNAME")) or ""
    planes: dict[str, tuple[np.ndarray, str]] = {}
    for kind in ("weight", "mask"):
        item = given[kind] or found.get(kind)
        if item is None:
            continue
        p, how = item
        if frame.layout is not None and how != "given":
            notes.append(f"{kind} {p.name} not used: the frame was {frame.layout.kind} at loading, its pixels differ")
            continue
        try:
            arr, where = _plane(p, frame.hdu, extname, frame.data.shape)
        except InputError:
            if how == "given":
                raise
            notes.append(f"{kind} {p.name} ({how}) not used: no image of the frame's shape")
            continue
        planes[kind] = (arr, f"{where} ({how})")
    w = bad = None
    if "weight" in planes:
        arr, src = planes["weight"]
        w = np.asarray(arr, np.float32)
        zero = ~(np.isfinite(w) & (w > 0))
        bad = zero
        notes.append(f"weight map {src}: inverse variance, {int(zero.sum())} pixel(s) with no weight masked")
    if "mask" in planes:
        arr, src = planes["mask"]
        m = np.asarray(arr)
        nonzero = m != 0
        if nonzero.mean() > 0.5:
            nonzero = ~nonzero
            notes.append(f"mask {src}: nonzero on most of the frame, read as a good-pixel map (0 = bad)")
        notes.append(f"mask {src}: {int(nonzero.sum())} bad pixel(s)"
                     + (f" (codes {', '.join(str(int(v)) for v in np.unique(m[m != 0])[:8])})" if (m != 0).any() else ""))
        bad = nonzero if bad is None else (bad | nonzero)
    return PixelWeights(w, bad, planes.get("weight", (None, None))[1], planes.get("mask", (None, None))[1], tuple(notes))


def noise_map(weights: PixelWeights, measured_rms: float, usable: np.ndarray | None = None) -> NoiseMap | None:
    """``1 / sqrt(w)`` where the weight is positive, checked against the measured sky noise.

    Inverse-variance maps (DECam ``oow``) agree with the sky noise; a map that does
    not (within :data:`RELATIVE_FACTOR`) holds relative weights (exposure or coverage
    maps) and is scaled to the measured noise, as SExtractor does with MAP_WEIGHT.
    Pixels without weight get the median (they are masked by ``PixelWeights.bad``).
    None without a usable weight map.
    """
    if weights.weight is None:
        return None
    w = weights.weight
    good = np.isfinite(w) & (w > 0)
    if not good.any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rms = np.where(good, 1.0 / np.sqrt(np.where(good, w, 1.0)), np.nan).astype(np.float32)
    sel = good if usable is None or not (good & usable).any() else (good & usable)
    typical = float(np.median(rms[sel]))
    rms[~good] = typical  # masked through PixelWeights.bad; a finite value keeps every consumer simple
    if not measured_rms > 0:
        return NoiseMap(rms, f"weight map {weights.weight_source}")
    ratio = measured_rms / typical
    if 1.0 / RELATIVE_FACTOR <= ratio <= RELATIVE_FACTOR:
        return NoiseMap(rms, f"weight map {weights.weight_source} (median noise {typical:.4g}, measured sky noise "
                             f"{measured_rms:.4g}: inverse variance used as it is)")
    return NoiseMap((rms * np.float32(ratio)).astype(np.float32),
                    f"weight map {weights.weight_source} scaled by {ratio:.4g} (median noise {typical:.4g} against the "
                    f"measured sky noise {measured_rms:.4g}: relative weights)", ratio)
