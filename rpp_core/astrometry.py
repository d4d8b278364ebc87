"""Astrometry: decide whether a frame needs a WCS, plate-solve it, refine it.

Solvers
-------
* astrometry.net ``solve-field`` (default, offline). It is fed our own source
  list as an xylist FITS table (1-based ``X``, ``Y`` and ``FLUX``), with the
  index folders written into a backend config file (``--config``). Scale and
  position hints come from :class:`ObservationMeta`; a hinted solve that fails
  is retried blind. The solver runs as a subprocess in its own process group,
  polled every 0.2 s, killed as a group on cancel or timeout.
* ``siril-cli`` as second solver, only when the installed Siril can
  plate-solve from scripts (``platesolve`` exists from Siril 1.2; Debian 12
  ships 1.0.6, which cannot).

Refinement fits a TAN (and, when the residuals call for it, TAN-SIP) WCS to
detections matched with a reference catalogue; a rough starting WCS is first
brought close with stdpipe's quad-hash matcher. The better of the old and the
new WCS is kept.

Conventions: pixel ``x``, ``y`` are 0-based (the solver files are 1-based,
converted here); sky coordinates in degrees (ICRS); residuals in arcsec;
pixel scale in arcsec/px.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import fit_wcs_from_points, proj_plane_pixel_scales
from scipy.spatial import cKDTree

from .errors import AstrometryError, Cancelled, UsageError
from .settings import AstrometrySettings

LogFn = Callable[[str], None]
CancelFn = Callable[[], bool]
ProgressFn = Callable[[int, int], None]

#: Where Debian's astrometry-data-* packages put their index files.
SYSTEM_INDEX_DIR = Path("/usr/share/astrometry")
#: Poll interval of the solver subprocess (cancel, timeout, output), s.
POLL_S = 0.2
#: First Siril release whose scripts have the ``platesolve`` command.
SIRIL_MIN_PLATESOLVE = (1, 2, 0)


@dataclass
class SolveResult:
    """A WCS and how good it is.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS, pixel origin as usual for astropy (``all_pix2world(x, y, 0)``
        takes 0-based pixels). ``wcs.pixel_shape`` is ``(nx, ny)`` when known.
    rms_arcsec : float
        RMS of the sky separations of the matched stars, arcsec (nan if unknown).
    n_matched : int
        Stars matched between the detections and the reference (or solver index).
    method : str
        What produced the WCS, e.g. ``"astrometry.net (hinted)"``,
        ``"refine TAN-SIP 2"``, ``"kept original"``.
    log : list of str
        Human-readable lines for the run log.
    pixel_scale : float
        Mean pixel scale of the WCS, arcsec/px.
    elapsed_s : float
        Wall-clock time spent, s.
    """

    wcs: WCS
    rms_arcsec: float
    n_matched: int
    method: str
    log: list[str] = field(default_factory=list)
    pixel_scale: float = float("nan")
    elapsed_s: float = 0.0


@dataclass
class SirilInfo:
    """What the installed ``siril-cli`` can do."""

    path: str | None
    version: tuple[int, int, int] | None
    can_platesolve: bool
    message: str


# ---------------------------------------------------------------- small helpers

def _noop(*_a, **_k) -> None:
    return None


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale of a celestial WCS, arcsec/px."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _read_wcs_header(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, relax=True)


def _source_arrays(sources: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (0-based px) and a brightness for ordering, brightest first.

    Any flux-like column works: ``flux``, then the first ``flux_<aperture>``,
    ``psf_flux``, ``peak``. Without one, the table order is taken as the
    brightness order.
    """
    if "x" not in sources.colnames or "y" not in sources.colnames:
        raise AstrometryError(f"source list has no x/y columns (columns: {sources.colnames}); run detection first")
    x = np.asarray(sources["x"], float)
    y = np.asarray(sources["y"], float)
    names = sources.colnames
    candidates = ["flux"] + [c for c in names if c.startswith("flux_") and not c.startswith("flux_err")
                             and "err" not in c] + ["psf_flux", "peak"]
    flux = None
    for c in candidates:
        if c in names:
            v = np.asarray(np.ma.filled(np.ma.asarray(sources[c], float), np.nan), float)
            if np.isfinite(v).sum() >= max(3, 0.5 * len(v)):
                flux = v
                break
    if flux is None:
        flux = np.arange(len(x), 0, -1, dtype=float)
    good = np.isfinite(x) & np.isfinite(y)
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    x, y, flux = x[good], y[good], flux[good]
    order = np.argsort(-flux, kind="stable")
    return x[order], y[order], flux[order]


_RA_NAMES = ("ra", "RA", "RAJ2000", "ra_deg", "RA_ICRS", "_RAJ2000", "ALPHA_J2000")
_DEC_NAMES = ("dec", "DEC", "Dec", "DEJ2000", "dec_deg", "DE_ICRS", "_DEJ2000", "DELTA_J2000")
_MAG_NAMES = ("mag", "MAG", "phot_g_mean_mag", "G", "Gmag", "rmag", "Vmag", "VTmag", "MAG_VT")


