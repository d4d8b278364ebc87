"""``rpp index build`` / ``rpp index list``: astrometry.net index files for the fields you observe.

``build`` makes index files from a reference catalogue file (``CATALOG``), or from a
Gaia DR3 cone fetched once through the cached catalogue layer for a field
(``--field RA DEC --radius R``), a list of fields (``--fields FILE``) or the
pointings of frames (``--frames PATH...``). They go to the folder the solver
searches by default unless ``--out`` says otherwise. ``list`` shows the index
files the solver would use, with their quad sizes and the sky they cover.
"""

from __future__ import annotations

import re
from pathlib import Path

from rpp_core.errors import UsageError

from .options import profile_from_args


def parse_scales(text: str) -> list[int]:
    """``"2..5"``, ``"2-5"``, ``"2:5"``, ``"-2..1"`` or ``"2,3,4"`` -> the list of scale presets."""
    text = text.strip()
    m = re.fullmatch(r"(-?\d+)\s*(?:\.\.|:|(?<=\d)-)\s*(-?\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return list(range(min(a, b), max(a, b) + 1))
    try:
        return [int(s) for s in re.split(r"[,\s]+", text) if s]
    except ValueError:
        raise UsageError(f"--scales {text!r}: give a range like 2..5 or a list like 2,3,4") from None


def _fields(args, profile):
    from rpp_core.astrometry import fields as F

    chosen = [name for name, value in (("CATALOG", args.catalog), ("--field", args.field), ("--fields", args.fields),
                                       ("--frames", args.frames)) if value]
    if len(chosen) != 1:
        raise UsageError("rpp index build: give one of CATALOG, --field RA DEC --radius R, --fields FILE or "
                         f"--frames PATH{' (not ' + ' and '.join(chosen) + ')' if chosen else ''}")
    width = F.parse_width(args.field_width)
    if args.field:
        if args.radius is None:
            raise UsageError("rpp index build --field RA DEC needs --radius R (degrees round the field centre)")
        return [F.SkyField(F.parse_coordinate(args.field[0], True) % 360.0, F.parse_coordinate(args.field[1], False),
                           args.radius, width, "--field")]
    if args.fields:
        return F.fields_from_file(args.fields)
    found = []
    for path in F.frame_paths(args.frames):
        try:
            found.append(F.field_of_frame(path, profile.observatory, profile.astrometry))
        except Exception as exc:  # noqa: BLE001 - one unusable frame must not stop the night
            print(f"skipped {path}: {exc}")
    if not found:
        raise UsageError(f"rpp index build --frames: no frame with a pointing and a pixel scale in {args.frames}")
    merged = F.merge_fields(found)
    print(f"{len(found)} frames -> {len(merged)} field{'s' if len(merged) != 1 else ''}")
    return merged


def cmd_index_build(args) -> int:
    import asyncio
    import dataclasses

    from rpp_core import locations
    from rpp_core.astrometry import build_index, scales_for_field
    from rpp_core.astrometry.fields import build_field_indexes, parse_width

    profile = profile_from_args(args)
    out = Path(args.out).expanduser() if args.out else locations.index_dir()
    scales = parse_scales(args.scales) if args.scales else None
    if args.catalog:
        width = parse_width(args.field_width)
        if scales is None and width is None:
            raise UsageError("rpp index build CATALOG: give --scales (e.g. 2..5) or --field-width ARCMIN")
        paths = build_index(args.catalog, out, scales=scales or scales_for_field(*width), ra_col=args.ra_col,
                            dec_col=args.dec_col, mag_col=args.mag_col, log=print)
    else:
        fields = _fields(args, profile)
        services = dataclasses.replace(profile.services, offline=True) if args.offline else profile.services
        paths = asyncio.run(build_field_indexes(fields, out, services, scales=scales, mag_limit=args.mag_limit,
                                                log=print))
    default = profile.astrometry.use_user_indexes and out.resolve() == locations.index_dir().resolve()
    where = "the solver searches it by default" if default else "add it to [astrometry] index_dirs"
    print(f"{len(paths)} index files in {out.resolve()}: {where}")
    return 0


def cmd_index_list(args) -> int:
    from rpp_core.astrometry import index_dirs_for, index_files, index_infos

    settings = profile_from_args(args).astrometry
    dirs = index_dirs_for(settings)
    print("folders searched: " + (", ".join(str(d) for d in dirs) or "none"))
    infos = index_infos(index_files(dirs))
    for info in infos:
        print(("  unusable: " + info.problem + ": " + str(info.path)) if info.problem else
              f"  {info.describe()}, {info.n_stars} stars")
    print(f"{len(infos)} index files")
    return 0


def _profile_options(p) -> None:
    p.add_argument("--profile", "-p", help="profile name (in the config dir) or path to a TOML file")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a profile setting (repeatable)")


def register(sub) -> None:
    p_index = sub.add_parser("index", help="astrometry.net index files: build, list")
    index_sub = p_index.add_subparsers(dest="index_command", required=True)
    b = index_sub.add_parser(
        "build", help="build index files for your fields (Gaia DR3 cone, cached) or from a catalogue file",
        description="Build astrometry.net index files. From a Gaia DR3 cone (fetched once, then from the "
                    "answer cache): --field RA DEC --radius R, --fields FILE (lines RA DEC RADIUS [WIDTH]) or "
                    "--frames PATH (the pointings and field sizes of frames or folders of frames). Or from a "
                    "catalogue file (CSV/ECSV/FITS/VOTable) given as CATALOG. Files go to the folder the solver "
                    "searches by default ($RPP_INDEX_DIR) unless --out says otherwise.")
    b.add_argument("catalog", nargs="?", help="reference catalogue file with RA/Dec (or l/b) and a magnitude")
    b.add_argument("--field", nargs=2, metavar=("RA", "DEC"), help="field centre, degrees (or hh:mm:ss +dd:mm:ss)")
    b.add_argument("--radius", type=float, help="radius of the field's Gaia cone, degrees")
    b.add_argument("--fields", metavar="FILE", help="file of fields, one a line: RA DEC RADIUS [WIDTH_ARCMIN]")
    b.add_argument("--frames", nargs="+", metavar="PATH", help="frames or folders of frames: one field per pointing")
    b.add_argument("--out", help="folder for the index files (default: the one the solver searches, $RPP_INDEX_DIR)")
    b.add_argument("--scales", help="scale presets, e.g. 2..5 or 2,3,4 (preset P holds quads of 2*1.41^P arcmin)")
    b.add_argument("--field-width", help="width of the frames to solve, arcmin (or a range 7-28): picks the scales")
    b.add_argument("--mag-limit", type=float, help="faintest Gaia G in the index (default services.gaia_mag_limit)")
    b.add_argument("--offline", action="store_true", help="use only cached Gaia cones")
    b.add_argument("--ra-col", help="RA column (deg) of CATALOG")
    b.add_argument("--dec-col", help="Dec column (deg) of CATALOG")
    b.add_argument("--mag-col", help="magnitude column of CATALOG used to pick the brightest stars")
    _profile_options(b)
    b.set_defaults(func=cmd_index_build)
    lst = index_sub.add_parser("list", help="index files the solver would use: quad sizes and sky covered")
    _profile_options(lst)
    lst.set_defaults(func=cmd_index_list)
