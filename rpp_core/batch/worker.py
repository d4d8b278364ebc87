"""The worker task of ``rpp batch``: one frame through the pipeline, never raising, and its one-line result."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from ..errors import RppError
from ..events import RunStarted
from ..products import RunSummary
from ..runner import RunRequest, execute


@dataclasses.dataclass
class FrameResult:
    """The outcome of one frame, as printed, tabulated and kept in the ledger.

    ``status``: ``"ok"``; ``"degraded"`` (catalogue written but e.g. not
    calibrated, ``exit_code`` says why); ``"failed"``; ``"skipped"`` (done
    before with the same profile: the figures are those of that run).
    """

    path: str
    status: str
    reason: str = ""
    exit_code: int = 0
    run_dir: str = ""
    date_obs: str | None = None
    airmass: float | None = None
    fwhm_px: float | None = None
    fwhm_arcsec: float | None = None
    n_sources: int | None = None
    n_calibrators: int | None = None
    zp: float | None = None
    zp_err: float | None = None
    seconds: float = 0.0
    n_warnings: int = 0
    field: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def done(self) -> bool:
        return self.status in ("ok", "degraded")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrameResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def line(self, index: int | None = None, total: int | None = None) -> str:
        """One line for a terminal or a log."""
        head = f"[{index:>{len(str(total))}d}/{total}] " if index is not None and total else ""
        label = {"ok": "ok", "degraded": "degraded", "failed": "FAILED", "skipped": "skip"}.get(self.status, self.status)
        parts = [f"{head}{label:<8} {self.name}"]
        if self.status == "failed":
            parts.append(f"exit {self.exit_code}: {self.reason}")
        else:
            if self.fwhm_px is not None:
                parts.append(f"fwhm {self.fwhm_px:.2f} px")
            parts.append(f"zp {self.zp:.3f}±{self.zp_err:.3f}" if self.zp is not None and self.zp_err is not None
                         else "zp n/a")
            if self.n_sources is not None:
                parts.append(f"{self.n_sources} src" + (f" ({self.n_calibrators} cal)" if self.n_calibrators else ""))
            if self.status == "degraded":
                parts.append(f"exit {self.exit_code}: {self.reason}")
            if self.status == "skipped":
                parts.append("done before")
        parts.append(f"{self.seconds:.1f} s")
        return "  ".join(parts)


def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def result_from_summary(path, summary: RunSummary, seconds: float) -> FrameResult:
    """A :class:`FrameResult` from a run's :class:`~rpp_core.products.RunSummary`."""
    return FrameResult(
        path=str(path),
        status="ok" if not summary.exit_code else "degraded",
        reason=str(summary.error or "") if summary.exit_code else "",
        exit_code=int(summary.exit_code),
        run_dir=summary.run_dir,
        date_obs=summary.date_obs,
        airmass=num(summary.airmass),
        fwhm_px=num(summary.fwhm_px),
        fwhm_arcsec=num(summary.fwhm_arcsec),
        n_sources=summary.n_sources,
        n_calibrators=summary.n_calibrators,
        zp=num(summary.zp),
        zp_err=num(summary.zp_err),
        seconds=round(float(seconds), 3),
        n_warnings=len(summary.warnings),
    )


def process_frame(request: RunRequest) -> dict:
    """One frame through :func:`rpp_core.runner.execute`, never raising: the task of ``rpp batch``.

    Pool workers and Dask tasks already are worker processes, so they run the
    pipeline in-process through the runner's entry. Returns
    :meth:`FrameResult.to_dict` (plain data, cheap to send between processes).
    """
    t0 = time.perf_counter()
    run_dir = [""]

    def on_event(event) -> None:
        if isinstance(event, RunStarted):
            run_dir[0] = event.run_dir

    try:
        result = execute(request, on_event)
        return result_from_summary(request.path, result.summary, time.perf_counter() - t0).to_dict()
    except RppError as exc:
        return FrameResult(request.path, "failed", str(exc), exc.exit_code, run_dir[0],
                           seconds=round(time.perf_counter() - t0, 3)).to_dict()
    except Exception as exc:  # a bug in one frame must not stop the night
        return FrameResult(request.path, "failed", f"internal error: {type(exc).__name__}: {exc}", 1, run_dir[0],
                           seconds=round(time.perf_counter() - t0, 3)).to_dict()
