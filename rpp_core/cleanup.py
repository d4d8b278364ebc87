"""Removal of old run folders by age and by total size (``rpp clean``, ``output.keep_days``).

Only *run folders* are ever removed: direct sub-folders of the workspace that
hold ``summary.json`` or ``run.log`` (see :func:`rpp_core.rundir.is_run_dir`).
Anything else in the workspace (the ledger, files the user put there, folders
without those markers, symbolic links) is left alone.

Rules
-----
- age: a run is as old as its newest marker file (``summary.json`` or
  ``run.log``), so a run folder copied elsewhere and back keeps its age.
- size: when the runs together exceed the bound, the oldest are removed
  until the rest fit. Sizes count every file in the folder (``du``-like,
  apparent size), in powers of 1024 (``10G`` = 10 GiB, ``max_total_gb`` in GiB).
- a run in progress (its ``.in-progress`` marker held by a live process, see
  :func:`rpp_core.rundir.run_state`) is never removed, by any rule; nor is a
  run younger than :data:`ACTIVE_GRACE_S` with a ``run.log``, no summary and no
  marker (written by an older rpp, which had none).
- a run without summary whose marker nobody holds was interrupted (killed,
  power cut): it is an ordinary old run for both rules, and ``interrupted=True``
  (``rpp clean --interrupted``) removes it whatever its age.
- removal first renames the folder to a hidden name, atomically, so two
  processes applying retention at once never both delete (or half-delete) it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

from . import locations
from .rundir import IN_PROGRESS, RUN_LOG, SUMMARY, is_run_dir, remove_run, run_state
from .errors import UsageError

#: seconds during which an unfinished run (run.log, no summary.json) counts as running
ACTIVE_GRACE_S = 6 * 3600.0

_AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclasses.dataclass
class RunFolder:
    """One run folder in the workspace."""

    path: Path
    mtime: float  # POSIX s of the newest marker file
    size: int  # bytes, all files inside
    state: str  # "finished" (has summary.json), "running" or "interrupted" (rundir.run_state)
    marked: bool = False  # has an .in-progress marker (held or stale)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def age_s(self) -> float:
        return time.time() - self.mtime


@dataclasses.dataclass
class Removal:
    """A run folder chosen for removal and why (``"age"`` or ``"size"``)."""

    run: RunFolder
    reason: str
    removed: bool = False  # False in a dry run or when another process got there first


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` or a bare number of days -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in _AGE_UNITS):
        raise UsageError(f"age {text!r}: give a number with a unit s, m, h, d or w, e.g. 30d")
    return float(m.group(1)) * _AGE_UNITS[unit or "d"]


def parse_size(text: str) -> int:
    """``"10G"``, ``"500M"``, ``"1.5T"``, ``"2GB"``, ``"123"`` (bytes) -> bytes, powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise UsageError(f"size {text!r}: give a number with a unit K, M, G or T, e.g. 10G")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def find_runs(workspace: str | os.PathLike) -> list[RunFolder]:
    """Run folders directly under ``workspace``, oldest first. Symbolic links are skipped."""
    ws = Path(workspace)
    runs = []
    if not ws.is_dir():
        return runs
    for entry in ws.iterdir():
        if entry.name.startswith(".") or entry.is_symlink() or not is_run_dir(entry):
            continue
        times = [p.stat().st_mtime for p in (entry / SUMMARY, entry / RUN_LOG, entry / IN_PROGRESS)
                 if p.exists()]
        if not times:
            continue
        state = run_state(entry)
        runs.append(RunFolder(entry, max(times), _folder_size(entry), state,
                              (entry / IN_PROGRESS).exists()))
    runs.sort(key=lambda r: (r.mtime, r.path.name))
    return runs


def _maybe_running(run: RunFolder, now: float) -> bool:
    return run.state == "running" or (not run.finished and not run.marked and now - run.mtime < ACTIVE_GRACE_S)


def select(runs: list[RunFolder], older_than_s: float | None = None, max_bytes: int | None = None,
           now: float | None = None, protect=(), interrupted: bool = False) -> list[Removal]:
    """Which runs the age and size rules remove (pure: nothing is touched).

    ``runs`` oldest first, as :func:`find_runs` gives. ``protect`` is a set of
    paths never removed (the run that just finished); runs in progress are
    never removed either. ``interrupted`` adds every interrupted run.
    """
    now = time.time() if now is None else now
    protected = {Path(p).resolve() for p in protect}
    chosen: list[Removal] = []
    keep: list[RunFolder] = []
    for run in runs:
        if run.path.resolve() in protected or _maybe_running(run, now):
            keep.append(run)
        elif interrupted and run.state == "interrupted":
            chosen.append(Removal(run, "interrupted"))
        elif older_than_s is not None and now - run.mtime > older_than_s:
            chosen.append(Removal(run, "age"))
        else:
            keep.append(run)
    if max_bytes is not None:
        total = sum(r.size for r in keep)
        for run in keep:  # oldest first
            if total <= max_bytes:
                break
            if run.path.resolve() in protected or _maybe_running(run, now):
                continue
            chosen.append(Removal(run, "size"))
            total -= run.size
    return chosen


def _remove(path: Path) -> bool:
    try:
        return remove_run(path)
    except ValueError:
        return False


def clean(workspace: str | os.PathLike | None = None, older_than: str | float | None = None,
          max_size: str | int | None = None, dry_run: bool = False, protect=(),
          now: float | None = None, interrupted: bool = False) -> list[Removal]:
    """Remove run folders older than ``older_than`` and the oldest beyond ``max_size``.

    Parameters
    ----------
    workspace : path, default :func:`rpp_core.locations.workspace_dir`
    older_than : "30d"-style text or seconds; None = no age rule
    max_size : "10G"-style text or bytes; None = no size rule
    dry_run : only report what would go
    protect : run folders never removed
    interrupted : also remove every interrupted run (no summary, nobody running it), whatever its age

    Returns
    -------
    list of :class:`Removal`, oldest first; ``removed`` is True for folders actually deleted.
    """
    ws = Path(workspace) if workspace is not None else locations.workspace_dir()
    age_s = parse_age(older_than) if isinstance(older_than, str) else older_than
    max_bytes = parse_size(max_size) if isinstance(max_size, str) else max_size
    removals = select(find_runs(ws), age_s, max_bytes, now=now, protect=protect, interrupted=interrupted)
    if not dry_run:
        for r in removals:
            r.removed = _remove(r.run.path)
    return removals


def apply_retention(workspace, output_settings, keep=()) -> list[Path]:
    """Apply ``output.keep_days`` and ``output.max_total_gb`` (0 = off); the removed folders.

    Called after each run (``rpp run``, batch, watch, the app) with that run as
    ``keep`` (one path or several), which is never removed.
    """
    if isinstance(keep, (str, os.PathLike)):
        keep = [keep]
    keep_days = float(getattr(output_settings, "keep_days", 0.0) or 0.0)
    max_gb = float(getattr(output_settings, "max_total_gb", 0.0) or 0.0)
    if keep_days <= 0 and max_gb <= 0:
        return []
    removals = clean(workspace, older_than=keep_days * 86400.0 if keep_days > 0 else None,
                     max_size=int(max_gb * 1024**3) if max_gb > 0 else None, protect=keep)
    return [r.run.path for r in removals if r.removed]
