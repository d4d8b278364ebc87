"""The real-frame yardstick: ``rpp run`` on every real frame, one table row each.

Runs the pipeline as a user would (``rpp run FRAME --offline --json``: default profile,
no network, its own config/cache/workspace), giving each frame the local reference
catalogues the corpus has (M67 Gaia export and an index built from it with
``rpp index build``, Spitzer's GLIMPSE table), then scores what the run left against
the truths of ``tests/realframes.py`` (its docstring defines every column):

- ``exit``: rpp's exit code; ``FWHM`` rpp's FWHM (Moffat), in brackets what a Gaussian
  fit reads on the same stars (``G``), the reference (a Gaussian fit) and the difference
  of the Gaussian-fit value to it (``!`` outside the tolerance: 15 %, 25 % below 1.5 px;
  ``~`` not checked);
- ``compl`` / ``purity``: detection completeness and purity against SExtractor at
  S/N > 20 (``found/reference``, ``pure/rpp``; ``!`` below 90 % where SExtractor has
  10 or more such sources); ``S/N``: median rpp S/N over SExtractor S/N for the same sources;
- ``WCS``: rpp's WCS status, and the error against the frame's WCS truth when it has one;
- ``ZP``: zero point for pixel sums in image units over the exposure, minus the truth;
- ``time``: wall-clock seconds of the whole ``rpp run`` process.

Usage::

    python bench/real_frames.py [--frames sdss_g,saao_raw] [--keep DIR [--rescore]] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import realframes as R  # noqa: E402


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _mark(ok) -> str:
    return {True: "", False: "!", None: ""}[ok]


def row(case: R.FrameCase, s: R.Score) -> list[str]:
    """The table cells of one score."""
    if s.fwhm is None:
        fwhm = f"- / {case.fwhm_ref or '-'}"
    else:
        ref = f"{case.fwhm_ref:.2f}" if case.fwhm_ref else "-"
        diff = "" if s.fwhm_error is None else f" {100 * s.fwhm_error:+.0f}%"
        flag = "~" if not case.fwhm_checked else _mark(s.fwhm_ok)
        gauss = "" if s.fwhm_gauss is None else f" (G {s.fwhm_gauss:.2f})"
        model = "" if s.fwhm_model_error is None else f", M {100 * s.fwhm_model_error:+.0f}%"
        fwhm = f"{s.fwhm:.2f}{gauss} / {ref}{diff}{model}{flag}"
    d = s.detection
    judged = d.judged
    compl = "-" if d.completeness is None else f"{_pct(d.completeness)} {d.n_found}/{d.n_reference}"
    if judged and d.completeness is not None and d.completeness < R.DETECTION_MIN:
        compl += "!"
    if d.completeness is None and d.note:
        compl = d.note[:28]
    pur = "-" if d.purity is None else f"{_pct(d.purity)} {d.n_pure}/{d.n_rpp}"
    if judged and d.purity is not None and d.purity < R.DETECTION_MIN:
        pur += "!"
    snr = "-" if d.snr_ratio is None else f"{d.snr_ratio:.2f}"
    a = s.astrometry
    wcs = a.status or "-"
    if a.unit:
        unit = '"' if a.unit == "arcsec" else " px"
        wcs += f" {a.error:.2f}{unit}" if a.error is not None else f" ({a.note})"
        wcs += "!" if a.ok is False or a.error is None else ""
    if case.zp_image is None:
        zp = "-" if s.zp_image is None else f"{s.zp_image:.3f}"
    elif s.zp_image is None:
        zp = f"none (truth {case.zp_image:.3f})!"
    else:
        zp = f"{s.zp_image:.3f} {s.zp_error:+.3f}{_mark(s.zp_ok)}"
    exit_code = str(s.exit_code)
    if case.expect_no_catalogue:
        exit_code += " 1 line" if s.one_line else " (not one line)!"
    return [case.name, exit_code, fwhm, compl, pur, snr, wcs, zp, f"{s.seconds:.1f}"]


HEADER = ["frame", "exit", "FWHM px / ref", "compl S/N>20", "purity S/N>20", "S/N", "WCS", "ZP - truth", "time s"]


def render(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(HEADER, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEADER), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="rpp on every real frame, scored against the truths (tests/realframes.py)")
    p.add_argument("--frames", help="comma-separated frame names (default: all): " + ",".join(c.name for c in R.FRAMES))
    p.add_argument("--keep", help="keep the run folders here (default: a temporary folder, removed)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--json", help="also write every score as JSON to this file")
    p.add_argument("--rescore", action="store_true", help="score the runs already in --keep DIR again, without running rpp")
    args = p.parse_args(argv)
    cases = [R.frame(n) for n in args.frames.split(",")] if args.frames else list(R.FRAMES)
    if args.rescore and not args.keep:
        p.error("--rescore needs --keep DIR (the folder of an earlier run)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rpp-real-frames-"))
    root.mkdir(parents=True, exist_ok=True)
    rows, scores, messages = [], {}, []
    t0 = time.perf_counter()
    try:
        for case in cases:
            run = R.load_run(case, root) if args.rescore else R.run_rpp(case, root)
            ref = R.reference_image(case) if case.fwhm_ref else None
            sex = R.sextractor_reference(case, ref) if ref is not None else None
            s = R.score(case, run, ref, sex)
            rows.append(row(case, s))
            scores[case.name] = asdict(s)
            if s.message:
                messages.append(f"{case.name} (exit {s.exit_code}): {s.message.replace(str(R.DATA), 'tests/data')}")
            print(f"{case.name}: exit {s.exit_code} in {s.seconds:.1f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(render(rows, args.markdown))
    if messages:
        print("\nrpp's one-line messages:" if not args.markdown else "\nrpp's one-line messages:\n")
        for m in messages:
            print(("- " if args.markdown else "  ") + m)
    print(f"\n{len(cases)} frames in {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
