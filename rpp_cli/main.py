"""``rpp``: the command line. Without a command it opens the terminal app.

Exit codes are those of :mod:`rpp_core.errors`: 0 ok, 2 usage, 3 bad input,
4 no stars, 5 calibration failed, 6 no WCS, 7 service failure, 8 results not
written, 130 cancelled, 1 internal error. Errors print one line on stderr, never a traceback
(``RPP_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from rpp_core import __version__
from rpp_core.errors import RppError

from . import batch, cache, clean, index, profile, run, tui, watch

#: command groups in the order ``rpp --help`` lists them; each has ``register(subparsers)``
COMMANDS = (run, tui, profile, batch, watch, clean, cache, index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpp", description="RPP photometry pipeline. Without a command, opens the terminal app.",
        epilog="exit codes: 0 ok, 2 usage, 3 bad input, 4 no stars, 5 calibration failed, 6 no WCS, "
               "7 service failure, 8 results not written (disk full, read-only), 130 cancelled (Ctrl-C, SIGTERM), "
               "1 internal error")
    parser.add_argument("--version", action="version", version=f"rpp {__version__}")
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) outside a run: ends the command like Ctrl-C, saying which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):  # noqa: ARG001 - the signal module's signature
    raise Terminated(signum)


def main(argv: list[str] | None = None, *, own_signals: bool = False) -> int:
    """Run the command in ``argv``; its exit code. ``own_signals``: this is the program (``rpp_cli.entry``),
    so Ctrl-C and SIGTERM become exceptions ended here with one line (a library caller keeps its own)."""
    import signal

    argv = sys.argv[1:] if argv is None else argv
    if not os.environ.get("RPP_DEBUG"):
        import warnings

        # the terminal shows rpp's own lines; a run logs the libraries' warnings in its run.log
        warnings.simplefilter("ignore")
    if own_signals:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            args = parser.parse_args(["tui", *argv])
        code = args.func(args)
    except RppError as exc:
        sys.stderr.write(f"rpp: {exc}\n")
        if os.environ.get("RPP_DEBUG"):
            traceback.print_exc()
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        from . import signal_words

        sys.stderr.write(f"rpp: {signal_words(getattr(exc, 'signum', signal.SIGINT))}\n")
        code = 130
    except Exception as exc:  # last resort: one line, details with RPP_DEBUG=1
        sys.stderr.write(f"rpp: internal error: {type(exc).__name__}: {exc} (run with RPP_DEBUG=1 for the traceback; please report it)\n")
        if os.environ.get("RPP_DEBUG"):
            traceback.print_exc()
        code = 1
    return int(code or 0)


if __name__ == "__main__":
    from rpp_cli import entry

    entry()
