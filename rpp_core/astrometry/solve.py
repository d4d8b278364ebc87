"""Plate solving: astrometry.net first (Siril first with ``solver = siril``), then refinement."""

from __future__ import annotations

import shutil
import time

from astropy.table import Table

from ..errors import AstrometryError
from ..progress import CancelFn, LogFn, ProgressFn
from ..settings import AstrometrySettings
from .hints import SolveHints
from .matching import source_arrays
from .refine import refine
from .result import SolveResult, SolveTrail
from .siril import solve_siril
from .solve_field import solve_astrometry_net


def solve(sources: Table, shape: tuple[int, int], meta, settings: AstrometrySettings,
          cancel: CancelFn | None = None, progress: ProgressFn | None = None, log: LogFn | None = None,
          refcat: Table | None = None, hints: SolveHints | None = None) -> SolveResult:
    """Plate-solve a frame from its detected sources.

    Parameters
    ----------
    sources : astropy.table.Table
        Detections with ``x``, ``y`` (0-based px) and a flux-like column
        (``flux``, ``flux_<aperture>``, ``psf_flux`` or ``peak``).
    shape : (ny, nx)
        Image shape.
    meta : ObservationMeta or None
        ``pixel_scale`` (arcsec/px), ``ra``, ``dec`` (deg) are the hints when
        ``hints`` is not given (the pixel scale then taken as it is).
    settings : AstrometrySettings
    cancel : callable, optional
        Polled every 0.2 s; true kills the solver and raises ``Cancelled``.
    progress : callable(done, total), optional
        Seconds elapsed out of the time limit.
    log : callable(str), optional
        Receives the solver's output lines as they come.
    refcat : Table, optional
        Reference stars (``ra``, ``dec``, ``mag``); with ``settings.refine`` the
        solution is refined against them (:func:`refine`).
    hints : SolveHints, optional
        Every pointing and pixel-scale hint of the frame (:func:`~.hints.solve_hints`);
        the pipeline gives them, so a header scale that may be a binning factor off
        widens the scale range instead of being trusted.

    Raises
    ------
    AstrometryError
        No solver could solve the frame within ``settings.timeout_s``; or, at once,
        no index file can solve it (the message names the index that would).
    Cancelled
        ``cancel()`` became true.
    """
    t0 = time.monotonic()
    log = log or (lambda _line: None)
    if settings.solver == "none":
        raise AstrometryError("plate solving is off ([astrometry] solver = none) but the frame has no usable WCS: "
                              "set solver = astrometry.net")
    x, y, flux = source_arrays(sources)
    if len(x) < 5:
        raise AstrometryError(f"only {len(x)} sources detected: too few to plate-solve (need 5 or more); "
                              "lower [detection] threshold_sigma")
    if hints is None:
        hints = SolveHints.from_meta(meta)
    deadline = t0 + settings.timeout_s
    last = [0.0]

    def tick() -> None:
        if progress is None:
            return
        el = time.monotonic() - t0
        if el - last[0] >= 1.0:
            last[0] = el
            progress(int(el), int(settings.timeout_s))

    solvers = [solve_astrometry_net, solve_siril]
    if settings.solver == "siril":
        solvers.reverse()
    trail = SolveTrail()
    result = None
    for fn in solvers:
        if fn is solve_siril and settings.solver != "siril" and shutil.which(settings.siril_cli) is None:
            continue
        if time.monotonic() >= deadline:
            break
        result = fn(x, y, flux, tuple(shape), hints, settings, deadline, cancel, tick, log, trail)
        if result is not None:
            break
    if result is None:
        el = time.monotonic() - t0
        detail = "; ".join(trail) or "no solver available"
        if trail.runs == 0:
            raise AstrometryError(f"plate solving not started ({el:.1f} s): {detail}. "
                                  f"{trail.advice or 'Install astrometry.net and index files (docs/astrometry.md)'}")
        advice = trail.advice or ("Check the index files cover this field and scale, the pixel-scale hint, "
                                  "or raise [astrometry] timeout_s")
        raise AstrometryError(f"plate solving failed after {el:.1f} s (limit {settings.timeout_s:g} s): {detail}. "
                              f"{advice}")
    if refcat is not None and settings.refine and len(refcat):
        ref = refine(sources, result.wcs, refcat, settings, shape=shape)
        result.log.extend(ref.log)
        if ref.method != "kept original":
            ref.log = result.log
            ref.method = f"{result.method} + {ref.method}"
            result = ref
    result.elapsed_s = time.monotonic() - t0
    if progress:
        progress(int(settings.timeout_s), int(settings.timeout_s))
    return result
