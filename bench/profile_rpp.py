"""Where rpp's time goes: the measurements behind docs/performance-profile.md.

Usage (frames from ``python bench/bench.py``, in ``bench/out``)::

    python bench/profile_rpp.py imports                  # -X importtime of `rpp --help` and `rpp run`
    python bench/profile_rpp.py cprofile FRAME [--full]  # profile of one run (pyinstrument or cProfile), stages in the main thread
    python bench/profile_rpp.py fwhm FRAME [--guess PX]  # measure_fwhm: fits, detection passes, fallback
    python bench/profile_rpp.py detect FRAME             # DAOStarFinder (find_stars) vs sep_x.extract
    python bench/profile_rpp.py outputs RUN_DIR          # writers, plots, ZIP of a 20k-row catalogue vs alternatives

``cprofile`` runs ``pipeline.run`` with ``asyncio.to_thread`` replaced by a
direct call, so the stage functions (normally in worker threads, invisible
to cProfile) are profiled; it prints, for each stage function, its callees by
cumulative time, two levels deep, and saves the .prof file next to the frame.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import cProfile
import os
import pstats
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

LITE = {"cosmic_rays.enabled": False, "photometry.psf": False, "astrometry.solve": "never",
        "services.enabled": [], "services.offline": True}


# --------------------------------------------------------------------------- imports

def _importtime(cmd: list[str], env) -> list[tuple[int, int, int, str]]:
    p = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, env=env)
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    return rows


def _import_report(title: str, rows) -> None:
    total = sum(r[0] for r in rows) / 1e6
    print(f"\n{title}: {total:.2f} s of imports ({len(rows)} modules)")
    by_pkg = defaultdict(int)
    for self_us, _, _, name in rows:
        by_pkg[name.split(".")[0]] += self_us
    print("  self time by top-level package: " + ", ".join(
        f"{k} {v / 1e6:.2f}" for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:12]))
    # which rpp modules pull what in: the cumulative time of each depth-0 import and its heaviest children
    print("  top-level imports (cumulative s) and their heaviest direct imports:")
    children: list = []
    for self_us, cum, depth, name in rows:  # importtime lists children before their parent
        if depth == 0:
            kids = sorted([c for c in children if c[2] == 1], key=lambda c: -c[1])[:5]
            if cum > 20000:
                print(f"    {name:<28} {cum / 1e6:5.2f}   <- " + ", ".join(f"{c[3]} {c[1] / 1e6:.2f}" for c in kids))
            children = []
        else:
            children.append((self_us, cum, depth, name))


def cmd_imports(args) -> None:
    env = dict(os.environ)
    _import_report("rpp --help", _importtime(["-c", "import sys; from rpp_cli.main import main; sys.exit(main(['--help']))"], env))
    if args.frame:
        out = Path(args.frame).parent / "runs"
        code = ("import sys; from rpp_cli.main import main; sys.exit(main(['run', sys.argv[1], '--out', sys.argv[2], '-q', "
                "'--offline', '--set', 'cosmic_rays.enabled=false', '--set', 'photometry.psf=false', '--set', "
                "'astrometry.solve=never', '--set', 'services.enabled=']))")
        _import_report(f"rpp run {Path(args.frame).name} (SExtractor's job)", _importtime(["-c", code, args.frame, str(out)], env))


# --------------------------------------------------------------------------- cProfile

STAGE_FUNCS = ["load_frame", "read_metadata", "make_masks", "estimate_background", "measure_fwhm", "find_stars",
               "remove_cosmics_near", "remove_cosmics", "aperture_photometry", "psf_photometry", "_calibrate",
               "_write_outputs", "make_zip", "write_summary"]


def _callees(stats: pstats.Stats):
    tree = defaultdict(list)
    for func, (_, _, _, _, callers) in stats.stats.items():
        for caller, edge in callers.items():
            tree[caller].append((edge[3], func))  # cumulative time spent in func when called from caller
    return tree


def _name(func) -> str:
    path, line, name = func
    short = path.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return f"{name} ({short}:{line})"


def _print_tree(tree, func, depth: int, max_depth: int, min_s: float, indent: str = "    ") -> None:
    for ct, child in sorted(tree.get(func, []), key=lambda e: -e[0])[:8]:
        if ct < min_s:
            break
        print(f"{indent}{ct:7.3f}  {_name(child)}")
        if depth < max_depth:
            _print_tree(tree, child, depth + 1, max_depth, min_s, indent + "    ")


def cmd_cprofile(args) -> None:
    import rpp_core.pipeline as pipeline
    from rpp_core.settings import Profile

    async def inline(fn, *a, **k):  # run stages in the main thread, where cProfile sees them
        return fn(*a, **k)

    pipeline.asyncio.to_thread = inline  # type: ignore[attr-defined]
    changes = dict(LITE)
    catalogs = []
    if args.full:
        changes.update({"cosmic_rays.enabled": True, "photometry.psf": True, "calibration.mag_max": 19.0})
        ref = Path(args.frame).with_name("refcat.ecsv")
        catalogs = [ref] if ref.exists() and Path(args.frame).name == "frame.fits" else []
    profile = Profile(name="profile").replace(**changes)
    if args.sampler == "pyinstrument":
        from pyinstrument import Profiler

        sampler = Profiler(interval=0.002)
        t0 = time.perf_counter()
        with sampler:
            res = asyncio.run(pipeline.run(args.frame, profile, out_dir=Path(args.frame).parent / "runs", catalog_files=catalogs))
        wall = time.perf_counter() - t0
        print(f"{args.frame} ({'CR + PSF on' if args.full else 'CR/PSF/astrometry/services off'}): {wall:.2f} s under pyinstrument; "
              "stages: " + ", ".join(f"{k} {v:.2f}" for k, v in res.summary.timings.items()))
        print(sampler.output_text(unicode=False, color=False, show_all=args.show_all, short_mode=False))
        return
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = asyncio.run(pipeline.run(args.frame, profile, out_dir=Path(args.frame).parent / "runs", catalog_files=catalogs))
    prof.disable()
    wall = time.perf_counter() - t0
    path = Path(args.frame).with_suffix(f".{'full' if args.full else 'lite'}.prof")
    prof.dump_stats(path)
    stats = pstats.Stats(prof)
    print(f"{args.frame} ({'CR + PSF on' if args.full else 'CR/PSF/astrometry/services off'}): {wall:.2f} s under cProfile "
          f"(overhead included); stages: " + ", ".join(f"{k} {v:.2f}" for k, v in res.summary.timings.items()))
    tree = _callees(stats)
    for func in stats.stats:
        if func[2] in STAGE_FUNCS and "rpp_core" in func[0]:
            ct = stats.stats[func][3]
            if ct < 0.05:
                continue
            print(f"\n  {ct:7.3f}  {_name(func)}")
            _print_tree(tree, func, 1, args.depth, args.min_s)
    print(f"\nprofile saved to {path} (python -m pstats {path})")


# --------------------------------------------------------------------------- FWHM

def _load(frame):
    from rpp_core import image, preprocess
    from rpp_core.settings import BackgroundSettings, DetectionSettings, MaskSettings

    det = DetectionSettings()
    fr = image.load_frame(Path(frame), None)
    masks = preprocess.make_masks(fr.data, float(fr.header.get("SATURATE", 0)) or None, MaskSettings())
    bkg = preprocess.estimate_background(fr.data, masks.combined, BackgroundSettings())
    sub = (fr.data - bkg.background).astype(np.float32)
    return fr, masks, bkg, sub, det


def cmd_fwhm(args) -> None:
    from rpp_core import detect

    fr, masks, bkg, sub, det = _load(args.frame)
    counts = defaultdict(float)
    orig_fit, orig_sep = detect._moffat_batch, detect._sep_sources

    def fit(stamps, *a, **k):
        t0 = time.perf_counter()
        r = orig_fit(stamps, *a, **k)
        kind = "gauss" if k.get("beta_fixed") else "moffat"
        counts[f"{kind}_batches"] += 1
        counts[f"{kind}_stars"] += len(stamps)
        counts[f"{kind}_s"] += time.perf_counter() - t0
        counts[f"box_{stamps.shape[1]}"] += 1
        return r

    def sep(data, *a, **k):
        t0 = time.perf_counter()
        r = orig_sep(data, *a, **k)
        counts["sep_calls"] += 1
        counts["sep_s"] += time.perf_counter() - t0
        counts[f"sep_{data.shape[0]}x{data.shape[1]}"] += 1
        return r

    detect._moffat_batch, detect._sep_sources = fit, sep
    mask = masks.combined
    if args.hide_centre:  # force the whole-frame pass: no usable star in the central window
        mask = mask.copy()
        ny, nx = mask.shape
        h = detect._FWHM_WINDOW // 2
        mask[ny // 2 - h:ny // 2 + h, nx // 2 - h:nx // 2 + h] = True
    guesses = [float(g) for g in args.guess.split(",")] if args.guess else [2.5 / (0.8 if "frame_b" in args.frame else 1.0)]
    for g in guesses:
        counts.clear()
        t0 = time.perf_counter()
        try:
            res = detect.measure_fwhm(sub, bkg.rms, mask, g, det)
            what = res.summary()
        except Exception as exc:  # a failed measurement is a result here
            what = f"failed: {exc}"
        dt = time.perf_counter() - t0
        print(f"guess {g:.2f} px: {dt:.2f} s, {what}")
        print("   " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(counts.items())))
        if counts["moffat_stars"]:
            print(f"   {1e3 * counts['moffat_s'] / counts['moffat_stars']:.2f} ms per star in the batched Moffat fit")


# --------------------------------------------------------------------------- detection

def cmd_detect(args) -> None:
    import sep_x

    from rpp_core import detect

    fr, masks, bkg, sub, det = _load(args.frame)
    fwhm = args.fwhm
    detect._dao(detect._finite(sub[:256, :256]), bkg.rms[:256, :256], None, fwhm, 5.0)  # photutils imported outside the timing
    found = {}
    t0 = time.perf_counter()
    tab = detect.find_stars(sub, bkg.rms, masks.combined, fwhm, det, masks.saturated)
    print(f"find_stars (sep_x, rpp's default: filter, deblending, windowed centroids, saturated blobs, flags): "
          f"{time.perf_counter() - t0:.2f} s, {len(tab)} sources")
    found["find_stars"] = (tab["x"], tab["y"])
    t0 = time.perf_counter()
    dao_tab = detect.find_stars(sub, bkg.rms, masks.combined, fwhm, dataclasses.replace(det, finder="daofind"),
                                masks.saturated)
    print(f"find_stars, detection.finder = daofind: {time.perf_counter() - t0:.2f} s, {len(dao_tab)} sources")
    found["find_stars daofind"] = (dao_tab["x"], dao_tab["y"])
    t0 = time.perf_counter()
    raw = detect._dao(detect._finite(sub), bkg.rms, masks.combined, fwhm, det.threshold_sigma)
    print(f"  of which the DAOStarFinder call: {time.perf_counter() - t0:.2f} s ({0 if raw is None else len(raw)})")
    data = np.ascontiguousarray(sub, dtype=np.float32)
    sep_x.set_extract_pixstack(max(300000, data.size // 20))
    r = int(np.ceil(fwhm))  # 7x7 for FWHM 3 (SExtractor's gauss_3.0_7x7.conv)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kern = np.exp(-0.5 * (xx**2 + yy**2) / (fwhm / 2.3548) ** 2).astype(np.float32)
    g = float(bkg.global_rms)
    variants = (
        ("sep_x default 3x3, matched, global rms", dict(err=g)),
        ("sep_x default 3x3, matched, rms map + mask", dict(err=bkg.rms, mask=masks.combined)),
        ("sep_x default 3x3, conv (SExtractor's way), global rms", dict(err=g, filter_type="conv")),
        ("sep_x default 3x3, conv, rms map + mask", dict(err=bkg.rms, mask=masks.combined, filter_type="conv")),
        (f"sep_x Gaussian {2 * r + 1}x{2 * r + 1}, matched, global rms", dict(err=g, filter_kernel=kern)),
        (f"sep_x Gaussian {2 * r + 1}x{2 * r + 1}, matched, rms map + mask", dict(err=bkg.rms, mask=masks.combined, filter_kernel=kern)),
        (f"sep_x Gaussian {2 * r + 1}x{2 * r + 1}, conv, global rms", dict(err=g, filter_kernel=kern, filter_type="conv")),
    )
    for label, kw in variants:
        t0 = time.perf_counter()
        obj = sep_x.extract(data, det.threshold_sigma, minarea=5, **kw)
        print(f"{label}: {time.perf_counter() - t0:.2f} s, {len(obj)} sources")
        found[label] = (obj["x"], obj["y"])
    truth = Path(args.frame).with_name("truth_b.ecsv" if "frame_b" in args.frame else "truth.ecsv")
    if truth.exists():
        from astropy.table import Table
        from scipy.spatial import cKDTree

        t = Table.read(truth)
        tree = cKDTree(np.c_[t["x"], t["y"]])
        f = np.asarray(t["flux"])
        quart = np.percentile(f, [25, 50, 75])
        print("completeness by injected-flux quartile (faint -> bright), and detections > 1.5 px from any injected star:")
        for label, (x, y) in found.items():
            d, i = tree.query(np.c_[x, y])
            hit = np.unique(i[d < 1.0])
            comp = [float(np.mean(np.isin(np.flatnonzero((f >= lo) & (f < hi)), hit)))
                    for lo, hi in zip([0, *quart], [*quart, np.inf])]
            print(f"  {label:<58} " + " ".join(f"{c:.3f}" for c in comp) + f"   {int(np.sum(d >= 1.5))}")


# --------------------------------------------------------------------------- outputs

def cmd_outputs(args) -> None:
    import io
    import zipfile

    from astropy.table import Table

    from rpp_core import plots, results

    src = Table.read(Path(args.run_dir) / "catalog.ecsv")
    rng = np.random.default_rng(3)
    cat = src[rng.integers(0, len(src), args.rows)]
    ser = results._serializable_table(cat)
    flat = ser.copy(copy_data=False)
    flat.meta = {}
    tmp = Path(args.run_dir).parent / "profile_outputs"
    tmp.mkdir(exist_ok=True)

    def timed(label, fn):
        t0 = time.perf_counter()
        fn()
        print(f"  {label:<58} {time.perf_counter() - t0:7.2f} s")

    print(f"{len(cat)} rows x {len(cat.colnames)} columns")
    timed("astropy ascii.csv (what rpp does)", lambda: ser.write(tmp / "a.csv", format="ascii.csv", overwrite=True))
    timed("astropy ascii.csv fast_writer=False", lambda: ser.write(tmp / "a2.csv", format="ascii.csv", overwrite=True, fast_writer=False))
    timed("astropy ascii.ecsv (what rpp does)", lambda: ser.write(tmp / "a.ecsv", format="ascii.ecsv", overwrite=True))
    timed("astropy votable TABLEDATA (what rpp does)", lambda: flat.write(tmp / "a.vot", format="votable", overwrite=True))
    timed("astropy votable BINARY2 (tabledata_format='binary2')",
          lambda: flat.write(tmp / "b.vot", format="votable", overwrite=True, tabledata_format="binary2"))
    timed("astropy fits (what rpp does)", lambda: flat.write(tmp / "a.fits", format="fits", overwrite=True))
    df = None

    def to_pandas():
        nonlocal df
        df = ser.to_pandas()
    timed("Table.to_pandas", to_pandas)
    timed("pandas.DataFrame.to_csv (float_format None)", lambda: df.to_csv(tmp / "p.csv", index=False))
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        at = None

        def to_arrow():
            nonlocal at
            at = pa.table({c: np.asarray(ser[c]) for c in ser.colnames})
        timed("pyarrow.table from the columns", to_arrow)
        timed("pyarrow.csv.write_csv", lambda: pacsv.write_csv(at, tmp / "pa.csv"))
        timed("pyarrow.parquet.write_table", lambda: pq.write_table(at, tmp / "pa.parquet"))
        timed("pandas.DataFrame.to_parquet", lambda: df.to_parquet(tmp / "p.parquet"))
    except ImportError:
        print("  pyarrow not installed: Parquet and Arrow CSV not timed")
    from astropy.io.votable import from_table

    vt = None

    def conv():
        nonlocal vt
        vt = from_table(flat)
    timed("votable: from_table (conversion only)", conv)
    timed("votable: VOTableFile.to_xml TABLEDATA", lambda: vt.to_xml(str(tmp / "c.vot")))
    names = {}
    orig = plots.render

    def counting(name, *a, **k):
        names[name] = names.get(name, 0) + 1
        t0 = time.perf_counter()
        r = orig(name, *a, **k)
        names[name + "_s"] = names.get(name + "_s", 0) + time.perf_counter() - t0
        return r

    plots.render = counting
    meta = {"calibration_label": "ap2", "zp": 25.0, "zp_err": 0.01, "n_calibrators": 100, "band": "G", "zp_rms": 0.02}
    timed("results.write_plots", lambda: results.write_plots(cat, meta, tmp))
    print("    " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} x{v}" for k, v in names.items()))
    timed("results.write_regions", lambda: results.write_regions(cat, tmp / "r.reg", 6.0))
    files = [tmp / n for n in ("a.csv", "a.ecsv", "a.vot", "a.fits")]
    for label, kw in (("zip deflate level 6 (zipfile default, what rpp does)", {}),
                      ("zip deflate compresslevel=1", {"compresslevel": 1}),
                      ("zip stored (no compression)", {"compression": zipfile.ZIP_STORED})):
        buf = io.BytesIO()

        def z():
            with zipfile.ZipFile(buf, "w", compression=kw.get("compression", zipfile.ZIP_DEFLATED),
                                 compresslevel=kw.get("compresslevel")) as zf:
                for f in files:
                    zf.write(f, f.name)
        timed(label, z)
        print(f"    {buf.tell() / 1e6:.1f} MB from {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("imports")
    s.add_argument("frame", nargs="?")
    s = sub.add_parser("cprofile")
    s.add_argument("frame")
    s.add_argument("--full", action="store_true", help="cosmic rays and PSF on (calibrated when the frame has refcat.ecsv)")
    s.add_argument("--depth", type=int, default=2)
    s.add_argument("--show-all", action="store_true", help="pyinstrument: show library frames too")
    s.add_argument("--sampler", choices=["pyinstrument", "cprofile"], default="pyinstrument",
                   help="pyinstrument (statistical, low overhead: pip install pyinstrument) or cProfile (exact calls, slow)")
    s.add_argument("--min-s", type=float, default=0.05)
    s = sub.add_parser("fwhm")
    s.add_argument("frame")
    s.add_argument("--guess", help="comma-separated first guesses (px)")
    s.add_argument("--hide-centre", action="store_true", help="mask the central window to force the whole-frame fallback")
    s = sub.add_parser("detect")
    s.add_argument("frame")
    s.add_argument("--fwhm", type=float, default=3.0)
    s = sub.add_parser("outputs")
    s.add_argument("run_dir")
    s.add_argument("--rows", type=int, default=20000)
    args = p.parse_args()
    {"imports": cmd_imports, "cprofile": cmd_cprofile, "fwhm": cmd_fwhm, "detect": cmd_detect, "outputs": cmd_outputs}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
