"""Files for people: PNG figures and sky.html, checked as a reader would open them (image viewer, browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from rpp_core import figures, plots, results, skyview
from rpp_core.products import RunSummary

from .test_tui_support import synthetic_catalogue

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def calibrated():
    """The synthetic calibrated catalogue, its summary and frame; one rejected calibrator 1.07 mag off."""
    cat, summary = synthetic_catalogue()
    frame = summary.pop("frame_obj")
    rejected = np.flatnonzero(np.asarray(cat["calib_rejected"]))
    cat["calib_residual"][rejected[0]] = 1.07
    return cat, summary, frame


def test_residual_plot_limits_follow_the_used_points_not_one_outlier(calibrated):
    cat, _, _ = calibrated
    res = np.asarray(cat["calib_residual"])
    used = np.asarray(cat["calib_used"])
    lo, hi = plots.robust_limits(res[used])
    assert lo <= res[used].min() and hi >= res[used].max()  # every used point on the plot
    assert hi - lo < 0.2  # not stretched to the +1.07 mag outlier
    clipped, outside = plots.clip_to_limits([1.07, 0.0], (lo, hi))
    assert outside.tolist() == [True, False] and clipped[0] == hi  # the outlier sits on the edge


def test_png_figures_open_at_their_stated_size(calibrated, tmp_path):
    from PIL import Image

    cat, summary, frame = calibrated
    files = figures.write_all(cat, summary, tmp_path, data=frame.data, wcs=frame.wcs, title="synth.fits")
    assert set(files) == {f"png_{n}" for n in figures.FIGURES} | {"png_finder"}
    for key, path in files.items():
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG"
            assert img.size == (figures.FINDER_PX if key == "png_finder" else figures.SIZE_PX), key
            # a figure, not a blank canvas: many distinct colours
            assert len(img.convert("RGB").getcolors(1 << 20)) > 50, key
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("errors", ["over five decades", "within one decade"])
def test_error_plot_minor_ticks_are_the_pixels_matplotlib_draws(calibrated, tmp_path, monkeypatch, errors):
    # the error plot draws its unlabelled minor ticks itself (two artists instead of ~40 ticks): the PNG must
    # be pixel for pixel the one matplotlib's own minor ticks give; within a decade they are labelled and its own
    from PIL import Image

    cat, summary, _ = calibrated
    cat = cat.copy()
    label = summary["calibration_label"]
    err = np.asarray(cat[f"magerr_cal_{label}"], float)
    err[np.isfinite(err)] = (np.geomspace(0.001, 40.0, np.isfinite(err).sum()) if errors == "over five decades"
                             else np.geomspace(0.012, 0.08, np.isfinite(err).sum()))
    cat[f"magerr_cal_{label}"] = err
    ours = figures.render("err_mag", cat, summary, tmp_path / "ours.png")
    monkeypatch.setattr(figures, "_unlabelled_minor_ticks_as_two_artists", lambda ax, grid_alpha: None)
    theirs = figures.render("err_mag", cat, summary, tmp_path / "theirs.png")
    with Image.open(ours) as a, Image.open(theirs) as b:
        assert a.size == b.size
        assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_png_figures_hold_the_pixels_matplotlib_savefig_writes(calibrated, tmp_path, monkeypatch):
    # figures writes its PNG files itself (figures._png); a viewer must see what matplotlib's savefig gives
    import io

    from PIL import Image

    cat, summary, _ = calibrated
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    ours = figures.render("zp_fit", cat, summary, tmp_path / "zp_fit.png")
    theirs = io.BytesIO()
    drawn[0].savefig(theirs, format="png", dpi=figures.DPI)
    with Image.open(ours) as a, Image.open(theirs) as b:
        assert a.info["dpi"] == pytest.approx((figures.DPI, figures.DPI), abs=1e-3)
        assert np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA")))


@pytest.mark.parametrize("channels", [3, 4])
def test_png_of_any_pixels_decodes_to_the_same_pixels(channels):
    from io import BytesIO

    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    pixels[5:9] = 255  # flat rows too: "up" leaves them zeros
    with Image.open(BytesIO(figures._png(pixels[:, :, :channels], 72))) as image:
        assert image.mode == ("RGB", "RGBA")[channels - 3]
        assert np.array_equal(np.asarray(image), pixels)


def test_png_figures_of_an_uncalibrated_run_say_so_instead_of_failing(calibrated, tmp_path):
    cat, summary, _ = calibrated
    bare = cat.copy()
    for name in ("calib_used", "calib_rejected", "calib_residual", "mag_cal_ap2", "magerr_cal_ap2", "mag_ref"):
        bare.remove_column(name)
    files = figures.write_all(bare, {**summary, "zp": None}, tmp_path)
    assert all(p.stat().st_size > 1000 for p in files.values())


def test_ds9_regions_read_back_with_astropy_regions_at_the_catalogue_positions(calibrated, tmp_path):
    from regions import Regions

    cat, _, _ = calibrated
    path = results.write_regions(cat, tmp_path / "regions.reg", radius_px=4.0)
    shapes = Regions.read(path, format="ds9")
    assert len(shapes) == len(cat)
    x = np.array([s.center.x for s in shapes])
    y = np.array([s.center.y for s in shapes])
    assert np.allclose(x, cat["x"], atol=1e-6) and np.allclose(y, cat["y"], atol=1e-6)
    colours = [s.visual.get("edgecolor", s.visual.get("color")) for s in shapes]  # regions reads color= as edge/face
    assert colours.count("cyan") == int(np.sum(cat["calib_used"]))
    assert colours.count("red") == int(np.sum(cat["calib_rejected"]))
    assert colours.count("green") == len(cat) - colours.count("cyan") - colours.count("red")
    assert [str(s.meta["text"]) for s in shapes[:3]] == [str(i) for i in cat["id"][:3]]


def test_ds9_regions_are_the_text_astropy_regions_writes(calibrated, tmp_path):
    from regions import CirclePixelRegion, PixCoord, Regions

    cat, _, _ = calibrated
    ours = results.write_regions(cat, tmp_path / "ours.reg", radius_px=4.0).read_text()
    used, rej = np.asarray(cat["calib_used"], bool), np.asarray(cat["calib_rejected"], bool)
    shapes = [CirclePixelRegion(PixCoord(float(x), float(y)), 4.0, meta={"text": str(i)},
                                visual={"color": "red" if r else ("cyan" if u else "green")})
              for x, y, i, u, r in zip(cat["x"], cat["y"], cat["id"], used, rej)]
    Regions(shapes).write(tmp_path / "theirs.reg", format="ds9")
    assert ours == (tmp_path / "theirs.reg").read_text()


def test_sky_page_holds_every_source_calibrators_coloured_and_the_esa_sky_link(calibrated):
    cat, summary, frame = calibrated
    data = skyview.page_data(cat, summary, skyview.field_of_view(frame.wcs, frame.data.shape))
    assert data["n_shown"] == len(cat) == 200
    assert data["center"]["ra"] == pytest.approx(float(np.mean(cat["ra"])), abs=0.01)
    assert "sky.esa.int/esasky/?target=" in data["esasky"]
    kinds = [s["kind"] for s in data["sources"]]
    assert kinds.count("calibrator") == int(np.sum(cat["calib_used"]))
    # objects identified by SIMBAD carry their name to the popup and the SIMBAD overlay
    named = [s for s in data["sources"] if "SIMBAD" in s["ids"]]
    assert len(named) == int(np.sum(np.asarray(cat["simbad_name"]) != "")) > 0


def test_sky_page_keeps_calibrators_and_named_objects_when_a_big_field_is_cut(calibrated, monkeypatch):
    cat, summary, _ = calibrated
    monkeypatch.setattr(skyview, "MAX_ROWS", 80)
    data = skyview.page_data(cat, summary)
    assert data["n_shown"] == 80 and data["n_total"] == 200
    kept = {s["id"] for s in data["sources"]}
    must = set(np.asarray(cat["id"])[np.asarray(cat["calib_used"]) | np.asarray(cat["calib_rejected"])
                                     | (np.asarray(cat["simbad_name"]) != "")])
    assert must <= kept


def _chromium(url: str, profile_dir) -> tuple[str, str]:
    """The DOM after scripts ran and Chromium's log: headless, no network, a fresh profile."""
    assert CHROMIUM, "chromium is not installed: run make system-deps (Debian package chromium)"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile_dir}",
           # no name resolves: the page is opened as on an observatory machine without internet
           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


