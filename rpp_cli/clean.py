"""``rpp clean``: remove old run folders by age and/or total size."""

from __future__ import annotations

import sys
from pathlib import Path

from rpp_core.errors import RppError, UsageError


def cmd_clean(args) -> int:
    from rpp_core import locations
    from rpp_core.cleanup import clean, format_size

    try:
        older, size = args.older_than, args.max_size
        if older is None and size is None and not args.interrupted:
            from rpp_core.settings import load_profile

            out = load_profile(getattr(args, "profile", None)).output
            older = out.keep_days * 86400.0 if out.keep_days > 0 else None
            size = int(out.max_total_gb * 1024**3) if out.max_total_gb > 0 else None
            if older is None and size is None:
                raise UsageError("rpp clean: give --older-than AGE, --max-size SIZE and/or --interrupted "
                                 "(or set output.keep_days / output.max_total_gb in the profile)")
        ws = Path(args.out).expanduser() if args.out else locations.workspace_dir()
        if not ws.is_dir():
            raise UsageError(f"workspace {ws} does not exist")
        removals = clean(ws, older_than=older, max_size=size, dry_run=args.dry_run, interrupted=args.interrupted)
    except RppError as exc:
        print(f"rpp clean: {exc}", file=sys.stderr)
        return exc.exit_code
    if not args.quiet:
        verb = "would remove" if args.dry_run else "removed"
        for r in removals:
            if args.dry_run or r.removed:
                state = ", interrupted" if r.run.state == "interrupted" else ""
                print(f"{verb} {r.run.path}  ({format_size(r.run.size)}, {r.run.age_s / 86400:.1f} d old{state}, "
                      f"by {r.reason})")
        freed = sum(r.run.size for r in removals if args.dry_run or r.removed)
        n = sum(1 for r in removals if args.dry_run or r.removed)
        print(f"{verb} {n} run folder(s), {format_size(freed)} in {ws}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "clean", help="remove old run folders by age and/or total size",
        description="Remove run folders (those with summary.json or run.log) from the workspace: "
                    "older than --older-than, then the oldest until the rest fit in --max-size; "
                    "a run in progress is never removed. "
                    "Without either option, the profile's output.keep_days / output.max_total_gb apply.")
    p.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h, 2w (bare number = days)")
    p.add_argument("--max-size", metavar="SIZE", help="total size bound, e.g. 10G, 500M (powers of 1024)")
    p.add_argument("--interrupted", action="store_true",
                   help="also remove runs that were interrupted (killed before their summary), whatever their age")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--out", metavar="DIR", help="workspace (default: $RPP_WORKSPACE or the user data dir)")
    p.add_argument("--profile", metavar="P", help="profile whose output.keep_days/max_total_gb apply when no option is given")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=cmd_clean)
