"""Photometry: apertures with a local annulus (:mod:`.aperture`), ePSF and PSF fits (:mod:`.psf`).

:func:`aperture_set` decides the run's apertures and the one that calibrates;
both stages take that :class:`~rpp_core.products.ApertureSet`. The formulas,
the flag bits and the measurements behind the choices made here are in
docs/photometry.md.
"""

from .aperture import aperture_fwhm, aperture_labels, aperture_photometry, aperture_set
from .psf import PsfInfo, build_epsf, psf_photometry, select_psf_stars

__all__ = [
    "PsfInfo",
    "aperture_fwhm",
    "aperture_labels",
    "aperture_photometry",
    "aperture_set",
    "build_epsf",
    "psf_photometry",
    "select_psf_stars",
]