def test_sky_html_offline_in_chromium_shows_the_table_with_every_row_and_no_script_error(calibrated, tmp_path):
    cat, summary, frame = calibrated
    page = skyview.write_sky_html(cat, {**summary, "title": "synth.fits"}, tmp_path / "sky.html",
                                  wcs=frame.wcs, shape=frame.data.shape)
    dom, log = _chromium(page.as_uri(), tmp_path / "chromium-profile")
    status = re.search(r'<p id="status"[^>]*>(.*?)</p>', dom, re.S)
    assert status and "could not be loaded" in status.group(1), dom[:2000]
    assert 'class="offline"' in status.group(0)
    assert 'id="aladin" style="display: none;"' in dom
    rows = re.findall(r"<tr class=\"(calibrator|rejected|detection)\">", dom)
    assert len(rows) == len(cat)
    assert rows.count("calibrator") == int(np.sum(cat["calib_used"]))
    assert "sky.esa.int/esasky" in dom
    console = [ln for ln in log.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "Uncaught" in ln or "Error" in ln and "rpp" in ln], console
    # the check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>nosuchfunction();</script></body></html>")
    _, bad_log = _chromium(bad.as_uri(), tmp_path / "chromium-profile-2")
    assert "Uncaught ReferenceError" in bad_log


