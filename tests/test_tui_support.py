"""Fixtures and helpers shared by the TUI tests (imported by test_tui_*.py; holds no tests).

Everything the app touches lives under ``tmp_path``: config, cache and
workspace through RPP_CONFIG_DIR / RPP_CACHE_DIR / RPP_WORKSPACE, and the
working directory, so paths on screen are short and the same on every run.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from astropy.table import Table

from rpp_core.synthetic import make_frame


@pytest.fixture
def tui_env(tmp_path, monkeypatch):
    """An isolated home for the app; returns tmp_path (also the working directory)."""
    for name, sub in (("RPP_CONFIG_DIR", "config"), ("RPP_CACHE_DIR", "cache"), ("RPP_WORKSPACE", "runs")):
        (tmp_path / sub).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.delenv("ASTROCOLIBRI_UID", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def frames(tui_env):
    """frames/synth.fits (256x256, 60 stars) and frames/refcat.ecsv, its reference catalogue."""
    folder = tui_env / "frames"
    folder.mkdir()
    sf = make_frame(shape=(256, 256), n_stars=60)
    sf.write(folder / "synth.fits")
    sf.write_refcat(folder / "refcat.ecsv", format="ascii.ecsv")
    (folder / "notes.txt").write_text("not a frame")
    return folder


def synthetic_catalogue(n: int = 200, seed: int = 3) -> tuple[Table, dict]:
    """A catalogue shaped like the pipeline's (calibration aperture ``ap2``) with known numbers.

    Magnitudes come from the synthetic-frame truth; instrumental magnitudes
    follow ``mag_ref = mag_inst + zp`` with zp = 24.5 and 10 mmag scatter; every
    fifth calibrator is an outlier flagged as rejected.
    """
    rng = np.random.default_rng(seed)
    sf = make_frame(shape=(256, 256), n_stars=n, seed=seed)
    t = sf.truth
    zp = 24.5
    mag_ref = np.asarray(t["mag"])
    mag_inst = mag_ref - zp + rng.normal(0, 0.01, len(t))
    err = 0.002 + 0.02 * 10 ** (0.4 * (mag_ref - 19))
    calib = (mag_ref > 12.5) & (mag_ref < 17.5)
    rejected = np.zeros(len(t), bool)
    rejected[np.flatnonzero(calib)[::5]] = True
    mag_inst[rejected] += 0.3
    used = calib & ~rejected
    cat = Table()
    cat["id"] = np.arange(1, len(t) + 1)
    cat["x"] = np.round(np.asarray(t["x"]), 3)
    cat["y"] = np.round(np.asarray(t["y"]), 3)
    cat["ra"] = np.asarray(t["ra"])
    cat["dec"] = np.asarray(t["dec"])
    cat["mag_ap2"] = mag_inst
    cat["magerr_ap2"] = err
    cat["snr_ap2"] = np.round(1.0857 / err, 2)
    cat["flags"] = np.where(np.arange(len(t)) % 7 == 0, 4, 0)
    cat["mag_cal_ap2"] = mag_inst + zp
    cat["magerr_cal_ap2"] = err
    cat["mag_ref"] = np.where(calib, mag_ref, np.nan)
    cat["ref_color"] = np.where(calib, np.asarray(t["color"]), np.nan)
    cat["calib_used"] = used
    cat["calib_rejected"] = rejected
    cat["calib_residual"] = np.where(calib, mag_ref - (mag_inst + zp), np.nan)
    cat["simbad_name"] = [f"SYN {i:04d}" if i % 10 == 0 else "" for i in range(len(t))]
    summary = {"frame": "", "profile": "default", "status": "ok", "exit_code": 0, "fwhm_px": 3.5,
               "n_sources": len(t), "n_calibrators": int(used.sum()), "zp": zp, "zp_err": 0.003,
               "zp_rms": 0.01, "airmass": 1.0, "band": "G", "calibration_label": "ap2"}
    return cat, {"frame_obj": sf, **summary}


@pytest.fixture
def run_folder(tui_env):
    """runs/synth_20250102T030405: a finished run folder (summary.json, catalog.ecsv, the frame)."""
    cat, summary = synthetic_catalogue()
    sf = summary.pop("frame_obj")
    frame = tui_env / "frames_run" / "synth.fits"
    frame.parent.mkdir()
    sf.write(frame)
    run = tui_env / "runs" / "synth_20250102T030405"
    run.mkdir()
    summary["frame"] = str(frame)
    summary["run_dir"] = str(run)
    cat.write(run / "catalog.ecsv", format="ascii.ecsv")
    cat.write(run / "catalog.csv", format="ascii.csv")
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    (run / "run.log").write_text("synthetic run\n")
    return run


async def wait_for(pilot, predicate, timeout: float = 120.0, step: float = 0.05) -> float:
    """Pause the pilot until ``predicate()`` is true; the seconds waited. Fails on timeout."""
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        await pilot.pause(step)
    return time.perf_counter() - t0


class LoopLag:
    """Measures how late the event loop wakes a 20 ms sleeper: the UI's worst freeze."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: asyncio.Task | None = None

    async def _probe(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.02)
            self.max_lag = max(self.max_lag, time.perf_counter() - t0 - 0.02)

    def start(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._probe())
        return self

    def stop(self) -> float:
        if self._task:
            self._task.cancel()
        return self.max_lag
