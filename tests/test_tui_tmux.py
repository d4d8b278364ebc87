"""The real ``rpp`` program starts in a real terminal (tmux), answers keys and quits cleanly."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_tui_support import frames, tui_env  # noqa: F401 - fixtures

RPP = Path(sys.executable).with_name("rpp")



def test_tmux_is_installed():
    assert shutil.which("tmux"), "tmux is not installed: run make test (it installs tmux from Debian)"


class Tmux:
    def __init__(self, name: str, cwd: Path, env: dict[str, str], command: str, size=(80, 24)) -> None:
        self.name = name
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # TERM and a UTF-8 locale as an SSH session to a Linux box would have them
        shell = f"cd {shlex.quote(str(cwd))} && env TERM=xterm-256color LANG=C.UTF-8 {exports} {command}; echo EXITED=$?; sleep 30"
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]), shell],
                       check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run(["tmux", "send-keys", "-t", self.name, key], check=True)
            time.sleep(0.3)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["rpp", "rpp tui frames"])
def test_rpp_starts_in_a_real_80x24_terminal_browses_shows_help_and_quits(frames, tui_env, command):
    assert RPP.exists(), f"{RPP} is not installed: run make venv"
    env = {k: os.environ[k] for k in ("RPP_CONFIG_DIR", "RPP_CACHE_DIR", "RPP_WORKSPACE")}
    cwd = frames if command == "rpp" else tui_env
    session = Tmux(f"rpp-test-{os.getpid()}-{len(command)}", cwd, env, str(RPP) + command[3:])
    try:
        session.wait_for("? Help", 60)  # the footer: the whole first frame is drawn
        screen = session.wait_for("7 History", 10)
        assert "1 Files" in screen
        session.keys("Down")
        screen = session.wait_for("SYNTH", 30)
        assert "256 x 256 px" in screen
        assert "▀" in session.wait_for("▀", 30)  # the half-block preview is drawn
        session.keys("?")
        session.wait_for("RPP keys")
        session.keys("Escape")
        # a busy machine may deliver Escape and the next key together (read as alt+3): wait for help to close
        t0 = time.time()
        while "RPP keys" in session.screen() and time.time() - t0 < 20:
            time.sleep(0.2)
        session.keys("3")
        session.wait_for("No run yet")
        session.keys("q")
        screen = session.wait_for("EXITED=", 20)
        assert "EXITED=0" in screen
    finally:
        session.close()


@pytest.mark.slow
def test_rpp_runs_a_frame_in_a_real_terminal_and_shows_the_zero_point(frames, tui_env):
    assert RPP.exists(), f"{RPP} is not installed: run make venv"
    from rpp_core import settings

    profile = settings.Profile(name="tmux").replace(**{
        "calibration.catalog_files": [str(frames / "refcat.ecsv")], "services.offline": True,
        "astrometry.solve": "never", "cosmic_rays.niter": 1})
    settings.save_profile(profile)
    env = {k: os.environ[k] for k in ("RPP_CONFIG_DIR", "RPP_CACHE_DIR", "RPP_WORKSPACE")}
    session = Tmux(f"rpp-run-{os.getpid()}", tui_env, env, f"{RPP} tui frames --profile tmux", size=(100, 30))
    try:
        session.wait_for("? Help", 60)
        assert "profile tmux" in session.screen()
        session.keys("Down", "Enter", "r")
        session.wait_for("finished:", 120)
        # the results panel may be painted a frame after the status line on a loaded machine
        screen = session.wait_for("ZP G", 20)
        assert "±" in screen
        assert any((r / "catalog.csv").exists() for r in Path(env["RPP_WORKSPACE"]).iterdir())
        session.keys("4")
        session.wait_for("sources", 10)
        session.keys("q")
        assert "EXITED=0" in session.wait_for("EXITED=", 20)
    finally:
        session.close()


@pytest.mark.slow
def test_end_in_the_catalogue_shows_the_last_row_in_a_real_80x24_terminal(tui_env):
    from .test_tui_support import synthetic_catalogue

    cat, summary = synthetic_catalogue(n=344, seed=4)
    summary.pop("frame_obj")
    run = tui_env / "runs" / "many_20250102T030405"
    run.mkdir()
    cat.write(run / "catalog.fits")
    (run / "summary.json").write_text(__import__("json").dumps({**summary, "run_dir": str(run)}))
    (run / "run.log").write_text("synthetic run\n")
    env = {k: os.environ[k] for k in ("RPP_CONFIG_DIR", "RPP_CACHE_DIR", "RPP_WORKSPACE")}
    session = Tmux(f"rpp-end-{os.getpid()}", tui_env, env, str(RPP))
    try:
        session.wait_for("? Help", 60)
        session.keys("7")
        session.wait_for("many_20250102", 20)
        session.keys("Enter")
        session.wait_for("344 of 344 sources", 20)
        session.keys("End")
        screen = session.wait_for(" 344 ", 10)
        rows = [line.split()[0] for line in screen.splitlines() if line.strip()[:1].isdigit() and "sources" not in line]
        assert rows[-1] == "344", screen  # the last row is the last one on screen, not hidden
        session.keys("s", "s")  # sort by id, then reverse: the highlighted row (id 344) stays on screen
        screen = session.wait_for("sorted by id ▼", 10)
        assert " 344 " in screen, screen
        session.keys("q")
        assert "EXITED=0" in session.wait_for("EXITED=", 20)
    finally:
        session.close()
