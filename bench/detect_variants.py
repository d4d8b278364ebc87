"""Detection variants of the sep finder: speed against accuracy (issue 10).

The default detection pass (``rpp_core.detect._find_sep``) is one ``sep_x.extract``
with a Gaussian filter of the stellar FWHM on ``2 round(0.85 FWHM) + 1`` px capped at
9 x 9 (7 x 7 for FWHM 3-4 px) and sep's 32-level deblending, then ``sep_x.winpos``.
This script runs variants of it, patched into ``rpp_core.detect`` (no setting or
default of rpp changes):

- ``kN``: the filter's support capped at N x N (the same Gaussian of the FWHM,
  cropped; the threshold still scaled by ``_peak_response`` of the cropped kernel);
- ``nM``: ``deblend_nthresh`` = M (sep's DEBLEND_NTHRESH; rpp passes the default 32);
- and combinations (``k5n16``). ``base`` is rpp as it is (cap 9 x 9, 32 levels).

Measured per variant:

1. frames A and B of ``bench/bench.py`` (``bench/out``; made by ``bench.py --part make``
   if missing): ``rpp run``'s SExtractor's job in-process (cosmic rays, PSF, astrometry
   and services off), its catalogue against the injected truth: completeness (an
   injected star with a detection within 1 px) by true S/N bin, purity (detections at
   rpp's own S/N > 20 in the 2 x FWHM aperture with an injected star within 1 px),
   centroid error (median and 90th percentile of the distance to the truth, true
   S/N > 20), and bench.py's "flux / truth at 2 x FWHM" (bright isolated stars).
   True S/N = S / sqrt(pi r^2 sigma^2 + S / gain) with S the injected flux times the
   enclosed fraction at r = 2 x the true FWHM, sigma the frame's global background RMS
   (``sep_x.Background``) and gain the header's GAIN.
   CPU: ``time.thread_time`` of ``_find_sep`` (``sep_x.extract`` + ``sep_x.winpos`` and
   the few array operations round them) on the detection inputs the run had, all
   variants interleaved, ``--rounds`` rounds (order rotated each round).
2. the real-frame corpus (``bench/real_frames.py``, ``--real``): ``rpp run`` as a user
   runs it on every frame, with the variant patched in through a ``sitecustomize`` on
   ``PYTHONPATH`` (env ``RPP_DETECT_VARIANT``); the table's columns per variant.

Usage::

    python bench/detect_variants.py                        # synthetic frames, every variant
    python bench/detect_variants.py --real                 # also the real-frame corpus
    python bench/detect_variants.py --variants base,k5 --rounds 6 --json /tmp/dv.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

#: name -> (largest half-size of the filter's support, px; deblend_nthresh). base = rpp's own.
VARIANTS = {
    "base": (4, 32), "k5": (2, 32), "k3": (1, 32), "n24": (4, 24), "n16": (4, 16),
    "n8": (4, 8), "k5n24": (2, 24), "k5n16": (2, 16), "k3n24": (1, 24), "k3n16": (1, 16),
}

_ORIG: dict = {}
#: set to a list to capture the detection inputs of every ``_find_sep`` call made while patched
CAPTURE: list | None = None


def apply(name: str | None, log: str | None = None) -> None:
    """Patch variant ``name`` into ``rpp_core.detect`` (None: restore rpp's own functions).

    ``log``: a file each detection call appends one JSON line to (variant, sources, CPU s).
    """
    from rpp_core import detect

    if not _ORIG:
        _ORIG.update(kernel=detect.detection_kernel, find=detect._find_sep, sources=detect._sep_sources)
    detect.detection_kernel, detect._find_sep, detect._sep_sources = _ORIG["kernel"], _ORIG["find"], _ORIG["sources"]
    if name is None:
        return
    if name not in VARIANTS:
        raise SystemExit(f"unknown detection variant {name!r}: choose from {', '.join(VARIANTS)}")
    max_half, nthresh = VARIANTS[name]

    def kernel(fwhm_px):
        k, f = _ORIG["kernel"](fwhm_px)
        cut = k.shape[0] // 2 - max_half
        if cut > 0:
            k = np.ascontiguousarray(k[cut:-cut, cut:-cut])
        return k, f

    def sources(*a, **kw):
        kw.setdefault("deblend_nthresh", nthresh)
        return _ORIG["sources"](*a, **kw)

    def find(data, rms, search, fwhm_px, settings):
        if CAPTURE is not None:
            CAPTURE.append((data.copy(), rms.copy(), search.copy(), float(fwhm_px), settings))
        # only the detection pass sees the variant: measure_fwhm's own sep pass keeps its 3 x 3 and 32 levels
        detect.detection_kernel, detect._sep_sources = kernel, sources
        t0 = time.thread_time()
        try:
            out = _ORIG["find"](data, rms, search, fwhm_px, settings)
        finally:
            detect.detection_kernel, detect._sep_sources = _ORIG["kernel"], _ORIG["sources"]
        cpu = time.thread_time() - t0
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps({"variant": name, "n": int(len(out["x"])), "cpu_s": cpu, "fwhm_px": float(fwhm_px),
                                     "shape": list(data.shape), "kernel": int(kernel(fwhm_px)[0].shape[0])}) + "\n")
        return out

    detect._find_sep = find


# --------------------------------------------------------------------------- synthetic frames

LITE = {"services.offline": True, "services.enabled": [], "astrometry.solve": "never",
        "cosmic_rays.enabled": False, "photometry.psf": False, "output.zip": False, "output.formats": ["csv", "ecsv"]}


def _frames(out: Path):
    import frames
    from bench import Truth
    from parts import FWHM_A
    from rpp_core.synthetic import moffat_enclosed

    if not all((out / f).exists() for f in ("frame.fits", "truth.ecsv", "frame_b.fits", "truth_b.ecsv")):
        print("making the benchmark frames (bench.py --part make)", file=sys.stderr)
        subprocess.run([sys.executable, str(BENCH / "bench.py"), "--part", "make", "--out", str(out)], check=True,
                       cwd=BENCH, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH)])))
    return {"A": (out / "frame.fits", Truth(out / "truth.ecsv", FWHM_A, lambda r: float(moffat_enclosed(r, FWHM_A, 3.0)), 80)),
            "B": (out / "frame_b.fits", Truth(out / "truth_b.ecsv", frames.FWHM, frames.enclosed, 90))}


def _true_snr(frame: Path, truth) -> np.ndarray:
    """True S/N of every injected star in a 2 x FWHM aperture (module docstring)."""
    import sep_x
    from astropy.io import fits

    with fits.open(frame) as hdul:
        data = np.asarray(hdul[0].data, np.float32)
        gain = float(hdul[0].header.get("GAIN", 1.0))
    sigma = float(sep_x.Background(np.ascontiguousarray(data), bw=64, bh=64).globalrms)
    r = 2.0 * truth.fwhm
    s = truth.f * truth.enclosed(r)
    return s / np.sqrt(np.pi * r * r * sigma**2 + np.clip(s, 0, None) / gain)


SNR_BINS = (0, 5, 10, 20, 50, 100, 300, np.inf)


def score_synthetic(cat, truth, snr_true: np.ndarray) -> dict:
    """Completeness by true S/N, purity at rpp S/N > 20, centroid error and flux / truth of one catalogue."""
    labels = list(cat.meta["apertures"])
    radii = [float(cat.meta["apertures"][k]) for k in labels]
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    d, i = truth.tree.query(np.c_[x, y])
    hit = d < 1.0
    found = np.zeros(len(truth.x), bool)
    found[i[hit]] = True
    dist = np.full(len(truth.x), np.inf)
    np.minimum.at(dist, i[hit], d[hit])
    comp = {}
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        sel = (snr_true >= lo) & (snr_true < hi)
        comp[f"{lo:g}-{hi:g}"] = [int(found[sel].sum()), int(sel.sum())]
    bright = snr_true > 20
    snr = np.asarray(cat["snr_" + labels[1]], float)
    rpp20 = snr > 20
    ev = truth.evaluate(x, y, cat[f"flux_{labels[1]}"], radii[1])
    de = dist[bright & found]
    return {"n": len(cat), "completeness_by_true_snr": comp,
            "completeness_snr20": [int(found[bright].sum()), int(bright.sum())],
            "purity_snr20": [int(hit[rpp20].sum()), int(rpp20.sum())],
            "centroid_median_px": float(np.median(de)), "centroid_p90_px": float(np.percentile(de, 90)),
            "flux_truth_median": ev["median_ratio"], "flux_truth_scatter": ev["scatter"], "flux_truth_n": ev["n"]}


def run_synthetic(variants, rounds: int, out: Path, work: Path) -> dict:
    from astropy.table import Table

    from rpp_core import pipeline
    from rpp_core.settings import Profile

    global CAPTURE
    profile = Profile(name="detect-variants").replace(**LITE)
    res = {}
    for tag, (frame, truth) in _frames(out).items():
        snr_true = _true_snr(frame, truth)
        res[tag] = {"scores": {}, "cpu_s": {v: [] for v in variants}}
        inputs = None
        for v in variants:
            CAPTURE = [] if inputs is None else None
            apply(v)
            try:
                r = asyncio.run(pipeline.run(frame, profile, out_dir=work / f"{tag}_{v}"))
            finally:
                apply(None)
            if CAPTURE:
                inputs = CAPTURE[0]
            CAPTURE = None
            cat = Table.read(r.run_dir / "catalog.ecsv")
            res[tag]["scores"][v] = s = score_synthetic(cat, truth, snr_true)
            shutil.rmtree(r.run_dir, ignore_errors=True)
            print(f"frame {tag} {v}: {s['n']} sources, completeness S/N>20 {s['completeness_snr20']}, "
                  f"purity {s['purity_snr20']}, flux/truth {s['flux_truth_median']:.4f}", file=sys.stderr)
        from rpp_core import detect

        # CPU of the detection pass alone, the variants interleaved (the machine is shared and noisy)
        for k in range(rounds):
            order = variants[k % len(variants):] + variants[:k % len(variants)]
            for v in order:
                apply(v)
                try:
                    t0 = time.thread_time()
                    detect._find_sep(*inputs)
                    res[tag]["cpu_s"][v].append(time.thread_time() - t0)
                finally:
                    apply(None)
        del inputs
    return res


# --------------------------------------------------------------------------- real frames

_SITE = '''import os, sys
_v = os.environ.get("RPP_DETECT_VARIANT")
if _v:
    sys.path.insert(0, {bench!r})
    import detect_variants
    detect_variants.apply(_v, log=os.environ.get("RPP_DETECT_VARIANT_LOG"))
'''


def run_real(variants, work: Path, names=None) -> dict:
    from dataclasses import asdict

    import real_frames
    from tests import realframes as R

    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE.format(bench=str(BENCH)))
    old_env = {k: os.environ.get(k) for k in ("PYTHONPATH", "RPP_DETECT_VARIANT", "RPP_DETECT_VARIANT_LOG")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    refs = {}
    res = {}
    try:
        for v in variants:
            log = work / f"real_{v}.jsonl"
            log.unlink(missing_ok=True)
            os.environ["RPP_DETECT_VARIANT"], os.environ["RPP_DETECT_VARIANT_LOG"] = v, str(log)
            root = work / f"real_{v}"
            rows, scores = [], {}
            for case in [R.frame(n) for n in names] if names else R.FRAMES:
                run = R.run_rpp(case, root)
                if case.name not in refs:
                    ref = R.reference_image(case) if case.fwhm_ref else None
                    refs[case.name] = (ref, R.sextractor_reference(case, ref) if ref is not None else None)
                s = R.score(case, run, *refs[case.name])
                rows.append(real_frames.row(case, s))
                scores[case.name] = asdict(s)
            calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            res[v] = {"rows": rows, "detections": calls,
                      "scores": {k: {"detection": s["detection"], "fwhm": s["fwhm"], "zp_image": s["zp_image"],
                                     "astrometry": s["astrometry"]} for k, s in scores.items()}}
            print(f"real frames {v}: {len(calls)} detection calls", file=sys.stderr)
            print(real_frames.render(rows, True), file=sys.stderr)
            shutil.rmtree(root / "runs", ignore_errors=True)
    finally:
        for k, val in old_env.items():
            if val is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = val
    return res


# --------------------------------------------------------------------------- report

def _pct(a) -> str:
    return f"{100 * a[0] / a[1]:.1f}%" if a[1] else "-"


def _frac(d: dict, num: str, den: str) -> float:
    return 100.0 * d[num] / d[den] if d[den] else float("nan")


def verdict(syn: dict, real: dict, v: str, ref: str) -> list[str]:
    """Why ``v`` may or may not replace ``ref``: each failed condition, or "qualifies"."""
    fails = []
    for n in (real[v]["scores"] if real else {}):
        d, b = real[v]["scores"][n]["detection"], real[ref]["scores"][n]["detection"]
        for num, den, what in (("n_found", "n_reference", "completeness"), ("n_pure", "n_rpp", "purity")):
            if b[den] and d[den] and _frac(d, num, den) < _frac(b, num, den) - 1.0:
                fails.append(f"{n} {what} {_frac(b, num, den):.1f} -> {_frac(d, num, den):.1f} %")
        rv, rb = (next(r for r in real[x]["rows"] if r[0] == n) for x in (v, ref))
        for k, h in ((1, "exit"), (2, "FWHM"), (6, "WCS"), (7, "ZP")):
            if rv[k] != rb[k]:
                fails.append(f"{n} {h} {rb[k]} -> {rv[k]}")
    for tag in syn:
        s, b = syn[tag]["scores"][v], syn[tag]["scores"][ref]
        if s["completeness_snr20"][0] < b["completeness_snr20"][0]:
            fails.append(f"frame {tag} completeness S/N>20 {b['completeness_snr20'][0]} -> {s['completeness_snr20'][0]}")
        if round(abs(s["flux_truth_median"] - 1), 4) > round(abs(b["flux_truth_median"] - 1), 4) or \
                round(s["flux_truth_scatter"], 4) > round(b["flux_truth_scatter"], 4):
            fails.append(f"frame {tag} flux/truth {b['flux_truth_median']:.4f} ± {b['flux_truth_scatter']:.4f} -> "
                         f"{s['flux_truth_median']:.4f} ± {s['flux_truth_scatter']:.4f}")
    return fails or ["qualifies" + ("" if real else " on the synthetic frames (real frames not run)")]


def report(syn: dict, real: dict, variants) -> str:
    lines = []
    if syn:
        lines.append("Synthetic frames (completeness: injected star within 1 px; true S/N in a 2 x FWHM aperture)\n")
        bins = [f"{lo:g}-{hi:g}" for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:])]
        head = (["variant", "frame", "CPU s median (range)", "sources", "compl S/N>20", "purity S/N>20",
                 "centroid med / p90 px", "flux/truth 2xFWHM"] + [f"compl {b}" for b in bins])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in variants:
            for tag in syn:
                s, c = syn[tag]["scores"][v], syn[tag]["cpu_s"][v]
                cells = [v, tag, f"{statistics.median(c):.3f} ({min(c):.3f}-{max(c):.3f})" if c else "-", str(s["n"]),
                         f"{_pct(s['completeness_snr20'])} {s['completeness_snr20'][0]}/{s['completeness_snr20'][1]}",
                         f"{_pct(s['purity_snr20'])} {s['purity_snr20'][0]}/{s['purity_snr20'][1]}",
                         f"{s['centroid_median_px']:.4f} / {s['centroid_p90_px']:.4f}",
                         f"{s['flux_truth_median']:.4f} ± {s['flux_truth_scatter']:.4f} (n={s['flux_truth_n']})"]
                cells += [_pct(s["completeness_by_true_snr"][b]) for b in bins]
                lines.append("| " + " | ".join(cells) + " |")
    if real:
        lines.append("\nReal frames: completeness / purity S/N>20 against SExtractor, found/reference and pure/rpp "
                     "(bench/real_frames.py), change from the first variant in percentage points\n")
        names = list(real[variants[0]]["scores"])
        head = ["variant"] + names + ["detection CPU s, sum over frames"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in variants:
            cells = [v]
            for n in names:
                d, b = real[v]["scores"][n]["detection"], real[variants[0]]["scores"][n]["detection"]
                if not d["n_reference"]:
                    cells.append("-")
                    continue
                c, pu = (_frac(d, "n_found", "n_reference"), _frac(d, "n_pure", "n_rpp"))
                dc, dp = c - _frac(b, "n_found", "n_reference"), pu - _frac(b, "n_pure", "n_rpp")
                cells.append(f"{d['n_found']}/{d['n_reference']} ({dc:+.1f}) / {d['n_pure']}/{d['n_rpp']} ({dp:+.1f})")
            cells.append(f"{sum(c['cpu_s'] for c in real[v]['detections']):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("\nReal frames: exit, FWHM, S/N, WCS, ZP cells that differ from the first variant\n")
        base = {r[0]: r for r in real[variants[0]]["rows"]}
        for v in variants[1:]:
            for r in real[v]["rows"]:
                b = base[r[0]]
                diff = [f"{h}: {b[k]} -> {r[k]}" for k, h in ((1, "exit"), (2, "FWHM"), (5, "S/N"), (6, "WCS"), (7, "ZP"))
                        if r[k] != b[k]]
                if diff:
                    lines.append(f"- {v} {r[0]}: " + "; ".join(diff))
    lines.append("\nVerdict against the first variant (issue 10 rule: every real frame's completeness and purity "
                 "S/N>20 within 1 point or better, FWHM/WCS/ZP unchanged; frames A and B completeness vs truth at "
                 "S/N>20 and flux/truth at 2 x FWHM no worse)\n")
    for v in variants[1:]:
        lines.append(f"- {v}: " + "; ".join(verdict(syn, real, v, variants[0])))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, first is the reference: " + ",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds on each synthetic frame")
    p.add_argument("--out", default=str(BENCH / "out"), help="folder of the benchmark frames")
    p.add_argument("--real", action="store_true", help="also run the real-frame corpus per variant")
    p.add_argument("--frames", help="real frames to run (comma-separated; default all)")
    p.add_argument("--no-synthetic", action="store_true", help="skip frames A and B")
    p.add_argument("--json", help="write every number to this file")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="rpp-detect-variants-"))
    try:
        syn = {} if args.no_synthetic else run_synthetic(variants, args.rounds, Path(args.out), work)
        real = run_real(variants, work, args.frames.split(",") if args.frames else None) if args.real else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"synthetic": syn, "real": real, "date": time.strftime("%Y-%m-%d %H:%M"),
                                               "load": os.getloadavg()}, indent=1, default=float))
    print(report(syn, real, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
