"""The catalogue files: every format reads back with astropy as it was written, units and meta included.

The writers (rpp_core/catalog_files.py) bypass astropy's per-cell Python
writers for speed; these tests hold them to what astropy itself would have
written: same values (to the last bit for floats in the binary formats; in
CSV and ECSV to the last bit of the decimal Python writes at the column's
stated precision), same units, text with commas, quotes and non-ASCII
letters, booleans, masked cells, and a VOTable that astropy's parser accepts
with every check turned into an error.
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
#: the precision of the fixture's float columns in CSV and ECSV (docs/catalogue.md): pixel position, flux
#: in adu (7 significant digits), magnitude, sky coordinate
TEXT_FORMATS = {"x": ".4f", "flux_ap2": ".7g", "mag_ap2": ".5f", "ra": ".8f"}


def _as_text(column, spec):
    """The column as Python writes it with ``format(v, spec)`` and reads it back: the CSV/ECSV values expected."""
    out = column.copy()
    out[:] = [float(format(v, spec)) for v in np.asarray(column, float).tolist()]
    return out


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
        expected = _as_text(table[name], TEXT_FORMATS[name]) if fmt in ("csv", "ecsv") and name in TEXT_FORMATS else table[name]
        assert _same_values(expected, back[name]), (fmt, name)
        if fmt == "ecsv" and name in TEXT_FORMATS:  # the header says the precision, for astropy and TOPCAT to show
            assert back[name].info.format == TEXT_FORMATS[name]
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
        for info in zf.infolist():  # every member, byte for byte
            source = run / "run.log" if info.filename.endswith("/run.log") else staging / info.filename.split("/", 1)[1]
            assert zf.read(info) == source.read_bytes(), info.filename
    # the CSV's rows are deflated once: the ECSV member ends with the CSV member's compressed rows
    csv, ecsv = (_stored_bytes(zpath, f"{run.name}/{n}") for n in ("catalog.csv", "catalog.ecsv"))
    rows = (staging / "catalog.csv").read_bytes().split(b"\n", 1)[1]
    shared = len(csv) - len(csv.split(b"\x00\x00\xff\xff", 1)[0]) - 4  # after the header's sync-flush marker
    assert shared > 0.9 * len(csv) and ecsv.endswith(csv[-shared:]) and rows in (staging / "catalog.ecsv").read_bytes()


def _stored_bytes(zpath, name):
    """The member's data as stored in the archive (compressed), from its local header."""
    import struct

    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo(name)
    with open(zpath, "rb") as fh:
        fh.seek(info.header_offset)
        n_name, n_extra = struct.unpack("<HH", fh.read(30)[26:30])
        fh.seek(n_name + n_extra, 1)
        return fh.read(info.compress_size)


def test_zip_members_with_the_same_rows_hold_their_own_bytes_whether_or_not_the_rows_match(tmp_path):
    rows = b"".join(b"%d,%.6f,True\n" % (i, i / 7) for i in range(30000))
    files = {"a.csv": b"id,v,flag\n" + rows, "b.ecsv": b"# %ECSV 1.0\n# ---\n# yaml\nid,v,flag\n" + rows,
             "c.csv": b"id,v,flag\n" + rows, "d.ecsv": b"# other\n" + rows[:-5] + b"xyz\n",  # not its rows
             "e.csv": b"no newline", "f.ecsv": b"no newline", "g.csv": b"h\n", "h.ecsv": b"h\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = {name: tmp_path / name for name in files}
    pairs = [(p["a.csv"], p["b.ecsv"]), (p["c.csv"], p["d.ecsv"]), (p["e.csv"], p["f.ecsv"]), (p["g.csv"], p["h.ecsv"])]
    for threads in (1, 2, 4):
        path = archive.write_zip(tmp_path / f"t{threads}.zip", [(p[n], f"r/{n}") for n in files], threads=threads,
                                 same_rows=pairs)
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
            assert {n: zf.read(f"r/{n}") for n in files} == files
        assert _stored_bytes(path, "r/b.ecsv").endswith(_stored_bytes(path, "r/a.csv")[-1000:])
        assert not _stored_bytes(path, "r/d.ecsv").endswith(_stored_bytes(path, "r/c.csv")[-1000:])


def test_zip_of_members_too_big_for_plain_zip_falls_back_to_zip64(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "_SMALL_LIMIT", 1000)
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "small.txt").write_text("y")
    path = archive.write_zip(tmp_path / "a.zip", [(tmp_path / "big.txt", "r/big.txt"), (tmp_path / "small.txt", "r/s.txt")])
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None and zf.read("r/big.txt") == b"x" * 5000


# ---------------------------------------------------------------- text precision of CSV and ECSV

