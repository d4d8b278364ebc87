"""One runner for every run: the app, ``rpp run``, batch, watch and Dask all go through it.

:func:`run` executes a :class:`RunRequest` in a worker process of its own and
streams its :mod:`rpp_core.events` back over a pipe to the same ``on_event``
contract as :func:`rpp_core.pipeline.run` (called on the caller's event-loop
thread), then returns the :class:`~rpp_core.products.RunResult` or raises the
run's :class:`~rpp_core.errors.RppError`.

Process model
-------------
- Workers fork from a forkserver that imported the pipeline once (about 10 ms
  a run after the first, instead of re-importing astropy); each worker starts
  a session of its own, and solver subprocesses (``solve-field``,
  ``siril-cli``) stay in that session in process groups of their own.
- Cancel: the worker is asked first (SIGTERM sets its cancel event: a stage
  stops at its next check, the run log and a ``cancelled`` summary are
  written); after :data:`CANCEL_GRACE_S` every process of its session is
  killed, solvers included, and the runner writes the summary itself. A stage
  holding the interpreter lock therefore delays a cancel by at most the grace.
- A worker that dies (out of memory, a crash in a library) fails the run
  (exit 1) with the signal named; a caller cancelled while waiting (the app
  quitting) kills the session before it returns.
- The worker has no environment of its own to rely on (a forkserver keeps the
  one it started with): the request carries the workspace, the catalogue
  cache and the API keys, resolved by the caller.

Batch pool workers and Dask tasks already are worker processes: they call
:func:`execute`, the same entry the runner's workers call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import events as ev
from .errors import Cancelled, RppError
from .settings import Profile

if TYPE_CHECKING:  # imported where used: `rpp run` starts the forkserver before it needs asyncio (0.04 s sooner)
    import asyncio

#: modules a forkserver imports once, so that forked workers start at once (pyarrow too: its import,
#: 0.3 s, was paid in every run's Outputs). ``rpp_core.image`` exports lazily: its stage modules are named.
CORE_PRELOAD = ["rpp_core.forkserver_gc",  # first: the rest is imported with the cyclic GC off (see there)
                "rpp_core.pipeline", "rpp_core.image.load", "rpp_core.image.metadata", "rpp_core.image.companions",
                "rpp_core.preprocess", "rpp_core.detect", "rpp_core.photometry", "rpp_core.calibrate",
                "rpp_core.results", "rpp_core.figures", "pyarrow.csv", "pyarrow.parquet"]
#: what only some profiles use: the stage that needs one imports it (see :func:`preload_for`)
OPTIONAL_PRELOAD = {"astrometry": ["rpp_core.astrometry"], "services": ["rpp_core.catalogs.gaia", "rpp_core.catalogs.crossmatch"],
                    "cosmic_rays": ["astroscrappy"]}
#: only for a forkserver that serves many runs: for one run, the figures' drawers
#: (:class:`rpp_core.results.FigureDrawers`), forked before the frame is loaded, import matplotlib on the
#: other core while the stages run, and the server's 0.2-0.3 s for it came before the first stage
LONG_LIVED_ONLY = ["matplotlib.figure", "matplotlib.backends.backend_agg"]
#: everything, for a forkserver that serves many runs (the app, batch, watch)
PRELOAD = CORE_PRELOAD + LONG_LIVED_ONLY + [m for mods in OPTIONAL_PRELOAD.values() for m in mods]


def preload_for(profile: Profile) -> list[str]:
    """The modules a run of ``profile`` will use, for a forkserver that serves one run (``rpp run``):
    no astrometry.net planning when solving is off, no HTTP client offline (0.1-0.3 s each)."""
    mods = list(CORE_PRELOAD)
    if profile.astrometry.solve != "never":
        mods += OPTIONAL_PRELOAD["astrometry"]
    if not profile.services.offline:
        mods += OPTIONAL_PRELOAD["services"]
    if profile.cosmic_rays.enabled:
        mods += OPTIONAL_PRELOAD["cosmic_rays"]
    return mods


#: seconds a cancelled worker has to stop by itself before its session is killed
CANCEL_GRACE_S = 0.5
_STDERR_LOCK = threading.Lock()


@dataclass(frozen=True)
class RunRequest:
    """Everything a worker needs to process one frame (plain data: it crosses a process boundary).

    ``out_dir`` is the workspace receiving the run folder; ``cache_dir`` the
    catalogue answer cache and ``secrets`` the API keys. :meth:`resolved` fills
    the ones left None from this process's locations and secrets file (a Dask
    task leaves them None so the worker machine uses its own).
    ``keep_catalog`` False sends the result back without the catalogue table
    and the WCS object (:meth:`~rpp_core.products.RunResult.summary_only`: both
    are in the run folder): a caller that only prints the summary then never
    imports astropy. ``nice`` lowers the worker's CPU priority: the app
    asks for it, so that on a busy machine the screen gets the CPU before the run.
    ``weight`` (inverse-variance map) and ``mask`` (nonzero = bad) are files that
    go with the frame; None lets the pipeline look for DECam-style companions.
    ``check_files`` asks the worker for :func:`rpp_core.preflight.file_problems` first, in the CLI's
    words (``rpp run`` checks the rest itself): the worker has astropy imported already, and the
    CLI's own check imported it for 0.5-0.6 s of CPU beside the server's imports.
    """

    path: str
    profile: Profile
    out_dir: str | None = None
    catalog_files: tuple[str, ...] = ()
    hdu: int | None = None
    offline: bool | None = None
    cache_dir: str | None = None
    secrets: dict | None = None
    keep_catalog: bool = True
    nice: int = 0
    weight: str | None = None
    mask: str | None = None
    check_files: bool = False

    def resolved(self) -> "RunRequest":
        """The request with workspace, cache and keys taken from this process where not given."""
        from . import locations
        from .settings import load_secrets_or_warning

        secrets, profile = self.secrets, self.profile
        if secrets is None:
            # a forkserver worker keeps the environment it started with: the keys are read here, and a
            # file that cannot be read becomes a warning of the run (the profile's notes are shown at load)
            secrets, warning = load_secrets_or_warning()
            if warning:
                profile = dataclasses.replace(profile, notes=[*profile.notes, warning])
        return dataclasses.replace(
            self, path=str(Path(self.path).expanduser()), profile=profile,
            weight=str(Path(self.weight).expanduser()) if self.weight else None,
            mask=str(Path(self.mask).expanduser()) if self.mask else None,
            out_dir=str(self.out_dir) if self.out_dir else str(locations.workspace_dir()),
            cache_dir=str(self.cache_dir) if self.cache_dir else str(locations.catalog_cache_dir()), secrets=secrets)


# ---------------------------------------------------------------- the entry (worker side)

async def execute_async(request: RunRequest, on_event: Callable[[ev.Event], None] | None = None,
                        cancel: asyncio.Event | None = None):
    """Run the pipeline on ``request`` in this process: the one entry every worker uses."""
    from . import pipeline

    if request.check_files:
        await _check_files(request, on_event or (lambda e: None), cancel)
    return await pipeline.run(request.path, request.profile, on_event, cancel, out_dir=request.out_dir,
                              catalog_files=request.catalog_files, hdu=request.hdu, offline=request.offline,
                              cache_dir=request.cache_dir, secrets=request.secrets,
                              weight=request.weight, mask=request.mask)


async def _check_files(request: RunRequest, on_event: Callable[[ev.Event], None], cancel: asyncio.Event | None) -> None:
    """``rpp run``'s checks that read files, as it words them: warnings as events of the stage
    "before the run", errors raised as one :class:`~rpp_core.errors.UsageError`, a line each.

    Read in a thread, so that a cancel (SIGTERM: Ctrl-C in the CLI) is taken meanwhile; once asked,
    :class:`~rpp_core.errors.Cancelled` is raised before the run makes its folder."""
    import asyncio

    from .errors import UsageError
    from .preflight import file_problems

    profile = request.profile.with_catalog_files(request.catalog_files)
    problems = await asyncio.to_thread(file_problems, profile, request.path)
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    for p in problems:
        if p.severity != "error":
            on_event(ev.Warning(stage="before the run", message=p.advice("cli")))
    errors = [p.advice("cli") for p in problems if p.severity == "error"]
    if errors:
        raise UsageError("\nrpp: ".join(errors))  # the CLI prints "rpp: " before the first


def execute(request: RunRequest, on_event: Callable[[ev.Event], None] | None = None):
    """Blocking :func:`execute_async`, for batch pool workers and Dask tasks."""
    import asyncio

    return asyncio.run(execute_async(request, on_event))


def _worker_main(request: RunRequest, conn) -> None:
    """A runner worker: its own session, events and the outcome sent over ``conn``."""
    import asyncio

    os.setsid()
    if request.nice:
        os.nice(request.nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to decide on
    stop_asked: list[int] = []
    # a cancel can come before the event loop takes SIGTERM over: kept, not fatal
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_asked.append(signum))
    with open(os.devnull, "w") as null:
        # library chatter must not write over a terminal app: the run log has what matters
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)

    async def main():
        cancel = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, cancel.set)
        if stop_asked:
            cancel.set()

        def send(event: ev.Event) -> None:
            if isinstance(event, ev.RunFinished):
                return  # the result follows once, below; the caller announces it
            try:
                conn.send(("event", event))
            except (BrokenPipeError, OSError):
                cancel.set()  # nobody is listening any more

        return await execute_async(request, send, cancel)

    try:
        result = asyncio.run(main())
        if not request.keep_catalog:
            result = result.summary_only()
        conn.send(("result", result))
    except RppError as exc:
        conn.send(("error", exc))
    except BaseException as exc:  # noqa: BLE001 - anything else is a bug, reported as one line
        conn.send(("error", RppError(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it)\n"
                                     + traceback.format_exc())))
    finally:
        conn.close()


# ---------------------------------------------------------------- the runner (caller side)

def process_context(preload: list[str] | None = None):
    """The multiprocessing context of runner workers and batch pools (forkserver with the pipeline preloaded).

    ``preload`` (default :data:`PRELOAD`) counts only when this call starts the server.

    Workers import numpy without its transparent-huge-page advice (NUMPY_MADVISE_HUGEPAGE=0,
    unless the user set it): on a machine whose memory is fragmented the kernel compacts
    memory at the first touch of each advised array, and a 4k run spent 0.75-1.5 s of
    system time there (background 1.0-1.2 s against 0.4 s with plain pages; CPU of the
    whole run 6.5-7.5 s against 5.8-6.6 s, three runs each)."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")  # inherited by the server when it starts
    os.environ["RPP_FORKSERVER_OF"] = str(os.getpid())  # rpp_core.forkserver_gc: the server is this process's child
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD if preload is None else preload)
    except ValueError:  # no forkserver on this platform
        ctx = multiprocessing.get_context("spawn")
    return ctx


