"""`rpp watch`: frames appear while it runs, one is still being written, the service is
stopped and restarted in the middle, and no frame is ever processed twice."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from rpp_core import batch, watch
from rpp_core.synthetic import make_frame

from .conftest_pipeline_helpers import offline_profile


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Bytes of five frames of one field (different seeing) and the field's reference catalogue."""
    root = tmp_path_factory.mktemp("watchsrc")
    out = []
    for i in range(5):
        f = make_frame(shape=(256, 256), n_stars=60, seed=5, fwhm=3.0 + 0.3 * i, n_cosmics=10,
                       date_obs=f"2025-01-02T2{i}:30:00")
        f.write(root / f"src{i}.fits")
        out.append((root / f"src{i}.fits").read_bytes())
    f.write_refcat(root / "refcat.ecsv")
    return out, root / "refcat.ecsv"


def fast_profile(**changes):
    return offline_profile(**{"output.formats": ["ecsv"], "output.zip": False, **changes})


def ok_runs(ws: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in ws.iterdir() if ws.exists() else []:
        s = d / "summary.json"
        if s.exists() and json.loads(s.read_text()).get("status") == "ok":
            stem = re.sub(r"_\d{8}T\d{6}(_\d+)?$", "", d.name)
            counts[stem] = counts.get(stem, 0) + 1
    return counts


# ---------------------------------------------------------------- completeness

def test_a_fits_file_is_complete_only_when_all_its_data_is_there(tmp_path, frames):
    raw = frames[0][0]
    path = tmp_path / "cam.fits"
    data_end = 2880 + 256 * 256 * 4  # one header block, float32 data, then padding to 2880
    for n in (0, 100, 2880, 2880 + 1000, data_end - 1):
        path.write_bytes(raw[:n])
        ok, why = watch.fits_complete(path)
        assert not ok, (n, why)
    path.write_bytes(raw)
    assert watch.fits_complete(path) == (True, "complete")
    path.write_bytes(raw[:data_end])  # unpadded last block, as some writers leave it: usable
    assert watch.fits_complete(path)[0]

    # a multi-extension file whose primary header announces 2 extensions, only 1 written so far
    data = np.zeros((64, 64), np.float32)
    prim = fits.PrimaryHDU()
    prim.header["NEXTEND"] = 2
    fits.HDUList([prim, fits.ImageHDU(data)]).writeto(tmp_path / "mef.fits")
    ok, why = watch.fits_complete(tmp_path / "mef.fits")
    assert not ok and "NEXTEND=2" in why
    fits.HDUList([prim, fits.ImageHDU(data), fits.ImageHDU(data)]).writeto(tmp_path / "mef.fits", overwrite=True)
    assert watch.fits_complete(tmp_path / "mef.fits")[0]

    gz = gzip.compress(raw)
    (tmp_path / "c.fits.gz").write_bytes(gz[: len(gz) // 2])
    assert not watch.fits_complete(tmp_path / "c.fits.gz")[0]
    (tmp_path / "c.fits.gz").write_bytes(gz)
    assert watch.fits_complete(tmp_path / "c.fits.gz")[0]


# ---------------------------------------------------------------- in process

async def wait_for(cond, timeout=30.0, step=0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        await asyncio.sleep(step)
    return False


async def test_frames_appearing_while_watching_are_processed_once_and_a_half_written_one_waits(tmp_path, frames):
    raws, refcat = frames
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    ws = tmp_path / "ws"
    results, logs = [], []
    watcher = watch.Watcher(incoming, fast_profile(), out_dir=ws, catalog_files=[refcat], poll_s=0.2,
                            settle_s=0.5, on_result=results.append, on_log=logs.append)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        (incoming / "a.fits").write_bytes(raws[0])
        (incoming / "notes.txt").write_text("not a frame")
        assert await wait_for(lambda: len(results) == 1)
        assert results[0].name == "a.fits" and results[0].status == "ok"

        # the camera writes half of b.fits, pauses longer than the settle time, then the rest
        with open(incoming / "b.fits", "wb") as fh:
            fh.write(raws[1][: len(raws[1]) // 2])
            fh.flush()
            await asyncio.sleep(1.5)
            assert len(results) == 1  # stable size but incomplete FITS: not touched
            assert any("b.fits" in line and "waiting" in line for line in logs), logs
            fh.write(raws[1][len(raws[1]) // 2:])
        # a camera that writes under a hidden name and renames when done
        (incoming / ".c.fits.part").write_bytes(raws[2])
        os.rename(incoming / ".c.fits.part", incoming / "c.fits")
        assert await wait_for(lambda: len(results) == 3)
        await asyncio.sleep(0.5)  # more polls: nothing is processed again
    finally:
        stop.set()
        processed = await asyncio.wait_for(task, 30)
    assert sorted(r.name for r in results) == ["a.fits", "b.fits", "c.fits"]
    assert all(r.status == "ok" for r in results), [(r.name, r.reason) for r in results]
    by_name = {r.name: r for r in results}
    assert by_name["b.fits"].fwhm_px == pytest.approx(3.3, rel=0.1)  # the whole frame, not half of it
    assert by_name["c.fits"].fwhm_px == pytest.approx(3.6, rel=0.1)
    assert len(processed) == 3
    assert ok_runs(ws) == {"a": 1, "b": 1, "c": 1}
    report = (ws / "watch_incoming" / "night_summary.csv").read_text().splitlines()
    assert len(report) == 1 + 3 and "b.fits" in report[2]

    # a new watcher on the same folder (a restart): nothing left to do
    again = await watch.watch(incoming, fast_profile(), out_dir=ws, catalog_files=[refcat], poll_s=0.1,
                              settle_s=0.1, once=True)
    assert again == []
    # a frame rewritten in place (new size/mtime) is new data: processed again
    (incoming / "a.fits").write_bytes(raws[3])
    again = await watch.watch(incoming, fast_profile(), out_dir=ws, catalog_files=[refcat], poll_s=0.1,
                              settle_s=0.1, once=True)
    assert [r.name for r in again] == ["a.fits"]
    assert ok_runs(ws) == {"a": 2, "b": 1, "c": 1}


async def test_a_frame_that_crashed_the_watcher_twice_is_recorded_failed_not_retried(tmp_path, frames):
    raws, refcat = frames
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "boom.fits").write_bytes(raws[0])
    profile = fast_profile()
    ws = tmp_path / "ws"
    # what two crashed attempts leave behind: a "started" mark with attempts=2
    key = batch.FrameKey.of(incoming / "boom.fits", batch.profile_hash(profile, [str(refcat)]))
    batch.Ledger(ws).put(key, {"path": str(key.path), "status": "started", "attempts": 2})
    done = await watch.watch(incoming, profile, out_dir=ws, catalog_files=[refcat], poll_s=0.1, settle_s=0.1, once=True)
    assert [(r.status, r.exit_code) for r in done] == [("failed", 1)]
    assert "2 times" in done[0].reason
    assert ok_runs(ws) == {}
    assert batch.Ledger(ws).get(key)["status"] == "failed"


# ---------------------------------------------------------------- as a service

def test_rpp_watch_stops_on_sigterm_and_a_restart_finishes_without_repeating_a_frame(tmp_path, frames):
    raws, refcat = frames
    incoming = tmp_path / "cam"
    incoming.mkdir()
    ws = tmp_path / "ws"
    n_frames = 8
    for i in range(n_frames):
        (incoming / f"n{i}.fits").write_bytes(raws[i % len(raws)])
    env = dict(os.environ, RPP_WORKSPACE=str(ws), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "rpp_cli", "watch", str(incoming), "--out", str(ws), "--catalog", str(refcat),
           "--offline", "--poll", "0.2", "--settle", "0.3", "--set", "astrometry.solve=never",
           "--set", "cosmic_rays.niter=1", "--set", "services.enabled=", "--set", "output.zip=false",
           "--set", "output.formats=ecsv"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while sum(ok_runs(ws).values()) < 2 and time.monotonic() - t0 < 60 and proc.poll() is None:
            time.sleep(0.1)
        assert sum(ok_runs(ws).values()) >= 2, proc.stderr.read() if proc.poll() is not None else "timeout"
        proc.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - t_stop < 15
    first = ok_runs(ws)
    assert sum(first.values()) < n_frames, "stopped too late to test a restart"
    statuses = [json.loads(p.read_text())["status"] for p in ws.glob("n*/summary.json")]
    assert set(statuses) <= {"ok", "cancelled"} and statuses.count("cancelled") <= 1  # the frame stopped mid-way
    assert "watcher stopped" in err and "Traceback" not in err
    assert all(line.split()[1] == "ok" for line in out.splitlines() if line.strip()), out

    proc = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ok_runs(ws) == {f"n{i}": 1 for i in range(n_frames)}  # every frame exactly once over both lives
    restarted = [line.split()[2] for line in proc.stdout.splitlines() if line.strip()]
    assert sorted(restarted) == sorted(f"n{i}.fits" for i in range(n_frames) if f"n{i}" not in first)
    summary = (ws / "watch_cam" / "night_summary.csv").read_text().splitlines()
    assert len(summary) == 1 + n_frames


async def test_ignore_existing_skips_old_frames_and_recursive_finds_new_night_folders(tmp_path, frames):
    raws, refcat = frames
    root = tmp_path / "camera"
    (root / "2025-01-01").mkdir(parents=True)
    (root / "2025-01-01" / "old.fits").write_bytes(raws[0])
    results = []
    watcher = watch.Watcher(root, fast_profile(), out_dir=tmp_path / "ws", catalog_files=[refcat], poll_s=0.1,
                            settle_s=0.2, recursive=True, ignore_existing=True, on_result=results.append)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await asyncio.sleep(0.5)
        (root / "2025-01-02").mkdir()
        (root / "2025-01-02" / "new.fits").write_bytes(raws[1])
        assert await wait_for(lambda: len(results) == 1)
        await asyncio.sleep(0.4)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert [(r.name, r.status) for r in results] == [("new.fits", "ok")]
    assert ok_runs(tmp_path / "ws") == {"new": 1}