def _catalogue_like(n=4000, seed=5):
    """Columns named and unit-ed as a calibrated run writes them, with NaN, negative and tiny values."""
    rng = np.random.default_rng(seed)
    t = Table()
    t["id"] = np.arange(1, n + 1)
    for name in ("x", "y", "psf_x", "psf_y"):
        t[name] = rng.uniform(-0.5, 4095.5, n)
    flux = rng.lognormal(9, 2.5, n) * rng.choice([1, 1, 1, -1], n)
    t["flux_ap2"] = flux * u.adu
    t["fluxerr_ap2"] = np.sqrt(np.abs(flux) + 300.0 * 50) * u.adu
    with np.errstate(invalid="ignore"):
        t["mag_ap2"] = -2.5 * np.log10(flux / 60.0) * u.mag  # NaN where the flux is negative
    t["magerr_ap2"] = 1.0857 * np.asarray(t["fluxerr_ap2"]) / np.abs(flux) * u.mag
    t["bkg_ap2"] = rng.normal(300, 20, n) * u.adu / u.pix
    t["snr_ap2"] = flux / np.asarray(t["fluxerr_ap2"])
    t["psf_flux"] = flux * rng.normal(1, 1e-3, n) * u.adu
    t["psf_chi2"] = rng.lognormal(0, 1, n) * 1e-9  # tiny values keep 7 significant digits too
    t["ra"] = rng.uniform(0, 360, n) * u.deg
    t["dec"] = rng.uniform(-90, 90, n) * u.deg
    t["ref_sep_arcsec"] = rng.exponential(0.3, n)
    for name in ("mag_cal_ap2", "mag_ref", "ref_color", "calib_residual", "zp"):
        t[name] = rng.normal(14, 3, n)
    for name in ("magerr_cal_ap2", "mag_ref_err", "zp_err"):
        t[name] = rng.exponential(0.02, n)
    t["airmass"] = rng.uniform(1, 2.5, n)
    return t


#: column -> decimal places in CSV/ECSV (None: 7 significant digits), as docs/catalogue.md states them
STATED = {"x": 4, "y": 4, "psf_x": 4, "psf_y": 4, "ra": 8, "dec": 8, "ref_sep_arcsec": 4,
          **{n: 5 for n in ("mag_ap2", "magerr_ap2", "mag_cal_ap2", "magerr_cal_ap2", "mag_ref", "mag_ref_err",
                            "ref_color", "calib_residual", "zp", "zp_err")},
          **{n: None for n in ("flux_ap2", "fluxerr_ap2", "bkg_ap2", "snr_ap2", "psf_flux", "psf_chi2", "airmass")}}


def _last_digit(values, places):
    """One unit of the last digit written at ``places`` decimals, or at 7 significant digits (None)."""
    if places is not None:
        return np.full(len(values), 10.0 ** -places)
    a = np.abs(values)
    return 10.0 ** (np.floor(np.log10(np.where(a > 0, a, 1.0))) - 6)


@pytest.mark.parametrize("fmt", ["csv", "ecsv"])
def test_positions_magnitudes_and_fluxes_in_text_equal_the_fits_ones_within_half_the_last_digit(tmp_path, fmt):
    table = _catalogue_like()
    fits = _written(table, tmp_path, "fits")
    text = _written(table, tmp_path, fmt)
    lines = (tmp_path / catalog_files.FILE_NAMES[fmt]).read_text().splitlines()
    rows = [ln.split(",") for ln in lines if not ln.startswith("#")][1:]
    assert sorted(STATED) == sorted(n for n in table.colnames if table[n].dtype.kind == "f")
    for name, places in STATED.items():
        full, written = np.asarray(fits[name], float), np.asarray(text[name], float)
        assert np.array_equal(full, np.asarray(table[name]), equal_nan=True), name  # FITS keeps every bit
        assert np.array_equal(np.isnan(full), np.isnan(written)), name
        ok = np.isfinite(full)
        half = 0.5 * _last_digit(full[ok], places) * (1 + 1e-12)
        assert np.all(np.abs(written[ok] - full[ok]) <= half), name
        # and no more digits than stated: the files are half the size they were at full precision
        cells = [r[table.colnames.index(name)] for r in rows]
        if places is not None:
            assert max(len(c.split(".")[1]) if "." in c else 0 for c in cells) <= places, name
        else:
            digits = [len(c.split("e")[0].replace("-", "").replace(".", "").strip("0")) for c in cells if c != "nan"]
            assert max(digits) <= 7, name
        assert np.count_nonzero(written[ok] != full[ok]) > 0.9 * ok.sum(), name  # rounded, not written in full


