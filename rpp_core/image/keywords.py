"""Reading keyword values: dates, times of day, angles, numbers and text as FITS writers spell them."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.time import Time

#: keywords holding the time of day when DATE-OBS has only the date
TIME_KEYS = ("TIME-OBS", "UT", "UTSTART", "UT-START")


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


def parse_time_of_day(value: Any) -> float | None:
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


def parse_angle(value: Any, hours: bool = False) -> float | None:
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
        from astropy.coordinates import Angle  # here: 0.2 s of import that header reads rarely need

        a = Angle(s, unit=u.hourangle if hours else u.deg)
    except (ValueError, u.UnitsError):
        return None
    return sign * float(a.deg)


def parse_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def parse_text(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else str(value).strip()


def first_key(header: fits.Header, keys, test=lambda v: v is not None, parse=parse_float):
    """First key whose parsed value passes ``test``: (key, value) or (None, None)."""
    for k in keys:
        if k in header:
            v = parse(header[k])
            if v is not None and test(v):
                return k, v
    return None, None


def one_line(obj: Any) -> str:
    text = " ".join(str(obj).split())
    # wcslib prefixes every message with its C source location: keep the message only
    text = re.sub(r"ERROR \d+ in \w+\(\) at line \d+ of file \S+?:\s*", "", text)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class TimeKeyword:
    """A keyword the observation time is read from.

    ``form``: ``"iso"`` (a FITS date, :func:`parse_date`), ``"mjd"`` or ``"jd"`` (a number
    within :data:`TIME_RANGES`). ``moment``: ``"mid"`` (mid-exposure already), ``"start"``
    (exposure start: the reader adds half the exposure time) or ``"file"`` (the file's
    creation, an upper bound and a last resort). ``time_of_day``: a date alone takes its
    time from :data:`TIME_KEYS` (``TIME-OBS`` belongs to ``DATE-OBS``), or stands at
    00:00 as a last resort before the file date.
    """

    key: str
    form: Literal["iso", "mjd", "jd"]
    moment: Literal["mid", "start", "file"]
    time_of_day: bool = False


#: every keyword the observation time comes from, in the order :func:`.metadata.read_metadata`
#: trusts them (first usable hit wins; an ISO date without a time of day is skipped, except as
#: noted in :class:`TimeKeyword`). The one list for the reader, its "not in header" message,
#: the warnings about unreadable dates and the header repair.
TIME_SOURCES = (
    TimeKeyword("DATE-AVG", "iso", "mid"),
    TimeKeyword("MJD-AVG", "mjd", "mid"),
    TimeKeyword("DATE-OBS", "iso", "start", time_of_day=True),
    TimeKeyword("DATE-BEG", "iso", "start"),
    TimeKeyword("MJD-OBS", "mjd", "start"),
    TimeKeyword("MJD-BEG", "mjd", "start"),
    TimeKeyword("JD", "jd", "start"),
    TimeKeyword("JD-OBS", "jd", "start"),
    TimeKeyword("JD_OBS", "jd", "start"),
    TimeKeyword("DATE", "iso", "file"),
)
#: plausible values of the numeric forms: MJD after 1858-11-17 and before 2132; JD 1858-2406
TIME_RANGES = {"mjd": (0.0, 100000.0), "jd": (2.4e6, 2.6e6)}
#: the ISO date keywords read, in :data:`TIME_SOURCES` order
DATE_KEYS = tuple(t.key for t in TIME_SOURCES if t.form == "iso")
#: the exposure-start keywords of :data:`TIME_SOURCES`, then the mid-exposure ones: the ISO dates the
#: file browser shows as written
START_DATES = tuple(sorted((t for t in TIME_SOURCES if t.form == "iso" and t.moment != "file"),
                           key=lambda t: t.moment != "start"))
#: the date keywords header repair writes in ISO 8601: those read, and DATE-END (not read, but
#: kept in the headers rpp writes out)
REPAIRED_DATE_KEYS = DATE_KEYS + ("DATE-END",)


def time_sources_text() -> str:
    """The keywords of :data:`TIME_SOURCES` in order, for messages: ``DATE-AVG, MJD-AVG, DATE-OBS [+ TIME-OBS/UT/...], ...``."""
    return ", ".join(t.key + (f" [+ {'/'.join(TIME_KEYS)}]" if t.time_of_day else "") for t in TIME_SOURCES)


def unreadable_dates(header: fits.Header) -> list[str]:
    """One message per date keyword present but not a date (``2026-13-45``, ``yesterday``): it is ignored."""
    out = []
    for key in DATE_KEYS:
        value = header.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if parse_date(value, file_date=key == "DATE") is None:
            out.append(f"header {key} = {str(value)!r} is not a date (YYYY-MM-DD[Thh:mm:ss]): ignored; "
                       "fix the keyword for airmass, epochs and asteroids")
    return out
