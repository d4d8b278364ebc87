"""Plate solving that fails fast or succeeds: hints, index coverage, `rpp index build` for fields.

Real index files are built here (build-astrometry-index) from real catalogues
(the M67 Gaia export), from synthetic frames' truth, and from the loopback
Gaia TAP server (tests/servers.py); solve-field runs for real.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
import sep_x
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from rpp_cli.main import main as rpp_main
from rpp_core import astrometry as A
from rpp_core import locations, pipeline
from rpp_core.astrometry import fields as F
from rpp_core.astrometry.index import preset_quads_arcmin
from rpp_core.errors import AstrometryError, UsageError
from rpp_core.image import load_frame, read_metadata
from rpp_core.settings import AstrometrySettings, ObservatorySettings
from rpp_core.synthetic import make_frame

from .conftest_pipeline_helpers import offline_profile
from .datafiles import data_file, data_unpacked

M67_CAT = data_file("refcats/M67_gaia_dr2_cone40arcmin_plx_gt_0.5.csv")
LCO = data_unpacked("real/lco1m_sinistro_raw/elp1m008-fa05-20211007-0042-e00.fits.gz")

solver = pytest.mark.solver


def _sources(data: np.ndarray) -> Table:
    d = np.ascontiguousarray(data, dtype=np.float32)
    mask = ~np.isfinite(d)
    d = np.where(mask, np.float32(np.nanmedian(d)), d).astype(np.float32)
    bkg = sep_x.Background(d, mask=mask)
    obj = sep_x.extract(d - bkg.back(), 5.0, err=bkg.rms(), minarea=5, mask=mask)
    t = Table({"x": obj["x"], "y": obj["y"], "flux": obj["flux"]})
    t.sort("flux", reverse=True)
    return t


def _settings(*dirs, **kw) -> AstrometrySettings:
    kw.setdefault("timeout_s", 30.0)
    return AstrometrySettings(index_dirs=[str(d) for d in dirs], use_system_indexes=False, **kw)


def _failure(solve_call) -> tuple[float, str]:
    """Seconds until ``solve_call()`` raised AstrometryError, and its message (printed)."""
    t0 = time.monotonic()
    with pytest.raises(AstrometryError) as exc:
        solve_call()
    elapsed, msg = time.monotonic() - t0, str(exc.value)
    print(f"failed after {elapsed:.2f} s: {msg}")
    return elapsed, msg


def _max_sep_over_grid(w_test: WCS, w_true: WCS, shape, step=32) -> float:
    yy, xx = np.mgrid[0:shape[0]:step, 0:shape[1]:step]
    a = SkyCoord(*w_true.all_pix2world(xx.ravel(), yy.ravel(), 0), unit="deg")
    b = SkyCoord(*w_test.all_pix2world(xx.ravel(), yy.ravel(), 0), unit="deg")
    return float(a.separation(b).arcsec.max())


@pytest.fixture(scope="module")
def m67_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("idx_m67")
    A.build_index(M67_CAT, out, scales=range(2, 6), mag_col="phot_g_mean_mag")
    return out


#: the LCO Sinistro frame's pointing
LCO_RA, LCO_DEC = 287.3248, 59.4939


@pytest.fixture(scope="module")
def wide_quad_index(tmp_path_factory):
    """Tycho-2-like index files (presets 7-8: quads of 22'-42') for a 5 deg cone round the LCO frame."""
    rng = np.random.default_rng(5)
    n = 8000
    ra, dec = _random_cone(rng, LCO_RA, LCO_DEC, 5.0, n)
    out = tmp_path_factory.mktemp("idx_wide")
    A.build_index(Table({"ra": ra, "dec": dec, "mag": rng.uniform(6, 11, n)}), out, scales=[7, 8], name="wide")
    return out


def _random_cone(rng, ra0, dec0, radius, n):
    c = SkyCoord(ra0, dec0, unit="deg")
    pa = rng.uniform(0, 360, n)
    sep = radius * np.sqrt(rng.uniform(0, 1, n))
    p = c.directional_offset_by(pa * u.deg, sep * u.deg)
    return p.ra.deg, p.dec.deg


# ---------------------------------------------------------------- index files read back

@solver
def test_index_files_report_their_quad_sizes_and_the_cone_they_were_built_from(m67_index, wide_quad_index):
    infos = A.index_infos(sorted(m67_index.iterdir()))
    assert [i.problem for i in infos] == [""] * 4
    for preset, info in zip(range(2, 6), infos):
        lo, hi = preset_quads_arcmin(preset)
        assert info.quad_lo / 60 == pytest.approx(lo, rel=1e-3) and info.quad_hi / 60 == pytest.approx(hi, rel=1e-3)
        # the Gaia export is a 40' cone round M67 (132.846, +11.814)
        ra, dec, radius = info.cone
        assert F.sky_sep_deg(ra, dec, 132.846, 11.814) < 0.05
        assert 0.6 < radius < 0.8
        assert info.covers(132.8, 11.8) and not info.covers(200.0, -30.0, margin_deg=2.0)
    wide = A.index_infos(sorted(wide_quad_index.iterdir()))
    assert [(i.quad_lo / 60, i.quad_hi / 60) for i in wide] == [pytest.approx((22, 30)), pytest.approx((30, 42))]
    assert all(F.sky_sep_deg(i.cone[0], i.cone[1], LCO_RA, LCO_DEC) < 0.3 and 4.8 < i.cone[2] < 5.6 for i in wide)


def test_a_file_that_is_not_an_index_is_reported_not_used(tmp_path):
    bad = tmp_path / "index-broken.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(bad)
    info = A.read_index_info(bad)
    assert info.problem and "not an astrometry.net index" in info.problem


def test_scales_follow_field_size():
    assert A.scales_for_field(30.0) == [2, 3, 4, 5]
    assert A.scales_for_field(20.5) == [1, 2, 3, 4]
    # narrow fields get presets below 0: quads of a tenth of the field up to the field
    for width in (2.0, 1.1):
        presets = A.scales_for_field(width)
        assert presets[0] < 0
        for p in presets:
            lo, hi = preset_quads_arcmin(p)
            assert lo >= 0.1 * width and hi <= width * 1.42, (width, p, lo, hi)
    assert A.scales_for_field(7.0, 28.0) == list(range(-3, 6))


# ---------------------------------------------------------------- hints

def _binned_frame():
    """2x2 binned data (2"/px) whose header WCS and XPIXSZ/FOCALLEN describe the unbinned camera (1"/px)."""
    f = make_frame(shape=(512, 512), n_stars=220, seed=31, pixscale=2.0, ra0=150.0, dec0=20.0, n_cosmics=0,
                   n_saturated=0, mag_range=(12.0, 18.0))
    wrong = f.wcs.deepcopy()
    wrong.wcs.cd = f.wcs.wcs.cd / 2.0
    header = f.header.copy()
    for key in list(header):
        if key.startswith(("CD", "PC", "CDELT")):
            del header[key]
    header.update(wrong.to_header())
    header["XPIXSZ"], header["FOCALLEN"], header["XBINNING"] = 9.0, 206.265 * 9.0, 2
    return f, header, wrong


def test_hints_widen_the_scale_range_over_every_header_hint_and_binning():
    f, header, wrong = _binned_frame()
    frame = SimpleNamespace(data=f.data, header=header, wcs=wrong, wcs_status="ok")
    meta = SimpleNamespace(ra=150.0, dec=20.0, pixel_scale=1.0, sources={"ra": "header RA/DEC",
                                                                          "pixel_scale": "WCS (sqrt |det|)"})
    hints = A.solve_hints(frame, meta)
    assert hints.has_position and "header RA/DEC" in hints.describe_position()
    assert [h.source for h in hints.scales] == ["the header WCS"]  # XPIXSZ/FOCALLEN says the same 1.0"/px
    lo, hi = hints.scale_range(0.2)
    assert lo == pytest.approx(0.8) and hi == pytest.approx(4.8)  # 1"/px x 1-4, 20 % beyond
    # an explicit plate scale is taken as written
    header2 = fits.Header({"PLTSCALE": 67.2, "XPIXELSZ": 25.28445})
    h2 = A.solve_hints(SimpleNamespace(header=header2, wcs=None, wcs_status="missing"), None)
    assert h2.scale_range(0.2) == pytest.approx((1.699 * 0.8, 1.699 * 1.2), rel=1e-3)


@solver
@pytest.mark.slow
def test_binned_frame_whose_header_describes_the_unbinned_camera_solves_hinted(tmp_path):
    """The WCS check rejects the header WCS; its 1"/px and XPIXSZ/FOCALLEN are hints, not truths: solved at 2"/px."""
    f, header, _ = _binned_frame()
    fits.PrimaryHDU(f.data, header=header).writeto(tmp_path / "binned.fits")
    f.write_refcat(tmp_path / "ref.ecsv")
    A.build_index(f.refcat, tmp_path / "idx", field_width_arcmin=512 * 2.0 / 60, mag_col="G")
    prof = offline_profile(**{"astrometry.solve": "auto", "astrometry.index_dirs": [str(tmp_path / "idx")],
                              "astrometry.use_system_indexes": False, "astrometry.timeout_s": 60,
                              "cosmic_rays.enabled": False, "calibration.catalog": "file"})
    res = asyncio.run(pipeline.run(tmp_path / "binned.fits", prof, out_dir=tmp_path / "runs",
                                   catalog_files=[tmp_path / "ref.ecsv"]))
    wcs = res.summary.wcs
    log = (res.run_dir / "run.log").read_text()
    assert wcs.status == "solved", res.message
    assert wcs.source.startswith("astrometry.net (hinted)")
    assert res.summary.pixel_scale_arcsec == pytest.approx(2.0, rel=0.002)
    assert 'scale 0.800-4.800"/px' in log  # the log says which scale range was tried
    cat = res.catalog
    truth = SkyCoord(f.truth["ra"], f.truth["dec"], unit="deg")
    _, sep, _ = SkyCoord(cat["ra"], cat["dec"], unit="deg").match_to_catalog_sky(truth)
    assert np.median(sep.arcsec) < 0.3


# ---------------------------------------------------------------- fail fast, name the index

@solver
def test_frame_too_small_for_the_indexes_fails_at_once_naming_the_fix(m67_index):
    """A 1' frame of M67 (300 px at 0.2"/px): the indexes hold 4'-16' quads, so solve-field must not start."""
    f = make_frame(shape=(300, 300), n_stars=40, seed=3, pixscale=0.2, ra0=132.846, dec0=11.814, n_cosmics=0)
    frame = SimpleNamespace(data=f.data, header=fits.Header({"PIXSCALE": 0.2}), wcs=None, wcs_status="missing")
    meta = SimpleNamespace(ra=132.846, dec=11.814, pixel_scale=0.2, sources={"ra": "header RA/DEC"})
    elapsed, msg = _failure(lambda: A.solve(_sources(f.data), f.data.shape, meta, _settings(m67_index),
                                            hints=A.solve_hints(frame, meta)))
    assert elapsed < 3.0
    assert "not started" in msg and "needs quads of 0.08'-1.2'" in msg and "hold quads of 4'-16'" in msg
    assert "rpp index build --field 132.8460 +11.8140" in msg and "--field-width 1.2" in msg
    assert "no Debian index package has quads this small" in msg


