"""The catalogue as files: CSV, ECSV, VOTable, FITS and Parquet, fast for big tables.

astropy's ASCII and VOTable writers format every cell in Python: 2-7 s (CSV,
ECSV) and 11-26 s (VOTable) for 20,000 rows x 68 columns
(docs/performance-profile.md). Here the cells go through C instead, and the
files stay what astropy and TOPCAT read, units included:

=======  ==============================================================================
CSV      header line + body by ``pyarrow.csv`` (booleans as ``True``/``False``, masked = empty);
         float columns at the precision of :data:`TEXT_PRECISION`
ECSV     astropy's own ECSV header (YAML: units, descriptions, meta, each float column's
         ``format``; ``delimiter: ','``) written for a zero-row copy, then the same Arrow CSV body
VOTable  1.4, BINARY2 serialisation: the XML header written here, the rows packed as one
         big-endian numpy record array, base64-encoded (``boolean`` as ``T``/``F``,
         text as fixed-width ``char``, or ``unicodeChar`` when it is not ASCII); scalar
         meta as ``INFO`` elements
FITS     astropy (a binary table: already vectorised); text that is not ASCII, in the
         meta or in a column, is written with backslash escapes (FITS text is ASCII)
Parquet  ``pyarrow.parquet`` (zstd), columns and schema metadata as astropy writes
         them (``Table.read`` restores units, meta, masks), and per field ``unit`` and
         ``description`` for pandas/polars users
=======  ==============================================================================

Every file is written atomically (:mod:`rpp_core.fsio`).
"""

from __future__ import annotations

import binascii
import errno
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from astropy.table import Table

from .fsio import atomic_path

#: format -> file name in the run folder
FILE_NAMES = {"csv": "catalog.csv", "ecsv": "catalog.ecsv", "votable": "catalog.vot", "fits": "catalog.fits",
              "parquet": "catalog.parquet"}


def write(table: Table, path: Path, fmt: str, body: "CsvBody | None" = None) -> Path:
    """Write ``table`` as ``fmt`` (a key of :data:`FILE_NAMES`) to ``path``, atomically.

    ``body``: the table's CSV rows already formatted (:class:`CsvBody`), shared by CSV and ECSV.
    """
    with atomic_path(path) as tmp:
        if fmt in ("csv", "ecsv"):
            (write_csv if fmt == "csv" else write_ecsv)(table, tmp, body)
        else:
            {"votable": write_votable, "fits": write_fits, "parquet": write_parquet}[fmt](table, tmp)
    return Path(path)


# ---------------------------------------------------------------- text precision of CSV and ECSV

#: The precision of float columns in the text formats (CSV, ECSV), as SExtractor and astropy users give
#: columns a format; FITS, Parquet and VOTable keep full float64. A column with a unit is matched by its
#: unit; one without a unit by its whole name (a regular expression). Rows: (quantity, units, names,
#: decimal places). Every other float column: :data:`SIGNIFICANT_DIGITS` significant digits.
#: docs/catalogue.md shows this table.
TEXT_PRECISION = (
    ("pixel position", ("pix",), r"x|y|psf_x|psf_y", 4),
    ("sky coordinate", ("deg",), r"ra|dec", 8),
    ("magnitude, its error, zero point, colour, residual", ("mag",),
     r"(\w+_)?mag(err)?(_\w+)?|zp|zp_err|ref_color|calib_residual|gaia_bp_rp|simbad_[A-Za-z]|skybot_mv"
     r"|vsx_(max|min)|milliquas_[br]mag", 5),
    ("separation", ("arcsec",), r"\w+_arcsec|skybot_errpos", 4),
    ("time, period", ("d",), r"(\w+_)?(mjd|jd)|vsx_period", 8),
)
SIGNIFICANT_DIGITS = 7
_TEXT_NAMES = [(re.compile(names), places) for _, _, names, places in TEXT_PRECISION]


def text_places(name: str, unit) -> int | None:
    """Decimal places of a float column in CSV/ECSV (:data:`TEXT_PRECISION`); None: 7 significant digits."""
    unit = "" if unit is None else str(unit)
    if unit:
        # astropy spells AB and ST magnitudes mag(AB), mag(ST)
        unit = "mag" if unit.startswith("mag(") else unit
        return next((places for _, units, _, places in TEXT_PRECISION if unit in units), None)
    return next((places for pattern, places in _TEXT_NAMES if pattern.fullmatch(name)), None)


