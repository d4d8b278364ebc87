"""``rpp watch DIR``: process each new FITS frame once the camera has finished writing it.

How a frame is judged finished (all must hold):

1. its size and mtime are unchanged over two polls at least ``settle_s`` apart
   (polling works on NFS/SMB mounts, where inotify sees nothing of writes
   made by another machine; it costs one ``stat`` per file and poll);
2. :func:`fits_complete`: astropy reads every header, each HDU's data fits
   in the file (header-declared size), ``NEXTEND`` extensions are all there,
   and a gzip file decompresses to the end.

A frame that stays incomplete (stable but truncated) for
``incomplete_grace_s`` is handed to the pipeline anyway, which then reports
it as a bad frame (exit 3) instead of the watcher waiting for ever.

Each frame is processed once: the :class:`rpp_core.batch.Ledger` in the
workspace (keyed by absolute path, size, mtime and profile hash, written
atomically) records ``started`` before and the outcome after each run. After
a restart, finished frames are skipped and an interrupted one is redone; one
whose processing killed the process :data:`~rpp_core.batch.MAX_ATTEMPTS`
times is recorded as failed rather than crashing the service in a loop.

SIGTERM / SIGINT stop the watcher cleanly: the running frame is cancelled
(its ledger mark is removed, so the next start redoes it) and the process
exits with 0, what systemd expects of ``systemctl stop``.

A night report like ``rpp batch``'s (summary CSV/text, zero point and FWHM
over time) is kept up to date in ``<workspace>/watch_<folder name>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gzip
import os
import time
from pathlib import Path
from typing import Callable

from . import locations
from .batch import MAX_ATTEMPTS, FrameKey, FrameResult, Ledger, profile_hash, result_from_summary, write_night_report
from .cleanup import apply_retention
from .errors import Cancelled, RppError, UsageError
from .events import RunStarted
from .fitsnames import is_fits_name
from .settings import Profile


def fits_complete(path: str | os.PathLike) -> tuple[bool, str]:
    """Whether a FITS file is completely written; ``(False, why)`` when not (yet).

    Reads headers only (plus a full decompression for ``.gz``), so it is cheap
    enough to call on every candidate.
    """
    import warnings

    from astropy.io import fits

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return False, f"cannot stat: {exc.strerror or exc}"
    if size < 2880:
        return False, f"{size} bytes, less than one FITS block (2880)"
    gz = path.name.lower().endswith(".gz")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "may have been truncated" is what we check below
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                n = len(hdul)
                nextend = hdul[0].header.get("NEXTEND")
                if isinstance(nextend, int) and n - 1 < nextend:
                    return False, f"{n - 1} of NEXTEND={nextend} extensions written"
                for i, hdu in enumerate(hdul):
                    if gz:
                        if hdu.size:
                            hdu.data  # noqa: B018 - decompressing to the end is the check
                        continue
                    info = hdu.fileinfo()
                    end = info["datLoc"] + hdu.size
                    if end > size:
                        return False, f"HDU {i}: data needs {end} bytes, file has {size}"
    except (OSError, EOFError, ValueError, TypeError, IndexError, gzip.BadGzipFile) as exc:
        return False, f"not readable as FITS yet: {exc}"
    return True, "complete"


@dataclasses.dataclass
class _Seen:
    sig: tuple[int, int]  # size, mtime_ns
    since: float  # monotonic time this signature was first seen
    incomplete_since: float | None = None
    said: str = ""


class Watcher:
    """Poll a folder and process each finished frame once; see the module docstring.

    Parameters
    ----------
    directory : folder the camera writes to
    profile : processing profile
    out_dir : workspace (run folders, ledger, report); default the workspace dir
    poll_s : seconds between polls
    settle_s : a frame must keep its size and mtime this long (s)
    incomplete_grace_s : process a stable but incomplete frame after this long (s)
    recursive : also watch sub-folders
    ignore_existing : skip frames already there when the watcher starts
    once : return when nothing is left to process (for cron and tests)
    on_result : ``on_result(FrameResult)`` after each frame
    on_log : ``on_log(text)`` for status lines (waiting, started, stopping)
    """

    def __init__(self, directory, profile: Profile | None = None, *, out_dir=None, catalog_files=(),
                 offline: bool | None = None, hdu: int | None = None, poll_s: float = 2.0, settle_s: float = 5.0,
                 incomplete_grace_s: float = 120.0, recursive: bool = False, ignore_existing: bool = False,
                 once: bool = False, on_result: Callable[[FrameResult], None] | None = None,
                 on_log: Callable[[str], None] | None = None, on_event=None, report: bool = True) -> None:
        self.directory = Path(directory).expanduser().resolve()
        if not self.directory.is_dir():
            raise UsageError(f"{directory}: no such folder to watch")
        self.profile = profile or Profile()
        self.out = Path(out_dir).expanduser().resolve() if out_dir else locations.workspace_dir().resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.catalog_files = [str(Path(c).expanduser().resolve()) for c in catalog_files]
        self.offline, self.hdu = offline, hdu
        self.poll_s, self.settle_s, self.incomplete_grace_s = float(poll_s), float(settle_s), float(incomplete_grace_s)
        self.recursive, self.ignore_existing, self.once = recursive, ignore_existing, once
        self.on_result = on_result or (lambda r: None)
        self.on_log = on_log or (lambda s: None)
        self.on_event = on_event
        self.report = report
        self.phash = profile_hash(self.profile, self.catalog_files, hdu, offline)
        self.ledger = Ledger(self.out)
        self.report_dir = self.out / f"watch_{self.directory.name or 'root'}"
        self.results: dict[str, FrameResult] = {}
        self._seen: dict[Path, _Seen] = {}
        self._ignored: set[Path] = set()
        self._finished: set[str] = set()
        self._cancel = asyncio.Event()

    # -- scanning

    def _scan(self) -> dict[Path, tuple[int, int]]:
        found = {}
        try:
            walker = self.directory.rglob("*") if self.recursive else self.directory.iterdir()
            for p in walker:
                if not is_fits_name(p.name):
                    continue
                if self.recursive and any(part.startswith(".") for part in p.relative_to(self.directory).parts):
                    continue
                try:
                    st = p.stat()
                except OSError:  # vanished between listing and stat
                    continue
                if not p.is_file():
                    continue
                found[p] = (st.st_size, st.st_mtime_ns)
        except OSError as exc:  # NFS hiccup or the folder went away: try again next poll
            self.on_log(f"cannot list {self.directory}: {exc.strerror or exc}; retrying")
        return found

    def _load_previous(self) -> None:
        """Results recorded earlier for this folder and profile (for the night report)."""
        folders = {self.directory}
        if self.recursive:
            folders |= {p for p in self.directory.rglob("*") if p.is_dir()}
        for folder in folders:
            for entry in self.ledger.entries(folder):
                if entry.get("key", {}).get("profile_hash") == self.phash and entry.get("status") in ("ok", "degraded", "failed"):
                    self.results[entry["path"]] = FrameResult.from_dict(entry)

    def ready_frames(self, now: float | None = None) -> tuple[list[tuple[Path, FrameKey, dict | None]], int]:
        """One poll: frames ready to process (oldest first) and how many are still settling."""
        now = time.monotonic() if now is None else now
        found = self._scan()
        for gone in set(self._seen) - set(found):
            del self._seen[gone]
        ready, waiting = [], 0
        for path, sig in sorted(found.items(), key=lambda kv: (kv[1][1], str(kv[0]))):
            if path in self._ignored:
                continue
            seen = self._seen.get(path)
            if seen is None or seen.sig != sig:
                self._seen[path] = _Seen(sig, now)
                waiting += 1
                continue
            key = FrameKey(str(path), sig[0], sig[1], self.phash)
            if key.id in self._finished:
                continue
            entry = self.ledger.get(key)
            if entry and entry.get("status") in ("ok", "degraded", "failed"):
                self._finished.add(key.id)
                continue
            if now - seen.since < self.settle_s:
                waiting += 1
                continue
            complete, why = fits_complete(path)
            if not complete:
                if seen.incomplete_since is None:
                    seen.incomplete_since = now
                if now - seen.incomplete_since < self.incomplete_grace_s:
                    if seen.said != why:
                        self.on_log(f"waiting for {path.name}: {why}")
                        seen.said = why
                    waiting += 1
                    continue
                self.on_log(f"{path.name} stayed incomplete for {self.incomplete_grace_s:.0f} s ({why}): processing it anyway")
            ready.append((path, key, entry))
        return ready, waiting

    # -- processing

    async def process(self, path: Path, key: FrameKey, entry: dict | None) -> FrameResult | None:
        """Process one frame; None when cancelled (the frame stays to be done)."""
        from . import runner

        attempts = int((entry or {}).get("attempts", 0)) + 1 if (entry or {}).get("status") == "started" else 1
        if attempts > MAX_ATTEMPTS:
            res = FrameResult(str(path), "failed", f"processing this frame stopped the watcher {attempts - 1} times "
                              "(crash or out of memory); delete its ledger entry or use `rpp batch --force`", 1)
            self._record(key, res)
            return res
        self.ledger.put(key, {"path": str(path), "status": "started", "attempts": attempts,
                              "pid": os.getpid(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        t0 = time.perf_counter()
        run_dir = [""]

        def on_event(event) -> None:
            if isinstance(event, RunStarted):
                run_dir[0] = event.run_dir
            if self.on_event:
                self.on_event(event)

        try:
            request = runner.RunRequest(str(path), self.profile, out_dir=str(self.out), hdu=self.hdu,
                                        catalog_files=tuple(self.catalog_files), offline=self.offline,
                                        keep_catalog=False)
            result = await runner.run(request, on_event, self._cancel)
            res = result_from_summary(path, result.summary, time.perf_counter() - t0)
            apply_retention(self.out, self.profile.output, keep=result.run_dir)
        except (Cancelled, asyncio.CancelledError):
            with contextlib.suppress(OSError):
                self.ledger.forget(key)
            return None
        except RppError as exc:
            res = FrameResult(str(path), "failed", str(exc), exc.exit_code, run_dir[0], seconds=round(time.perf_counter() - t0, 3))
        except Exception as exc:  # a bug on one frame must not stop the night
            res = FrameResult(str(path), "failed", f"internal error: {type(exc).__name__}: {exc}", 1, run_dir[0],
                              seconds=round(time.perf_counter() - t0, 3))
        self._record(key, res)
        return res

    def _record(self, key: FrameKey, res: FrameResult) -> None:
        with contextlib.suppress(OSError):
            self.ledger.put(key, res.to_dict())
        self._finished.add(key.id)
        self.results[res.path] = res
        self.on_result(res)
        if self.report:
            try:
                self.report_dir.mkdir(parents=True, exist_ok=True)
                with open(self.report_dir / "run.log", "a") as log:
                    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                    log.write(f"{stamp} {res.line()}" + (f"  -> {res.run_dir}" if res.run_dir else "") + "\n")
                write_night_report(list(self.results.values()), self.report_dir,
                                   title=f"rpp watch {self.directory} (profile {self.profile.name!r})")
            except OSError as exc:
                self.on_log(f"cannot update the night report in {self.report_dir}: {exc}")

    async def run(self, stop: asyncio.Event | None = None) -> list[FrameResult]:
        """Watch until ``stop`` is set (or, with ``once``, until idle); the frames processed."""
        stop = stop or asyncio.Event()
        self._cancel = asyncio.Event()
        processed: list[FrameResult] = []

        async def relay_stop() -> None:
            await stop.wait()
            self._cancel.set()

        relay = asyncio.create_task(relay_stop())
        self._load_previous()
        if self.ignore_existing:
            self._ignored = set(self._scan())
        self.on_log(f"watching {self.directory} (poll {self.poll_s:g} s, settle {self.settle_s:g} s) -> {self.out}")
        try:
            while not stop.is_set():
                ready, waiting = self.ready_frames()
                for path, key, entry in ready:
                    if stop.is_set():
                        break
                    res = await self.process(path, key, entry)
                    if res is None:
                        break
                    processed.append(res)
                if self.once and not ready and not waiting:
                    break
                if stop.is_set():
                    break
                if not ready:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        self.on_log("watcher stopped" + (f" after {len(processed)} frame(s)" if processed else ""))
        return processed


async def watch(directory, profile: Profile | None = None, stop: asyncio.Event | None = None, **kwargs) -> list[FrameResult]:
    """Convenience: ``Watcher(directory, profile, **kwargs).run(stop)``."""
    return await Watcher(directory, profile, **kwargs).run(stop)
