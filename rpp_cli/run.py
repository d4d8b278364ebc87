"""``rpp run FRAME`` and ``rpp demo``: one frame, progress on the terminal, the summary at the end."""

from __future__ import annotations

import argparse
import json
import sys

from rpp_core import __version__
from rpp_core import events as ev

from .options import add_frame_options, profile_from_args


class ConsoleReporter:
    """Turns pipeline events into progress lines on a terminal (or plain lines in a log)."""

    def __init__(self, stream=None, quiet: bool = False, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr  # looked up now, not at import: a caller may have redirected it
        self.quiet = quiet
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self._progress_shown = False

    def _line(self, text: str) -> None:
        if self._progress_shown:
            self.stream.write("\r\033[K")
            self._progress_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Warning):
            self._line(f"warning [{event.stage}]: {event.message}")
            return
        if isinstance(event, ev.RunFailed):
            return
        if self.quiet:
            return
        if isinstance(event, ev.RunStarted):
            self._line(f"rpp {__version__}: {event.path} (profile {event.profile}) -> {event.run_dir}")
        elif isinstance(event, ev.StageStarted):
            label = ev.STAGE_LABELS[event.stage]
            if self.tty:
                self.stream.write(f"\r\033[K[{event.index + 1:2d}/{event.total}] {label} ...")
                self.stream.flush()
                self._progress_shown = True
        elif isinstance(event, ev.StageProgress):
            if self.tty:
                label = ev.STAGE_LABELS[event.stage]
                pct = 100.0 * event.done / max(event.total, 1)
                width = 20
                bar = "#" * int(width * pct / 100) + "-" * (width - int(width * pct / 100))
                self.stream.write(f"\r\033[K      {label} [{bar}] {pct:5.1f}% {event.message}")
                self.stream.flush()
                self._progress_shown = True
        elif isinstance(event, ev.StageFinished):
            idx = ev.STAGE_NAMES.index(event.stage)
            figs = ", ".join(f"{k}={_short(v)}" for k, v in event.figures.items())
            self._line(f"[{idx + 1:2d}/{len(ev.STAGES)}] {ev.STAGE_LABELS[event.stage]:<22} {event.seconds:7.2f} s  {figs}")
        elif isinstance(event, ev.StageSkipped):
            idx = ev.STAGE_NAMES.index(event.stage)
            self._line(f"[{idx + 1:2d}/{len(ev.STAGES)}] {ev.STAGE_LABELS[event.stage]:<22}  skipped: {event.reason}")
        elif isinstance(event, ev.LogLine) and self.verbose:
            self._line(f"  {event.level.lower()}: {event.message}")


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_summary(result, stream=None) -> None:
    stream = stream or sys.stdout
    s = result.summary

    def f(value, fmt="{:.3f}", unit=""):
        return "n/a" if value is None else fmt.format(value) + unit

    lines = [
        "",
        f"Frame       {s.frame}",
        f"FWHM        {f(s.fwhm_px, '{:.2f}', ' px')}" + (f" ({s.fwhm_arcsec:.2f}\")" if s.fwhm_arcsec else ""),
        f"Sources     {s.n_sources or 0}",
        f"WCS         {s.wcs.status if s.wcs else 'n/a'}",
    ]
    if s.zp is not None and s.from_header:
        lines.append(f"Zero point  {s.zp:.4f} mag from the {s.calibration_source} (no reference catalogue)")
    elif s.zp is not None:
        lines += [
            f"Calibrators {s.n_calibrators} ({s.n_rejected} rejected) from {s.reference}",
            f"Zero point  {s.zp:.4f} ± {s.zp_err:.4f} mag ({s.band}, aperture {s.calibration_label})",
        ]
        hz = s.header_zp or {}
        if hz.get("zp") is not None:  # issue 9: the header's own zero point beside the fitted one
            diff = hz.get("fitted_minus_header")
            lines.append(f"Header ZP   {hz['zp']:.4f} mag from the {hz.get('source', 'header')}"
                         + (f" (fitted - header {diff:+.3f}: the aperture's loss and the reference)"
                            if diff is not None else ""))
    else:
        lines.append("Zero point  not calibrated")
    lines += [f"Airmass     {f(s.airmass)}", f"Time        {s.total_seconds or 0:.1f} s",
              f"Results     {result.run_dir}"]
    if "zip" in result.files:
        lines.append(f"Archive     {result.files['zip']}")
    stream.write("\n".join(lines) + "\n")