def _pick(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    for w in wanted:
        if w in names:
            return w
    lower = {n.lower(): n for n in names}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    return None


def reference_table(refcat: Table | str | os.PathLike, ra_col: str | None = None, dec_col: str | None = None,
                    mag_col: str | None = None) -> Table:
    """Normalise a reference catalogue to a table with ``ra``, ``dec`` (deg, ICRS) and ``mag``.

    Accepts a :class:`~astropy.table.Table` or a file astropy reads (CSV, ECSV,
    FITS, VOTable). Galactic ``l``/``b`` columns are converted to ICRS when the
    table has no RA/Dec. Rows without finite positions or magnitude are dropped;
    the result is sorted brightest first.
    """
    if not isinstance(refcat, Table):
        path = Path(refcat)
        if not path.exists():
            raise UsageError(f"reference catalogue {path} does not exist")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                refcat = Table.read(path, format="ascii.csv") if path.suffix.lower() == ".csv" else Table.read(path)
        except Exception as exc:  # astropy raises many kinds for unreadable files
            raise UsageError(f"cannot read reference catalogue {path}: {exc}") from None
    names = refcat.colnames
    ra_name = ra_col or _pick(names, _RA_NAMES)
    dec_name = dec_col or _pick(names, _DEC_NAMES)
    if ra_name and dec_name and ra_name in names and dec_name in names:
        ra = np.asarray(np.ma.filled(np.ma.asarray(refcat[ra_name], float), np.nan), float)
        dec = np.asarray(np.ma.filled(np.ma.asarray(refcat[dec_name], float), np.nan), float)
    else:
        l_name, b_name = _pick(names, ("l", "GLON", "glon")), _pick(names, ("b", "GLAT", "glat"))
        if not (l_name and b_name):
            raise UsageError(f"reference catalogue has no RA/Dec (or l/b) columns; columns are {names}: "
                             "name them with ra_col/dec_col")
        gal = SkyCoord(l=np.asarray(refcat[l_name], float) * u.deg, b=np.asarray(refcat[b_name], float) * u.deg,
                       frame="galactic").icrs
        ra, dec = gal.ra.deg, gal.dec.deg
    mag_name = mag_col or _pick(names, _MAG_NAMES) or next((n for n in names if "mag" in n.lower()), None)
    if mag_name is None and refcat.meta.get("band") in names:
        mag_name = refcat.meta["band"]
    if mag_name is None or mag_name not in names:
        raise UsageError(f"reference catalogue has no magnitude column {mag_col or ''}; columns are {names}: "
                         "name one with mag_col")
    mag = np.asarray(np.ma.filled(np.ma.asarray(refcat[mag_name], float), np.nan), float)
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    out = Table({"ra": ra[good], "dec": dec[good], "mag": mag[good]})
    out.sort("mag")
    out.meta["mag_column"] = mag_name
    return out


def _match_xy(x1, y1, x2, y2, radius_px: float):
    """One-to-one nearest-neighbour match in pixel space: (i1, i2, distance px)."""
    if len(x1) == 0 or len(x2) == 0:
        e = np.array([], int)
        return e, e, np.array([], float)
    tree = cKDTree(np.column_stack([x2, y2]))
    d, j = tree.query(np.column_stack([x1, y1]), distance_upper_bound=radius_px)
    ok = np.isfinite(d)
    i1, i2, d = np.nonzero(ok)[0], j[ok], d[ok]
    # several detections may claim one reference star: keep the closest
    order = np.argsort(d)
    i1, i2, d = i1[order], i2[order], d[order]
    _, first = np.unique(i2, return_index=True)
    return i1[first], i2[first], d[first]


def _frame_shape(wcs: WCS, x: np.ndarray, y: np.ndarray, shape=None) -> tuple[int, int]:
    if shape is not None:
        return int(shape[0]), int(shape[1])
    if wcs.pixel_shape is not None and all(wcs.pixel_shape):
        nx, ny = wcs.pixel_shape
        return int(ny), int(nx)
    return int(np.nanmax(y)) + 2, int(np.nanmax(x)) + 2


def _refs_in_frame(wcs: WCS, ref: Table, shape, margin_px: float):
    ny, nx = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rx, ry = wcs.all_world2pix(np.asarray(ref["ra"]), np.asarray(ref["dec"]), 0, quiet=True)
    inside = (np.isfinite(rx) & np.isfinite(ry) & (rx > -margin_px) & (rx < nx - 1 + margin_px)
              & (ry > -margin_px) & (ry < ny - 1 + margin_px))
    return np.nonzero(inside)[0], np.asarray(rx), np.asarray(ry)


def _sky_sep_arcsec(wcs: WCS, x, y, ra, dec) -> np.ndarray:
    sra, sdec = wcs.all_pix2world(x, y, 0)
    return SkyCoord(sra, sdec, unit="deg").separation(SkyCoord(ra, dec, unit="deg")).arcsec


def check_wcs(sources: Table, wcs: WCS, refcat: Table, radius_arcsec: float, shape=None,
              n_sources: int = 300) -> tuple[float, int, float]:
    """Match bright detections to the reference through ``wcs``.

    Returns
    -------
    (median_offset_arcsec, n_matched, rms_arcsec)
        nan offsets when nothing matched.
    """
    ref = reference_table(refcat) if not {"ra", "dec", "mag"} <= set(refcat.colnames) else refcat
    x, y, _ = _source_arrays(sources)
    x, y = x[:n_sources], y[:n_sources]
    shape = _frame_shape(wcs, x, y, shape)
    scale = pixel_scale_arcsec(wcs)
    idx, rx, ry = _refs_in_frame(wcs, ref, shape, margin_px=radius_arcsec / scale)
    idx = idx[: max(3 * len(x), 50)]
    i1, i2, _ = _match_xy(x, y, rx[idx], ry[idx], radius_arcsec / scale)
    if len(i1) == 0:
        return float("nan"), 0, float("nan")
    sep = _sky_sep_arcsec(wcs, x[i1], y[i1], ref["ra"][idx[i2]], ref["dec"][idx[i2]])
    return float(np.median(sep)), int(len(i1)), float(np.sqrt(np.mean(sep**2)))


def _quick_sources(data: np.ndarray, n: int = 300) -> Table:
    """Brightest compact sources of a frame, for the WCS check only (sep is ~10x faster than photutils)."""
    import sep_x

    d = np.ascontiguousarray(data, dtype=np.float32)
    mask = ~np.isfinite(d)
    if mask.any():
        d = np.where(mask, np.float32(np.nanmedian(d)), d)
    bkg = sep_x.Background(d, mask=mask)
    sub = d - bkg.back()
    obj = None
    for thresh in (10.0, 30.0, 100.0):
        try:
            obj = sep_x.extract(sub, thresh, err=bkg.globalrms, minarea=5, mask=mask)
            break
        except Exception:  # sep gives up on crowded or nebulous frames (pixel stack / deblend overflow)
            continue
    if obj is None:
        return Table({"x": [], "y": [], "flux": []}, dtype=[float, float, float])
    t = Table({"x": obj["x"], "y": obj["y"], "flux": obj["flux"]})
    t.sort("flux", reverse=True)
    return t[:n]


# ---------------------------------------------------------------- when to solve

def needs_solving(frame, meta, settings: AstrometrySettings, refcat: Table | None = None,
                  sources: Table | None = None) -> tuple[bool, str]:
    """Decide whether the frame needs a new WCS, and say why.

    Parameters
    ----------
    frame : rpp_core.image.Frame
        Uses ``data``, ``wcs`` and ``wcs_status`` only.
    meta : rpp_core.image.ObservationMeta
        Uses ``pixel_scale`` (arcsec/px) when present.
    settings : AstrometrySettings
    refcat : astropy.table.Table, optional
        Reference stars (``ra``, ``dec``, ``mag``); with it the WCS is checked
        against the sky: median offset of matched bright stars above
        ``check_tolerance_arcsec``, or fewer than ``min_matches`` matches,
        means re-solve.
    sources : Table, optional
        Detections (``x``, ``y``, flux-like column) to check with; without
        them the brightest stars are found here with sep.

    Returns
    -------
    (bool, str)
        Whether to solve, and the reason in words for the log.
    """
    if settings.solver == "none":
        return False, "solver = none: the header WCS is used as it is"
    if settings.solve == "never":
        return False, "solve = never: the header WCS is used as it is"
    if settings.solve == "always":
        return True, "solve = always"
    wcs = getattr(frame, "wcs", None)
    status = str(getattr(frame, "wcs_status", "ok" if wcs is not None else "missing"))
    if status.startswith("invalid"):
        return True, f"the header WCS is {status}"
    if wcs is None or status == "missing":
        return True, "the header has no WCS"
    if not wcs.has_celestial:
        return True, "the header WCS has no celestial axes"
    try:
        scale = pixel_scale_arcsec(wcs)
    except Exception as exc:  # singular CD matrix and the like
        return True, f"the header WCS is unusable ({exc})"
    if not np.isfinite(scale) or scale <= 0:
        return True, "the header WCS has no usable pixel scale"
    expected = getattr(meta, "pixel_scale", None)
    if expected and abs(scale / expected - 1.0) > settings.scale_tolerance:
        return True, (f"the header WCS pixel scale {scale:.3f}\"/px differs from the expected "
                      f"{expected:.3f}\"/px by more than {settings.scale_tolerance:.0%}")
    if refcat is None or len(refcat) == 0:
        return False, "header WCS present (not checked: no reference catalogue)"
    data = getattr(frame, "data", None)
    if data is None:
        return False, "header WCS present (not checked: no pixel data)"
    srcs = sources if sources is not None and len(sources) else _quick_sources(data)
    if len(srcs) < settings.min_matches:
        return False, f"header WCS present (not checked: only {len(srcs)} bright stars found)"
    radius = max(3.0 * settings.check_tolerance_arcsec, 5.0)
    med, n, _ = check_wcs(srcs, wcs, refcat, radius, shape=data.shape)
    if n < settings.min_matches:
        return True, (f"the header WCS matches only {n} reference stars within {radius:.1f}\" "
                      f"(need {settings.min_matches})")
    if med > settings.check_tolerance_arcsec:
        return True, (f"the header WCS is off: median offset {med:.2f}\" of {n} matched stars exceeds "
                      f"check_tolerance_arcsec = {settings.check_tolerance_arcsec}\"")
    return False, f"header WCS checked: median offset {med:.2f}\" over {n} reference stars"


# ---------------------------------------------------------------- subprocess

def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the solver and all its children (solve-field forks astrometry-engine)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
        elif proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            # the leader exited; children may linger a moment longer in the group
            if pgid is not None:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
        except subprocess.TimeoutExpired:
            continue


def run_solver_process(cmd: Sequence[str], deadline: float, cancel: CancelFn | None = None,
                       log: LogFn | None = None, cwd: str | os.PathLike | None = None,
                       progress: Callable[[], None] | None = None) -> tuple[int | None, list[str]]:
    """Run a solver subprocess in its own process group.

    Polls every 0.2 s: forwards output lines to ``log``, calls ``progress()``,
    kills the whole group when ``cancel()`` is true (then raises
    :class:`~rpp_core.errors.Cancelled`) or when ``time.monotonic()`` passes
    ``deadline`` (then returns ``None`` as return code).

    Returns
    -------
    (returncode or None on timeout, output lines)
    """
    log = log or _noop
    cancel = cancel or (lambda: False)
    try:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    except OSError as exc:
        raise AstrometryError(f"cannot start {cmd[0]}: {exc}") from None
    log(f"{Path(cmd[0]).name} started, pid {proc.pid}, process group {proc.pid}")
    lines: list[str] = []
    q: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    def drain() -> None:
        while True:
            try:
                line = q.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            lines.append(line)
            if line.strip():
                log(line)

    try:
        while True:
            drain()
            if proc.poll() is not None:
                t.join(timeout=1.0)
                drain()
                return proc.returncode, lines
            if cancel():
                _kill_group(proc)
                log(f"{Path(cmd[0]).name} cancelled: process group {proc.pid} killed")
                raise Cancelled("plate solving cancelled")
            if time.monotonic() >= deadline:
                _kill_group(proc)
                log(f"{Path(cmd[0]).name} stopped at the time limit: process group {proc.pid} killed")
                return None, lines
            if progress:
                progress()
            time.sleep(POLL_S)
    except BaseException:
        if proc.poll() is None:
            _kill_group(proc)
        raise
    finally:
        if proc.stdout:
            try:
                proc.stdout.close()
            except OSError:
                pass


# ---------------------------------------------------------------- index files

def index_files(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Index files (``*.fits``, ``*.fits.fz`` excluded) in the given folders."""
    out: list[Path] = []
    for d in dirs:
        p = Path(d).expanduser()
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.name.startswith("index") and q.suffix == ".fits"))
    return out


def index_dirs_for(settings: AstrometrySettings) -> list[Path]:
    """Folders searched for index files: the profile's, then Debian's if enabled."""
    dirs = [Path(d).expanduser() for d in settings.index_dirs]
    if settings.use_system_indexes and SYSTEM_INDEX_DIR.is_dir() and SYSTEM_INDEX_DIR not in dirs:
        dirs.append(SYSTEM_INDEX_DIR)
    return dirs


def write_backend_config(index_paths: Iterable[str | os.PathLike], path: str | os.PathLike,
                         cpulimit: float | None = None, inparallel: bool = True) -> Path:
    """Write an ``astrometry-engine`` config naming folders (``add_path`` + ``autoindex``) and files (``index``)."""
    lines = ["# written by rpp"]
    if inparallel:
        # our indexes are small next to memory: loading them all at once is what makes solving fast
        lines.append("inparallel")
    if cpulimit:
        lines.append(f"cpulimit {int(max(1, cpulimit))}")
    dirs, files = [], []
    for p in index_paths:
        p = Path(p).expanduser().resolve()
        (dirs if p.is_dir() else files).append(p)
    for d in dirs:
        lines.append(f"add_path {d}")
    if dirs:
        lines.append("autoindex")
    for f in files:
        lines.append(f"index {f}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def scales_for_field(field_width_arcmin: float) -> list[int]:
    """Index scale presets (``-P``) for a field of this width.

    Preset ``P`` suits images about ``6 * sqrt(2)**P`` arcmin across; the quads
    should span roughly 10% to 100% of the field, so we take presets from about
    2.5 steps below the field size up to it (30' -> 2..5, 20' -> 1..4).
    """
    if not field_width_arcmin or field_width_arcmin <= 0:
        raise UsageError("field width must be positive (arcmin)")
    n0 = 2.0 * np.log2(field_width_arcmin / 6.0)
    lo, hi = int(np.floor(n0 - 2.5)), int(np.ceil(n0))
    lo, hi = max(lo, 0), min(max(hi, 0), 19)
    return list(range(max(0, min(lo, hi)), hi + 1))


def build_index(refcat: Table | str | os.PathLike, out_dir: str | os.PathLike,
                field_width_arcmin: float | None = None, scales: Sequence[int] | None = None, *,
                ra_col: str | None = None, dec_col: str | None = None, mag_col: str | None = None,
                name: str | None = None, timeout_s: float = 600.0, log: LogFn | None = None,
                cancel: CancelFn | None = None) -> list[Path]:
    """Build astrometry.net index files from a reference catalogue.

    Writes the catalogue as a FITS table (RA, DEC, MAG) and runs
    ``build-astrometry-index -i cat.fits -o index-….fits -P N -E -S MAG -I id``
    for each scale preset ``N``.

    Parameters
    ----------
    refcat : Table or path
        Reference catalogue (see :func:`reference_table` for recognised columns).
    out_dir : path
        Folder for the index files (created). Point ``index_dirs`` at it.
    field_width_arcmin : float, optional
        Widest side of the frames to solve, arcmin; picks the scales
        (:func:`scales_for_field`). One of this or ``scales`` is required.
    scales : sequence of int, optional
        Explicit ``-P`` presets (0..19).

    Returns
    -------
    list of Path
        The index files written, one per scale.
    """
    log = log or _noop
    if scales is None:
        if field_width_arcmin is None:
            raise UsageError("build_index needs field_width_arcmin or scales")
        scales = scales_for_field(field_width_arcmin)
    scales = [int(s) for s in scales]
    if not scales or any(s < 0 or s > 19 for s in scales):
        raise UsageError(f"index scales {scales} out of range: give presets between 0 and 19")
    exe = shutil.which("build-astrometry-index")
    if exe is None:
        raise AstrometryError("build-astrometry-index not found: install astrometry.net (apt-get install astrometry.net)")
    ref = reference_table(refcat, ra_col, dec_col, mag_col)
    if len(ref) < 10:
        raise AstrometryError(f"reference catalogue has only {len(ref)} usable stars: too few for an index")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # unique ids tell indexes apart inside astrometry.net; derive them from the content so rebuilding is stable
    digest = hashlib.sha1(np.ascontiguousarray(ref["ra"][:1000]).tobytes()).digest()
    base = int.from_bytes(digest[:4], "little") % 100000
    if name is None:
        name = Path(str(refcat)).stem if not isinstance(refcat, Table) else f"refcat{base:05d}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    paths: list[Path] = []
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="rpp-index-") as tmp:
        cat_path = Path(tmp) / "cat.fits"
        fits.BinTableHDU.from_columns([
            fits.Column(name="RA", format="D", array=np.asarray(ref["ra"], float)),
            fits.Column(name="DEC", format="D", array=np.asarray(ref["dec"], float)),
            fits.Column(name="MAG", format="E", array=np.asarray(ref["mag"], np.float32)),
        ]).writeto(cat_path)
        for s in scales:
            target = out / f"index-rpp-{name}-{s:02d}.fits"
            tmp_target = Path(tmp) / target.name
            cmd = [exe, "-i", str(cat_path), "-o", str(tmp_target), "-P", str(s), "-E", "-S", "MAG",
                   "-I", str(base * 100 + s), "-t", tmp]
            rc, lines = run_solver_process(cmd, deadline, cancel=cancel, log=None, cwd=tmp)
            if rc != 0 or not tmp_target.exists():
                tail = " | ".join(lines[-3:])
                raise AstrometryError(f"build-astrometry-index failed for scale {s} (exit {rc}): {tail}")
            shutil.move(str(tmp_target), target)
            log(f"index {target.name}: scale preset {s}, {len(ref)} stars")
            paths.append(target)
    return paths


# ---------------------------------------------------------------- WCS files

_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|"
    r"LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|MJDREF|WCSNAME|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d|A_DMAX|B_DMAX|"
    r"PLTRA[HMS]|PLTDEC(SN|D|M|S)|PLTSCALE|[XY]PIXELSZ|PPO\d+|AMD[XY]\d+|CNPIX\d|DSSVERS)$")


def wcs_keywords(header: fits.Header) -> list[str]:
    """The original WCS cards of a header (FITS WCS, SIP/TPV and DSS plate solution), one string each, for the log."""
    return [str(card).rstrip() for card in header.cards if _WCS_KEY.match(card.keyword or "")]


def wcs_header(wcs: WCS, shape: tuple[int, int] | None = None) -> fits.Header:
    """WCS as header cards (SIP kept), with IMAGEW/IMAGEH like astrometry.net's when the shape is given."""
    hdr = wcs.to_header(relax=True)
    if shape is not None:
        hdr["IMAGEW"] = (int(shape[1]), "image width, px")
        hdr["IMAGEH"] = (int(shape[0]), "image height, px")
    return hdr


def header_with_wcs(header: fits.Header, wcs: WCS) -> fits.Header:
    """Copy of ``header`` whose WCS cards (incl. SIP/TPV and DSS plate keywords) are replaced by ``wcs``."""
    out = header.copy()
    for key in {card.keyword for card in header.cards if _WCS_KEY.match(card.keyword or "")}:
        del out[key]
    out.update(wcs_header(wcs))
    return out


def write_wcs_file(wcs: WCS, shape: tuple[int, int], path: str | os.PathLike) -> Path:
    """Write a header-only FITS file holding the WCS, like astrometry.net's ``.wcs``.

    ``shape`` is the image ``(ny, nx)``. Written atomically.
    """
    path = Path(path)
    hdu = fits.PrimaryHDU()
    hdu.header.update(wcs_header(wcs, shape))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    hdu.writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- astrometry.net

def _write_xylist(path: Path, x, y, flux) -> None:
    fits.BinTableHDU.from_columns([
        fits.Column(name="X", format="D", array=np.asarray(x, float) + 1.0),  # FITS pixels are 1-based
        fits.Column(name="Y", format="D", array=np.asarray(y, float) + 1.0),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)),
    ]).writeto(path, overwrite=True)