def text_format(name: str, unit) -> str:
    """The column's precision as a format (``.4f``, ``.7g``): what the ECSV header records."""
    places = text_places(name, unit)
    return f".{SIGNIFICANT_DIGITS}g" if places is None else f".{places}f"


def text_values(values: np.ndarray, places: int | None) -> np.ndarray:
    """Float values rounded to ``places`` decimal places (None: 7 significant digits), as float64 for Arrow to print.

    Each result is the double nearest to the decimal that ``format(v, ".4f")``
    (``".6e"``) writes, ties to even, so its shortest repr (what Arrow prints) is
    that decimal without trailing zeros; NaN, infinities and zero unchanged,
    -0 written as 0. Exact and vectorised: numpy's own ``round`` multiplies by
    ``10**places`` and so rounds a near-tie the wrong way now and then (here the
    exact product decides the ties); values beyond the exact numpy paths (below
    1e-16 or from 9e18 on, or past 2**52 units of the last place) are formatted
    by Python, one by one. Few temporary arrays: each new one of a big column
    costs page faults (glibc maps and unmaps them), more than the arithmetic.
    """
    x = np.asarray(values, dtype=np.float64)
    a = np.abs(x)
    usable = np.isfinite(a)
    usable &= a > 0
    with np.errstate(all="ignore"):
        if places is None:
            # the decimal exponent: where log10 rounds across a power of ten, the value is within a few ulp
            # of it, and rounds to that power at 7 digits as at 8 or 6: the result is the same
            e = np.log10(a)
            np.floor(e, out=e)
            d = np.subtract(SIGNIFICANT_DIGITS - 1, e)  # decimal places
            decimal = usable & (d >= 0) & (d <= 22)
            index = d.astype(np.int64)
            np.clip(index, 0, 22, out=index)
            scale = _POW10_EXACT.take(index, out=e)
        else:
            scale = 10.0 ** places if places <= 22 else np.inf
            decimal = usable
        p = a * scale
        decimal = decimal & (p < 2.0 ** 52)
        n = np.rint(p)
        np.subtract(p, n, out=p)  # what rint took off: +-0.5 on a tie of the rounded product
        np.abs(p, out=p)
        tie = decimal & (p == 0.5)
        if tie.any():  # the exact product says which way a tie of the rounded one goes
            n[tie] = _settle_ties(a[tie], scale if places is not None else scale[tie], n[tie])
        np.divide(n, scale, out=n)  # an exact integer over an exact power of ten: the double nearest the decimal
    out = n
    np.copyto(out, a, where=~decimal)
    if places is None:
        whole = usable & (d < 0) & (a < 9e18)
        if whole.any():
            out[whole] = _round_to_tens(a[whole], (-d[whole]).astype(np.int64))
            decimal |= whole
    rest = usable & ~decimal
    if rest.any():
        spec = f".{SIGNIFICANT_DIGITS - 1}e" if places is None else f".{places}f"
        out[rest] = np.abs([float(format(v, spec)) for v in x[rest].tolist()])
    np.copysign(out, x, out=out)
    out += 0.0  # -0.0 (a small negative rounded to zero) written as 0
    return out


#: 10**k for k = 0..22, each exact
_POW10_EXACT = np.array([10.0 ** k for k in range(23)])


_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitter


def _settle_ties(a: np.ndarray, scale, n: np.ndarray) -> np.ndarray:
    """``n = rint(a * scale)`` where the rounded product was a tie: moved by one where the exact product is past it."""
    p = a * scale
    # the exact a * scale minus p: Dekker's two-product (numpy has no fused multiply-add)
    c = _SPLIT * a
    ah = c - (c - a)
    c = _SPLIT * scale
    sh = c - (c - scale)
    al, sl = a - ah, scale - sh
    err = ((ah * sh - p) + ah * sl + al * sh) + al * sl
    return n + ((p > n) & (err > 0)) - ((p < n) & (err < 0))


