"""The catalogue files: every format reads back with astropy as it was written, units and meta included.

The writers (rpp_core/catalog_files.py) bypass astropy's per-cell Python
writers for speed; these tests hold them to what astropy itself would have
written: same values (to the last bit for floats), same units, text with
commas, quotes and non-ASCII letters, booleans, masked cells, and a VOTable
that astropy's parser accepts with every check turned into an error.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from astropy import units as u
from astropy.table import MaskedColumn, Table

from rpp_core import archive, catalog_files, results, rundir


@pytest.fixture
def table():
    rng = np.random.default_rng(11)
    n = 500
    t = Table()
    t["id"] = np.arange(1, n + 1)
    t["x"] = rng.uniform(0, 4096, n)
    t["flux_ap2"] = rng.lognormal(8, 2, n) * u.adu
    t["flux_ap2"].description = "aperture sum minus local background"
    t["mag_ap2"] = -2.5 * np.log10(np.asarray(t["flux_ap2"]) / 60.0) * u.mag
    t["mag_ap2"][::17] = np.nan
    t["ra"] = rng.uniform(0, 360, n) * u.deg
    t["flag_ap2"] = rng.integers(0, 64, n).astype(np.int32)
    t["calib_used"] = rng.random(n) < 0.3
    names = np.array([f"star {i}" for i in range(n)], dtype="<U12")
    names[0], names[1], names[2], names[3] = "a,b", 'q"x', "Barnard's ñ", ""
    t["ref_id"] = names
    t["n_obs"] = MaskedColumn(rng.integers(1, 9, n).astype(np.int64), mask=rng.random(n) < 0.1)
    t.meta.update({"frame": "/data/M31_ñé.fits", "zp": 24.5123456789, "pixel_origin": 0, "band": "G",
                   "apertures": {"ap2": 6.98}, "calibration_aperture": "ap2"})
    return t


READERS = {"csv": "ascii.csv", "ecsv": "ascii.ecsv", "votable": "votable", "fits": "fits", "parquet": "parquet"}


def _written(table, tmp_path, fmt):
    path = catalog_files.write(table, tmp_path / catalog_files.FILE_NAMES[fmt], fmt)
    return Table.read(path, format=READERS[fmt])


def _same_values(a, b):
    a_mask, b_mask = np.ma.getmaskarray(a), np.ma.getmaskarray(b)
    av, bv = np.asarray(np.ma.filled(a, 0) if a_mask.any() else a), np.asarray(np.ma.filled(b, 0) if b_mask.any() else b)
    if av.dtype.kind == "f":
        same = (av == bv.astype(float)) | (np.isnan(av) & (np.isnan(bv.astype(float)) | b_mask))
        return bool(np.all(same | (a_mask & b_mask)))
    if av.dtype.kind in "US":
        # an empty text cell reads back masked in astropy's own ASCII formats too
        return bool(np.all((av.astype(str) == bv.astype(str)) | ((av.astype(str) == "") & b_mask) | (a_mask & b_mask)))
    if bv.dtype.kind == "f":  # an integer column with nulls, read back by astropy as float with NaN
        b_mask = b_mask | np.isnan(bv)
    return bool(np.all((av == bv) | (a_mask & b_mask)))


@pytest.mark.parametrize("fmt", list(READERS))
def test_every_format_reads_back_with_the_same_values(table, tmp_path, fmt):
    if fmt == "fits":  # FITS text is ASCII: the one non-ASCII name is checked escaped below
        table["ref_id"][2] = "Barnard's n"
    back = _written(table, tmp_path, fmt)
    assert back.colnames == table.colnames
    for name in table.colnames:
        if fmt == "csv" and name == "calib_used":  # CSV has no types: astropy reads True/False as text
            assert list(back[name]) == [str(v) for v in table[name]]
            continue
        assert _same_values(table[name], back[name]), (fmt, name)
        if fmt == "parquet" and name == "n_obs":  # nulls: astropy reads a masked float column
            continue
        same_kind = back[name].dtype.kind == table[name].dtype.kind
        assert same_kind or (fmt == "fits" and back[name].dtype.kind == "S"), (fmt, name)  # FITS text as bytes


@pytest.mark.parametrize("fmt", ["ecsv", "votable", "fits", "parquet"])
def test_units_survive_in_every_format_that_has_them(table, tmp_path, fmt):
    back = _written(table, tmp_path, fmt)
    assert back["flux_ap2"].unit == u.adu and back["mag_ap2"].unit == u.mag and back["ra"].unit == u.deg
    assert back["id"].unit is None


def test_ecsv_and_parquet_keep_the_whole_meta_and_descriptions(table, tmp_path):
    for fmt in ("ecsv", "parquet"):
        back = _written(table, tmp_path, fmt)
        assert back.meta["frame"] == "/data/M31_ñé.fits" and back.meta["zp"] == 24.5123456789
        assert back.meta["apertures"] == {"ap2": 6.98}
        assert back["flux_ap2"].description == "aperture sum minus local background"


def test_fits_holds_non_ascii_text_escaped_in_header_and_columns(table, tmp_path):
    back = _written(table, tmp_path, "fits")
    assert back.meta["FRAME"] == "/data/M31_\\xf1\\xe9.fits" and back.meta["ZP"] == 24.5123456789
    assert back["ref_id"][2] == "Barnard's \\xf1"


def test_votable_is_valid_for_astropys_strict_parser_and_carries_meta(table, tmp_path):
    from astropy.io.votable import parse

    path = catalog_files.write(table, tmp_path / "catalog.vot", "votable")
    assert b"<BINARY2>" in path.read_bytes()
    vot = parse(path, verify="exception")
    t = vot.get_first_table()
    assert len(t.array) == len(table)
    infos = {i.name: i.value for i in t.infos}
    assert infos["zp"] == "24.5123456789" and infos["frame"] == "/data/M31_ñé.fits"
    assert [f.datatype for f in t.fields][:3] == ["long", "double", "double"]
    assert t.array["n_obs"].mask.sum() == table["n_obs"].mask.sum()


def test_parquet_is_read_by_pandas_with_units_in_the_field_metadata(table, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    path = catalog_files.write(table, tmp_path / "catalog.parquet", "parquet")
    df = pd.read_parquet(path)
    assert list(df.columns) == table.colnames and len(df) == len(table)
    assert np.array_equal(df["flux_ap2"].to_numpy(), np.asarray(table["flux_ap2"]))
    assert df["ref_id"].iloc[2] == "Barnard's ñ" and df["n_obs"].isna().sum() == table["n_obs"].mask.sum()
    schema = pq.read_schema(path)
    assert schema.field("flux_ap2").metadata[b"unit"] == b"adu"
    assert b"table_meta_yaml" in schema.metadata


def test_csv_has_one_header_line_and_astropys_spelling_of_booleans(table, tmp_path):
    path = catalog_files.write(table, tmp_path / "catalog.csv", "csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(table.colnames) and len(lines) == len(table) + 1
    # as astropy writes them (ECSV accepts no other spelling), not Arrow's true/false; text is quoted
    assert {ln.split(",")[6] for ln in lines[5:]} == {'"True"', '"False"'}


def test_run_zip_holds_every_file_and_tools_read_it(table, tmp_path):
    run = results.make_run_dir(tmp_path, "frame.fits")
    staging = rundir.staging_dir(run)
    results.write_catalog(table, staging, list(catalog_files.FILE_NAMES))
    (run / "run.log").write_text("log\n")
    zpath = results.make_zip(run)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        assert {f"{run.name}/{n}" for n in [*catalog_files.FILE_NAMES.values(), "run.log"]} <= names
        stored = {i.filename.rsplit("/", 1)[1]: i.compress_type for i in zf.infolist()}
        assert stored["catalog.parquet"] == zipfile.ZIP_STORED and stored["catalog.csv"] == zipfile.ZIP_DEFLATED
        assert zf.read(f"{run.name}/catalog.ecsv") == (staging / "catalog.ecsv").read_bytes()


def test_zip_of_members_too_big_for_plain_zip_falls_back_to_zip64(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "_SMALL_LIMIT", 1000)
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "small.txt").write_text("y")
    path = archive.write_zip(tmp_path / "a.zip", [(tmp_path / "big.txt", "r/big.txt"), (tmp_path / "small.txt", "r/s.txt")])
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None and zf.read("r/big.txt") == b"x" * 5000
