"""Observation metadata: time, exposure, filter, gain, saturation, site, pointing, scale, airmass,
and what the pixel values mean (units, effective gain, header zero points: :mod:`.units`).

Each value comes with where it came from (``ObservationMeta.sources``), or why
it is missing. Nothing here downloads anything: IERS tables are used as
bundled with astropy (no internet at the telescope), see :func:`compute_airmass`.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import TYPE_CHECKING

from astropy import units as u
from astropy.io import fits
from astropy.time import Time
from astropy.utils import iers
from astropy.wcs import WCS
from erfa import ErfaWarning

from ..products import ExposureValues, Frame, ObservationMeta, Origin, Provenance
from ..settings import ObservatorySettings
from .keywords import (TIME_KEYS, TIME_RANGES, TIME_SOURCES, first_key, parse_angle, parse_date, parse_float, parse_text,
                       parse_time_of_day, time_sources_text)
from .pixscale import SCALE_KEYS, keyword_pixel_scale, optics_pixel_scale, plate_scan_pixel_scale, wcs_pixel_scale
from .units import GainSource, classify_units, decide_gain, header_gain, header_zero_points, sky_noise

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation


def _header(text: str) -> Provenance:
    return Provenance(text, Origin.HEADER)


def _missing(text: str) -> Provenance:
    return Provenance(text, Origin.MISSING)


def _timescale(header: fits.Header) -> str:
    ts = str(header.get("TIMESYS", "UTC")).strip().lower()
    return ts if ts in ("utc", "tai", "tt", "tdb", "tcg", "tcb") else "utc"


def _read_time(header: fits.Header) -> tuple[Time | None, Provenance, bool]:
    """(time, provenance, is_start) from the first usable keyword of :data:`.keywords.TIME_SOURCES`.

    An ISO date counts with its time of day; ``DATE-OBS`` with only a date takes it
    from TIME-OBS, UT, UTSTART or UT-START (:data:`.keywords.TIME_KEYS`). MJD/JD values
    count within :data:`.keywords.TIME_RANGES`. When nothing else gives a time, a
    ``DATE-OBS`` date alone stands at 00:00 UT (not good enough for airmass), then the
    file creation date ``DATE`` (an upper bound); both are flagged as assumed.
    ``is_start``: the time is the exposure start (the caller adds exptime/2).
    """
    scale = _timescale(header)

    def mk(val, fmt):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ERFA 'dubious year' for pre-1960 plates
            return Time(val, format=fmt, scale=scale).utc

    date_only = None  # (key, ISO date) of a date keyword without a time of day
    for tk in TIME_SOURCES:
        start = tk.moment == "start"
        if tk.moment == "file":
            if date_only is not None:
                k, iso = date_only
                return mk(iso, "iso"), Provenance(f"header {k} (date only, 00:00 assumed)", Origin.ASSUMED), True
            iso = parse_date(header.get(tk.key), file_date=True)
            if iso:
                return (mk(iso, "isot" if "T" in iso else "iso"),
                        Provenance(f"header {tk.key} (file creation date, not the observation)", Origin.ASSUMED), False)
        elif tk.form == "iso":
            iso = parse_date(header.get(tk.key))
            if iso and "T" in iso:
                return mk(iso, "isot"), _header(f"header {tk.key}" + ("" if start else " (mid-exposure)")), start
            if iso and tk.time_of_day:
                k, secs = first_key(header, TIME_KEYS, parse=parse_time_of_day)
                if k:
                    return mk(iso, "iso") + secs * u.s, _header(f"header {tk.key} + {k}"), start
                date_only = date_only or (tk.key, iso)
        else:
            lo, hi = TIME_RANGES[tk.form]
            k, v = first_key(header, [tk.key], lambda x: lo < x < hi)
            if k:
                return mk(v, tk.form), _header(f"header {k}" + ("" if start else " (mid-exposure)")), start
    return None, _missing(f"not in header ({time_sources_text()})"), False


#: exposure-time keywords, first hit wins (EXP_TIME: UKIDSS/CASU; EXPOSED, TEXPTIME, EXPTIM: other writers)
EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME", "EXPOSED", "TEXPTIME", "EXPTIM")


def read_exptime(header: fits.Header) -> tuple[float | None, Provenance]:
    """:data:`EXPTIME_KEYS` in order (s; a comment saying minutes or ms converts)."""
    for k in EXPTIME_KEYS:
        if k not in header:
            continue
        v = parse_float(header[k])
        if v is None or v < 0:
            continue
        comment = header.comments[k].lower()
        if re.search(r"\bmin(ute)?s?\b", comment):
            return v * 60.0, _header(f"header {k} (minutes per comment, x60)")
        if re.search(r"\b(ms|msec|millisec\w*)\b", comment):
            return v / 1000.0, _header(f"header {k} (ms per comment, /1000)")
        return v, _header(f"header {k}")
    return None, _missing(f"not in header ({', '.join(EXPTIME_KEYS)})")


def _read_site(header: fits.Header, obs: ObservatorySettings) -> tuple[EarthLocation | None, Provenance]:
    """SITELAT/SITELONG/SITEELEV, LAT-OBS/LONG-OBS/ALT-OBS, OBSGEO-B/L/H, OBSGEO-X/Y/Z,
    else the profile's observatory when its latitude and longitude are not both 0.

    Longitudes are east positive (degrees or sexagesimal, 'W' suffix = west).
    A missing height is taken as 0 m (said in the source).
    """
    from astropy.coordinates import EarthLocation  # here: header reads (the browser, preflight) need no coordinates

    for klat, klon, kel in (("SITELAT", "SITELONG", "SITEELEV"), ("LAT-OBS", "LONG-OBS", "ALT-OBS"),
                            ("OBSGEO-B", "OBSGEO-L", "OBSGEO-H")):
        if klat in header and klon in header:
            lat, lon = parse_angle(header[klat]), parse_angle(header[klon])
            if lat is None or lon is None or abs(lat) > 90 or not -180 <= lon <= 360:
                continue
            el = parse_float(header.get(kel))
            src = f"header {klat}/{klon}" + (f"/{kel}" if el is not None else f" (no {kel}: height 0 m)")
            return EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, (el or 0.0) * u.m), _header(src)
    xyz = [parse_float(header.get(f"OBSGEO-{c}")) for c in "XYZ"]
    if all(v is not None for v in xyz) and 6.2e6 < math.sqrt(sum(v * v for v in xyz)) < 6.5e6:
        return EarthLocation.from_geocentric(*xyz, unit=u.m), _header("header OBSGEO-X/Y/Z")
    if obs.latitude != 0.0 or obs.longitude != 0.0:
        name = f" '{obs.name}'" if obs.name else ""
        return (
            EarthLocation.from_geodetic(obs.longitude * u.deg, obs.latitude * u.deg, obs.elevation * u.m),
            Provenance(f"profile observatory{name}", Origin.PROFILE),
        )
    return None, _missing("not in header (SITELAT/SITELONG, LAT-OBS/LONG-OBS, OBSGEO-*) nor in the profile")


def _read_pointing(header: fits.Header, wcs: WCS | None, shape) -> tuple[float | None, float | None, Provenance]:
    """RA/DEC (deg, or sexagesimal strings in hours/deg), then OBJCTRA/OBJCTDEC,
    then the sky position of the frame centre through a valid WCS.

    The WCS fallback uses the frame centre rather than CRVAL because CRPIX may
    lie far outside the frame (mosaic cut-outs) and CRVAL may be galactic.
    An EQUINOX of 1950 makes RA/DEC FK4 B1950 and they are converted to ICRS.
    """
    from astropy.coordinates import SkyCoord  # here: header reads (the browser, preflight) need no coordinates

    for kra, kdec in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC")):
        if kra in header and kdec in header:
            vra = header[kra]
            hours = isinstance(vra, str) and not re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", vra)
            if not isinstance(vra, str) and re.search(r"\bhours?\b|\[h\]", header.comments[kra].lower()):
                hours = True
            ra, dec = parse_angle(vra, hours=hours), parse_angle(header[kdec])
            if ra is None or dec is None or not 0 <= ra < 360.0 + 1e-9 or abs(dec) > 90:
                continue
            src = f"header {kra}/{kdec}" + (" (sexagesimal)" if isinstance(vra, str) and hours else "")
            eq = parse_float(header.get("EQUINOX"))
            if eq is not None and abs(eq - 1950.0) < 1e-6:
                c = SkyCoord(ra * u.deg, dec * u.deg, frame="fk4", equinox="B1950").icrs
                ra, dec = float(c.ra.deg), float(c.dec.deg)
                src += ", FK4 B1950 -> ICRS"
            return ra % 360.0, dec, _header(src)
    if wcs is not None:
        ny, nx = shape
        c = wcs.celestial.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
        if isinstance(c, SkyCoord):
            c = c.icrs
            return float(c.ra.deg), float(c.dec.deg), Provenance("WCS, sky position of the frame centre", Origin.WCS)
    return None, None, _missing("not in header (RA/DEC, OBJCTRA/OBJCTDEC) and no valid WCS")


def _read_pixel_scale(header: fits.Header, wcs: WCS | None, obs: ObservatorySettings) -> tuple[float | None, Provenance]:
    """Arcsec/px, first hit wins (each reader in :mod:`.pixscale`): the WCS (sqrt |det CD|),
    then :data:`~.pixscale.SCALE_KEYS` (PIXSCALE/SECPIX/SECPIX1/PIXSCAL1), then a plate
    scan's PLTSCALE (arcsec/mm) x XPIXELSZ (um), then 206.265 x pixel size (um) / focal
    length (mm): header XPIXSZ (already binned, MaxIm convention) or profile pixel_size_um
    x XBINNING; header FOCALLEN or profile focal length.
    """
    scale = wcs_pixel_scale(wcs)
    if scale is not None:
        return scale, Provenance("WCS (sqrt |det| of the CD/PC matrix)", Origin.WCS)
    scale, src = keyword_pixel_scale(header)
    if scale is not None:
        return scale, _header(src)
    scale, src = plate_scan_pixel_scale(header)
    if scale is not None:
        return scale, _header(f"{src} (photographic plate scan)")
    binning = parse_float(header.get("XBINNING")) or 1.0
    px, px_src = parse_float(header.get("XPIXSZ")), "header XPIXSZ"
    if (not px or px <= 0) and obs.pixel_size_um > 0:
        px, px_src = obs.pixel_size_um * binning, f"profile pixel_size_um x XBINNING {binning:g}"
    fl, fl_src = parse_float(header.get("FOCALLEN")), "header FOCALLEN"
    if (not fl or fl <= 0) and obs.focal_length_mm > 0:
        fl, fl_src = obs.focal_length_mm, "profile focal_length_mm"
    scale = optics_pixel_scale(px, fl)
    if scale is not None:
        return scale, Provenance(f"206.265 x {px_src} / {fl_src}", Origin.COMPUTED)
    return None, _missing(f"no WCS, no {'/'.join(SCALE_KEYS)}, no PLTSCALE x XPIXELSZ, no pixel size and focal "
                          "length (header XPIXSZ/FOCALLEN or profile pixel_size_um/focal_length_mm)")


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
    from astropy.coordinates import AltAz, SkyCoord  # here: header reads (the browser, preflight) need no coordinates

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

    - date_obs: see :func:`_read_time` (:data:`.keywords.TIME_SOURCES`: DATE-AVG,
      MJD-AVG, DATE-OBS [+TIME-OBS/UT], DATE-BEG, MJD-OBS, JD, DATE...); a start time
      is moved to mid-exposure by + exptime/2 when the exposure time is known.
    - exptime: :data:`EXPTIME_KEYS` (seconds; comments saying minutes/ms
      are honoured, e.g. DSS 'EXPOSURE = 50 / Exposure time minutes').
    - filter: FILTER, FILTNAME, BAND.
    - gain: GAIN, EGAIN, CCDGAIN (> 0), else the mean of GAINA/GAINB...
      (:func:`.units.header_gain`), else profile ``observatory.gain`` if > 0.
    - read_noise: RDNOISE, READNOIS, RON (>= 0), else profile if > 0.
    - saturation: SATURATE, SATLEVEL, DATAMAX, else profile if > 0, else None; per-amplifier
      levels (SATURATA, SATURATB...: DECam) replace it when lower
      (estimating it from the data is the detection stage's business).
    - site: :func:`_read_site`.
    - ra/dec: :func:`_read_pointing`.
    - pixel_scale: :func:`_read_pixel_scale`.
    - airmass: AIRMASS (or SECZ) if 1 <= X <= 40, else the mean of AMSTART
      and AMEND (UKIRT, ESO), else computed with
      :func:`compute_airmass` from site, time (a real time of day, not the
      file date) and pointing, else None.
    - object: OBJECT, OBJNAME.
    - units, effective_gain, zero_points: :func:`.units.classify_units`,
      :func:`.units.decide_gain` (the sky noise measured on ``frame.data``),
      :func:`.units.header_zero_points`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # pre-1960 plates: 'dubious year' from ERFA
        return _read_metadata(frame.header, frame.wcs, frame.data.shape, observatory, data=frame.data,
                              bias_removed=frame.layout is not None)


def header_metadata(header: fits.Header, wcs: WCS | None, shape, observatory: ObservatorySettings) -> ObservationMeta:
    """:func:`read_metadata` from a header alone (no pixels read): for checks before a run.

    ``wcs``: the header's checked celestial WCS or None; ``shape``: (ny, nx) of the image.
    With no pixels there is no sky to measure a gain from: a frame that needs one reads
    as "1 e-/ADU assumed" here and gets its measured gain in the run.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # pre-1960 plates: 'dubious year' from ERFA
        return _read_metadata(header, wcs, shape, observatory)


