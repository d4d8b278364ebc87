"""The app answers keys at once while a big frame runs: the run is in a worker process, not in the app."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from rpp_core import settings
from rpp_core.synthetic import make_frame
from rpp_tui.app import RppApp

from .test_tui_support import tui_env, wait_for  # noqa: F401 - fixtures

#: the longest an observer may wait between a key and the screen it asks for
MAX_KEY_LATENCY_S = 0.2


def _cpu_wait_s() -> float:
    """Seconds this thread has waited for a CPU the kernel gave to other processes (schedstat run delay).

    The machine running the tests may be shared: that wait is not the app's
    doing, so it is taken out of the latency. Waiting for the interpreter lock,
    what a stage running inside the app would cause, is not: it stays in.
    """
    return int(Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text().split()[1]) / 1e9


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_keys_change_the_screen_within_200_ms_through_every_stage_of_a_big_run(tui_env):
    """A 2048^2 frame with 15,000 stars, cosmic rays and PSF on: tab keys pressed every quarter
    second from the run's start to its end each show their tab within 200 ms (not counting the
    time the kernel gave the CPU to other processes of a shared machine, see :func:`_cpu_wait_s`)."""
    frame = tui_env / "big.fits"
    sf = make_frame(shape=(2048, 2048), n_stars=15000, fwhm=3.0, seed=7, n_cosmics=200, mag_range=(12.0, 20.0))
    sf.write(frame)
    sf.write_refcat(tui_env / "big_ref.ecsv", format="ascii.ecsv")
    settings.save_profile(settings.Profile(name="big").replace(**{
        "calibration.catalog_files": [str(tui_env / "big_ref.ecsv")], "services.offline": True,
        "services.enabled": [], "astrometry.solve": "never", "photometry.psf": True, "cosmic_rays.enabled": True}))
    app = RppApp(str(frame), "big")
    keys = [("5", "plots"), ("3", "run")]
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause(0.5)
        for key, _ in keys:  # each tab drawn once before: its first drawing is not what is measured
            await pilot.press(key)
        app.simulate_key("r")
        await wait_for(pilot, lambda: bool(app.runner.jobs), 10, 0.01)
        job = app.runner.jobs[0]
        tabs = app.query_one("#tabs")
        stages = app.query_one("#stages")
        samples: list[tuple[str, float]] = []
        walls: list[float] = []
        while job.state in ("queued", "running"):
            key, target = keys[len(samples) % 2]
            running = [name for name, state in stages.states().items() if state == "running"]
            t0, w0 = time.perf_counter(), _cpu_wait_s()
            app.simulate_key(key)
            while tabs.active != target or not app.query_one(f"#{target}").display:
                await asyncio.sleep(0.002)
                assert time.perf_counter() - t0 < 10, f"key {key} never showed {target}"
            wall = time.perf_counter() - t0
            samples.append((running[0] if running else "", wall - (_cpu_wait_s() - w0)))
            walls.append(wall)
            await asyncio.sleep(0.25)
        assert job.state == "finished", job.error
    by_stage: dict[str, float] = {}
    for stage, seconds in samples:
        by_stage[stage] = max(by_stage.get(stage, 0.0), seconds)
    print("worst key-to-screen latency by stage (ms):", {k: round(v * 1000) for k, v in by_stage.items()},
          f"; wall clock, other processes' CPU time included: worst {max(walls) * 1000:.0f} ms, "
          f"median {sorted(walls)[len(walls) // 2] * 1000:.0f} ms over {len(walls)} keys")
    assert {"fwhm", "cosmics", "psf", "output"} <= set(by_stage), by_stage  # the long stages were all sampled
    assert max(s for _, s in samples) < MAX_KEY_LATENCY_S, by_stage
