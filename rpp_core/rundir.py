"""A run folder's state on disk: staging, the in-progress marker, the run log, finished or
interrupted, what a failed run leaves, removal.

Kept apart from :mod:`rpp_core.results` (the writers, which import astropy.table and
plotext) so that ``rpp clean``, retention after a run and the app's History can
tell and remove runs without importing them. Names in :mod:`rpp_core.results`'s
docstring: ``.staging/``, ``.in-progress``, ``run.log``, ``summary.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import threading
from pathlib import Path

from .fsio import PART_SUFFIX

STAGING = ".staging"  #: outputs are made here and published at the end
IN_PROGRESS = ".in-progress"  #: held locked by the process running the run
#: what a finished run folder holds besides its outputs; all that a failed one keeps
RUN_LOG, SUMMARY = "run.log", "summary.json"


def staging_dir(run_dir: Path) -> Path:
    """Where a run makes its files until :func:`publish` (created on first use)."""
    path = Path(run_dir) / STAGING
    path.mkdir(exist_ok=True)
    return path


#: descriptors of the markers this process holds (see :func:`drop_marker_copies`)
_HELD: set[int] = set()


def drop_marker_copies() -> None:
    """In a child forked from a run's process: close its copies of the held markers.

    A ``flock`` lasts while any copy of the descriptor is open: a child that
    kept one would keep its parent's run "running" after the parent died.
    """
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


class RunMarker:
    """``.in-progress`` in a run folder, held with ``flock`` while the run is alive.

    The kernel drops the lock when the process dies however it dies, so a
    marker nobody holds means an interrupted run; the file also says which
    process and host held it, for a human looking at the folder.
    """

    def __init__(self, run_dir: Path) -> None:
        import fcntl
        import socket

        self.path = Path(run_dir) / IN_PROGRESS
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _HELD.add(self._fd)
        with contextlib.suppress(OSError):  # a full disk: the lock itself is what counts
            os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self) -> None:
        """The run is over (its summary is in place): drop the marker."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None


def is_running(run_dir: Path) -> bool:
    """True while a process holds the run's ``.in-progress`` marker."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / IN_PROGRESS, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: trust the marker
        return True
    finally:
        os.close(fd)


def run_state(run_dir: Path) -> str:
    """``"finished"`` (summary.json in place), ``"running"`` or ``"interrupted"`` (neither: killed or crashed)."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).exists():
        return "finished"
    return "running" if is_running(run_dir) else "interrupted"


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in (SUMMARY, RUN_LOG, IN_PROGRESS))


def remove_run(path: Path) -> bool:
    """Delete a run folder; False if another process removed it first.

    The folder is first renamed to a hidden name, atomically, so two processes
    (``rpp clean``, retention after a run, the app) never both delete it or
    leave it half-deleted under its real name. Refuses anything that is not a
    run folder (ValueError).
    """
    path = Path(path)
    if path.is_symlink() or not is_run_dir(path):
        raise ValueError(f"{path} is not an rpp run folder (no summary.json or run.log): not deleting it")
    if run_state(path) == "running":
        raise ValueError(f"{path} is a run in progress: not deleting it")
    hidden = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    shutil.rmtree(hidden, ignore_errors=True)
    return True


class RunLog:
    """Append-only run log, flushed line by line so a crash keeps what happened.

    A disk that fills up stops the log, not the run: the failure that follows
    still reaches the terminal and the summary.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, level: str, message: str, stage: str = "") -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        where = f"[{stage}] " if stage else ""
        with self._lock:
            if not self._fh.closed:
                try:
                    for line in str(message).splitlines() or [""]:
                        self._fh.write(f"{stamp} {level:<7} {where}{line}\n")
                except OSError:
                    with contextlib.suppress(OSError):
                        self._fh.close()

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._fh.close()


def remove_partial_files(run_dir: Path) -> None:
    """After a failure: drop everything half-made (the staging folder, ``.part`` files).

    Without a summary in place the run did not finish, so outputs already
    published are dropped too: a failed run folder keeps ``run.log`` and then
    gets its ``summary.json``.
    """
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir / STAGING, ignore_errors=True)
    for path in run_dir.rglob(f".*{PART_SUFFIX}"):
        path.unlink(missing_ok=True)
    if not (run_dir / SUMMARY).exists():
        for entry in run_dir.iterdir():
            if entry.name in (RUN_LOG, IN_PROGRESS):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
