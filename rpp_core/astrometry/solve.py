"""The frame's WCS: the header's when it checks out (refined), else plate-solved: astrometry.net first (Siril first with ``solver = siril``)."""

from __future__ import annotations

import shutil
import time

from astropy.table import Table

from ..errors import AstrometryError
from ..products import WcsSolution
from ..progress import CancelFn, LogFn, ProgressFn
from ..settings import AstrometrySettings
from .check import needs_solving
from .hints import SolveHints, solve_hints
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


def find_wcs(frame, meta, sources: Table, settings: AstrometrySettings, refcat: Table | None = None,
             cancel: CancelFn | None = None, progress: ProgressFn | None = None,
             log: LogFn | None = None) -> WcsSolution:
    """The frame's WCS: the header's when :func:`needs_solving` accepts it (refined against
    ``refcat`` when ``settings.refine``), else a plate solution.

    Parameters as :func:`solve`; ``frame`` gives ``data``, ``header``, ``wcs``
    and ``wcs_status``. Raises :class:`AstrometryError` when solving was needed
    and failed, :class:`~rpp_core.errors.Cancelled` on cancel.
    """
    log = log or (lambda _line: None)
    header_wcs = frame.wcs if frame.wcs_status == "ok" else None
    need, why = needs_solving(frame, meta, settings, refcat=refcat, sources=sources)
    log(f"plate solving {'needed' if need else 'not needed'}: {why}")
    if need:
        # every header hint counts, none is trusted: the WCS scale may be the unbinned camera's
        res = solve(sources, frame.data.shape, meta, settings, cancel=cancel, progress=progress, log=log, refcat=refcat,
                    hints=solve_hints(frame, meta))
        return WcsSolution(res.wcs, "solved", res.method, res.rms_arcsec, res.n_matched)
    if header_wcs is not None and settings.refine and refcat is not None and len(refcat) >= 5:
        ref = refine(sources, header_wcs, refcat, settings)
        for line in ref.log:
            log(line)
        if ref.wcs is not None and ref.wcs is not header_wcs:
            return WcsSolution(ref.wcs, "refined", "header", ref.rms_arcsec, ref.n_matched, refine_method=ref.method)
        return WcsSolution(header_wcs, frame.wcs_status, "header", ref.rms_arcsec, ref.n_matched)
    return WcsSolution(header_wcs, frame.wcs_status, "header" if header_wcs is not None else None)