def test_the_png_figures_are_the_text_plots_figures():
    from rpp_core import plots

    assert list(figures.FIGURES) == list(plots.FIGURES)


# ---------------------------------------------------------------- the figures are drawn by a child process

def _outputs(calibrated, tmp_path, **kw):
    from rpp_core.products import RunSummary, SourceCatalogue

    cat, summary, frame = calibrated
    keep = {k: v for k, v in summary.items() if k in RunSummary.__dataclass_fields__}
    run = tmp_path / "staging"
    run.mkdir()
    files = results.write_outputs(SourceCatalogue(cat.copy()), RunSummary(**keep), run, ["csv", "ecsv", "fits"],
                                  data=frame.data, wcs=frame.wcs, **kw)
    return run, files


def test_run_outputs_hold_every_png_figure_and_no_drawing_process_is_left(calibrated, tmp_path, monkeypatch):
    import os

    pid_file, write_all = tmp_path / "drawer.pid", figures.write_all

    def drawing(*args, **kwargs):
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return write_all(*args, **kwargs)

    monkeypatch.setattr(figures, "write_all", drawing)
    run, files = _outputs(calibrated, tmp_path)
    assert {f"png_{n}" for n in figures.FIGURES} | {"png_finder", "sky_html", "csv", "fits"} <= set(files)
    assert all(files[k].exists() and files[k].parent.parent == run for k in files if k.startswith("png_"))
    drawers = [int(p) for p in pid_file.read_text().split()]
    assert drawers and os.getpid() not in drawers
    for drawer in drawers:
        with pytest.raises(ProcessLookupError):  # each child was waited for: no zombie, none still drawing
            os.kill(drawer, 0)