def _hint_args(meta, settings: AstrometrySettings) -> tuple[list[str], list[str]]:
    args, words = [], []
    scale = getattr(meta, "pixel_scale", None) if meta is not None else None
    if scale and np.isfinite(scale) and scale > 0:
        lo, hi = scale * (1 - settings.scale_tolerance), scale * (1 + settings.scale_tolerance)
        args += ["--scale-units", "arcsecperpix", "--scale-low", f"{lo:.6g}", "--scale-high", f"{hi:.6g}"]
        words.append(f"scale {lo:.3f}-{hi:.3f}\"/px")
    ra = getattr(meta, "ra", None) if meta is not None else None
    dec = getattr(meta, "dec", None) if meta is not None else None
    if ra is not None and dec is not None and np.isfinite(ra) and np.isfinite(dec):
        args += ["--ra", f"{ra:.6f}", "--dec", f"{dec:.6f}", "--radius", f"{settings.search_radius_deg:g}"]
        words.append(f"within {settings.search_radius_deg:g} deg of RA {ra:.4f} Dec {dec:+.4f}")
    return args, words


def _corr_stats(corr_path: Path, wcs: WCS) -> tuple[float, int]:
    try:
        corr = fits.getdata(corr_path, 1)
    except (OSError, IndexError, KeyError):
        return float("nan"), 0
    if len(corr) == 0:
        return float("nan"), 0
    sep = _sky_sep_arcsec(wcs, np.asarray(corr["field_x"], float) - 1, np.asarray(corr["field_y"], float) - 1,
                          np.asarray(corr["index_ra"], float), np.asarray(corr["index_dec"], float))
    return float(np.sqrt(np.mean(sep**2))), int(len(corr))


