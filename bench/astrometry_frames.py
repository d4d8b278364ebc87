"""Time in plate solving on every real frame, with the index files a user may have.

For each frame of ``tests/realframes.py`` (tests/data/real and tests/data/images):
the pixels of the yardstick's reference image (overscan-trimmed, LCO amplifiers
assembled), the header facts of ``load_frame``/``read_metadata``, the brightest
``sep`` detections; then what the pipeline's astrometry stage does: decide
(``needs_solving``, offline: no reference catalogue) and, when it solves, the
hints (``solve_hints``, when this rpp has it) and ``solve``. One row per frame:
whether it solved, the seconds spent, and the one-line outcome.

``--index DIR`` (repeatable) gives the index folders, for example the Debian
Tycho-2 files unpacked with ``dpkg -x`` and indexes built with ``rpp index build``.
``--always`` solves every frame (``solve = always``), as when an online check
rejects a header WCS.

Usage::

    python bench/astrometry_frames.py --index DIR [--index DIR2] [--always] [--timeout 120] [--frames a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import realframes as R  # noqa: E402
from tests.datafiles import data_unpacked  # noqa: E402


def _sources(data: np.ndarray):
    import sep_x
    from astropy.table import Table

    d = np.ascontiguousarray(data, dtype=np.float32)
    mask = ~np.isfinite(d)
    d = np.where(mask, np.float32(np.nanmedian(d)), d)
    bkg = sep_x.Background(d, mask=mask)
    obj = sep_x.extract(d - bkg.back(), 5.0, err=bkg.rms(), minarea=5, mask=mask)
    t = Table({"x": obj["x"], "y": obj["y"], "flux": obj["flux"]})
    t.sort("flux", reverse=True)
    return t


def one(case: R.FrameCase, dirs: list[str], always: bool, timeout: float) -> list[str]:
    from rpp_core import astrometry as A
    from rpp_core.errors import RppError
    from rpp_core.image import load_frame, read_metadata
    from rpp_core.settings import AstrometrySettings, ObservatorySettings

    frame = load_frame(data_unpacked(case.path), hdu=case.hdu or None)
    meta = read_metadata(frame, ObservatorySettings())
    data = R.reference_image(case).data
    settings = AstrometrySettings(index_dirs=dirs, use_system_indexes=False, timeout_s=timeout,
                                  solve="always" if always else "auto")
    need, why = A.needs_solving(frame, meta, settings)
    if not need:
        return [case.name, "not solved", "0.0", why]
    src = _sources(data)
    kw = {}
    if hasattr(A, "solve_hints"):
        kw["hints"] = A.solve_hints(frame, meta)
    lines: list[str] = []
    t0 = time.monotonic()
    try:
        res = A.solve(src, data.shape, meta, settings, log=lines.append, **kw)
        outcome = f"{res.method}, {res.pixel_scale:.3f}\"/px"
        status = "solved"
    except RppError as exc:
        outcome, status = str(exc), "failed"
    return [case.name, status, f"{time.monotonic() - t0:.1f}", outcome]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", action="append", default=[], help="index folder (repeatable)")
    p.add_argument("--always", action="store_true", help="solve every frame (solve = always)")
    p.add_argument("--timeout", type=float, default=120.0, help="[astrometry] timeout_s")
    p.add_argument("--frames", help="comma-separated frame names (default: all)")
    args = p.parse_args(argv)
    cases = [R.frame(n) for n in args.frames.split(",")] if args.frames else list(R.FRAMES)
    for case in cases:
        name, status, seconds, outcome = one(case, args.index, args.always, args.timeout)
        print(f"{name:<14} {status:<10} {seconds:>6} s  {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
