"""A whole observer session driven with key presses through the real app and the real pipeline."""

from __future__ import annotations

import json
import stat
import tomllib

import numpy as np
import pytest

from rpp_tui.app import RppApp
from rpp_tui.widgets.catalogue_table import CatalogueTable

from .test_tui_support import LoopLag, frames, tui_env, wait_for  # noqa: F401 - fixtures

SECTIONS = ["observatory", "masks", "background", "detection", "cosmic_rays", "photometry", "astrometry", "calibration",
            "services", "output", "secrets"]


async def focus_field(pilot, app, section: str, name: str) -> None:
    """Go to Parameters, open ``section`` from the list and Tab to the editor of ``name``."""
    await pilot.press("escape", "2")
    sections = app.query_one("#sections")
    assert app.focused is sections
    sections.highlighted = 0
    await pilot.press(*["down"] * SECTIONS.index(section), "enter")
    target = f"input-{section}-{name}"
    for _ in range(40):
        if app.focused is not None and app.focused.id == target:
            return
        await pilot.press("tab")
    raise AssertionError(f"could not reach {target} with Tab; focus is on {app.focused}")


async def type_into(pilot, app, section: str, name: str, text: str) -> None:
    await focus_field(pilot, app, section, name)
    await pilot.press("end", "ctrl+u", *list(text))


