"""Cost and science of the cosmic-ray stage on the benchmark frame A (issue 10, item 6).

    python bench/cosmics.py [--stars 6000] [--size 4096] [--repeat 3] [--scope sources|frame]

Builds ``rpp_core.synthetic.make_frame`` as ``bench/parts.py`` does for frame A (seed 7,
FWHM 3.5 px, size^2 / 20000 cosmic rays), runs the stages before the cosmic rays (masks,
background, FWHM, detection; cached in ``bench/out/cosmics_<size>_<stars>.npz``) and
times :func:`rpp_core.preprocess.clean_cosmic_rays` with ``time.process_time`` (CPU of
this process, all threads: the machine's 2 cores are shared, wall time is noise). Prints
the recall of the injected hits inside the measured discs, the flagged pixels away from
any injected hit (false alarms), and the star centres flagged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).resolve().parent / "out"


def inputs(size: int, stars: int, fresh: bool = False) -> dict:
    """Frame A's pixels, injected truth and what the pipeline hands the cosmic-ray stage."""
    path = OUT / f"cosmics_{size}_{stars}.npz"
    if path.exists() and not fresh:
        return dict(np.load(path))
    from rpp_core import detect, preprocess
    from rpp_core.settings import BackgroundSettings, DetectionSettings, MaskSettings
    from rpp_core.synthetic import make_frame

    fr = make_frame(shape=(size, size), n_stars=stars, fwhm=3.5, beta=3.0, seed=7, n_cosmics=size * size // 20000,
                    n_saturated=5, mag_range=(12.0, 20.0), exptime=60.0, gain=1.5, read_noise=5.0, sky=300.0)
    p = fr.params
    m = preprocess.make_masks(fr.data, p["saturation"], MaskSettings())
    bkg = preprocess.estimate_background(fr.data, m.combined, BackgroundSettings())
    sub = fr.data - bkg.background
    det = DetectionSettings()
    fw = detect.measure_fwhm(sub, bkg.rms, m.combined, None, det)
    src = detect.find_stars(sub, bkg.rms, m.combined, fw.fwhm_px, det, m.saturated)
    out = dict(data=fr.data, nan=m.nan, saturated=m.saturated, combined=m.combined, background=bkg.background,
               rms=bkg.rms, x=np.asarray(src["x"]), y=np.asarray(src["y"]), cr_truth=p["cosmic_mask"],
               tx=np.asarray(fr.truth["x"]), ty=np.asarray(fr.truth["y"]), tsat=np.asarray(fr.truth["saturated"]),
               fwhm=fw.fwhm_px, peak_share=fw.peak_share, gain=p["gain"], saturation=p["saturation"])
    OUT.mkdir(exist_ok=True)
    np.savez(path, **out)
    return out


def run_stage(inp: dict, scope: str = "sources", radius: float | None = None):
    """One call of the pipeline's cosmic-ray stage; returns (cleaned image, crmask, CPU s)."""
    from rpp_core import preprocess
    from rpp_core.products import ExposureValues
    from rpp_core.settings import CosmicRaySettings, MaskSettings

    masks = preprocess.Masks(nan=inp["nan"], saturated=inp["saturated"], combined=inp["combined"],
                             border_px=MaskSettings().border_px, saturation_level=float(inp["saturation"]))
    bkg = preprocess.Background(background=inp["background"], rms=inp["rms"], global_bkg=0.0, global_rms=1.0)
    exposure = ExposureValues(gain=float(inp["gain"]), read_noise=5.0, exptime=60.0,
                              saturation=float(inp["saturation"]), exptime_magnitudes=60.0)
    image = preprocess.measurable_image(inp["data"], masks, bkg, exposure)
    plan = preprocess.cosmic_ray_plan(float(inp["fwhm"]), float(inp["peak_share"]))
    radius = 3.0 * float(inp["fwhm"]) if radius is None else radius
    t0 = time.process_time()
    img, crmask = preprocess.clean_cosmic_rays(inp["data"], image, bkg, masks, CosmicRaySettings(scope=scope),
                                               inp["x"], inp["y"], radius, star_share=plan.star_share)
    return img, crmask, time.process_time() - t0


def score(inp: dict, crmask: np.ndarray, radius: float) -> dict:
    """Recall of the injected hits inside the measured discs, false alarms, star centres flagged."""
    from scipy import ndimage as ndi

    truth = inp["cr_truth"]
    ny, nx = truth.shape
    near = np.zeros(truth.shape, bool)
    r = int(np.ceil(radius))
    off = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    disc = dy**2 + dx**2 <= radius**2
    yc, xc = np.round(inp["y"]).astype(int), np.round(inp["x"]).astype(int)
    for oy, ox in zip(dy[disc], dx[disc]):
        near[np.clip(yc + oy, 0, ny - 1), np.clip(xc + ox, 0, nx - 1)] = True
    inj = truth & near & ~inp["saturated"]
    grown = ndi.binary_dilation(truth, iterations=2)
    ok = ~inp["tsat"]
    ix, iy = np.round(inp["tx"][ok]).astype(int), np.round(inp["ty"][ok]).astype(int)
    core = np.zeros(ix.size, bool)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            core |= crmask[iy + oy, ix + ox] & ~grown[iy + oy, ix + ox]
    return dict(injected_in_discs=int(inj.sum()), recall=float((crmask & inj).sum() / max(inj.sum(), 1)),
                flagged=int(crmask.sum()), false_px=int((crmask & ~grown).sum()), star_cores_flagged=int(core.sum()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--stars", type=int, default=6000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scope", default="sources")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--save", help="write the crmask of the last run to this .npy")
    args = ap.parse_args(argv)
    inp = inputs(args.size, args.stars, args.fresh)
    radius = 3.0 * float(inp["fwhm"])
    times = []
    for _ in range(args.repeat):
        _, crmask, cpu = run_stage(inp, args.scope, radius)
        times.append(cpu)
    print(f"{args.size}^2, {len(inp['x'])} detections, scope {args.scope}: stage CPU "
          + " ".join(f"{t:.2f}" for t in times) + f" s (min {min(times):.2f})")
    print(score(inp, crmask, radius))
    if args.save:
        np.save(args.save, crmask)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
