"""The night report: summary table (CSV, text), zero point and FWHM against time as text figures."""

from __future__ import annotations

import collections
import datetime as dt
import io
import math
import os
from pathlib import Path

from .. import fsio
from .worker import FrameResult


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
    from ..plots import render_figure

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


def stats_lines(results: list[FrameResult], wall_s: float | None) -> list[str]:
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
        files[name] = fsio.write_text(report_dir / name, text)

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
    atomic("night_summary.txt", "\n".join(head + [buf.getvalue().rstrip(), ""] + stats_lines(results, wall_s)) + "\n")

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
