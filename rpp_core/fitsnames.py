"""The one rule for which file names are FITS frames, and a frame's name without its extensions.

Kept free of astropy so the app's file browser can use it without importing the pipeline.
"""

from __future__ import annotations

#: extensions of a FITS frame, compressed or not (lower case)
FITS_EXTENSIONS = (".fits", ".fit", ".fts")
COMPRESSION_EXTENSIONS = (".gz", ".fz", ".bz2")
FITS_SUFFIXES = tuple(e + c for e in FITS_EXTENSIONS for c in ("", *COMPRESSION_EXTENSIONS)) + (".fz",)


def is_fits_name(name: str) -> bool:
    """True for ``x.fits``, ``x.fit.gz``, ``x.fts.fz``, ``x.fz``...; hidden files (``.x.fits``) are not frames."""
    return name.lower().endswith(FITS_SUFFIXES) and not name.startswith(".")


def frame_stem(name: str) -> str:
    """``"m67.fits.gz"`` -> ``"m67"``: the name without its FITS and compression extensions."""
    low = name.lower()
    for ext in COMPRESSION_EXTENSIONS:
        if low.endswith(ext):
            name, low = name[: -len(ext)], low[: -len(ext)]
            break
    for ext in FITS_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name
