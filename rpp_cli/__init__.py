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

    code = main(own_signals=True)
    _leave(code)
    sys.exit(code)


def _leave(code: int) -> None:
    """End the process now that the command is done, without the interpreter's teardown.

    Measured on ``rpp demo``: the process exited 0.5-0.6 s after its summary
    (freeing ~900 modules: astropy, numpy, the pipeline's preflight), and a
    pipe reading rpp's output saw its end ~1 s later still, when the runner's
    forkserver (which holds the same stdout and stderr) had torn down its own
    interpreter. So the forkserver is ended here, the ``atexit`` handlers run,
    the streams are flushed and the process leaves with ``os._exit``. Returns
    (and the caller exits the usual way) when another non-daemon thread is
    still alive: its work is not ours to cut short.
    """
    import atexit
    import os
    import sys
    import threading

    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    runner = sys.modules.get("rpp_core.runner")
    if runner is not None:
        runner.end_forkserver()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (rpp run | head): nothing left to tell anyone
            pass
    os._exit(code)


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
