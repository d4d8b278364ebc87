"""Observation metadata: time, exposure, filter, gain, saturation, site, pointing, scale, airmass.

Each value comes with where it came from (``ObservationMeta.sources``), or why
it is missing. Nothing here downloads anything: IERS tables are used as
bundled with astropy (no internet at the telescope), see :func:`compute_airmass`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.utils import iers
from astropy.wcs import WCS
from erfa import ErfaWarning

from ..settings import ObservatorySettings
from .header import pixel_scale_from_wcs
from .keywords import TIME_KEYS, first_key, parse_angle, parse_date, parse_float, parse_text, parse_time_of_day
from .load import Frame


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
    k, v = first_key(header, ["MJD-AVG"], lambda x: 0 < x < 100000)
    if k:
        return mk(v, "mjd"), "header MJD-AVG (mid-exposure)", False
    iso = parse_date(header.get("DATE-OBS"))
    if iso and "T" in iso:
        return mk(iso, "isot"), "header DATE-OBS", True
    if iso:
        tk, secs = first_key(header, TIME_KEYS, parse=parse_time_of_day)
        if tk:
            t = mk(iso, "iso") + secs * u.s
            return t, f"header DATE-OBS + {tk}", True
    iso_beg = parse_date(header.get("DATE-BEG"))
    if iso_beg and "T" in iso_beg:
        return mk(iso_beg, "isot"), "header DATE-BEG", True
    k, v = first_key(header, ["MJD-OBS", "MJD-BEG"], lambda x: 0 < x < 100000)
    if k:
        return mk(v, "mjd"), f"header {k}", True
    k, v = first_key(header, ["JD", "JD-OBS", "JD_OBS"], lambda x: 2.4e6 < x < 2.6e6)
    if k:
        return mk(v, "jd"), f"header {k}", True
    if iso:
        return mk(iso, "iso"), "header DATE-OBS (date only, 00:00 assumed)", True
    iso = parse_date(header.get("DATE"), file_date=True)
    if iso:
        return mk(iso, "isot" if "T" in iso else "iso"), "header DATE (file creation date, not the observation)", False
    return None, "not in header (DATE-AVG, DATE-OBS, TIME-OBS/UT, DATE-BEG, MJD-OBS, JD, DATE)", False


def read_exptime(header: fits.Header) -> tuple[float | None, str]:
    """EXPTIME, then EXPOSURE, then ITIME (s; a comment saying minutes or ms converts)."""
    for k in ("EXPTIME", "EXPOSURE", "ITIME"):
        if k not in header:
            continue
        v = parse_float(header[k])
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
            lat, lon = parse_angle(header[klat]), parse_angle(header[klon])
            if lat is None or lon is None or abs(lat) > 90 or not -180 <= lon <= 360:
                continue
            el = parse_float(header.get(kel))
            src = f"header {klat}/{klon}" + (f"/{kel}" if el is not None else f" (no {kel}: height 0 m)")
            return EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, (el or 0.0) * u.m), src
    xyz = [parse_float(header.get(f"OBSGEO-{c}")) for c in "XYZ"]
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
            ra, dec = parse_angle(vra, hours=hours), parse_angle(header[kdec])
            if ra is None or dec is None or not 0 <= ra < 360.0 + 1e-9 or abs(dec) > 90:
                continue
            src = f"header {kra}/{kdec}" + (" (sexagesimal)" if isinstance(vra, str) and hours else "")
            eq = parse_float(header.get("EQUINOX"))
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
    k, v = first_key(header, ["PIXSCALE", "SECPIX", "SECPIX1", "PIXSCAL1"], lambda x: 0 < x < 3600)
    if k:
        return v, f"header {k}"
    plt, xps = parse_float(header.get("PLTSCALE")), parse_float(header.get("XPIXELSZ"))
    if plt and xps and plt > 0 and xps > 0:
        return plt * xps / 1000.0, "header PLTSCALE x XPIXELSZ (photographic plate scan)"
    binning = parse_float(header.get("XBINNING")) or 1.0
    px, px_src = parse_float(header.get("XPIXSZ")), "header XPIXSZ"
    if (not px or px <= 0) and obs.pixel_size_um > 0:
        px, px_src = obs.pixel_size_um * binning, f"profile pixel_size_um x XBINNING {binning:g}"
    fl, fl_src = parse_float(header.get("FOCALLEN")), "header FOCALLEN"
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

    m.exptime, src["exptime"] = read_exptime(h)

    t, tsrc, is_start = _read_time(h)
    if t is not None and is_start and m.exptime is not None and m.exptime > 0:
        t = t + (m.exptime / 2.0) * u.s
        tsrc += " + exptime/2 (mid-exposure)"
    elif t is not None and is_start:
        tsrc += " (exposure start: exposure time unknown)"
    m.date_obs, src["date_obs"] = t, tsrc

    k, v = first_key(h, ["FILTER", "FILTNAME", "BAND"], bool, parse=parse_text)
    m.filter, src["filter"] = (v, f"header {k}") if k else (None, "not in header (FILTER, FILTNAME, BAND)")

    def header_or_profile(keys, prof_value, prof_name, test):
        k, v = first_key(h, keys, test)
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

    k, v = first_key(h, ["AIRMASS", "SECZ"])
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

    k, v = first_key(h, ["OBJECT", "OBJNAME"], bool, parse=parse_text)
    m.object, src["object"] = (v, f"header {k}") if k else (None, "not in header (OBJECT, OBJNAME)")
    return m
