"""The measured pieces of the benchmark, each run in its own process by bench.py.

Every ``part_*`` function runs inside a fresh ``python bench/bench.py --part NAME``
child, so its peak RSS is its own; it returns a JSON-able dict (times in s).
Catalogues the parent evaluates against truth are written into ``out`` as
``.npz`` files with ``x``, ``y`` (0-based px) and ``flux<k>`` per aperture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

import frames

FACTORS = (1.5, 2.0, 2.5, 3.0)  # aperture radii, x FWHM: rpp's defaults
ANNULUS = (4.0, 6.0)  # local background annulus, x FWHM: rpp's defaults
FWHM_A = 3.5  # rpp_core.synthetic frame (frame A)
SEED_A = 7


# --------------------------------------------------------------------------- frames

def part_make(args) -> dict:
    """Frame A (rpp_core.synthetic, seed 7) and frame B (bench/frames.py, photutils renderer, seed 20261201)."""
    from rpp_core.synthetic import make_frame

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    key_a = {"size": args.size, "stars": args.stars, "seed": SEED_A, "gen": "rpp_core.synthetic.make_frame v1"}
    if _cached(out / "frame.params.json", key_a, [out / "frame.fits", out / "refcat.ecsv", out / "truth.ecsv"]) and not args.fresh:
        res["frame_a_s"] = 0.0
    else:
        t0 = time.perf_counter()
        fr = make_frame(shape=(args.size, args.size), n_stars=args.stars, fwhm=FWHM_A, beta=3.0, seed=SEED_A,
                        n_cosmics=args.size * args.size // 20000, n_saturated=5, mag_range=(12.0, 20.0),
                        exptime=60.0, gain=1.5, read_noise=5.0, sky=300.0)
        fr.write(out / "frame.fits")
        fr.write_refcat(out / "refcat.ecsv")
        fr.truth.write(out / "truth.ecsv", overwrite=True)
        (out / "frame.params.json").write_text(json.dumps(key_a))
        res["frame_a_s"] = time.perf_counter() - t0
    key_b = {"size": args.size, "stars": args.stars, "seed": frames.SEED, "gen": "bench/frames.py v1"}
    if _cached(out / "frame_b.params.json", key_b, [out / "frame_b.fits", out / "truth_b.ecsv"]) and not args.fresh:
        res["frame_b_s"] = 0.0
    else:
        t0 = time.perf_counter()
        frames.make_frame_b(out, args.size, args.stars)
        (out / "frame_b.params.json").write_text(json.dumps(key_b))
        res["frame_b_s"] = time.perf_counter() - t0
    res["enclosed_b"] = {str(f): frames.enclosed(f * frames.FWHM) for f in FACTORS}
    return res


def _cached(params: Path, key: dict, files: list[Path]) -> bool:
    try:
        return json.loads(params.read_text()) == key and all(f.exists() for f in files)
    except (OSError, ValueError):
        return False


def _save_cat(path: Path, x, y, fluxes, radii) -> None:
    np.savez(path, x=np.asarray(x, float), y=np.asarray(y, float), radii=np.asarray(radii, float),
             **{f"flux{k}": np.asarray(f, float) for k, f in enumerate(fluxes)})


# --------------------------------------------------------------------------- rpp, photutils baseline (frame A)

def part_rpp(args) -> dict:
    """rpp in-process with cosmic rays and PSF on, calibrated against the frame's reference catalogue."""
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
    radii = list(cat.meta["apertures"].values())
    _save_cat(out / "cat_rpp_full.npz", cat["x"], cat["y"], [cat[f"flux_{k}"] for k in cat.meta["apertures"]], radii)
    np.savez(out / "cat_rpp_full_psf.npz", x=np.asarray(cat["x"]), y=np.asarray(cat["y"]),
             flux=np.asarray(cat["psf_flux"]) if "psf_flux" in cat.colnames else np.full(len(cat), np.nan))
    return {"timings": dict(res.summary.timings), "total_s": total, "run_dir": str(res.run_dir),
            "zp": res.summary.zp, "fwhm_px": res.summary.fwhm_px, "n_sources": res.summary.n_sources}


