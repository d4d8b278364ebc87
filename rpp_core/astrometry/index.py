"""astrometry.net index files: where they are, the engine's config, building them from a catalogue."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import locations
from ..catalogs.local import read_reference
from ..errors import AstrometryError, UsageError
from ..progress import CancelFn, LogFn
from ..settings import AstrometrySettings
from .process import run_solver_process

#: Where Debian's astrometry-data-* packages put their index files.
SYSTEM_INDEX_DIR = Path("/usr/share/astrometry")


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
    """Folders searched for index files: the profile's, then those of ``rpp index build`` and Debian's if enabled."""
    dirs = [Path(d).expanduser() for d in settings.index_dirs]
    extra = []
    if settings.use_user_indexes:
        extra.append(locations.index_dir(create=False))
    if settings.use_system_indexes:
        extra.append(SYSTEM_INDEX_DIR)
    for d in extra:
        if d.is_dir() and d not in dirs:
            dirs.append(d)
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


#: smallest and largest scale preset: preset P holds quads of 2 * sqrt(2)**P arcmin (``-P`` of
#: build-astrometry-index for P >= 0; below 0 its ``-N/-l/-u`` with the same progression)
MIN_PRESET, MAX_PRESET = -5, 19


#: quad size bounds (arcmin) of build-astrometry-index's presets 0..19: preset P holds quads of
#: ``_PRESET_EDGES[P]`` to ``_PRESET_EDGES[P + 1]`` (astrometry.net's 4100/4200 series use the same)
_PRESET_EDGES = (2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 22.0, 30.0, 42.0, 60.0, 85.0, 120.0, 170.0, 240.0, 340.0,
                 480.0, 680.0, 1000.0, 1400.0, 2000.0)


def preset_quads_arcmin(preset: int) -> tuple[float, float]:
    """Quad sizes (arcmin) of a scale preset: 2.0-2.8' for 0, about doubling every two presets."""
    if preset >= 0:
        return _PRESET_EDGES[preset], _PRESET_EDGES[preset + 1]
    lo = 2.0 * np.sqrt(2.0) ** preset
    return float(lo), float(lo * np.sqrt(2.0))


def scales_for_field(field_width_arcmin: float, field_width_hi_arcmin: float | None = None) -> list[int]:
    """Index scale presets for frames of this width (or range of widths, arcmin).

    Preset ``P`` suits images about ``6 * sqrt(2)**P`` arcmin across; the quads
    should span roughly 10% to 100% of the field, so we take presets from about
    2.5 steps below the field size up to it (30' -> 2..5, 20' -> 1..4, 2' -> -5..-3).
    Fields narrower than about 6' get presets below 0 (quads under 2').
    """
    hi_width = field_width_hi_arcmin or field_width_arcmin
    if not field_width_arcmin or field_width_arcmin <= 0 or hi_width < field_width_arcmin:
        raise UsageError("field width must be positive (arcmin), the upper one no smaller than the lower")
    lo = int(np.floor(2.0 * np.log2(field_width_arcmin / 6.0) - 2.5))
    hi = int(np.ceil(2.0 * np.log2(hi_width / 6.0)))
    lo, hi = max(lo, MIN_PRESET), min(max(hi, MIN_PRESET), MAX_PRESET)
    return list(range(min(lo, hi), hi + 1))


def _preset_args(preset: int) -> list[str]:
    if preset >= 0:
        return ["-P", str(preset)]
    # build-astrometry-index's presets stop at 0 (-N 1760, 2.0'-2.8'); smaller quads need finer healpixes
    lo, hi = preset_quads_arcmin(preset)
    nside = int(round(1760 * np.sqrt(2.0) ** (-preset)))
    return ["-N", str(nside), "-l", f"{lo:.4f}", "-u", f"{hi:.4f}"]


def preset_label(preset: int) -> str:
    """File-name label of a preset: ``05``, or ``m2`` for -2."""
    return f"{preset:02d}" if preset >= 0 else f"m{-preset}"


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
        Reference catalogue (see :func:`rpp_core.catalogs.local.read_reference` for recognised columns).
    out_dir : path
        Folder for the index files (created). Point ``index_dirs`` at it.
    field_width_arcmin : float, optional
        Widest side of the frames to solve, arcmin; picks the scales
        (:func:`scales_for_field`). One of this or ``scales`` is required.
    scales : sequence of int, optional
        Explicit presets (-5..19, see :func:`preset_quads_arcmin`).

    Returns
    -------
    list of Path
        The index files written, one per scale.
    """
    log = log or (lambda _line: None)
    if scales is None:
        if field_width_arcmin is None:
            raise UsageError("build_index needs field_width_arcmin or scales")
        scales = scales_for_field(field_width_arcmin)
    scales = [int(s) for s in scales]
    if not scales or any(s < MIN_PRESET or s > MAX_PRESET for s in scales):
        raise UsageError(f"index scales {scales} out of range: give presets between {MIN_PRESET} and {MAX_PRESET}")
    exe = shutil.which("build-astrometry-index")
    if exe is None:
        raise AstrometryError("build-astrometry-index not found: install astrometry.net (apt-get install astrometry.net)")
    ref = read_reference(refcat, ra_column=ra_col, dec_column=dec_col, mag_column=mag_col)
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
    skipped: list[int] = []
    deadline = time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="rpp-index-") as tmp:
        cat_path = Path(tmp) / "cat.fits"
        fits.BinTableHDU.from_columns([
            fits.Column(name="RA", format="D", array=np.asarray(ref["ra"], float)),
            fits.Column(name="DEC", format="D", array=np.asarray(ref["dec"], float)),
            fits.Column(name="MAG", format="E", array=np.asarray(ref["mag"], np.float32)),
        ]).writeto(cat_path)
        for s in scales:
            target = out / f"index-rpp-{name}-{preset_label(s)}.fits"
            tmp_target = Path(tmp) / target.name
            cmd = [exe, "-i", str(cat_path), "-o", str(tmp_target), *_preset_args(s), "-E", "-S", "MAG",
                   "-I", str(base * 100 + s - MIN_PRESET), "-t", tmp]
            rc, lines = run_solver_process(cmd, deadline, cancel=cancel, log=None, cwd=tmp)
            q_lo, q_hi = preset_quads_arcmin(s)
            if rc != 0 and any("codetree failed" in line for line in lines):
                # no quad of this size fits among the stars (a patch of sky narrower than the quads)
                log(f"scale preset {s} skipped: no quads of {q_lo:.2g}'-{q_hi:.2g}' among these {len(ref)} stars")
                skipped.append(s)
                continue
            if rc != 0 or not tmp_target.exists():
                tail = " | ".join(lines[-3:])
                raise AstrometryError(f"build-astrometry-index failed for scale {s} (exit {rc}): {tail}")
            target.unlink(missing_ok=True)
            shutil.move(str(tmp_target), target)
            log(f"index {target.name}: scale preset {s} (quads {q_lo:.2g}'-{q_hi:.2g}'), {len(ref)} stars")
            paths.append(target)
    if not paths:
        raise AstrometryError(f"no index built: the catalogue's {len(ref)} stars hold no quads of scale presets "
                              f"{skipped} (the stars span less sky than the quads); give smaller scales")
    return paths
