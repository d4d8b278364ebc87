"""FITS loading, header repair and observation metadata (rpp_core.image).

Real frames from tests/data/images (copied before any change) and small
synthetic frames from rpp_core.synthetic with a fixed seed.
"""

from __future__ import annotations

import gzip
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.utils import iers
from astropy.wcs import WCS, Sip

from rpp_core.errors import InputError
from rpp_core.image.pixscale import optics_pixel_scale
from rpp_core.image import (
    compute_airmass,
    header_summary,
    load_frame,
    parse_date,
    read_metadata,
    repair_header,
    wcs_pixel_scale,
)
from rpp_core.settings import ObservatorySettings
from rpp_core.synthetic import make_frame

from .datafiles import data_unpacked

M67 = data_unpacked("images/M6707HH.fits.gz")
SPITZER = data_unpacked("images/spitzer_example_image.fits.gz")
HORSEHEAD = data_unpacked("images/HorseHead.fits.gz")
NO_PROFILE = ObservatorySettings()


@pytest.fixture(scope="module")
def synth():
    return make_frame(shape=(96, 128), n_stars=15, n_cosmics=0, n_saturated=0, seed=7)


def _write(path, data, header=None):
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
    return path


def _sky(wcs, xy):
    xy = np.asarray(xy, float)
    return wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)


CORNERS = [(0, 0), (127, 0), (0, 95), (127, 95), (64, 48), (10, 80)]


# --------------------------------------------------------------------- loading


def test_mef_image_in_extension_2_loads_by_default_and_by_index(tmp_path, synth):
    prim = fits.PrimaryHDU()
    prim.header["EXPTIME"] = 42.0
    prim.header["DATE-OBS"] = "2025-01-02T03:04:05"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(5.0))], name="EVENTS")
    hdr = fits.Header()
    hdr.update(synth.wcs.to_header())
    img = fits.ImageHDU(synth.data, header=hdr, name="SCI")
    path = tmp_path / "mef.fits"
    fits.HDUList([prim, table, img]).writeto(path)

    default = load_frame(path)
    by_index = load_frame(path, hdu=2)
    by_name = load_frame(path, hdu="SCI")
    for fr in (default, by_index, by_name):
        assert fr.hdu == 2
        assert fr.data.dtype == np.float32 and fr.data.shape == synth.data.shape
        np.testing.assert_array_equal(fr.data, synth.data)
        assert fr.wcs_status == "ok"
    # keywords of the primary header reach the metadata of the extension
    meta = read_metadata(default, NO_PROFILE)
    assert meta.exptime == 42.0 and meta.sources["exptime"] == "header EXPTIME"
    assert any("inherited from the primary header" in n for n in default.notes)


def test_cube_gives_its_first_plane_and_says_so(tmp_path, synth):
    cube = np.stack([synth.data, synth.data + 100, synth.data * 2]).astype(np.float32)
    hdr = synth.wcs.to_header()
    hdr["CTYPE3"], hdr["CRVAL3"], hdr["CDELT3"], hdr["CRPIX3"] = "WAVE", 5e-7, 1e-9, 1.0
    path = _write(tmp_path / "cube.fits", cube, hdr)
    fr = load_frame(path)
    np.testing.assert_array_equal(fr.data, synth.data)
    assert any("first plane" in n for n in fr.notes)
    assert fr.header["NAXIS"] == 2 and "NAXIS3" not in fr.header
    assert fr.wcs_status == "ok" and fr.wcs.naxis == 2
    np.testing.assert_allclose(_sky(fr.wcs, CORNERS), _sky(synth.wcs, CORNERS), rtol=0, atol=1e-10)


