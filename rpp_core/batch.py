"""``rpp batch``: many frames, one bounded worker pool (or a Dask cluster), one night summary.

Each frame runs :func:`rpp_core.pipeline.run_sync` in a worker *process*
(the CPU stages hold the GIL, so threads would serialise them), or as a task
on an existing ``dask.distributed`` cluster with ``--scheduler``. The parent
process only schedules, prints and records:

- one line per frame (ok / degraded / FAILED with the reason, FWHM, zero
  point, number of sources, seconds) and a progress bar over the batch;
- a ledger entry per frame (:class:`Ledger`), so re-running the same command
  skips frames already done with the same profile (``--force`` redoes them);
- a night report folder ``<workspace>/batch_<UTC timestamp>/``: summary table
  (CSV and text), zero point and FWHM against time (plotext text figures)
  and the batch log (``run.log``, which also makes ``rpp clean`` treat the
  folder like a run).

One bad frame never stops the batch: every failure becomes a result line.
A worker that dies (out of memory, a crash inside a library) is replaced and
its frame retried once.

Frames of one field are scheduled so the catalogue cache can work: the first
frame of each field (pointing within :data:`FIELD_RADIUS_DEG`) runs first, the
rest of that field only once it finished, so they find the reference
catalogue in the on-disk cache instead of asking the service again.

Dask workers must see the frames and the workspace at the same paths
(a shared file system) and have rpp installed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable

from . import locations
from .errors import RppError, UsageError
from .settings import Profile, load_profile

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fit.fz", ".fz", ".fits.gz", ".fit.gz", ".fts.gz")
#: frames whose pointings are closer than this share a field (and a reference catalogue)
FIELD_RADIUS_DEG = 0.25
LEDGER_DIRNAME = ".rpp-ledger"
#: a frame whose worker died this many times is reported failed instead of retried
MAX_ATTEMPTS = 2
#: environment a local worker must share with the parent (a forkserver keeps the env it started with)
_ENV_KEYS = ("RPP_CONFIG_DIR", "RPP_CACHE_DIR", "RPP_WORKSPACE", "RPP_DEBUG")
_PRELOAD = ["rpp_core.pipeline", "rpp_core.image", "rpp_core.preprocess", "rpp_core.detect",
            "rpp_core.photometry", "rpp_core.astrometry", "rpp_core.calibrate", "rpp_core.results"]


# ---------------------------------------------------------------- inputs

def is_fits_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(FITS_SUFFIXES) and not name.startswith(".")


def collect_frames(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """FITS files named or found in folders, absolute, without duplicates, in a stable order.

    Files named explicitly are taken whatever their suffix; folders give the
    files ending in one of :data:`FITS_SUFFIXES` (hidden files excluded).
    Raises :class:`UsageError` naming a path that does not exist.
    """
    frames: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.glob("*")
            found = sorted(p for p in pattern if p.is_file() and is_fits_name(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.exists():
            found = [path]
        else:
            raise UsageError(f"{item}: no such file or folder")
        for p in found:
            p = p.resolve()
            if p not in seen:
                seen.add(p)
                frames.append(p)
    return frames


def profile_hash(profile: Profile, catalog_files=(), hdu: int | None = None, offline: bool | None = None) -> str:
    """Short hash of everything that changes a frame's result (profile name and retention excluded)."""
    data = profile.to_dict()
    data.pop("name", None)
    # retention settings change what is kept, not what a frame gives
    data["output"] = {k: v for k, v in data["output"].items() if k not in ("keep_days", "max_total_gb")}
    data["_catalog_files"] = sorted(str(Path(c).expanduser().resolve()) for c in catalog_files)
    data["_hdu"] = hdu
    data["_offline"] = offline
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- results