def _round_to_tens(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Positive ``a`` (1 <= a < 9e18) to a multiple of ``10**k`` (k >= 1), ties to even, in integers."""
    whole = np.floor(a)
    frac = a - whole  # exact
    step = 10 ** k
    q, r = np.divmod(whole.astype(np.int64), step)
    half = step // 2
    up = (r > half) | ((r == half) & ((frac > 0) | (q % 2 == 1)))
    return ((q + up) * step).astype(np.float64)


# ---------------------------------------------------------------- CSV and ECSV

def _arrow_array(values: np.ndarray, mask: np.ndarray | None, arrow_type=None):
    """An Arrow array over a numpy column, built from buffers.

    ``pyarrow.array`` would import pandas on first use (0.5-1 s) to ask whether
    the column is a pandas object; buffers need no such question, and numbers
    are not even copied.
    """
    import pyarrow as pa

    validity = None
    if mask is not None and mask.any():
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    if values.dtype.kind in "US":
        offsets, data = _utf8(values)
        return pa.Array.from_buffers(pa.large_string() if arrow_type is None else arrow_type, len(values),
                                     [validity, pa.py_buffer(offsets if arrow_type is None else offsets.astype(np.int32)),
                                      pa.py_buffer(data)])
    if values.dtype.kind == "b":
        return pa.Array.from_buffers(pa.bool_(), len(values),
                                     [validity, pa.py_buffer(np.packbits(values, bitorder="little"))])
    values = np.ascontiguousarray(values, values.dtype.newbyteorder("="))
    return pa.Array.from_buffers(arrow_type or pa.from_numpy_dtype(values.dtype), len(values),
                                 [validity, pa.py_buffer(values)])


def _ascii_codes(values: np.ndarray) -> np.ndarray | None:
    """The code points of a native-order unicode column as a (rows, width) array, when all are ASCII; else None."""
    if values.dtype.kind != "U" or not values.dtype.isnative:
        return None
    codes = np.ascontiguousarray(values).view(np.uint32).reshape(len(values), values.dtype.itemsize // 4)
    return codes if codes.max(initial=0) < 128 else None


def _utf8(values: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(offsets, bytes) of a text column in UTF-8, Arrow's layout: in numpy for ASCII text (``np.char.encode``
    calls ``str.encode`` per cell: 5 ms per 20,000), cell by cell otherwise."""
    codes = _ascii_codes(values)
    if codes is not None:
        lengths = np.char.str_len(values)  # trailing NULs are padding, as .tolist() strips them
        data = codes[np.arange(codes.shape[1]) < lengths[:, None]].astype(np.uint8).tobytes()
    else:
        items = (np.char.encode(values, "utf-8") if values.dtype.kind == "U" else values).tolist()
        lengths, data = np.fromiter(map(len, items), np.int64, len(items)), b"".join(items)
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, data


def _column(table: Table, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    col = table[name]
    values = np.asarray(col)
    if values.ndim > 1:
        raise ValueError(f"column {name!r} is {values.ndim}-D: the catalogue writers take scalar columns")
    mask = np.ma.getmaskarray(col) if getattr(col, "mask", None) is not None else None
    return values, mask


def _arrow_table(table: Table):
    """The columns as an Arrow table for the CSV body: booleans spelled as astropy does, masked cells empty,
    floats at their text precision (:func:`text_values`)."""
    import pyarrow as pa

    arrays = []
    for name in table.colnames:
        values, mask = _column(table, name)
        if values.dtype.kind == "b":
            values = np.where(values, "True", "False")
        elif values.dtype.kind == "f":
            values = text_values(values, text_places(name, table[name].unit))
        arrays.append(_arrow_array(values, mask))
    return pa.Table.from_arrays(arrays, names=list(table.colnames))


class CsvBody:
    """The rows of a table as CSV bytes (no header line), formatted on first use and then kept."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._rows = None

    def rows(self):
        """The rows as Arrow's buffer (a bytes-like object: written as it is, not copied into a bytes)."""
        if self._rows is None:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            sink = pa.BufferOutputStream()
            pacsv.write_csv(_arrow_table(self.table), sink, write_options=pacsv.WriteOptions(include_header=False))
            self._rows = sink.getvalue()
        return self._rows

    def __bytes__(self) -> bytes:
        return self.rows().to_pybytes()


def write_csv(table: Table, path: Path, body: CsvBody | None = None) -> None:
    """Plain CSV: one header line of column names, then the rows (no units: see the ECSV)."""
    with open(path, "wb") as fh:
        fh.write((",".join(_csv_field(n) for n in table.colnames) + "\n").encode("utf-8"))
        fh.write((body or CsvBody(table)).rows())


def _csv_field(text: str) -> str:
    return f'"{text}"' if any(c in text for c in ',"\n ') else text


def write_ecsv(table: Table, path: Path, body: CsvBody | None = None) -> None:
    """ECSV 1.0 with comma delimiter: astropy's header (units, types, meta), the Arrow body."""
    head = io.StringIO()
    empty = table[:0]
    for name in empty.colnames:  # the body's precision, so astropy and TOPCAT show the digits written
        if empty[name].dtype.kind == "f":
            empty[name].info.format = text_format(name, empty[name].unit)
    empty.write(head, format="ascii.ecsv", delimiter=",")
    with open(path, "wb") as fh:
        fh.write(head.getvalue().encode("utf-8"))
        fh.write((body or CsvBody(table)).rows())


# ---------------------------------------------------------------- VOTable (BINARY2)

_VOTABLE_HEAD = ('<?xml version="1.0" encoding="utf-8"?>\n'
                 '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
                 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                 'xsi:schemaLocation="http://www.ivoa.net/xml/VOTable/v1.3 '
                 'http://www.ivoa.net/xml/VOTable/VOTable-1.4.xsd">\n'
                 ' <RESOURCE type="results">\n  <TABLE>\n')
_VOTABLE_TAIL = '\n     </STREAM>\n    </BINARY2>\n   </DATA>\n  </TABLE>\n </RESOURCE>\n</VOTABLE>\n'
#: numpy kind/size -> (VOTable datatype, big-endian numpy type)
_VOTABLE_NUMBERS = {("f", 8): ("double", ">f8"), ("f", 4): ("float", ">f4"), ("i", 8): ("long", ">i8"),
                    ("i", 4): ("int", ">i4"), ("i", 2): ("short", ">i2"), ("i", 1): ("short", ">i2"),
                    ("u", 1): ("unsignedByte", "u1"), ("u", 2): ("int", ">i4"), ("u", 4): ("long", ">i8")}


def _votable_column(name: str, values: np.ndarray, mask: np.ndarray | None) -> tuple[str, str, np.ndarray, np.ndarray | None]:
    """(FIELD attributes, numpy type, big-endian values, null mask or None) of one column (see :func:`_column`)."""
    kind = values.dtype.kind
    if kind == "b":
        return 'datatype="boolean"', "S1", np.where(values, b"T", b"F"), mask
    if kind in "US":
        text = values.astype(str) if kind == "U" else np.char.decode(values, "utf-8", "replace")
        width = max(1, int(np.char.str_len(text).max())) if len(text) else 1
        if _ascii_codes(text) is not None:  # a cast, not str.encode per cell
            return f'datatype="char" arraysize="{width}"', f"S{width}", text.astype(f"S{width}"), mask
        try:
            data = np.char.encode(text, "ascii")
            return f'datatype="char" arraysize="{width}"', f"S{width}", data, mask
        except UnicodeEncodeError:
            data = np.array([s.encode("utf-16-be").ljust(2 * width, b"\0") for s in text.tolist()], f"S{2 * width}")
            return f'datatype="unicodeChar" arraysize="{width}"', f"S{2 * width}", data, mask
    key = (kind, values.dtype.itemsize)
    if key not in _VOTABLE_NUMBERS:
        raise ValueError(f"column {name!r}: no VOTable type for {values.dtype}")
    datatype, np_type = _VOTABLE_NUMBERS[key]
    # native order: the big-endian record array's field takes it as it is (numpy swaps the bytes as it copies)
    return f'datatype="{datatype}"', np_type, values, mask


def _info_value(value: Any) -> str | None:
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return None


def write_votable(table: Table, path: Path) -> None:
    """VOTable 1.4 with BINARY2 rows, for TOPCAT/Aladin and astropy (see the module docstring)."""
    fields, types, columns, masks = [], [], [], []
    for name in table.colnames:
        col = table[name]
        attrs, np_type, values, mask = _votable_column(name, *_column(table, name))
        unit = f" unit={quoteattr(str(col.unit))}" if col.unit is not None else ""
        desc = f"\n    <DESCRIPTION>{_xml_text(col.description)}</DESCRIPTION>\n   " if col.description else ""
        fields.append(f'   <FIELD name={quoteattr(name)} {attrs}{unit}{">" + desc + "</FIELD>" if desc else "/>"}')
        types.append(np_type)
        columns.append(values)
        masks.append(mask)
    n_flags = (len(columns) + 7) // 8
    rows = np.zeros(len(table), dtype=[("_nulls", "u1", (n_flags,))] + [(f"c{i}", t) for i, t in enumerate(types)])
    flags = np.zeros((len(table), n_flags * 8), bool)
    for i, (values, mask) in enumerate(zip(columns, masks)):
        rows[f"c{i}"] = values
        if mask is not None:
            flags[:, i] = mask  # BINARY2: the first column's flag is the most significant bit of the first byte
    rows["_nulls"] = np.packbits(flags, axis=1, bitorder="big")
    infos = [f"   <INFO name={quoteattr(str(k))} value={quoteattr(v)}/>" for k, val in table.meta.items()
             if (v := _info_value(val)) is not None]
    head = _VOTABLE_HEAD + "".join(line + "\n" for line in infos + fields)
    head += '   <DATA>\n    <BINARY2>\n     <STREAM encoding="base64">\n'
    with open(path, "wb") as fh:
        fh.write(head.encode("utf-8"))
        # base64 in lines of 1 MiB (encodebytes' 76-character lines cost a Python loop), each line encoded
        # from a view of the rows and written as it comes: a bytes copy of the rows and a joined copy of the
        # text were 18 ms of the 60-80 ms this writer takes on 20,000 rows x 69 columns (14 MB of fresh pages)
        data = memoryview(rows.view(np.uint8).reshape(-1))
        step = 3 * 2**18
        for i in range(0, len(data), step):
            fh.write(binascii.b2a_base64(data[i:i + step], newline=i + step < len(data)))
        fh.write(_VOTABLE_TAIL.encode("utf-8"))


def _xml_text(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(str(text))


# ---------------------------------------------------------------- FITS and Parquet

def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _fits_meta(meta: dict) -> dict:
    """Meta a FITS header can hold: scalars only, text in ASCII (others backslash-escaped)."""
    out = {}
    for key, value in meta.items():
        if isinstance(value, str):
            out[key] = _ascii(value)
        elif isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            out[key] = value
    return out


def write_fits(table: Table, path: Path) -> None:
    """A FITS binary table (astropy): units in TUNITn, meta as header cards (HIERARCH for long keys)."""
    from astropy.io.fits.verify import VerifyWarning

    flat = table.copy(copy_data=False)
    flat.meta = _fits_meta(table.meta)
    for name in flat.colnames:  # FITS text columns are ASCII: other letters backslash-escaped, as in the meta
        values = np.asarray(flat[name])
        if values.dtype.kind == "U" and _ascii_codes(values) is None and not all(v.isascii() for v in values.tolist()):
            flat[name] = np.array([_ascii(v) for v in values.tolist()])
    with warnings.catch_warnings():
        # long meta keys become HIERARCH cards: expected, not worth a warning
        warnings.simplefilter("ignore", VerifyWarning)
        try:
            if not _write_fits_rows(flat, path):
                flat.write(path, format="fits", overwrite=True)
        except OSError as exc:
            # a full disk reaches astropy as numpy's "N requested and M written" (no errno); astropy checks the
            # free space and says so in the text only: given its errno back, the run says "disk full" (exit 8)
            if exc.errno is None and str(exc).startswith("Not enough space on disk"):
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({exc})", str(path)) from exc
            raise


#: FITS binary-table formats :func:`_write_fits_rows` packs (one value per cell), as numpy types
_FITS_TYPES = {"D": ">f8", "E": ">f4", "K": ">i8", "J": ">i4", "I": ">i2", "L": "S1"}


def _write_fits_rows(flat: Table, path: Path) -> bool:
    """The FITS file astropy writes, its rows packed here in numpy; False (nothing written) where not covered.

    astropy spends 50-60 ms of 75 on 20,000 rows x 69 columns in its per-column
    objects and copies; here its header comes from a zero-row copy (columns,
    units, TNULL, meta cards) and the rows are one big-endian record array,
    filled as astropy fills them (masked floats NaN, masked integers TNULL,
    masked text empty). Columns of other kinds (unsigned, scaled, vectors,
    masked booleans, custom fill values) are left to astropy.
    tests/test_results_formats.py holds the bytes to astropy's.
    """
    from astropy.io import fits
    from astropy.io.fits.convenience import table_to_hdu

    try:  # what astropy's writer does first: column descriptions and mixins as COMMENT cards
        from astropy.io.fits.connect import _encode_mixins
    except ImportError:  # pragma: no cover - another astropy: its own writer
        return False
    header = table_to_hdu(_encode_mixins(flat[:0]), character_as_bytes=True).header
    fields, columns = [], []
    for i, name in enumerate(flat.colnames, start=1):
        form = str(header.get(f"TFORM{i}", ""))
        if header.get(f"TTYPE{i}") != name or f"TZERO{i}" in header or f"TSCAL{i}" in header:
            return False
        values, mask = _column(flat, name)
        masked = mask is not None and bool(mask.any())
        col = flat[name]
        if masked and (values.dtype.kind not in "fiUS"
                       or np.any(col.fill_value != np.ma.default_fill_value(values.dtype))):
            return False
        if form.endswith("A") and values.dtype.kind in "US":
            np_type = f"S{int(form[:-1] or 1)}"
            if values.dtype.kind == "U" and _ascii_codes(values) is None:
                return False
            if masked:
                values = np.where(mask, "", values)
        elif form in _FITS_TYPES and values.dtype.kind in ("b" if form == "L" else "fi"):
            np_type = _FITS_TYPES[form]
            if form == "L":
                values = np.where(values, b"T", b"F")
            elif masked and values.dtype.kind == "f":
                values = np.where(mask, np.nan, values)
            elif masked:
                if f"TNULL{i}" not in header:
                    return False
                values = np.where(mask, header[f"TNULL{i}"], values)
        else:
            return False
        fields.append((f"c{i}", np_type))
        columns.append(values)
    rows = np.empty(len(flat), dtype=fields)
    if rows.dtype.itemsize != header["NAXIS1"]:
        return False
    for (field, _), values in zip(fields, columns):
        rows[field] = values
    header["NAXIS2"] = len(flat)
    data = rows.view(np.uint8).reshape(-1)  # written from the array: a bytes copy was 10 MB of fresh pages per 20,000 rows
    with open(path, "wb") as fh:
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        fh.write(memoryview(data))
        fh.write(b"\0" * (-len(data) % 2880))
    return True


def write_parquet(table: Table, path: Path) -> None:
    """Parquet (zstd) with astropy's schema metadata and per-field ``unit``/``description``.

    The schema metadata is astropy's (``table_meta_yaml``: units, descriptions,
    meta; ``table::len::NAME``: text widths), so ``Table.read`` restores them.
    Masked cells are Parquet nulls, as pandas and polars expect (astropy's own
    writer adds a ``NAME.mask`` column instead; its reader turns an integer
    column with nulls into a masked float column). Written without astropy's
    Parquet writer, which goes through ``pyarrow.array`` and so imports pandas
    (0.5-1 s).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import meta as table_meta
    from astropy.table import serialize
    from astropy.utils.data_info import serialize_context_as

    with serialize_context_as("parquet"):  # a zero-row copy: masks are nulls here, not NAME.mask columns
        encoded = serialize.represent_mixins_as_columns(table[:0])
    metadata = {"table_meta_yaml": "\n".join(table_meta.get_yaml_from_table(encoded))}
    fields, arrays = [], []
    for name in encoded.colnames:
        values, mask = _column(table, name)
        if values.dtype.kind in "US":
            metadata[f"table::len::{name}"] = str(values.dtype.itemsize // (4 if values.dtype.kind == "U" else 1))
        array = _arrow_array(values, mask, arrow_type=pa.string() if values.dtype.kind in "US" else None)
        col, meta = table[name], {}
        if col.unit is not None:
            meta["unit"] = str(col.unit)
        if col.description:
            meta["description"] = str(col.description)
        fields.append(pa.field(name, array.type, metadata=meta or None))
        arrays.append(array)
    schema = pa.schema(fields, metadata=metadata)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path, compression="zstd")
