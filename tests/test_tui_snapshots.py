"""What each screen looks like, at 80x24 (SSH) and 160x48, compared with accepted SVG snapshots.

Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the report. Paths on screen are relative to the test's working
directory (a tmp dir), and nothing shows a clock, so the pictures are stable.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rpp_core import events as ev
from rpp_tui import loaders
from rpp_tui.app import RppApp

from .test_tui_support import frames, run_folder, tui_env, wait_for  # noqa: F401 - fixtures

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["compact", "standard"])


def _settled(app):
    """No loader worker of ours still running (the tree's own loader never ends)."""
    return all(w.is_finished or w.name == "_loader" for w in app.workers)


async def _open(pilot, run_dir, tab):
    app = pilot.app
    app.show_run(loaders.load_run(run_dir))
    app.action_show_tab(tab)
    await wait_for(pilot, lambda: _settled(app), 30)
    await pilot.pause(0.2)


@SIZES
def test_files_screen_shows_header_facts_and_preview_of_the_highlighted_frame(snap_compare, frames, size):
    async def before(pilot):
        tree = pilot.app.query_one("#tree")
        await wait_for(pilot, lambda: pilot.app.focused is tree and tree.root.children, 30)
        await pilot.press("down")
        await wait_for(pilot, lambda: pilot.app.query_one("#preview").has_image, 30)
        await wait_for(pilot, lambda: "SYNTH" in str(pilot.app.query_one("#facts").content), 30)
        await pilot.pause(0.2)

    assert snap_compare(RppApp("frames"), terminal_size=size, run_before=before)


@SIZES
def test_parameters_screen_shows_observatory_settings_with_units_and_ranges(snap_compare, tui_env, size):
    # the observatory section: the one whose fields change least as the pipeline grows
    async def before(pilot):
        await pilot.press("2")
        await pilot.app.query_one("#parameters").build_section("observatory")
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_parameters_screen_explains_an_out_of_range_value(snap_compare, tui_env, size):
    async def before(pilot):
        await pilot.press("2", "enter", "tab", "tab", "end", "ctrl+u", "9", "5")  # latitude 95 deg
        pilot.app.focused.cursor_blink = False  # a blinking cursor would make the picture random
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_run_screen_midway_shows_done_running_and_waiting_stages(snap_compare, tui_env, size):
    async def before(pilot):
        app = pilot.app
        app.action_show_tab("run")
        job = SimpleNamespace(id=1)
        pane = app.query_one("#run")
        feed = [ev.RunStarted(path="frames/synth.fits", profile="night1", run_dir="runs/synth_20250102T030405"),
                ev.LogLine(level="INFO", message="rpp 0.1.0: frame frames/synth.fits, profile 'night1'")]
        # the first two stages of the contract done, the third one running with progress
        (s1, _), (s2, _), (s3, _) = ev.STAGES[:3]
        for i, (stage, secs, figs) in enumerate(((s1, 0.21, {"shape": "256x256"}), (s2, 0.01, {"exptime": 60.0}))):
            feed += [ev.StageStarted(stage=stage, index=i, total=len(ev.STAGES)),
                     ev.StageFinished(stage=stage, seconds=secs, figures=figs)]
        feed += [ev.StageStarted(stage=s3, index=2, total=len(ev.STAGES)),
                 ev.StageProgress(stage=s3, done=3, total=8, message="tile 3/8"),
                 ev.Warning(stage=s2, message="no AIRMASS in the header: computed from the site"),
                 ev.LogLine(level="DEBUG", message="a debug line, hidden at level INFO")]
        for event in feed:
            pane.handle(job, event)
        pane.set_status("Run #1 running: synth.fits  (x cancels)")
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_catalogue_screen_lists_sources_sorted_by_calibrated_magnitude(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "catalogue")
        await pilot.press(*["right"] * 5, "s", "down", "down")
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_catalogue_end_shows_the_last_row_highlighted(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "catalogue")
        await pilot.press("end")
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_catalogue_filter_that_does_not_parse_keeps_the_text_and_says_why_under_the_box(
        snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "catalogue")
        await pilot.press("slash", *list("snr>10 or"))
        pilot.app.focused.cursor_blink = False
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_run_screen_names_the_parameters_field_when_a_reference_file_is_missing(snap_compare, frames, size):
    async def before(pilot):
        app = pilot.app
        app.profile = app.profile.replace(**{"calibration.catalog_files": ["frames/missing.ecsv"],
                                             "services.offline": True})
        await pilot.pause(0.1)
        await pilot.press("r")
        await pilot.pause(0.3)

    assert snap_compare(RppApp("frames/synth.fits"), terminal_size=size, run_before=before)


@SIZES
def test_plots_screen_draws_the_zero_point_fit_with_rejected_points(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "plots")

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_image_screen_overlays_detections_and_calibrators(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "image")
        await wait_for(pilot, lambda: pilot.app.query_one("#frame-image").has_image, 30)
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_image_screen_asinh_stretch_at_one_to_one(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await _open(pilot, run_folder, "image")
        await wait_for(pilot, lambda: pilot.app.query_one("#frame-image").has_image, 30)
        await pilot.press("s", "s", "equals_sign")
        pilot.app.clear_notifications()  # the "stretch: ..." toasts come and go: not part of the picture
        await pilot.pause(0.3)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_history_screen_lists_the_run_folder(snap_compare, run_folder, tui_env, size):
    async def before(pilot):
        await pilot.press("7")
        await wait_for(pilot, lambda: len(pilot.app.query_one("#history").runs) == 1, 30)
        await pilot.pause(0.2)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)


@SIZES
def test_help_screen_lists_the_keys(snap_compare, tui_env, size):
    async def before(pilot):
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(RppApp("."), terminal_size=size, run_before=before)