@dataclasses.dataclass
class FrameResult:
    """The outcome of one frame, as printed, tabulated and kept in the ledger.

    ``status``: ``"ok"``; ``"degraded"`` (catalogue written but e.g. not
    calibrated, ``exit_code`` says why); ``"failed"``; ``"skipped"`` (done
    before with the same profile: the figures are those of that run).
    """

    path: str
    status: str
    reason: str = ""
    exit_code: int = 0
    run_dir: str = ""
    date_obs: str | None = None
    airmass: float | None = None
    fwhm_px: float | None = None
    fwhm_arcsec: float | None = None
    n_sources: int | None = None
    n_calibrators: int | None = None
    zp: float | None = None
    zp_err: float | None = None
    seconds: float = 0.0
    n_warnings: int = 0
    field: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def done(self) -> bool:
        return self.status in ("ok", "degraded")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrameResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def line(self, index: int | None = None, total: int | None = None) -> str:
        """One line for a terminal or a log."""
        head = f"[{index:>{len(str(total))}d}/{total}] " if index is not None and total else ""
        label = {"ok": "ok", "degraded": "degraded", "failed": "FAILED", "skipped": "skip"}.get(self.status, self.status)
        parts = [f"{head}{label:<8} {self.name}"]
        if self.status == "failed":
            parts.append(f"exit {self.exit_code}: {self.reason}")
        else:
            if self.fwhm_px is not None:
                parts.append(f"fwhm {self.fwhm_px:.2f} px")
            parts.append(f"zp {self.zp:.3f}±{self.zp_err:.3f}" if self.zp is not None and self.zp_err is not None
                         else "zp n/a")
            if self.n_sources is not None:
                parts.append(f"{self.n_sources} src" + (f" ({self.n_calibrators} cal)" if self.n_calibrators else ""))
            if self.status == "degraded":
                parts.append(f"exit {self.exit_code}: {self.reason}")
            if self.status == "skipped":
                parts.append("done before")
        parts.append(f"{self.seconds:.1f} s")
        return "  ".join(parts)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def result_from_summary(path, summary: dict, exit_code: int, message: str, seconds: float) -> FrameResult:
    """A :class:`FrameResult` from a pipeline ``summary`` dict (as in ``summary.json``)."""
    n_src = summary.get("n_sources")
    n_cal = summary.get("n_calibrators")
    return FrameResult(
        path=str(path),
        status="ok" if not exit_code else "degraded",
        reason=str(message or summary.get("error") or "") if exit_code else "",
        exit_code=int(exit_code or 0),
        run_dir=str(summary.get("run_dir", "")),
        date_obs=str(summary["date_obs"]) if summary.get("date_obs") else None,
        airmass=_num(summary.get("airmass")),
        fwhm_px=_num(summary.get("fwhm_px")),
        fwhm_arcsec=_num(summary.get("fwhm_arcsec")),
        n_sources=int(n_src) if n_src is not None else None,
        n_calibrators=int(n_cal) if n_cal is not None else None,
        zp=_num(summary.get("zp")),
        zp_err=_num(summary.get("zp_err")),
        seconds=round(float(seconds), 3),
        n_warnings=len(summary.get("warnings") or []),
    )


def process_frame(path: str, profile: Profile, out_dir: str, catalog_files=(), offline: bool | None = None,
                  hdu: int | None = None, env: dict | None = None) -> dict:
    """Run the pipeline on one frame and never raise: the worker task of ``rpp batch``.

    Returns :meth:`FrameResult.to_dict` (plain data, cheap to send between
    processes). ``env`` sets ``RPP_*`` variables first (local pool only).
    """
    t0 = time.perf_counter()
    if env:
        os.environ.update(env)
    run_dir = [""]

    def on_event(event) -> None:
        if type(event).__name__ == "RunStarted":
            run_dir[0] = event.run_dir

    try:
        from . import pipeline

        result = pipeline.run_sync(path, profile, on_event=on_event, out_dir=out_dir,
                                   catalog_files=list(catalog_files), hdu=hdu, offline=offline)
        summary = dict(result.summary)
        summary.setdefault("run_dir", str(result.run_dir))
        return result_from_summary(path, summary, getattr(result, "exit_code", 0),
                                   getattr(result, "message", ""), time.perf_counter() - t0).to_dict()
    except RppError as exc:
        return FrameResult(str(path), "failed", str(exc), exc.exit_code, run_dir[0],
                           seconds=round(time.perf_counter() - t0, 3)).to_dict()
    except Exception as exc:  # a bug in one frame must not stop the night
        return FrameResult(str(path), "failed", f"internal error: {type(exc).__name__}: {exc}", 1, run_dir[0],
                           seconds=round(time.perf_counter() - t0, 3)).to_dict()


