"""Command line: ``rpp`` (the app), ``rpp run``, ``rpp demo``, ``rpp profile ...`` and friends.

Exit codes are those of :mod:`rpp_core.errors`: 0 ok, 2 usage, 3 bad input,
4 no stars, 5 calibration failed, 6 no WCS, 7 service failure, 130 cancelled,
1 internal error. Errors print one line on stderr, never a traceback
(``RPP_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
import traceback

from . import __version__, events as ev, locations, settings
from .errors import RppError, UsageError


class ConsoleReporter:
    """Turns pipeline events into progress lines on a terminal (or plain lines in a log)."""

    def __init__(self, stream=sys.stderr, quiet: bool = False, verbose: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose
        self.tty = stream.isatty()
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


def print_summary(result, stream=sys.stdout) -> None:
    s = result.summary
    def f(key, fmt="{:.3f}", unit=""):
        v = s.get(key)
        return "n/a" if v is None else fmt.format(v) + unit
    lines = [
        "",
        f"Frame       {s['frame']}",
        f"FWHM        {f('fwhm_px', '{:.2f}', ' px')}" + (f" ({s['fwhm_arcsec']:.2f}\")" if s.get("fwhm_arcsec") else ""),
        f"Sources     {s.get('n_sources', 0)}",
        f"WCS         {s.get('wcs', {}).get('status', 'n/a')}",
    ]
    if s.get("zp") is not None:
        lines += [
            f"Calibrators {s.get('n_calibrators', 0)} ({s.get('n_rejected', 0)} rejected) from {s.get('reference', '')}",
            f"Zero point  {s['zp']:.4f} ± {s['zp_err']:.4f} mag ({s.get('band', '')}, aperture {s.get('calibration_label', '')})",
        ]
    else:
        lines.append("Zero point  not calibrated")
    lines += [f"Airmass     {f('airmass')}", f"Time        {s.get('total_seconds', 0):.1f} s",
              f"Results     {result.run_dir}"]
    if "zip" in result.files:
        lines.append(f"Archive     {result.files['zip']}")
    stream.write("\n".join(lines) + "\n")


def _apply_sets(profile: settings.Profile, sets: list[str]) -> settings.Profile:
    changes = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: use section.name=value, e.g. --set detection.threshold_sigma=4")
        changes[key.strip()] = value.strip()
    return profile.replace(**changes) if changes else profile


def _run_frame(args, frame: str, catalogs: list[str]) -> int:
    from . import pipeline

    profile = _apply_sets(settings.load_profile(args.profile), args.set)
    _check_before_run(profile, frame, catalogs)
    reporter = ConsoleReporter(quiet=args.quiet, verbose=args.verbose)
    cancel = asyncio.Event()

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, cancel.set)
        return await pipeline.run(frame, profile, reporter, cancel, out_dir=args.out, catalog_files=catalogs,
                                  hdu=args.hdu, offline=True if args.offline else None)

    result = asyncio.run(main())
    if args.json:
        json.dump({"run_dir": str(result.run_dir), "exit_code": result.exit_code, **result.summary},
                  sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print_summary(result)
    if result.exit_code:
        sys.stderr.write(f"rpp: {result.message}\n")
    return result.exit_code


def _check_before_run(profile: settings.Profile, frame: str, catalogs: list[str]) -> None:
    """rpp_core.preflight before the run: missing files or columns fail in a second, with the option to change."""
    from .errors import InputError
    from .preflight import preflight

    if catalogs:
        profile = profile.replace(**{"calibration.catalog_files": [*profile.calibration.catalog_files, *map(str, catalogs)]})
    problems = preflight(profile, frame)
    for p in problems:
        if p.severity != "error":
            sys.stderr.write(f"rpp: warning: {p.advice('cli')}\n")
    errors = [p for p in problems if p.severity == "error"]
    for p in errors[1:]:
        sys.stderr.write(f"rpp: {p.advice('cli')}\n")
    if errors:
        raise (InputError if errors[0].setting == "frame" else UsageError)(errors[0].advice("cli"))


def cmd_run(args) -> int:
    return _run_frame(args, args.frame, args.catalog or [])


def cmd_demo(args) -> int:
    """Run on the bundled sample frame with the bundled offline reference catalogue."""
    frame = locations.package_data("sample_frame.fits.gz")
    refcat = locations.package_data("sample_refcat.ecsv")
    if not args.profile:
        args.profile = str(locations.package_data("sample_profile.toml"))
    args.offline = True
    return _run_frame(args, str(frame), [str(refcat)])


def cmd_tui(args) -> int:
    from rpp_tui.app import run_app

    return run_app(getattr(args, "path", None), getattr(args, "profile", None))


def cmd_profile(args) -> int:
    action = args.action
    if action == "list":
        names = settings.list_profiles()
        print("\n".join(names) if names else f"no profiles in {locations.profiles_dir()} (rpp profile new NAME)")
    elif action == "path":
        print(locations.profiles_dir())
    elif action == "show":
        print(settings.dumps(settings.load_profile(args.name or "default")), end="")
    elif action == "new":
        if not args.name:
            raise UsageError("rpp profile new NAME")
        if settings.profile_path(args.name).exists() and not args.force:
            raise UsageError(f"profile {args.name!r} exists ({settings.profile_path(args.name)}); use --force to overwrite")
        base = settings.load_profile(args.base) if args.base else settings.Profile()
        base.name = args.name
        print(settings.save_profile(_apply_sets(base, args.set)))
    elif action == "set":
        if not args.name or not args.set:
            raise UsageError("rpp profile set NAME --set section.key=value [...]")
        prof = _apply_sets(settings.load_profile(args.name), args.set)
        print(settings.save_profile(prof))
    elif action == "delete":
        settings.delete_profile(args.name)
        print(f"deleted profile {args.name}")
    elif action == "rename":
        print(settings.rename_profile(args.name, args.new_name))
    return 0


def cmd_secret(args) -> int:
    if args.action == "set":
        # hidden prompt on a terminal; one line from stdin otherwise (scripts, provisioning)
        value = getpass.getpass(f"{args.key} (input hidden): ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        path = settings.save_secret(args.key, value)
        print(f"stored {args.key} in {path} (mode 0600)")
    elif args.action == "list":
        for key, value in settings.load_secrets().items():
            print(f"{key}: {settings.mask_secret(value)}")
    elif args.action == "delete":
        settings.save_secret(args.key, "")
        print(f"removed {args.key}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", "-p", help="profile name (in the config dir) or path to a TOML file")
    p.add_argument("--out", "-o", help="parent folder of run folders (default: the workspace)")
    p.add_argument("--hdu", type=int, help="HDU index of the image (default: first image HDU)")
    p.add_argument("--offline", action="store_true", help="use only cached answers and local catalogue files")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a profile setting (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings, errors and the summary")
    p.add_argument("--verbose", "-v", action="store_true", help="show log lines too")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpp", description="RPP photometry pipeline. Without a command, opens the terminal app.",
        epilog="exit codes: 0 ok, 2 usage, 3 bad input, 4 no stars, 5 calibration failed, 6 no WCS, "
               "7 service failure, 130 cancelled, 1 internal error")
    parser.add_argument("--version", action="version", version=f"rpp {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("run", help="process one frame")
    p.add_argument("frame", help="FITS file (.fits, .fit, .fts, .fz, .gz)")
    p.add_argument("--catalog", "-c", action="append", metavar="FILE", help="local reference catalogue (repeatable)")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run on the bundled sample frame and offline reference catalogue")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tui", help="open the terminal app (same as plain `rpp`)")
    p.add_argument("path", nargs="?", help="folder or frame to start in")
    p.add_argument("--profile", "-p")
    p.set_defaults(func=cmd_tui)

    p = sub.add_parser("profile", help="manage profiles (TOML in the config dir)")
    p.add_argument("action", choices=["list", "show", "new", "set", "delete", "rename", "path"])
    p.add_argument("name", nargs="?")
    p.add_argument("new_name", nargs="?")
    p.add_argument("--base", help="copy this profile when creating")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("secret", help="API keys in the 0600 secrets file")
    p.add_argument("action", choices=["set", "list", "delete"])
    p.add_argument("key", nargs="?", default="astrocolibri_uid")
    p.set_defaults(func=cmd_secret)

    for modname in ("batch", "watch", "cleanup", "astrometry"):
        try:
            mod = __import__(f"rpp_core.{modname}", fromlist=["register_cli"])
        except ImportError:
            continue
        if hasattr(mod, "register_cli"):
            mod.register_cli(sub)
    return parser


def _tui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpp tui", description="open the terminal app")
    p.add_argument("path", nargs="?", help="folder or frame to start in")
    p.add_argument("--profile", "-p")
    p.set_defaults(func=cmd_tui)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] == "tui":
        # the app's own start: without building the full parser, which imports the batch, watch,
        # cleanup and astrometry modules (astropy, scipy: seconds before the first frame is drawn)
        args = _tui_parser().parse_args(argv[1:])
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            args = parser.parse_args(["tui", *argv])
    try:
        code = args.func(args)
    except RppError as exc:
        sys.stderr.write(f"rpp: {exc}\n")
        if os.environ.get("RPP_DEBUG"):
            traceback.print_exc()
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("rpp: interrupted\n")
        code = 130
    except Exception as exc:  # last resort: one line, details with RPP_DEBUG=1
        sys.stderr.write(f"rpp: internal error: {type(exc).__name__}: {exc} (run with RPP_DEBUG=1 for the traceback; please report it)\n")
        if os.environ.get("RPP_DEBUG"):
            traceback.print_exc()
        code = 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