def _read_metadata(h: fits.Header, wcs: WCS | None, shape, observatory: ObservatorySettings, *,
                   data=None, bias_removed: bool = False) -> ObservationMeta:
    src: dict[str, Provenance] = {}

    exptime, src["exptime"] = read_exptime(h)

    t, tsrc, is_start = _read_time(h)
    mid = not is_start and tsrc.origin is Origin.HEADER  # DATE-AVG / MJD-AVG
    if t is not None and is_start and exptime is not None and exptime > 0:
        t = t + (exptime / 2.0) * u.s
        tsrc += " + exptime/2 (mid-exposure)"
        mid = True
    elif t is not None and is_start:
        tsrc += " (exposure start: exposure time unknown)"
    src["date_obs"] = tsrc

    k, filt = first_key(h, ["FILTER", "FILTNAME", "BAND"], bool, parse=parse_text)
    src["filter"] = _header(f"header {k}") if k else _missing("not in header (FILTER, FILTNAME, BAND)")

    def header_or_profile(keys, prof_value, prof_name, test):
        k, v = first_key(h, keys, test)
        if k:
            return v, _header(f"header {k}")
        if prof_value and prof_value > 0:
            return float(prof_value), Provenance(f"profile observatory.{prof_name}", Origin.PROFILE)
        return None, _missing(f"not in header ({', '.join(keys)}) nor in the profile")

    gain, why = header_gain(h)
    if gain is not None:
        src["gain"] = _header(why)
    elif observatory.gain > 0:
        gain, src["gain"] = float(observatory.gain), Provenance(f"profile observatory.gain ({why})", Origin.PROFILE)
    else:
        src["gain"] = _missing(f"{why} nor in the profile")
    read_noise, src["read_noise"] = header_or_profile(
        ["RDNOISE", "READNOIS", "RON"], observatory.read_noise, "read_noise", lambda x: x >= 0)
    saturation, src["saturation"] = header_or_profile(
        ["SATURATE", "SATLEVEL", "DATAMAX"], observatory.saturation, "saturation", lambda x: x > 0)
    if src["saturation"] == "header DATAMAX":
        src["saturation"] += " (maximum data value, may lie below the true saturation)"
    amp_sat = {k: parse_float(h[k]) for k in h if _AMP_SATURATION.fullmatch(k)}
    amp_sat = {k: v for k, v in amp_sat.items() if v is not None and v > 0}
    if amp_sat and (src["saturation"].origin is not Origin.HEADER or min(amp_sat.values()) < saturation):
        # DECam-style SATURATE is the highest amplifier's level: the first amplifier to saturate sets the frame's
        k = min(amp_sat, key=amp_sat.get)
        saturation, src["saturation"] = amp_sat[k], _header(f"header {k} (the lowest amplifier level)")

    site, src["site"] = _read_site(h, observatory)
    ra, dec, src["ra"] = _read_pointing(h, wcs, shape)
    src["dec"] = src["ra"]
    pixel_scale, src["pixel_scale"] = _read_pixel_scale(h, wcs, observatory)

    airmass = None
    k, v = first_key(h, ["AIRMASS", "SECZ"])
    start, end = parse_float(h.get("AMSTART")), parse_float(h.get("AMEND"))
    if k and 1.0 <= v <= 40.0:
        airmass, src["airmass"] = v, _header(f"header {k}")
    elif start is not None and end is not None and 1.0 <= start <= 40.0 and 1.0 <= end <= 40.0:
        airmass, src["airmass"] = (start + end) / 2.0, _header("header AMSTART/AMEND mean")
    else:
        why = f"header {k} = {v:g} implausible; " if k else ""
        if site is None:
            src["airmass"] = _missing(why + "not computed: no site")
        elif t is None or tsrc.origin is Origin.ASSUMED:
            src["airmass"] = _missing(why + "not computed: no usable observation time")
        elif ra is None:
            src["airmass"] = _missing(why + "not computed: no pointing")
        else:
            airmass, alt = compute_airmass(site, t, ra, dec)
            if airmass is None:
                src["airmass"] = _missing(why + f"not computed: target below the horizon (alt {alt:.1f} deg)")
            else:
                when = "mid-exposure time" if mid else "time"
                src["airmass"] = Provenance(why + f"computed sec(z) from site, {when} and pointing (alt {alt:.2f} deg)",
                                            Origin.COMPUTED)

    k, obj = first_key(h, ["OBJECT", "OBJNAME"], bool, parse=parse_text)
    src["object"] = _header(f"header {k}") if k else _missing("not in header (OBJECT, OBJNAME)")

    units = classify_units(h)
    src["units"] = _header(units.text)
    effective = decide_gain(h, units, exptime, observatory.gain, functools.partial(sky_noise, data) if data is not None else None,
                            read_noise or 0.0, bias_removed=bias_removed)
    src["effective_gain"] = Provenance(effective.text, _GAIN_ORIGIN[effective.source])
    zero_points = header_zero_points(h, units, exptime, airmass, pixel_scale)
    best = zero_points.best
    src["zero_point"] = (_header(best.text) if best is not None
                         else _missing("; ".join(zero_points.rejected) or "no zero point in the header"))
    return ObservationMeta(date_obs=t, exptime=exptime, filter=filt, gain=gain, read_noise=read_noise,
                           saturation=saturation, site=site, ra=ra, dec=dec, pixel_scale=pixel_scale,
                           airmass=airmass, object=obj, units=units, effective_gain=effective,
                           zero_points=zero_points, sources=src)


