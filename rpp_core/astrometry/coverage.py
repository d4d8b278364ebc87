"""What the index files can solve, read from the files themselves, and which index to get when none can.

An astrometry.net index holds quads (4-star patterns) of one size range and the
stars they are made of. Its primary header says the quad sizes (``SCALE_L``,
``SCALE_U``, radians) and whether it covers a healpix tile (``HEALPIX``,
``HPNSIDE``; -1 = the whole sky, also written for indexes built from a cone).
Where its stars lie is read from the star kd-tree (``kdtree_data_stars``,
unit vectors, ``kdtree_range_stars`` for the integer encodings), sampled: an
index built from a Gaia cone covers that cone only, whatever ``HEALPIX`` says.

A frame of ``nx`` x ``ny`` pixels at ``s`` arcsec/px can be solved by an index
whose quads are between a tenth of its shorter side and its longer side
(astrometry.net's guidance: quads of 10 % to 100 % of the image). solve-field
itself accepts quads up to the diagonal, but quads that large rarely have all
four stars inside the frame, and Tycho-2 indexes, whose quads start at 22',
would then run to the time limit on 16' frames.

Scales in arcsec/px, quad sizes in arcsec (arcmin in messages), sky in degrees (ICRS).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from astropy.io import fits

#: quads used for a frame: from this fraction of its shorter side ...
QUAD_FRACTION_LO = 0.1
#: ... to this fraction of its longer side
QUAD_FRACTION_HI = 1.0
#: field widths (deg) tried without a scale hint; solve-field's own default starts at 0.1 deg, which
#: leaves out frames narrower than 6' (a 5' frame solved with a scale hint, never without)
BLIND_WIDTH_DEG = (0.5 / 60.0, 180.0)
#: stars read from an index to find where it lies on the sky
MAX_SAMPLE = 20000

#: Debian packages of astrometry.net index files and the quad sizes (arcmin) their descriptions give.
#: 2MASS (4200 series) is in contrib: the package downloads the files from data.astrometry.net at install.
DEBIAN_PACKAGES: tuple[tuple[str, float, float], ...] = (
    ("astrometry-data-2mass-00", 2.0, 2.8), ("astrometry-data-2mass-01", 2.8, 4.0),
    ("astrometry-data-2mass-02", 4.0, 5.6), ("astrometry-data-2mass-03", 5.6, 8.0),
    ("astrometry-data-2mass-04", 8.0, 11.0), ("astrometry-data-2mass-05", 11.0, 16.0),
    ("astrometry-data-2mass-06", 16.0, 22.0), ("astrometry-data-2mass-07", 22.0, 30.0),
    ("astrometry-data-2mass-08-19", 30.0, 2000.0),
    ("astrometry-data-tycho2-07", 22.0, 30.0), ("astrometry-data-tycho2-08", 30.0, 44.0),
    ("astrometry-data-tycho2-09", 44.0, 60.0), ("astrometry-data-tycho2-10-19", 60.0, 2000.0),
)


@dataclass(frozen=True)
class IndexInfo:
    """One index file: its quad sizes and where its stars are.

    Attributes
    ----------
    path : Path
    index_id : int or None
        ``INDEXID``.
    quad_lo, quad_hi : float
        Quad sizes, arcsec (nan when the header does not say: then any frame may use it).
    n_stars : int
    cone : (ra, dec, radius) or None
        Circle (deg) round the index's stars; None for the whole sky.
    problem : str
        Why the file cannot be used ('' when it can).
    """

    path: Path
    index_id: int | None
    quad_lo: float
    quad_hi: float
    n_stars: int
    cone: tuple[float, float, float] | None
    problem: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    def fits_quads(self, quad_lo: float, quad_hi: float) -> bool:
        """Whether its quads overlap ``[quad_lo, quad_hi]`` arcsec (unknown sizes always do)."""
        if not (math.isfinite(self.quad_lo) and math.isfinite(self.quad_hi)):
            return True
        return not (quad_lo > self.quad_hi or quad_hi < self.quad_lo)

    def covers(self, ra: float, dec: float, margin_deg: float = 0.0) -> bool:
        """Whether ``(ra, dec)`` lies within ``margin_deg`` of its stars' circle."""
        if self.cone is None:
            return True
        return sky_sep_deg(ra, dec, self.cone[0], self.cone[1]) <= self.cone[2] + margin_deg

    def describe(self) -> str:
        quads = (f"quads {_arcmin(self.quad_lo)}-{_arcmin(self.quad_hi)}"
                 if math.isfinite(self.quad_lo) else "quad sizes not in its header")
        where = "whole sky" if self.cone is None else \
            f"RA {self.cone[0]:.4f} Dec {self.cone[1]:+.4f} r {self.cone[2]:.2f} deg"
        return f"{self.name} ({quads}, {where})"


