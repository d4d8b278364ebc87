"""What the pixel values mean: units (BUNIT), the effective gain, and zero points written in the header.

Conventions
-----------
- The *effective gain* is electrons per image unit: what turns a measured flux
  into a photon count for the Poisson term of the errors. As in SExtractor's
  ``GAIN`` and photutils' ``calc_total_error(effective_gain=...)``: for an image
  in ADU it is the detector gain (e-/ADU), for electrons 1, for a count rate
  (ADU/s, e-/s) the gain times the exposure time. ``None`` means the Poisson
  term is left out and the errors come from the background RMS alone
  (photographic plates, calibrated images in physical units with no gain).
- rpp's instrumental magnitudes are ``-2.5 log10(flux / t)`` with ``t`` the
  exposure time for images whose values grow with it (ADU, counts, electrons)
  and ``t = 1`` for images already per second or in physical units (ADU/s,
  e-/s, nanomaggy, MJy/sr): an exposure time is never divided out twice.
  :attr:`ImageUnits.divide_by_exptime` says which.
- A header zero point is converted to rpp's convention
  ``m = -2.5 log10(flux / t) + zp``; :class:`HeaderZeroPoint` keeps the value as
  written, its convention and the conversion in words.

Every decision carries a typed origin (:class:`GainSource`, :class:`ZpConvention`)
and a sentence for the log; no code reads the sentence back.
"""

from __future__ import annotations

import enum
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits

from .keywords import parse_float, parse_text
from .pixscale import detector_pixel_scale

#: the AB magnitude of 1 maggy is 0 by definition (1 maggy = 3631 Jy)
AB_JY = 3631.0


# ---------------------------------------------------------------- units


class UnitKind(enum.Enum):
    """What one pixel value is."""

    COUNTS = "counts"                    # ADU, DN, counts over the exposure (or no BUNIT)
    COUNT_RATE = "count rate"            # ADU/s, DN/s, counts/s
    ELECTRONS = "electrons"
    ELECTRON_RATE = "electron rate"      # e-/s
    FLUX = "flux density"                # per pixel: nanomaggy, Jy, ...
    SURFACE_BRIGHTNESS = "surface brightness"  # MJy/sr, Jy/arcsec^2
    PHOTOGRAPHIC = "photographic density"      # plate scans: no photon counting
    OTHER = "other"                      # a unit rpp cannot relate to photons or magnitudes


@dataclass(frozen=True)
class ImageUnits:
    """The meaning of the pixel values (:func:`classify_units`).

    ``bunit`` is the header text (None: no BUNIT), ``unit`` the astropy unit it
    parsed to (None for counts assumed, plates, or unparsable text), ``text``
    one sentence for the log.
    """

    kind: UnitKind
    bunit: str | None
    unit: u.UnitBase | None
    text: str

    @property
    def divide_by_exptime(self) -> bool:
        """Instrumental magnitudes divide the flux by EXPTIME (values grow with the exposure)."""
        return self.kind in (UnitKind.COUNTS, UnitKind.ELECTRONS, UnitKind.PHOTOGRAPHIC, UnitKind.OTHER)

    @property
    def calibrated(self) -> bool:
        """Physical units (a flux density or surface brightness): no detector counts left."""
        return self.kind in (UnitKind.FLUX, UnitKind.SURFACE_BRIGHTNESS)


#: keywords only a scanned photographic plate has (DSS, SuperCOSMOS, APM headers)
_PLATE_KEYS = ("PLTLABEL", "PLATEID", "EMULSION", "PLTSCALE")
_PLATE_WORDS = re.compile(r"photographic|\bplate\b|emulsion", re.I)

# BUNIT spellings astropy does not read, mapped to ones it does; case matters for the rest (MJy vs mJy)
_UNIT_ALIASES = (
    (re.compile(r"\bper\s+second\b", re.I), "/s"),
    (re.compile(r"\b(sec|seconds?)\b", re.I), "s"),
    (re.compile(r"(?<![A-Za-z])(e-|electrons?)(?![A-Za-z])", re.I), "electron"),
    (re.compile(r"\b(counts?|cts|ct)\b", re.I), "ct"),
    (re.compile(r"\b(adus?)\b", re.I), "adu"),
    (re.compile(r"\b(data\s*numbers?|dns?)\b", re.I), "DN"),
    (re.compile(r"\bnano-?maggies\b|\bnano-?maggy\b|\bnmgy\b", re.I), "nmgy"),
    (re.compile(r"\bmaggies\b|\bmaggy\b", re.I), "mgy"),
    (re.compile(r"\bS\b"), "s"),  # 'ELECTRONS/S', 'COUNTS/S'
)


