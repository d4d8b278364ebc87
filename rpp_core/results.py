"""The run folder: every file a run leaves behind, each written atomically.

Layout of ``<workspace>/<frame-stem>_<UTC yyyymmddThhmmss>/``:

==================  ==========================================================
run.log             the whole log, written line by line (survives a crash)
summary.json        FWHM, counts, zero point, airmass, timings per stage
catalog.*           the catalogue: .csv and .ecsv always, .vot, .fits and .parquet as
                    ``output.formats`` asks (all by default); columns in docs/catalogue.md
header.txt          the (repaired) FITS header of the frame
regions.reg         DS9 regions: detections (green), calibrators (cyan), rejected (red)
frame.wcs           WCS of the frame when it was solved or refined (header only)
plots/*.txt         text figures: zero-point fit, residuals, histogram, error vs mag
plots/*.png         the same as PNG, and finder.png: the frame with detections and calibrators
sky.html            the field in Aladin Lite with the sources as overlays; a table offline
<run>.zip           all of the above
==================  ==========================================================

Nothing half-written: while the run works, every file but ``run.log`` is
made in the staging folder ``.staging/`` inside the run folder (each one
atomically, see :mod:`rpp_core.fsio`), the ZIP included. At the end the staged
files are published by renames and ``summary.json`` comes last: **a run
folder with a summary is complete** (its ``status`` says ok, degraded, failed
or cancelled), and a failed or cancelled run keeps only ``run.log`` and
``summary.json``. ``.in-progress`` is held locked (``flock``) by the process
running the run, from the folder's creation to the summary: a folder without
a summary whose marker nobody holds was interrupted (killed, power cut), and
:func:`rpp_core.rundir.run_state` says so to ``rpp clean`` and the app's History; retention
never removes a run whose marker is held.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from astropy.table import Table

if TYPE_CHECKING:
    from .photometry import PsfInfo

# figures at import, never first in a thread: a run forking its drawers while another run's thread imports it
# (several runs in one process: Dask) left the drawer waiting for ever on the import lock it inherited
from . import archive, catalog_files, figures, plots
from .products import RunSummary, SourceCatalogue
from .errors import OutputError
from .fitsnames import frame_stem
from .fsio import PART_SUFFIX, atomic_path, write_text
from .progress import check_cancel

from .rundir import RUN_LOG, STAGING, SUMMARY, staging_dir

#: errno values meaning "the results cannot be written here" (not a bug: a disk or folder to fix)
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}

#: catalogue format -> file name (writers in :mod:`rpp_core.catalog_files`)
CATALOG_FORMATS = catalog_files.FILE_NAMES


def make_run_dir(out_dir: str | os.PathLike, frame_path: str | os.PathLike) -> Path:
    """Create a fresh run folder ``<out_dir>/<stem>_<UTC timestamp>`` (never reuses one).

    Raises :class:`~rpp_core.errors.OutputError` when ``out_dir`` cannot hold it (read-only, full).
    """
    out = Path(out_dir)
    name = frame_stem(Path(frame_path).name)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            run = out / (f"{name}_{stamp}" + (f"_{i}" if i else ""))
            try:
                run.mkdir()
                return run
            except FileExistsError:
                continue
    except OSError as exc:
        raise output_error(exc, out) from None
    raise OutputError(f"cannot create a run folder in {out}: 1000 folders named {name}_{stamp} exist")


def output_error(exc: OSError, where: Path) -> OutputError:
    """The one-line error for a folder that cannot take the results (full disk, read-only, no permission)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        todo = "free some space or choose another --out"
    else:
        todo = "choose a writable --out (or RPP_WORKSPACE)"
    return OutputError(f"{where}: cannot write the results ({exc.strerror or exc}); {todo}")


def publish(run_dir: Path, files: dict[str, Path]) -> dict[str, Path]:
    """Move the staged files into the run folder, ``summary.json`` last; ``files`` with their final paths.

    Each move is one rename in the same folder: nothing is copied, so a full
    disk cannot stop it half-way, and until the summary lands the folder reads
    as unfinished.
    """
    run_dir = Path(run_dir)
    staging = run_dir / STAGING
    entries = sorted(staging.iterdir(), key=lambda p: p.name == SUMMARY)
    for entry in entries:
        target = run_dir / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
    return {k: (run_dir / Path(p).relative_to(staging) if Path(p).is_relative_to(staging) else Path(p))
            for k, p in files.items()}