#: how a gain decision reads as a provenance (a gain left out is no value: MISSING)
_AMP_SATURATION = re.compile(r"SATURAT[A-H]")
_GAIN_ORIGIN = {GainSource.HEADER: Origin.HEADER, GainSource.ELECTRONS: Origin.HEADER, GainSource.PROFILE: Origin.PROFILE,
                GainSource.SKY: Origin.COMPUTED, GainSource.ASSUMED: Origin.ASSUMED, GainSource.LEFT_OUT: Origin.MISSING}


def exposure_values(meta: ObservationMeta) -> ExposureValues:
    """The gain, read noise, exposure time and saturation every stage uses: the one place they are decided.

    - gain: the effective gain, electrons per image unit, that
      :func:`.units.decide_gain` chose in :func:`read_metadata` from the units, the
      header's GAIN/EGAIN/CCDGAIN/GAINA-B, the profile's ``observatory.gain`` or the
      sky; None (no Poisson term) for plates and calibrated images without a gain;
      1 e-/ADU assumed only when nothing is known;
    - read noise: header RDNOISE/READNOIS/RON, else the profile, else 0 e-;
    - exposure time: :data:`EXPTIME_KEYS` when positive, else None; what magnitudes
      divide by: the exposure time for counts and electrons, None for count rates
      and physical units (never divided twice) or without one;
    - saturation: header SATURATE/SATLEVEL/DATAMAX, else the profile, else None (the
      mask stage then takes a clipped plateau at the frame maximum as saturated).
    """
    src = dict(meta.sources)
    if meta.effective_gain is not None:
        gain, src["gain"] = meta.effective_gain.value, src["effective_gain"]
    elif meta.gain:  # metadata made by hand, not by read_metadata: the detector gain as it is
        gain = float(meta.gain)
    else:
        gain = 1.0
        src["gain"] = Provenance("no GAIN in the header or the profile: 1 e-/ADU assumed (Poisson errors may be "
                                 "wrong); set observatory.gain", Origin.ASSUMED)
    read_noise = float(meta.read_noise or 0.0)  # unknown: the sky noise dominates anyway
    exptime = meta.exptime if meta.exptime and meta.exptime > 0 else None
    divide = meta.units is None or meta.units.divide_by_exptime
    exptime_magnitudes = exptime if divide else None
    if exptime is None and divide:
        src["exptime"] = Provenance("no EXPTIME: instrumental magnitudes are per frame, not per second", Origin.ASSUMED)
    if divide:
        src["exptime_magnitudes"] = src["exptime"]
    else:
        src["exptime_magnitudes"] = _header(f"instrumental magnitudes not divided by EXPTIME: {meta.units.text}")
    saturation = float(meta.saturation) if meta.saturation and meta.saturation > 0 else None
    if saturation is None:
        src["saturation"] = _missing("none given: the frame maximum if it is a clipped plateau")
    keep = ("gain", "read_noise", "exptime", "exptime_magnitudes", "saturation")
    return ExposureValues(gain, read_noise, exptime, saturation, {k: src[k] for k in keep}, exptime_magnitudes)
