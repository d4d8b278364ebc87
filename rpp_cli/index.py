"""``rpp index build CATALOG --out DIR``: astrometry.net index files from a reference catalogue."""

from __future__ import annotations

import re
from pathlib import Path

from rpp_core.errors import UsageError


def parse_scales(text: str) -> list[int]:
    """``"2..5"``, ``"2-5"``, ``"2:5"`` or ``"2,3,4"`` -> the list of scale presets."""
    text = text.strip()
    m = re.fullmatch(r"(\d+)\s*(?:\.\.|-|:)\s*(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return list(range(min(a, b), max(a, b) + 1))
    try:
        return [int(s) for s in re.split(r"[,\s]+", text) if s]
    except ValueError:
        raise UsageError(f"--scales {text!r}: give a range like 2..5 or a list like 2,3,4") from None


def cmd_index_build(args) -> int:
    from rpp_core.astrometry import build_index

    scales = parse_scales(args.scales) if args.scales else None
    if scales is None and not args.field_width:
        raise UsageError("rpp index build: give --scales (e.g. 2..5) or --field-width ARCMIN")
    paths = build_index(args.catalog, args.out, field_width_arcmin=args.field_width, scales=scales,
                        ra_col=args.ra_col, dec_col=args.dec_col, mag_col=args.mag_col, log=print)
    print(f"{len(paths)} index files in {Path(args.out).resolve()}: add it to [astrometry] index_dirs")
    return 0


def register(sub) -> None:
    p_index = sub.add_parser("index", help="astrometry.net index files")
    index_sub = p_index.add_subparsers(dest="index_command", required=True)
    b = index_sub.add_parser("build", help="build index files from a reference catalogue (CSV/ECSV/FITS/VOTable)")
    b.add_argument("catalog", help="reference catalogue file with RA/Dec (or l/b) and a magnitude")
    b.add_argument("--out", required=True, help="folder for the index files")
    b.add_argument("--scales", help="scale presets, e.g. 2..5 or 2,3,4 (preset P suits fields of ~6*1.41^P arcmin)")
    b.add_argument("--field-width", type=float, help="widest side of the frames, arcmin: picks the scales")
    b.add_argument("--ra-col", help="RA column (deg)")
    b.add_argument("--dec-col", help="Dec column (deg)")
    b.add_argument("--mag-col", help="magnitude column used to pick the brightest stars")
    b.set_defaults(func=cmd_index_build)