@contextlib.contextmanager
def _real_stderr():
    """A real ``sys.stderr`` while multiprocessing starts a helper process: it hands the descriptor
    of ``sys.stderr`` to its helpers, and an app that captures it (Textual) has none to give."""
    try:
        usable = sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        usable = False
    if usable:
        yield
        return
    with _STDERR_LOCK:
        saved = sys.stderr
        sys.stderr = sys.__stderr__ or open(os.devnull, "w")
        try:
            yield
        finally:
            sys.stderr = saved


@contextlib.contextmanager
def _spawning():
    """Around anything that may start the forkserver: a real stderr and, in the main thread,
    SIGINT ignored so that the server starts with it ignored (an ignored signal stays ignored
    across exec; the signal mask does not reach it). Ctrl-C goes to the whole foreground
    process group: a server still starting Python or importing its preload printed a
    KeyboardInterrupt traceback under rpp's one line. Its workers ignore SIGINT anyway (the
    caller decides). A Ctrl-C meanwhile is held (blocked) and delivered to the caller's
    handler when this ends. Other threads cannot change handlers: the CLI starts the server
    from its main thread (:func:`warm_up`) before any run; the app gets no SIGINT for Ctrl-C.

    multiprocessing's resource tracker is started first, outside the window: starting it,
    CPython blocks SIGINT and then *unblocks* it whatever the mask was before, and a Ctrl-C
    in the rest of the window then met the ignored handler and was lost (the run went on;
    1 start in 5 on a loaded machine, signal 50-100 ms after rpp started)."""
    with _real_stderr():
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # safe as it is: it blocks SIGINT and SIGTERM around its own spawn
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _start(proc) -> None:
    with _spawning():
        proc.start()


