"""Solver subprocesses in their own process group: output streamed, killed as a group on cancel or timeout."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import AstrometryError, Cancelled
from ..progress import CancelFn, LogFn

#: Poll interval of the solver subprocess (cancel, timeout, output), s.
POLL_S = 0.2


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the solver and all its children (solve-field forks astrometry-engine)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
        elif proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            # the leader exited; children may linger a moment longer in the group
            if pgid is not None:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
        except subprocess.TimeoutExpired:
            continue


def run_solver_process(cmd: Sequence[str], deadline: float, cancel: CancelFn | None = None,
                       log: LogFn | None = None, cwd: str | os.PathLike | None = None,
                       progress: Callable[[], None] | None = None) -> tuple[int | None, list[str]]:
    """Run a solver subprocess in its own process group.

    Polls every 0.2 s: forwards output lines to ``log``, calls ``progress()``,
    kills the whole group when ``cancel()`` is true (then raises
    :class:`~rpp_core.errors.Cancelled`) or when ``time.monotonic()`` passes
    ``deadline`` (then returns ``None`` as return code).

    Returns
    -------
    (returncode or None on timeout, output lines)
    """
    log = log or (lambda _line: None)
    cancel = cancel or (lambda: False)
    try:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                # a group of its own (killed as one on cancel or timeout), in the
                                # session of the run, which the runner kills whole
                                process_group=0)
    except OSError as exc:
        raise AstrometryError(f"cannot start {cmd[0]}: {exc}") from None
    log(f"{Path(cmd[0]).name} started, pid {proc.pid}, process group {proc.pid}")
    lines: list[str] = []
    q: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    t = threading.Thread(target=reader, daemon=True)
    t.start()

    def drain() -> None:
        while True:
            try:
                line = q.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            lines.append(line)
            if line.strip():
                log(line)

    try:
        while True:
            drain()
            if proc.poll() is not None:
                t.join(timeout=1.0)
                drain()
                return proc.returncode, lines
            if cancel():
                _kill_group(proc)
                log(f"{Path(cmd[0]).name} cancelled: process group {proc.pid} killed")
                raise Cancelled("plate solving cancelled")
            if time.monotonic() >= deadline:
                _kill_group(proc)
                log(f"{Path(cmd[0]).name} stopped at the time limit: process group {proc.pid} killed")
                return None, lines
            if progress:
                progress()
            time.sleep(POLL_S)
    except BaseException:
        if proc.poll() is None:
            _kill_group(proc)
        raise
    finally:
        if proc.stdout:
            try:
                proc.stdout.close()
            except OSError:
                pass