def test_cancel_while_figures_are_drawn_stops_the_drawing_process_at_once(calibrated, tmp_path, monkeypatch):
    import os
    import time

    from rpp_core.errors import Cancelled

    pid_file = tmp_path / "drawer.pid"

    def stuck(*args, **kwargs):  # a figure that never finishes (runs in the child)
        with open(pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(60)

    monkeypatch.setattr(figures, "write_all", stuck)
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        _outputs(calibrated, tmp_path, cancel=lambda: pid_file.exists())
    assert time.perf_counter() - t0 < 20
    drawers = [int(p) for p in pid_file.read_text().split()]
    assert drawers and os.getpid() not in drawers
    for drawer in drawers:
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(drawer, 0)


def test_a_drawing_process_that_dies_costs_the_figures_with_a_warning_not_the_catalogue(calibrated, tmp_path,
                                                                                         monkeypatch):
    import os

    monkeypatch.setattr(figures, "write_all", lambda *a, **k: os._exit(3))
    warnings: list[str] = []
    run, files = _outputs(calibrated, tmp_path, warn=warnings.append)
    assert not [k for k in files if k.startswith("png_")] and (run / "catalog.fits").exists() and "sky_html" in files
    assert warnings and set(warnings) == {"PNG figures not written: the process drawing them ended (exit status 3)"}


def _session_processes(sid: int) -> set[int]:
    """Every process of session ``sid`` that has not ended, zombies (ended, nobody reaped them) included."""
    from pathlib import Path

    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:  # state, ppid, pgrp, session
                found.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def test_drawers_that_never_get_a_catalogue_leave_and_write_nothing(calibrated, tmp_path):
    """A run that fails before its outputs: the drawers it started after loading the frame are all gone
    (the ones the first drawer forked too: killed and reaped, no zombie), and drew nothing."""
    import os
    import time

    _, _, frame = calibrated
    before = _session_processes(os.getsid(0))
    for wait_s in (0.0, 1.5):  # ended while importing, and while waiting for the catalogue
        with results.FigureDrawers(frame.data):
            time.sleep(wait_s)
        assert _session_processes(os.getsid(0)) <= before
    assert not list(tmp_path.rglob("*.png"))


def test_two_runs_in_one_process_do_not_hold_each_others_figures(calibrated, tmp_path):
    """Two runs in threads of one process (a Dask worker): the later run's drawers, forked while the
    earlier run's wait, must not keep its catalogue pipe open, or the earlier run waits for the later."""
    import threading

    cat, summary, frame = calibrated
    first = results.FigureDrawers(frame.data)
    second = results.FigureDrawers(frame.data)  # forked after: it inherits the first's descriptors
    try:
        (tmp_path / "plots").mkdir()
        first.draw(cat, results.view_meta(summary), tmp_path)
        done: dict = {}
        waiter = threading.Thread(target=lambda: done.update(first.result(lambda: None)), daemon=True)
        waiter.start()
        waiter.join(30)  # the second run is still going: its drawers wait for their catalogue
        assert not waiter.is_alive(), "the first run's figures waited for the second run"
        assert "png_finder" in done and (tmp_path / "plots" / "finder.png").exists()
    finally:
        second.stop()
        first.stop()


def test_drawers_started_before_the_frame_draw_the_finder_chart_drawn_from_it(calibrated, tmp_path):
    """A run forks its drawers before it loads the frame: the finder chart's pixels go to them with the
    catalogue (figures.finder_pixels), and the chart has the pixels of the one drawn here from the frame."""
    from PIL import Image

    cat, summary, frame = calibrated
    meta = results.view_meta(summary)
    here = figures.finder_chart(frame.data, cat, meta, tmp_path / "here.png", wcs=frame.wcs, title="synth.fits")
    (tmp_path / "plots").mkdir()
    with results.FigureDrawers() as drawers:
        assert drawers.pid  # forked: what is checked is what went through the pipes
        drawers.draw(cat, meta, tmp_path, wcs=frame.wcs, title="synth.fits", data=frame.data)
        files = drawers.result(lambda: None)
    assert {f"png_{n}" for n in figures.FIGURES} | {"png_finder"} <= set(files)
    with Image.open(here) as a, Image.open(files["png_finder"]) as b:
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("calibrated_run", [True, False])
def test_figures_drawn_on_prepared_figures_are_the_figures_made_on_the_spot(calibrated, tmp_path, calibrated_run):
    """A drawer makes its figures, axes and ticks while it waits for the catalogue (figures.prepare):
    every PNG is the same file as one drawn without, for a calibrated run and one without a zero point."""
    cat, summary, frame = calibrated
    if not calibrated_run:
        cat = cat.copy()
        for name in ("calib_used", "calib_rejected", "calib_residual", "mag_cal_ap2", "magerr_cal_ap2", "mag_ref"):
            cat.remove_column(name)
        summary = {**summary, "zp": None}
    spot = figures.write_all(cat, summary, tmp_path / "spot", data=frame.data, wcs=frame.wcs, title="synth.fits")
    figures.prepare([*figures.FIGURES, "finder"])
    made = figures._PREPARED.figures
    assert set(made) == {*figures.FIGURES, "finder"} and all(len(f.axes[0].xaxis.majorTicks) >= 7 for f in made.values())
    ahead = figures.write_all(cat, summary, tmp_path / "ahead", data=frame.data, wcs=frame.wcs, title="synth.fits")
    assert not figures._PREPARED.figures  # each one taken by its figure
    assert set(spot) == set(ahead) and all(spot[k].read_bytes() == ahead[k].read_bytes() for k in spot)


def test_drawers_end_when_the_process_that_started_them_dies(tmp_path):
    """The run's process killed (out of memory, a crash): its waiting drawers do not stay behind."""
    import sys
    import time

    code = ("import os, time, numpy as np\nfrom rpp_core import results\n"
            "d = results.FigureDrawers(np.zeros((64, 64), np.float32))\n"
            "time.sleep(1.5)\nprint(os.getsid(0), flush=True)\nos._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True,
                          start_new_session=True)
    sid = int(proc.stdout.split()[0])

    def alive():
        running = set()
        for pid in _session_processes(sid):
            try:
                if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.add(pid)
            except OSError:
                pass
        return running  # an orphan's zombie waits for init: it draws nothing

    for _ in range(200):
        if not alive():
            break
        time.sleep(0.05)
    assert not alive()


def test_a_catalogue_the_drawers_cannot_be_sent_costs_the_figures_with_a_warning_not_the_catalogue(calibrated, tmp_path):
    from rpp_core.products import RunSummary, SourceCatalogue

    cat, summary, frame = calibrated
    odd = cat.copy()
    odd.meta["on_done"] = lambda: None  # pickle cannot take it; the catalogue writers drop such meta
    keep = {k: v for k, v in summary.items() if k in RunSummary.__dataclass_fields__}
    run = tmp_path / "staging"
    run.mkdir()
    warnings: list[str] = []
    files = results.write_outputs(SourceCatalogue(odd), RunSummary(**keep), run, ["csv", "ecsv", "fits"],
                                  data=frame.data, wcs=frame.wcs, warn=warnings.append)
    assert not [k for k in files if k.startswith("png_")] and (run / "catalog.fits").exists() and "sky_html" in files
    assert len(warnings) == 1 and warnings[0].startswith("PNG figures not written: ")


def _big_catalogue(n: int = 20000, seed: int = 8):
    """20,000 rows shaped like a calibrated run's, magnitudes on a 0.01 grid (many points share a cell edge)."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    mag_ref = np.round(rng.uniform(11, 21, n), 2)
    t = Table()
    t["mag_ap2"] = mag_ref - 24.5 + rng.normal(0, 0.02, n)
    t["magerr_ap2"] = 0.002 + 0.02 * 10 ** (0.4 * (mag_ref - 19))
    t["mag_cal_ap2"] = np.where(rng.random(n) < 0.02, np.nan, np.asarray(t["mag_ap2"]) + 24.5)
    t["magerr_cal_ap2"] = np.asarray(t["magerr_ap2"])
    t["mag_ref"] = mag_ref
    t["ref_color"] = np.round(rng.normal(0.8, 0.4, n), 3)
    t["calib_used"] = rng.random(n) < 0.6
    t["calib_rejected"] = ~np.asarray(t["calib_used"]) & (rng.random(n) < 0.2)
    t["calib_residual"] = np.round(mag_ref - np.asarray(t["mag_cal_ap2"]), 4)
    summary = RunSummary(frame="big.fits", calibration_label="ap2", zp=24.5, zp_err=0.001, zp_rms=0.02, band="G",
                         n_calibrators=int(np.sum(t["calib_used"])))
    return t, summary


def _plotext_itself(draw, color=False):
    """The figure as plotext draws it from every point (no thinning), at the size the run folder uses."""
    import plotext

    plotext.clear_figure()
    plotext.plotsize(100, 30)
    if not color:
        plotext.theme("clear")
    draw(plotext)
    text = plotext.build()
    plotext.clear_figure()
    return text if color else plotext.uncolorize(text)


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_text_figures_of_20000_rows_are_the_text_plotext_draws_from_every_point(name, color):
    table, summary = _big_catalogue()
    thinned = plots.render(name, table, summary, width=100, height=30, color=color)
    assert "could not be drawn" not in thinned
    assert thinned == _plotext_itself(lambda plt: plots.draw(name, plt, table, summary), color)


def test_magnitude_histogram_counted_in_numpy_is_plotexts_histogram():
    table, summary = _big_catalogue()
    m = np.asarray(table["mag_cal_ap2"])
    m = m[np.isfinite(m)]
    for values in (m, np.round(m, 1), np.array([15.0] * 50 + [16.0]), np.array([12.5] * 7)):
        ours = _plotext_itself(lambda plt: plots._hist(plt, values, bins=30, color="cyan"))
        theirs = _plotext_itself(lambda plt: plt.hist(values.tolist(), bins=30, color="cyan"))
        assert ours == theirs


def test_cells_of_points_on_and_next_to_cell_edges_are_plotexts_own():
    from plotext._utility import get_matrix_data

    rng = np.random.default_rng(4)
    for lim, bins in (([11.03, 20.97], 74), ([-0.0731, 0.052], 20), ([0.0, 1.0], 3)):
        lo, hi = lim
        edges = np.arange(-1, bins + 2) - 0.5  # v = k on a cell edge: value = lo + (k - 0.5) (hi - lo) / (bins - 1)
        offsets = np.array([0.0, 1e-9, -1e-9, 4e-9, -4e-9, 6e-9, -6e-9, 1e-12, -1e-12, 1e-7, -1e-7])
        values = (lo + (edges[:, None] + offsets[None, :]) * (hi - lo) / (bins - 1)).ravel()
        values = np.concatenate([values, rng.uniform(lo - 0.1, hi + 0.1, 5000), [lo, hi]])
        expected = np.clip(get_matrix_data(values.tolist(), lim, bins), -1, bins)
        assert np.array_equal(plots._cells(values, lim, bins), expected)


def test_sky_page_values_are_each_cell_rounded_as_python_rounds_it(calibrated):
    """page_data formats a column at a time; each value must be round(v, digits) of its cell, -0.0 included."""
    cat, summary, _ = calibrated
    cat = cat.copy()
    n = len(cat)
    cat["calib_residual"] = np.where(np.asarray(cat["calib_used"]), np.linspace(-0.00006, 0.00006, n), np.nan)
    cat["ra"][3] = np.nan
    cat["snr_ap2"][::9] = -0.04
    cat["x"][::11] += 0.005  # ties at 2 decimals, as far as a double can hold one
    data = skyview.page_data(cat, summary)
    digits = {"ra": ("ra", 7), "dec": ("dec", 7), "x": ("x", 2), "y": ("y", 2), "mag": ("mag_cal_ap2", 3),
              "snr": ("snr_ap2", 1), "residual": ("calib_residual", 4)}
    for key, (column, nd) in digits.items():
        values = np.asarray(cat[column], float)
        expected = [round(v, nd) if np.isfinite(v) else None for v in values.tolist()]
        if key == "residual":
            expected = [e if s["kind"] != "detection" else None for e, s in zip(expected, data["sources"])]
        got = [s[key] for s in data["sources"]]
        assert [repr(v) for v in got] == [repr(v) for v in expected], key  # repr: -0.0 is not 0.0 in the page
    assert any(repr(s["residual"]) == "-0.0" for s in data["sources"])


def _reference_sky_html(data: dict) -> str:
    """sky.html as written from page_data's dicts by json.dumps and one row of HTML per source dict (how
    skyview wrote it before it wrote from columns): the page must be this, byte for byte."""
    import html
    import json

    sources = data["sources"]

    def cells(key, fmt):
        return ["" if s[key] is None else format(s[key], fmt) for s in sources]

    ra, dec, x, y = cells("ra", ".6f"), cells("dec", "+.6f"), cells("x", ".2f"), cells("y", ".2f")
    mag, snr, res = cells("mag", ".3f"), cells("snr", ".1f"), cells("residual", "+.3f")
    ident = ["; ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in s["ids"].items()) for s in sources]
    lines = [f"<tr class=\"{s['kind']}\"><td>{s['id']}</td><td>{s['kind']}</td><td>{ra[k]}</td><td>{dec[k]}</td>"
             f"<td>{x[k]}</td><td>{y[k]}</td><td>{mag[k]}</td><td>{snr[k]}</td><td>{s['flags']}</td><td>{res[k]}</td>"
             f"<td>{ident[k]}</td></tr>" for k, s in enumerate(sources)]
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return "\n".join(lines), payload


def test_sky_html_is_the_page_of_page_data_byte_for_byte(calibrated, tmp_path):
    """Written from columns, the page's table rows and JSON are exactly those of page_data's dicts: names with
    markup and non-ASCII letters, a position without coordinates, negative zeros, a cut field."""
    cat, summary, frame = calibrated
    cat = cat.copy()
    names = np.asarray(cat["simbad_name"]).astype("<U40")
    named = np.flatnonzero(names != "")
    names[named[0]], names[named[1]] = "V* </script> ñ", 'a "quoted" & <b>'
    cat["simbad_name"] = names
    cat["ra"][5] = np.nan
    cat["calib_residual"][np.flatnonzero(np.asarray(cat["calib_used"]))[:3]] = -0.00001
    for fov, limit in ((skyview.field_of_view(frame.wcs, frame.data.shape), skyview.MAX_ROWS), (None, 60)):
        skyview.MAX_ROWS, saved = limit, skyview.MAX_ROWS
        try:
            meta = {**summary, "title": "synth </title> ñ.fits"}
            page = skyview.write_sky_html(cat, meta, tmp_path / "sky.html", wcs=frame.wcs if fov else None,
                                          shape=frame.data.shape if fov else None).read_text("utf-8")
            data = skyview.page_data(cat, meta, fov)
        finally:
            skyview.MAX_ROWS = saved
        rows, payload = _reference_sky_html(data)
        assert (data["n_shown"] == len(cat) if fov else data["n_shown"] < len(cat)) and any(s["ids"] for s in data["sources"])
        assert "<tbody>\n" + rows + "\n</tbody>" in page
        assert f'<script type="application/json" id="rpp-data">{payload}</script>' in page
        assert page == skyview.render(data)


def test_render_writes_any_json_able_page_data_as_json_whatever_the_key_order(calibrated):
    """``skyview.render`` is public: data built by hand (numpy floats, booleans, ``sources`` first or last)
    still give the page's JSON as ``json`` writes it, not the fast path's text for page_data's own values."""
    cat, summary, frame = calibrated
    data = skyview.page_data(cat, summary, None)
    data["sources"][0]["ra"] = np.float64(10.25)
    data["sources"][0]["extra"] = True
    for order in (["sources", *[k for k in data if k != "sources"]], [*[k for k in data if k != "sources"], "sources"]):
        page = skyview.render({k: data[k] for k in order})
        payload = page.split('<script type="application/json" id="rpp-data">', 1)[1].split("</script>", 1)[0]
        back = json.loads(payload.replace("<\\/", "</"))
        assert list(back) == order
        assert back["sources"][0]["ra"] == 10.25 and back["sources"][0]["extra"] is True
        assert back == json.loads(json.dumps(data))