def part_baseline(args) -> dict:
    """The straightforward photutils way (see bench.py's docstring), given the true FWHM."""
    import astroscrappy
    from astropy.io import fits
    from astropy.nddata import NDData
    from astropy.stats import SigmaClip
    from astropy.table import Table
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry
    from photutils.background import Background2D, SExtractorBackground
    from photutils.detection import DAOStarFinder
    from photutils.psf import EPSFBuilder, PSFPhotometry, extract_stars

    out = Path(args.out)
    fwhm = FWHM_A  # the baseline is given the true FWHM: no measurement cost charged to it
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
    aps = [CircularAperture(pos, r=f * fwhm) for f in FACTORS]
    ann = CircularAnnulus(pos, r_in=ANNULUS[0] * fwhm, r_out=ANNULUS[1] * fwhm)
    err = np.sqrt(bkg.background_rms**2 + np.clip(sub, 0, None) / hdr["GAIN"])
    phot = aperture_photometry(sub, aps, error=err, mask=crmask)
    stats = ApertureStats(sub, ann, sigma_clip=SigmaClip(3.0), mask=crmask)
    fluxes = [np.asarray(phot[f"aperture_sum_{k}"]) - stats.median * aps[k].area for k in range(len(aps))]
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
    fcol = "flux_fit" if "flux_fit" in psf_res.colnames else "flux"
    xcol = "x_fit" if "x_fit" in psf_res.colnames else "x"
    ycol = "y_fit" if "y_fit" in psf_res.colnames else "y"
    _save_cat(out / "cat_baseline.npz", pos[:, 0], pos[:, 1], fluxes, [f * fwhm for f in FACTORS])
    np.savez(out / "cat_baseline_psf.npz", x=np.asarray(psf_res[xcol]), y=np.asarray(psf_res[ycol]), flux=np.asarray(psf_res[fcol]))
    return {"timings": t, "total_s": sum(t.values()), "n_sources": len(src)}


# --------------------------------------------------------------------------- SExtractor's job, in-process floors

