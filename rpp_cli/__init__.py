"""The ``rpp`` command line, above :mod:`rpp_core` (the pipeline) and :mod:`rpp_tui` (the app).

One module per command group, each with ``register(subparsers)``; :mod:`rpp_cli.main`
builds the parser from them. Modules import only argparse at load time and the
core (astropy, numpy, the pipeline, textual) inside their command functions, so
``rpp --help`` answers at once.
"""


def entry() -> None:
    """The ``rpp`` console script and ``python -m rpp_cli``.

    From the first line on, Ctrl-C or SIGTERM ends the command with one line and
    exit code 130, never a traceback: while rpp starts (imports, argument
    parsing) it leaves at once, as there is nothing to tidy; then
    :func:`rpp_cli.main.main` takes the signals over (a run cancels, see
    ``rpp_cli.run``).
    """
    import sys

    _leave_on_signals()
    from .main import main

    sys.exit(main(own_signals=True))


def _leave_on_signals() -> None:
    import os
    import signal

    def early(signum, frame):  # noqa: ARG001 - the signal module's signature
        os.write(2, f"rpp: {signal_words(signum)}\n".encode())
        os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, early)


def signal_words(signum: int) -> str:
    """How a line says what stopped rpp: ``interrupted (Ctrl-C)``, ``terminated (SIGTERM)``."""
    import signal

    return "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"


def _started_as_the_program() -> bool:
    import sys
    from pathlib import Path

    return bool(sys.argv) and (sys.argv[0] == "-m" or Path(sys.argv[0]).name == "rpp")


if _started_as_the_program():  # `rpp ...` or `python -m rpp_cli ...`: no Ctrl-C traceback even while importing
    _leave_on_signals()
