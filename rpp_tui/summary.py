"""The one place the screens read a run summary.

Today a summary is the dict of ``summary.json`` (or ``RunResult.summary``);
the core is moving to a typed ``RunSummary``. Screens only call :func:`facts`,
so swapping the summary type means changing this module alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpp_core.plots import value_with_error  # noqa: F401 - the screens format ZP ± error through this module


@dataclass(frozen=True)
class SummaryFacts:
    """What the screens show of a run. Magnitudes in the reference band's system; FWHM in px."""

    frame: Path | None = None
    run_dir: Path | None = None
    status: str = ""
    exit_code: int = 0
    error: str = ""
    fwhm_px: float | None = None
    n_sources: int | None = None
    n_calibrators: int | None = None
    zp: float | None = None
    zp_err: float | None = None
    zp_rms: float | None = None
    band: str = ""
    airmass: float | None = None
    calibration_label: str = ""
    calibration_source: str = ""
    header_zp: float | None = None  # the header's zero point beside a fitted one (issue 9)
    header_zp_source: str = ""

    @property
    def calibrated(self) -> bool:
        return self.zp is not None

    @property
    def from_header(self) -> bool:
        """Calibrated with the header's zero point (no reference catalogue), not a fit."""
        return self.calibration_source.startswith("header")


def _get(summary: Any, key: str, default: Any = None) -> Any:
    if summary is None:
        return default
    if isinstance(summary, dict):
        return summary.get(key, default)
    return getattr(summary, key, default)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def facts(summary: Any) -> SummaryFacts:
    """:class:`SummaryFacts` of a summary dict, a typed summary object, or None."""
    frame, run_dir = _get(summary, "frame"), _get(summary, "run_dir")
    return SummaryFacts(
        frame=Path(frame) if frame else None,
        run_dir=Path(run_dir) if run_dir else None,
        status=str(_get(summary, "status") or ""),
        exit_code=_int(_get(summary, "exit_code", 0)) or 0,
        error=str(_get(summary, "error") or ""),
        fwhm_px=_num(_get(summary, "fwhm_px")),
        n_sources=_int(_get(summary, "n_sources")),
        n_calibrators=_int(_get(summary, "n_calibrators")),
        zp=_num(_get(summary, "zp")),
        zp_err=_num(_get(summary, "zp_err")),
        zp_rms=_num(_get(summary, "zp_rms")),
        band=str(_get(summary, "band") or ""),
        airmass=_num(_get(summary, "airmass")),
        calibration_label=str(_get(summary, "calibration_label") or ""),
        calibration_source=str(_get(summary, "calibration_source") or ""),
        header_zp=_num((_get(summary, "header_zp") or {}).get("zp")),
        header_zp_source=str((_get(summary, "header_zp") or {}).get("source") or ""),
    )
