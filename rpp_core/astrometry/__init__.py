"""Astrometry: decide whether a frame needs a WCS, plate-solve it, refine it.

Solvers
-------
* astrometry.net ``solve-field`` (default, offline, :mod:`.solve_field`). It is
  fed our own source list as an xylist FITS table (1-based ``X``, ``Y`` and
  ``FLUX``), with the index folders written into a backend config file
  (``--config``, :mod:`.index`). Scale and position hints come from
  :class:`~rpp_core.image.ObservationMeta`; a hinted solve that fails is
  retried blind. The solver runs as a subprocess in its own process group
  (:mod:`.process`), polled every 0.2 s, killed as a group on cancel or timeout.
* ``siril-cli`` as second solver (:mod:`.siril`), only when the installed Siril
  can plate-solve from scripts (``platesolve`` exists from Siril 1.2; Debian 12
  ships 1.0.6, which cannot).

Refinement (:mod:`.refine`) fits a TAN (and, when the residuals call for it,
TAN-SIP) WCS to detections matched with a reference catalogue; a rough
starting WCS is first brought close with stdpipe's quad-hash matcher. The
better of the old and the new WCS is kept. :mod:`.check` decides whether a
header WCS is good enough; :mod:`.wcsfile` writes WCS headers and files.

Conventions: pixel ``x``, ``y`` are 0-based (the solver files are 1-based,
converted here); sky coordinates in degrees (ICRS); residuals in arcsec;
pixel scale in arcsec/px.
"""

from .check import needs_solving, wcs_sky_offsets
from .index import SYSTEM_INDEX_DIR, build_index, index_dirs_for, index_files, scales_for_field, write_backend_config
from .matching import pixel_scale_arcsec
from .process import run_solver_process
from .refine import refine
from .result import SolveResult
from .siril import SirilInfo, siril_info
from .solve import find_wcs, solve
from .wcsfile import header_with_wcs, pixel_to_icrs, wcs_header, wcs_keywords, write_wcs_file

__all__ = [
    "SYSTEM_INDEX_DIR", "SirilInfo", "SolveResult", "build_index", "find_wcs", "header_with_wcs", "index_dirs_for", "index_files",
    "needs_solving", "pixel_scale_arcsec", "pixel_to_icrs", "refine", "run_solver_process", "scales_for_field", "siril_info", "solve",
    "wcs_header", "wcs_keywords", "wcs_sky_offsets", "write_backend_config", "write_wcs_file",
]
