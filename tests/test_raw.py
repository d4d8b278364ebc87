"""Raw frames (rpp_core.image.raw): overscan, trimming, amplifier mosaics, on synthetic truth and the real raw frames."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from rpp_core import image
from rpp_core.image.raw import Section, amplifier_extensions, overscan_model, subtract_overscan_and_trim
from rpp_core.settings import ObservatorySettings

from . import realframes as R
from .datafiles import data_file


def test_fits_sections_are_one_based_inclusive_and_may_run_backwards():
    s = Section.parse("[   4:  13,   1: 520]")
    assert (s.x0, s.nx, s.y0, s.ny) == (3, 10, 0, 520)
    flipped = Section.parse("[3072:2049,1025:2048]")
    assert flipped.x1 > flipped.x2 and flipped.nx == 1024 and flipped.x0 == 2048
    assert Section.parse("UNKNOWN") is None and Section.parse("") is None and Section.parse(None) is None


def _raw_frame(bias=480.0, sky=120.0, read_noise_adu=4.0, drift=0.0, seed=1):
    """A 200 x 120 raw frame: overscan columns 2-11 (BIASSEC [3:12,1:120]), data TRIMSEC [16:200,1:120]."""
    rng = np.random.default_rng(seed)
    ny, nx = 120, 200
    level = bias + drift * np.arange(ny)[:, None] / ny
    data = level + rng.normal(0.0, read_noise_adu, (ny, nx))
    data[:, 15:] += sky + rng.normal(0.0, np.sqrt(sky), (ny, nx - 15))
    data[:, :2] = 0.0  # prescan junk
    h = fits.Header()
    h["BIASSEC"] = "[3:12,1:120]"
    h["TRIMSEC"] = "[16:200,1:120]"
    h["SATURATE"] = 65000.0
    h["CRPIX1"], h["CRPIX2"] = 100.0, 60.0
    return data.astype(np.float32), h


def test_an_injected_overscan_level_is_recovered_and_the_frame_trimmed():
    data, h = _raw_frame(bias=480.0, sky=120.0)
    out, hdr, layout = subtract_overscan_and_trim(data, h)
    assert out.shape == (120, 185)
    assert layout.amplifiers[0].overscan == pytest.approx(480.0, abs=0.5)
    assert layout.amplifiers[0].overscan_mode == "scalar"
    assert np.median(out) == pytest.approx(120.0, abs=1.0)
    assert (layout.x_offset, layout.y_offset) == (15, 0)
    assert hdr["SATURATE"] == pytest.approx(65000.0 - layout.amplifiers[0].overscan)
    assert hdr["CRPIX1"] == 85.0 and "TRIM" in hdr and "OVERSCAN" in hdr and "BIASSEC" not in hdr
    assert subtract_overscan_and_trim(out, hdr) is None  # processed: never twice


def test_a_drifting_overscan_is_subtracted_row_by_row():
    data, h = _raw_frame(bias=480.0, sky=120.0, drift=60.0)
    level, mode, _ = overscan_model(data, Section.parse(h["BIASSEC"]), Section.parse(h["TRIMSEC"]))
    assert mode == "per row"
    out, _, _ = subtract_overscan_and_trim(data, h)
    rows = np.median(out, axis=1)
    assert np.ptp(rows[10:-10]) < 6.0  # the 60 ADU ramp is gone (what is left is sky noise)
    assert np.median(out) == pytest.approx(120.0, abs=1.5)


def _mosaic_file(tmp_path, truth_e, gains, biases, saturate=40000.0):
    """Four 2x2-binned amplifiers of ``truth_e`` (electrons), in ADU with overscan, DETSEC flipped as LCO's."""
    ny, nx = truth_e.shape
    hy, hx = ny // 2, nx // 2
    quads = {  # the block of the truth each amplifier holds, and whether it reads x / y backwards
        1: ((slice(hy, ny), slice(0, hx)), False, True),
        2: ((slice(0, hy), slice(0, hx)), False, False),
        3: ((slice(0, hy), slice(hx, nx)), True, False),
        4: ((slice(hy, ny), slice(hx, nx)), True, True),
    }
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["SATURATE"] = saturate
    hdus[0].header["EXPTIME"] = 60.0
    hdus[0].header["FILTER"] = "w"
    hdus[0].header["RA"], hdus[0].header["DEC"] = 287.3, 59.5
    for k in (1, 2, 3, 4):
        block_sl, flip_x, flip_y = quads[k]
        block = truth_e[block_sl]
        x0, y0 = block_sl[1].start * 2 + 1, block_sl[0].start * 2 + 1
        x1, y1 = x0 + 2 * hx - 1, y0 + 2 * hy - 1
        detsec = f"[{x1 if flip_x else x0}:{x0 if flip_x else x1},{y1 if flip_y else y0}:{y0 if flip_y else y1}]"
        read = block[:, ::-1] if flip_x else block
        read = read[::-1, :] if flip_y else read
        amp = np.full((hy + 4, hx + 12), biases[k], np.float64)
        amp[:hy, :hx] = read / gains[k] + biases[k]
        hdu = fits.ImageHDU(amp.astype(np.float32))
        hdu.header["DETSEC"] = detsec
        hdu.header["DATASEC"] = f"[1:{hx},1:{hy}]"
        hdu.header["BIASSEC"] = f"[{hx + 3}:{hx + 12},1:{hy}]"
        hdu.header["GAIN"] = gains[k]
        hdu.header["CCDSUM"] = "2 2"
        hdus.append(hdu)
    path = tmp_path / "mosaic.fits"
    fits.HDUList(hdus).writeto(path)
    return path