def test_gzip_and_fz_compressed_frames_equal_the_original(tmp_path, synth):
    plain = tmp_path / "f.fits"
    synth.write(plain)
    gz = tmp_path / "f.fits.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    fz = tmp_path / "f.fits.fz"
    # lossless tile compression: the data must come back bit for bit
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(synth.data, header=synth.header, compression_type="GZIP_2",
                                                      quantize_level=0.0)]).writeto(fz)
    ref = load_frame(plain)
    for path in (gz, fz):
        fr = load_frame(path)
        np.testing.assert_array_equal(fr.data, ref.data)
        assert fr.data.dtype == np.float32
        assert fr.wcs_status == "ok"
        np.testing.assert_allclose(_sky(fr.wcs, CORNERS), _sky(ref.wcs, CORNERS), rtol=0, atol=1e-12)
    assert load_frame(fz).hdu == 1
    assert any("compressed" in n for n in load_frame(gz).notes)

    # the default (lossy, RICE quantised) compression of the synthetic writer stays within its quantisation
    lossy = tmp_path / "lossy.fits.fz"
    synth.write(lossy, compress=True)
    fr = load_frame(lossy)
    noise = np.std(synth.data[:20, :20])
    assert np.max(np.abs(fr.data - synth.data)) < noise / 4


def test_scaled_int16_and_blank_pixels_come_out_as_physical_float32(tmp_path):
    rng = np.random.default_rng(3)
    phys = rng.integers(0, 65536, size=(40, 50)).astype(np.float64)
    hdu = fits.PrimaryHDU(phys.copy())  # scale() works in place
    hdu.scale("int16", bzero=32768)
    hdu.header["BLANK"] = -32768
    raw = hdu.data.copy()
    raw[5, 7] = -32768
    hdu.data = raw
    path = tmp_path / "u16.fits"
    hdu.writeto(path)
    with fits.open(path) as hl:
        assert hl[0].header["BITPIX"] == 16 and hl[0].header["BZERO"] == 32768
    fr = load_frame(path)
    assert fr.data.dtype == np.float32
    assert np.isnan(fr.data[5, 7])
    good = np.ones(phys.shape, bool)
    good[5, 7] = False
    np.testing.assert_array_equal(fr.data[good], phys[good])
    assert "BZERO" not in fr.header and fr.header["BITPIX"] == -32


def test_m67_plate_scan_loads_int16_exactly_and_reports_missing_wcs_with_dss_note():
    fr = load_frame(M67)
    expected = fits.getdata(M67).astype(np.float32)  # astropy's own (scaled) read
    assert fr.data.dtype == np.float32 and fr.data.shape == (1059, 1059)
    np.testing.assert_array_equal(fr.data, expected)
    assert fr.data.max() == 13374 and fr.data.min() == 2331  # DATAMAX/DATAMIN of the header
    assert fr.wcs is None and fr.wcs_status == "missing"
    assert "no FITS WCS (DSS plate solution keywords present, not used)" in fr.notes
    assert "DATE-OBS '29/11/51' -> '1951-11-29'" in fr.repairs


@pytest.mark.filterwarnings("ignore::erfa.ErfaWarning")  # 1951: ERFA calls the year 'dubious'
def test_m67_metadata_from_the_old_plate_header():
    meta = read_metadata(load_frame(M67), NO_PROFILE)
    assert meta.exptime == 3000.0  # 'EXPOSURE = 50 / Exposure time minutes'
    assert "minutes" in meta.sources["exptime"]
    # 1951-11-29 12:07 UT start + 25 min
    assert abs((meta.date_obs - Time("1951-11-29T12:32:00", scale="utc")).sec) < 1e-3
    assert "mid-exposure" in meta.sources["date_obs"]
    # pointing from OBJCTRA/OBJCTDEC; README: centre RA 132.834 Dec +11.812
    assert meta.ra == pytest.approx(132.834, abs=0.005) and meta.dec == pytest.approx(11.812, abs=0.005)
    # PLTSCALE x XPIXELSZ against the 1.7004"/px of the independent solution
    assert meta.pixel_scale == pytest.approx(1.7004, rel=2e-3)
    g = meta.site.to_geodetic()
    assert g.lat.deg == pytest.approx(33.40667, abs=1e-4) and g.lon.deg == pytest.approx(-116.86333, abs=1e-4)
    assert meta.airmass is not None and 1.0 < meta.airmass < 1.2 and "computed" in meta.sources["airmass"]


