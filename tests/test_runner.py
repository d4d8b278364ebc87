"""The runner: every run in a worker process of its own, events back over a pipe, cancel that stops it all."""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from rpp_core import events as ev
from rpp_core import runner
from rpp_core.errors import Cancelled
from rpp_core.products import RunSummary
from rpp_core.synthetic import make_frame

from .conftest_pipeline_helpers import offline_profile
from .proctable import processes


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    fr = make_frame(shape=(256, 256), n_stars=60, seed=3, n_cosmics=5)
    fr.write(d / "f.fits")
    fr.write_refcat(d / "ref.ecsv")
    return d


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies count as gone)."""
    return [p.pid for p in processes() if p.pgid == pgid and p.state != "Z"]


def test_a_run_in_a_worker_process_streams_the_same_events_and_returns_the_typed_result(small, tmp_path):
    events: list[ev.Event] = []
    request = runner.RunRequest(str(small / "f.fits"), offline_profile(), out_dir=str(tmp_path),
                                catalog_files=(str(small / "ref.ecsv"),))
    res = asyncio.run(runner.run(request, events.append))
    assert isinstance(events[0], ev.RunStarted) and isinstance(events[-1], ev.RunFinished)
    assert events[-1].result is res
    started = [e.stage for e in events if isinstance(e, ev.StageStarted)]
    assert started == sorted(started, key=ev.STAGE_NAMES.index) and "calibrate" in started
    assert res.exit_code == 0 and res.summary.zp is not None and len(res.catalog) == res.summary.n_sources
    # what came back over the pipe is what the worker wrote
    on_disk = RunSummary.read(res.run_dir / "summary.json")
    assert on_disk.zp == res.summary.zp and on_disk.status == "ok" and on_disk.calibration_label == "ap2"
    # the workspace, cache and keys were resolved here: the worker used this test's workspace
    assert res.run_dir.parent == tmp_path


def test_a_run_for_a_summary_comes_back_without_anything_that_needs_astropy_to_read(small, tmp_path):
    """``rpp run`` prints the summary: unpickling a WCS imported astropy in it after the run (0.5 s)."""
    import pickle

    request = runner.RunRequest(str(small / "f.fits"), offline_profile(), out_dir=str(tmp_path),
                                catalog_files=(str(small / "ref.ecsv"),), keep_catalog=False)
    res = asyncio.run(runner.run(request))
    assert res.exit_code == 0 and res.catalog is None and res.summary.zp is not None
    assert res.summary.wcs.status == "ok" and res.summary.wcs.wcs is None  # the frame's header has it
    assert b"astropy" not in pickle.dumps(res)


def test_a_failing_run_raises_its_error_from_the_worker(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("not a FITS file\n" * 100)
    events: list[ev.Event] = []
    with pytest.raises(Exception) as info:
        asyncio.run(runner.run(runner.RunRequest(str(bad), offline_profile(), out_dir=str(tmp_path / "o")), events.append))
    assert info.value.exit_code == 3 and "notes.fits" in str(info.value)
    assert isinstance(events[-1], ev.RunFailed) and events[-1].exit_code == 3


@pytest.fixture(scope="module")
def small_index(small, tmp_path_factory):
    """Real index files for the small frame's field (1"/px, 4.3'), so the solver is worth starting."""
    from rpp_core.astrometry import build_index

    out = tmp_path_factory.mktemp("idx_small")
    build_index(small / "ref.ecsv", out, field_width_arcmin=256 / 60.0, mag_col="G")
    return out


def _fake_solver(tmp_path: Path) -> Path:
    """A solve-field that ignores SIGTERM and never finishes: a run sits in the astrometry stage."""
    exe = tmp_path / "bin" / "solve-field"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\ntrap '' TERM\nsleep 300 &\nwait\nwait\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_cancel_stops_the_worker_and_solve_field_within_a_second(small, small_index, tmp_path):
    exe = _fake_solver(tmp_path)
    prof = offline_profile(**{"astrometry.solve": "always", "astrometry.solve_field": str(exe),
                              "astrometry.index_dirs": [str(small_index)], "astrometry.use_system_indexes": False,
                              "astrometry.timeout_s": 120, "cosmic_rays.enabled": False, "photometry.psf": False})
    request = runner.RunRequest(str(small / "f.fits"), prof, out_dir=str(tmp_path / "runs"),
                                catalog_files=(str(small / "ref.ecsv"),))
    solver: dict[str, float] = {}

    async def main():
        cancel = asyncio.Event()

        def on_event(e):
            if isinstance(e, ev.LogLine) and e.message.startswith("solve-field started, pid"):
                solver["pid"] = int(e.message.split("pid ")[1].split(",")[0])

        task = asyncio.ensure_future(runner.run(request, on_event, cancel))
        while "pid" not in solver:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the solver is running, and ignores SIGTERM
        assert _alive_in_group(int(solver["pid"]))
        cancel.set()
        t0 = time.perf_counter()
        with pytest.raises(Cancelled):
            await task
        return time.perf_counter() - t0

    seconds = asyncio.run(main())
    print(f"cancel took {seconds * 1000:.0f} ms")
    assert seconds < 1.0
    assert _alive_in_group(int(solver["pid"])) == []  # solve-field and its sleep are gone
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert (run_dir / "run.log").exists() and not (run_dir / "catalog.csv").exists()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "cancelled"
    assert not list(run_dir.rglob("*.part"))


def test_a_caller_that_goes_away_takes_its_run_with_it(small, small_index, tmp_path):
    """The app quitting mid-run: the waiting coroutine is cancelled and the worker's session killed."""
    exe = _fake_solver(tmp_path)
    prof = offline_profile(**{"astrometry.solve": "always", "astrometry.solve_field": str(exe),
                              "astrometry.index_dirs": [str(small_index)], "astrometry.use_system_indexes": False,
                              "cosmic_rays.enabled": False, "photometry.psf": False})
    request = runner.RunRequest(str(small / "f.fits"), prof, out_dir=str(tmp_path / "runs"),
                                catalog_files=(str(small / "ref.ecsv"),))
    solver: dict[str, int] = {}

    async def main():
        def on_event(e):
            if isinstance(e, ev.LogLine) and e.message.startswith("solve-field started, pid"):
                solver["pid"] = int(e.message.split("pid ")[1].split(",")[0])

        task = asyncio.ensure_future(runner.run(request, on_event))
        while "pid" not in solver:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 1.0
    while _alive_in_group(solver["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_in_group(solver["pid"]) == []
    assert os.getpgid(os.getpid()) != solver["pid"]


def test_a_mask_file_named_in_the_request_is_used_by_the_worker(small, tmp_path):
    """The worker masks what the caller's mask file says: a relative path resolved where the caller stands."""
    import numpy as np
    from astropy.io import fits

    bad = np.zeros((256, 256), np.uint8)
    bad[:, :128] = 1  # the left half of the frame is bad
    fits.PrimaryHDU(bad).writeto(tmp_path / "half.mask.fits")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        request = runner.RunRequest(str(small / "f.fits"), offline_profile(), out_dir=str(tmp_path / "runs"),
                                    mask="half.mask.fits")
        res = asyncio.run(runner.run(request))
    finally:
        os.chdir(old)
    assert res.exit_code == 0
    assert "half.mask.fits" in res.summary.companions["mask"] and res.summary.companions["n_bad"] == 128 * 256
    cat = res.catalog
    unsaturated = (np.asarray(cat["flags"]) & 2) == 0  # a saturated star is kept, flagged, wherever it is
    assert unsaturated.sum() > 10 and (np.asarray(cat["x"])[unsaturated] > 120).all()
    assert ((np.asarray(cat["flags"])[np.asarray(cat["x"]) < 128] & 1) == 1).all()
    # an uncalibrated run still gets its figures and sky view
    assert not [w for w in res.warnings if "not written" in w]
    assert (res.run_dir / "sky.html").exists() and (res.run_dir / "plots" / "finder.png").exists()


@pytest.mark.parametrize("delay_s", [0.0, 0.005, 0.02])
async def test_a_cancel_as_the_worker_starts_is_a_cancel_not_a_crash(small, tmp_path, delay_s):
    """SIGTERM reaching the worker before its event loop takes the signal over still reads as 'cancelled'."""
    cancel = asyncio.Event()
    request = runner.RunRequest(str(small / "f.fits"), offline_profile(**{"cosmic_rays.enabled": False}),
                                out_dir=str(tmp_path / "runs"), catalog_files=(str(small / "ref.ecsv"),))
    asyncio.get_running_loop().call_later(delay_s, cancel.set)
    with pytest.raises(Cancelled):
        await runner.run(request, None, cancel)


def test_a_one_shot_forkserver_imports_only_what_the_profile_uses():
    """rpp run starts its worker's imports before its checks: without solving or services they
    leave out astrometry.net planning and the HTTP client; the app's shared server has them all."""
    from rpp_core.settings import Profile

    lite = Profile(name="t").replace(**{"astrometry.solve": "never", "services.offline": True, "cosmic_rays.enabled": False})
    mods = runner.preload_for(lite)
    assert "rpp_core.pipeline" in mods and "rpp_core.image.load" in mods
    assert not {"rpp_core.astrometry", "rpp_core.catalogs.gaia", "astroscrappy"} & set(mods)
    # matplotlib: the figures' drawers import it while the stages run, not before the first stage
    assert not {"matplotlib.figure", "matplotlib.backends.backend_agg"} & set(mods)
    assert "matplotlib.figure" in runner.PRELOAD
    full = runner.preload_for(Profile(name="t").replace(**{"astrometry.solve": "auto", "services.offline": False}))
    assert {"rpp_core.astrometry", "rpp_core.catalogs.gaia"} <= set(full) <= set(runner.PRELOAD)
    for name in runner.PRELOAD:  # every name imports (a renamed module would make the server die at start)
        importlib.import_module(name)
    assert runner.PRELOAD[0] == mods[0] == "rpp_core.forkserver_gc"
    assert gc.isenabled()  # imported by anything but a runner's forkserver, it does nothing


def test_a_forkserver_imports_its_preload_without_collecting_and_the_processes_it_forks_collect():
    """The server's ~270 collections while importing found nothing to free (0.15-0.2 s of CPU before a
    run's first stage); what it forks collects its own garbage and leaves the server's objects frozen."""
    import subprocess
    import sys

    code = ("import gc\nfrom rpp_core import runner\n"
            "with runner.process_context(['rpp_core.forkserver_gc', 'rpp_core.settings']).Pool(1) as pool:\n"
            "    print(pool.apply(gc.isenabled), pool.apply(gc.get_freeze_count) > 1000, gc.isenabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True"], out.stdout + out.stderr


def test_workers_import_numpy_without_huge_page_advice(tmp_path):
    """A worker's first touch of each frame-sized array must not wait for the kernel to compact
    memory into huge pages (seconds of system time on a fragmented machine)."""
    import subprocess
    import sys

    out = tmp_path / "env"
    code = ("import os\nfrom rpp_core import runner\n"
            "p = runner.process_context().Process(target=os.system, args=('echo $NUMPY_MADVISE_HUGEPAGE > %s',))\n"
            "p.start(); p.join()\n" % out)
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert out.read_text().strip() == "0"


def test_a_ctrl_c_while_the_forkserver_starts_reaches_the_caller():
    """Ctrl-C while rpp starts its forkserver is held and handed over once the server is up, never lost.

    The signal comes exactly while the server is spawned. CPython's resource tracker, started there
    too, unblocked SIGINT whatever the caller's mask, and the signal met the ignored handler (the
    run then went on: 1 start in 5 on a loaded machine)."""
    import subprocess
    import sys

    code = """
import os, signal
from multiprocessing import util
from rpp_core import runner
got = []
signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
spawn = util.spawnv_passfds
def spawn_and_interrupt(path, args, passfds):
    if any("forkserver" in os.fsdecode(a) for a in args):
        os.kill(os.getpid(), signal.SIGINT)  # what a terminal sends to the whole group at that moment
    return spawn(path, args, passfds)
util.spawnv_passfds = spawn_and_interrupt
runner.warm_up()
print("got", got)
runner.end_forkserver()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "got [2]"
