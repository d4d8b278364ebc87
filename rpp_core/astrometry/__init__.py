"""Astrometry: decide whether a frame needs a WCS, plate-solve it, refine it.

Solvers
-------
* astrometry.net ``solve-field`` (default, offline, :mod:`.solve_field`). It is
  fed our own source list as an xylist FITS table (1-based ``X``, ``Y`` and
  ``FLUX``), with the index files of each try written into a backend config
  file (``--config``, :mod:`.index`). The hints (:mod:`.hints`) are all the
  header says, none trusted blindly: a header WCS that failed its check and
  pixel size over focal length each count as one pixel-scale hint, possibly a
  binning factor off, so the hinted solve tries the range covering them. Before
  solve-field starts, the frame is compared with the index files
  (:mod:`.coverage`: quad sizes and sky area read from each file): a try no
  index can serve is not started, and when none is left the error names the
  index that would serve it (a Debian package, or ``rpp index build`` for the
  field, :mod:`.fields`). A hinted solve that fails is retried without the
  pointing when there is a pixel-scale hint. The solver runs as a subprocess in
  its own process group (:mod:`.process`), polled every 0.2 s, killed as a
  group on cancel or timeout.
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
from .coverage import IndexInfo, index_advice, index_infos, read_index_info
from .hints import ScaleHint, SolveHints, solve_hints
from .index import SYSTEM_INDEX_DIR, build_index, index_dirs_for, index_files, scales_for_field, write_backend_config
from .process import run_solver_process
from .refine import refine
from .result import SolveResult
from .siril import SirilInfo, siril_info
from .solve import find_wcs, solve
from .solve_field import SolvePlan, plan_astrometry_net
from .wcsfile import header_with_wcs, pixel_to_icrs, wcs_header, wcs_keywords, write_wcs_file

__all__ = [
    "SYSTEM_INDEX_DIR", "IndexInfo", "ScaleHint", "SirilInfo", "SolveHints", "SolvePlan", "SolveResult", "build_index",
    "find_wcs", "header_with_wcs", "index_advice", "index_dirs_for", "index_files", "index_infos", "needs_solving",
    "pixel_to_icrs", "plan_astrometry_net", "read_index_info", "refine", "run_solver_process",
    "scales_for_field", "siril_info", "solve", "solve_hints", "wcs_header", "wcs_keywords", "wcs_sky_offsets",
    "write_backend_config", "write_wcs_file",
]