def warm_up(profile: Profile | None = None) -> None:
    """Start the forkserver now, without waiting for it: it imports the pipeline (about 1.4 s of
    CPU) while the caller does its own checks, so a one-shot ``rpp run`` overlaps the two.
    ``profile``: the one run it will serve (only what that run uses is imported)."""
    if process_context(None if profile is None else preload_for(profile)).get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _spawning():
        forkserver.ensure_running()  # spawns the server and returns; the server imports PRELOAD by itself


def end_forkserver() -> None:
    """End this process's forkserver, if it started one (a one-shot command leaving).

    Left alone, it notices its parent's exit and then tears down an
    interpreter holding the whole pipeline (0.5-1 s of CPU on a busy machine),
    keeping the terminal's stdout and stderr, which it inherited, open as long:
    a caller reading rpp's output through a pipe waits for that. It holds no
    state (workers are sessions of their own and already done), so SIGTERM,
    whose default action it keeps, ends it at once.
    """
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)  # CPython's own fields (3.11-3.13): None when never started
    if not pid or not hasattr(server, "_stop"):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        server._stop()  # reaps it and forgets it: a later run would start a new one


def _session_groups(sid: int) -> set[int]:
    """Process groups of the processes in session ``sid`` (Linux /proc; the session's own group elsewhere)."""
    groups = {sid}
    proc = Path("/proc")
    if not proc.is_dir():
        return groups
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # state, ppid, pgrp, session
                groups.add(int(fields[2]))
    return groups


