"""``run_batch``: frames scheduled on the pool or cluster, field by field, recorded in the ledger."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable

from .. import locations
from ..cleanup import apply_retention
from ..errors import UsageError
from ..fitsnames import FITS_EXTENSIONS
from ..runner import RunRequest
from ..settings import Profile
from .executors import connect_dask, local_executor, terminate_local
from .fields import group_fields
from .inputs import collect_frames, profile_hash
from .ledger import FrameKey, Ledger
from .report import make_report_dir, write_night_report
from .worker import FrameResult, process_frame

#: a frame whose worker died this many times is reported failed instead of retried
MAX_ATTEMPTS = 2


@dataclasses.dataclass
class BatchReport:
    results: list[FrameResult]  # in input order
    report_dir: Path | None
    files: dict[str, Path]
    wall_s: float
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every frame is ok or skipped, 130 when interrupted, else the first frame's non-zero code."""
        if self.interrupted:
            return 130
        for r in self.results:
            if r.status in ("failed", "degraded") and r.exit_code:
                return r.exit_code
        return 0


def run_batch(inputs: Iterable[str | os.PathLike], profile: Profile | None = None, *, jobs: int | None = None,
              scheduler: str | None = None, client=None, out_dir=None, catalog_files=(), offline: bool | None = None,
              hdu: int | None = None, force: bool = False, recursive: bool = True, report: bool = True,
              on_result: Callable[[FrameResult, int, int], None] | None = None,
              on_start: Callable[[int], None] | None = None, on_tick: Callable[[], None] | None = None, stop: threading.Event | None = None, field_order: bool = True) -> BatchReport:
    """Process frames on a local process pool (``jobs`` workers) or a Dask cluster.

    Parameters
    ----------
    inputs : files and/or folders (see :func:`collect_frames`)
    profile : processing profile (default: built-in defaults)
    jobs : local worker processes (default: CPU count); ignored with ``scheduler``/``client``
    scheduler : ``tcp://HOST:PORT`` of a running Dask scheduler; ``client`` an existing Client
    out_dir : workspace receiving the run folders, the ledger and the report folder
    catalog_files, offline, hdu : passed to :func:`rpp_core.pipeline.run`
    force : redo frames the ledger says are done
    on_start : called once with the number of frames found
    on_tick : called about twice a second while frames run (to redraw a progress bar)
    on_result : called in the parent as ``on_result(result, n_finished, n_total)``
    stop : set it (e.g. from a signal handler) to stop: running frames are abandoned and
        left unrecorded, so the next run redoes them

    Returns
    -------
    BatchReport; never raises for a frame's failure, only for usage errors
    (no frames, unreachable scheduler).
    """
    t0 = time.monotonic()
    profile = profile or Profile()
    frames = collect_frames(inputs, recursive=recursive)
    if not frames:
        raise UsageError(f"no FITS frames found in {', '.join(map(str, inputs))} "
                         f"(looked for {', '.join(FITS_EXTENSIONS)}, .fz, .gz)")
    out = Path(out_dir).expanduser().resolve() if out_dir else locations.workspace_dir().resolve()
    out.mkdir(parents=True, exist_ok=True)
    catalog_files = [str(Path(c).expanduser().resolve()) for c in catalog_files]
    phash = profile_hash(profile, catalog_files, hdu, offline)
    ledger = Ledger(out)
    stop = stop or threading.Event()
    total = len(frames)
    results: list[FrameResult | None] = [None] * total
    keys: list[FrameKey | None] = [None] * total
    finished = 0

    if on_start:
        on_start(total)

    def deliver(i: int, res: FrameResult) -> None:
        nonlocal finished
        results[i] = res
        finished += 1
        if on_result:
            on_result(res, finished, total)

    todo: list[int] = []
    for i, path in enumerate(frames):
        try:
            keys[i] = FrameKey.of(path, phash)
        except OSError as exc:
            deliver(i, FrameResult(str(path), "failed", f"cannot read {path}: {exc.strerror or exc}", 3))
            continue
        entry = None if force else ledger.get(keys[i])
        if entry and entry.get("status") in ("ok", "degraded"):
            res = FrameResult.from_dict(entry)
            res.status = "skipped"
            deliver(i, res)
        else:
            todo.append(i)

    fields = group_fields([frames[i] for i in todo]) if field_order and todo else [""] * len(todo)
    field_of = dict(zip(todo, fields))
    ready: collections.deque[int] = collections.deque()
    held: dict[str, list[int]] = collections.defaultdict(list)
    pilots: set[str] = set()
    for i in todo:
        f = field_of[i]
        if f and f in pilots:
            held[f].append(i)
        else:
            if f:
                pilots.add(f)
            ready.append(i)

    own_client = None
    base = RunRequest("", profile, out_dir=str(out), catalog_files=tuple(catalog_files), hdu=hdu, offline=offline)
    if client is None and scheduler:
        client = own_client = connect_dask(scheduler)
    if client is not None:
        executor = client.get_executor(pure=False)
        nthreads = sum(client.nthreads().values()) or 1
        max_inflight = 2 * nthreads  # keep every worker thread fed without flooding the scheduler
    else:
        jobs = max(1, int(jobs or os.cpu_count() or 1))
        executor = local_executor(jobs)
        max_inflight = jobs
        base = base.resolved()  # pool workers get this process's cache and keys (Dask workers use their own)

    inflight: dict[cf.Future, tuple[int, int]] = {}
    attempts: dict[int, int] = collections.Counter()
    interrupted = False

    def submit(i: int) -> None:
        attempts[i] += 1
        fut = executor.submit(process_frame, dataclasses.replace(base, path=str(frames[i])))
        inflight[fut] = (i, attempts[i])

    def finish(i: int, res: FrameResult) -> None:
        res.field = field_of.get(i, "")
        if res.run_dir:
            apply_retention(out, profile.output, keep=res.run_dir)
        if keys[i] is not None:
            with contextlib.suppress(OSError):
                ledger.put(keys[i], res.to_dict())
        f = field_of.get(i, "")
        if f and held.get(f):
            ready.extendleft(reversed(held.pop(f)))  # the field's catalogue is in the cache now
        deliver(i, res)

    try:
        while (ready or inflight) and not stop.is_set():
            broken = False
            while ready and len(inflight) < max_inflight:
                try:
                    submit(ready[0])
                except BrokenProcessPool:
                    # a worker died while no frame of it was waited for (between two frames): the pool
                    # says so at the next hand-out; frames in flight come back below with the same error
                    attempts[ready[0]] -= 1
                    broken = True
                    break
                ready.popleft()
            done, _ = cf.wait(list(inflight), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            if on_tick:
                on_tick()
            for fut in done:
                i, _attempt = inflight.pop(fut)
                try:
                    res = FrameResult.from_dict(fut.result())
                except BrokenProcessPool:
                    broken = True
                    if attempts[i] >= MAX_ATTEMPTS:
                        finish(i, FrameResult(str(frames[i]), "failed", "the worker process died while processing "
                                              f"this frame ({attempts[i]} times): out of memory or a crash in a library", 1))
                    else:
                        ready.appendleft(i)
                    continue
                except Exception as exc:  # Dask KilledWorker, cancelled task...
                    res = FrameResult(str(frames[i]), "failed", f"worker failure: {type(exc).__name__}: {exc}", 1)
                finish(i, res)
            if broken:
                for fut, (i, _a) in list(inflight.items()):
                    inflight.pop(fut)
                    ready.appendleft(i)
                executor.shutdown(wait=False, cancel_futures=True)
                executor = local_executor(max_inflight)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if stop.is_set():
            interrupted = True
        if client is not None:
            for fut in inflight:
                fut.cancel()
            executor.shutdown(wait=False)
            if own_client is not None:
                with contextlib.suppress(Exception):
                    own_client.close()
        elif interrupted:
            terminate_local(executor)
        else:
            executor.shutdown(wait=True)

    final = [r for r in results if r is not None]
    wall = time.monotonic() - t0
    report_dir, files = None, {}
    if report and final:
        report_dir = make_report_dir(out)
        title = (f"rpp batch: {len(frames)} frame(s), profile {profile.name!r} ({phash}), "
                 f"{'Dask ' + str(scheduler or 'client') if client is not None else f'{max_inflight} local worker(s)'}"
                 + (", INTERRUPTED" if interrupted else ""))
        with open(report_dir / "run.log", "w") as log:
            log.write(title + "\n")
            for n, r in enumerate(final, 1):
                log.write(r.line(n, len(final)) + (f"  -> {r.run_dir}" if r.run_dir else "") + "\n")
        files = write_night_report(final, report_dir, wall, title)
        files["log"] = report_dir / "run.log"
    return BatchReport(final, report_dir, files, wall, interrupted)