def parse_bunit(text: str) -> u.UnitBase | None:
    """The astropy unit of a BUNIT value, None when it cannot be read."""
    s = text.strip()
    for pattern, repl in _UNIT_ALIASES:
        s = pattern.sub(repl, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'multiple slashes' and friends
        try:
            return u.Unit(s, parse_strict="raise")
        except (ValueError, TypeError):
            try:
                return u.Unit(s.replace(" ", ""), parse_strict="raise")
            except (ValueError, TypeError):
                return None


def is_plate(header: fits.Header) -> str | None:
    """The keyword that says ``header`` is a scanned photographic plate, or None."""
    for k in _PLATE_KEYS:
        if k in header:
            return f"{k} = {str(header[k]).strip()!r}"
    for k in ("INSTRUME", "DETECTOR", "SURVEY"):
        v = parse_text(header.get(k))
        if v and _PLATE_WORDS.search(v):
            return f"{k} = {v!r}"
    return None


def _counting(unit: u.UnitBase) -> tuple[UnitKind, str] | None:
    for base, counts, rate in ((u.electron, UnitKind.ELECTRONS, UnitKind.ELECTRON_RATE),
                               (u.adu, UnitKind.COUNTS, UnitKind.COUNT_RATE),
                               (u.ct, UnitKind.COUNTS, UnitKind.COUNT_RATE),
                               (u.DN, UnitKind.COUNTS, UnitKind.COUNT_RATE)):
        if unit.is_equivalent(base):
            return counts, ""
        if unit.is_equivalent(base / u.s):
            return rate, ""
    return None


def classify_units(header: fits.Header) -> ImageUnits:
    """What the pixel values of ``header``'s image are: plate, counts, rate, electrons or physical units.

    Order: plate keywords (PLTLABEL, PLATEID, EMULSION, PLTSCALE, or 'photographic'/'plate'
    in INSTRUME/DETECTOR/SURVEY) make a plate whatever BUNIT says; then BUNIT read with
    astropy after the usual spellings are mapped (``e-``, ``electrons``, ``counts``,
    ``ADU``, ``DN``, ``nanomaggy``, ``/sec``); no or an empty BUNIT means counts (ADU).
    """
    plate = is_plate(header)
    bunit = parse_text(header.get("BUNIT"))
    if plate:
        return ImageUnits(UnitKind.PHOTOGRAPHIC, bunit, None,
                          f"photographic plate scan (header {plate}): values are plate densities, not photon counts")
    if not bunit:
        return ImageUnits(UnitKind.COUNTS, bunit, None, "no BUNIT: counts (ADU) over the exposure assumed")
    unit = parse_bunit(bunit)
    if unit is None:
        return ImageUnits(UnitKind.COUNTS, bunit, None, f"BUNIT {bunit!r} not understood: counts (ADU) assumed")
    kind = _counting(unit)
    if kind is not None:
        what = {UnitKind.COUNTS: "counts over the exposure", UnitKind.COUNT_RATE: "counts per second",
                UnitKind.ELECTRONS: "electrons over the exposure",
                UnitKind.ELECTRON_RATE: "electrons per second"}[kind[0]]
        return ImageUnits(kind[0], bunit, unit, f"BUNIT {bunit!r}: {what}")
    if unit.is_equivalent(u.mgy) or unit.is_equivalent(u.Jy):
        return ImageUnits(UnitKind.FLUX, bunit, unit, f"BUNIT {bunit!r}: calibrated flux density per pixel")
    if unit.is_equivalent(u.Jy / u.sr):
        return ImageUnits(UnitKind.SURFACE_BRIGHTNESS, bunit, unit, f"BUNIT {bunit!r}: calibrated surface brightness")
    return ImageUnits(UnitKind.OTHER, bunit, unit,
                      f"BUNIT {bunit!r}: not counts, electrons or a flux density; no gain or zero point follows from it")


# ---------------------------------------------------------------- gain


class GainSource(enum.Enum):
    """Where the effective gain came from."""

    HEADER = "header"              # detector gain keyword(s), applied to the image unit
    ELECTRONS = "electrons"        # the image is in electrons: 1 (or exptime for e-/s)
    PROFILE = "profile"            # observatory.gain
    SKY = "sky"                    # sky variance against sky level
    ASSUMED = "assumed"            # 1 e-/ADU stand-in: nothing else known
    LEFT_OUT = "left out"          # no Poisson term: plates, calibrated physical units


@dataclass(frozen=True)
class EffectiveGain:
    """The gain the Poisson term uses (:func:`decide_gain`): electrons per image unit, or None (left out).

    ``source`` is the typed origin and ``text`` the sentence for the log.
    """

    value: float | None
    source: GainSource
    text: str


_GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN")
_AMP_GAIN = re.compile(r"GAIN([A-H]|\d{1,2})")


def header_gain(header: fits.Header) -> tuple[float | None, str]:
    """Detector gain (e-/ADU) from the header and the keyword(s) it came from.

    GAIN, EGAIN, CCDGAIN (first positive one; 0 or negative means unknown), else the
    mean of per-amplifier gains (GAINA, GAINB, ... or GAIN1, GAIN2, ...: DECam-style
    files whose amplifiers were flat-fielded to one response). Returns (None, why) if none.
    """
    zero = []
    for k in _GAIN_KEYS:
        if k in header:
            v = parse_float(header[k])
            if v is not None and v > 0:
                return v, f"header {k}"
            zero.append(f"{k} = {header[k]!r}")
    amps = {k: parse_float(header[k]) for k in header if _AMP_GAIN.fullmatch(k)}
    amps = {k: v for k, v in amps.items() if v is not None and v > 0}
    if amps:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(amps.items()))
        return float(np.mean(list(amps.values()))), f"header mean of the amplifier gains ({shown})"
    why = "no GAIN, EGAIN, CCDGAIN or GAINA/GAINB in the header"
    if zero:
        why = f"header {', '.join(zero)} (0 or negative means unknown); no amplifier gains"
    return None, why


