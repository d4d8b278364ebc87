"""Scaling mode of the benchmark: time and peak memory per stage vs frame size and star count.

``python bench/bench.py --scaling`` runs rpp on ``rpp_core.synthetic`` frames:

- sizes 1k, 2k, 4k, 8k square at a constant density (6,000 stars per 4096^2,
  so 375 / 1,500 / 6,000 / 24,000 stars): the cost per megapixel;
- star counts 1k-50k on a 4096^2 frame: the cost per 1,000 stars.

Each frame is made once (cached under ``<out>/scaling``) in its own process;
each rpp run is another fresh process calling ``rpp_core.pipeline.run``
in-process, recording the stage timings rpp writes into summary.json and its
RSS high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) at the end of every
stage, so the table shows which stage raises the peak. Peak memory is given in
MB and as a multiple of the frame's float32 size, both whole-process and above
the interpreter with rpp and its libraries imported (the "base" RSS).

``--scaling-config full`` (default): cosmic rays and PSF on, calibrated against
the frame's reference catalogue, every output and the ZIP; ``lite``: cosmic rays,
PSF, astrometry and services off (SExtractor's job). The exponent column is the
least-squares slope of log(time) vs log(size); 1.0 is linear.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

DENSITY = 6000 / 4096**2  # stars per pixel in the size sweep
SIZES = (1024, 2048, 4096, 8192)
STAR_COUNTS = (1000, 3000, 6000, 12000, 25000, 50000)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def frame_path(out: Path, size: int, stars: int) -> Path:
    return out / "scaling" / f"frame_{size}_{stars}.fits"


def part_scale_make(args) -> dict:
    """Make (or reuse) the frame and reference catalogue of one scaling point."""
    from rpp_core.synthetic import make_frame

    path = frame_path(Path(args.out), args.size, args.stars)
    ref = path.with_suffix(".refcat.ecsv")
    if path.exists() and ref.exists() and not args.fresh:
        return {"made": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fr = make_frame(shape=(args.size, args.size), n_stars=args.stars, fwhm=3.5, beta=3.0, seed=11,
                    n_cosmics=args.size * args.size // 20000, n_saturated=5, mag_range=(12.0, 20.0),
                    exptime=60.0, gain=1.5, read_noise=5.0, sky=300.0)
    fr.write(path)
    fr.write_refcat(ref)
    return {"made": True, "make_s": time.perf_counter() - t0}


def part_scale_run(args) -> dict:
    """One rpp run in this (fresh) process: stage timings and the RSS high-water mark after each stage."""
    t_imp = time.perf_counter()
    import astroscrappy  # noqa: F401  (imported up front so the base RSS holds every library a run loads)
    import photutils.detection  # noqa: F401
    import photutils.psf  # noqa: F401

    from rpp_core import calibrate, detect, events as ev, image, photometry, pipeline, plots, preprocess, results, rundir  # noqa: F401
    from rpp_core.settings import Profile

    import_s = time.perf_counter() - t_imp
    base = _maxrss_mb()
    path = frame_path(Path(args.out), args.size, args.stars)
    changes = {"services.offline": True, "services.enabled": [], "astrometry.solve": "never",
               "calibration.mag_max": 19.0}
    catalogs = [path.with_suffix(".refcat.ecsv")]
    if args.scaling_config == "lite":
        changes.update({"cosmic_rays.enabled": False, "photometry.psf": False})
        catalogs = []
    profile = Profile(name="scaling").replace(**changes)
    hwm: dict[str, float] = {}
    cpu: dict[str, float] = {}
    started: dict[str, float] = {}

    def on_event(e):  # CPU time of the whole process (all threads) between a stage's start and end
        if isinstance(e, ev.StageStarted):
            started[e.stage] = _cpu_s()
        elif isinstance(e, ev.StageFinished):
            hwm[e.stage] = _maxrss_mb()
            cpu[e.stage] = _cpu_s() - started.get(e.stage, _cpu_s())

    t0, c0 = time.perf_counter(), _cpu_s()
    res = asyncio.run(pipeline.run(path, profile, on_event, out_dir=Path(args.out) / "scaling" / "runs", catalog_files=catalogs))
    wall = time.perf_counter() - t0
    timings = dict(res.summary.timings)
    if "zip" in res.files:
        timings["zip"] = max(wall - float(res.summary.total_seconds), 0.0)
        hwm["zip"] = _maxrss_mb()
        cpu["zip"] = _cpu_s() - c0 - sum(cpu.values())
    rundir.remove_run(res.run_dir)
    return {"size": args.size, "stars": args.stars, "timings": timings, "hwm_mb": hwm, "base_mb": base,
            "cpu_s": cpu, "total_cpu_s": _cpu_s() - c0, "peak_mb": _maxrss_mb(), "total_s": wall, "import_s": import_s, "n_sources": res.summary.n_sources,
            "fwhm_n_stars": res.summary.fwhm_n_stars}


def _slope(n, t) -> float:
    n, t = np.asarray(n, float), np.asarray(t, float)
    ok = t > 0.02  # below ~20 ms a stage is noise
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0])


def _table(rows: list[dict]) -> None:
    stages = _stage_order(rows)
    print(f"{'size':>6}{'stars':>7}{'found':>7} " + "".join(f"{s[:9]:>10}" for s in stages)
          + f"{'total':>9}{'peak MB':>9}{'xframe':>8}{'+xframe':>8}")
    for r in rows:
        frame_mb = r["size"] ** 2 * 4 / 2**20
        print(f"{r['size']:>6}{r['stars']:>7}{r['n_sources'] or 0:>7} "
              + "".join(f"{r['timings'].get(s, float('nan')):>10.2f}" for s in stages)
              + f"{r['total_s']:>9.2f}{r['peak_mb']:>9.0f}{r['peak_mb'] / frame_mb:>8.1f}{(r['peak_mb'] - r['base_mb']) / frame_mb:>8.1f}")
    if all("cpu_s" in r for r in rows):
        print("CPU s per stage (all threads; less sensitive than wall time to other load on the machine):")
        for r in rows:
            print(f"{r['size']:>6}{r['stars']:>7}{'':>7} " + "".join(f"{r['cpu_s'].get(s, float('nan')):>10.2f}" for s in stages)
                  + f"{r['total_cpu_s']:>9.2f}")
    print("RSS high-water mark (MB) at the end of each stage (base = after imports):")
    for r in rows:
        print(f"{r['size']:>6}{r['stars']:>7}{r['base_mb']:>7.0f} " + "".join(f"{r['hwm_mb'].get(s, float('nan')):>10.0f}" for s in stages))


def _series(rows, stage, cpu=False):
    if cpu:
        return [r["total_cpu_s"] if stage == "total" else r["cpu_s"].get(stage, 0.0) for r in rows]
    return [r["total_s"] if stage == "total" else r["timings"].get(stage, 0.0) for r in rows]


def _per_pixel(rows: list[dict]) -> None:
    n = [r["size"] ** 2 / 1e6 for r in rows]
    has_cpu = all("cpu_s" in r for r in rows)
    print("time per Mpx (s), first -> last size, and the exponent of time vs pixels (1.0 = linear)"
          + ("; the same for CPU time" if has_cpu else "") + ":")
    for s in [*_stage_order(rows), "total"]:
        t = _series(rows, s)
        e = _slope(n, t)
        line = f"  {s:<11} wall {t[0] / n[0]:8.4f} -> {t[-1] / n[-1]:8.4f}  exponent {e:5.2f}"
        if has_cpu:
            c = _series(rows, s, cpu=True)
            ec = _slope(n, c)
            line += f"   CPU {c[0] / n[0]:8.4f} -> {c[-1] / n[-1]:8.4f}  exponent {ec:5.2f}"
            e = min(e, ec) if ec == ec else e
        print(line + ("  <- grows faster than linear" if e == e and e > 1.15 else ""))


def _per_star(rows: list[dict]) -> None:
    if len(rows) < 2:
        return
    n = np.array([r["stars"] / 1e3 for r in rows])
    has_cpu = all("cpu_s" in r for r in rows)
    print("cost per 1k stars (s): straight-line fit t = fixed + slope x (stars/1000), and the slope over the\n"
          "first two and last two points (a last slope well above the fitted one = superlinear)"
          + (", wall then CPU:" if has_cpu else ":"))
    for s in [*_stage_order(rows), "total"]:
        parts = []
        flags = []
        for cpu in ((False, True) if has_cpu else (False,)):
            t = np.array(_series(rows, s, cpu))
            slope, fixed = np.polyfit(n, t, 1)
            first = (t[1] - t[0]) / (n[1] - n[0])
            last = (t[-1] - t[-2]) / (n[-1] - n[-2])
            flags.append(last > 1.5 * max(slope, 0.002) and last > 0.01)  # the first points are mostly fixed cost and noise
            parts.append(f"fixed {fixed:6.2f} slope {slope:7.4f} (first {first:7.4f}, last {last:7.4f})")
        print(f"  {s:<11} " + "   |   ".join(parts) + ("  <- superlinear" if all(flags) else ""))


def _stage_order(rows):  # stages in the order they ran, over all rows
    seen = []
    for r in rows:
        for s in r["timings"]:
            if s not in seen:
                seen.append(s)
    return seen


def main(args, env) -> int:
    from bench import run_proc

    out = Path(args.out)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    counts = [int(s) for s in args.star_counts.split(",")] if args.star_counts else list(STAR_COUNTS)
    points = [(s, int(round(DENSITY * s * s))) for s in sizes] + [(4096, n) for n in counts]
    saved = out / f"scaling_results_{args.scaling_config}.json"
    results: dict[tuple, dict] = {}
    if args.reprint:
        results = {(r["size"], r["stars"]): r for r in json.loads(saved.read_text())}
    for size, stars in dict.fromkeys(points):
        if (size, stars) in results:
            continue
        base = [sys.executable, str(Path(__file__).parent / "bench.py"), "--size", str(size), "--stars", str(stars),
                "--out", str(out), "--scaling-config", args.scaling_config] + (["--fresh"] if args.fresh else [])
        print(f"... {size}^2, {stars} stars: frame", file=sys.stderr, flush=True)
        p = run_proc([*base, "--part", "scale_make"], env)
        if p["rc"]:
            print(p["stderr"][-3000:], file=sys.stderr)
            return 1
        print(f"... {size}^2, {stars} stars: rpp ({args.scaling_config})", file=sys.stderr, flush=True)
        p = run_proc([*base, "--part", "scale_run"], env)
        if p["rc"]:
            print(p["stderr"][-3000:], file=sys.stderr)
            return 1
        r = json.loads(p["stdout"].strip().splitlines()[-1])
        r["process_wall_s"] = p["wall_s"]
        results[(size, stars)] = r
        saved.write_text(json.dumps(list(results.values()), indent=1, default=float))
    print(f"\nScaling ({args.scaling_config}: "
          + ("cosmic rays + PSF on, calibrated, all outputs + ZIP" if args.scaling_config == "full" else "cosmic rays, PSF, astrometry, services off")
          + f"), {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}. Times in s per stage; peak = RSS"
          " high-water mark of the run's process; xframe = peak / float32 frame size; +xframe = (peak - base RSS after"
          " imports) / frame size.")
    size_rows = [results[(s, int(round(DENSITY * s * s)))] for s in sizes]
    print(f"\nFrame size at constant density ({DENSITY * 1e6:.0f} stars per Mpx):")
    _table(size_rows)
    _per_pixel(size_rows)
    star_rows = [results[(4096, n)] for n in counts]
    print("\nStar count on a 4096^2 frame:")
    _table(star_rows)
    _per_star(star_rows)
    print(f"\nresults in {saved} (--reprint prints them again without running)")
    return 0
