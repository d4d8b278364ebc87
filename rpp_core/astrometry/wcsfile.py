"""WCS headers, files and sky positions: the original cards for the log, the solved WCS into a header or a ``.wcs`` file."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..fsio import atomic_path


_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|"
    r"LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|MJDREF|WCSNAME|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d|A_DMAX|B_DMAX|"
    r"PLTRA[HMS]|PLTDEC(SN|D|M|S)|PLTSCALE|[XY]PIXELSZ|PPO\d+|AMD[XY]\d+|CNPIX\d|DSSVERS)$")


def wcs_keywords(header: fits.Header) -> list[str]:
    """The original WCS cards of a header (FITS WCS, SIP/TPV and DSS plate solution), one string each, for the log."""
    return [str(card).rstrip() for card in header.cards if _WCS_KEY.match(card.keyword or "")]


def wcs_header(wcs: WCS, shape: tuple[int, int] | None = None) -> fits.Header:
    """WCS as header cards (SIP kept), with IMAGEW/IMAGEH like astrometry.net's when the shape is given."""
    hdr = wcs.to_header(relax=True)
    if shape is not None:
        hdr["IMAGEW"] = (int(shape[1]), "image width, px")
        hdr["IMAGEH"] = (int(shape[0]), "image height, px")
    return hdr


def header_with_wcs(header: fits.Header, wcs: WCS) -> fits.Header:
    """Copy of ``header`` whose WCS cards (incl. SIP/TPV and DSS plate keywords) are replaced by ``wcs``."""
    out = header.copy()
    for key in {card.keyword for card in header.cards if _WCS_KEY.match(card.keyword or "")}:
        del out[key]
    out.update(wcs_header(wcs))
    return out


def write_wcs_file(wcs: WCS, shape: tuple[int, int], path: str | os.PathLike) -> Path:
    """Write a header-only FITS file holding the WCS, like astrometry.net's ``.wcs``.

    ``shape`` is the image ``(ny, nx)``. Written atomically.
    """
    path = Path(path)
    hdu = fits.PrimaryHDU()
    hdu.header.update(wcs_header(wcs, shape))
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True)
    return path


def read_wcs_header(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, relax=True)


def pixel_to_icrs(wcs: WCS, x, y) -> tuple[np.ndarray, np.ndarray]:
    """ICRS RA/Dec (deg) of 0-based pixels, whatever the WCS frame (galactic mosaics too)."""
    from astropy.wcs.utils import pixel_to_skycoord

    c = pixel_to_skycoord(np.asarray(x, float), np.asarray(y, float), wcs, origin=0, mode="all").icrs
    return c.ra.deg, c.dec.deg