# ---------------------------------------------------------------- ledger

@dataclasses.dataclass(frozen=True)
class FrameKey:
    """What makes a frame 'the same frame processed the same way'."""

    path: str
    size: int
    mtime_ns: int
    profile_hash: str

    @classmethod
    def of(cls, path, phash: str) -> "FrameKey":
        p = Path(path).resolve()
        st = p.stat()
        return cls(str(p), st.st_size, st.st_mtime_ns, phash)

    @property
    def id(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime_ns}|{self.profile_hash}"


class Ledger:
    """Which frames were processed, with which profile and outcome.

    One small JSON file per source folder in ``<workspace>/.rpp-ledger/``
    (a night folder of frames gives one file, so it stays small), rewritten
    atomically (temporary file, fsync, rename) under an advisory lock, so
    ``rpp batch`` and ``rpp watch`` may share it and a crash or power cut
    leaves either the old or the new file, never a torn one.
    """

    def __init__(self, workspace: str | os.PathLike) -> None:
        self.root = Path(workspace) / LEDGER_DIRNAME
        self._cache: dict[Path, tuple[int, dict]] = {}

    def _shard(self, key: FrameKey) -> Path:
        folder = str(Path(key.path).parent)
        return self.root / (hashlib.sha1(folder.encode()).hexdigest()[:16] + ".json")

    def _read(self, shard: Path) -> dict:
        try:
            mtime = shard.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._cache.get(shard)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            data = json.loads(shard.read_text()).get("frames", {})
        except (OSError, ValueError):
            data = {}  # unreadable ledger: frames are redone, nothing is lost
        self._cache[shard] = (mtime, data)
        return data

    def get(self, key: FrameKey) -> dict | None:
        return self._read(self._shard(key)).get(key.id)

    def entries(self, folder: str | os.PathLike) -> list[dict]:
        """All entries recorded for frames of one folder."""
        shard = self.root / (hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16] + ".json")
        return list(self._read(shard).values())

    @contextlib.contextmanager
    def _locked(self, shard: Path):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(shard.with_suffix(".lock"), "a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no flock (Windows, some NFS): last writer wins
                pass
            yield

    def _update(self, key: FrameKey, change: Callable[[dict], None]) -> None:
        shard = self._shard(key)
        with self._locked(shard):
            self._cache.pop(shard, None)
            frames = dict(self._read(shard))
            change(frames)
            tmp = shard.with_name(f".{shard.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "w") as fh:
                json.dump({"version": 1, "frames": frames}, fh, indent=1, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, shard)
            self._cache.pop(shard, None)

    def put(self, key: FrameKey, entry: dict) -> None:
        record = {**entry, "key": dataclasses.asdict(key),
                  "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self._update(key, lambda frames: frames.__setitem__(key.id, record))

    def forget(self, key: FrameKey) -> None:
        self._update(key, lambda frames: frames.pop(key.id, None))


# ---------------------------------------------------------------- fields

def _pointing(path: Path) -> tuple[float, float] | str | None:
    """Pointing (deg) from the primary/first image header, else OBJECT, else None."""
    try:
        from astropy.io import fits

        with fits.open(path, lazy_load_hdus=True) as hdul:
            header = None
            for hdu in hdul:
                if hdu.header.get("NAXIS", 0) >= 2 or "CRVAL1" in hdu.header or "RA" in hdu.header:
                    header = hdu.header
                    break
            header = header if header is not None else hdul[0].header
    except Exception:
        return None
    ctype = str(header.get("CTYPE1", ""))
    if ctype.startswith("RA") and _num(header.get("CRVAL1")) is not None and _num(header.get("CRVAL2")) is not None:
        return float(header["CRVAL1"]), float(header["CRVAL2"])
    for rk, dk in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"), ("RA_OBJ", "DEC_OBJ")):
        ra, dec = header.get(rk), header.get(dk)
        if ra is None or dec is None:
            continue
        if _num(ra) is not None and _num(dec) is not None:
            return float(ra), float(dec)
        try:
            from astropy import units as u
            from astropy.coordinates import SkyCoord

            c = SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg))
            return float(c.ra.deg), float(c.dec.deg)
        except Exception:
            continue
    obj = str(header.get("OBJECT", "")).strip()
    return obj or None


def group_fields(frames: list[Path], radius_deg: float = FIELD_RADIUS_DEG) -> list[str]:
    """A field label per frame: ``"F1"``, ``"F2"``... by pointing, ``""`` when unknown."""
    centres: list[tuple[float, float]] = []
    names: dict[str, str] = {}
    labels = []
    for path in frames:
        pt = _pointing(path)
        if pt is None:
            labels.append("")
        elif isinstance(pt, str):
            labels.append(names.setdefault(pt, f"F{len(centres) + len(names) + 1}"))
        else:
            ra, dec = pt
            label = ""
            for i, (ra0, dec0) in enumerate(centres):
                cosd = math.sin(math.radians(dec)) * math.sin(math.radians(dec0)) + \
                    math.cos(math.radians(dec)) * math.cos(math.radians(dec0)) * math.cos(math.radians(ra - ra0))
                if math.degrees(math.acos(max(-1.0, min(1.0, cosd)))) <= radius_deg:
                    label = f"F{i + 1}"
                    break
            if not label:
                centres.append((ra, dec))
                label = f"F{len(centres)}"
            labels.append(label)
    return labels


# ---------------------------------------------------------------- progress

class ProgressBar:
    """The batch's bar on a terminal, drawn by ``rich.progress``; silent when the stream is not a terminal.

    Lines printed with :meth:`print` go above the bar. Silent for logs, pipes
    and systemd, where a bar would be a stream of carriage returns.
    """

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True) -> None:
        self.total, self.stream = total, stream
        # only when stdout is the same terminal: result lines go above the bar, so a redirected stdout
        # must keep getting them itself
        self.enabled = (enabled and total > 0 and hasattr(stream, "isatty") and stream.isatty()
                        and sys.stdout.isatty())
        self.done = 0
        self.failed = 0
        self._progress = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(TextColumn("frames"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=Console(file=stream), transient=True,
                                      redirect_stdout=False, redirect_stderr=False)
            self._task = self._progress.add_task("batch", total=total, failed=0)
            self._progress.start()

    def draw(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, failed=self.failed)
            self._progress.refresh()

    def print(self, text: str, stream=None) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        print(text, file=stream or sys.stdout, flush=True)

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        self.draw()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# ---------------------------------------------------------------- night report

SUMMARY_COLUMNS = ("frame", "status", "date_obs", "airmass", "fwhm_px", "fwhm_arcsec", "n_sources", "n_calibrators",
                   "zp", "zp_err", "seconds", "exit_code", "reason", "field", "run_dir")


def _time_hours(results: list[FrameResult]) -> tuple[list[float | None], str]:
    """Hours since the first frame's DATE-OBS (or frame index when no time is known)."""
    from astropy.time import Time

    times = []
    for r in results:
        try:
            times.append(Time(r.date_obs).unix if r.date_obs else None)
        except Exception:
            times.append(None)
    known = [t for t in times if t is not None]
    if not known:
        return [float(i) for i in range(len(results))], "frame number"
    t0 = min(known)
    first = Time(t0, format="unix").isot[:19]
    return [(t - t0) / 3600.0 if t is not None else None for t in times], f"hours since {first} UTC"


def _text_plot(x, y, yerr, title: str, xlabel: str, ylabel: str, width: int = 100, height: int = 25) -> str:
    from .plots import render_figure

    def draw(plt):
        if x:
            if yerr and any(e for e in yerr):
                plt.error(x, y, yerr=yerr, color="gray")
            plt.scatter(x, y, marker="●")
        plt.title(title)
        plt.xlabel(xlabel)
        plt.ylabel(ylabel)

    return render_figure(draw, width, height, color=False, what=title)


def night_table(results: list[FrameResult]):
    """The night summary as an astropy Table, in time order (frames without a time last)."""
    from astropy.table import Table

    hours, _ = _time_hours(results)
    order = sorted(range(len(results)), key=lambda i: (hours[i] is None, hours[i] if hours[i] is not None else 0.0,
                                                       results[i].name))
    rows = []
    for i in order:
        r = results[i]
        rows.append({"frame": r.name, "status": r.status, "date_obs": r.date_obs or "", "airmass": r.airmass,
                     "fwhm_px": r.fwhm_px, "fwhm_arcsec": r.fwhm_arcsec, "n_sources": r.n_sources,
                     "n_calibrators": r.n_calibrators, "zp": r.zp, "zp_err": r.zp_err, "seconds": r.seconds,
                     "exit_code": r.exit_code, "reason": r.reason, "field": r.field, "run_dir": r.run_dir})
    cols = {}
    for c in SUMMARY_COLUMNS:
        vals = [row[c] for row in rows]
        if c in ("airmass", "fwhm_px", "fwhm_arcsec", "zp", "zp_err", "seconds"):
            vals = [math.nan if v is None else float(v) for v in vals]
        elif c in ("n_sources", "n_calibrators", "exit_code"):
            vals = [-1 if v is None else int(v) for v in vals]
        else:
            vals = [str(v) for v in vals]
        cols[c] = vals
    table = Table(cols, names=SUMMARY_COLUMNS) if rows else Table(names=SUMMARY_COLUMNS)
    table.meta["comments"] = ["n_sources/n_calibrators -1 = unknown; zp in the reference band, mag; fwhm in px"]
    return table


def _stats_lines(results: list[FrameResult], wall_s: float | None) -> list[str]:
    import numpy as np

    counts = collections.Counter(r.status for r in results)
    lines = [f"frames: {len(results)}  ok {counts['ok']}  degraded {counts['degraded']}  "
             f"failed {counts['failed']}  skipped (done before) {counts['skipped']}"]
    for label, vals, unit in (("zero point", [r.zp for r in results if r.zp is not None], "mag"),
                              ("FWHM", [r.fwhm_px for r in results if r.fwhm_px is not None], "px")):
        if vals:
            v = np.asarray(vals)
            lines.append(f"{label}: median {np.median(v):.3f} {unit}, min {v.min():.3f}, max {v.max():.3f}, "
                         f"robust scatter {1.4826 * np.median(np.abs(v - np.median(v))):.3f} ({len(v)} frames)")
    cpu = sum(r.seconds for r in results if r.status != "skipped")
    lines.append(f"processing time: {cpu:.1f} s summed over frames" + (f", {wall_s:.1f} s wall" if wall_s else ""))
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED {r.name}: exit {r.exit_code}: {r.reason}")
    return lines


def write_night_report(results: list[FrameResult], report_dir: str | os.PathLike, wall_s: float | None = None,
                       title: str = "") -> dict[str, Path]:
    """Write ``night_summary.csv``/``.txt``, ``zp_vs_time.txt``, ``fwhm_vs_time.txt`` (each atomically)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    table = night_table(results)
    files: dict[str, Path] = {}

    def atomic(name: str, text: str) -> None:
        path = report_dir / name
        tmp = path.with_name(f".{name}.part")
        tmp.write_text(text)
        os.replace(tmp, path)
        files[name] = path

    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.csv", overwrite=True)
    atomic("night_summary.csv", buf.getvalue())
    shown = table[[c for c in SUMMARY_COLUMNS if c not in ("run_dir", "reason", "field")]]
    buf = io.StringIO()
    if len(shown):
        for c in ("airmass", "fwhm_px", "fwhm_arcsec", "zp", "zp_err"):
            shown[c].info.format = ".3f"
        shown["seconds"].info.format = ".1f"
        shown.write(buf, format="ascii.fixed_width_two_line")
    head = [title] if title else []
    atomic("night_summary.txt", "\n".join(head + [buf.getvalue().rstrip(), ""] + _stats_lines(results, wall_s)) + "\n")

    hours, xlabel = _time_hours(results)
    for name, attr, err, ylabel in (("zp_vs_time.txt", "zp", "zp_err", "zero point (mag)"),
                                    ("fwhm_vs_time.txt", "fwhm_px", None, "FWHM (px)")):
        pts = [(h, getattr(r, attr), getattr(r, err) if err else None) for h, r in zip(hours, results)
               if h is not None and getattr(r, attr) is not None]
        pts.sort()
        text = _text_plot([p[0] for p in pts], [p[1] for p in pts], [p[2] or 0.0 for p in pts] if err else None,
                          f"{ylabel.split(' (')[0]} over the night ({len(pts)} frames)", xlabel, ylabel)
        atomic(name, text + "\n")
    return files


def make_report_dir(out_dir: Path, prefix: str = "batch") -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    for i in range(1000):
        path = out_dir / (f"{prefix}_{stamp}" + (f"_{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a report folder in {out_dir}")


# ---------------------------------------------------------------- executors

def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent decides what to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # library warnings from N workers would bury the per-frame lines; each run's own
    # warnings are in its run.log and summary.json
    import warnings

    warnings.simplefilter("ignore")
    with contextlib.suppress(Exception):
        from astropy import log

        log.setLevel("ERROR")


def _local_executor(jobs: int) -> cf.ProcessPoolExecutor:
    # forkserver: workers fork from a clean server that imported the pipeline once, instead
    # of forking a parent with threads (unsafe) or re-importing astropy in each (spawn)
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
    except ValueError:
        ctx = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)


def _terminate_local(executor) -> None:
    # concurrent.futures cannot cancel running tasks: end the worker processes themselves
    for proc in list(getattr(executor, "_processes", {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def connect_dask(address: str, timeout: str = "15s"):
    """A ``distributed.Client`` for ``address``; clear errors when dask is missing or unreachable."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("rpp batch --scheduler needs dask.distributed: install it with "
                         "`pip install 'rpp[dask]'` (or `pip install distributed`)") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}; check the address "
                         f"(tcp://HOST:PORT) and that `dask scheduler` and workers are running") from None