def _run_frame(args, frame: str, catalogs: list[str]) -> int:
    import signal

    from rpp_core import runner
    from rpp_core.cleanup import apply_retention
    from rpp_core.errors import Cancelled

    from . import signal_words
    from .main import Terminated

    # Ctrl-C and SIGTERM are kept, not raised, until the run's event loop takes them over: a
    # KeyboardInterrupt raised at any bytecode could land in a weakref callback or a finaliser (the
    # import system's), where Python prints "Exception ignored" and drops it, and the run went on
    # (1 start in 5 on a loaded machine). Said at once when the loop is there, before any worker.
    # A second signal is raised at once: a check stuck on a dead network mount can still be interrupted.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    kept: list[int] = []

    def keep(signum, frame):  # noqa: ARG001 - the signal module's signature
        if kept:
            raise Terminated(signum)
        kept.append(signum)

    for sig in handlers:
        signal.signal(sig, keep)
    try:
        profile = profile_from_args(args)
        # the worker's imports (what this profile uses) run beside the checks below
        runner.warm_up(profile.replace(**{"services.offline": True}) if args.offline else profile)
        import asyncio  # after the server's start: its imports wait for nothing but this process's start

        _check_before_run(profile, frame, catalogs)
    except BaseException:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if kept:  # the signal came first: it is what ends rpp, not what a check found meanwhile
            raise Terminated(kept[0]) from None
        raise
    reporter = ConsoleReporter(quiet=args.quiet, verbose=args.verbose)
    request = runner.RunRequest(frame, profile, out_dir=args.out, catalog_files=tuple(catalogs), hdu=args.hdu,
                                offline=True if args.offline else None, keep_catalog=False,
                                weight=getattr(args, "weight", None), mask=getattr(args, "mask", None),
                                check_files=True)

    received: list[int] = []

    async def main():
        cancel = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            received.append(signum)
            cancel.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        if kept:  # before the loop had them: nothing has started, so rpp just leaves
            raise Terminated(kept[0])
        return await runner.run(request, reporter, cancel)

    # the loop puts SIG_DFL back when it closes: a SIGTERM while the summary prints would end rpp silently
    try:
        result = asyncio.run(main())
    except Cancelled as exc:
        if received:  # say which signal stopped the run, as everywhere else in rpp
            raise Cancelled(f"{exc}: {signal_words(received[0])}") from None
        raise
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    apply_retention(result.run_dir.parent, profile.output, keep=result.run_dir)
    if args.json:
        json.dump(result.summary.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(result)
    if result.exit_code:
        sys.stderr.write(f"rpp: {result.message}\n")
    return result.exit_code


def _check_before_run(profile, frame: str, catalogs: list[str]) -> None:
    """rpp_core.preflight before the run: missing files fail in a second, naming the option to change.
    What reading the files finds (columns, values, whether the frame can be solved) the worker checks
    before its first stage (RunRequest.check_files): it has astropy imported, this process has not."""
    from rpp_core.errors import InputError, UsageError
    from rpp_core.preflight import preflight

    problems = preflight(profile.with_catalog_files(catalogs), frame, read_files=False)
    for p in problems:
        if p.severity != "error":
            # worded like the run's own warnings: "rpp: " lines are reserved for what stops the command
            sys.stderr.write(f"warning [before the run]: {p.advice('cli')}\n")
    errors = [p for p in problems if p.severity == "error"]
    for p in errors[1:]:
        sys.stderr.write(f"rpp: {p.advice('cli')}\n")
    if errors:
        raise (InputError if errors[0].setting == "frame" else UsageError)(errors[0].advice("cli"))


def cmd_run(args) -> int:
    return _run_frame(args, args.frame, args.catalog or [])


def cmd_demo(args) -> int:
    """Run on the bundled sample frame with the bundled offline reference catalogue."""
    from rpp_core import locations

    frame = locations.package_data("sample_frame.fits.gz")
    refcat = locations.package_data("sample_refcat.ecsv")
    if not args.profile:
        args.profile = str(locations.package_data("sample_profile.toml"))
    args.offline = True
    return _run_frame(args, str(frame), [str(refcat)])


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true", help="show log lines too")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def register(sub) -> None:
    p = sub.add_parser("run", help="process one frame")
    p.add_argument("frame", help="FITS file (.fits, .fit, .fts, .fz, .gz)")
    add_frame_options(p)
    p.add_argument("--weight", metavar="FILE", help="inverse-variance weight map of the frame (default: a DECam-style "
                   "_oow_ file beside an _ooi_ image)")
    p.add_argument("--mask", metavar="FILE", help="bad-pixel mask of the frame, nonzero = bad (default: an _ood_ file)")
    _add_output_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run on the bundled sample frame and offline reference catalogue")
    add_frame_options(p, catalog=False)
    _add_output_options(p)
    p.set_defaults(func=cmd_demo)