def sky_sep_deg(ra1, dec1, ra2, dec2) -> float:
    """Angular distance (deg) between two ICRS positions (deg)."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    a = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(a))))


def _arcmin(arcsec: float) -> str:
    m = arcsec / 60.0
    return f"{m:.1f}'" if m < 10 else f"{m:.0f}'"


# ---------------------------------------------------------------- reading index files

def _star_cone(path: Path, hdul) -> tuple[float, float, float] | None:
    """Circle (ra, dec, radius deg) round a sample of the index's stars, None for (nearly) the whole sky."""
    found: dict[str, int] = {}
    for i in range(1, len(hdul)):
        name = str(hdul[i].header.get("TTYPE1", ""))
        if name in ("kdtree_header_stars", "kdtree_data_stars", "kdtree_range_stars"):
            found[name] = i
    if "kdtree_header_stars" not in found or "kdtree_data_stars" not in found:
        raise ValueError("no star kd-tree (kdtree_data_stars) in the file")
    kh = hdul[found["kdtree_header_stars"]].header
    ndim, n = int(kh.get("KDT_NDIM", 3)), int(kh.get("KDT_NDAT", 0))
    kind = str(kh.get("KDT_DATA", "double")).strip()
    endian = "<" if str(kh.get("ENDIAN", "04:03:02:01")).strip() == "04:03:02:01" else ">"
    dtype = {"double": "f8", "float": "f4", "u64": "u8", "u32": "u4", "u16": "u2"}[kind]
    if ndim != 3 or n == 0:
        raise ValueError(f"star kd-tree has {ndim} dimensions and {n} stars")
    # read in place: an all-sky Tycho-2 index holds about 2 million stars, a sample says where they are
    offset = hdul.fileinfo(found["kdtree_data_stars"])["datLoc"]
    stars = np.memmap(path, dtype=endian + dtype, mode="r", offset=offset, shape=(n, ndim))
    step = max(1, n // MAX_SAMPLE)
    xyz = np.asarray(stars[::step], float)
    del stars
    if kind not in ("double", "float"):
        # integer kd-trees store (x - min) * scale; the range table holds min[ndim], max[ndim], scale
        rng = np.frombuffer(hdul[found["kdtree_range_stars"]].data.tobytes(), endian + "f8")
        xyz = rng[:ndim] + xyz / rng[2 * ndim]
    xyz /= np.linalg.norm(xyz, axis=1)[:, None]
    mean = xyz.mean(axis=0)
    if np.linalg.norm(mean) < 0.3:
        return None
    centre = mean / np.linalg.norm(mean)
    radius = float(np.degrees(np.arccos(np.clip(xyz @ centre, -1.0, 1.0))).max())
    # the sample misses the outermost stars by about one sample spacing
    radius += float(np.degrees(np.sqrt(4 * np.pi * (1 - np.cos(np.radians(radius))) / len(xyz))))
    if radius > 100.0:
        return None
    ra = float(np.degrees(np.arctan2(centre[1], centre[0])) % 360.0)
    dec = float(np.degrees(np.arcsin(np.clip(centre[2], -1.0, 1.0))))
    return ra, dec, radius


@functools.lru_cache(maxsize=512)
def _read_index_info(path: str, _mtime_ns: int, _size: int) -> IndexInfo:
    p = Path(path)
    try:
        with fits.open(p, memmap=True, lazy_load_hdus=True) as hdul:
            h = hdul[0].header
            lo, hi = h.get("SCALE_L"), h.get("SCALE_U")
            index_id = h.get("INDEXID")
            n_stars = int(h.get("NSTARS", 0) or 0)
            if h.get("AN_FILE", "").strip() != "QUAD" and lo is None:
                return IndexInfo(p, None, math.nan, math.nan, 0, None, "not an astrometry.net index file (no AN_FILE = QUAD)")
            cone = _star_cone(p, hdul)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return IndexInfo(p, None, math.nan, math.nan, 0, None, f"unreadable ({exc})")
    rad2as = 180.0 / math.pi * 3600.0
    q_lo = float(lo) * rad2as if lo is not None else math.nan
    q_hi = float(hi) * rad2as if hi is not None else math.nan
    return IndexInfo(p, int(index_id) if index_id is not None else None, q_lo, q_hi, n_stars, cone)


def read_index_info(path: str | os.PathLike) -> IndexInfo:
    """Quad sizes and sky area of one index file (cached until the file changes)."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError as exc:
        return IndexInfo(p, None, math.nan, math.nan, 0, None, f"unreadable ({exc})")
    return _read_index_info(str(p), st.st_mtime_ns, st.st_size)


def index_infos(paths: Iterable[str | os.PathLike]) -> list[IndexInfo]:
    """:func:`read_index_info` of each file."""
    return [read_index_info(p) for p in paths]


# ---------------------------------------------------------------- frames and indexes

def quad_range(shape: Sequence[int], scale_lo: float, scale_hi: float) -> tuple[float, float]:
    """Quad sizes (arcsec) that fit a frame of ``shape`` (ny, nx) at ``scale_lo``-``scale_hi`` arcsec/px."""
    ny, nx = int(shape[0]), int(shape[1])
    return QUAD_FRACTION_LO * min(nx, ny) * scale_lo, QUAD_FRACTION_HI * max(nx, ny) * scale_hi


def blind_scale_range(shape: Sequence[int]) -> tuple[float, float]:
    """The pixel scales (arcsec/px) tried without a hint: fields of 0.5' to 180 deg."""
    n = max(int(shape[0]), int(shape[1]))
    return BLIND_WIDTH_DEG[0] * 3600.0 / n, BLIND_WIDTH_DEG[1] * 3600.0 / n


def field_radius_deg(shape: Sequence[int], scale: float) -> float:
    """Half the frame diagonal, deg."""
    return 0.5 * math.hypot(int(shape[0]), int(shape[1])) * scale / 3600.0


def debian_packages_for(quad_lo: float, quad_hi: float) -> list[tuple[str, float, float]]:
    """Debian index packages whose quads (arcmin) overlap ``[quad_lo, quad_hi]`` arcsec."""
    lo, hi = quad_lo / 60.0, quad_hi / 60.0
    return [p for p in DEBIAN_PACKAGES if not (lo > p[2] or hi < p[1])]


def index_advice(shape: Sequence[int], scale_lo: float | None, scale_hi: float | None,
                 ra: float | None, dec: float | None) -> str:
    """Which index would solve this frame: Debian packages, or ``rpp index build`` for its field.

    The advice aims at quads of a third of the frame's width up to its width,
    the sizes that solve a frame fastest.
    """
    ny, nx = int(shape[0]), int(shape[1])
    if scale_lo is None or scale_hi is None:
        return ("give the pixel scale (header PIXSCALE, or XPIXSZ and FOCALLEN, or [observatory] pixel_size_um "
                "and focal_length_mm) so rpp can tell which index files fit, then build them with "
                "`rpp index build --field RA DEC --radius R` or install Debian astrometry-data-* packages")
    w_lo, w_hi = max(nx, ny) * scale_lo, max(nx, ny) * scale_hi
    parts = []
    packages = debian_packages_for(w_lo / 3.0, w_hi)
    if packages:
        groups = []
        for family, note in (("2mass", "; contrib: downloads its files at install"), ("tycho2", "")):
            mine = [p for p in packages if f"-{family}-" in p[0]]
            if mine:
                names = mine[0][0] + (f" to -{mine[-1][0].split(f'-{family}-')[1]}" if len(mine) > 1 else "")
                groups.append(f"{names} (quads {mine[0][1]:g}'-{mine[-1][2]:g}'{note})")
        parts.append("install the Debian package" + ("s " if len(packages) > 1 else " ") + " or ".join(groups))
    else:
        parts.append(f"no Debian index package has quads this small (the smallest, {DEBIAN_PACKAGES[0][0]}, "
                     f"holds {DEBIAN_PACKAGES[0][1]:g}'-{DEBIAN_PACKAGES[0][2]:g}' quads)")
    width = f"{w_hi / 60.0:.3g}"
    if ra is not None and dec is not None:
        # the cone covers the frame with room for the pointing to wander by half a frame
        radius = max(0.05, math.ceil(1.5 * 0.5 * math.hypot(nx, ny) * scale_hi / 3600.0 * 20) / 20)
        parts.append(f"build one from Gaia DR3 for this field: `rpp index build --field {ra:.4f} {dec:+.4f} "
                     f"--radius {radius:g} --field-width {width}` (needs the network once; the cone is cached)")
    else:
        parts.append(f"build one from Gaia DR3 for the field: `rpp index build --field RA DEC --radius R "
                     f"--field-width {width}`")
    return "; or ".join(parts)