@solver
def test_lco_frame_with_only_wide_field_indexes_fails_in_seconds_not_minutes(wide_quad_index, m67_index):
    """The LCO Sinistro frame (0.778"/px, under 14') ran solve-field for 120 s against the Tycho-2 indexes."""
    frame = load_frame(LCO)
    meta = read_metadata(frame, ObservatorySettings())
    settings = _settings(wide_quad_index, m67_index, timeout_s=120.0)
    lines: list[str] = []
    elapsed, msg = _failure(lambda: A.solve(_sources(frame.data), frame.data.shape, meta, settings,
                                            hints=A.solve_hints(frame, meta), log=lines.append))
    assert elapsed < 5.0
    assert "not started" in msg and "header PIXSCALE" in msg
    assert "astrometry-data-2mass-0" in msg
    assert "rpp index build --field 287.3248 +59.4939" in msg
    assert not any("started, pid" in line for line in lines)  # solve-field never ran


@solver
def test_pointing_far_from_every_index_fails_at_once_naming_the_index_to_build(m67_index):
    data = fits.getdata(data_unpacked("images/M6707HH.fits.gz")).astype(np.float32)
    meta = SimpleNamespace(ra=200.0, dec=-30.0, pixel_scale=1.70, sources={})
    elapsed, msg = _failure(lambda: A.solve(_sources(data), data.shape, meta, _settings(m67_index)))
    assert elapsed < 2.0
    assert "not started" in msg and "RA 200.0000 Dec -30.0000" in msg
    assert "rpp index build --field 200.0000 -30.0000" in msg


