"""``rpp watch DIR``: process each new FITS frame once the camera has finished writing it (systemd, cron)."""

from __future__ import annotations

import sys

from rpp_core.errors import UsageError

from .options import add_frame_options, profile_from_args


def cmd_watch(args) -> int:
    import asyncio
    import datetime as dt
    import signal

    from rpp_core.watch import Watcher

    if args.poll <= 0 or args.settle < 0:
        raise UsageError("--poll must be > 0 and --settle >= 0 seconds")
    profile = profile_from_args(args)
    n = [0, 0]

    def stamp() -> str:
        return dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")

    def on_result(res) -> None:
        n[0] += 1
        n[1] += res.status == "failed"
        if res.status == "failed" or not args.quiet:
            print(f"{stamp()} {res.line()}", file=sys.stderr if args.quiet else sys.stdout, flush=True)

    def on_log(text: str) -> None:
        if not args.quiet:
            print(f"{stamp()} {text}", file=sys.stderr, flush=True)

    watcher = Watcher(args.directory, profile, out_dir=args.out, catalog_files=args.catalog or [],
                      offline=True if args.offline else None, hdu=args.hdu, poll_s=args.poll, settle_s=args.settle,
                      incomplete_grace_s=args.incomplete_grace, recursive=args.recursive,
                      ignore_existing=args.ignore_existing, once=args.once, on_result=on_result, on_log=on_log)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await watcher.run(stop)

    asyncio.run(main())
    if not args.quiet:
        print(f"rpp watch: {n[0]} frame(s) processed, {n[1]} failed; report in {watcher.report_dir}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "watch", help="process each new FITS frame in a folder as it arrives (for systemd/cron)",
        description="Poll DIR and process every FITS frame once the camera has finished writing it. "
                    "Survives restarts without processing a frame twice (ledger in the workspace). "
                    "SIGTERM/SIGINT stop it cleanly (exit 0). See docs/unattended.md for a systemd unit.")
    p.add_argument("directory", metavar="DIR")
    add_frame_options(p)
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between polls (default 2)")
    p.add_argument("--settle", type=float, default=5.0, metavar="S",
                   help="a frame must keep its size and mtime this many seconds (default 5)")
    p.add_argument("--incomplete-grace", type=float, default=120.0, metavar="S",
                   help="process a stable but incomplete FITS after this many seconds (default 120)")
    p.add_argument("--recursive", "-r", action="store_true", help="also watch sub-folders")
    p.add_argument("--ignore-existing", action="store_true", help="skip frames already there at start")
    p.add_argument("--once", action="store_true", help="process what is there, then exit (for cron)")
    p.set_defaults(func=cmd_watch)
