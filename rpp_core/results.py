"""The run folder: every file a run leaves behind, each written atomically.

Layout of ``<workspace>/<frame-stem>_<UTC yyyymmddThhmmss>/``:

==================  ==========================================================
run.log             the whole log, written line by line (survives a crash)
summary.json        FWHM, counts, zero point, airmass, timings per stage
catalog.csv/.ecsv   the catalogue (also .vot and .fits when enabled); columns
                    documented in docs/catalogue.md, units and meta in the ECSV
header.txt          the (repaired) FITS header of the frame
regions.reg         DS9 regions: detections (green), calibrators (cyan), rejected (red)
frame.wcs           WCS of the frame when it was solved or refined (header only)
plots/*.txt         text figures: zero-point fit, residuals, histogram, error vs mag
plots/*.png         the same as PNG, and finder.png: the frame with detections and calibrators
sky.html            the field in Aladin Lite with the sources as overlays; a table offline
<run>.zip           all of the above
==================  ==========================================================

"Atomic" means: each file is written under a temporary name in the same
folder and renamed when complete, so a failed or cancelled run never leaves a
half-written catalogue; the catalogue files are written last-but-one (before
the ZIP), so their presence means the run completed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table

if TYPE_CHECKING:
    from .photometry import PsfInfo

from . import plots
from .products import RunSummary, SourceCatalogue
from .fitsnames import frame_stem
from .fsio import PART_SUFFIX, atomic_path, write_text

CATALOG_FORMATS = {
    "csv": ("catalog.csv", "ascii.csv"),
    "ecsv": ("catalog.ecsv", "ascii.ecsv"),
    "votable": ("catalog.vot", "votable"),
    "fits": ("catalog.fits", "fits"),
}


def make_run_dir(out_dir: str | os.PathLike, frame_path: str | os.PathLike) -> Path:
    """Create a fresh run folder ``<out_dir>/<stem>_<UTC timestamp>`` (never reuses one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = frame_stem(Path(frame_path).name)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    for i in range(1000):
        run = out / (f"{name}_{stamp}" + (f"_{i}" if i else ""))
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder in {out}")


def atomic_write_table(table: Table, path: Path, fmt: str) -> Path:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # long meta keys become HIERARCH cards in FITS: expected, not worth a warning
        warnings.simplefilter("ignore", VerifyWarning)
        table.write(tmp, format=fmt, overwrite=True)
    return path


class RunLog:
    """Append-only run log, flushed line by line so a crash keeps what happened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, level: str, message: str, stage: str = "") -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        where = f"[{stage}] " if stage else ""
        with self._lock:
            if not self._fh.closed:
                for line in str(message).splitlines() or [""]:
                    self._fh.write(f"{stamp} {level:<7} {where}{line}\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _serializable_table(table: Table) -> Table:
    """Copy without object columns or non-scalar meta that some writers reject."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        if out[name].dtype.kind == "O":
            out[name] = np.asarray([("" if v is None else str(v)) for v in out[name]])
    out.meta = {k: v for k, v in out.meta.items() if isinstance(v, (str, int, float, bool, list, dict)) and k != "comments"}
    return out


def write_catalog(table: Table, run_dir: Path, formats: list[str]) -> dict[str, Path]:
    """Write the catalogue in every requested format; CSV/ECSV always, atomically."""
    table = _serializable_table(table)
    files = {}
    for fmt in ["csv", "ecsv", *[f for f in formats if f not in ("csv", "ecsv")]]:
        name, writer = CATALOG_FORMATS[fmt]
        t = table
        if fmt in ("votable", "fits"):
            # VOTable and FITS want flat meta: nested dicts go to the ECSV only
            t = table.copy(copy_data=False)
            t.meta = {k: v for k, v in table.meta.items()
                      if isinstance(v, (str, int, bool)) or (isinstance(v, float) and np.isfinite(v))}
        files[fmt] = atomic_write_table(t, run_dir / name, writer)
    return files


def write_regions(table: Table, path: Path, radius_px: float) -> Path:
    """DS9 region file in image coordinates, written with astropy's ``regions`` package.

    Positions are the catalogue's 0-based ``x``, ``y``; ``regions`` writes them
    1-based, as DS9 expects. Colours: green detection, cyan calibrator, red
    rejected calibrator; the text of each circle is the source id.
    """
    from regions import CirclePixelRegion, PixCoord, Regions

    used = np.asarray(table["calib_used"], bool) if "calib_used" in table.colnames else np.zeros(len(table), bool)
    rej = np.asarray(table["calib_rejected"], bool) if "calib_rejected" in table.colnames else np.zeros(len(table), bool)
    ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(1, len(table) + 1)
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    shapes = []
    for xi, yi, i, u_, r_ in zip(x, y, ids, used, rej):
        color = "red" if r_ else ("cyan" if u_ else "green")
        shapes.append(CirclePixelRegion(PixCoord(float(xi), float(yi)), float(radius_px),
                                        meta={"text": str(i)}, visual={"color": color}))
    with atomic_path(path) as tmp:
        Regions(shapes).write(tmp, format="ds9", overwrite=True)
    return path


def write_header(header, path: Path) -> Path:
    return write_text(path, header.tostring(sep="\n", endcard=False, padding=False).rstrip() + "\n")


def write_plots(table: Table, summary: RunSummary, run_dir: Path) -> dict[str, Path]:
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    files = {}
    for name in plots.FIGURES:
        text = plots.render(name, table, summary, width=100, height=30, color=False)
        files[f"plot_{name}"] = write_text(folder / f"{name}.txt", text)
    return files


def view_meta(summary) -> dict:
    """What the figures and the sky view read of a run summary (typed ``RunSummary`` or its dict)."""
    keys = ("calibration_label", "zp", "zp_err", "zp_rms", "band", "n_calibrators", "frame")
    if isinstance(summary, dict):
        return {k: summary.get(k) for k in keys}
    return {k: getattr(summary, k, None) for k in keys}


def write_views(table: Table, meta: dict, run_dir: Path, data=None, wcs=None, title: str = "",
                warn=None) -> dict[str, Path]:
    """Files for people rather than programs: PNG figures (``plots/*.png``) and ``sky.html``.

    Computed from the catalogue and calibration already in ``table``/``meta``
    (see :mod:`rpp_core.figures`, :mod:`rpp_core.skyview`). A figure that cannot
    be drawn is reported through ``warn(message)`` and skipped: it never fails a run.
    """
    from . import figures, skyview

    files: dict[str, Path] = {}
    try:
        files.update(figures.write_all(table, meta, run_dir / "plots", data=data, wcs=wcs, title=title))
    except Exception as exc:  # noqa: BLE001 - matplotlib edge cases must not cost the catalogue
        if warn:
            warn(f"PNG figures not written: {type(exc).__name__}: {exc}")
    try:
        shape = None if data is None else data.shape
        files["sky_html"] = skyview.write_sky_html(table, {**meta, "title": title}, run_dir / "sky.html", wcs=wcs, shape=shape)
    except Exception as exc:  # noqa: BLE001
        if warn:
            warn(f"sky.html not written: {type(exc).__name__}: {exc}")
    return files


def write_psf(psf: PsfInfo, path: Path) -> Path | None:
    """The oversampled ePSF as a FITS image (header: oversampling, stars, aperture correction); None without one."""
    if psf.epsf is None:
        return None
    from astropy.io import fits

    hdr = fits.Header()
    for key in ("oversampling", "n_stars", "apcorr", "apcorr_err"):
        val = getattr(psf, key)
        if isinstance(val, (int, float)) and np.isfinite(val):
            hdr[key.upper()[:8]] = val
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(np.asarray(psf.epsf, np.float32), header=hdr).writeto(tmp, overwrite=True)
    return path


def write_outputs(catalogue: SourceCatalogue, summary: RunSummary, run_dir: Path, formats: list[str], *,
                  data=None, wcs=None, warn=None) -> dict[str, Path]:
    """Plots, DS9 regions and the catalogue in every format; the catalogue last, so its presence means done.

    With the frame's ``data`` (and ``wcs``), also the PNG figures and ``sky.html``
    (:func:`write_views`); their problems go to ``warn``.

    The catalogue's meta gets the frame, time, filter, exposure, airmass, FWHM,
    zero point, calibration aperture and source, units, effective gain and what
    the pixel coordinates refer to (``pixel_frame``) from the summary (``pixel_origin`` 0).
    """
    cat = catalogue.table.copy(copy_data=False)
    files: dict[str, Path] = dict(write_plots(cat, summary, run_dir))
    radius = catalogue.apertures.radius(summary.calibration_label) if catalogue.apertures else 2.0 * (summary.fwhm_px or 1.0)
    files["regions"] = write_regions(cat, run_dir / "regions.reg", radius_px=radius)
    if (run_dir / "frame.wcs").exists():
        files["wcs"] = run_dir / "frame.wcs"
    cat.meta.update({
        "frame": summary.frame, "date_obs": summary.date_obs, "filter": summary.filter, "exptime": summary.exptime,
        "airmass": summary.airmass, "fwhm_px": summary.fwhm_px, "zp": summary.zp, "zp_err": summary.zp_err,
        "band": summary.band, "calibration_aperture": summary.calibration_label, "pixel_origin": 0,
        "rpp_version": summary.rpp_version, "calibration_source": summary.calibration_source,
        "units": summary.units, "effective_gain": summary.gain, "gain_source": summary.gain_source,
        "pixel_frame": (summary.pixels or {}).get("pixels", "the image as stored"),
    })
    # PNG figures and sky.html, before the catalogue so its presence still means "complete"
    files.update(write_views(cat, view_meta(summary), run_dir, data, wcs, Path(summary.frame).name, warn))
    files.update(write_catalog(cat, run_dir, formats))
    return files


def make_zip(run_dir: Path) -> Path:
    """ZIP of the whole run folder (except itself), written atomically."""
    target = run_dir / f"{run_dir.name}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and path != target and not path.name.endswith(PART_SUFFIX):
                zf.write(path, Path(run_dir.name) / path.relative_to(run_dir))
    return target


def remove_partial_files(run_dir: Path) -> None:
    """After a failure: drop temporary files so nothing half-written stays."""
    for path in run_dir.rglob(f".*{PART_SUFFIX}"):
        path.unlink(missing_ok=True)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "summary.json").exists() or (path / "run.log").exists())


def remove_run(path: Path) -> bool:
    """Delete a run folder; False if another process removed it first.

    The folder is first renamed to a hidden name, atomically, so two processes
    (``rpp clean``, retention after a run, the app) never both delete it or
    leave it half-deleted under its real name. Refuses anything that is not a
    run folder (ValueError).
    """
    path = Path(path)
    if path.is_symlink() or not is_run_dir(path):
        raise ValueError(f"{path} is not an rpp run folder (no summary.json or run.log): not deleting it")
    hidden = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    shutil.rmtree(hidden, ignore_errors=True)
    return True