@solver
def test_plan_uses_only_the_index_files_that_fit_and_lie_near_the_pointing(m67_index, wide_quad_index):
    infos = A.index_infos(sorted(m67_index.iterdir()) + sorted(wide_quad_index.iterdir()))
    s = AstrometrySettings()
    suffixes = lambda attempt: sorted(i.name[-7:-5] for i in attempt.indexes)  # noqa: E731
    m67 = A.SolveHints(ra=132.834, dec=11.812, scales=[A.ScaleHint(1.70, "plate")])
    plan = A.plan_astrometry_net((1059, 1059), m67, infos, s)
    assert [a.label for a in plan.attempts] == ["hinted", "blind"]
    assert suffixes(plan.attempts[0]) == ["02", "03", "04", "05"]  # the wide-quad cone lies far away
    lco_30 = A.SolveHints(ra=LCO_RA, dec=LCO_DEC, scales=[A.ScaleHint(1.70, "plate")])
    # a 30' field at 1.36-2.04"/px takes quads of 2.4'-36': 22'-30' and 30'-42' fit, the M67 cone is far
    assert suffixes(A.plan_astrometry_net((1059, 1059), lco_30, infos, s).attempts[0]) == ["07", "08"]
    lco_10 = A.SolveHints(ra=LCO_RA, dec=LCO_DEC, scales=[A.ScaleHint(0.6, "PIXSCALE")])
    plan = A.plan_astrometry_net((1059, 1059), lco_10, infos, s)
    assert plan.attempts == [] and "rpp index build --field 287.3248 +59.4939" in plan.advice
    no_pointing = A.SolveHints()
    plan = A.plan_astrometry_net((1059, 1059), no_pointing, infos, s)
    assert [a.label for a in plan.attempts] == ["blind"]
    assert plan.attempts[0].scale == pytest.approx((30.0 / 1059, 180 * 3600.0 / 1059))  # fields of 0.5' to 180 deg
    assert len(plan.attempts[0].indexes) == 6
    # without a scale hint a failed hinted try is not followed by a search of the whole sky at every scale
    pointing_only = A.SolveHints(ra=132.834, dec=11.812)
    assert [a.label for a in A.plan_astrometry_net((1059, 1059), pointing_only, infos, s).attempts] == ["hinted"]


