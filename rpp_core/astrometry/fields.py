"""Index files for the fields you observe, built from a Gaia DR3 cone fetched once and cached.

``rpp index build --field RA DEC --radius R`` (or ``--fields FILE``, or
``--frames PATH``) asks the Gaia archive for the stars of each field through
the catalogue layer (:func:`rpp_core.catalogs.gaia.fetch_gaia_field`: bounded
requests, the on-disk answer cache), so building again, or solving on a later
night, needs no network. The scale presets come from the width of the frames
to be solved (:func:`~.index.scales_for_field`); the files go to the folder the
solver searches by default (:func:`rpp_core.locations.index_dir`).

Positions ICRS degrees (at the Gaia epoch, J2016.0: proper motions move stars far
less than a solve needs), radii degrees, widths arcmin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from astropy.table import Table

from ..errors import InputError, UsageError
from ..progress import CancelFn, LogFn
from ..settings import AstrometrySettings, ObservatorySettings, ServicesSettings
from .coverage import sky_sep_deg
from .hints import solve_hints
from .index import build_index, scales_for_field

#: files of a folder read as frames by ``--frames``
FRAME_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz", ".fits.bz2")
#: a field cone is this many times the frame's half-diagonal, so frames of a night that wander stay inside
FIELD_MARGIN = 1.5


@dataclass(frozen=True)
class SkyField:
    """A patch of sky to build index files for.

    ``width`` is the range of frame widths (arcmin) to be solved there, None when
    unknown (then the cone's own size stands for it: frames fill the cone).
    """

    ra: float
    dec: float
    radius_deg: float
    width: tuple[float, float] | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        if not (0.0 <= self.ra < 360.0 + 1e-9 and -90.0 <= self.dec <= 90.0):
            raise UsageError(f"field RA {self.ra} Dec {self.dec}: RA must be 0-360 and Dec -90..+90 degrees")
        if not 0 < self.radius_deg <= 10.0:
            raise UsageError(f"field radius {self.radius_deg} deg: give 0 < R <= 10 degrees "
                             "(a Gaia cone wider than that is too large for one index)")
        if self.width is not None and not 0 < self.width[0] <= self.width[1]:
            raise UsageError(f"field width {self.width}: give a positive width in arcmin")

    @property
    def name(self) -> str:
        """File-name part: ``gaia-287.3248+59.4939-r0.30``."""
        return f"gaia-{self.ra:.4f}{self.dec:+.4f}-r{self.radius_deg:.2f}"

    def presets(self) -> list[int]:
        lo, hi = self.width if self.width else (self.radius_deg * 60.0 * math.sqrt(2.0),) * 2
        return scales_for_field(lo, hi)

    def describe(self) -> str:
        width = f", frames {self.width[0]:.3g}'-{self.width[1]:.3g}' wide" if self.width else ""
        origin = f" ({self.origin})" if self.origin else ""
        return f"RA {self.ra:.4f} Dec {self.dec:+.4f} r {self.radius_deg:.3g} deg{width}{origin}"


def parse_width(text: str | float | None) -> tuple[float, float] | None:
    """``"7.1"`` or ``"7-28"`` (arcmin) -> (lo, hi); None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text), float(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*(?:-|\.\.|:)\s*([0-9.]+)\s*", str(text))
    try:
        lo, hi = (float(m.group(1)), float(m.group(2))) if m else (float(text),) * 2
    except ValueError:
        raise UsageError(f"field width {text!r}: give arcmin, e.g. 7.1 or 7-28") from None
    return min(lo, hi), max(lo, hi)


def parse_coordinate(text: str, is_ra: bool) -> float:
    """Degrees from ``"287.3248"``, or sexagesimal ``"19:09:18"`` (RA in hours) / ``"+59:29:38"``."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    from astropy import units as u
    from astropy.coordinates import Angle

    try:
        return float(Angle(text, unit=u.hourangle if is_ra else u.deg).deg)
    except (ValueError, TypeError):
        raise UsageError(f"{'RA' if is_ra else 'Dec'} {text!r}: give degrees or sexagesimal "
                         f"({'hh:mm:ss' if is_ra else '+dd:mm:ss'})") from None


def fields_from_file(path: str | Path) -> list[SkyField]:
    """Fields listed one a line: ``RA DEC RADIUS [WIDTH]`` (deg or sexagesimal, deg, arcmin); ``#`` comments."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{p}: cannot read the field list ({exc.strerror or exc})") from None
    out = []
    for k, line in enumerate(lines, 1):
        words = [w for w in re.split(r"[\s,;]+", line.split("#", 1)[0].strip()) if w]
        if not words:
            continue
        if len(words) not in (3, 4):
            raise UsageError(f"{p}, line {k}: {line.strip()!r}: give RA DEC RADIUS [WIDTH_ARCMIN]")
        try:
            radius = float(words[2])
        except ValueError:
            raise UsageError(f"{p}, line {k}: radius {words[2]!r} is not a number of degrees") from None
        out.append(SkyField(parse_coordinate(words[0], True), parse_coordinate(words[1], False), radius,
                            parse_width(words[3]) if len(words) == 4 else None, f"{p.name} line {k}"))
    if not out:
        raise UsageError(f"{p}: no fields in it (lines of RA DEC RADIUS [WIDTH_ARCMIN])")
    return out


def frame_paths(paths: Iterable[str | Path]) -> list[Path]:
    """The frames among ``paths``: files as given, folders searched (not recursively) for FITS files."""
    out: list[Path] = []
    for path in paths:
        p = Path(path).expanduser()
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(FRAME_SUFFIXES)))
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def field_of_frame(path: str | Path, observatory: ObservatorySettings | None = None,
                   settings: AstrometrySettings | None = None) -> SkyField:
    """The field a frame needs an index for: its pointing, and its width from every pixel-scale hint.

    Raises :class:`InputError` when the header gives no pointing or no pixel scale.
    """
    from ..image import load_frame, read_metadata

    settings = settings or AstrometrySettings()
    frame = load_frame(path)
    meta = read_metadata(frame, observatory or ObservatorySettings())
    # a WCS that parsed gives the frame's size; a rejected one would have been caught when solving
    hints = solve_hints(frame, meta, trust_wcs_scale=frame.wcs_status == "ok")
    if not hints.has_position:
        raise InputError(f"{path}: no pointing in the header (RA/DEC, OBJCTRA/OBJCTDEC or a WCS): give the field "
                         "with --field RA DEC --radius R instead")
    srange = hints.scale_range(settings.scale_tolerance)
    if srange is None:
        raise InputError(f"{path}: no pixel scale in the header (WCS, PIXSCALE, XPIXSZ and FOCALLEN): give "
                         "[observatory] pixel_size_um and focal_length_mm, or --field ... --field-width W")
    ny, nx = frame.data.shape[-2:]
    widths = (max(nx, ny) * srange[0] / 60.0, max(nx, ny) * srange[1] / 60.0)
    radius = FIELD_MARGIN * 0.5 * math.hypot(nx, ny) * srange[1] / 3600.0
    return SkyField(hints.ra % 360.0, hints.dec, radius, widths, Path(path).name)


