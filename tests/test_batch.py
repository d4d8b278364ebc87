"""A night of frames through `rpp batch`: per-frame results against truth, a bad frame that
does not stop the night, re-runs that skip what is done, and the same results on Dask."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rpp_cli import main as cli
from rpp_core import batch
from rpp_core.errors import UsageError
from rpp_core.synthetic import make_frame

from .conftest_pipeline_helpers import offline_profile
from .proctable import processes

# one field observed four times: seeing and transparency change through the night
NIGHT = [  # (time, fwhm px, zp0)
    ("2025-01-02T20:00:00", 3.0, 25.00),
    ("2025-01-02T20:30:00", 3.5, 24.90),
    ("2025-01-02T21:00:00", 4.0, 24.80),
    ("2025-01-02T21:30:00", 4.5, 25.10),
]
GAIN = 1.5


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Frames of one night in a folder (plus a corrupt one) and the field's reference catalogue."""
    root = tmp_path_factory.mktemp("night")
    frames = root / "frames"
    frames.mkdir()
    for i, (date, fwhm, zp0) in enumerate(NIGHT):
        f = make_frame(shape=(256, 256), n_stars=60, seed=11, fwhm=fwhm, zp0=zp0, gain=GAIN, date_obs=date,
                       n_cosmics=10)
        f.write(frames / f"night_{i:03d}.fits")
    f.write_refcat(root / "refcat.ecsv")
    # a frame the camera cut short: a valid header, half the data
    raw = (frames / "night_000.fits").read_bytes()
    (frames / "night_004_truncated.fits").write_bytes(raw[: len(raw) // 2])
    return frames, root / "refcat.ecsv"


def fast_profile(**changes):
    return offline_profile(**{"output.formats": ["ecsv"], "output.zip": False, **changes})


@pytest.fixture(scope="module")
def first_night(night, tmp_path_factory):
    """The night processed once on a local pool of 2 workers (shared by the tests that compare to it)."""
    frames, refcat = night
    ws = tmp_path_factory.mktemp("ws_first")
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RPP_CACHE_DIR", str(ws / "cache"))
        report = batch.run_batch([frames], fast_profile(), jobs=2, out_dir=ws, catalog_files=[refcat],
                                 on_result=lambda r, n, total: seen.append((r, n, total)))
    return report, seen, ws


def finished_runs(ws: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in ws.iterdir():
        if (d / "summary.json").exists() and json.loads((d / "summary.json").read_text()).get("status") == "ok":
            stem = re.sub(r"_\d{8}T\d{6}(_\d+)?$", "", d.name)
            counts[stem] = counts.get(stem, 0) + 1
    return counts


def test_a_night_gives_one_line_per_frame_and_a_summary_and_the_bad_frame_does_not_stop_it(night, first_night):
    frames, refcat = night
    report, seen, ws = first_night
    profile = fast_profile()
    assert [n for _, n, _ in seen] == [1, 2, 3, 4, 5] and {t for *_, t in seen} == {5}
    by_name = {r.name: r for r in report.results}
    bad = by_name.pop("night_004_truncated.fits")
    assert bad.status == "failed" and bad.exit_code == 3, bad
    assert "night_004_truncated.fits" in bad.reason
    assert "FAILED" in bad.line(5, 5) and "exit 3" in bad.line(5, 5)
    assert report.exit_code == 3

    good = [by_name[f"night_{i:03d}.fits"] for i in range(4)]
    assert all(r.status == "ok" for r in good), [(r.name, r.reason) for r in good]
    zp_adu = [zp0 - 2.5 * np.log10(GAIN) for _, _, zp0 in NIGHT]
    for r, (date, fwhm, _) in zip(good, NIGHT):
        assert r.fwhm_px == pytest.approx(fwhm, rel=0.10), r
        assert r.n_sources >= 50 and r.n_calibrators >= 5
        assert r.date_obs.startswith(date[:16])
        assert Path(r.run_dir).parent == Path(ws).resolve()
        line = r.line(1, 5)
        assert line.split()[1] == "ok" and f"fwhm {r.fwhm_px:.2f} px" in line and f"zp {r.zp:.3f}" in line
    # the zero point follows the transparency frame to frame (aperture losses cancel in differences
    # only when the seeing is the same, so allow the curve-of-growth change between 3 and 4.5 px)
    dz = np.array([r.zp for r in good]) - good[0].zp
    assert np.allclose(dz, np.array(zp_adu) - zp_adu[0], atol=0.04), dz

    # the night summary: one row per frame in time order, the bad frame last, and text plots
    rows = list(csv.DictReader(open(report.files["night_summary.csv"])))
    assert [r["frame"] for r in rows] == [f"night_{i:03d}.fits" for i in range(4)] + ["night_004_truncated.fits"]
    assert float(rows[2]["zp"]) == pytest.approx(good[2].zp, abs=1e-6)
    text = report.files["night_summary.txt"].read_text()
    assert "ok 4" in text and "failed 1" in text and "FAILED night_004_truncated.fits" in text
    zp_plot = report.files["zp_vs_time.txt"].read_text()
    assert "zero point" in zp_plot.lower() and "hours since 2025-01-02T20:00:30" in zp_plot  # mid-exposure
    assert "\x1b[" not in zp_plot  # plain text, no terminal colours
    assert "FWHM" in report.files["fwhm_vs_time.txt"].read_text()
    assert (report.report_dir / "run.log").exists()
    assert finished_runs(ws) == {f"night_{i:03d}": 1 for i in range(4)}

    # run again: done frames are skipped (no new run folders), the bad one is tried again
    again = batch.run_batch([frames], profile, jobs=2, out_dir=ws, catalog_files=[refcat])
    status = {r.name: r.status for r in again.results}
    assert status == {**{f"night_{i:03d}.fits": "skipped" for i in range(4)}, "night_004_truncated.fits": "failed"}
    assert {r.name: r.zp for r in again.results if r.status == "skipped"} == {r.name: r.zp for r in good}
    assert finished_runs(ws) == {f"night_{i:03d}": 1 for i in range(4)}

    # a frame rewritten by the camera, --force, or another profile: processed again
    os.utime(frames / "night_001.fits")
    forced = batch.run_batch([frames / "night_000.fits", frames / "night_001.fits", frames / "night_002.fits"],
                             profile, jobs=2, out_dir=ws, catalog_files=[refcat], force=False)
    assert [r.status for r in forced.results] == ["skipped", "ok", "skipped"]
    forced = batch.run_batch([frames / "night_000.fits"], profile, jobs=1, out_dir=ws, catalog_files=[refcat],
                             force=True, report=False)
    assert forced.results[0].status == "ok" and forced.results[0].zp == pytest.approx(good[0].zp, abs=1e-6)
    other = fast_profile(**{"detection.threshold_sigma": 6.0})
    assert batch.run_batch([frames / "night_002.fits"], other, jobs=1, out_dir=ws, catalog_files=[refcat],
                           report=False).results[0].status == "ok"
    assert finished_runs(ws) == {"night_000": 2, "night_001": 2, "night_002": 2, "night_003": 1}


def test_rpp_batch_command_prints_frame_lines_and_exits_with_the_failure_code(night, tmp_path, capsys):
    frames, refcat = night
    ws = tmp_path / "ws"
    args = ["batch", str(frames / "night_000.fits"), str(frames / "night_004_truncated.fits"), "--jobs", "2",
            "--out", str(ws), "--catalog", str(refcat), "--offline", "--set", "astrometry.solve=never",
            "--set", "cosmic_rays.niter=1", "--set", "services.enabled=", "--set", "output.zip=false"]
    assert cli.main(args) == 3
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert len(lines) == 2
    assert any(" ok " in ln and "night_000.fits" in ln and "fwhm" in ln and "src" in ln for ln in lines)
    assert any("FAILED" in ln and "night_004_truncated.fits" in ln and "exit 3" in ln for ln in lines)
    assert "night summary:" in out and "ok 1" in out

    assert cli.main(["batch", str(tmp_path / "nowhere"), "--out", str(ws)]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["batch", str(empty), "--out", str(ws)]) == 2


def test_batch_on_a_dask_cluster_gives_the_same_results_as_the_local_pool(night, first_night, tmp_path):
    distributed = pytest.importorskip("distributed")
    frames, refcat = night
    profile = fast_profile()
    inputs = [frames / "night_000.fits", frames / "night_003.fits", frames / "night_004_truncated.fits"]
    local_by_name = {r.name: r for r in first_night[0].results}
    local = batch.BatchReport([local_by_name[p.name] for p in inputs], None, {}, 0.0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        remote = batch.run_batch(inputs, profile, scheduler=cluster.scheduler_address, out_dir=tmp_path / "dask",
                                 catalog_files=[refcat])
    assert [r.name for r in remote.results] == [r.name for r in local.results]
    for a, b in zip(local.results, remote.results):
        assert (a.status, a.exit_code) == (b.status, b.exit_code), (a, b)
        assert a.n_sources == b.n_sources and a.n_calibrators == b.n_calibrators
        if a.status == "ok":
            assert a.zp == pytest.approx(b.zp, abs=1e-6) and a.fwhm_px == pytest.approx(b.fwhm_px, abs=1e-6)
            assert Path(b.run_dir).parent == (tmp_path / "dask").resolve()
    assert remote.exit_code == local.exit_code == 3
    assert "Dask" in remote.files["night_summary.txt"].read_text()


def test_scheduler_without_dask_installed_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(UsageError, match=r"rpp\[dask\]"):
        batch.connect_dask("tcp://127.0.0.1:1")


def test_unreachable_scheduler_is_a_usage_error_naming_it(night, tmp_path):
    pytest.importorskip("distributed")
    frames, refcat = night
    with pytest.raises(UsageError, match="tcp://127.0.0.1:9"):
        batch.connect_dask("tcp://127.0.0.1:9", timeout="1s")


def test_frames_of_one_field_wait_for_the_first_so_the_catalogue_is_fetched_once(tmp_path):
    """Two fields interleaved through the night: the first frame of each field runs alone for its
    field; the others of that field start only after it finished (then the cache has the answer)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        ra = 150.0 if i % 2 == 0 else 210.0
        f = make_frame(shape=(128, 128), n_stars=20, seed=i, ra0=ra + 0.01 * i, dec0=20.0, n_cosmics=0)
        f.write(folder / f"f{i}.fits")
    (folder / "junk.fits").write_bytes(b"not a fits file" * 300)
    frames = batch.collect_frames([folder])
    assert batch.group_fields(frames) == ["F1", "F2", "F1", "F2", ""]

    report = batch.run_batch([folder], fast_profile(**{"photometry.psf": False}), jobs=2,
                             out_dir=tmp_path / "ws", report=False)
    starts, ends = {}, {}
    for r in report.results:
        if r.status == "ok":
            run = Path(r.run_dir)
            first = (run / "run.log").read_text().split(" ", 1)[0]  # log lines start with a UTC time
            starts[r.name] = dt.datetime.fromisoformat(first).replace(tzinfo=dt.timezone.utc).timestamp()
            ends[r.name] = (run / "summary.json").stat().st_mtime
    firsts = {"F1": "f0.fits", "F2": "f1.fits"}
    assert starts["f2.fits"] >= ends[firsts["F1"]] - 0.05
    assert starts["f3.fits"] >= ends[firsts["F2"]] - 0.05
    assert {r.field for r in report.results} == {"F1", "F2", ""}


def test_ledger_is_shared_and_survives_a_torn_or_foreign_file(tmp_path):
    frame = tmp_path / "a.fits"
    frame.write_bytes(b"x" * 2880)
    k1 = batch.FrameKey.of(frame, "p1")
    k2 = batch.FrameKey.of(frame, "p2")
    l1, l2 = batch.Ledger(tmp_path / "ws"), batch.Ledger(tmp_path / "ws")
    l1.put(k1, {"status": "ok", "zp": 25.0})
    l2.put(k2, {"status": "failed"})  # another process: read-merge-write keeps k1
    assert batch.Ledger(tmp_path / "ws").get(k1)["zp"] == 25.0
    assert batch.Ledger(tmp_path / "ws").get(k2)["status"] == "failed"
    assert not list((tmp_path / "ws" / batch.LEDGER_DIRNAME).glob("*.tmp"))
    shard = next((tmp_path / "ws" / batch.LEDGER_DIRNAME).glob("*.json"))
    shard.write_text('{"version": 1, "frames": {')  # cut short by a full disk
    assert batch.Ledger(tmp_path / "ws").get(k1) is None  # redo rather than crash
    time.sleep(0.01)
    frame.write_bytes(b"y" * 2880)
    assert batch.FrameKey.of(frame, "p1").id != k1.id


def test_a_night_on_one_field_asks_the_catalogue_service_once(frame_catalog_server, tmp_path, monkeypatch):
    """No local catalogue: Gaia from a loopback TAP server. Three frames of one field on two workers
    send exactly the requests one frame alone sends: the others read the cached answer."""
    folder = tmp_path / "field"
    folder.mkdir()
    made = []
    for i, (_date, fwhm, zp0) in enumerate(NIGHT[:3]):
        # one DATE-OBS for all: the Gaia client widens the cone by the proper-motion epoch span, so its
        # ADQL (the cache key) can change in the 7th decimal between frames hours apart
        f = make_frame(shape=(256, 256), n_stars=60, seed=11, fwhm=fwhm, zp0=zp0, gain=GAIN,
                       date_obs=NIGHT[0][0], n_cosmics=10, mag_range=(12.0, 18.0))
        f.write(folder / f"n{i}.fits")
        made.append(f)
    server = frame_catalog_server(made[0])
    svc = server.settings()
    profile = fast_profile(**{"services.offline": False, "services.enabled": ["gaia"], "calibration.catalog": "auto",
                              **{f"services.{k}": getattr(svc, k) for k in ("gaia_tap", "timeout_s", "retries",
                                                                             "rate_limit_per_s")}})
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "cache_one"))
    one = batch.run_batch([folder / "n0.fits"], profile, jobs=1, out_dir=tmp_path / "ws_one", report=False)
    assert one.results[0].status == "ok", one.results[0]
    assert one.results[0].n_calibrators >= 5
    per_frame = server.count("gaia")
    assert per_frame > 0

    server.reset()
    server.fail("gaia", times=3, delay=1.5)  # a slow archive: frames started together would all ask it
    monkeypatch.setenv("RPP_CACHE_DIR", str(tmp_path / "cache_night"))
    night = batch.run_batch([folder], profile, jobs=2, out_dir=tmp_path / "ws_night", report=False)
    assert [r.status for r in night.results] == ["ok", "ok", "ok"], [r.reason for r in night.results]
    assert server.count("gaia") == per_frame, [(r["time"], r["params"]["QUERY"][-90:]) for r in server.requests_of("gaia")]
    assert night.results[0].zp == pytest.approx(one.results[0].zp, abs=1e-6)


def _children(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid]


def _kill_pool_workers() -> list[int]:
    """SIGKILL every process the forkserver of this process forked (the pool's workers); their pids."""
    killed = []
    for server in _children(os.getpid()):
        if b"forkserver" not in Path(f"/proc/{server}/cmdline").read_bytes():
            continue
        for worker in _children(server):
            os.kill(worker, 9)
            killed.append(worker)
    return killed


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_a_worker_killed_mid_frame_is_replaced_and_the_frame_redone(night, tmp_path):
    """What the kernel's OOM killer does to a worker: the batch goes on and no frame is lost."""
    frames, refcat = night
    inputs = [frames / f"night_{i:03d}.fits" for i in range(3)]
    killed: list[int] = []

    def kill_worker() -> None:
        if not killed:
            killed.extend(_kill_pool_workers())

    report = batch.run_batch(inputs, fast_profile(), jobs=1, out_dir=tmp_path / "ws", catalog_files=[refcat],
                             report=False, on_tick=kill_worker)
    assert killed
    assert [r.status for r in report.results] == ["ok", "ok", "ok"], [r.reason for r in report.results]
    assert finished_runs(tmp_path / "ws") == {f"night_{i:03d}": 1 for i in range(3)}
    # plus the killed attempt's partial folder (none if the worker died between two frames)
    assert len([d for d in (tmp_path / "ws").iterdir() if d.name.startswith("night_")]) in (3, 4)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_a_worker_killed_between_two_frames_is_replaced_and_the_batch_goes_on(night, tmp_path):
    """The pool is found broken when the next frame is handed out, not by a frame's result."""
    frames, refcat = night
    inputs = [frames / f"night_{i:03d}.fits" for i in range(3)]
    killed: list[int] = []

    def kill_idle_worker(result, done, total) -> None:
        if not killed:
            killed.extend(_kill_pool_workers())
            time.sleep(0.5)  # the pool's manager thread sees the death (its sentinel) long before this ends

    report = batch.run_batch(inputs, fast_profile(), jobs=1, out_dir=tmp_path / "ws", catalog_files=[refcat],
                             report=False, on_result=kill_idle_worker)
    assert killed
    assert [r.status for r in report.results] == ["ok", "ok", "ok"], [r.reason for r in report.results]
    assert finished_runs(tmp_path / "ws") == {f"night_{i:03d}": 1 for i in range(3)}