def part_sep(args) -> dict:
    """What SExtractor does, with sep_x calls in one process: the floor rpp can reach.

    ``sep_x.Background`` (64 px meshes, 3x3 filter, subtracted in place),
    ``extract`` at 5 sigma of the global RMS with SExtractor's default 3x3
    filter (``default.conv`` is sep's default kernel) applied SExtractor's way
    (``filter_type="conv"``: threshold on the filtered image in units of the
    unfiltered RMS; it found 3,311 sources on frame B where source-extractor
    found 3,311, sep's default "matched" 4,842) and minarea 5, the four
    aperture sums in one broadcast ``sum_circle`` call, and one sigma-clipped
    local level per source from the 4-6 x FWHM annulus (``bkgann`` on one
    radius: the level is then subtracted at every radius, rather than paying
    sep_x's clipped annulus four times, 1.8 s a call for 5,000 sources).
    Radii from the true FWHM, as given to SExtractor, so the fluxes compare one
    to one. Also times a Gaussian kernel of the true FWHM (2 ceil(FWHM) + 1 px
    wide, what SExtractor's ``gauss_*.conv`` files are) with sep's "matched"
    filter type, and writes the global-background
    fluxes (no local annulus) for comparison.
    """
    import sep_x
    from astropy.io import fits

    out = Path(args.out)
    frame = out / args.frame
    fwhm = float(args.fwhm)
    t = {}
    t0 = time.perf_counter()
    data = np.ascontiguousarray(fits.getdata(frame), dtype=np.float32)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    bkg = sep_x.Background(data, bw=64, bh=64, fw=3, fh=3)
    bkg.subfrom(data)
    t["background"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sep_x.set_extract_pixstack(max(300000, data.size // 20))
    obj = sep_x.extract(data, 5.0, err=bkg.globalrms, minarea=5, filter_type="conv")
    t["detect"] = time.perf_counter() - t0
    x, y = obj["x"], obj["y"]
    radii = np.array([f * fwhm for f in FACTORS])
    t0 = time.perf_counter()
    raw, _, _ = sep_x.sum_circle(data, x[None, :], y[None, :], radii[:, None], subpix=5)
    t["aperture_sums"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_ref = radii[1]
    with_ann, _, _ = sep_x.sum_circle(data, x, y, r_ref, bkgann=(ANNULUS[0] * fwhm, ANNULUS[1] * fwhm), subpix=5)
    level = (raw[1] - with_ann) / (np.pi * r_ref**2)
    fluxes = [raw[k] - level * np.pi * radii[k] ** 2 for k in range(len(radii))]
    t["annulus"] = time.perf_counter() - t0
    work = sum(t.values())
    r = int(np.ceil(fwhm))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kern = np.exp(-0.5 * (xx**2 + yy**2) / (fwhm / 2.3548) ** 2).astype(np.float32)
    t0 = time.perf_counter()
    obj_m = sep_x.extract(data, 5.0, err=bkg.globalrms, minarea=5, filter_kernel=kern)  # sep's "matched" filter type
    t_matched = time.perf_counter() - t0
    _save_cat(out / f"cat_sep_{args.tag}.npz", x, y, fluxes, radii)
    _save_cat(out / f"cat_sepglobal_{args.tag}.npz", x, y, list(raw), radii)
    return {"timings": t, "total_s": work, "n_sources": int(len(obj)),
            "detect_matched_s": t_matched, "n_sources_matched": int(len(obj_m))}


def part_stdpipe(args) -> dict:
    """stdpipe: ``get_objects_sep`` (detection, FWHM, one aperture + annulus) then ``measure_objects`` at 4 radii.

    The first ``measure_objects`` call estimates the global background
    (``get_bg=True``) and the other three reuse it, as a stdpipe user would.
    """
    from astropy.io import fits

    out = Path(args.out)
    frame = out / args.frame
    t = {}
    t0 = time.perf_counter()
    from stdpipe import photometry

    t["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hdr = fits.getheader(frame)
    data = fits.getdata(frame).astype(np.float64)
    gain = float(hdr.get("GAIN", 1.0))
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    obj = photometry.get_objects_sep(data, header=hdr, thresh=5.0, aper=2.0, bkgann=ANNULUS, fwhm=True,
                                     gain=gain, edge=10, sn=1.0, verbose=False)
    t["get_objects_sep"] = time.perf_counter() - t0
    fwhm = float(obj.meta.get("fwhm_phot") or 3.0)
    fluxes = []
    bg = err = None
    t0 = time.perf_counter()
    for f in FACTORS:
        if bg is None:
            m, bg, err = photometry.measure_objects(obj, data, aper=f, bkgann=ANNULUS, fwhm=fwhm, gain=gain,
                                                    get_bg=True, verbose=False)
        else:
            m = photometry.measure_objects(obj, data, aper=f, bkgann=ANNULUS, fwhm=fwhm, bg=bg, err=err, verbose=False)
        fluxes.append(np.asarray(m["flux"], float))
    t["measure_objects_x4"] = time.perf_counter() - t0
    _save_cat(out / f"cat_stdpipe_{args.tag}.npz", obj["x"], obj["y"], fluxes, [f * fwhm for f in FACTORS])
    return {"timings": t, "total_s": sum(t.values()), "n_sources": len(obj), "fwhm_px": fwhm}


# --------------------------------------------------------------------------- outputs of a 20,000-row catalogue

def _frame_of_run(run_dir: Path):
    """The frame (data, WCS) a run folder was made from, for the finder chart; (None, None) if it is gone."""
    import json

    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        frame = json.loads((run_dir / "summary.json").read_text())["frame"]
        with fits.open(frame) as hdul:
            hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
            return np.asarray(hdu.data, np.float32), WCS(hdu.header)
    except (OSError, KeyError, ValueError, StopIteration):
        return None, None


def _cpu_of(pid: int) -> float:
    """User + system CPU (s) of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_drawers_warm(pid: int, timeout: float = 30.0) -> float:
    """Wait until the first figure process has imported matplotlib and warmed up (it then forks the others);
    its CPU (s) so far."""
    if not pid:  # drawing in this process (no fork): nothing to wait for
        return 0.0
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists() and children.read_text().split():
            return _cpu_of(pid)
        time.sleep(0.005)
    raise RuntimeError(f"figure process {pid} not ready after {timeout:.0f} s")


def part_outputs(args) -> dict:
    """Every catalogue format, the plots, the regions and the ZIP of a 20,000-row catalogue.

    The rows are drawn (with replacement, positions jittered) from the
    catalogue of the rpp run on frame A, so the columns are exactly those a
    calibrated run writes; rpp_core.results functions are called directly.
    The figure processes are forked and warm (matplotlib imported) before the clock
    starts, as a run forks them at Load; their warm-up is reported apart
    (``drawers_warm_up``) and left out of ``cpu_s``.
    """
    from astropy.table import Table

    from rpp_core import results, rundir

    out = Path(args.out)
    src = Table.read(Path(args.run_dir) / "catalog.ecsv")
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(src), args.rows)
    cat = src[idx]
    cat["id"] = np.arange(1, len(cat) + 1)
    cat["x"] = np.asarray(cat["x"]) + rng.normal(0, 0.3, len(cat))
    cat["y"] = np.asarray(cat["y"]) + rng.normal(0, 0.3, len(cat))
    label = cat.meta.get("calibration_aperture") or "ap2"
    from rpp_core.products import RunSummary, SourceCatalogue

    # as a run calls it: write_outputs (text plots, regions, PNG figures and sky.html beside the catalogue
    # formats), each part timed through the module functions it calls
    summary = RunSummary(frame="outputs20k.fits", calibration_label=label, zp=cat.meta.get("zp"),
                         zp_err=cat.meta.get("zp_err"), band=cat.meta.get("band", ""), zp_rms=0.02, fwhm_px=3.0,
                         n_calibrators=int(np.sum(np.asarray(cat["calib_used"]))) if "calib_used" in cat.colnames else 0)
    # a run's worker forks from a process that imported these (rpp_core.runner.PRELOAD): not part of Outputs
    import importlib

    from rpp_core.runner import PRELOAD

    t_imports = time.perf_counter()
    for module in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    t_imports = time.perf_counter() - t_imports
    run_dir = results.make_run_dir(out / "runs", "outputs20k.fits")
    staging = rundir.staging_dir(run_dir)  # as a run does: made in staging, zipped, published
    t = {}
    import resource

    def children_cpu():  # the PNG figures are drawn in forked children (results.FigureDrawers)
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0, child0 = time.process_time(), children_cpu()
    formats = list(results.CATALOG_FORMATS)
    from rpp_core import catalog_files

    def timed(module, name, key=None):
        real = getattr(module, name)

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                k = key(*a) if key else name
                t[k] = t.get(k, 0.0) + time.perf_counter() - t0
        setattr(module, name, wrapper)
        return real

    saved = [(catalog_files, "write", timed(catalog_files, "write", key=lambda table, path, fmt: f"format_{fmt}"))]
    saved += [(results, n, timed(results, n)) for n in ("write_plots", "write_regions", "write_catalog", "write_views", "write_sky")
               if hasattr(results, n)]
    data, wcs = _frame_of_run(Path(args.run_dir))
    # as in a run: the figure processes are forked when the frame is loaded and import matplotlib while the
    # stages run (2.5-3 s on frame A), so that import is not part of Outputs; it is measured apart here
    t0 = time.perf_counter()
    drawers = results.FigureDrawers(data)
    warm_cpu = _wait_drawers_warm(drawers.pid)
    warm = {"wall_s": time.perf_counter() - t0, "cpu_s": warm_cpu}
    cpu0 = time.process_time()  # reading the frame is not part of Outputs
    t0 = time.perf_counter()
    results.write_outputs(SourceCatalogue(cat), summary, staging, formats, data=data, wcs=wcs, drawers=drawers)
    t["write_outputs"] = time.perf_counter() - t0
    for module, name, real in saved:
        setattr(module, name, real)
    t0 = time.perf_counter()
    results.make_zip(run_dir)
    t["zip"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results.publish(run_dir, {})
    t["publish"] = time.perf_counter() - t0
    total = t["write_outputs"] + t["zip"] + t["publish"]
    sizes = {p.name: p.stat().st_size for p in run_dir.iterdir() if p.is_file()}
    cpu = time.process_time() - cpu0 + children_cpu() - child0 - warm["cpu_s"]
    return {"timings": t, "total_s": total, "preloaded_imports_s": t_imports, "cpu_s": cpu, "drawers_warm_up": warm,
            "rows": len(cat),
            "columns": len(cat.colnames), "formats": formats, "bytes": sizes}


PARTS = {"make": part_make, "rpp": part_rpp, "baseline": part_baseline, "sep": part_sep, "stdpipe": part_stdpipe,
         "outputs": part_outputs}