def test_spitzer_galactic_car_wcs_is_kept_unchanged():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = WCS(fits.getheader(SPITZER))
    fr = load_frame(SPITZER)
    assert fr.wcs_status == "ok" and fr.repairs == []
    assert list(fr.wcs.wcs.ctype) == ["GLON-CAR", "GLAT-CAR"]
    pix = [(0, 0), (1024, 0), (0, 512), (1024, 512), (512, 256), (100, 400)]
    np.testing.assert_allclose(_sky(fr.wcs, pix), _sky(original, pix), rtol=0, atol=1e-12)
    meta = read_metadata(fr, NO_PROFILE)
    assert meta.pixel_scale == pytest.approx(1.2, abs=1e-6)
    assert meta.site is None and meta.airmass is None  # a space telescope: no site, no airmass
    assert "file creation" in meta.sources["date_obs"]


# ---------------------------------------------------------------- WCS repair


def _sip_wcs(with_sip_suffix=True):
    w = WCS(naxis=2)
    w.wcs.crpix = [64.5, 48.5]
    w.wcs.crval = [150.0, 20.0]
    w.wcs.cd = np.array([[-2.0e-4, 1.0e-5], [1.2e-5, 2.0e-4]])
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 2], a[1, 1], a[3, 0] = 2e-4, -1e-4, 5e-5, 3e-6
    b[0, 2], b[2, 0], b[1, 2] = 1.5e-4, -8e-5, 2e-6
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    hdr = w.to_header(relax=True)
    if not with_sip_suffix:
        hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    return w, hdr


def test_sip_distortion_survives_repair_with_sky_positions_unchanged(tmp_path, synth):
    w, hdr = _sip_wcs()
    path = _write(tmp_path / "sip.fits", synth.data, hdr)
    fr = load_frame(path)
    assert fr.wcs_status == "ok" and fr.repairs == []
    assert fr.wcs.sip is not None and "A_2_0" in fr.header
    np.testing.assert_allclose(_sky(fr.wcs, CORNERS), _sky(w, CORNERS), rtol=0, atol=1e-12)
    # the distortion matters: without it the corners move by more than an arcsecond
    lin = w.deepcopy()
    lin.sip = None
    shift = np.hypot(*(np.array(_sky(w, CORNERS)) - np.array(_sky(lin, CORNERS)))) * 3600
    assert shift.max() > 1.0


def test_sip_coefficients_without_sip_ctype_get_the_suffix(tmp_path, synth):
    w, hdr = _sip_wcs(with_sip_suffix=False)
    fixed, repairs = repair_header(hdr)
    assert fixed["CTYPE1"] == "RA---TAN-SIP" and fixed["CTYPE2"] == "DEC--TAN-SIP"
    assert any("SIP coefficients present" in r for r in repairs)
    fr = load_frame(_write(tmp_path / "sip2.fits", synth.data, hdr))
    np.testing.assert_allclose(_sky(fr.wcs, CORNERS), _sky(w, CORNERS), rtol=0, atol=1e-12)


def test_tpv_distortion_survives_repair(tmp_path, synth):
    hdr = synth.wcs.to_header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TPV", "DEC--TPV"
    for k, v in {"PV1_0": 0.0, "PV1_1": 1.0, "PV1_4": 1.0, "PV1_7": 5.0,
                 "PV2_0": 0.0, "PV2_1": 1.0, "PV2_5": -1.0, "PV2_8": 4.0}.items():
        hdr[k] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = WCS(hdr)
    fr = load_frame(_write(tmp_path / "tpv.fits", synth.data, hdr))
    assert fr.wcs_status == "ok" and fr.repairs == []
    assert "PV1_7" in fr.header
    np.testing.assert_allclose(_sky(fr.wcs, CORNERS), _sky(original, CORNERS), rtol=0, atol=1e-12)
    shift = np.hypot(*(np.array(_sky(original, CORNERS)) - np.array(_sky(synth.wcs, CORNERS)))) * 3600
    assert shift.max() > 0.05