def test_a_four_amplifier_synthetic_mosaic_is_assembled_exactly(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.uniform(100.0, 5000.0, (64, 80))
    truth[10, 70] = 90000.0  # a bright pixel in the upper-right amplifier: placement and flips show
    gains = {1: 6.42, 2: 6.23, 3: 6.27, 4: 6.26}
    biases = {1: 2522.0, 2: 2560.0, 3: 2553.0, 4: 2582.0}
    path = _mosaic_file(tmp_path, truth, gains, biases)
    fr = image.load_frame(path)
    assert fr.data.shape == truth.shape
    np.testing.assert_allclose(fr.data, truth, rtol=1e-5, atol=0.05)
    assert fr.layout.kind == "mosaic" and len(fr.layout.amplifiers) == 4
    assert fr.header["BUNIT"] == "electron" and fr.header["GAIN"] == 1.0
    # SATURATE in raw ADU with the bias in: each amplifier's level in electrons, the lowest kept
    levels = [(40000.0 - biases[k]) * gains[k] for k in gains]
    assert fr.header["SATURATE"] == pytest.approx(min(levels), rel=1e-6)
    assert fr.header["FILTER"] == "w" and fr.header["EXPTIME"] == 60.0  # the primary's facts kept
    meta = image.read_metadata(fr, ObservatorySettings())
    assert meta.effective_gain.value == 1.0 and meta.ra == pytest.approx(287.3)


def test_ccds_of_a_focal_plane_with_gaps_are_not_assembled(tmp_path):
    hdus = [fits.PrimaryHDU()]
    for k, detsec in enumerate(("[1:100,1:100]", "[111:210,1:100]")):  # a 10 px gap
        h = fits.ImageHDU(np.random.default_rng(k).normal(100.0, 5.0, (100, 100)).astype(np.float32))
        h.header["DETSEC"], h.header["DATASEC"] = detsec, "[1:100,1:100]"
        hdus.append(h)
    path = tmp_path / "fpa.fits"
    fits.HDUList(hdus).writeto(path)
    with fits.open(path) as hdul:
        assert amplifier_extensions(hdul) is None
    assert image.load_frame(path).data.shape == (100, 100)


def test_saao_raw_frame_is_overscan_subtracted_and_trimmed_in_the_trimmed_frame():
    fr = image.load_frame(data_file("real/saao1m_raw/a8280271.fits.gz"))
    case = R.frame("saao_raw")
    ref = R.reference_image(case)
    assert fr.data.shape == (520, 512)
    np.testing.assert_array_equal(fr.data, ref.data)
    assert fr.layout.kind == "trimmed" and fr.layout.x_offset == 16
    assert fr.layout.amplifiers[0].overscan == pytest.approx(214.0)


def test_lco_sinistro_amplifiers_are_assembled_by_detsec_in_electrons():
    fr = image.load_frame(data_file("real/lco1m_sinistro_raw/elp1m008-fa05-20211007-0042-e00.fits.gz"))
    ref = R.reference_image(R.frame("lco_raw"))
    assert fr.data.shape == (1024, 1024)
    np.testing.assert_allclose(fr.data, ref.data, rtol=1e-6)
    assert [a.gain for a in fr.layout.amplifiers] == [6.42, 6.23, 6.27, 6.26]
    assert fr.header["BUNIT"] == "electron" and fr.header["SATURATE"] == pytest.approx((40000 - 2560) * 6.23)
    assert fr.header["FILTER"] == "w" and fr.header["RA"] == "19:09:17.959"


def test_one_lco_amplifier_chosen_by_hdu_is_overscan_subtracted_and_cut_to_its_datasec():
    fr = image.load_frame(data_file("real/lco1m_sinistro_raw/elp1m008-fa05-20211007-0042-e00.fits.gz"), hdu=1)
    assert fr.data.shape == (512, 512) and fr.layout.kind == "trimmed"
    assert fr.header["GAIN"] == 6.42  # its own gain, not the primary's 0
    assert fr.header["SATURATE"] == pytest.approx(40000 - 2522)
