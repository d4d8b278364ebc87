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
        Reference catalogue (see :func:`rpp_core.catalogs.local.read_reference` for recognised columns).
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
    log = log or (lambda _line: None)
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