def test_singular_cd_matrix_is_dropped_with_a_repair_line(tmp_path, synth):
    hdr = synth.header.copy()
    for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
        hdr.remove(k, ignore_missing=True)
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = 1e-4, 2e-4, 2e-4, 4e-4
    fr = load_frame(_write(tmp_path / "sing.fits", synth.data, hdr))
    assert fr.wcs is None and fr.wcs_status.startswith("invalid: singular CD matrix")
    assert len(fr.repairs) == 1 and "WCS removed" in fr.repairs[0] and "CD1_1" in fr.repairs[0]
    assert "CD1_1" not in fr.header and "CTYPE1" not in fr.header
    # the pointing falls back to the RA/DEC keywords, the rest of the header is intact
    meta = read_metadata(fr, NO_PROFILE)
    assert meta.ra == 150.0 and meta.dec == 20.0 and fr.header["EXPTIME"] == 60.0


def test_crval2_of_95_degrees_is_dropped(tmp_path, synth):
    hdr = synth.header.copy()
    hdr["CRVAL2"] = 95.0
    fr = load_frame(_write(tmp_path / "crval.fits", synth.data, hdr))
    assert fr.wcs is None and "CRVAL2 = 95" in fr.wcs_status and fr.wcs_status.startswith("invalid")
    assert any("WCS removed" in r and "CRVAL2" in r for r in fr.repairs)


def test_unknown_projection_code_is_dropped(tmp_path, synth):
    hdr = synth.header.copy()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---XYZ", "DEC--XYZ"
    fr = load_frame(_write(tmp_path / "xyz.fits", synth.data, hdr))
    assert fr.wcs is None and fr.wcs_status.startswith("invalid")
    assert any("WCS removed" in r for r in fr.repairs)


def test_nonstandard_keywords_are_sanitised_without_touching_a_valid_wcs(synth):
    hdr = synth.header.copy()
    del hdr["RADESYS"]
    hdr["RADECSYS"] = "ICRS"
    del hdr["DATE-OBS"]
    hdr["DATE-OBS"] = "2025/01/02 03:04:05"
    hdr["EPOCH"] = 2000.0
    hdr.remove("EQUINOX", ignore_missing=True)
    hdr["CTYPE1"] = "ra--tan"
    fixed, repairs = repair_header(hdr)
    assert fixed["RADESYS"] == "ICRS" and "RADECSYS" not in fixed
    assert fixed["DATE-OBS"] == "2025-01-02T03:04:05"
    assert fixed["EQUINOX"] == 2000.0
    assert fixed["CTYPE1"] == "RA---TAN"
    assert len(repairs) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(_sky(WCS(fixed), CORNERS), _sky(synth.wcs, CORNERS), rtol=0, atol=1e-12)


def test_unparsable_cards_are_salvaged_or_removed_with_repair_lines(tmp_path):
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2",
             "NAXIS1  =                   30", "NAXIS2  =                   20",
             "EXPTIME =               12.3.4 / broken number", "GAIN    = 1,5 / decimal comma", "FILTER  = 'R",
             "DATE-OBS= '2025-01-02T03:04:05'", "END"]
    data = np.random.default_rng(0).normal(100, 5, (20, 30)).astype(">f4")
    path = tmp_path / "badcards.fits"
    blob = "".join(c.ljust(80) for c in cards).ljust(2880).encode() + data.tobytes()
    path.write_bytes(blob + b"\0" * (-len(blob) % 2880))
    fr = load_frame(path)
    assert fr.repairs == ["removed unparsable card 'EXPTIME =               12.3.4 / broken number'",
                          "GAIN '1,5' -> 1.5 (non-standard value)", "FILTER \"'R\" -> 'R' (non-standard value)"]
    meta = read_metadata(fr, NO_PROFILE)
    assert (meta.exptime, meta.gain, meta.filter) == (None, 1.5, "R")
    assert header_summary(path)["filter"] == "R"


@pytest.mark.parametrize("key, value", [("XPIXELSZ", "x"), ("PLTRAH", "13h"), ("CNPIX1", "?"), ("PPO3", "1.0x"),
                                        ("AMDX13", "n/a"), ("XPIXELSZ", 15.0)])