def test_text_precision_rounds_as_python_formats_ties_and_extremes_included():
    rng = np.random.default_rng(2)
    values = np.concatenate([
        rng.uniform(-5000, 5000, 20000),
        np.round(rng.uniform(0, 100, 20000), 5) + rng.choice([5e-6, -5e-6, 0.0], 20000),  # next to 5-decimal ties
        np.array([float(f"{v:.7e}") for v in rng.lognormal(5, 8, 20000)]),  # next to 7-digit ties
        rng.integers(-10**12, 10**12, 2000) + rng.choice([0.0, 0.5], 2000),  # whole numbers, exact ties
        10.0 ** rng.uniform(-40, 40, 2000),
        [np.nextafter(float(f"1e{k}"), side) for k in range(-30, 30) for side in (0, np.inf)],  # next to powers of ten
        [0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308, 9999999.5, 99999995.0, 2.5, 0.125, -1e-9,
         0.00049999999999999995, 1e7, 1e23],
    ])
    for places, spec in [(None, ".6e"), (0, ".0f"), (4, ".4f"), (5, ".5f"), (8, ".8f")]:
        got = catalog_files.text_values(values, places)
        expected = np.array([float(format(v, spec)) + 0.0 for v in values.tolist()])
        same = (got == expected) & (np.signbit(got) == np.signbit(expected)) | (np.isnan(got) & np.isnan(expected))
        assert same.all(), (spec, values[~same][:5], got[~same][:5])


def test_text_precision_is_chosen_by_unit_then_by_name():
    fmt = catalog_files.text_format
    assert fmt("x", None) == ".4f" and fmt("psf_y", None) == ".4f" and fmt("x", u.pix) == ".4f"
    assert fmt("ra", u.deg) == ".8f" and fmt("dec", None) == ".8f" and fmt("gaia_sep_arcsec", None) == ".4f"
    assert fmt("mag_cal_psf", None) == ".5f" and fmt("magerr_cal_ap2", None) == ".5f" and fmt("gaia_phot_g_mean_mag", None) == ".5f"
    assert fmt("mag_ref_err", None) == ".5f" and fmt("zp_err", None) == ".5f" and fmt("m", u.ABmag) == ".5f"
    assert fmt("obs_mjd", None) == ".8f" and fmt("t", u.day) == ".8f"
    # a unit decides over the name; anything else keeps 7 significant digits
    assert fmt("x", u.adu) == ".7g" and fmt("flux_ap2", u.adu) == ".7g" and fmt("bkg_ap2", u.adu / u.pix) == ".7g"
    assert fmt("a", None) == ".7g" and fmt("snr_ap2", None) == ".7g" and fmt("gaia_parallax", None) == ".7g"
    assert fmt("max_x", None) == ".7g" and fmt("magic", None) == ".7g"


def test_fits_rows_packed_in_numpy_are_the_bytes_astropy_writes(table, tmp_path, monkeypatch):
    t = table.copy()
    t["psf_flux"] = MaskedColumn(np.asarray(t["flux_ap2"]), mask=np.arange(len(t)) % 5 == 0, unit=u.adu)
    t["small"] = np.arange(len(t), dtype=np.int16)
    t["f32"] = np.linspace(0, 1, len(t), dtype=np.float32)
    t["flag32"] = MaskedColumn(np.arange(len(t), dtype=np.int32), mask=np.arange(len(t)) % 7 == 0)
    variants = {"catalogue": t, "no rows": t[:0], "masked text": t[["id", "ref_id"]].copy(),
                "masked booleans (astropy's own way)": t[["id", "calib_used"]].copy()}
    variants["masked text"]["ref_id"] = MaskedColumn(np.asarray(t["ref_id"]), mask=np.arange(len(t)) < 30)
    variants["masked booleans (astropy's own way)"]["calib_used"] = MaskedColumn(np.asarray(t["calib_used"]),
                                                                                 mask=np.arange(len(t)) < 3)
    packed = {}
    for label, tab in variants.items():
        packed[label] = catalog_files.write(tab, tmp_path / f"{len(packed)}.fits", "fits").read_bytes()
    monkeypatch.setattr(catalog_files, "_write_fits_rows", lambda flat, path: False)
    for i, (label, tab) in enumerate(variants.items()):
        theirs = catalog_files.write(tab, tmp_path / f"astropy{i}.fits", "fits").read_bytes()
        assert packed[label] == theirs, label
    back = Table.read(tmp_path / "0.fits")
    assert back["flag32"].mask.sum() == t["flag32"].mask.sum() and not np.isfinite(np.ma.filled(back["psf_flux"], np.nan)[0])