def _solve_astrometry_net(x, y, flux, shape, meta, settings: AstrometrySettings, deadline: float,
                          cancel, tick, log: LogFn, lines_out: list[str]) -> SolveResult | None:
    exe = shutil.which(settings.solve_field)
    if exe is None:
        lines_out.append(f"astrometry.net: {settings.solve_field} not found (apt-get install astrometry.net)")
        return None
    dirs = index_dirs_for(settings)
    files = index_files(dirs)
    if not files:
        where = ", ".join(str(d) for d in dirs) or "(none configured)"
        lines_out.append(f"astrometry.net: no index files in {where}: install astrometry-data-tycho2 for fields "
                         "of 30' and more, or build indexes with `rpp index build CATALOG --out DIR` and add DIR "
                         "to [astrometry] index_dirs")
        return None
    ny, nx = shape
    hint_args, hint_words = _hint_args(meta, settings)
    attempts: list[tuple[str, list[str]]] = []
    if hint_args:
        attempts.append(("hinted", hint_args))
    if not hint_args or settings.blind_fallback:
        attempts.append(("blind", []))
    with tempfile.TemporaryDirectory(prefix="rpp-solve-") as tmp:
        tmpd = Path(tmp)
        xy = tmpd / "field.xy.fits"
        n = min(len(x), settings.max_solve_sources)
        _write_xylist(xy, x[:n], y[:n], flux[:n])
        for k, (label, extra) in enumerate(attempts):
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0.5:
                lines_out.append(f"astrometry.net ({label}): no time left")
                break
            # a right hint solves in about a second, a wrong one runs until its limit: cap the hinted
            # attempt so that the blind retry keeps most of the budget
            budget = remaining if k == len(attempts) - 1 else min(remaining / 2, max(0.25 * settings.timeout_s, 5.0))
            cfg = write_backend_config(files, tmpd / f"backend-{label}.cfg", cpulimit=budget)
            out = tmpd / label
            out.mkdir()
            cmd = [exe, "--config", str(cfg), "--dir", str(out), "--no-plots", "--overwrite",
                   # the xylist carries no WCS; solving from scratch is the point, so never verify a header one
                   "--no-verify",
                   "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX",
                   "--width", str(nx), "--height", str(ny),
                   "--crpix-center", "--tweak-order", str(max(1, settings.sip_order or 1)),
                   "--cpulimit", str(int(max(1, budget))),
                   # our list is already clean: skip the Python helpers that would thin it out
                   "--no-remove-lines", "--uniformize", "0",
                   "--new-fits", "none", "--rdls", "none", "--match", "none", "--index-xyls", "none",
                   "--temp-dir", str(tmpd),
                   *extra, str(xy)]
            what = ", ".join(hint_words) if extra else "no hints"
            msg = f"astrometry.net ({label}: {what}), {n} sources, {len(files)} index files, limit {budget:.0f} s"
            log(msg)
            lines_out.append(msg)
            rc, _lines = run_solver_process(cmd, now + budget, cancel=cancel, log=log, cwd=tmp, progress=tick)
            wcs_path = out / "field.xy.wcs"
            if rc is None:
                lines_out.append(f"astrometry.net ({label}): stopped at the time limit ({budget:.0f} s)")
                continue
            if rc == 0 and (out / "field.xy.solved").exists() and wcs_path.exists():
                wcs = _read_wcs_header(fits.getheader(wcs_path))
                wcs.pixel_shape = (nx, ny)
                rms, nm = _corr_stats(out / "field.xy.corr", wcs)
                scale = pixel_scale_arcsec(wcs)
                done = (f"astrometry.net ({label}) solved: pixel scale {scale:.4f}\"/px, {nm} index stars matched, "
                        f"RMS {rms:.2f}\"")
                log(done)
                lines_out.append(done)
                return SolveResult(wcs, rms, nm, f"astrometry.net ({label})", list(lines_out), scale)
            lines_out.append(f"astrometry.net ({label}): no solution (exit {rc})")
    return None