def kill_session(sid: int) -> None:
    """SIGKILL every process of the worker's session: the worker and its solver groups."""
    for pgid in _session_groups(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _record_abandoned(run_dir: Path, request: RunRequest, status: str, err: RppError) -> None:
    """What the worker could not write itself: no half-written files, a log line, the summary."""
    from .products import RunSummary
    from .rundir import IN_PROGRESS, RUN_LOG, SUMMARY, RunLog, remove_partial_files

    with contextlib.suppress(OSError):
        remove_partial_files(run_dir)
        log = RunLog(run_dir / RUN_LOG)
        log.write("ERROR", f"run {status}: {err}")
        log.close()
        if not (run_dir / SUMMARY).exists():
            RunSummary(frame=request.path, profile=request.profile.name, run_dir=str(run_dir), status=status,
                       exit_code=err.exit_code, error=str(err)).write(run_dir / SUMMARY)
        # the worker's lock died with it; with the summary in place the marker only misleads a reader
        (run_dir / IN_PROGRESS).unlink(missing_ok=True)


async def run(request: RunRequest, on_event: Callable[[ev.Event], None] | None = None,
              cancel: asyncio.Event | None = None):
    """Run ``request`` in a worker process; see the module docstring.

    Returns the :class:`~rpp_core.products.RunResult`; raises the run's
    :class:`~rpp_core.errors.RppError` (:class:`~rpp_core.errors.Cancelled` on
    cancel, within :data:`CANCEL_GRACE_S` plus a few ms).
    """
    import asyncio

    request = request.resolved()
    on_event = on_event or (lambda e: None)
    cancel = cancel or asyncio.Event()
    loop = asyncio.get_running_loop()
    ctx = process_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, args=(request, sender), name="rpp-run", daemon=False)
    await asyncio.to_thread(_start, proc)  # the first start launches the forkserver: not on the UI loop
    sender.close()
    outcome: asyncio.Future = loop.create_future()
    run_dir: list[Path] = []

    def deliver(kind: str, payload) -> None:  # on the event loop
        if kind == "event":
            if isinstance(payload, ev.RunStarted):
                run_dir.append(Path(payload.run_dir))
            try:
                on_event(payload)
            except Exception:  # a broken UI callback must not lose the run
                pass
        elif not outcome.done():
            outcome.set_result((kind, payload))

    def read() -> None:
        # a thread, so that unpickling a big result never stalls the caller's event loop
        while True:
            try:
                kind, payload = receiver.recv()
            except (EOFError, OSError):
                kind, payload = "died", None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(deliver, kind, payload)
            if kind != "event":
                return

    reader = threading.Thread(target=read, name="rpp-run-events", daemon=True)
    reader.start()
    stopping = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait([outcome, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not outcome.done():  # cancelled: ask, then kill the session
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(outcome), CANCEL_GRACE_S)
            if not outcome.done():
                kill_session(proc.pid)
                outcome.set_result(("killed", None))
        kind, payload = outcome.result()
    except asyncio.CancelledError:
        kill_session(proc.pid)  # the caller is going away (the app quits): take the run with it
        raise
    finally:
        stopping.cancel()
        await asyncio.to_thread(proc.join, 2.0)
        await asyncio.to_thread(reader.join, 2.0)
        receiver.close()
    if kind == "died" and cancel.is_set() and proc.exitcode is not None and proc.exitcode < 0:
        kind = "killed"  # the cancel's own signal reached the worker before it could take it
    if kind == "result":
        on_event(ev.RunFinished(result=payload))
        return payload
    if kind == "error":
        raise payload
    if kind == "killed":
        err: RppError = Cancelled()
        status = "cancelled"
    else:
        code = proc.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        err, status = RppError(f"the worker process died ({why}): out of memory or a crash in a library"), "failed"
    if run_dir:
        await asyncio.to_thread(_record_abandoned, run_dir[0], request, status, err)
    on_event(ev.RunFailed(stage="", message=str(err), exit_code=err.exit_code,
                          run_dir=str(run_dir[0]) if run_dir else ""))
    raise err