# ---------------------------------------------------------------- rpp index build for fields

def test_field_lists_are_read_in_degrees_or_sexagesimal(tmp_path):
    path = tmp_path / "fields.txt"
    path.write_text("# my targets\n287.3248 59.4939 0.2 7-28\n08:51:20.1 +11:48:43 0.5  # M67\n\n")
    fields = F.fields_from_file(path)
    assert len(fields) == 2
    assert fields[0].width == (7.0, 28.0) and fields[0].radius_deg == 0.2
    assert fields[1].ra == pytest.approx(132.8338, abs=1e-4) and fields[1].dec == pytest.approx(11.8119, abs=1e-4)
    assert fields[1].width is None and fields[1].presets() == A.scales_for_field(0.5 * 60 * 2 ** 0.5)
    path.write_text("287.3 59.5\n")
    with pytest.raises(UsageError, match="line 1.*RA DEC RADIUS"):
        F.fields_from_file(path)


def test_frames_of_one_field_make_one_cone():
    a = F.SkyField(100.0, 10.0, 0.3, (10.0, 12.0), "a")
    b = F.SkyField(100.1, 10.05, 0.3, (11.0, 14.0), "b")
    c = F.SkyField(120.0, 10.0, 0.3, (10.0, 12.0), "c")
    merged = F.merge_fields([a, b, c])
    assert len(merged) == 2
    assert merged[0].width == (10.0, 14.0) and merged[0].radius_deg > 0.3
    assert F.sky_sep_deg(100.1, 10.05, merged[0].ra, merged[0].dec) + 0.3 <= merged[0].radius_deg + 1e-9