def _serializable_table(table: Table) -> Table:
    """Copy without object columns or non-scalar meta that some writers reject."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        if out[name].dtype.kind == "O":
            out[name] = np.asarray([("" if v is None else str(v)) for v in out[name]])
    out.meta = {k: v for k, v in out.meta.items() if isinstance(v, (str, int, float, bool, list, dict)) and k != "comments"}
    return out


def write_catalog(table: Table, run_dir: Path, formats: list[str], cancel: Callable[[], bool] | None = None) -> dict[str, Path]:
    """Write the catalogue in every requested format (CSV and ECSV always), each atomically.

    ``cancel`` is asked before each file (:class:`~rpp_core.errors.Cancelled`).
    """
    from concurrent.futures import ThreadPoolExecutor

    check = functools.partial(check_cancel, cancel)
    table = _serializable_table(table)
    order = ["csv", "ecsv", *[f for f in formats if f not in ("csv", "ecsv")]]
    files = dict.fromkeys(order)
    body = catalog_files.CsvBody(table)  # CSV and ECSV share their rows: formatted once
    # Arrow formats the rows without the interpreter lock: in a thread, beside the binary formats
    with ThreadPoolExecutor(1, thread_name_prefix="rpp-csv") as pool:
        rows = pool.submit(body.rows)
        for fmt in order[2:] + order[:2]:
            check()
            if fmt == "csv":
                rows.result()
            files[fmt] = catalog_files.write(table, run_dir / CATALOG_FORMATS[fmt], fmt, body=body)
    return files


def write_regions(table: Table, path: Path, radius_px: float) -> Path:
    """DS9 region file in image coordinates, exactly as astropy's ``regions`` package writes it.

    Positions are the catalogue's 0-based ``x``, ``y``, written 1-based, as DS9
    expects. Colours: green detection, cyan calibrator, red rejected
    calibrator; the text of each circle is the source id. Formatted here with
    one list comprehension: ``regions`` builds a ``CirclePixelRegion`` per
    source, 0.8-1.4 s for 20,000 sources (0.03 s here); tests/test_views.py
    reads the file back with ``regions`` and compares it with its own output.
    """
    used, rej = plots.flagged_rows(table, "calib_used"), plots.flagged_rows(table, "calib_rejected")
    ids = np.asarray(table["id"]) if "id" in table.colnames else np.arange(1, len(table) + 1)
    colors = np.where(rej, "red", np.where(used, "cyan", "green")).tolist()
    xs, ys = (np.asarray(table["x"], float) + 1).tolist(), (np.asarray(table["y"], float) + 1).tolist()
    r = f"{float(radius_px):.8f}"
    lines = ["# Region file format: DS9 astropy/regions", "image"]
    lines += [f"circle({x:.8f},{y:.8f},{r}) # text={{{i}}} color={c}"
              for x, y, i, c in zip(xs, ys, ids.tolist(), colors)]
    return write_text(path, "\n".join(lines) + "\n")


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
    return {**write_figures(table, meta, run_dir, data, wcs, title, warn),
            **write_sky(table, meta, run_dir, data, wcs, title, warn)}


def write_figures(table: Table, meta: dict, run_dir: Path, data=None, wcs=None, title: str = "",
                  warn=None, only=None) -> dict[str, Path]:
    """The PNG figures of :func:`write_views` (``plots/*.png``, the finder chart with ``data``);
    ``only`` as in :func:`rpp_core.figures.write_all`."""
    try:
        return figures.write_all(table, meta, run_dir / "plots", data=data, wcs=wcs, title=title, only=only)
    except Exception as exc:  # noqa: BLE001 - matplotlib edge cases must not cost the catalogue
        if warn:
            warn(f"PNG figures not written: {type(exc).__name__}: {exc}")
        return {}


def write_sky(table: Table, meta: dict, run_dir: Path, data=None, wcs=None, title: str = "",
              warn=None) -> dict[str, Path]:
    """``sky.html`` of :func:`write_views`."""
    from . import skyview

    try:
        shape = None if data is None else data.shape
        return {"sky_html": skyview.write_sky_html(table, {**meta, "title": title}, run_dir / "sky.html", wcs=wcs,
                                                   shape=shape)}
    except Exception as exc:  # noqa: BLE001
        if warn:
            warn(f"sky.html not written: {type(exc).__name__}: {exc}")
        return {}


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
                  data=None, wcs=None, warn=None, cancel: Callable[[], bool] | None = None,
                  drawers: "FigureDrawers | None" = None) -> dict[str, Path]:
    """Plots, DS9 regions and the catalogue in every format, into ``run_dir`` (the pipeline's staging folder).

    With the frame's ``data`` (and ``wcs``), also the PNG figures and ``sky.html``
    (:func:`write_views`); their problems go to ``warn``. ``cancel`` is asked
    between files: when it says yes, :class:`~rpp_core.errors.Cancelled` is raised.
    ``drawers``: :class:`FigureDrawers` started earlier (made here when None; ``data`` is handed to them
    with the catalogue); they are done or killed when this returns.

    The catalogue's meta gets the frame, time, filter, exposure, airmass, FWHM,
    zero point, calibration aperture and source, units, effective gain and what
    the pixel coordinates refer to (``pixel_frame``) from the summary (``pixel_origin`` 0).
    """
    check = functools.partial(check_cancel, cancel)
    cat = catalogue.table.copy(copy_data=False)
    title, meta = Path(summary.frame).name, view_meta(summary)
    # the PNG figures (matplotlib: 0.5-0.7 s of CPU however few the rows, nearly all of it under the
    # interpreter lock) are drawn by forked processes while this one does the rest: in a thread they shared
    # one lock with the writers and the two ran one after the other
    drawers = drawers or FigureDrawers(data)
    try:
        if not drawers.handed:  # else the run handed them the catalogue earlier (hand_figures)
            drawers.draw(cat, meta, run_dir, wcs, title, warn, data=data)
        files = _write_the_rest(catalogue, cat, summary, run_dir, formats, check, cancel, (meta, data, wcs, title, warn))
        files.update(drawers.result(check))
    finally:
        drawers.stop()  # on a cancel or an error: nothing may write into the folder once we return
    return files


def hand_figures(drawers: "FigureDrawers", catalogue: SourceCatalogue, summary: RunSummary, run_dir: Path, wcs=None,
                 warn=None, data=None) -> None:
    """Hand the calibrated catalogue (and the frame's ``data`` for the finder chart) to figure processes
    already forked, before :func:`write_outputs`.

    A run calls it once the zero point is known: the figures read nothing the
    cross-match services add, so they are drawn while the services are asked
    (seconds of network), and :func:`write_outputs` only collects them. Where the
    figures would be drawn in this process (no fork), nothing is done here: they
    are drawn at Outputs, off the caller's thread.
    """
    if drawers.pid:
        drawers.draw(catalogue.table.copy(copy_data=False), view_meta(summary), run_dir, wcs,
                     Path(summary.frame).name, warn, data=data)


#: the PNG figures, in two processes of about equal work (the finder chart costs about three plots): with
#: the writers in this one, a small catalogue's outputs keep two cores busy instead of one
FIGURE_GROUPS = (("finder", "mag_hist"), tuple(name for name in plots.FIGURES if name != "mag_hist"))


def _write_the_rest(catalogue: SourceCatalogue, cat: Table, summary: RunSummary, run_dir: Path, formats: list[str], check, cancel,
                    views: tuple) -> dict[str, Path]:
    """:func:`write_outputs` but the PNG figures: text plots, regions, the catalogue, sky.html."""
    files: dict[str, Path] = dict(write_plots(cat, summary, run_dir))
    check()
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
    check()
    files.update(write_catalog(cat, run_dir, formats, cancel))
    check()
    meta, data, wcs, title, warn = views
    files.update(write_sky(cat, meta, run_dir, data, wcs, title, warn))
    return files


#: this process's ends of the pipes of every live :class:`FigureDrawers`. A drawer forked later (another
#: run in another thread of this process: a Dask worker's threads) closes them at once: holding a copy of an
#: earlier run's catalogue pipe open, its drawers never saw the end of their input and that run waited.
_PARENT_ENDS: set[int] = set()
#: held while pipes are made and drawers forked, and while an end is closed: a fork sees a settled set
_ENDS_LOCK = threading.Lock()


def _close_end(fd: int) -> None:
    with _ENDS_LOCK:
        _PARENT_ENDS.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


class FigureDrawers:
    """The processes that draw the PNG figures (:func:`write_figures`), one per group of :data:`FIGURE_GROUPS`.

    The first is forked when this is made, from the calling thread: it imports matplotlib at
    once and forks the others, which share its imports, then each waits for the catalogue
    (:meth:`draw`). A run makes them before it loads its frame: the imports (0.25 s of
    CPU) then run on the other core while the stages run, instead of in the one-shot
    forkserver's preload before the first stage. The frame's pixels for the finder chart: ``data``
    given here is shared copy-on-write (it must not change afterwards); else :meth:`draw` takes
    them and sends the drawer of the finder chart :func:`rpp_core.figures.finder_pixels` of them
    (a few MB whatever the frame).

    The drawers are in the caller's session (a cancel that kills the session kills them),
    die with the calling thread on Linux (so that thread must live as long as the run: the
    event loop's), leave without writing anything when they get no catalogue (end of file:
    the run failed, or the caller died), and send back their file names and the warnings
    they had. The first reaps the others; leaving the ``with`` block (or :meth:`stop`) ends
    them all and reaps the first. Where ``fork`` is missing, :meth:`draw` draws in this process.
    """

    def __init__(self, data=None) -> None:
        self._data = data
        self._files: dict[str, Path] | None = None
        self._warn = None
        self._pid = 0
        self._sent = self._reading = self._handed = False
        self._warn_later: str | None = None
        self._args: list[int] = []  # per group, this process's ends: the catalogue out, the result in
        self._results: list[int] = []
        if not hasattr(os, "fork"):  # pragma: no cover - every platform rpp runs on has it
            return
        theirs: list[tuple[int, int]] = []
        try:
            import signal

            with _ENDS_LOCK:
                try:
                    for _ in FIGURE_GROUPS:
                        args_r, self_args = os.pipe()
                        self_res, res_w = os.pipe()
                        self._args.append(self_args)
                        self._results.append(self_res)
                        _PARENT_ENDS.update((self_args, self_res))
                        theirs.append((args_r, res_w))
                    parent = os.getpid()
                    # the child must not run this process's handlers (the event loop's, through its wakeup pipe)
                    # until it has put back the defaults: the signals are held across the fork
                    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                    try:
                        # beside other threads (the run's stage threads, idle now): the child uses none of them
                        # nor their locks
                        pid = os.fork()
                        if pid == 0:
                            for fd in _PARENT_ENDS:  # this set's and every other live set's
                                os.close(fd)
                            _drawers_main(theirs, data, parent, held)
                    finally:
                        signal.pthread_sigmask(signal.SIG_SETMASK, held)
                    self._pid = pid
                finally:
                    for fds in theirs:
                        for fd in fds:
                            os.close(fd)
        except OSError as exc:  # no pipe or no process to be had (descriptors, memory): drawn here at Outputs
            self.stop()
            self._warn_later = f"PNG figures drawn in the run's own process: no process for them ({exc})"
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The first drawer's process id; 0 when the figures are drawn in this process."""
        return self._pid

    @property
    def handed(self) -> bool:
        """Whether :meth:`draw` was called (the catalogue is handed over once)."""
        return self._handed

    def __enter__(self) -> "FigureDrawers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def draw(self, table: Table, meta: dict, run_dir: Path, wcs=None, title: str = "", warn=None,
             data=None) -> None:
        """Hand the catalogue to the drawers (without waiting for them): their figures go into ``run_dir/plots``.

        ``data``: the frame's pixels, for the finder chart, when they were not given at the start.
        Once per set of drawers: a second call raises RuntimeError."""
        if self._handed:
            raise RuntimeError("the figures' catalogue was handed over already")
        self._handed = True
        self._warn = warn
        if data is None:
            data = self._data
        if not self._pid:
            if self._warn_later and warn:
                warn(self._warn_later)
            self._files = write_figures(table, meta, run_dir, data, wcs, title, warn)
            return
        import pickle
        import threading

        try:
            payload = pickle.dumps((table, meta, Path(run_dir), wcs, title), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - a value pickle cannot take must not cost the catalogue
            self.stop()
            if warn:
                warn(f"PNG figures not written: {type(exc).__name__}: {exc}")
            return
        self._sent = True
        # a thread writes it: a drawer still importing reads nothing yet, and a big catalogue fills the pipe;
        # the drawers do not share the frame when it was not given at the start: its chart's pixels follow
        threading.Thread(target=_send, args=(payload, self._args, data if self._data is None else None),
                         name="rpp-figures-send", daemon=True).start()

    def result(self, check: Callable[[], None]) -> dict[str, Path]:
        """The files the drawers wrote, once they are done; ``check`` is asked every 50 ms while waiting."""
        import pickle
        import select

        if not self._pid:
            return dict(self._files or {})
        pid, self._reading = self._pid, True
        chunks: dict[int, list[bytes]] = {fd: [] for fd in self._results}
        try:
            open_fds = list(self._results)
            while open_fds:
                ready, _, _ = select.select(open_fds, [], [], 0.05)
                if not ready:
                    check()
                for fd in ready:
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        chunks[fd].append(chunk)
                    else:
                        open_fds.remove(fd)
        finally:
            self._reading = False
        for fd in self._results:
            _close_end(fd)
        self._results = []
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by stop() from the run's thread meanwhile: it was ended
            status = 9
        self._pid = 0
        files: dict[str, Path] = {}
        others = None  # how a drawer forked by the first ended, when that was badly (the first reaped it)
        for i, parts in enumerate(chunks.values()):
            try:
                got, messages, caught, *rest = pickle.loads(b"".join(parts))
                others = rest[0] if rest else others
            except Exception:  # noqa: BLE001 - the drawer died (killed, out of memory): its figures are missing
                got, caught = {}, []
                why = _wait_status(others if i and others is not None else status)
                messages = [f"PNG figures not written: the process drawing them ended ({why})"]
            files.update(got)
            import warnings

            for text, category, filename, lineno in caught:  # the libraries' warnings, as if raised here
                warnings.warn_explicit(text, category, filename, lineno)
            for message in messages:
                if self._warn:
                    self._warn(message)
        return files

    def stop(self) -> None:
        """End the drawers still alive (the run was cancelled, failed, or the catalogue failed) and reap the first.

        Asked with SIGTERM first (the first drawer then kills and reaps the ones it forked); SIGKILL when
        that takes over a second."""
        pid, self._pid = self._pid, 0
        if pid:
            import signal
            import time

            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            deadline, done = time.monotonic() + 1.0, False
            with contextlib.suppress(OSError):
                while not done and time.monotonic() < deadline:
                    done = os.waitpid(pid, os.WNOHANG)[0] != 0
                    if not done:
                        time.sleep(0.005)
            if not done:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
        if not self._reading:  # else result() sees the end of file and closes them
            for fd in self._results:
                _close_end(fd)
            self._results = []
        if not self._sent:  # else the sending thread closes them once the write fails
            for fd in self._args:
                _close_end(fd)
            self._args = []


def _send(payload: bytes, fds: list[int], data=None) -> None:
    """Write the pickled catalogue to each drawer and close its pipe (a drawer killed meanwhile: its result says so).

    With the frame's ``data``, the drawer of the finder chart gets :func:`rpp_core.figures.finder_pixels` of
    it after the catalogue (or, when they cannot be had, why), made here: off the run's way (0.03 s for a
    4096^2 frame), and after the other drawers have their catalogue."""
    import pickle

    for fd, group in sorted(zip(fds, FIGURE_GROUPS), key=lambda pair: "finder" in pair[1]):
        parts = [payload]
        if data is not None and "finder" in group:
            try:
                pixels = figures.finder_pixels(data)
            except Exception as exc:  # noqa: BLE001 - said by the drawer: no chart, the rest is drawn
                pixels = f"{type(exc).__name__}: {exc}"
            parts.append(pickle.dumps(pixels, protocol=pickle.HIGHEST_PROTOCOL))
        with contextlib.suppress(OSError):
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        _close_end(fd)


def _wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _die_with(parent: int) -> None:
    """Linux: this process is killed when its parent dies (killed with the run, it must not draw on)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def _drawers_main(pipes: list[tuple[int, int]], data, parent: int, held: set) -> None:
    """The first drawer of :class:`FigureDrawers` (the forked child): import matplotlib, fork one drawer per
    further group (they share the imports), draw the first group, reap the others, leave.

    ``pipes``: per group of :data:`FIGURE_GROUPS`, the catalogue's read end and the result's write end;
    ``held``: the signal mask to put back once the parent's handlers are gone."""
    code = 1
    try:
        import gc
        import signal

        from .rundir import drop_marker_copies

        with contextlib.suppress(ValueError):  # the parent's handlers would talk to the parent's event loop
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        _die_with(parent)
        drop_marker_copies()  # the run's .in-progress lock is the parent's alone
        # the parent's objects out of the collector's sight: a full collection here would touch every one of
        # them and so copy most of the parent's heap into this process (copy-on-write), for nothing
        gc.freeze()
        caught: list = []
        with contextlib.suppress(Exception):  # now, while the run's stages go on; a failure is reported at drawing
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                # matplotlib's import makes ~100,000 objects and no garbage, yet the collector ran ~100 times
                # among them (15-25 ms of this process's 0.25-0.3 s, on the run's critical path: the stages
                # end about when this is ready); then they join the frozen ones, never walked again
                gc.disable()
                try:
                    figures.import_matplotlib()
                finally:
                    gc.freeze()
                    gc.enable()
                figures.warm_up()  # fonts and caches too, for both drawers (the others fork from here)
        # SIGTERM (stop()) held until the handler that ends the other drawers is in place
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        others = []
        me = os.getpid()
        for i in range(1, len(pipes)):
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                for j, fds in enumerate(pipes):
                    if j != i:
                        for fd in fds:
                            os.close(fd)
                _die_with(me)
                _draw_group(*pipes[i], FIGURE_GROUPS[i], data, [])  # never returns; the first reports the imports' warnings
            others.append(pid)
        for fds in pipes[1:]:
            for fd in fds:
                os.close(fd)

        def end(signum, frame):  # the run ended first: the others go too, reaped here (no zombie left)
            for pid in others:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
            os._exit(1)

        signal.signal(signal.SIGTERM, end)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _draw_group(*pipes[0], FIGURE_GROUPS[0], data, list(caught), others=others)
    finally:
        os._exit(code)


def _draw_group(args_fd: int, result_fd: int, only, data, caught: list, others=()) -> None:
    """One drawer's work: wait for the catalogue on ``args_fd``, draw ``only``, send ``(files, messages,
    warnings[, how the others ended])`` pickled on ``result_fd``, reap ``others``, leave."""
    code = 1
    try:
        import pickle
        import warnings

        with contextlib.suppress(Exception), warnings.catch_warnings(record=True) as preparing:
            warnings.simplefilter("default")
            figures.prepare(only)  # while the catalogue is on its way: figures, axes, ticks (none drawn)
        caught = caught + (preparing or [])
        chunks = []
        while chunk := os.read(args_fd, 1 << 20):
            chunks.append(chunk)
        messages: list[str] = []
        files: dict = {}
        if chunks:  # else no catalogue: the run ended before its outputs
            import io

            got = io.BytesIO(b"".join(chunks))
            table, meta, run_dir, wcs, title = pickle.load(got)
            if got.tell() < len(got.getbuffer()):  # the finder chart's pixels (_send), or why there are none
                data = pickle.load(got)
                if isinstance(data, str):
                    messages.append(f"finder chart not drawn: its pixels could not be had ({data})")
                    data = None
            with warnings.catch_warnings(record=True) as drawing:
                warnings.simplefilter("default")
                files = write_figures(table, meta, run_dir, data, wcs, title, warn=messages.append, only=only)
            caught = caught + drawing
        else:
            caught = []
        ended = None
        for pid in list(others):  # the drawers forked here: reaped before this one reports and leaves
            with contextlib.suppress(OSError):
                status = os.waitpid(pid, 0)[1]
                if status:
                    ended = status
            others.remove(pid)  # reaped: its number may be another process's now, never to be killed by end()
        if chunks:
            found = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
            try:
                out = pickle.dumps((files, messages, found, ended))
            except Exception:  # noqa: BLE001 - a warning class defined where pickle cannot find it
                out = pickle.dumps((files, messages, [(t, UserWarning, f, n) for t, _, f, n in found], ended))
            while out:
                out = out[os.write(result_fd, out):]
        code = 0
    finally:
        os._exit(code)


def make_zip(run_dir: Path, cancel: Callable[[], bool] | None = None) -> Path:
    """ZIP of the run: the staged files and ``run.log``, under ``<run name>/``, written into the staging folder."""
    check = functools.partial(check_cancel, cancel)
    run_dir = Path(run_dir)
    staging = staging_dir(run_dir)
    target = staging / f"{run_dir.name}.zip"
    members = [(p, p.relative_to(staging)) for p in sorted(staging.rglob("*"))
               if p.is_file() and p != target and not p.name.endswith(PART_SUFFIX)]
    if (run_dir / RUN_LOG).exists():
        members.append((run_dir / RUN_LOG, Path(RUN_LOG)))
    # the CSV and the ECSV share their rows (catalog_files.CsvBody): deflated once for both
    same_rows = [(staging / CATALOG_FORMATS["csv"], staging / CATALOG_FORMATS["ecsv"])]
    with atomic_path(target) as tmp:
        archive.write_zip(tmp, [(path, f"{run_dir.name}/{rel.as_posix()}") for path, rel in members], check,
                          same_rows=same_rows)
    return target