# ---------------------------------------------------------------- the batch

@dataclasses.dataclass
class BatchReport:
    results: list[FrameResult]  # in input order
    report_dir: Path | None
    files: dict[str, Path]
    wall_s: float
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every frame is ok or skipped, 130 when interrupted, else the first frame's non-zero code."""
        if self.interrupted:
            return 130
        for r in self.results:
            if r.status in ("failed", "degraded") and r.exit_code:
                return r.exit_code
        return 0


def run_batch(inputs: Iterable[str | os.PathLike], profile: Profile | None = None, *, jobs: int | None = None,
              scheduler: str | None = None, client=None, out_dir=None, catalog_files=(), offline: bool | None = None,
              hdu: int | None = None, force: bool = False, recursive: bool = True, report: bool = True,
              on_result: Callable[[FrameResult, int, int], None] | None = None,
              on_start: Callable[[int], None] | None = None, on_tick: Callable[[], None] | None = None, stop: threading.Event | None = None, field_order: bool = True) -> BatchReport:
    """Process frames on a local process pool (``jobs`` workers) or a Dask cluster.

    Parameters
    ----------
    inputs : files and/or folders (see :func:`collect_frames`)
    profile : processing profile (default: built-in defaults)
    jobs : local worker processes (default: CPU count); ignored with ``scheduler``/``client``
    scheduler : ``tcp://HOST:PORT`` of a running Dask scheduler; ``client`` an existing Client
    out_dir : workspace receiving the run folders, the ledger and the report folder
    catalog_files, offline, hdu : passed to :func:`rpp_core.pipeline.run`
    force : redo frames the ledger says are done
    on_start : called once with the number of frames found
    on_tick : called about twice a second while frames run (to redraw a progress bar)
    on_result : called in the parent as ``on_result(result, n_finished, n_total)``
    stop : set it (e.g. from a signal handler) to stop: running frames are abandoned and
        left unrecorded, so the next run redoes them

    Returns
    -------
    BatchReport; never raises for a frame's failure, only for usage errors
    (no frames, unreachable scheduler).
    """
    t0 = time.monotonic()
    profile = profile or Profile()
    frames = collect_frames(inputs, recursive=recursive)
    if not frames:
        raise UsageError(f"no FITS frames found in {', '.join(map(str, inputs))} "
                         f"(looked for {', '.join(FITS_SUFFIXES[:3])}, .fz, .gz)")
    out = Path(out_dir).expanduser().resolve() if out_dir else locations.workspace_dir().resolve()
    out.mkdir(parents=True, exist_ok=True)
    catalog_files = [str(Path(c).expanduser().resolve()) for c in catalog_files]
    phash = profile_hash(profile, catalog_files, hdu, offline)
    ledger = Ledger(out)
    stop = stop or threading.Event()
    total = len(frames)
    results: list[FrameResult | None] = [None] * total
    keys: list[FrameKey | None] = [None] * total
    finished = 0

    if on_start:
        on_start(total)

    def deliver(i: int, res: FrameResult) -> None:
        nonlocal finished
        results[i] = res
        finished += 1
        if on_result:
            on_result(res, finished, total)

    todo: list[int] = []
    for i, path in enumerate(frames):
        try:
            keys[i] = FrameKey.of(path, phash)
        except OSError as exc:
            deliver(i, FrameResult(str(path), "failed", f"cannot read {path}: {exc.strerror or exc}", 3))
            continue
        entry = None if force else ledger.get(keys[i])
        if entry and entry.get("status") in ("ok", "degraded"):
            res = FrameResult.from_dict(entry)
            res.status = "skipped"
            deliver(i, res)
        else:
            todo.append(i)

    fields = group_fields([frames[i] for i in todo]) if field_order and todo else [""] * len(todo)
    field_of = dict(zip(todo, fields))
    ready: collections.deque[int] = collections.deque()
    held: dict[str, list[int]] = collections.defaultdict(list)
    pilots: set[str] = set()
    for i in todo:
        f = field_of[i]
        if f and f in pilots:
            held[f].append(i)
        else:
            if f:
                pilots.add(f)
            ready.append(i)

    own_client = None
    env = None
    if client is None and scheduler:
        client = own_client = connect_dask(scheduler)
    if client is not None:
        executor = client.get_executor(pure=False)
        nthreads = sum(client.nthreads().values()) or 1
        max_inflight = 2 * nthreads  # keep every worker thread fed without flooding the scheduler
    else:
        jobs = max(1, int(jobs or os.cpu_count() or 1))
        executor = _local_executor(jobs)
        max_inflight = jobs
        env = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}

    inflight: dict[cf.Future, tuple[int, int]] = {}
    attempts: dict[int, int] = collections.Counter()
    interrupted = False

    def submit(i: int) -> None:
        attempts[i] += 1
        fut = executor.submit(process_frame, str(frames[i]), profile, str(out), tuple(catalog_files), offline, hdu, env)
        inflight[fut] = (i, attempts[i])

    def finish(i: int, res: FrameResult) -> None:
        res.field = field_of.get(i, "")
        if keys[i] is not None:
            with contextlib.suppress(OSError):
                ledger.put(keys[i], res.to_dict())
        f = field_of.get(i, "")
        if f and held.get(f):
            ready.extendleft(reversed(held.pop(f)))  # the field's catalogue is in the cache now
        deliver(i, res)

    try:
        while (ready or inflight) and not stop.is_set():
            while ready and len(inflight) < max_inflight:
                submit(ready.popleft())
            done, _ = cf.wait(list(inflight), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            if on_tick:
                on_tick()
            broken = False
            for fut in done:
                i, _attempt = inflight.pop(fut)
                try:
                    res = FrameResult.from_dict(fut.result())
                except BrokenProcessPool:
                    broken = True
                    if attempts[i] >= MAX_ATTEMPTS:
                        finish(i, FrameResult(str(frames[i]), "failed", "the worker process died while processing "
                                              f"this frame ({attempts[i]} times): out of memory or a crash in a library", 1))
                    else:
                        ready.appendleft(i)
                    continue
                except Exception as exc:  # Dask KilledWorker, cancelled task...
                    res = FrameResult(str(frames[i]), "failed", f"worker failure: {type(exc).__name__}: {exc}", 1)
                finish(i, res)
            if broken:
                for fut, (i, _a) in list(inflight.items()):
                    inflight.pop(fut)
                    ready.appendleft(i)
                executor.shutdown(wait=False, cancel_futures=True)
                executor = _local_executor(max_inflight)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if stop.is_set():
            interrupted = True
        if client is not None:
            for fut in inflight:
                fut.cancel()
            executor.shutdown(wait=False)
            if own_client is not None:
                with contextlib.suppress(Exception):
                    own_client.close()
        elif interrupted:
            _terminate_local(executor)
        else:
            executor.shutdown(wait=True)

    final = [r for r in results if r is not None]
    wall = time.monotonic() - t0
    report_dir, files = None, {}
    if report and final:
        report_dir = make_report_dir(out)
        title = (f"rpp batch: {len(frames)} frame(s), profile {profile.name!r} ({phash}), "
                 f"{'Dask ' + str(scheduler or 'client') if client is not None else f'{max_inflight} local worker(s)'}"
                 + (", INTERRUPTED" if interrupted else ""))
        with open(report_dir / "run.log", "w") as log:
            log.write(title + "\n")
            for n, r in enumerate(final, 1):
                log.write(r.line(n, len(final)) + (f"  -> {r.run_dir}" if r.run_dir else "") + "\n")
        files = write_night_report(final, report_dir, wall, title)
        files["log"] = report_dir / "run.log"
    return BatchReport(final, report_dir, files, wall, interrupted)


# ---------------------------------------------------------------- CLI

def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options shared with ``rpp run``: --profile, --out, --catalog, --offline, --hdu, --set, --quiet."""
    p.add_argument("--profile", "-p", help="profile name (in the config dir) or path to a TOML file")
    p.add_argument("--out", "-o", metavar="DIR", help="workspace: parent folder of run folders (default: $RPP_WORKSPACE)")
    p.add_argument("--catalog", "-c", action="append", metavar="FILE", help="local reference catalogue (repeatable)")
    p.add_argument("--offline", action="store_true", help="use only cached answers and local catalogue files")
    p.add_argument("--hdu", type=int, help="HDU index of the image (default: first image HDU)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a profile setting (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures and the final summary")


def profile_from_args(args) -> Profile:
    profile = load_profile(getattr(args, "profile", None))
    changes = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: use section.name=value, e.g. --set detection.threshold_sigma=4")
        changes[key.strip()] = value.strip()
    return profile.replace(**changes) if changes else profile


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch", help="process many frames (local process pool or a Dask cluster) with a night summary",
        description="Process every frame named or found in the folders. One bad frame never stops the batch. "
                    "Frames already done with the same profile are skipped (see --force). A night summary "
                    "(CSV, text, zero point and FWHM over time) goes to <workspace>/batch_<timestamp>/.",
        epilog="exit code: 0 when every frame is ok (or was done before), else the exit code of the first "
               "frame that failed or degraded, 130 when interrupted")
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    add_common_options(p)
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="worker processes (default: number of CPUs)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask distributed scheduler instead")
    p.add_argument("--force", action="store_true", help="redo frames already done with this profile")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not look into sub-folders")
    p.set_defaults(func=cmd_batch)
    return p


def cmd_batch(args) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more worker processes")
    profile = profile_from_args(args)
    bar = ProgressBar(0)
    stop = threading.Event()

    def on_start(total: int) -> None:
        nonlocal bar
        bar.close()
        bar = ProgressBar(total, enabled=not args.quiet)
        bar.draw()

    def on_result(res: FrameResult, n: int, total: int) -> None:
        if res.status == "failed":
            bar.print(res.line(n, total), stream=sys.stderr if args.quiet else sys.stdout)
        elif not args.quiet:
            bar.print(res.line(n, total))
        bar.advance(res.status == "failed")

    def on_signal(signum, frame) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_batch(args.inputs, profile, jobs=args.jobs, scheduler=args.scheduler, out_dir=args.out,
                           catalog_files=args.catalog or [], offline=True if args.offline else None, hdu=args.hdu,
                           force=args.force, recursive=args.recursive, on_result=on_result, on_start=on_start,
                           on_tick=lambda: bar.draw(), stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    if report.interrupted:
        print("rpp batch: interrupted; frames not finished will be processed by the next run", file=sys.stderr)
    if report.report_dir:
        stats = _stats_lines(report.results, report.wall_s)
        if not args.quiet:
            print("\n".join(stats))
        print(f"night summary: {report.files.get('night_summary.txt', report.report_dir)}")
    return report.exit_code
