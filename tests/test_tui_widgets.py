"""Screens and widgets of the app, each driven through the Pilot or measured directly."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from textual.app import App, ComposeResult

from rpp_tui.app import RppApp
from rpp_tui.commands import COMMANDS
from rpp_tui.widgets.catalogue_table import CatalogueTable, column_arrays, filter_mask, magnitude_aliases
from rpp_tui.widgets.halfblock import HalfBlockImage, Marker

from .test_tui_support import LoopLag, frames, run_folder, tui_env, wait_for  # noqa: F401 - fixtures


class _One(App):
    def __init__(self, widget) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


def _big_catalogue(n: int = 20_000, seed: int = 1) -> Table:
    rng = np.random.default_rng(seed)
    t = Table()
    t["id"] = np.arange(1, n + 1)
    for name in ("x", "y", "ra", "dec", "mag_ap1p5", "mag_ap2", "magerr_ap2", "snr_ap2", "fwhm", "bkg_ap2",
                 "mag_cal_ap2", "magerr_cal_ap2", "psf_mag", "psf_magerr", "sharpness", "roundness1"):
        t[name] = rng.normal(15, 2, n)
    t["flags"] = rng.integers(0, 8, n)
    t["simbad_name"] = np.where(rng.random(n) < 0.01, "NGC 1234", "")
    return t


def test_filter_understands_ranges_short_names_and_text():
    t = _big_catalogue(1000)
    arrays = column_arrays(t)
    snr = arrays["snr_ap2"]
    assert filter_mask(arrays, "snr>15").sum() == (snr > 15).sum()  # 'snr' means the one snr_* column
    both = filter_mask(arrays, "snr_ap2 > 15 and flags == 0")
    assert both.sum() == ((snr > 15) & (arrays["flags"] == 0)).sum()
    assert filter_mask(arrays, "mag>10, mag<14", prefer="ap2").sum() == ((arrays["mag_ap2"] > 10) & (arrays["mag_ap2"] < 14)).sum()
    assert filter_mask(arrays, "ngc 1234").sum() == (arrays["simbad_name"] == "NGC 1234").sum() > 0
    with pytest.raises(ValueError, match="ambiguous: one of mag_ap1p5, mag_ap2"):
        filter_mask(arrays, "mag > 3")
    with pytest.raises(ValueError, match="no column 'nosuch'"):
        filter_mask(arrays, "nosuch > 3")
    with pytest.raises(ValueError, match="no column 'abc'"):
        filter_mask(arrays, "snr > abc")


def test_filter_takes_or_not_and_parentheses_as_pandas_does():
    t = _big_catalogue(1000)
    arrays = column_arrays(t)
    snr, flags, mag = arrays["snr_ap2"], arrays["flags"], arrays["mag_ap2"]
    got = filter_mask(arrays, "snr>16 or mag<12", prefer="ap2")
    assert got.sum() == ((snr > 16) | (mag < 12)).sum() > (snr > 16).sum()
    got = filter_mask(arrays, "snr>14 and (flags==0 or mag<13)", prefer="ap2")
    assert np.array_equal(got, (snr > 14) & ((flags == 0) | (mag < 13)))
    assert np.array_equal(filter_mask(arrays, "not flags==0"), flags != 0)
    assert filter_mask(arrays, "simbad_name == 'NGC 1234'").sum() == (arrays["simbad_name"] == "NGC 1234").sum()
    for text in ("snr>10 or", "snr>", "(snr>10", "simbad_name > 3"):
        with pytest.raises(ValueError):
            filter_mask(arrays, text)


def test_mag_in_a_filter_means_the_calibrated_magnitude_when_the_frame_is_calibrated():
    t = _big_catalogue(1000)
    t["mag_ap2"] = t["mag_cal_ap2"] - 24.5  # instrumental magnitudes are ~ -10
    arrays = column_arrays(t)
    aliases = magnitude_aliases(arrays, "ap2")
    assert aliases["mag"] == "mag_cal_ap2"
    bright = filter_mask(arrays, "mag<15", prefer="ap2", aliases=aliases)
    assert np.array_equal(bright, arrays["mag_cal_ap2"] < 15) and 0 < bright.sum() < 1000
    t["mag_cal_ap2"] = np.nan  # not calibrated: mag is the instrumental magnitude
    arrays = column_arrays(t)
    assert magnitude_aliases(arrays, "ap2")["mag"] == "mag_ap2"
    assert filter_mask(arrays, "mag<15", "ap2", magnitude_aliases(arrays, "ap2")).all()


async def test_twenty_thousand_rows_load_sort_and_page_without_stalling():
    table = CatalogueTable()
    app = _One(table)
    cat = _big_catalogue()
    async with app.run_test(size=(160, 48)) as pilot:
        table.focus()
        t0 = time.perf_counter()
        table.set_data(column_arrays(cat))
        await pilot.pause()
        t_load = time.perf_counter() - t0
        lag = LoopLag().start()
        t0 = time.perf_counter()
        await pilot.press(*["pagedown"] * 40)
        t_page = (time.perf_counter() - t0) / 40
        assert table.cursor_row == 40 * (table.body_height - 1)
        t0 = time.perf_counter()
        for _ in range(10):
            table.action_page(1)
            for y in range(table.size.height):
                table.render_line(y)
        t_render = (time.perf_counter() - t0) / 10
        for _ in range(6):
            await pilot.press("right")
        t0 = time.perf_counter()
        await pilot.press("s")
        t_sort = time.perf_counter() - t0
        column = table.current_column()
        shown = cat[column][table.order]
        assert np.all(np.diff(shown) >= 0) and len(shown) == 20_000
        await pilot.press("end")
        assert table.current_source() == int(np.argmax(cat[column]))
        t0 = time.perf_counter()
        table.apply_filter(filter_mask(table.arrays, "flags==0 and snr>15"))
        await pilot.pause()
        t_filter = time.perf_counter() - t0
        assert table.row_count == int(((cat["flags"] == 0) & (cat["snr_ap2"] > 15)).sum())
        max_lag = lag.stop()
    print(f"20k rows: load {t_load:.3f} s, page {t_page * 1000:.1f} ms with the pilot, {t_render * 1000:.1f} ms to "
          f"draw a 160x48 page, sort {t_sort:.3f} s, "
          f"filter {t_filter:.3f} s, worst stall {max_lag * 1000:.0f} ms")
    # DataTable.add_rows took 3.6 s for the same rows and 100 ms per page on this machine
    assert t_load < 1.5 and t_render < 0.05 and t_sort < 0.5 and t_filter < 0.5


async def test_half_block_image_puts_north_up_and_markers_on_their_pixels():
    image = np.zeros((40, 80), np.uint8)
    image[31, 10] = 255  # row 31 from the bottom, column 10
    widget = HalfBlockImage()
    app = _One(widget)
    async with app.run_test(size=(80, 20)) as pilot:
        widget.set_image(image, [Marker(60.0, 5.0, "o", "cyan")])
        await pilot.pause()
        assert widget.effective_zoom() == 1.0
        lines = [widget.render_line(y) for y in range(20)]
        # row 31 of 40 is sample row 39 - 31 = 8 from the top: cell row 4, upper half (foreground)
        seg = list(lines[4])[10]
        assert seg.text == "▀" and seg.style.color.triplet == (255, 255, 255)
        assert "".join(s.text for s in lines[4]).count("▀") == 80
        # the marker at y=5: sample row 40-1-5=34, cell row 17, column 60
        assert list(lines[17])[60].text == "o"
        await pilot.press("plus")
        assert widget.effective_zoom() == 2.0
        await pilot.press("0")
        assert widget.zoom == 0.0


@pytest.mark.slow
async def test_preview_of_a_60_mb_frame_arrives_without_freezing_the_ui(tui_env):
    folder = tui_env / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 10, (3900, 3900)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(folder / "big.fits")
    size_mb = (folder / "big.fits").stat().st_size / 1e6
    assert size_mb > 60
    app = RppApp("big")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        lag = LoopLag().start()
        t0 = time.perf_counter()
        await pilot.press("down")
        await wait_for(pilot, lambda: app.query_one("#preview").has_image, 60)
        waited = time.perf_counter() - t0
        max_lag = lag.stop()
        assert "3900 x 3900 px" in str(app.query_one("#facts").content)
    print(f"{size_mb:.0f} MB frame: preview after {waited:.2f} s, worst UI stall {max_lag * 1000:.0f} ms")
    assert max_lag < 0.5


async def test_history_opens_a_run_and_deletes_it_after_confirmation(run_folder, tui_env):
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("7")
        history = app.query_one("#history")
        await wait_for(pilot, lambda: len(history.runs) == 1, 10)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_run is not None, 30)
        assert app.query_one("#tabs").active == "catalogue"
        assert app.query_one(CatalogueTable).total_rows == 200
        await pilot.press("7", "c")
        assert app.clipboard == str(run_folder)  # sent to the local terminal with OSC 52
        await pilot.press("d", "n")
        assert run_folder.exists()
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: not run_folder.exists() and not history.runs, 10)


async def test_catalogue_view_exports_only_the_filtered_rows_and_chosen_columns(run_folder, tui_env):
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        # start-up done (the Files tree has the focus), so it cannot take the screen back from the run
        await wait_for(pilot, lambda: app.focused is not None, 10)
        app.open_run(run_folder)
        await wait_for(pilot, lambda: app.current_run is not None, 30)
        table = app.query_one(CatalogueTable)
        # the details of the highlighted source: every column, then links for its position
        await wait_for(pilot, lambda: hasattr(app.query_one("#cat-details-text").content, "plain"), 10)
        details = app.query_one("#cat-details-text").content
        src = table.current_source()
        lines = details.plain.splitlines()
        assert re.search(rf"^simbad_name +{app.current_run.catalog['simbad_name'][src]}$", details.plain, re.M)
        # names and values in two columns: every value starts in the same column, after a space
        starts = {len(line) - len(line.split(" ", 1)[1].lstrip()) for line in lines[:10] if " " in line}
        assert len(starts) == 1
        links = {span.style.link for span in details.spans if getattr(span.style, "link", None)}
        ra = app.current_run.catalog["ra"][src]
        assert len(links) == 3 and all(f"{ra:.6f}" in url for url in links)
        await pilot.press("slash", *list("snr>100"), "enter")
        expected = int((app.current_run.catalog["snr_ap2"] > 100).sum())
        await wait_for(pilot, lambda: table.row_count == expected, 10)
        assert 0 < table.row_count == expected < 200
        # hide the first column (id) with the column chooser
        await pilot.press("v")
        await pilot.pause(0.1)
        await pilot.press("space", "enter")
        assert "id" not in table.columns and "ra" in table.columns
        await pilot.press("e", "enter")
        out = run_folder / "catalog_view.csv"
        await wait_for(pilot, out.exists, 10)
        written = Table.read(out, format="ascii.csv")
        assert len(written) == expected and written.colnames == table.columns
        # a bad filter says what is wrong under the box, keeps the typed text and shows no stale rows
        await pilot.press("slash", "end", *list(" or nosuch>1"))
        assert "no column 'nosuch'" in str(app.query_one("#cat-filter-error").content)
        assert app.query_one("#cat-filter-error").display
        assert app.query_one("#cat-filter").value == "snr>100 or nosuch>1"
        assert app.query_one("#cat-filter").has_class("-invalid-filter")
        assert table.row_count == 0
        await pilot.press(*["backspace"] * len(" or nosuch>1"))
        assert table.row_count == expected and not app.query_one("#cat-filter-error").display


def test_every_footer_key_of_every_screen_has_a_command_palette_entry():
    from rpp_tui.screens import catalogue, files, history, image, parameters, plots, run

    actions = {a for _, _, a in COMMANDS}
    named = {re.match(r"pane\('\w+', [\"']([a-z_]+)", a).group(1) for a in actions if a.startswith("pane(")}
    missing = []
    for module, cls in ((files, "FilesPane"), (parameters, "ParametersPane"), (run, "RunPane"),
                        (catalogue, "CataloguePane"), (plots, "PlotsPane"), (image, "ImagePane"),
                        (history, "HistoryPane")):
        for binding in getattr(module, cls).BINDINGS:
            action = binding.action.split("(")[0]
            if binding.show and action not in named and action not in ("step",):
                missing.append(f"{cls}.{action}")
    for binding in RppApp.BINDINGS:
        if binding.show and binding.action not in actions and binding.action != "quit":
            missing.append(f"RppApp.{binding.action}")
    assert not missing, missing


async def test_profiles_are_loaded_renamed_and_deleted_from_the_keyboard(tui_env):
    from rpp_core import settings

    settings.save_profile(settings.Profile(name="dark").replace(**{"detection.threshold_sigma": 7.0}))
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2", "ctrl+o")
        await pilot.pause(0.1)
        # a list of the saved profiles and the built-in one, not a box to type a name into
        options = app.screen.query_one("#choices")
        assert [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)] == [
            "dark", "default (built-in settings)"]
        await pilot.press("up", "enter")
        assert app.profile.name == "dark" and app.profile.detection.threshold_sigma == 7.0
        await app.query_one("#parameters").build_section("detection")  # fields are built when a section is shown
        shown = app.query_one("#input-detection-threshold_sigma").value
        assert shown == "7.0"
        await pilot.press("ctrl+r", "ctrl+u", *list("dark2"), "enter")
        assert settings.list_profiles() == ["dark2"]
        assert app.sub_title.startswith("profile dark2 ")
        await pilot.press("ctrl+t", "enter")  # Enter on the question is "no"
        assert settings.list_profiles() == ["dark2"]
        await pilot.press("ctrl+t", "y")
        assert settings.list_profiles() == []
        assert app.profile.name == "default" and app.profile.detection.threshold_sigma == 5.0


async def test_files_tree_lists_plain_and_compressed_fits_and_nothing_else(tui_env):
    folder = tui_env / "night"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.fits", "b.fit", "c.fts", "d.fits.fz", "e.fits.gz", "f.fz", "notes.txt", "g.txt.gz", ".hidden.fits"):
        (folder / name).write_bytes(b"")
    app = RppApp("night")
    async with app.run_test(size=(80, 24)) as pilot:
        tree = app.query_one("#tree")
        await wait_for(pilot, lambda: len(tree.root.children) > 0, 10)
        assert [str(n.label) for n in tree.root.children] == [
            "sub", "a.fits", "b.fit", "c.fts", "d.fits.fz", "e.fits.gz", "f.fz"]
        assert str(tree.root.label) == "night"


async def test_a_one_pixel_star_stays_visible_when_a_large_frame_is_zoomed_out():
    from rpp_tui.loaders import pyramid

    image = np.zeros((2000, 3000), np.uint8)
    image[1234, 2345] = 255
    widget = HalfBlockImage()
    app = _One(widget)
    async with app.run_test(size=(80, 24)) as pilot:
        widget.set_image(pyramid(image))
        await pilot.pause()
        brightest = 0
        for y in range(widget.size.height):
            for seg in widget.render_line(y):
                if seg.text != "▀":
                    continue
                for c in (seg.style.color, seg.style.bgcolor):
                    if c is not None and c.triplet is not None:
                        brightest = max(brightest, c.triplet.red)
        assert brightest == 255
        # plain decimation (the first level only) loses it: the pyramid is what keeps it
        widget.set_image(image)
        await pilot.pause()
        lost = max((c.triplet.red for y in range(widget.size.height) for seg in widget.render_line(y)
                    if seg.text == "▀"  # frame cells only: the margin has the theme's background
                    for c in (seg.style.color, seg.style.bgcolor) if c is not None and c.triplet is not None),
                   default=0)
        assert lost == 0


async def test_a_broken_frame_fails_with_the_cores_message_and_the_app_carries_on(tui_env):
    folder = tui_env / "bad"
    folder.mkdir()
    (folder / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50 + b"garbage" * 10)
    app = RppApp("bad")
    async with app.run_test(size=(100, 30)) as pilot:
        tree = app.query_one("#tree")
        await wait_for(pilot, lambda: app.focused is tree and tree.root.children, 10)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: "Problem" in str(app.query_one("#facts").content), 10)
        await pilot.press("r")
        job = app.runner.jobs[0]
        await wait_for(pilot, lambda: job.state not in ("queued", "running"), 60)
        assert job.state == "failed" and job.exit_code == 3
        status = str(app.query_one("#run-status").content)
        assert "failed (exit 3)" in status and "broken.fits" in status
        assert "Run failed in stage load" in str(app.query_one("#run-headline").content)
        await pilot.press("1")  # still answering
        assert app.query_one("#tabs").active == "files"


async def test_a_frame_given_on_the_command_line_is_selected_at_start(frames):
    app = RppApp("frames/synth.fits")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "SYNTH" in str(app.query_one("#facts").content), 10)
        assert app.selected_path == frames / "synth.fits" or app.selected_path.resolve() == (frames / "synth.fits")
        assert app.sub_title == "profile default · frames/synth.fits"


async def test_a_list_value_the_profile_refuses_is_refused_while_typing(tui_env):
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await app.query_one("#parameters").build_section("photometry")
        field = app.query_one("#field-photometry-aperture_factors")
        editor = app.query_one("#input-photometry-aperture_factors")
        editor.focus()
        await pilot.press("end", "ctrl+u", *list("1.5, -2"))
        assert field.has_class("-invalid")
        assert "aperture_factors" in field.error and "0.3" in field.error and "20" in field.error
        assert app.profile.photometry.aperture_factors == [1.5, 2.0, 2.5, 3.0]  # not taken
        await pilot.press("backspace", "backspace", "2")
        assert not field.has_class("-invalid") and app.profile.photometry.aperture_factors == [1.5, 2.0]


async def test_modified_goes_away_when_the_original_value_is_typed_back(tui_env):
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2")
        await app.query_one("#parameters").build_section("detection")
        line = app.query_one("#profile-line")
        app.query_one("#input-detection-threshold_sigma").focus()
        await pilot.press("end", "ctrl+u", *list("4"))
        assert app.profile_dirty and "(modified)" in str(line.content)
        await pilot.press("ctrl+u", *list("5.0"))
        assert not app.profile_dirty and "(modified)" not in str(line.content)
        assert app.sub_title.startswith("profile default ")


async def test_save_as_with_a_bad_name_keeps_the_dialog_open_with_the_reason(tui_env):
    from rpp_core import settings
    from rpp_tui.screens.dialogs import AskText

    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2", "ctrl+n", "ctrl+u", *list("my night"), "enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, AskText)
        assert "use letters, digits" in app.screen.error
        assert settings.list_profiles() == []
        await pilot.press("ctrl+u", *list("my-night"), "enter")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, AskText)
        assert settings.list_profiles() == ["my-night"] and app.profile.name == "my-night"


async def test_go_to_path_completes_folders_and_frames(frames):
    from rpp_core.fitsnames import is_fits_name
    from rpp_tui.screens.dialogs import PathSuggester

    suggester = PathSuggester(is_fits_name)
    assert await suggester.get_suggestion("fra") == "frames/"
    assert await suggester.get_suggestion("frames/s") == "frames/synth.fits"
    assert await suggester.get_suggestion("frames/n") is None  # notes.txt is not a frame
    app = RppApp(str(frames.parent))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("1", "o", "ctrl+u", *list("frames/sy"))
        await pilot.pause(0.2)
        await pilot.press("right", "enter")
        await pilot.pause(0.2)
        assert app.selected_path == frames / "synth.fits" or app.selected_path.resolve() == (frames / "synth.fits").resolve()


def _crowded_frame(n_stars: int = 6000, shape=(1024, 1024), seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Sky 1000 +- 10 ADU with ``n_stars`` Gaussian stars (FWHM 2.5 px); the frame and the star positions (x, y)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 10, shape).astype(np.float32)
    xy = rng.uniform(5, shape[0] - 5, (n_stars, 2))
    flux = 10 ** rng.uniform(2.5, 5, n_stars)
    yy, xx = np.mgrid[-4:5, -4:5]
    for (x, y), f in zip(xy, flux):
        ix, iy = int(x), int(y)
        data[iy - 4:iy + 5, ix - 4:ix + 5] += f / (2 * np.pi * 1.06 ** 2) * np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.06 ** 2))
    return data, xy


def _greys(widget) -> np.ndarray:
    widget._build()
    return widget._grid[widget._grid >= 0]


async def test_a_crowded_frame_at_fit_shows_its_sky_grey_not_white():
    from rpp_tui.loaders import frame_image

    data, _ = _crowded_frame()
    widget = HalfBlockImage()
    async with _One(widget).run_test(size=(80, 24)) as pilot:
        widget.set_image(frame_image(data))
        await pilot.pause()
        greys = _greys(widget)
        white = float(np.mean(greys > 230))
        # the old max pooling: the sky became white because the largest of 64 noise pixels is always bright
        assert white < 0.3 and 60 < np.median(greys) < 200, (white, np.median(greys))
        assert greys.max() == 255  # the stars are still there


async def test_zoom_steps_pass_through_one_to_one_and_stretches_change_the_greys():
    from rpp_tui.loaders import STRETCHES, frame_image

    data, _ = _crowded_frame(500, (512, 512))
    widget = HalfBlockImage()
    async with _One(widget).run_test(size=(80, 24)) as pilot:
        widget.set_image(frame_image(data))
        await pilot.pause()
        seen = []
        for _ in range(6):
            await pilot.press("plus")
            seen.append(widget.zoom)
        assert 1.0 in seen and seen == sorted(seen)
        await pilot.press("0", "equals_sign")
        assert widget.zoom == 1.0 and "1:1" in widget.describe_view()
        medians = {}
        for name in STRETCHES:
            widget.set_stretch(name)
            medians[name] = float(np.median(_greys(widget)))
        assert len(set(medians.values())) == 3, medians
        assert medians["asinh"] < medians["zscale"]  # asinh keeps the sky dark so bright stars keep contrast


async def test_overlay_is_thinned_to_the_brightest_when_zoomed_out_and_complete_at_one_to_one():
    data, xy = _crowded_frame(3000, (1024, 1024))
    markers = [Marker(float(x), float(y), "+", "green", rank=float(i)) for i, (x, y) in enumerate(xy)]
    markers.append(Marker(512.0, 512.0, "o", "cyan", rank=-1.0))  # a calibrator: always drawn first
    widget = HalfBlockImage()
    async with _One(widget).run_test(size=(80, 24)) as pilot:
        from rpp_tui.loaders import frame_image

        widget.set_image(frame_image(data), markers)
        await pilot.pause()
        widget._build()
        assert 0 < widget.markers_shown <= 80 * 24 // 12
        assert any(m.color == "cyan" for m in widget._marker_cells.values())
        shown = sorted(m.rank for m in widget._marker_cells.values() if m.color == "green")
        # the brightest (lowest ranks) come first: what is shown is mostly the top of the list
        assert np.median(shown) < len(markers) / 4
        cx, cy = float(xy[0][0]), float(xy[0][1])
        widget.center = (cx, cy)
        widget.zoom = 1.0
        await pilot.pause()
        widget._build()
        # 1:1 at 80x24: 80 pixels across, 48 up; every source in view is marked (none closer than a cell here)
        in_view = [m for m in markers if abs(m.x + 0.5 - cx) < 40 and abs(m.y + 0.5 - cy) < 24]
        assert widget.markers_shown >= len(in_view) - 1 and len(in_view) > 3


async def test_the_margin_beside_a_fitted_frame_is_plain_background_not_stripes():
    image = np.full((100, 400), 128, np.uint8)  # wide: margins above and below at 80x24
    widget = HalfBlockImage()
    async with _One(widget).run_test(size=(80, 24)) as pilot:
        widget.set_image(image)
        await pilot.pause()
        lines = [list(widget.render_line(y)) for y in range(widget.size.height)]
        margin = [seg for line in lines[:3] + lines[-3:] for seg in line]
        assert all(seg.text == " " and seg.style.bgcolor == widget.rich_style.bgcolor for seg in margin)


async def test_the_view_as_a_picture_for_graphics_terminals_has_the_cell_size_star_and_markers():
    image = np.zeros((200, 400), np.uint8)
    image[100, 200] = 255  # a one-pixel star at the centre
    widget = HalfBlockImage()
    async with _One(widget).run_test(size=(80, 24)) as pilot:
        widget.set_image(image, [Marker(300.0, 50.0, "o", "cyan")])
        await pilot.pause()
        picture = widget.view_rgb((10, 20))
        assert picture.size == (800, 480)
        rgb = np.asarray(picture)
        assert rgb[..., 0].max() == 255  # the star
        cyan = (rgb[..., 0] < 50) & (rgb[..., 1] > 200) & (rgb[..., 2] > 200)
        ys, xs = np.nonzero(cyan)
        # fit: 2 output pixels per frame pixel on both axes, frame centre (200, 100) at the picture centre (400, 240);
        # the marker at x=300, y=50 lands 200 px right of it and 99 px below (frame rows go up)
        assert abs(xs.mean() - 601) < 3 and abs(ys.mean() - 339) < 3


async def test_the_image_screen_draws_through_textual_image_in_a_graphics_terminal(run_folder, tui_env, monkeypatch):
    from textual_image.widget import TGPImage

    from rpp_tui import graphics, loaders

    monkeypatch.setattr(graphics, "WIDGET", TGPImage)
    monkeypatch.setattr(graphics, "PROTOCOL", "tgp")
    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        app.show_run(loaders.load_run(run_folder))
        app.action_show_tab("image")
        half = app.query_one("#frame-image")
        await wait_for(pilot, lambda: half.has_image, 30)
        await pilot.pause(0.3)
        shown = app.query_one("#frame-graphics")
        assert half.graphics and shown.image is not None
        first = shown.image
        await pilot.press("plus")
        await pilot.pause(0.2)
        assert shown.image is not first and shown.image.size == first.size


def test_help_names_the_keys_the_screens_really_bind():
    from rpp_tui.screens import catalogue, files, history, image, parameters, plots, run
    from rpp_tui.screens.help import HELP
    from rpp_tui.widgets.catalogue_table import CatalogueTable

    sections = dict(re.findall(r"\*\*(\w+)\*\* (.*?)(?=\n\n)", HELP, re.S))
    owners = {"Files": [files.FilesPane], "Run": [run.RunPane], "Catalogue": [catalogue.CataloguePane, CatalogueTable],
              "Image": [image.ImagePane, HalfBlockImage], "History": [history.HistoryPane], "Plots": [plots.PlotsPane],
              "Parameters": [parameters.ParametersPane]}
    for name, classes in owners.items():
        keys = {k.strip() for cls in classes for b in cls.BINDINGS for k in b.key.split(",")}
        keys |= {b.key_display for cls in classes for b in cls.BINDINGS if b.key_display}
        named = set(re.findall(r"`([^`]+)`", sections[name]))
        for key in named:
            for part in ([key] if key == "/" else re.split(r"\s*/\s*", key)):
                part = {"Home": "home", "End": "end", "→": "right", "+": "plus", "-": "minus", "=": "equals_sign",
                        "/": "slash"}.get(part, part)
                if len(part) > 1 and not part.startswith(("ctrl+", "f")) and part not in ("home", "end", "enter", "hjkl", "right"):
                    continue  # an example, a file name or a filter, not a key
                # hjkl, enter and → belong to the image, tree and text box widgets themselves
                assert part in keys or part in ("hjkl", "enter", "right"), (name, part)


async def test_history_reloads_with_R_as_the_help_says(run_folder, tui_env):
    import shutil

    app = RppApp(str(tui_env))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("7")
        history = app.query_one("#history")
        await wait_for(pilot, lambda: len(history.runs) == 1, 10)
        shutil.copytree(run_folder, run_folder.with_name("synth_20250102T030406"))
        await pilot.press("R")
        await wait_for(pilot, lambda: len(history.runs) == 2, 10)


def _screen_text(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def test_history_at_80_columns_shows_the_whole_size_column_for_a_long_run_name(run_folder, tui_env):
    import json
    import shutil

    from rpp_core import cleanup

    long_run = run_folder.with_name("M6707HH-long-night-name_20261201T223512")
    shutil.move(run_folder, long_run)
    summary = json.loads((long_run / "summary.json").read_text())
    summary["frame"] = "/data/2026-12-01/M6707HH-long-night-name.fits.gz"
    (long_run / "summary.json").write_text(json.dumps(summary))
    app = RppApp(str(tui_env))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("7")
        await wait_for(pilot, lambda: len(app.query_one("#history").runs) == 1, 10)
        await pilot.pause(0.2)
        size = cleanup.format_size(app.query_one("#history").runs[0].size)
        row = next(line for line in _screen_text(app).splitlines() if long_run.name in line)
        assert f" {size}" in row, row


async def test_footer_of_every_screen_fits_80_columns_with_every_key_whole(run_folder, tui_env):
    from rpp_tui import loaders

    def shown(bindings):
        return [f"{b.key_display or b.key.split(',')[0]} {b.description}" for b in bindings if b.show]

    app = RppApp(str(tui_env))
    async with app.run_test(size=(80, 24)) as pilot:
        app.show_run(loaders.load_run(run_folder))
        for tab in ("files", "parameters", "run", "catalogue", "plots", "image", "history"):
            app.action_show_tab(tab)
            pane = app.query_one(f"#{tab}")
            expected = [e.replace("question_mark", "?").replace("ctrl+", "^")
                        for e in shown(pane.BINDINGS) + ["r Run", "? Help", "q Quit"]]

            def footer_complete():
                footer = _screen_text(app).splitlines()[-1]
                return all(e in footer for e in expected)

            # the footer is rebuilt as focus settles: wait for it, then every entry must be there whole
            await wait_for(pilot, footer_complete, 10)
            footer = _screen_text(app).splitlines()[-1]
            assert footer.rstrip().endswith("^p palette"), (tab, footer)
        app.action_show_tab("catalogue")
        await pilot.pause(0.2)
        assert "L Copy SIMBAD link" in _screen_text(app).splitlines()[-1]


def test_a_run_is_reopened_from_its_binary_catalogue_not_the_ecsv(run_folder):
    from rpp_tui import loaders

    cat = Table.read(run_folder / "catalog.ecsv")
    big = Table(np.repeat(np.asarray(cat), 85))  # 17,000 rows, as the crowded run
    big.write(run_folder / "catalog.fits", overwrite=True)
    big.write(run_folder / "catalog.ecsv", format="ascii.ecsv", overwrite=True)
    t0 = time.perf_counter()
    run = loaders.load_run(run_folder)
    t_fits = time.perf_counter() - t0
    assert len(run.catalog) == 17_000
    # the ECSV is not read at all: spoiling it changes nothing
    (run_folder / "catalog.ecsv").write_text("# %ECSV 1.0\nnot a table\n")
    assert len(loaders.load_run(run_folder).catalog) == 17_000
    assert str(run.catalog["simbad_name"][10]) == str(cat["simbad_name"][0])  # text columns come back as text
    print(f"17,000-row run reopened in {t_fits:.3f} s")


def test_a_tiny_zero_point_error_shows_its_digits_and_a_cancel_says_so_once():
    from rpp_tui.screens.run import failure_headline, format_summary, short_summary

    summary = {"zp": 24.519, "zp_err": 0.0004, "band": "G", "n_sources": 10, "n_calibrators": 5, "fwhm_px": 3.1}
    assert "24.51900 ± 0.00040" in format_summary(summary, "runs/x")
    assert "± 0.000 " not in format_summary(summary, "runs/x") + " "
    assert "ZP 24.51900 ± 0.00040" in short_summary(summary)
    assert "24.519 ± 0.012" in format_summary({**summary, "zp_err": 0.012}, "runs/x")
    assert failure_headline("cancelled", "run cancelled", "fwhm") == "Run cancelled in stage fwhm"
    assert failure_headline("failed", "no stars", "detect") == "Run failed in stage detect: no stars"


def test_the_header_zero_point_is_shown_beside_a_fitted_one_and_not_twice_when_it_is_the_calibration():
    from rpp_tui.screens.run import format_summary

    fitted = {"zp": 24.519, "zp_err": 0.004, "band": "G", "n_calibrators": 40, "calibration_source": "fit to Gaia DR3",
              "header_zp": {"zp": 24.842, "source": "header MAGZPT", "fitted_minus_header": -0.323}}
    text = format_summary(fitted, "runs/x")
    assert "Header ZP    24.8420 (MAGZPT)" in text and "24.5190 ± 0.0040" in text
    from_header = {**fitted, "zp": 24.842, "zp_err": None, "calibration_source": "header MAGZPT",
                   "header_zp": {"zp": 24.842, "source": "header MAGZPT"}}
    text = format_summary(from_header, "runs/x")
    assert "Header ZP" not in text and "Calibration  header MAGZPT (no reference)" in text
