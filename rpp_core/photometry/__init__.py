"""Photometry: apertures with a local annulus (:mod:`.aperture`), ePSF and PSF fits (:mod:`.psf`).

The formulas, the flag bits and the measurements behind the choices made
here are in docs/photometry.md.
"""

from .aperture import aperture_labels, aperture_photometry, aperture_radii, calibration_label
from .psf import PsfInfo, build_epsf, psf_photometry, select_psf_stars

__all__ = [
    "PsfInfo",
    "aperture_labels",
    "aperture_photometry",
    "aperture_radii",
    "build_epsf",
    "calibration_label",
    "psf_photometry",
    "select_psf_stars",
]