def test_results_imports_figures_itself_and_no_matplotlib():
    """rpp_core.figures is imported with rpp_core.results, never first by a run's sending thread: a run
    forking its drawers while another run's thread (Dask: runs in threads of one process) held that import's
    lock left its first drawer waiting for ever on the lock it inherited. matplotlib stays the drawers' import."""
    import subprocess
    import sys

    code = ("import sys, rpp_core.results\n"
            "print('rpp_core.figures' in sys.modules, any(m.split('.')[0] == 'matplotlib' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"], out.stdout


@pytest.mark.parametrize("shape, nan_fraction", [((4096, 4096), 0.0), ((3000, 4001), 0.3), ((2048, 2048), 1.0),
                                                  ((20, 123457), 0.0)])
def test_finder_pixels_are_block_means_of_the_finite_pixels(shape, nan_fraction):
    """The finder chart's pixels (made in bands) against a plain nanmean over each block; a strip far wider
    than the chart keeps at least one row."""
    rng = np.random.default_rng(3)
    data = rng.normal(100.0, 10.0, shape).astype(np.float32)
    if nan_fraction:
        data[rng.random(shape) < nan_fraction] = np.nan
    small, f, full = figures.finder_pixels(data)
    assert full == shape and min(small.shape) >= 1 and max(small.shape) <= max(729, max(shape) // min(shape) + 1)
    ny, nx = small.shape
    blocks = data[:ny * f, :nx * f].reshape(ny, f, nx, f).astype(np.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        np.testing.assert_allclose(small, np.nanmean(blocks, axis=(1, 3)), rtol=1e-5, equal_nan=True)