def merge_fields(fields: Sequence[SkyField]) -> list[SkyField]:
    """Fields whose centres lie inside another's cone become one cone covering both (a night on one target)."""
    merged: list[SkyField] = []
    for f in fields:
        for k, m in enumerate(merged):
            sep = sky_sep_deg(f.ra, f.dec, m.ra, m.dec)
            if sep <= max(m.radius_deg, f.radius_deg):
                width = None if m.width is None or f.width is None else \
                    (min(m.width[0], f.width[0]), max(m.width[1], f.width[1]))
                radius = max(m.radius_deg, sep + f.radius_deg)
                merged[k] = SkyField(m.ra, m.dec, min(radius, 10.0), width, m.origin)
                break
        else:
            merged.append(f)
    return merged


async def gaia_cone(field: SkyField, services: ServicesSettings, *, client=None, cancel=None,
                    log: LogFn | None = None, mag_limit: float | None = None) -> Table:
    """The Gaia DR3 stars of a field (``ra``, ``dec`` deg, ``mag`` = G) through the cached catalogue layer."""
    from ..catalogs.gaia import fetch_gaia_field
    from ..catalogs.http import OfflineMiss, ServiceClient

    if mag_limit is not None:
        services = dataclasses.replace(services, gaia_mag_limit=mag_limit)
    own = client is None
    client = client or ServiceClient(services, log=(lambda m, level="INFO": log(m)) if log else None)
    try:
        tab = await fetch_gaia_field(field.ra, field.dec, field.radius_deg, None, services, client=client,
                                     cancel=cancel, log=(lambda m, level="INFO": log(m)) if log else None)
    except OfflineMiss as exc:
        from ..errors import ServiceError

        raise ServiceError(f"Gaia DR3 cone for {field.describe()}: {exc}. Run once with the network to fetch "
                           "and cache it") from None
    finally:
        if own:
            await client.aclose()
    mag = np.asarray(tab["gaia_phot_g_mean_mag"], float)
    ok = np.isfinite(mag) & np.isfinite(np.asarray(tab["ra"], float)) & np.isfinite(np.asarray(tab["dec"], float))
    return Table({"ra": np.asarray(tab["ra"], float)[ok], "dec": np.asarray(tab["dec"], float)[ok], "mag": mag[ok]})


async def build_field_indexes(fields: Sequence[SkyField], out_dir: str | Path, services: ServicesSettings, *,
                              scales: Sequence[int] | None = None, mag_limit: float | None = None,
                              log: LogFn | None = None, cancel: CancelFn | None = None,
                              timeout_s: float = 600.0) -> list[Path]:
    """Index files for each field from its Gaia DR3 cone (fetched once, then from the answer cache).

    Parameters
    ----------
    fields : sequence of SkyField
    out_dir : path
        Where the files go (created); the solver searches ``locations.index_dir()`` by default.
    services : ServicesSettings
        Gaia endpoint, timeouts, cache, ``offline`` (then only cached cones are used).
    scales : sequence of int, optional
        Presets for every field; default from each field's frame width (:meth:`SkyField.presets`).
    mag_limit : float, optional
        Faintest G (default ``services.gaia_mag_limit``).

    Returns
    -------
    list of Path
        Every index file written.

    Raises
    ------
    ServiceError
        The Gaia archive could not be reached, or offline without a cached cone.
    AstrometryError
        build-astrometry-index failed or the cone holds too few stars.
    """
    log = log or (lambda _line: None)
    from ..catalogs.http import ServiceClient

    paths: list[Path] = []
    async with ServiceClient(services, log=lambda m, level="INFO": log(m)) as client:
        for f in fields:
            cone = await gaia_cone(f, services, client=client, cancel=cancel, log=log, mag_limit=mag_limit)
            presets = list(scales) if scales else f.presets()
            log(f"{f.describe()}: {len(cone)} Gaia DR3 stars, scale presets {presets[0]}..{presets[-1]}")
            paths += await asyncio.to_thread(build_index, cone, out_dir, scales=presets, name=f.name,
                                             timeout_s=timeout_s, log=log, cancel=cancel)
    return paths