def test_a_damaged_dss_plate_solution_costs_neither_the_process_nor_the_fits_wcs(synth, tmp_path, key, value):
    """A text value in a DSS plate-solution keyword made astropy's WCS() end the process (segmentation
    fault), and a lone XPIXELSZ made it refuse the frame's valid TAN WCS: both load with that WCS, noted.
    In a child process: the old code's failure is a crash, which must fail this test, not end the session."""
    import json
    import subprocess
    import sys

    path = tmp_path / "plate.fits"
    hdr = synth.header.copy()
    hdr[key] = value
    fits.writeto(path, synth.data[:64, :64], hdr)
    code = ("import json, numpy as np\n"
            "from rpp_core.image import load_frame, header_summary\n"
            f"f = load_frame({str(path)!r})\n"
            "print(json.dumps({'status': f.wcs_status, 'notes': [n for n in f.notes if 'plate' in n],\n"
            "                  'crval': np.asarray(f.wcs.wcs.crval).tolist(),\n"
            "                  'matrix': np.asarray(f.wcs.pixel_scale_matrix).tolist(),\n"
            f"                  'browser': str(header_summary({str(path)!r}))}}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["status"] == "ok" and any(key in n for n in got["notes"]), got
    np.testing.assert_allclose(got["crval"], synth.wcs.wcs.crval, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["matrix"], synth.wcs.pixel_scale_matrix, rtol=1e-12)


def test_odd_date_formats_are_understood():
    assert parse_date("29/11/51") == "1951-11-29"
    assert parse_date("03/03/08", file_date=True) == "2008-03-03"
    assert parse_date("2025-01-02 03:04:05.5Z") == "2025-01-02T03:04:05.5"
    assert parse_date("2025-01-02T03:04:05") == "2025-01-02T03:04:05"
    assert parse_date("yesterday") is None
    assert parse_date("2025-13-40") is None


# -------------------------------------------------------------- pixel scale


def test_pixel_scale_of_a_rotated_wcs_is_exact_in_cd_and_pc_forms():
    fr = make_frame(shape=(32, 32), n_stars=2, n_cosmics=0, n_saturated=0, pixscale=0.8, rotation_deg=30.0)
    assert wcs_pixel_scale(fr.wcs) == pytest.approx(0.8, abs=1e-6)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [10.0, -30.0], [16, 16]
    w.wcs.cdelt = [-0.8 / 3600, 0.8 / 3600]
    th = np.deg2rad(30.0)
    w.wcs.pc = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    assert wcs_pixel_scale(w) == pytest.approx(0.8, abs=1e-6)


def test_pixel_scale_falls_back_to_keywords_then_pixel_size_and_focal_length(tmp_path):
    data = np.random.default_rng(1).normal(100, 5, (20, 30)).astype(np.float32)
    hdr = fits.Header({"PIXSCALE": 1.23})
    fr = load_frame(_write(tmp_path / "a.fits", data, hdr))
    assert read_metadata(fr, NO_PROFILE).pixel_scale == 1.23
    hdr = fits.Header({"XPIXSZ": 9.0, "FOCALLEN": 1000.0})
    meta = read_metadata(load_frame(_write(tmp_path / "b.fits", data, hdr)), NO_PROFILE)
    assert meta.pixel_scale == pytest.approx(optics_pixel_scale(9.0, 1000.0), rel=1e-12)
    assert meta.pixel_scale == pytest.approx(206.265 * 9.0 / 1000.0, rel=1e-5)  # the textbook constant
    # profile pixel size is unbinned: XBINNING 2 doubles it
    profile = ObservatorySettings(pixel_size_um=4.5, focal_length_mm=500.0)
    meta = read_metadata(load_frame(_write(tmp_path / "c.fits", data, fits.Header({"XBINNING": 2}))), profile)
    assert meta.pixel_scale == pytest.approx(optics_pixel_scale(9.0, 500.0), rel=1e-12)
    assert "XBINNING" in meta.sources["pixel_scale"]
    assert read_metadata(load_frame(tmp_path / "c.fits"), NO_PROFILE).pixel_scale is None


# ------------------------------------------------------------------ airmass


def _astropy_secz(site, t, ra, dec):
    with iers.conf.set_temp("auto_download", False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aa = SkyCoord(ra * u.deg, dec * u.deg).transform_to(AltAz(obstime=t, location=site))
        return float(aa.secz)


def test_computed_airmass_agrees_with_astropy_altaz_at_mid_exposure(tmp_path):
    fr = make_frame(shape=(32, 32), n_stars=2, n_cosmics=0, n_saturated=0, write_airmass=False)
    frame = load_frame(_write(tmp_path / "am.fits", fr.data, fr.header))
    meta = read_metadata(frame, NO_PROFILE)
    site = EarthLocation.from_geodetic(-17.8792 * u.deg, 28.7606 * u.deg, 2332.0 * u.m)
    mid = Time("2025-01-02T03:04:05", scale="utc") + 30 * u.s
    expected = _astropy_secz(site, mid, 150.0, 20.0)
    assert 1.0 < expected < 3.0
    assert meta.airmass == pytest.approx(expected, abs=1e-3)
    assert meta.sources["airmass"].startswith("computed")
    assert abs((meta.date_obs - mid).sec) < 1e-3


def test_computed_airmass_matches_a_hand_computed_hour_angle_case():
    lat, lon = 30.0, -17.88
    ra, dec = 60.0, 10.0
    t = Time("2000-01-01T20:00:00", scale="utc")  # at J2000, precession is negligible
    d = t.jd - 2451545.0
    gmst_h = (18.697374558 + 24.06570982441908 * d) % 24.0
    ha = math.radians((gmst_h * 15.0 + lon - ra) % 360.0)
    cosz = (math.sin(math.radians(lat)) * math.sin(math.radians(dec))
            + math.cos(math.radians(lat)) * math.cos(math.radians(dec)) * math.cos(ha))
    by_hand = 1.0 / cosz
    assert 1.2 < by_hand < 2.0
    site = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, 0 * u.m)
    airmass, alt = compute_airmass(site, t, ra, dec)
    assert airmass == pytest.approx(by_hand, abs=1e-3)
    assert airmass == pytest.approx(_astropy_secz(site, t, ra, dec), abs=1e-6)


def test_computed_airmass_reproduces_the_dss_horsehead_plate_zenith_distance():
    # STScI recorded OBSZD 26.3715 deg, AIRMASS 1.11587 for this UK Schmidt plate
    # (SITELONG = 210.934 there is west-positive: Siding Spring is 149.066 E).
    hdr = fits.getheader(HORSEHEAD)
    site = EarthLocation.from_geodetic(149.066 * u.deg, hdr["SITELAT"] * u.deg, 1165 * u.m)
    airmass, alt = compute_airmass(site, Time(hdr["DATE-OBS"], scale="utc"), hdr["PLATERA"], hdr["PLATEDEC"])
    assert 90.0 - alt == pytest.approx(hdr["OBSZD"], abs=0.02)
    assert airmass == pytest.approx(hdr["AIRMASS"], abs=1e-3)


def test_target_below_horizon_gives_no_airmass():
    site = EarthLocation.from_geodetic(0 * u.deg, 60 * u.deg, 0 * u.m)
    airmass, alt = compute_airmass(site, Time("2025-06-21T12:00:00"), 0.0, -80.0)
    assert airmass is None and alt < 0


def test_header_airmass_is_used_when_plausible_and_recomputed_when_not(tmp_path):
    fr = make_frame(shape=(32, 32), n_stars=2, n_cosmics=0, n_saturated=0, airmass=1.37)
    meta = read_metadata(load_frame(_write(tmp_path / "h.fits", fr.data, fr.header)), NO_PROFILE)
    assert meta.airmass == 1.37 and meta.sources["airmass"] == "header AIRMASS"
    hdr = fr.header.copy()
    hdr["AIRMASS"] = 0.2
    meta = read_metadata(load_frame(_write(tmp_path / "h2.fits", fr.data, hdr)), NO_PROFILE)
    assert meta.airmass != 0.2 and "implausible" in meta.sources["airmass"] and "computed" in meta.sources["airmass"]


# ----------------------------------------------------------------- metadata


def test_sexagesimal_ra_dec_are_parsed(tmp_path):
    data = np.random.default_rng(1).normal(100, 5, (20, 30)).astype(np.float32)
    cases = [
        ({"RA": "10:00:00.0", "DEC": "-20:30:00"}, 150.0, -20.5),
        ({"RA": "10 00 36", "DEC": "+05 06 36"}, 150.15, 5.11),
        ({"OBJCTRA": "08 51 20.100", "OBJCTDEC": "+11 48 43.00"}, 132.83375, 11.811944),
        ({"RA": 150.5, "DEC": -1.25}, 150.5, -1.25),
    ]
    for i, (cards, ra, dec) in enumerate(cases):
        meta = read_metadata(load_frame(_write(tmp_path / f"p{i}.fits", data, fits.Header(cards))), NO_PROFILE)
        assert meta.ra == pytest.approx(ra, abs=1e-5) and meta.dec == pytest.approx(dec, abs=1e-5), cards


def test_pointing_falls_back_to_the_wcs_frame_centre(tmp_path, synth):
    hdr = synth.header.copy()
    del hdr["RA"], hdr["DEC"]
    meta = read_metadata(load_frame(_write(tmp_path / "w.fits", synth.data, hdr)), NO_PROFILE)
    ra, dec = synth.wcs.all_pix2world([[63.5, 47.5]], 0)[0]
    assert meta.ra == pytest.approx(ra, abs=1e-9) and meta.dec == pytest.approx(dec, abs=1e-9)
    assert "WCS" in meta.sources["ra"] and "WCS" in meta.sources["dec"]


def test_synthetic_header_metadata_is_read_with_sources(tmp_path, synth):
    meta = read_metadata(load_frame(_write(tmp_path / "s.fits", synth.data, synth.header)), NO_PROFILE)
    assert (meta.exptime, meta.filter, meta.gain, meta.read_noise, meta.saturation) == (60.0, "G", 1.5, 5.0, 60000.0)
    assert meta.object == "SYNTH" and meta.pixel_scale == pytest.approx(1.0, abs=1e-9)
    assert meta.sources["gain"] == "header GAIN" and meta.sources["site"].startswith("header SITELAT")
    assert meta.site.to_geodetic().height.to_value(u.m) == pytest.approx(2332.0, abs=1e-3)
    d = meta.to_dict()
    assert d["date_obs"] == "2025-01-02T03:04:35.000" and d["site"]["lat_deg"] == pytest.approx(28.7606)


def test_missing_header_values_fall_back_to_the_profile_or_none(tmp_path):
    data = np.random.default_rng(1).normal(100, 5, (20, 30)).astype(np.float32)
    hdr = fits.Header({"DATE-OBS": "2025-01-02", "TIME-OBS": "03:04:05", "EXPOSURE": 10.0, "RA": 150.0, "DEC": 20.0})
    frame = load_frame(_write(tmp_path / "m.fits", data, hdr))
    meta = read_metadata(frame, NO_PROFILE)
    assert meta.gain is None and meta.read_noise is None and meta.saturation is None and meta.site is None
    assert meta.airmass is None and "no site" in meta.sources["airmass"]
    assert abs((meta.date_obs - Time("2025-01-02T03:04:10", scale="utc")).sec) < 1e-3
    assert meta.sources["date_obs"].startswith("header DATE-OBS + TIME-OBS")
    profile = ObservatorySettings(name="Teide", latitude=28.3, longitude=-16.5, elevation=2390,
                                  gain=2.0, read_noise=7.0, saturation=50000)
    meta = read_metadata(frame, profile)
    assert (meta.gain, meta.read_noise, meta.saturation) == (2.0, 7.0, 50000.0)
    assert meta.sources["site"] == "profile observatory 'Teide'"
    assert meta.airmass is not None and meta.sources["airmass"].startswith("computed")


def test_mjd_obs_is_used_when_date_obs_is_absent(tmp_path):
    data = np.random.default_rng(1).normal(100, 5, (20, 30)).astype(np.float32)
    frame = load_frame(_write(tmp_path / "mjd.fits", data, fits.Header({"MJD-OBS": 60677.5, "EXPTIME": 20.0})))
    meta = read_metadata(frame, NO_PROFILE)
    assert abs((meta.date_obs - Time(60677.5, format="mjd", scale="utc")).sec - 10.0) < 1e-3
    assert meta.sources["date_obs"].startswith("header MJD-OBS")


# --------------------------------------------------------------- bad input


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.fits"
    text.write_text("this is a text file\n" * 20)
    truncated = tmp_path / "half.fits"
    raw = M67.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    nan = _write(tmp_path / "nan.fits", np.full((20, 30), np.nan, np.float32))
    const = _write(tmp_path / "const.fits", np.full((20, 30), 7.0, np.float32))
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="x", format="D", array=np.arange(3.0))])]).writeto(table)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    return [
        (text, None, "not a FITS file"),
        (truncated, None, "truncated"),
        (nan, None, "NaN"),
        (const, None, "constant image"),
        (M67, 3, "HDU index 3 out of range: file has 1 HDU(s) (0 PRIMARY image 1059x1059)"),
        (table, None, "no 2-D image HDU"),
        (table, 1, "HDU 1 is a binary table, not a 2-D image"),
        (empty, None, "empty file"),
        (tmp_path / "nowhere.fits", None, "no such file"),
    ]


