"""Where frames run: a local process pool (forkserver) or a Dask cluster."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import signal

from ..errors import UsageError
from ..runner import process_context, warm_up


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent decides what to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # library warnings from N workers would bury the per-frame lines; each run's own
    # warnings are in its run.log and summary.json
    import warnings

    warnings.simplefilter("ignore")
    with contextlib.suppress(Exception):
        from astropy import log

        log.setLevel("ERROR")


def local_executor(jobs: int) -> cf.ProcessPoolExecutor:
    # forkserver: workers fork from a clean server that imported the pipeline once, instead
    # of forking a parent with threads (unsafe) or re-importing astropy in each (spawn)
    warm_up()  # the server starts here, shielded from Ctrl-C, rather than inside the pool
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=process_context(), initializer=_worker_init)


def terminate_local(executor) -> None:
    # concurrent.futures cannot cancel running tasks: end the worker processes themselves
    for proc in list(getattr(executor, "_processes", {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def connect_dask(address: str, timeout: str = "15s"):
    """A ``distributed.Client`` for ``address``; clear errors when dask is missing or unreachable."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("rpp batch --scheduler needs dask.distributed: install it with "
                         "`pip install 'rpp[dask]'` (or `pip install distributed`)") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}; check the address "
                         f"(tcp://HOST:PORT) and that `dask scheduler` and workers are running") from None
