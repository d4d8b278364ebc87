"""Events emitted by :func:`rpp_core.pipeline.run`: the whole core/UI contract.

Small frozen dataclasses. The TUI turns them into widgets, the CLI into a
progress line and log lines, tests into assertions. ``on_event`` is called on
the event-loop thread (never from a worker thread), so a UI may touch its
widgets directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Pipeline stages in order. ``label`` is what a UI shows.
STAGES: tuple[tuple[str, str], ...] = (
    ("load", "Load FITS"),
    ("metadata", "Observation metadata"),
    ("background", "Background"),
    ("fwhm", "FWHM"),
    ("detect", "Detection"),
    ("cosmics", "Cosmic rays"),
    ("aperture", "Aperture photometry"),
    ("psf", "PSF photometry"),
    ("astrometry", "Astrometry"),
    ("reference", "Reference catalogue"),
    ("calibrate", "Zero point"),
    ("crossmatch", "Cross-match services"),
    ("output", "Outputs"),
)
STAGE_NAMES = tuple(s for s, _ in STAGES)
STAGE_LABELS = dict(STAGES)


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class RunStarted(Event):
    path: str
    profile: str
    run_dir: str


@dataclass(frozen=True)
class StageStarted(Event):
    stage: str
    index: int  # 0-based position in STAGES
    total: int


@dataclass(frozen=True)
class StageProgress(Event):
    stage: str
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class StageFinished(Event):
    stage: str
    seconds: float
    #: a few numbers worth showing, e.g. {"fwhm_px": 3.5, "n_sources": 812}
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSkipped(Event):
    stage: str
    reason: str


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the natural name in this namespace
    stage: str
    message: str


@dataclass(frozen=True)
class LogLine(Event):
    level: str  # "DEBUG", "INFO", "WARNING", "ERROR"
    message: str
    stage: str = ""


@dataclass(frozen=True)
class RunFinished(Event):
    result: Any  # rpp_core.products.RunResult


@dataclass(frozen=True)
class RunFailed(Event):
    stage: str
    message: str
    exit_code: int
    run_dir: str = ""

