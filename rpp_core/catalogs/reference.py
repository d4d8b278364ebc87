"""The reference table: what calibration and astrometry read, whoever supplied the stars.

==========  =====  ========================================================
column      unit   meaning
==========  =====  ========================================================
ref_id      --     identifier in the source (Gaia source_id, a file's id column, or the row number)
ra, dec     deg    ICRS position (at the observation epoch for Gaia)
mag         mag    magnitude in ``meta['band']`` (system in ``meta['system']``)
mag_err     mag    its error
color       mag    colour index, NaN if unknown
==========  =====  ========================================================

``meta``: ``band``, ``system`` (``Vega``, ``AB`` or ``as in file``), ``source``
(where the stars came from), plus what the supplier adds. Local files
(:mod:`.local`) and Gaia DR3 (:mod:`.gaia`) both build it with
:func:`reference_table`.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.table import Table

COLUMNS = ("ref_id", "ra", "dec", "mag", "mag_err", "color")


def as_float(values) -> np.ndarray:
    """A float array with masked entries as NaN."""
    return np.asarray(np.ma.filled(np.ma.asarray(values).astype(float), np.nan), dtype=float)


def reference_table(ra, dec, mag, *, mag_err=None, color=None, ref_id=None, band: str, system: str, source: str,
                    extra: dict | None = None, drop_incomplete: bool = True, **meta) -> Table:
    """The reference table of :data:`COLUMNS` (see the module docstring) from per-star values.

    ``mag_err`` and ``color`` default to NaN, ``ref_id`` to the 1-based row
    number (as text). ``extra`` columns (e.g. the raw ``gaia_*`` ones) follow the
    standard ones. With ``drop_incomplete`` rows without a finite position and
    magnitude are dropped; Gaia keeps them so its calibrator cuts can count them.
    """
    ra, dec, mag = as_float(ra), as_float(dec), as_float(mag)
    n = len(ra)
    out = Table()
    out["ref_id"] = np.arange(1, n + 1).astype(str) if ref_id is None else np.asarray(ref_id)
    out["ra"], out["dec"], out["mag"] = ra, dec, mag
    out["mag_err"] = np.full(n, np.nan) if mag_err is None else as_float(mag_err)
    out["color"] = np.full(n, np.nan) if color is None else as_float(color)
    for name, values in (extra or {}).items():
        out[name] = values
    out["ra"].unit = out["dec"].unit = u.deg
    out["mag"].unit = out["mag_err"].unit = out["color"].unit = u.mag
    out.meta.update({"band": band, "system": system, "source": source, **meta})
    if drop_incomplete:
        out = out[np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)]
    return out
