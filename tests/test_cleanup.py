"""Old runs go away by age and size; nothing that is not a run folder is ever touched."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest

from rpp_cli import clean
from rpp_core import cleanup
from rpp_core.settings import OutputSettings

DAY = 86400.0


def make_run(ws: Path, name: str, age_days: float, size_kb: int = 10, finished=True, now=None) -> Path:
    run = ws / name
    (run / "plots").mkdir(parents=True)
    (run / "run.log").write_text("log\n")
    (run / "plots" / "zp.txt").write_bytes(b"x" * (size_kb * 1024))
    markers = [run / "run.log"]
    if finished:
        (run / "summary.json").write_text(json.dumps({"fwhm_px": 3.5}))
        markers.append(run / "summary.json")
    t = (now or time.time()) - age_days * DAY
    for m in markers:
        os.utime(m, (t, t))
    return run


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    runs = {
        "old1": make_run(ws, "a_20250101T000000", 40, 100, now=now),
        "old2": make_run(ws, "b_20250105T000000", 35, 100, now=now),
        "mid": make_run(ws, "c_20250201T000000", 10, 300, now=now),
        "new": make_run(ws, "d_20250301T000000", 1, 200, now=now),
    }
    # things that are not run folders, however old and big
    keep = ws / "my_notes"
    keep.mkdir()
    (keep / "big.bin").write_bytes(b"y" * 500 * 1024)
    old = time.time() - 400 * DAY
    os.utime(keep / "big.bin", (old, old))
    os.utime(keep, (old, old))
    (ws / "ledger.json").write_text("{}")
    os.utime(ws / "ledger.json", (old, old))
    outside = tmp_path / "elsewhere_run"
    outside.mkdir()
    (outside / "summary.json").write_text("{}")
    os.utime(outside / "summary.json", (old, old))
    (ws / "linked_run").symlink_to(outside, target_is_directory=True)
    return ws, runs, keep, outside


def test_dry_run_lists_old_runs_and_deletes_nothing(workspace):
    ws, runs, keep, outside = workspace
    removals = cleanup.clean(ws, older_than="30d", dry_run=True)
    assert sorted(r.run.path.name for r in removals) == sorted([runs["old1"].name, runs["old2"].name])
    assert all(not r.removed and r.reason == "age" for r in removals)
    assert all(p.exists() for p in runs.values())


def test_runs_older_than_30_days_are_removed_and_nothing_else(workspace):
    ws, runs, keep, outside = workspace
    removals = cleanup.clean(ws, older_than="30d")
    assert all(r.removed for r in removals) and len(removals) == 2
    assert not runs["old1"].exists() and not runs["old2"].exists()
    assert runs["mid"].exists() and runs["new"].exists()
    # not run folders: untouched whatever their age
    assert (keep / "big.bin").stat().st_size == 500 * 1024
    assert (ws / "ledger.json").exists()
    assert (ws / "linked_run").is_symlink() and (outside / "summary.json").exists()
    assert not [p for p in ws.iterdir() if ".deleting" in p.name]


def test_size_bound_removes_oldest_runs_until_the_rest_fit(workspace):
    ws, runs, keep, outside = workspace
    sizes = {k: cleanup._folder_size(p) for k, p in runs.items()}
    bound = sizes["mid"] + sizes["new"] + 1024  # room for the two newest only
    removals = cleanup.clean(ws, max_size=bound)
    assert [r.run.path.name for r in removals] == [runs["old1"].name, runs["old2"].name]
    assert {r.reason for r in removals} == {"size"}
    remaining = sum(r.size for r in cleanup.find_runs(ws))
    assert remaining <= bound
    assert remaining == sizes["mid"] + sizes["new"]
    assert keep.exists()


def test_size_bound_spares_a_run_that_may_still_be_running(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    running = make_run(ws, "r_now", 0.01, 100, finished=False)
    done = make_run(ws, "r_done", 0.5, 100)
    removals = cleanup.clean(ws, max_size=1)
    assert [r.run.path for r in removals] == [done]
    assert running.exists()


def test_retention_settings_after_a_run_keep_the_current_run(workspace):
    ws, runs, keep, outside = workspace
    assert cleanup.apply_retention(ws, OutputSettings()) == []  # 0 = keep everything
    assert all(p.exists() for p in runs.values())

    removed = cleanup.apply_retention(ws, OutputSettings(keep_days=20))
    assert sorted(p.name for p in removed) == sorted([runs["old1"].name, runs["old2"].name])

    # a bound smaller than everything: all finished runs go except the one just made
    removed = cleanup.apply_retention(ws, OutputSettings(max_total_gb=1e-9), keep=runs["mid"])
    assert [p.name for p in removed] == [runs["new"].name]
    assert runs["mid"].exists()
    assert keep.exists() and (ws / "ledger.json").exists()


def test_rpp_clean_command_dry_run_prints_and_exit_codes(workspace, capsys):
    ws, runs, keep, outside = workspace
    parser = argparse.ArgumentParser(prog="rpp")
    clean.register(parser.add_subparsers())
    args = parser.parse_args(["clean", "--older-than", "30d", "--max-size", "1G", "--dry-run", "--out", str(ws)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "would remove 2 run folder(s)" in out
    assert runs["old1"].name in out and runs["mid"].name not in out
    assert runs["old1"].exists()

    args = parser.parse_args(["clean", "--older-than", "thirty days", "--out", str(ws)])
    assert args.func(args) == 2
    assert "30d" in capsys.readouterr().err

    args = parser.parse_args(["clean", "--out", str(ws)])  # no rule given, default profile has none
    assert args.func(args) == 2

    args = parser.parse_args(["clean", "--older-than", "9d", "--out", str(ws)])
    assert args.func(args) == 0
    assert sorted(p.name for p in ws.iterdir() if not p.name.startswith(".")) == sorted(
        ["d_20250301T000000", "my_notes", "ledger.json", "linked_run"])


@pytest.mark.parametrize("text,seconds", [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("2w", 14 * DAY), ("7", 7 * DAY)])
def test_ages_are_read_with_units(text, seconds):
    assert cleanup.parse_age(text) == seconds


@pytest.mark.parametrize("text,n", [("10G", 10 * 1024**3), ("500M", 500 * 1024**2), ("2GB", 2 * 1024**3), ("123", 123), ("1.5K", 1536)])
def test_sizes_are_read_in_powers_of_1024(text, n):
    assert cleanup.parse_size(text) == n