@dataclass(frozen=True)
class SkyNoise:
    """Sky level and pixel noise of an image (:func:`sky_noise`), in image units."""

    level: float
    sigma: float

    @property
    def has_sky(self) -> bool:
        """The sky is still in the image: its level stands well above its noise."""
        return self.level > 3.0 * self.sigma and self.sigma > 0


def sky_noise(data: np.ndarray, mask: np.ndarray | None = None, max_side: int = 1024) -> SkyNoise:
    """Sky level (clipped median) and pixel-to-pixel noise of ``data``.

    The noise is the MAD of differences between horizontal neighbours over sqrt(2):
    gradients, nebulae and flat-field structure larger than a pixel do not inflate it
    (a plain MAD of the pixel values read UKIDSS's nebula as 1.7x the noise). Only a
    central window of at most ``max_side`` px is read (every 4th row); pixels within
    5 sigma of the median are kept (stars and hot pixels out).
    """
    ny, nx = data.shape
    y0, x0 = max((ny - max_side) // 2, 0), max((nx - max_side) // 2, 0)
    # every 4th row of the window: neighbours stay neighbours along x, and 1/4 of the work
    win = np.asarray(data[y0:y0 + max_side:4, x0:x0 + max_side], np.float64)
    good = np.isfinite(win)
    if mask is not None:
        good &= ~np.asarray(mask[y0:y0 + max_side:4, x0:x0 + max_side], bool)
    vals = win[good]
    if vals.size < 100:
        return SkyNoise(float("nan"), float("nan"))
    level = float(np.median(vals))
    diff = win[:, 1:] - win[:, :-1]
    pair = good[:, 1:] & good[:, :-1]
    d = diff[pair]
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    last = None
    for _ in range(3):
        near = np.abs(win - level) < 5 * sigma
        keep = pair & near[:, 1:] & near[:, :-1]
        if keep.sum() < 100:
            break
        if last is not None and np.array_equal(keep, last):
            break  # the same pixels give the same level and sigma again (converged on 3 of 3 frames tried)
        last = keep
        d = diff[keep]
        sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
        level = float(np.median(win[:, 1:][keep]))
    return SkyNoise(level, sigma)


def gain_from_sky(sky: SkyNoise, read_noise_e: float = 0.0) -> float | None:
    """e-/ADU that makes the sky noise Poisson plus read noise: ``var = level/g + (rn/g)^2``.

    Solved for g: ``g = (level + sqrt(level^2 + 4 var rn^2)) / (2 var)``. None when
    the sky is not in the image or the answer is implausible (outside 0.01-1000).
    A bias level still in the data makes it an overestimate.
    """
    if not sky.has_sky:
        return None
    var = sky.sigma**2
    g = (sky.level + math.sqrt(sky.level**2 + 4.0 * var * read_noise_e**2)) / (2.0 * var)
    return g if 0.01 <= g <= 1000.0 else None


def decide_gain(header: fits.Header, units: ImageUnits, exptime: float | None, profile_gain: float = 0.0,
                sky: SkyNoise | Callable[[], SkyNoise] | None = None, read_noise_e: float = 0.0,
                bias_removed: bool = False) -> EffectiveGain:
    """The effective gain (electrons per image unit) for the Poisson term, and why. The one place it is decided.

    1. Plate scans: left out (no photon counting statistics).
    2. Images in electrons: 1 (e-/s: EXPTIME), whatever GAIN says.
    3. A detector gain from the header (:func:`header_gain`), else ``profile_gain`` > 0:
       as it is for counts, times EXPTIME for a count rate; for calibrated physical units
       the header GAIN is taken as electrons per image unit, as SExtractor's GAIN_KEY does
       (said in the log: a raw e-/ADU would need the flux conversion too).
    4. Counts with no gain known: the sky variance against the sky level when the sky is
       in the image (:func:`gain_from_sky`, read noise ``read_noise_e`` removed; an upper
       bound unless ``bias_removed``), else 1 e-/ADU assumed.
    5. Calibrated units with no gain, other units: left out (errors from the RMS map).

    ``sky`` may be a callable returning the :class:`SkyNoise`: it is called only in case 4
    (measuring it reads pixels, 40-60 ms on a 4k frame that needs none when GAIN is known).
    """
    if units.kind is UnitKind.PHOTOGRAPHIC:
        return EffectiveGain(None, GainSource.LEFT_OUT,
                             f"Poisson term left out: {units.text}; errors from the background RMS only")
    t = exptime if exptime and exptime > 0 else None
    if units.kind in (UnitKind.ELECTRONS, UnitKind.ELECTRON_RATE):
        if units.kind is UnitKind.ELECTRONS:
            return EffectiveGain(1.0, GainSource.ELECTRONS, f"1 electron per image unit ({units.text})")
        if t is None:
            return EffectiveGain(None, GainSource.LEFT_OUT,
                                 f"Poisson term left out: {units.text} but no exposure time to turn a rate into electrons")
        return EffectiveGain(t, GainSource.ELECTRONS, f"EXPTIME {t:g} s electrons per (e-/s) ({units.text})")
    g, gsrc = header_gain(header)
    source = GainSource.HEADER
    if g is None and profile_gain and profile_gain > 0:
        g, gsrc, source = float(profile_gain), f"profile observatory.gain ({gsrc})", GainSource.PROFILE
    if g is not None:
        if units.kind is UnitKind.COUNT_RATE:
            if t is None:
                return EffectiveGain(None, GainSource.LEFT_OUT, f"Poisson term left out: {units.text} and {gsrc} "
                                     f"{g:g} e-/ADU but no exposure time to turn the rate into counts")
            return EffectiveGain(g * t, source, f"{gsrc} {g:g} e-/ADU x EXPTIME {t:g} s = {g * t:.4g} e- per ADU/s "
                                 f"({units.text})")
        if units.calibrated:
            text = (f"{gsrc} {g:g} taken as electrons per {units.bunit} (as SExtractor's GAIN_KEY would); "
                    f"if it is the raw e-/ADU the effective gain is larger and the Poisson term smaller")
            conv = parse_float(header.get("FLUXCONV"))
            if conv and conv > 0 and t is not None:
                text += f" (GAIN x EXPTIME / FLUXCONV = {g * t / conv:.4g})"
            return EffectiveGain(g, source, text)
        return EffectiveGain(g, source, f"{gsrc} {g:g} e-/ADU ({units.text})")
    if units.calibrated:
        return EffectiveGain(None, GainSource.LEFT_OUT,
                             f"Poisson term left out: {units.text} and {gsrc}: errors from the background RMS only "
                             "(bright sources' errors are underestimated; set observatory.gain in electrons per image unit)")
    if units.kind is UnitKind.OTHER:
        return EffectiveGain(None, GainSource.LEFT_OUT, f"Poisson term left out: {units.text}")
    if callable(sky):
        sky = sky()
    if sky is not None:
        gs = gain_from_sky(sky, read_noise_e)
        if gs is not None:
            # level / variance is electrons per image unit whether the image is counts or a count rate
            note = "" if bias_removed else "; an upper bound if a bias level is still in the data"
            return EffectiveGain(gs, GainSource.SKY,
                                 f"{gs:.3g} e- per image unit from the sky: level {sky.level:.4g} over variance "
                                 f"{sky.sigma:.4g}^2{f' less read noise {read_noise_e:g} e-' if read_noise_e else ''} "
                                 f"({gsrc}{note})")
        if sky.level == sky.level and not sky.has_sky:  # not NaN: measured, and no sky
            return EffectiveGain(None, GainSource.LEFT_OUT,
                                 f"Poisson term left out: {gsrc} and the sky is not in the image (level "
                                 f"{sky.level:.3g}, noise {sky.sigma:.3g}) to measure one; set observatory.gain")
    return EffectiveGain(1.0, GainSource.ASSUMED, f"{gsrc} nor in the profile: 1 e-/ADU assumed "
                         "(Poisson errors may be wrong); set observatory.gain")


# ---------------------------------------------------------------- zero points


class ZpConvention(enum.Enum):
    """What a header zero point applies to."""

    PER_SECOND = "per second"        # m = ZP - 2.5 log10(sum / EXPTIME)
    IMAGE_VALUES = "image values"    # m = ZP - 2.5 log10(sum of the pixel values as they are)


@dataclass(frozen=True)
class HeaderZeroPoint:
    """A zero point the header gives, in rpp's convention (``m = -2.5 log10(flux / t) + zp``, module docstring).

    ``source`` names it (``"header MAGZPT"``, ``"header BUNIT nanomaggy"``), ``value`` as written,
    ``convention`` what that value applies to, ``zp_err`` the header's error if any,
    ``system`` ``"AB"``, ``"Vega"`` or ``""`` (unknown), ``text`` the conversion in words.
    """

    zp: float
    source: str
    value: float
    convention: ZpConvention
    zp_err: float | None = None
    system: str = ""
    text: str = ""

    def to_dict(self) -> dict:
        return {"zp": self.zp, "source": self.source, "value": self.value, "convention": self.convention.value,
                "zp_err": self.zp_err, "system": self.system, "text": self.text}


@dataclass(frozen=True)
class HeaderZeroPoints:
    """Every zero point found (:func:`header_zero_points`): ``best`` is the one used, ``rejected`` why others were not."""

    found: tuple[HeaderZeroPoint, ...] = ()
    rejected: tuple[str, ...] = field(default_factory=tuple)

    @property
    def best(self) -> HeaderZeroPoint | None:
        return self.found[0] if self.found else None


#: zero-point keywords: (keyword, default convention, error keywords). MAGZPT is per second in
#: the pipelines that write it (CASU for UKIDSS/VISTA, DECam's community pipeline); the others
#: apply to the image values unless their comment says per second.
ZP_KEYWORDS = (
    ("MAGZPT", ZpConvention.PER_SECOND, ("MAGZRR", "MAGZPTER")),
    ("MAGZERO", ZpConvention.IMAGE_VALUES, ("MAGZERR",)),
    ("PHOTZP", ZpConvention.IMAGE_VALUES, ("PHOTZPER",)),
    ("MAGZP", ZpConvention.IMAGE_VALUES, ("MAGZPUNC",)),
)
_PER_SECOND = re.compile(r"per\s*s(ec(ond)?)?\b|/\s*s(ec)?\b|\b1\s*s(ec(ond)?)?\b|\bper\s+1\s*s", re.I)
_PER_EXPOSURE = re.compile(r"per\s+exposure|whole\s+exposure|for\s+the\s+(image|frame|exposure)\b", re.I)


def _system(header: fits.Header) -> str:
    v = (parse_text(header.get("PHOTSYS")) or "").upper()
    return "AB" if "AB" in v else "Vega" if "VEGA" in v else ""


def _unit_zero_point(header: fits.Header, units: ImageUnits, pixel_scale: float | None) -> tuple[HeaderZeroPoint | None, str]:
    """The AB zero point a flux-density or surface-brightness BUNIT defines, for sums of the pixel values."""
    unit = units.unit
    if unit is None:
        return None, ""
    if units.kind is UnitKind.FLUX:
        maggies = unit.to(u.mgy) if unit.is_equivalent(u.mgy) else unit.to(u.Jy) / AB_JY
        zp = -2.5 * math.log10(maggies)
        text = f"BUNIT {units.bunit}: AB magnitude {zp:.3f} for a pixel sum of 1"
        det, det_src = detector_pixel_scale(header)
        if det and pixel_scale:
            area = (pixel_scale / det) ** 2
            if abs(area - 1.0) > 0.03:
                # a per-pixel unit on pixels that are not the detector's: the image was resampled keeping
                # the value per detector pixel (a block mean, or a surface-brightness-conserving reprojection)
                zp -= 2.5 * math.log10(area)
                text += (f"; the WCS pixel ({pixel_scale:.4g}\") is {area:.3f} x the area of the detector pixel "
                         f"({det:.4g}\", {det_src}): resampled keeping values per detector pixel, so "
                         f"{-2.5 * math.log10(area):+.3f} mag (if the resampling summed pixels instead, the zero point "
                         "is the unit's)")
        return HeaderZeroPoint(zp, f"header BUNIT {units.bunit}", zp, ZpConvention.IMAGE_VALUES, None, "AB", text), ""
    if units.kind is UnitKind.SURFACE_BRIGHTNESS:
        if not pixel_scale:
            return None, f"BUNIT {units.bunit}: a surface brightness needs the pixel scale for a zero point (none known)"
        omega = (pixel_scale * u.arcsec) ** 2
        per_pixel = (1.0 * unit * omega).to(u.Jy).value
        zp = -2.5 * math.log10(per_pixel / AB_JY)
        return HeaderZeroPoint(zp, f"header BUNIT {units.bunit}", zp, ZpConvention.IMAGE_VALUES, None, "AB",
                               f"BUNIT {units.bunit} over {pixel_scale:.4g}\" pixels: AB magnitude {zp:.3f} for a "
                               "pixel sum of 1"), ""
    return None, ""


def header_zero_points(header: fits.Header, units: ImageUnits, exptime: float | None, airmass: float | None,
                       pixel_scale: float | None = None) -> HeaderZeroPoints:
    """Zero points the header gives (keywords :data:`ZP_KEYWORDS`, or a flux-density BUNIT), in rpp's convention.

    rpp's instrumental magnitude is ``-2.5 log10(flux / t)``, ``t`` = EXPTIME when
    :attr:`ImageUnits.divide_by_exptime`, else 1. A zero point for the image values
    becomes ``value - 2.5 log10(t)``; one per second is rpp's as it is (the image is
    a rate, or rpp divides by EXPTIME), and cannot be used on a counts image without
    EXPTIME. With EXTINCT (CASU: MAGZPT is for airmass 1) the frame's zero point is
    ``value - EXTINCT (X - 1)``. A calibrated BUNIT's own zero point comes first, then
    the keywords in :data:`ZP_KEYWORDS` order. Plates have none.
    """
    found: list[HeaderZeroPoint] = []
    rejected: list[str] = []
    if units.kind is UnitKind.PHOTOGRAPHIC:
        return HeaderZeroPoints((), ("photographic plate: no linear zero point",))
    t = exptime if units.divide_by_exptime and exptime and exptime > 0 else None
    if units.calibrated:
        zp_unit, why = _unit_zero_point(header, units, pixel_scale)
        if zp_unit is not None:
            found.append(zp_unit)
        elif why:
            rejected.append(why)
    extinct = parse_float(header.get("EXTINCT"))
    for key, default, err_keys in ZP_KEYWORDS:
        if key not in header:
            continue
        value = parse_float(header[key])
        if value is None or not 0.0 < value < 60.0:
            rejected.append(f"header {key} = {header[key]!r} is not a zero point")
            continue
        comment = header.comments[key] or ""
        conv = default
        if _PER_EXPOSURE.search(comment):
            conv = ZpConvention.IMAGE_VALUES
        elif _PER_SECOND.search(comment):
            conv = ZpConvention.PER_SECOND
        err = next((e for e in (parse_float(header.get(k)) for k in err_keys) if e is not None and e >= 0), None)
        text = f"header {key} = {value:g} ({conv.value}"
        if conv is ZpConvention.IMAGE_VALUES:
            zp = value - (2.5 * math.log10(t) if t else 0.0)
            text += f"; rpp divides by EXPTIME {t:g} s: {zp:.3f})" if t else ")"
        else:
            if units.divide_by_exptime and t is None:
                rejected.append(f"header {key} is per second but the exposure time is unknown")
                continue
            zp = value
            text += ", as rpp's)"
        if extinct is not None and extinct > 0:
            if airmass is not None:
                zp -= extinct * (airmass - 1.0)
                text += f", EXTINCT {extinct:g} x (airmass {airmass:.3f} - 1): {zp:.3f}"
            else:
                text += f", EXTINCT {extinct:g} not applied: airmass unknown"
        found.append(HeaderZeroPoint(zp, f"header {key}", value, conv, err, _system(header), text))
    return HeaderZeroPoints(tuple(found), tuple(rejected))