# ---------------------------------------------------------------- Siril

def _parse_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def siril_info(executable: str = "siril-cli", timeout_s: float = 10.0) -> SirilInfo:
    """Find ``siril-cli``, read its version, and say whether it can plate-solve from scripts."""
    path = shutil.which(executable)
    if path is None:
        return SirilInfo(None, None, False, f"{executable} not found on PATH: Siril is not installed")
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL, errors="replace")
        text = (res.stdout or "") + (res.stderr or "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return SirilInfo(path, None, False, f"{path} --version failed ({exc}): cannot tell which Siril this is")
    version = _parse_version(text)
    if version is None:
        return SirilInfo(path, None, False, f"{path} --version printed no version ({text.strip()[:80]!r})")
    vs = ".".join(map(str, version))
    if version < SIRIL_MIN_PLATESOLVE:
        return SirilInfo(path, version, False,
                         f"Siril {vs} at {path} cannot plate-solve from scripts (the platesolve script command "
                         f"came with Siril 1.2); install Siril 1.2 or newer, or use solver = astrometry.net")
    return SirilInfo(path, version, True, f"Siril {vs} at {path} can plate-solve from scripts")


def _star_image(x, y, flux, shape, fwhm_px: float = 3.0) -> np.ndarray:
    """A clean uint16 star field rendered from the source list, for solvers that want an image."""
    ny, nx = shape
    img = np.full(shape, 1000.0, np.float32)
    rng = np.random.default_rng(0)
    img += rng.normal(0, 10.0, shape).astype(np.float32)
    f = np.asarray(flux, float)
    f = np.where(np.isfinite(f) & (f > 0), f, np.nanmin(f[f > 0]) if np.any(f > 0) else 1.0)
    amp = 20000.0 * (f / f.max()) ** 0.5 + 300.0
    sig = fwhm_px / 2.355
    half = int(4 * sig) + 1
    for xi, yi, ai in zip(x, y, amp):
        ix, iy = int(round(xi)), int(round(yi))
        x0, x1, y0, y1 = max(ix - half, 0), min(ix + half + 1, nx), max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.arange(x0, x1) - xi
        gy = np.arange(y0, y1) - yi
        img[y0:y1, x0:x1] += (ai * np.exp(-0.5 * (gy[:, None] ** 2 + gx[None, :] ** 2) / sig**2)).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def _solve_siril(x, y, flux, shape, meta, settings: AstrometrySettings, deadline: float, cancel, tick,
                 log: LogFn, lines_out: list[str]) -> SolveResult | None:
    info = siril_info(settings.siril_cli)
    lines_out.append(info.message)
    log(info.message)
    if not info.can_platesolve:
        return None
    ny, nx = shape
    with tempfile.TemporaryDirectory(prefix="rpp-siril-") as tmp:
        tmpd = Path(tmp)
        n = min(len(x), settings.max_solve_sources)
        hdr = fits.Header()
        scale = getattr(meta, "pixel_scale", None)
        args = []
        if scale:
            # Siril derives the scale from focal length and pixel size; any pair with the right ratio works
            pix_um = 10.0
            focal_mm = 206.264806 * pix_um / scale
            hdr["XPIXSZ"], hdr["YPIXSZ"], hdr["FOCALLEN"] = pix_um, pix_um, focal_mm
            args += [f"-focal={focal_mm:.3f}", f"-pixelsize={pix_um:.3f}"]
        ra, dec = getattr(meta, "ra", None), getattr(meta, "dec", None)
        coords = f"{ra:.6f},{dec:+.6f} " if ra is not None and dec is not None else ""
        if not coords:
            # without a pointing Siril's own solver has nowhere to look: hand the blind search to local astrometry.net
            args.append("-localasnet")
        fits.PrimaryHDU(_star_image(x[:n], y[:n], flux[:n], shape), header=hdr).writeto(tmpd / "stars.fit")
        script = tmpd / "solve.ssf"
        script.write_text("requires 1.2.0\n" f"load stars\n" f"platesolve {coords}{' '.join(args)}\n" "save solved\n")
        cmd = [info.path, "-d", str(tmpd), "-s", str(script)]
        log(f"siril-cli platesolve, {n} sources")
        rc, _ = run_solver_process(cmd, deadline, cancel=cancel, log=log, cwd=tmp, progress=tick)
        out = tmpd / "solved.fit"
        if rc != 0 or not out.exists():
            lines_out.append(f"siril: no solution (exit {rc})")
            return None
        wcs = _read_wcs_header(fits.getheader(out))
        if not wcs.has_celestial:
            lines_out.append("siril: finished but wrote no WCS")
            return None
        wcs.pixel_shape = (nx, ny)
        sc = pixel_scale_arcsec(wcs)
        lines_out.append(f"siril solved: pixel scale {sc:.4f}\"/px")
        return SolveResult(wcs, float("nan"), 0, f"siril {'.'.join(map(str, info.version))}", list(lines_out), sc)


# ---------------------------------------------------------------- solve / refine

def solve(sources: Table, shape: tuple[int, int], meta, settings: AstrometrySettings,
          cancel: CancelFn | None = None, progress: ProgressFn | None = None, log: LogFn | None = None,
          refcat: Table | None = None) -> SolveResult:
    """Plate-solve a frame from its detected sources.

    Parameters
    ----------
    sources : astropy.table.Table
        Detections with ``x``, ``y`` (0-based px) and a flux-like column
        (``flux``, ``flux_<aperture>``, ``psf_flux`` or ``peak``).
    shape : (ny, nx)
        Image shape.
    meta : ObservationMeta or None
        ``pixel_scale`` (arcsec/px), ``ra``, ``dec`` (deg) are used as hints.
    settings : AstrometrySettings
    cancel : callable, optional
        Polled every 0.2 s; true kills the solver and raises ``Cancelled``.
    progress : callable(done, total), optional
        Seconds elapsed out of the time limit.
    log : callable(str), optional
        Receives the solver's output lines as they come.
    refcat : Table, optional
        Reference stars (``ra``, ``dec``, ``mag``); with ``settings.refine`` the
        solution is refined against them (:func:`refine`).

    Raises
    ------
    AstrometryError
        No solver could solve the frame within ``settings.timeout_s``.
    Cancelled
        ``cancel()`` became true.
    """
    t0 = time.monotonic()
    log = log or _noop
    if settings.solver == "none":
        raise AstrometryError("plate solving is off ([astrometry] solver = none) but the frame has no usable WCS: "
                              "set solver = astrometry.net")
    x, y, flux = _source_arrays(sources)
    if len(x) < 5:
        raise AstrometryError(f"only {len(x)} sources detected: too few to plate-solve (need 5 or more); "
                              "lower [detection] threshold_sigma")
    deadline = t0 + settings.timeout_s
    last = [0.0]

    def tick() -> None:
        if progress is None:
            return
        el = time.monotonic() - t0
        if el - last[0] >= 1.0:
            last[0] = el
            progress(int(el), int(settings.timeout_s))

    solvers = [_solve_astrometry_net, _solve_siril]
    if settings.solver == "siril":
        solvers.reverse()
    lines: list[str] = []
    result = None
    for fn in solvers:
        if fn is _solve_siril and settings.solver != "siril" and shutil.which(settings.siril_cli) is None:
            continue
        if time.monotonic() >= deadline:
            break
        result = fn(x, y, flux, tuple(shape), meta, settings, deadline, cancel, tick, log, lines)
        if result is not None:
            break
    if result is None:
        el = time.monotonic() - t0
        detail = "; ".join(lines) or "no solver available"
        raise AstrometryError(f"plate solving failed after {el:.1f} s (limit {settings.timeout_s:g} s): {detail}. "
                              "Check the index files cover this field and scale, the pixel-scale hint, "
                              "or raise [astrometry] timeout_s")
    if refcat is not None and settings.refine and len(refcat):
        ref = refine(sources, result.wcs, refcat, settings, shape=shape)
        result.log.extend(ref.log)
        if ref.method != "kept original":
            ref.log = result.log
            ref.method = f"{result.method} + {ref.method}"
            result = ref
    result.elapsed_s = time.monotonic() - t0
    if progress:
        progress(int(settings.timeout_s), int(settings.timeout_s))
    return result


def _fit_matched(x, y, ra, dec, sip_degree: int | None) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_wcs_from_points((np.asarray(x), np.asarray(y)), SkyCoord(ra, dec, unit="deg"),
                                   proj_point="center", projection="TAN", sip_degree=sip_degree)


def _match_and_measure(wcs: WCS, x, y, ref: Table, shape, radius_arcsec: float):
    scale = pixel_scale_arcsec(wcs)
    idx, rx, ry = _refs_in_frame(wcs, ref, shape, margin_px=radius_arcsec / scale)
    i1, i2, _ = _match_xy(x, y, rx[idx], ry[idx], radius_arcsec / scale)
    j = idx[i2]
    if len(i1) == 0:
        return i1, j, np.array([], float)
    sep = _sky_sep_arcsec(wcs, x[i1], y[i1], np.asarray(ref["ra"])[j], np.asarray(ref["dec"])[j])
    return i1, j, sep


def _rms(sep: np.ndarray) -> float:
    return float(np.sqrt(np.mean(sep**2))) if len(sep) else float("inf")


def refine(sources: Table, wcs: WCS, refcat: Table, settings: AstrometrySettings,
           shape: tuple[int, int] | None = None) -> SolveResult:
    """Refine a WCS against a reference catalogue; keep the better of old and new.

    A WCS whose bright stars do not land on the reference within
    ``check_tolerance_arcsec`` is first brought close with
    :func:`stdpipe.astrometry.refine_wcs_quadhash` (pattern matching: copes with
    offsets of tens of arcsec and rotations of degrees). Then matches are fitted
    with a TAN WCS, iterating with a shrinking match radius and 3-sigma
    clipping; a TAN-SIP fit of order ``sip_order`` replaces it when it lowers the
    RMS by more than 15% with enough stars (3 per coefficient).

    Parameters
    ----------
    sources : Table
        ``x``, ``y`` (0-based px) and a flux-like column.
    wcs : astropy.wcs.WCS
        Starting WCS.
    refcat : Table
        ``ra``, ``dec`` (deg) and ``mag`` (other names are recognised, see
        :func:`reference_table`).
    settings : AstrometrySettings
    shape : (ny, nx), optional
        Image shape; taken from ``wcs.pixel_shape`` or the sources otherwise.

    Returns
    -------
    SolveResult
        ``method`` is ``"kept original"`` when the starting WCS was better;
        ``.wcs`` is then the very object passed in.
    """
    t0 = time.monotonic()
    ref = reference_table(refcat)
    x, y, flux = _source_arrays(sources)
    x, y, flux = x[:3000], y[:3000], flux[:3000]
    shape = _frame_shape(wcs, x, y, shape)
    ny, nx = shape
    lines: list[str] = []
    tol = settings.check_tolerance_arcsec
    wcs0 = wcs.celestial
    wcs0.pixel_shape = (nx, ny)

    # quality of the starting WCS at a radius both candidates are judged with
    judge_r = max(2.0 * tol, 2.0)
    _, _, sep0 = _match_and_measure(wcs0, x, y, ref, shape, judge_r)
    med0 = float(np.median(sep0)) if len(sep0) else float("inf")
    start = wcs0
    if len(sep0) < settings.min_matches or med0 > tol:
        import stdpipe.astrometry as sa

        obj = Table({"x": x, "y": y, "flux": np.where(np.isfinite(flux), flux, 0.0)})
        idx, _, _ = _refs_in_frame(wcs0, ref, shape, margin_px=0.1 * max(nx, ny))
        cat = ref[idx]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                coarse = sa.refine_wcs_quadhash(obj, cat, wcs0, sr=max(2.0 * tol, 3.0) / 3600.0, order=1,
                                                cat_col_ra="ra", cat_col_dec="dec", cat_col_mag="mag",
                                                obj_col_flux="flux", verbose=False)
        except Exception as exc:  # stdpipe raises plain exceptions on degenerate inputs
            coarse = None
            lines.append(f"refine: pattern matching failed ({exc})")
        if coarse is not None and coarse.has_celestial:
            coarse = coarse.celestial
            coarse.pixel_shape = (nx, ny)
            start = coarse
            lines.append("refine: starting WCS was off; pattern matching (stdpipe quad-hash) brought it close")
        else:
            lines.append("refine: starting WCS off and pattern matching found no solution; fitting from it anyway")

    current, radius = start, max(2.0 * tol, 2.0)
    best_lin = None
    for _ in range(5):
        i1, j, sep = _match_and_measure(current, x, y, ref, shape, radius)
        if len(i1) < max(settings.min_matches, 4):
            break
        keep = sep <= max(3.0 * 1.4826 * np.median(np.abs(sep - np.median(sep))) + np.median(sep), 0.05)
        if keep.sum() < max(settings.min_matches, 4):
            keep[:] = True
        new = _fit_matched(x[i1[keep]], y[i1[keep]], np.asarray(ref["ra"])[j[keep]],
                           np.asarray(ref["dec"])[j[keep]], None)
        new.pixel_shape = (nx, ny)
        current = new
        best_lin = new
        radius = max(min(radius, 4.0 * _rms(sep[keep])), 1.0)
    if best_lin is None:
        lines.append(f"refine: fewer than {settings.min_matches} reference stars matched: WCS not refined")
        rms0 = _rms(sep0)
        return SolveResult(wcs, rms0 if np.isfinite(rms0) else float("nan"), int(len(sep0)), "kept original",
                           lines, pixel_scale_arcsec(wcs0), time.monotonic() - t0)

    # final matches with the linear fit, then see whether distortion terms pay
    i1, j, sep = _match_and_measure(best_lin, x, y, ref, shape, radius)
    keep = sep <= 3.0 * max(_rms(sep), 0.01)
    rms_lin = _rms(sep[keep])
    chosen, label, chosen_rms, chosen_n = best_lin, "TAN", rms_lin, int(keep.sum())
    order = settings.sip_order
    if order >= 2:
        n_coef = sum(1 for p in range(order + 1) for q in range(order + 1) if 2 <= p + q <= order) * 2
        if keep.sum() >= 3 * (n_coef + 6):
            sip = _fit_matched(x[i1[keep]], y[i1[keep]], np.asarray(ref["ra"])[j[keep]],
                               np.asarray(ref["dec"])[j[keep]], order)
            sip.pixel_shape = (nx, ny)
            si1, sj, ssep = _match_and_measure(sip, x, y, ref, shape, radius)
            skeep = ssep <= 3.0 * max(_rms(ssep), 0.01)
            rms_sip = _rms(ssep[skeep])
            lines.append(f"refine: TAN RMS {rms_lin:.3f}\" vs TAN-SIP {order} RMS {rms_sip:.3f}\"")
            if rms_sip < 0.85 * rms_lin and skeep.sum() >= 0.9 * keep.sum():
                chosen, label, chosen_rms, chosen_n = sip, f"TAN-SIP {order}", rms_sip, int(skeep.sum())
        else:
            lines.append(f"refine: {int(keep.sum())} matches are too few for SIP order {order}: TAN only")

    # keep the better of old and new, judged at the same radius
    _, _, sep_new = _match_and_measure(chosen, x, y, ref, shape, judge_r)
    _, _, sep_old = _match_and_measure(wcs0, x, y, ref, shape, judge_r)
    new_ok = len(sep_new) >= settings.min_matches
    old_better = (len(sep_old) >= settings.min_matches and len(sep_old) >= len(sep_new)
                  and np.median(sep_old) <= np.median(sep_new)) or not new_ok
    if old_better:
        lines.append(f"refine: kept the original WCS ({len(sep_old)} matches, median offset "
                     f"{np.median(sep_old) if len(sep_old) else float('nan'):.2f}\")")
        return SolveResult(wcs, _rms(sep_old) if len(sep_old) else float("nan"), int(len(sep_old)),
                           "kept original", lines, pixel_scale_arcsec(wcs0), time.monotonic() - t0)
    scale = pixel_scale_arcsec(chosen)
    lines.append(f"refine: {label} fit to {chosen_n} reference stars, RMS {chosen_rms:.3f}\", "
                 f"pixel scale {scale:.4f}\"/px")
    return SolveResult(chosen, chosen_rms, chosen_n, f"refine {label}", lines, scale, time.monotonic() - t0)


# ---------------------------------------------------------------- CLI

def _parse_scales(text: str) -> list[int]:
    text = text.strip()
    m = re.fullmatch(r"(\d+)\s*(?:\.\.|-|:)\s*(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return list(range(min(a, b), max(a, b) + 1))
    try:
        return [int(s) for s in re.split(r"[,\s]+", text) if s]
    except ValueError:
        raise UsageError(f"--scales {text!r}: give a range like 2..5 or a list like 2,3,4") from None


def cmd_index_build(args: argparse.Namespace) -> int:
    """``rpp index build CATALOG --out DIR [--scales 2..5 | --field-width ARCMIN]``: returns the exit code."""
    scales = _parse_scales(args.scales) if args.scales else None
    if scales is None and not args.field_width:
        raise UsageError("rpp index build: give --scales (e.g. 2..5) or --field-width ARCMIN")
    paths = build_index(args.catalog, args.out, field_width_arcmin=args.field_width, scales=scales,
                        ra_col=args.ra_col, dec_col=args.dec_col, mag_col=args.mag_col, log=print)
    print(f"{len(paths)} index files in {Path(args.out).resolve()}: add it to [astrometry] index_dirs")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``index build`` to an argparse sub-parser set; the leaf parser's ``func(args)`` returns the exit code."""
    p_index = subparsers.add_parser("index", help="astrometry.net index files")
    sub = p_index.add_subparsers(dest="index_command", required=True)
    b = sub.add_parser("build", help="build index files from a reference catalogue (CSV/ECSV/FITS/VOTable)")
    b.add_argument("catalog", help="reference catalogue file with RA/Dec (or l/b) and a magnitude")
    b.add_argument("--out", required=True, help="folder for the index files")
    b.add_argument("--scales", help="scale presets, e.g. 2..5 or 2,3,4 (preset P suits fields of ~6*1.41^P arcmin)")
    b.add_argument("--field-width", type=float, help="widest side of the frames, arcmin: picks the scales")
    b.add_argument("--ra-col", help="RA column (deg)")
    b.add_argument("--dec-col", help="Dec column (deg)")
    b.add_argument("--mag-col", help="magnitude column used to pick the brightest stars")
    b.set_defaults(func=cmd_index_build)
    return p_index
