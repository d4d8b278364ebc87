"""Benchmark: rpp against the straightforward photutils way, in the same run.

Makes a synthetic 4096 x 4096 frame with about 6,000 stars (Moffat PSF, sky,
Poisson + read noise, cosmic rays), then runs, each in its own subprocess so
that peak memory is measured separately:

- ``rpp``: the real pipeline (``rpp_core.pipeline.run``) with cosmic rays and
  PSF photometry on, calibrated against the frame's reference catalogue;
- ``baseline``: astroscrappy with its defaults, ``Background2D`` (box 64,
  SExtractorBackground), ``DAOStarFinder`` (5 sigma), ``aperture_photometry``
  at the same four radii with a sigma-clipped annulus (``ApertureStats``),
  an ``EPSFBuilder`` ePSF and ``PSFPhotometry`` on every star.

It prints per-stage and total wall time, peak RSS, flux accuracy against the
injected truth for both, and the ratios. Usage::

    python bench/bench.py [--size 4096] [--stars 6000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make(args) -> dict:
    from rpp_core.synthetic import make_frame

    t0 = time.perf_counter()
    fr = make_frame(shape=(args.size, args.size), n_stars=args.stars, fwhm=3.5, beta=3.0, seed=7,
                    n_cosmics=args.size * args.size // 20000, n_saturated=5, mag_range=(12.0, 20.0),
                    exptime=60.0, gain=1.5, read_noise=5.0, sky=300.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fr.write(out / "frame.fits")
    fr.write_refcat(out / "refcat.ecsv")
    fr.truth.write(out / "truth.ecsv", overwrite=True)
    return {"make_s": time.perf_counter() - t0}


def _truth_eval(out: Path, x, y, flux, key_fwhm_factor: float | None, fwhm=3.5, beta=3.0) -> dict:
    """Median flux ratio and robust scatter vs truth for bright isolated unsaturated stars."""
    from astropy.table import Table
    from scipy.spatial import cKDTree

    from rpp_core.synthetic import moffat_enclosed

    truth = Table.read(out / "truth.ecsv")
    tx, ty, tf = np.asarray(truth["x"]), np.asarray(truth["y"]), np.asarray(truth["flux"])
    tree = cKDTree(np.c_[tx, ty])
    # isolated: no other injected star within 4 FWHM
    n_near = np.array([len(v) for v in tree.query_ball_point(np.c_[tx, ty], 4 * fwhm)])
    d, i = tree.query(np.c_[x, y])
    ok = (d < 1.0) & np.isfinite(flux)
    ti = i[ok]
    good = (n_near[ti] == 1) & ~np.asarray(truth["saturated"])[ti]
    expect = tf[ti] * (moffat_enclosed(key_fwhm_factor * fwhm, fwhm, beta) if key_fwhm_factor else 1.0)
    ratio = np.asarray(flux)[ok] / expect
    bright = good & (tf[ti] > np.percentile(tf, 80))
    r = ratio[bright]
    med = float(np.median(r))
    return {"n": int(bright.sum()), "median_ratio": med, "scatter": float(1.4826 * np.median(np.abs(r - med))),
            "n_detected": int(len(x)), "completeness_bright": float(np.mean(np.isin(np.flatnonzero(tf > np.percentile(tf, 50)), ti)))}


def part_rpp(args) -> dict:
    from astropy.table import Table

    from rpp_core import pipeline
    from rpp_core.settings import Profile

    out = Path(args.out)
    profile = Profile(name="bench").replace(**{
        "services.offline": True, "services.enabled": [], "astrometry.solve": "never",
        "cosmic_rays.enabled": True, "photometry.psf": True, "calibration.mag_max": 19.0,
        "output.zip": False, "output.formats": ["csv", "ecsv"],
    })
    t0 = time.perf_counter()
    res = asyncio.run(pipeline.run(out / "frame.fits", profile, out_dir=out / "runs", catalog_files=[out / "refcat.ecsv"]))
    total = time.perf_counter() - t0
    cat = Table.read(res.run_dir / "catalog.ecsv")
    return {
        "timings": dict(res.summary.timings), "total_s": total,
        "aperture_2fwhm": _truth_eval(out, cat["x"], cat["y"], cat["flux_ap2"], 2.0),
        "psf": _truth_eval(out, cat["x"], cat["y"], cat["psf_flux"], None) if "psf_flux" in cat.colnames else None,
        "zp": res.summary.zp, "fwhm_px": res.summary.fwhm_px, "n_sources": res.summary.n_sources,
    }


def part_baseline(args) -> dict:
    import astroscrappy
    from astropy.io import fits
    from astropy.nddata import NDData
    from astropy.stats import SigmaClip, sigma_clipped_stats
    from astropy.table import Table
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
    from photutils.background import Background2D, SExtractorBackground
    from photutils.detection import DAOStarFinder
    from photutils.psf import EPSFBuilder, PSFPhotometry, extract_stars

    out = Path(args.out)
    fwhm = 3.5  # the baseline is given the true FWHM: no measurement cost charged to it
    t = {}
    t0 = time.perf_counter()
    hdr = fits.getheader(out / "frame.fits")
    data = fits.getdata(out / "frame.fits").astype(np.float32)
    t["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    crmask, data = astroscrappy.detect_cosmics(data, gain=hdr["GAIN"], readnoise=hdr["RDNOISE"], satlevel=hdr["SATURATE"])
    t["cosmics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bkg = Background2D(data, 64, filter_size=3, bkg_estimator=SExtractorBackground(), sigma_clip=SigmaClip(3.0))
    sub = data - bkg.background
    t["background"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finder = DAOStarFinder(threshold=5.0 * bkg.background_rms_median, fwhm=fwhm)
    src = finder(sub, mask=crmask)
    t["detect"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pos = np.c_[src["x_centroid"], src["y_centroid"]] if "x_centroid" in src.colnames else np.c_[src["xcentroid"], src["ycentroid"]]
    aps = [CircularAperture(pos, r=f * fwhm) for f in (1.5, 2.0, 2.5, 3.0)]
    ann = CircularAnnulus(pos, r_in=4 * fwhm, r_out=6 * fwhm)
    err = np.sqrt(bkg.background_rms**2 + np.clip(sub, 0, None) / hdr["GAIN"])
    phot = aperture_photometry(sub, aps, error=err, mask=crmask)
    stats = ApertureStats(sub, ann, sigma_clip=SigmaClip(3.0), mask=crmask)
    flux2 = np.asarray(phot["aperture_sum_1"]) - stats.median * aps[1].area
    t["aperture"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    order = np.argsort(-np.asarray(src["flux"]))
    ny, nx = sub.shape
    sel = [i for i in order if 20 < pos[i, 0] < nx - 21 and 20 < pos[i, 1] < ny - 21][:100]
    stars_tbl = Table({"x": pos[sel, 0], "y": pos[sel, 1]})
    stars = extract_stars(NDData(sub), stars_tbl, size=25)
    epsf, _ = EPSFBuilder(oversampling=2, maxiters=3, progress_bar=False)(stars)
    t["epsf"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    init = Table({"x": pos[:, 0], "y": pos[:, 1], "flux": np.asarray(src["flux"])})
    psfphot = PSFPhotometry(epsf, fit_shape=(11, 11), aperture_radius=2 * fwhm)
    psf_res = psfphot(sub, error=err, mask=crmask, init_params=init)
    t["psf"] = time.perf_counter() - t0
    total = sum(t.values())
    fcol = "flux_fit" if "flux_fit" in psf_res.colnames else "flux"
    xcol = "x_fit" if "x_fit" in psf_res.colnames else "x"
    ycol = "y_fit" if "y_fit" in psf_res.colnames else "y"
    return {
        "timings": t, "total_s": total,
        "aperture_2fwhm": _truth_eval(out, pos[:, 0], pos[:, 1], flux2, 2.0),
        "psf": _truth_eval(out, np.asarray(psf_res[xcol]), np.asarray(psf_res[ycol]), np.asarray(psf_res[fcol]), None),
        "n_sources": len(src),
    }


def _child(part: str, args) -> dict:
    fn = {"make": make, "rpp": part_rpp, "baseline": part_baseline}[part]
    res = fn(args)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--stars", type=int, default=6000)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--part", choices=["make", "rpp", "baseline"])
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    if args.part:
        print(json.dumps(_child(args.part, args), default=float))
        return 0
    env = dict(os.environ, RPP_WORKSPACE=str(Path(args.out) / "runs"), RPP_CACHE_DIR=str(Path(args.out) / "cache"))
    res = {}
    for part in ["make", "rpp"] + ([] if args.skip_baseline else ["baseline"]):
        print(f"... {part}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--part", part, "--size", str(args.size), "--stars", str(args.stars), "--out", args.out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        res[part] = json.loads(proc.stdout.strip().splitlines()[-1])
    report(res, args)
    return 0


def report(res: dict, args) -> None:
    r, b = res["rpp"], res.get("baseline")
    print(f"\nBenchmark: {args.size}x{args.size} frame, {args.stars} injected stars (nproc={os.cpu_count()})\n")
    print("rpp per stage (s):")
    for k, v in r["timings"].items():
        print(f"  {k:<12} {v:8.2f}")
    if b:
        print("baseline per stage (s):")
        for k, v in b["timings"].items():
            print(f"  {k:<12} {v:8.2f}")
    print(f"\n{'':<28}{'rpp':>12}{'baseline':>12}{'ratio':>10}")
    def row(name, rv, bv, fmt="{:.2f}", ratio=True):
        rs = fmt.format(rv) if rv is not None else "n/a"
        bs = fmt.format(bv) if bv is not None else "n/a"
        rt = f"{bv / rv:.1f}x" if ratio and rv and bv else ""
        print(f"{name:<28}{rs:>12}{bs:>12}{rt:>10}")
    row("total wall time (s)", r["total_s"], b and b["total_s"])
    row("peak memory (MB)", r["peak_rss_mb"], b and b["peak_rss_mb"])
    for key, label in (("aperture_2fwhm", "aperture 2xFWHM"), ("psf", "PSF")):
        rr, bb = r.get(key) or {}, (b or {}).get(key) or {}
        row(f"{label} flux/truth median", rr.get("median_ratio"), bb.get("median_ratio"), "{:.4f}", False)
        row(f"{label} flux/truth scatter", rr.get("scatter"), bb.get("scatter"), "{:.4f}", False)
    row("sources detected", r.get("n_sources"), b and b.get("n_sources"), "{:.0f}", False)
    if b:
        print(f"\nspeed-up end to end: {b['total_s'] / r['total_s']:.1f}x (target >= 5x)")


if __name__ == "__main__":
    sys.exit(main())
