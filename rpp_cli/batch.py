"""``rpp batch FILES_OR_DIRS``: many frames on a local process pool or a Dask cluster, one night summary."""

from __future__ import annotations

import sys

from rpp_core.errors import UsageError

from .options import add_frame_options, profile_from_args


def _progress(total: int, quiet: bool):
    """A rich progress bar on stderr; off when stderr is not a terminal (logs, systemd) or with --quiet."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                        console=console, disable=quiet or not console.is_terminal, transient=True)
    task = progress.add_task("frames", total=total, failed=0)
    return progress, task


def cmd_batch(args) -> int:
    import signal
    import threading

    from rpp_core.batch import run_batch, stats_lines

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more worker processes")
    profile = profile_from_args(args)
    stop = threading.Event()
    bar: dict = {}
    failed = [0]

    def on_start(total: int) -> None:
        bar["progress"], bar["task"] = _progress(total, args.quiet)
        bar["progress"].start()

    def on_result(res, n: int, total: int) -> None:
        if res.status == "failed":
            failed[0] += 1
            print(res.line(n, total), file=sys.stderr if args.quiet else sys.stdout, flush=True)
        elif not args.quiet:
            print(res.line(n, total), flush=True)
        bar["progress"].update(bar["task"], completed=n, failed=failed[0])

    def on_signal(signum, frame) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_batch(args.inputs, profile, jobs=args.jobs, scheduler=args.scheduler, out_dir=args.out,
                           catalog_files=args.catalog or [], offline=True if args.offline else None, hdu=args.hdu,
                           force=args.force, recursive=args.recursive, on_result=on_result, on_start=on_start,
                           stop=stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if "progress" in bar:
            bar["progress"].stop()
    if report.interrupted:
        print("rpp batch: interrupted; frames not finished will be processed by the next run", file=sys.stderr)
    if report.report_dir:
        if not args.quiet:
            print("\n".join(stats_lines(report.results, report.wall_s)))
        print(f"night summary: {report.files.get('night_summary.txt', report.report_dir)}")
    return report.exit_code


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="process many frames (local process pool or a Dask cluster) with a night summary",
        description="Process every frame named or found in the folders. One bad frame never stops the batch. "
                    "Frames already done with the same profile are skipped (see --force). A night summary "
                    "(CSV, text, zero point and FWHM over time) goes to <workspace>/batch_<timestamp>/.",
        epilog="exit code: 0 when every frame is ok (or was done before), else the exit code of the first "
               "frame that failed or degraded, 130 when interrupted")
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    add_frame_options(p)
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="worker processes (default: number of CPUs)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask distributed scheduler instead")
    p.add_argument("--force", action="store_true", help="redo frames already done with this profile")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not look into sub-folders")
    p.set_defaults(func=cmd_batch)