@solver
@pytest.mark.slow
def test_index_built_from_the_gaia_cone_solves_the_field_offline(frame_catalog_server, tmp_path, capsys):
    """`rpp index build --frames DIR` asks the (loopback) Gaia archive once; the frame, stripped of its WCS,
    then solves offline with the default settings against the true WCS; building again needs no network."""
    f = make_frame(shape=(512, 512), n_stars=160, seed=41, pixscale=0.6, ra0=210.5, dec0=-12.25, n_cosmics=0,
                   n_saturated=0, mag_range=(12.0, 18.5))
    (tmp_path / "night").mkdir()
    f.write(tmp_path / "night" / "f001.fits")
    server = frame_catalog_server(f, with_objects=False)
    svc = server.settings()
    sets = ["--set", f"services.gaia_tap={svc.gaia_tap}", "--set", "services.timeout_s=5",
            "--set", "services.rate_limit_per_s=100"]
    assert rpp_main(["index", "build", "--frames", str(tmp_path / "night"), *sets]) == 0
    out = capsys.readouterr().out
    print(out)
    built = sorted(p.name for p in locations.index_dir().iterdir())
    assert built and all(n.startswith("index-rpp-gaia-210.5") for n in built)
    assert "the solver searches it by default" in out
    asked = server.count("gaia")
    assert asked >= 1

    # the frame without its WCS, solved with the default settings: the built indexes are found by default
    header = f.header.copy()
    for key in list(header):
        if key.startswith(("CD", "PC", "CDELT", "CRVAL", "CRPIX", "CTYPE", "CUNIT", "WCSAXES", "LONPOLE", "LATPOLE",
                           "RADESYS", "EQUINOX", "MJDREF")):
            del header[key]
    frame = SimpleNamespace(data=f.data, header=header, wcs=None, wcs_status="missing")
    meta = SimpleNamespace(ra=210.5, dec=-12.25, pixel_scale=None, sources={"ra": "header RA/DEC"})
    settings = AstrometrySettings(use_system_indexes=False, timeout_s=30.0)
    hints = A.solve_hints(frame, meta)
    assert not hints.scales  # nothing but the pointing is left
    res = A.solve(_sources(f.data), f.data.shape, meta, settings, hints=hints)
    err = _max_sep_over_grid(res.wcs, f.wcs, f.data.shape)
    print(f"solved {res.method}: scale {res.pixel_scale:.4f}, max error {err:.3f}\"")
    assert res.method == "astrometry.net (hinted)"
    assert res.pixel_scale == pytest.approx(0.6, rel=0.002)
    assert err < 0.5

    # a later night, offline: the cone comes from the answer cache
    assert rpp_main(["index", "build", "--frames", str(tmp_path / "night" / "f001.fits"), "--offline", *sets]) == 0
    assert server.count("gaia") == asked
    assert sorted(p.name for p in locations.index_dir().iterdir()) == built


def test_index_build_for_a_field_offline_without_a_cached_cone_says_so(tmp_path, capsys):
    code = rpp_main(["index", "build", "--field", "150.0", "-20.5", "--radius", "0.2", "--offline"])
    err = capsys.readouterr().err
    assert code == 7
    assert "offline" in err and "Gaia DR3 cone for RA 150.0000 Dec -20.5000" in err


def test_index_build_needs_exactly_one_source_of_fields(capsys):
    assert rpp_main(["index", "build", "--field", "150", "20"]) == 2
    assert "--radius" in capsys.readouterr().err
    assert rpp_main(["index", "build"]) == 2
    assert "give one of CATALOG" in capsys.readouterr().err