def test_votable_rows_spanning_several_base64_lines_read_back_cell_by_cell(tmp_path):
    """Rows of more than one 1 MiB base64 line, every numpy kind the writer packs, masks included: the
    parsed cells equal the table's, and the stream is plain base64 in lines of 1 MiB."""
    from astropy.io.votable import parse

    rng = np.random.default_rng(4)
    n = 60000  # 60,000 rows x 33 bytes (1.98 MB): two lines of 3 x 2**18 bytes and a part
    t = Table()
    t["f8"] = rng.normal(0, 1e3, n)
    t["f8"][::7] = np.nan
    t["f4"] = rng.normal(0, 1, n).astype(">f4")  # big-endian input too
    t["i2"] = rng.integers(-300, 300, n).astype(np.int16)
    t["i1"] = rng.integers(-100, 100, n).astype(np.int8)
    t["u2"] = rng.integers(0, 60000, n).astype(np.uint16)
    t["b"] = rng.random(n) < 0.5
    t["s"] = np.array([f"s{i % 97}" for i in range(n)])
    t["m"] = MaskedColumn(rng.integers(0, 10**12, n), mask=rng.random(n) < 0.2)
    path = catalog_files.write(t, tmp_path / "catalog.vot", "votable")
    text = path.read_bytes()
    stream = text[text.index(b'base64">\n') + 9:text.index(b"\n     </STREAM>")].split(b"\n")
    assert len(stream) == 3 and {len(line) for line in stream[:-1]} == {4 * 2**18}
    back = parse(path, verify="exception").get_first_table().array
    for name in t.colnames:
        expected, got = np.ma.asarray(t[name]), back[name]
        nulls = np.ma.getmaskarray(expected) | (np.isnan(expected.data) if expected.dtype.kind == "f" else False)
        assert np.array_equal(np.ma.getmaskarray(got), nulls), name  # astropy reads a NaN as a null
        keep = ~nulls
        e, g = np.asarray(expected)[keep], np.asarray(got)[keep]
        assert np.array_equal(e, g.astype(e.dtype) if e.dtype.kind != "U" else g.astype(str)), name
        assert got.dtype.kind == ("i" if expected.dtype.kind == "u" else expected.dtype.kind), name


@pytest.mark.parametrize("which", ["fixture", "catalogue"])
def test_parquet_cells_nulls_units_and_descriptions_read_back_by_pyarrow_pandas_and_astropy(table, tmp_path, which):
    """Every cell, null, unit, description and the meta of the Parquet file, read by pyarrow, pandas and
    astropy: the file as pandas/polars users and astropy users see it."""
    import pandas as pd
    import pyarrow.parquet as pq

    t = table if which == "fixture" else _catalogue_like(3000)
    if which == "catalogue":
        t["flux_ap2"].description = "aperture sum minus local background"
        t["flags"] = MaskedColumn(np.arange(len(t), dtype=np.int32) % 5, mask=np.arange(len(t)) % 13 == 0)
        t.meta.update({"zp": 24.5, "band": "G", "apertures": {"ap2": 6.98}})
    path = catalog_files.write(t, tmp_path / "catalog.parquet", "parquet")
    arrow = pq.read_table(path)
    frame = pd.read_parquet(path)
    back = Table.read(path, format="parquet")
    assert arrow.column_names == list(frame.columns) == back.colnames == t.colnames
    for name in t.colnames:
        col = t[name]
        mask = np.ma.getmaskarray(col)
        values = np.asarray(col)
        field = arrow.schema.field(name)
        expected_meta = {k: str(v) for k, v in (("unit", col.unit), ("description", col.description)) if v}
        assert {k.decode(): v.decode() for k, v in (field.metadata or {}).items()} == expected_meta, name
        got = arrow.column(name).to_pylist()
        want = [None if m else v for v, m in zip(values.tolist(), mask.tolist())]
        assert [repr(v) for v in got] == [repr(v) for v in want], name  # every cell, NaN and nulls included
        assert frame[name].isna().sum() == mask.sum() + (np.isnan(values).sum() if values.dtype.kind == "f" else 0), name
        b = back[name]
        assert b.unit == col.unit and b.description == col.description, name
        if mask.any() and values.dtype.kind == "i":  # astropy reads an integer column with nulls as float, NaN there
            assert b.dtype.kind == "f" and np.array_equal(np.ma.getmaskarray(b) | np.isnan(np.asarray(b)), mask), name
            assert np.array_equal(np.asarray(b)[~mask], values[~mask]), name
        else:
            assert b.dtype == col.dtype and np.array_equal(np.ma.getmaskarray(b), mask), name
            assert np.array_equal(np.asarray(b), values, equal_nan=values.dtype.kind == "f"), name
    assert back.meta == t.meta