def test_bad_inputs_raise_input_error_naming_file_and_problem(tmp_path):
    for path, hdu, phrase in _bad_inputs(tmp_path):
        with pytest.raises(InputError) as info:
            load_frame(path, hdu=hdu)
        msg = str(info.value)
        assert phrase in msg, (path, msg)
        assert str(path) in msg and "\n" not in msg
        assert info.value.exit_code == 3


def test_truncated_gzip_file_is_reported(tmp_path, synth):
    plain = tmp_path / "f.fits"
    synth.write(plain)
    gz = tmp_path / "cut.fits.gz"
    blob = gzip.compress(plain.read_bytes())
    gz.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated|corrupt"):
        load_frame(gz)


def test_truncated_tile_compressed_file_is_refused_but_a_missing_final_padding_is_not(tmp_path, synth):
    fz = tmp_path / "f.fits.fz"
    synth.write(fz, compress=True)
    full = load_frame(fz).data
    blob = fz.read_bytes()
    with fits.open(fz, disable_image_compression=True) as hl:
        bt = hl[1].header
        end = hl.fileinfo(1)["datLoc"] + bt["NAXIS1"] * bt["NAXIS2"] + bt["PCOUNT"]
    assert end < len(blob)
    for cut, ok in ((len(blob) // 2, False), (end - 50, False), (end, True)):
        part = tmp_path / f"cut{cut}.fits.fz"
        part.write_bytes(blob[:cut])
        if ok:
            fr = load_frame(part)
            np.testing.assert_array_equal(fr.data, full)
            assert any("is complete" in n for n in fr.notes)
        else:
            with pytest.raises(InputError, match="truncated file"):
                load_frame(part)


# ----------------------------------------------------------- header summary


def test_header_summary_gives_key_facts_without_reading_pixels(tmp_path):
    s = header_summary(M67)
    assert s["error"] is None and s["shape"] == (1059, 1059) and s["n_hdus"] == 1 and s["hdu"] == 0
    assert s["object"] == "M67" and s["exptime"] == 3000.0 and s["date_obs"] == "1951-11-29T12:07:00.0"
    assert s["has_wcs"] is False and s["wcs_status"] == "missing"
    s = header_summary(SPITZER)
    assert s["has_wcs"] is True and s["shape"] == (513, 1025)
    # a file cut inside its data still has a readable header: the summary shows it,
    # which proves no pixel was read (load_frame refuses the same file)
    cut = tmp_path / "cut.fits"
    shutil.copy(M67, cut)
    with open(cut, "r+b") as fh:
        fh.truncate(M67.stat().st_size // 2)
    s = header_summary(cut)
    assert s["shape"] == (1059, 1059) and s["error"].startswith("truncated file")
    s = header_summary(tmp_path / "none.fits")
    assert "no such file" in s["error"]
    # headers only: the bytes this process reads (Linux's rchar), not the 1.6 MB of pixels
    def bytes_read() -> int:
        return int(next(ln for ln in Path("/proc/self/io").read_text().splitlines() if ln.startswith("rchar")).split()[1])

    header_summary(HORSEHEAD)  # the first call may read Python modules too
    before = bytes_read()
    header_summary(HORSEHEAD)
    assert bytes_read() - before < 0.1 * HORSEHEAD.stat().st_size
