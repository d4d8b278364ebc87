"""CPU time and accuracy of the PSF stage alone, on the inputs a real run hands it.

Usage::

    python bench/psf_stage.py capture demo OUT.pkl              # the bundled sample, as `rpp demo` runs it
    python bench/psf_stage.py capture bench/out/frame.fits OUT.pkl  # frame A of `python bench/bench.py`, as the bench runs it
    python bench/psf_stage.py time OUT.pkl [--repeat 5] [--truth bench/out/truth.ecsv]

``capture`` runs the pipeline in this process and pickles the arguments of
``photometry.psf_photometry`` (background-subtracted frame, RMS, mask, the
aperture table, FWHM, settings...). ``time`` calls the stage on them several
times and prints its CPU time (``time.process_time``: the cores are shared, so
wall time says little), the ePSF build and fit wall times, and with ``--truth``
the median and MAD scatter of psf_flux / truth for bright isolated unsaturated
stars, computed as ``bench/bench.py`` does (``Truth.evaluate``, PSF row).
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))


def cmd_capture(args) -> None:
    import rpp_core.photometry as photometry
    import rpp_core.pipeline as pipeline
    from rpp_core import locations
    from rpp_core.settings import Profile, load_profile

    async def inline(fn, *a, **k):
        return fn(*a, **k)

    pipeline.asyncio.to_thread = inline  # type: ignore[attr-defined]
    real = photometry.psf_photometry
    captured = {}

    def capture(*a, **k):
        captured.update(args=a, kwargs={key: v for key, v in k.items() if key in ("apertures", "moffat_beta")})
        c0 = time.process_time()
        out = real(*a, **k)
        captured["cpu_in_run"] = time.process_time() - c0
        return out

    photometry.psf_photometry = capture
    if args.frame == "demo":
        frame = locations.package_data("sample_frame.fits.gz")
        catalogs = [locations.package_data("sample_refcat.ecsv")]
        profile = load_profile(str(locations.package_data("sample_profile.toml"))).replace(**{"services.offline": True})
    else:
        frame = Path(args.frame)
        catalogs = [frame.with_name("refcat.ecsv")] if frame.with_name("refcat.ecsv").exists() else []
        # as bench/parts.py part_rpp
        profile = Profile(name="bench").replace(**{
            "services.offline": True, "services.enabled": [], "astrometry.solve": "never",
            "cosmic_rays.enabled": True, "photometry.psf": True, "calibration.mag_max": 19.0,
            "output.zip": False, "output.formats": ["ecsv"]})
    out_dir = Path(args.out).parent / "psf_stage_runs"
    asyncio.run(pipeline.run(frame, profile, out_dir=out_dir, catalog_files=catalogs))
    with open(args.out, "wb") as fh:
        pickle.dump(captured, fh)
    print(f"captured the PSF stage's inputs into {args.out}; the stage took {captured['cpu_in_run']:.3f} s CPU "
          "in the run (first call in the process: lazy imports included)")


def cmd_time(args) -> None:
    from rpp_core import photometry

    with open(args.pickle, "rb") as fh:
        cap = pickle.load(fh)
    truth = None
    if args.truth:
        from bench import Truth
        from parts import FWHM_A
        from rpp_core.synthetic import moffat_enclosed

        truth = Truth(Path(args.truth), FWHM_A, lambda r: float(moffat_enclosed(r, FWHM_A, 3.0)), 80)
    cpu, wall = [], []
    for _ in range(args.repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        tab, info = photometry.psf_photometry(*cap["args"], **cap["kwargs"])
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        print(f"  CPU {cpu[-1]:.3f} s, wall {wall[-1]:.3f} s (ePSF build {info.build_s:.3f} s, fits {info.fit_s:.3f} s)",
              flush=True)
    print(f"{Path(args.pickle).name}: PSF stage CPU min {min(cpu):.3f} s, median {np.median(cpu):.3f} s over "
          f"{args.repeat} runs; status {info.status!r}, {info.n_stars} ePSF stars, {info.n_fitted} fitted, "
          f"apcorr {info.apcorr:.4f} +- {info.apcorr_err:.4f}")
    if truth is not None:
        e = truth.evaluate(tab["x"], tab["y"], tab["psf_flux"], None)
        print(f"  PSF flux/truth: {e['median_ratio']:.4f} +- {e['scatter']:.4f} over {e['n']} bright isolated stars")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("capture")
    p.add_argument("frame", help="'demo' or a FITS frame")
    p.add_argument("out")
    p.set_defaults(func=cmd_capture)
    p = sub.add_parser("time")
    p.add_argument("pickle")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--truth")
    p.set_defaults(func=cmd_time)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
