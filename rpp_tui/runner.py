"""The run queue: one run at a time, the next waiting its turn.

Each run executes in a worker process through :mod:`rpp_core.runner`: a stage
holding the interpreter lock there cannot freeze the app, and cancel stops
the worker's whole process group at once. Events reach ``on_event`` on the
app's event-loop thread.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rpp_core.errors import Cancelled, RppError
from rpp_core.settings import Profile

_ids = itertools.count(1)


@dataclass
class Job:
    """One requested run. ``state``: queued, running, finished, failed, cancelled."""

    path: Path
    profile: Profile
    id: int = field(default_factory=lambda: next(_ids))
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "queued"
    run_dir: Path | None = None
    result: Any = None
    error: str = ""
    exit_code: int | None = None


class RunQueue:
    """FIFO of :class:`Job`; ``start_worker`` is called to drain it (a Textual worker)."""

    def __init__(self, on_event: Callable[[Job, Any], None], start_worker: Callable[[Any], Any]) -> None:
        self.jobs: list[Job] = []
        self.current: Job | None = None
        self._on_event = on_event
        self._start_worker = start_worker
        self._draining = False

    @property
    def waiting(self) -> list[Job]:
        return [j for j in self.jobs if j.state == "queued"]

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.waiting)

    def submit(self, path: Path, profile: Profile) -> Job:
        # a deep copy: editing the form during a run must not change that run
        job = Job(Path(path), copy.deepcopy(profile))
        self.jobs.append(job)
        if not self._draining:
            self._draining = True
            self._start_worker(self._drain())
        return job

    def cancel_current(self) -> Job | None:
        if self.current is not None:
            self.current.cancel.set()
        return self.current

    def cancel_waiting(self) -> int:
        n = 0
        for job in self.waiting:
            job.state = "cancelled"
            n += 1
        return n

    async def _drain(self) -> None:
        try:
            while self.waiting:
                job = self.waiting[0]
                await self._run(job)
        finally:
            self._draining = False
            self.current = None

    async def _run(self, job: Job) -> None:
        from rpp_core import runner

        self.current = job
        job.state = "running"

        def forward(event) -> None:
            if getattr(event, "run_dir", "") and job.run_dir is None:
                job.run_dir = Path(event.run_dir)
            self._on_event(job, event)

        try:
            # a lower CPU priority for the run: on a busy machine the screen is served first
            request = runner.RunRequest(str(job.path), job.profile, nice=10)
            job.result = await runner.run(request, forward, job.cancel)
            job.state = "finished"
            job.exit_code = job.result.exit_code
        except Cancelled as exc:
            job.state, job.error, job.exit_code = "cancelled", str(exc), exc.exit_code
        except RppError as exc:
            job.state, job.error, job.exit_code = "failed", str(exc), exc.exit_code
        except Exception as exc:  # noqa: BLE001 - a bug in a run must not take the UI down
            job.state, job.error, job.exit_code = "failed", f"{type(exc).__name__}: {exc}", 1
        finally:
            self.current = None
            self._on_event(job, None)