@pytest.mark.slow
async def test_observer_session_pick_edit_save_run_sort_plot_queue_and_cancel(frames, tui_env):
    frame = frames / "synth.fits"
    refcat = frames / "refcat.ecsv"
    app = RppApp("frames")
    async with app.run_test(size=(100, 32)) as pilot:
        # Files: the tree lists the frame, not the text file nor the catalogue; Enter selects it
        await pilot.pause(0.3)
        tree = app.query_one("#tree")
        labels = [str(n.label) for n in tree.root.children]
        assert labels == ["synth.fits"], labels
        await pilot.press("down", "enter")
        assert app.selected_path == frame
        await wait_for(pilot, lambda: "SYNTH" in str(app.query_one("#facts").content), 30)
        await wait_for(pilot, lambda: app.query_one("#preview").has_image, 30)

        # Parameters: an out-of-range value is refused as typed, with the allowed range named
        niter_before = app.profile.cosmic_rays.niter
        await type_into(pilot, app, "cosmic_rays", "niter", "0")
        field = app.query_one("#field-cosmic_rays-niter")
        assert field.has_class("-invalid")
        assert "1 to 10" in field.error
        assert app.profile.cosmic_rays.niter == niter_before  # unchanged while invalid
        await pilot.press("end", "backspace", "1")
        assert not field.has_class("-invalid")
        assert app.profile.cosmic_rays.niter == 1
        await type_into(pilot, app, "calibration", "catalog_files", str(refcat))
        assert app.profile.calibration.catalog_files == [str(refcat)]
        await focus_field(pilot, app, "services", "offline")
        if not app.profile.services.offline:
            await pilot.press("space")
        assert app.profile.services.offline is True
        await focus_field(pilot, app, "astrometry", "solve")
        choices = app.query_one("#field-astrometry-solve").meta["choices"]
        steps = choices.index("never") - choices.index(app.profile.astrometry.solve)
        await pilot.press("enter", *(["down"] * steps if steps > 0 else ["up"] * -steps), "enter")
        assert app.profile.astrometry.solve == "never"
        assert app.profile_dirty and app.sub_title.startswith("profile default*")

        # save as a new profile: a TOML file in the user config dir with the edited values
        await pilot.press("ctrl+n", "ctrl+u", *list("night1"), "enter")
        saved = tui_env / "config" / "profiles" / "night1.toml"
        await wait_for(pilot, saved.exists, 10)
        data = tomllib.loads(saved.read_text())
        assert data["cosmic_rays"]["niter"] == 1 and data["services"]["offline"] is True
        assert data["calibration"]["catalog_files"] == [str(refcat)]
        assert app.sub_title.startswith("profile night1 ")

        # run: stages tick, the UI keeps answering, the summary shows the core's numbers
        await pilot.press("escape", "r")
        assert app.query_one("#tabs").active == "run"
        lag = LoopLag().start()
        job = app.runner.jobs[0]
        await wait_for(pilot, lambda: job.state != "running" and job.state != "queued", 180)
        max_lag = lag.stop()
        assert job.state == "finished", job.error
        summary = job.result.summary
        states = app.query_one("#stages").states()
        assert states["detect"] == "done" and states["calibrate"] == "done" and states["output"] == "done"
        assert states["astrometry"] == "skipped"
        shown = str(app.query_one("#run-summary").content)
        # the core's numbers, the error to two significant digits
        from rpp_core.plots import value_with_error

        assert f"ZP G         {value_with_error(summary.zp, summary.zp_err)}" in shown
        assert "sky.html" in shown and (job.run_dir / "sky.html").exists()
        assert f"Sources      {summary.n_sources}" in shown
        assert (job.run_dir / "catalog.csv").exists()
        print(f"run 1: {summary.total_seconds:.2f} s in the core, worst UI stall {max_lag * 1000:.0f} ms")
        assert max_lag < 1.0

        # the log keeps everything; l raises the level shown, and cycling back shows the debug lines too
        log = app.query_one("#run-log")
        info_lines = log.shown_text().splitlines()
        assert any(line.startswith("I ") for line in info_lines) and not any(line.startswith("D ") for line in info_lines)
        await pilot.press("l")
        assert log.level == "WARNING"
        assert all(line[:2] in ("W ", "E ") for line in log.shown_text().splitlines())
        await pilot.press("l", "l")
        assert log.level == "DEBUG"
        assert any(line.startswith("D ") for line in log.shown_text().splitlines())
        await pilot.press("l")

        # Catalogue: enter jumps to results; sort the highlighted column both ways
        await pilot.press("enter")
        assert app.query_one("#tabs").active == "catalogue"
        table = app.query_one(CatalogueTable)
        assert table.total_rows == summary.n_sources
        target = next(c for c in table.columns if c.startswith("mag_cal"))
        while table.current_column() != target:
            await pilot.press("right")
        await pilot.press("s")
        values = table.arrays[target][table.visible_rows()]
        finite = values[np.isfinite(values)]
        assert len(finite) > 5 and np.all(np.diff(finite) >= 0)
        await pilot.press("s")
        values = table.arrays[target][table.visible_rows()]
        finite = values[np.isfinite(values)]
        assert np.all(np.diff(finite) <= 0)
        assert "sorted by " + target in str(app.query_one("#cat-status").content)

        # Plots: the zero-point fit, found through the command palette
        await pilot.press("ctrl+p", *list("zero-point plot"))
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.query_one("#tabs").active == "plots"
        plot = app.query_one("#figure")
        assert plot.figure == "zp_fit"
        assert "Zero point" in str(plot.render())

        # queue two runs; cancel the first of them midway: the second still runs to the end
        # simulate_key posts the key events without the pilot's wait-for-idle, which lasts as long as a
        # short run: two quick presses, as a user would make them
        app.simulate_key("r")
        app.simulate_key("r")
        await wait_for(pilot, lambda: len(app.runner.jobs) == 3, 10, 0.005)
        second, third = app.runner.jobs[1], app.runner.jobs[2]
        assert third.state == "queued", (second.state, second.error)
        await wait_for(pilot, lambda: second.state == "running" and second.run_dir is not None, 30, 0.005)
        app.simulate_key("x")
        await wait_for(pilot, lambda: second.state not in ("queued", "running"), 60)
        assert second.state == "cancelled"
        assert not (second.run_dir / "catalog.csv").exists()
        assert not (second.run_dir / "catalog.ecsv").exists()
        assert (second.run_dir / "run.log").exists()
        assert json.loads((second.run_dir / "summary.json").read_text())["status"] == "cancelled"
        await wait_for(pilot, lambda: third.state not in ("queued", "running"), 180)
        assert third.state == "finished"
        assert (third.run_dir / "catalog.csv").exists()

        # History lists the three runs
        await pilot.press("7")
        await wait_for(pilot, lambda: len(app.query_one("#history").runs) == 3, 10)


async def test_api_key_is_stored_0600_and_never_shown(tui_env):
    app = RppApp(str(tui_env))
    secret = "abc123-very-secret"
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("2")
        app.query_one("#sections").highlighted = SECTIONS.index("secrets")
        await pilot.press("enter")
        assert app.focused.id == "secret-astrocolibri_uid"
        await pilot.press(*list(secret), "enter")
        path = tui_env / "config" / "secrets.toml"
        await wait_for(pilot, lambda: path.exists() and app.focused.value == "", 30)  # a loaded machine may be slow
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert tomllib.loads(path.read_text())["astrocolibri_uid"] == secret
        assert app.focused.value == ""
        screen_text = app.export_screenshot()
        assert secret not in screen_text
        assert f"({len(secret)} chars)" in str(app.query_one("#secret-state-astrocolibri_uid").content)
        assert app.focused.placeholder.endswith(f"({len(secret)} chars)")
