"""The pipeline: one FITS frame in, a calibrated catalogue out, as one async job.

:func:`run` calls the stages in order, each a plain function over typed
products (:mod:`rpp_core.products`) in its own module, runs the CPU-heavy ones
off the event loop, reports :mod:`rpp_core.events` through ``on_event`` and
honours ``cancel`` between and inside long stages. It owns no science; it
decides what degrades gracefully:

- no usable WCS and no solution: sky columns are empty, calibration is
  skipped, the pixel-space catalogue is still written, exit code 6;
- no reference catalogue configured: calibration skipped with a warning (exit 0);
- reference given but no calibrators in the field: catalogue written, exit code 5;
- a failing enrichment service: a warning naming it, the run goes on;
- bad input or no stars: the run fails (exit 3 / 4) with a readable log.

A run is meant to execute in a worker process of its own
(:mod:`rpp_core.runner`): stages that hold the interpreter lock for long then
freeze no UI, and cancel can stop the process group. Inside the worker the
stages run in threads so events and cancel keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.table import Table

from . import __version__, events as ev, locations, results, rundir
from .errors import CalibrationError, Cancelled, NoStarsError, RppError, ServiceError
from .products import (Calibration, ExposureValues, Frame, MeasurableImage, ObservationMeta, RunResult,
                       RunSummary, SourceCatalogue, WcsSolution)
from .settings import Profile


@dataclass
class _Products:
    """What the run has made so far: the summary is built from it, also after a failure."""

    frame: Frame | None = None
    weights: Any = None  # image.PixelWeights: weight map and mask that came with the frame
    meta: ObservationMeta | None = None
    exposure: ExposureValues | None = None
    image: MeasurableImage | None = None
    fwhm: Any = None  # detect.FwhmResult
    catalogue: SourceCatalogue | None = None
    psf: Any = None  # photometry.PsfInfo
    wcs: WcsSolution | None = None
    pixel_scale: float | None = None
    calibration: Calibration | None = None
    services: list = field(default_factory=list)
    exit_code: int = 0
    message: str = ""


class _Job:
    """Per-run plumbing: events, log file, timings, cancellation, worker threads."""

    def __init__(self, on_event, cancel: asyncio.Event, log: rundir.RunLog | None, cache_dir=None,
                 secrets: dict | None = None) -> None:
        self.on_event = on_event or (lambda e: None)
        self.cancel_event = cancel
        self.log_file = log
        self.loop = asyncio.get_running_loop()
        self.timings: dict[str, float] = {}
        self.figures: dict[str, dict] = {}
        self.warnings: list[str] = []
        self.stage = ""
        self.local_reference: Table | None = None  # local catalogue files, read once
        self.cache_dir = cache_dir
        self._secrets = secrets
        self._client = None  # one ServiceClient per run: Gaia and the cross-match share its cache, limits and failures

    @property
    def secrets(self) -> dict:
        """API keys: those given to :func:`run`, else the user's (read when a service first needs them;
        a secrets file that cannot be read is a warning, and only the services needing a key are skipped)."""
        if self._secrets is None:
            from .catalogs.crossmatch import service_secrets

            self._secrets = service_secrets(self.warn)
        return self._secrets

    def service_client(self, profile: Profile):
        if self._client is None:
            from .catalogs.crossmatch import open_client

            self._client = open_client(profile.services, secrets=self.secrets, cache_dir=self.cache_dir, log=self.log,
                                       warn=self.warn)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def emit(self, event: ev.Event) -> None:
        try:
            self.on_event(event)
        except Exception:  # a broken UI callback must not kill the science
            if self.log_file:
                self.log_file.write("ERROR", "event callback failed:\n" + traceback.format_exc())

    def log(self, message: str, level: str = "INFO") -> None:
        if self.log_file:
            self.log_file.write(level, message, self.stage)
        self.emit(ev.LogLine(level=level, message=message, stage=self.stage))

    def warn(self, message: str, stage: str | None = None) -> None:
        stage = stage or self.stage
        self.warnings.append(f"{stage}: {message}")
        if self.log_file:
            self.log_file.write("WARNING", message, stage)
        self.emit(ev.Warning(stage=stage, message=message))

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def progress_cb(self, stage: str) -> Callable[[int, int], None]:
        """A progress callback safe to call from a worker thread."""
        last = [0.0]

        def progress(done: int, total: int, message: str = "") -> None:
            now = time.monotonic()
            if done < total and now - last[0] < 0.1:  # at most ~10 events/s per stage
                return
            last[0] = now
            self.loop.call_soon_threadsafe(self.emit, ev.StageProgress(stage=stage, done=int(done), total=int(total), message=message))

        return progress

    def thread_log(self) -> Callable[[str], None]:
        return lambda msg: self.loop.call_soon_threadsafe(self.log, msg)

    @contextlib.asynccontextmanager
    async def step(self, name: str):
        self.check_cancel()
        self.stage = name
        index = ev.STAGE_NAMES.index(name)
        self.emit(ev.StageStarted(stage=name, index=index, total=len(ev.STAGE_NAMES)))
        self.log(f"{ev.STAGE_LABELS[name]}: started", "DEBUG")
        t0 = time.perf_counter()
        figures: dict[str, Any] = {}
        yield figures
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 4)
        self.figures[name] = figures
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
        self.log(f"{ev.STAGE_LABELS[name]}: done in {dt:.2f} s" + (f" ({shown})" if shown else ""))
        self.emit(ev.StageFinished(stage=name, seconds=dt, figures=dict(figures)))

    def skip(self, name: str, reason: str) -> None:
        self.stage = name
        self.log(f"{ev.STAGE_LABELS[name]}: skipped ({reason})")
        self.emit(ev.StageSkipped(stage=name, reason=reason))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


async def run(path, profile: Profile | None = None, on_event: Callable[[ev.Event], None] | None = None,
              cancel: asyncio.Event | None = None, *, out_dir=None, catalog_files=(), hdu: int | None = None,
              offline: bool | None = None, cache_dir=None, secrets: dict | None = None,
              weight=None, mask=None) -> RunResult:
    """Process one frame in this process; see the module docstring. Raises RppError subclasses on failure.

    ``weight`` (inverse-variance map) and ``mask`` (nonzero = bad) files go with the frame;
    without them, companions named as the DECam community pipeline names them are used
    (:func:`rpp_core.image.load_pixel_weights`).
    ``catalog_files`` add local reference catalogues to ``profile.calibration.catalog_files``;
    ``offline`` overrides ``profile.services.offline``. ``cache_dir`` (catalogue answers) and
    ``secrets`` (API keys) default to the user's (:mod:`rpp_core.locations`, ``secrets.toml``).
    The app, ``rpp run``, batch and watch call it through :mod:`rpp_core.runner`.
    """
    profile = profile or Profile()
    profile = profile.with_catalog_files(catalog_files)
    if offline is not None:
        profile = dataclasses.replace(profile, services=dataclasses.replace(profile.services, offline=offline))
    cancel = cancel or asyncio.Event()
    path = Path(path)
    run_dir = results.make_run_dir(out_dir or locations.workspace_dir(), path)
    marker = rundir.RunMarker(run_dir)  # held until the summary is in place: retention leaves the run alone
    log = rundir.RunLog(run_dir / rundir.RUN_LOG)
    job = _Job(on_event, cancel, log, cache_dir, secrets)
    job.emit(ev.RunStarted(path=str(path), profile=profile.name, run_dir=str(run_dir)))
    job.log(f"rpp {__version__}: frame {path}, profile {profile.name!r}, run folder {run_dir}")
    for note in profile.notes:
        job.warn(note, "load")
    t_start = time.perf_counter()
    made = _Products()
    # library warnings go to the run log, also those of the failure path (the summary formats dates)
    with _library_warnings_to(log, job):
        try:
            try:
                files = await _run_stages(job, path, profile, run_dir, hdu, made, (weight, mask))
                status = "ok" if made.exit_code == 0 else "degraded"
                summary = _summarize(made, job, path, profile, run_dir, status, made.exit_code, made.message or None,
                                     time.perf_counter() - t_start)
                staging = rundir.staging_dir(run_dir)
                files["summary"] = summary.write(staging / rundir.SUMMARY)
                job.log(f"run finished in {summary.total_seconds:.1f} s: {run_dir}")
                if profile.output.zip:
                    job.check_cancel()
                    files["zip"] = await asyncio.to_thread(results.make_zip, run_dir, job.cancelled)
                # the summary is published last: from here on the folder reads as complete
                files = results.publish(run_dir, files)
                files["log"] = run_dir / rundir.RUN_LOG
            finally:
                with contextlib.suppress(Exception):
                    await job.close()
        except BaseException as exc:
            if isinstance(exc, (Cancelled, asyncio.CancelledError)):
                err, status = (exc if isinstance(exc, Cancelled) else Cancelled()), "cancelled"
            elif isinstance(exc, RppError):
                err, status = exc, "failed"
            elif isinstance(exc, OSError) and exc.errno in results.DISK_ERRNOS:
                err, status = results.output_error(exc, run_dir), "failed"
            else:
                err = RppError(f"internal error in stage {job.stage!r}: {type(exc).__name__}: {exc} (a bug: please report it with run.log)")
                log.write("ERROR", traceback.format_exc(), job.stage)
                status = "failed"
            with contextlib.suppress(OSError):
                rundir.remove_partial_files(run_dir)
            summary = _summarize(made, job, path, profile, run_dir, status, err.exit_code, str(err),
                                 time.perf_counter() - t_start)
            job.log(f"run {status} in stage {job.stage!r}: {err}", "ERROR")
            with contextlib.suppress(Exception):
                summary.write(run_dir / rundir.SUMMARY)
            marker.release()
            log.close()
            job.emit(ev.RunFailed(stage=job.stage, message=str(err), exit_code=err.exit_code, run_dir=str(run_dir)))
            if isinstance(exc, asyncio.CancelledError):
                raise
            if err is exc:
                raise
            raise err from exc
    marker.release()
    log.close()
    result = RunResult(run_dir=run_dir, catalog=made.catalogue.table, summary=summary, files=files,
                       warnings=list(job.warnings), exit_code=made.exit_code, message=made.message)
    job.emit(ev.RunFinished(result=result))
    return result


@contextlib.contextmanager
def _library_warnings_to(log: rundir.RunLog, job: _Job):
    """Warnings raised by libraries during the run (ERFA's "dubious year", astropy's header fixes) go to
    the run log, each once per place; the terminal and the app show only rpp's own lines."""
    import logging
    import warnings

    from astropy import log as astropy_log

    seen: set[tuple] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if (category, str(message)) not in seen:  # once per run: a per-row warning must not flood the log
            seen.add((category, str(message)))
            log.write("WARNING", f"{category.__name__}: {message} ({Path(filename).name}:{lineno})", job.stage)

    class ToRunLog(logging.Handler):
        def emit(self, record):
            log.write(record.levelname, f"astropy: {record.getMessage()}", job.stage)

    handlers, handler = list(astropy_log.handlers), ToRunLog()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        for h in handlers:
            astropy_log.removeHandler(h)
        astropy_log.addHandler(handler)
        try:
            yield
        finally:
            astropy_log.removeHandler(handler)
            for h in handlers:
                astropy_log.addHandler(h)


def run_sync(path, profile: Profile | None = None, **kwargs) -> RunResult:
    """Blocking wrapper of :func:`run` (the runner's worker entry uses it)."""
    return asyncio.run(run(path, profile, **kwargs))


async def _run_stages(job: _Job, path: Path, profile: Profile, run_dir: Path, hdu, made: _Products,
                      companions: tuple = (None, None)) -> dict[str, Path]:
    """The stages in order; each product lands in ``made``. Returns the output files (in the staging folder)."""
    from . import photometry

    staging = rundir.staging_dir(run_dir)
    # the PNG figures' drawers, forked now from this thread (the run's own) so that they import matplotlib on the
    # other core while the stages run: before the frame is loaded, as their imports end about when the zero point
    # does (the finder chart's pixels go to them with the catalogue)
    with results.FigureDrawers() as drawers:
        made.frame, made.weights = await _load(job, path, hdu, staging, companions, profile)
        made.meta, made.exposure, masks = await _metadata(job, made.frame, made.weights, profile)
        made.image, background = await _background(job, made.frame, masks, made.exposure, made.weights, profile)
        made.fwhm = await _fwhm(job, made.image, made.meta, profile)
        sources = await _detect(job, made.image, made.fwhm.fwhm_px, profile)
        # the apertures, decided once: cosmic-ray cleaning spares them, photometry measures in them
        apertures = photometry.aperture_set(profile.photometry, made.fwhm.fwhm_px)
        made.image, sources = await _cosmics(job, made.frame, made.image, background, masks, sources, made.fwhm,
                                             apertures, profile)
        made.catalogue = await _apertures(job, made.image, sources, made.fwhm.fwhm_px, apertures, profile)
        made.catalogue, made.psf = await _psf(job, made.image, made.catalogue, made.fwhm, profile, staging)
        made.wcs, refcat, ref_error = await _astrometry(job, profile, made.frame, made.meta, made.catalogue, staging)
        made.catalogue, made.pixel_scale = _sky_positions(job, made.frame, made.meta, made.wcs, made.catalogue)
        made.catalogue, made.calibration = await _calibration(job, made, profile, refcat, ref_error)
        made.catalogue, made.calibration = _header_zero_point(job, made)
        wcs = made.wcs.wcs if made.wcs is not None else None

        def warn(message: str) -> None:  # from the output threads
            job.loop.call_soon_threadsafe(job.warn, message)

        # the figures read nothing the services add: drawn while the services are asked (the catalogue is
        # pickled for them in a thread: 0.1-0.2 s for 100,000 rows, not on the event loop)
        await asyncio.to_thread(results.hand_figures, drawers, made.catalogue,
                                _summarize(made, job, path, profile, run_dir, "ok", 0, None, 0.0), staging, wcs, warn,
                                made.frame.data)
        made.catalogue, made.services = await _crossmatch_services(job, made, profile)
        async with job.step("output") as fig:
            summary = _summarize(made, job, path, profile, run_dir, "ok" if made.exit_code == 0 else "degraded",
                                 made.exit_code, made.message or None, 0.0)
            files = await asyncio.to_thread(
                functools.partial(results.write_outputs, made.catalogue, summary, staging, profile.output.formats,
                                  data=made.frame.data, wcs=wcs, warn=warn, cancel=job.cancelled, drawers=drawers))
            fig["files"] = len(files)
    return files


# ---------------------------------------------------------------- the stages, one step each

async def _load(job: _Job, path: Path, hdu, staging: Path, companions: tuple, profile: Profile):
    from . import image

    async with job.step("load") as fig:
        frame = await asyncio.to_thread(image.load_frame, path, hdu)
        for note in frame.notes:
            job.log(note)
        for rep in frame.repairs:
            job.log(f"header repair: {rep}", "WARNING")
        # issue 9: the weight map and mask that come with the frame
        weight, mask = companions
        weights = await asyncio.to_thread(image.load_pixel_weights, frame, weight or profile.masks.weight_file or None,
                                          mask or profile.masks.mask_file or None, profile.masks.companions)
        for note in weights.notes:
            job.log(note)
        fig.update(shape=f"{frame.data.shape[1]}x{frame.data.shape[0]}", hdu=frame.hdu, wcs=frame.wcs_status)
    results.write_header(frame.header, staging / "header.txt")
    return frame, weights


async def _metadata(job: _Job, frame: Frame, weights, profile: Profile):
    from . import image, preprocess
    from .image.keywords import unreadable_dates

    async with job.step("metadata") as fig:
        meta = await asyncio.to_thread(image.read_metadata, frame, profile.observatory)  # measures the sky noise
        for why in unreadable_dates(frame.header):
            job.warn(why)
        for key, src in meta.sources.items():
            if key not in ("units", "effective_gain", "zero_point"):  # these three get their own lines below
                job.log(f"{key}: {getattr(meta, key)!s} ({src})", "DEBUG")
        exposure = image.exposure_values(meta)
        for why in exposure.assumed():
            job.warn(why)
        # issue 9: what the pixel values are, the gain the errors use and the header's zero point, decided in image.units
        job.log(f"units: {meta.units.text}")
        if meta.effective_gain.source is not image.GainSource.ASSUMED:
            job.log(f"effective gain: {meta.effective_gain.text}")
        if exposure.exptime is not None and exposure.exptime_magnitudes is None:
            job.log(str(exposure.sources["exptime_magnitudes"]))
        if meta.zero_points.best is not None:
            job.log(f"header zero point: {meta.zero_points.best.text} -> {meta.zero_points.best.zp:.4f} (rpp's convention)")
        masks = await asyncio.to_thread(preprocess.make_masks, frame.data, exposure.saturation, profile.masks)
        if weights.bad is not None:
            masks = dataclasses.replace(masks, combined=masks.combined | weights.bad)
        level = masks.saturation_level
        if masks.plateau_note:
            job.warn(f"saturation: {masks.plateau_note}")
        else:
            job.log(f"saturation level {level if level is not None else 'none'} ADU ({exposure.sources['saturation']})")
        fig.update(exptime=exposure.exptime, filter=meta.filter, airmass=meta.airmass, pixel_scale=meta.pixel_scale,
                   gain=exposure.gain)
    return meta, exposure, masks


async def _background(job: _Job, frame: Frame, masks, exposure: ExposureValues, weights, profile: Profile):
    from . import image as image_mod, preprocess

    async with job.step("background") as fig:
        bkg = await asyncio.to_thread(functools.partial(preprocess.estimate_background, frame.data, masks.combined,
                                                             profile.background, nan=masks.nan))
        noise = image_mod.noise_map(weights, float(bkg.global_rms), ~masks.combined)
        if noise is not None:  # the weight map is the noise for detection and errors
            bkg = dataclasses.replace(bkg, rms=noise.rms)
            job.log(f"noise map: {noise.source}")
        image = preprocess.measurable_image(frame.data, masks, bkg, exposure)
        fig.update(background=image.background, rms=image.background_rms)
    return image, bkg


async def _fwhm(job: _Job, image: MeasurableImage, meta: ObservationMeta, profile: Profile):
    from . import detect

    det = profile.detection
    async with job.step("fwhm") as fig:
        # the header seeing is a hint to compare with, never a prior (issue 9): a 3x wrong one must not matter
        hint = det.seeing_arcsec / meta.pixel_scale if meta.pixel_scale else None
        fw = await asyncio.to_thread(detect.measure_fwhm, image.data, image.rms, image.mask, hint, det,
                                     progress=job.progress_cb("fwhm"), cancel=job.cancelled)
        job.log(fw.summary())
        fig.update(fwhm_px=fw.fwhm_px, scatter_px=fw.scatter_px, n_stars=fw.n_stars)
    return fw


async def _detect(job: _Job, image: MeasurableImage, fwhm: float, profile: Profile) -> Table:
    from . import detect, photometry

    async with job.step("detect") as fig:
        if fwhm < detect.UNDERSAMPLED_PX:
            _, kf = detect.detection_kernel(fwhm)
            job.log(f"undersampled stars (FWHM {fwhm:.2f} px): detection filter for {kf:.1f} px, apertures sized for "
                    f"FWHM {photometry.aperture_fwhm(profile.photometry, fwhm):.2f} px (photometry.min_aperture_px)")
        sources = await asyncio.to_thread(
            detect.find_stars, image.data, image.rms, image.mask, fwhm, profile.detection, image.saturated,
            border_px=image.border_px, progress=job.progress_cb("detect"), cancel=job.cancelled)
        fig["n_sources"] = len(sources)
    return sources


async def _cosmics(job: _Job, frame: Frame, image: MeasurableImage, background, masks, sources: Table, fw,
                   apertures, profile: Profile) -> tuple[MeasurableImage, Table]:
    from . import detect, preprocess

    cr, phot = profile.cosmic_rays, profile.photometry
    plan = preprocess.cosmic_ray_plan(fw.fwhm_px, fw.peak_share)
    if not cr.enabled:
        job.skip("cosmics", "disabled in the profile")
    elif not plan.run:
        job.warn(plan.note, "cosmics")
        job.skip("cosmics", "stars as sharp as cosmic-ray hits")
    else:
        async with job.step("cosmics") as fig:
            if plan.note:
                job.log(plan.note)
            # the largest radius any measurement uses: apertures and the PSF fit
            radius = max(max(apertures.radii_px), phot.psf_fit_radius * apertures.fwhm_px if phot.psf else 0.0)
            image, crmask = await asyncio.to_thread(
                preprocess.clean_cosmic_rays, frame.data, image, background, masks, cr, sources["x"], sources["y"],
                radius, progress=job.progress_cb("cosmics"), cancel=job.cancelled, star_share=plan.star_share)
            sources, dropped = detect.drop_cosmic_ray_peaks(sources, crmask)
            fig.update(n_cr_pixels=int(crmask.sum()), dropped_sources=dropped, scope=cr.scope)
    if len(sources) == 0:
        raise NoStarsError(f"{frame.path}: every detection was a cosmic-ray hit: no stars to measure")
    return image, sources


async def _apertures(job: _Job, image: MeasurableImage, sources: Table, fwhm: float, apertures,
                     profile: Profile) -> SourceCatalogue:
    from . import photometry

    phot = profile.photometry
    async with job.step("aperture") as fig:
        table = await asyncio.to_thread(
            photometry.aperture_photometry, image.data, image.rms, image.mask, sources, fwhm, image.gain,
            image.exptime, phot, image.saturated, progress=job.progress_cb("aperture"), cancel=job.cancelled,
            apertures=apertures)
        fig["apertures_px"] = ", ".join(f"{r:.1f}" for r in apertures.radii_px)
    return SourceCatalogue(table, apertures)


async def _psf(job: _Job, image: MeasurableImage, catalogue: SourceCatalogue, fw, profile: Profile, staging: Path):
    from . import photometry

    phot = profile.photometry
    if not phot.psf:
        job.skip("psf", "disabled in the profile")
        return catalogue, None
    info = None
    async with job.step("psf") as fig:
        try:
            table, info = await asyncio.to_thread(
                photometry.psf_photometry, image.data, image.rms, image.mask, catalogue.table,
                fw.fwhm_px, image.gain, image.exptime, phot, progress=job.progress_cb("psf"),
                cancel=job.cancelled, apertures=catalogue.apertures, moffat_beta=fw.beta)
            catalogue = catalogue.with_table(table)
            if info.model != "ePSF":
                job.log(f"PSF fitted: {info.model}, not the ePSF decimated to image pixels")
            fig.update(n_fitted=int(info.n_fitted), apcorr=info.apcorr)
            if info.status != "ok":
                job.warn(f"PSF photometry: {info.status}")
        except (Cancelled, asyncio.CancelledError):
            raise
        except RppError as exc:
            job.warn(f"PSF photometry skipped: {exc}")
    if info is not None:
        results.write_psf(info, staging / "psf.fits")
    return catalogue, info


async def _astrometry(job: _Job, profile: Profile, frame: Frame, meta: ObservationMeta, catalogue: SourceCatalogue,
                      staging: Path) -> tuple[WcsSolution, Table | None, str | None]:
    """Decide, solve and/or refine. Returns (the WCS solution, reference table or None, reference error)."""
    from . import astrometry

    header_wcs = frame.wcs if frame.wcs_status == "ok" else None
    solution = WcsSolution(header_wcs, frame.wcs_status, "header" if header_wcs is not None else None)
    refcat, ref_error = None, None
    if profile.astrometry.solver == "none" or profile.astrometry.solve == "never":
        job.skip("astrometry", "disabled in the profile")
    else:
        async with job.step("astrometry") as fig:
            try:
                refcat, ref_error = await _reference_for_astrometry(job, profile, meta, frame, header_wcs)
                solution = await asyncio.to_thread(
                    astrometry.find_wcs, frame, meta, catalogue.table, profile.astrometry, refcat,
                    cancel=job.cancelled, progress=job.progress_cb("astrometry"), log=job.thread_log())
                if solution.status == "solved":
                    for line in astrometry.wcs_keywords(frame.header):
                        job.log(f"original WCS card: {line}", "DEBUG")
                fig.update(status=solution.status, rms_arcsec=solution.rms_arcsec, n_matched=solution.n_matched)
            except (Cancelled, asyncio.CancelledError):
                raise
            except RppError as exc:
                job.warn(f"astrometry failed: {exc}")
                solution = dataclasses.replace(solution, error=str(exc))
                if isinstance(exc, (CalibrationError, ServiceError)):
                    ref_error = str(exc)
    if solution.wcs is not None and solution.wcs is not frame.wcs:
        # the solved WCS goes into the header dump and a .wcs file; the originals are in the log
        astrometry.write_wcs_file(solution.wcs, frame.data.shape, staging / "frame.wcs")
        results.write_header(astrometry.header_with_wcs(frame.header, solution.wcs), staging / "header.txt")
    if solution.wcs is None:
        why = "no FITS WCS in the header" if frame.wcs_status == "missing" else f"WCS {frame.wcs_status}"
        job.warn(f"{why} and no plate solution: the catalogue has pixel positions only, no calibration "
                 "(enable astrometry.solve and give index files, see docs/astrometry.md)", "astrometry")
    return solution, refcat, ref_error


def _sky_positions(job: _Job, frame: Frame, meta: ObservationMeta, solution: WcsSolution,
                   catalogue: SourceCatalogue) -> tuple[SourceCatalogue, float | None]:
    """ICRS ``ra``/``dec`` columns (NaN without a WCS) and the pixel scale to use from here on."""
    from . import astrometry, image

    table = catalogue.table.copy(copy_data=False)
    if solution.wcs is None:
        table["ra"] = np.full(len(table), np.nan)
        table["dec"] = np.full(len(table), np.nan)
        return catalogue.with_table(table), meta.pixel_scale
    table["ra"], table["dec"] = astrometry.pixel_to_icrs(solution.wcs, table["x"], table["y"])
    table["ra"].unit = table["dec"].unit = "deg"
    return catalogue.with_table(table), image.wcs_pixel_scale(solution.wcs) or meta.pixel_scale


async def _calibration(job: _Job, made: _Products, profile: Profile, refcat, ref_error):
    """Reference catalogue for the field, then the zero points; sets the exit code when it cannot."""
    from . import calibrate

    catalogue, solution = made.catalogue, made.wcs
    if solution.wcs is None:
        job.skip("reference", "no WCS")
        job.skip("calibrate", "no WCS")
        made.exit_code, made.message = 6, (f"{made.frame.path}: no usable WCS ({made.frame.wcs_status}) and plate "
                                           "solving did not give one: catalogue in pixel coordinates only")
        return catalogue, None
    async with job.step("reference") as fig:
        # local files are always cut to this field here; a Gaia answer from the astrometry stage is reused
        if (refcat is None and ref_error is None) or refcat is job.local_reference:
            try:
                refcat = await _reference_catalog(job, profile, made.meta, made.frame, solution.wcs)
            except (CalibrationError, ServiceError) as exc:
                refcat, ref_error = None, str(exc)
        if ref_error:
            job.warn(ref_error)
        fig["n_reference"] = 0 if refcat is None else len(refcat)
    if refcat is None:
        job.skip("calibrate", ref_error or "no reference catalogue")
        if ref_error:
            made.exit_code, made.message = 5, ref_error
        return catalogue, None
    async with job.step("calibrate") as fig:
        try:
            catalogue, cal = await asyncio.to_thread(
                calibrate.calibrate, catalogue, refcat, profile.calibration, airmass=made.meta.airmass,
                fwhm_px=made.fwhm.fwhm_px, pixel_scale=made.pixel_scale,
                astrometric_rms_arcsec=solution.rms_arcsec or 0.0)
        except CalibrationError as exc:
            job.warn(str(exc))
            made.exit_code, made.message = 5, f"{made.frame.path}: calibration failed: {exc}"
            return catalogue, None
        job.log(f"cross-match with the reference: {cal.n_matched} pairs within {cal.match_radius_arcsec:.2f}\"")
        for label, why in cal.skipped.items():
            job.log(f"zero point for {label} not fitted: {why}", "DEBUG")
        if profile.calibration.color_term:
            job.log(f"colour term C = {cal.color_coef:.4f} ± {cal.color_coef_err:.4f}")
        job.log(f"zero point ({cal.label}) = {cal.zp:.4f} ± {cal.zp_err:.4f} mag at airmass {cal.airmass:.3f} "
                f"(ZP0 = {cal.zp0:.4f}, k = {cal.extinction_k}), {cal.n_calibrators} calibrators, "
                f"{cal.n_rejected} rejected, rms {cal.zp_rms:.4f}")
        fig.update(zp=cal.zp, zp_err=cal.zp_err, n_calibrators=cal.n_calibrators)
    return catalogue, cal


async def _crossmatch_services(job: _Job, made: _Products, profile: Profile) -> tuple[SourceCatalogue, list]:
    svc, solution, catalogue = profile.services, made.wcs, made.catalogue
    if solution.wcs is None or not svc.enabled:
        job.skip("crossmatch", "no WCS" if solution.wcs is None else "no services enabled")
        return catalogue, []
    from .catalogs import crossmatch as xm

    async with job.step("crossmatch") as fig:
        ra0, dec0, radius = xm.field_of_view(solution.wcs, made.frame.data.shape)
        fwhm_arcsec = made.fwhm.fwhm_px * (made.pixel_scale or 1.0)
        radius_arcsec = xm.match_radius(fwhm_arcsec, solution.rms_arcsec or 0.0)
        table = catalogue.table.copy(copy_data=False)
        columns, statuses = await xm.crossmatch_services(
            np.asarray(table["ra"], float), np.asarray(table["dec"], float), radius_arcsec, (ra0, dec0), radius,
            made.meta.date_obs, svc, profile.observatory, job.secrets,
            cancel=job.cancelled, log=job.log, warn=lambda service, reason: job.warn(f"{service}: {reason}"),
            client=job.service_client(profile), site=made.meta.site)
        for name in columns.colnames:
            table[name] = columns[name]
        fig["n_identified"] = int(np.sum(np.asarray(table["matches"]).astype(str) != "")) if "matches" in table.colnames else 0
    return catalogue.with_table(table), statuses


def _header_zero_point(job: _Job, made: _Products) -> tuple[SourceCatalogue, Calibration | None]:
    """Issue 9: the header's zero point beside a fitted one, or the calibration when nothing was fitted."""
    from . import calibrate

    catalogue, cal = made.catalogue, made.calibration
    header_zp = made.meta.zero_points.best if made.meta.zero_points is not None else None
    if header_zp is None:
        return catalogue, cal
    if cal is not None:
        diff = cal.zp - header_zp.zp
        job.log(f"zero point: fitted {cal.zp:.4f}, {header_zp.source} {header_zp.zp:.4f} "
                f"({header_zp.system or 'system unknown'}): difference {diff:+.4f} mag")
        return catalogue, dataclasses.replace(cal, header_zp={**header_zp.to_dict(), "fitted_minus_header": diff})
    catalogue, cal = calibrate.header_calibration(catalogue, header_zp, airmass=made.meta.airmass)
    job.log(f"calibration source: {header_zp.source} (no fitted zero point): zp = {header_zp.zp:.4f}"
            + (f" ± {header_zp.zp_err:.4f}" if header_zp.zp_err is not None else "")
            + f" mag{f' ({header_zp.system})' if header_zp.system else ''}: {header_zp.text}")
    job.warn(f"calibrated with the header zero point ({header_zp.source}), not against a reference catalogue",
             "calibrate")
    return catalogue, cal


# ---------------------------------------------------------------- reference catalogues

async def _reference_for_astrometry(job: _Job, profile: Profile, meta, frame, wcs) -> tuple[Table | None, str | None]:
    """Reference stars for solving checks and refinement: the local files, or Gaia round the header WCS.

    Returns (table or None, why it failed or None): a failure is remembered, so the
    calibration stage does not ask an unreachable service a second time.
    """
    if profile.calibration.catalog_files:
        ref = await _local_reference(job, profile)
        job.log(f"reference for astrometry: {len(ref)} stars from {ref.meta.get('source')}")
        return ref, None
    if wcs is not None:
        try:
            return await _reference_catalog(job, profile, meta, frame, wcs), None
        except (CalibrationError, ServiceError) as exc:
            return None, str(exc)
    return None, None


async def _local_reference(job: _Job, profile: Profile) -> Table:
    """The local reference files, read once per run (astrometry and calibration share them)."""
    if job.local_reference is None:
        from .catalogs.local import load_reference

        job.local_reference = await asyncio.to_thread(load_reference, profile.calibration.catalog_files, profile.calibration)
        for note in job.local_reference.meta.get("notes", []):  # rows skipped, values treated as unknown
            job.warn(note)
    return job.local_reference


async def _reference_catalog(job: _Job, profile: Profile, meta, frame, wcs) -> Table | None:
    """Local files first when configured, else Gaia DR3 (from the cache only when offline)."""
    from .catalogs.sky import field_of_view

    cal = profile.calibration
    ra0, dec0, radius = field_of_view(wcs, frame.data.shape)
    if cal.catalog_files and cal.catalog in ("auto", "file"):
        from .catalogs.local import cone_cut

        ref = await asyncio.to_thread(cone_cut, await _local_reference(job, profile), (ra0, dec0), radius)
        job.log(f"reference catalogue: {len(ref)} stars within {radius * 60:.1f}' from {ref.meta.get('source')}")
        if len(ref) == 0:
            raise CalibrationError(f"the reference catalogue ({ref.meta.get('source')}) has no stars in the field "
                                   f"(centre {ra0:.4f} {dec0:+.4f}, radius {radius * 60:.1f}'): check the catalogue covers this frame")
        return ref
    if cal.catalog == "file":
        raise CalibrationError("calibration.catalog = 'file' but no catalogue file given (--catalog FILE)")
    if profile.services.offline:
        from .catalogs.cache import cache_root, has_answers

        if not has_answers("gaia", job.cache_dir):
            job.log(f"offline: no cached Gaia answer for this field (no Gaia answers in {cache_root(job.cache_dir)})")
            return None
        try:
            return await _gaia(job, profile, meta, ra0, dec0, radius)
        except (ServiceError, CalibrationError) as exc:
            job.log(f"offline: no cached Gaia answer for this field ({exc})")
            return None
    return await _gaia(job, profile, meta, ra0, dec0, radius)


async def _gaia(job: _Job, profile: Profile, meta, ra0, dec0, radius):
    from .catalogs import gaia

    ref = await gaia.fetch_gaia_reference(
        ra0, dec0, radius, meta.date_obs, profile.calibration.band, profile.services,
        client=job.service_client(profile), cancel=job.cancelled, log=job.log, cuts=profile.calibration)
    job.log(f"reference catalogue: {len(ref)} Gaia DR3 stars within {radius * 60:.1f}'")
    return ref


# ---------------------------------------------------------------- the summary

def _summarize(made: _Products, job: _Job, path: Path, profile: Profile, run_dir: Path, status: str, exit_code: int,
               error: str | None, seconds: float) -> RunSummary:
    """The :class:`RunSummary` of what the run made (a failed run keeps what it had measured)."""
    kw: dict[str, Any] = {}
    if made.frame is not None:
        kw.update(hdu=made.frame.hdu, shape=tuple(made.frame.data.shape), wcs_status=made.frame.wcs_status)
    if made.meta is not None:
        meta = made.meta
        kw.update(date_obs=meta.date_obs.isot if meta.date_obs is not None else None,
                  mjd=float(meta.date_obs.mjd) if meta.date_obs is not None else None,
                  filter=meta.filter, object=meta.object, airmass=meta.airmass, pixel_scale_arcsec=meta.pixel_scale,
                  pointing=(meta.ra, meta.dec), metadata_sources={k: str(v) for k, v in meta.sources.items()})
    if made.frame is not None:
        kw.update(pixels=made.frame.layout.to_dict() if made.frame.layout is not None else None,
                  companions=made.weights.to_dict() if made.weights is not None else None)
    if made.meta is not None and made.meta.units is not None:
        kw.update(units=made.meta.units.kind.value, bunit=made.meta.units.bunit,
                  gain_source=made.meta.effective_gain.source.value)
    if made.exposure is not None:
        kw.update(exptime=made.exposure.exptime, gain=made.exposure.gain, read_noise=made.exposure.read_noise,
                  exptime_magnitudes=made.exposure.exptime_magnitudes)
    if made.image is not None:
        kw.update(saturation=made.image.saturation, background=made.image.background,
                  background_rms=made.image.background_rms)
    if made.fwhm is not None:
        fw = made.fwhm
        kw.update(fwhm_px=float(fw.fwhm_px), fwhm_scatter_px=float(fw.scatter_px), fwhm_n_stars=int(fw.n_stars),
                  fwhm_arcsec=fw.fwhm_px * made.meta.pixel_scale if made.meta.pixel_scale else None,
                  fwhm_gauss_px=float(fw.gauss_fwhm_px), fwhm_first_pass_px=float(fw.first_pass_px),
                  fwhm_beta=float(fw.beta), fwhm_method=fw.method)
    if made.catalogue is not None:
        kw["n_sources"] = len(made.catalogue)
        if made.catalogue.apertures is not None:
            kw.update(apertures_px=made.catalogue.apertures.as_dict(),
                      calibration_label=made.catalogue.apertures.calibration)
    if made.psf is not None:
        kw["psf"] = {k: v for k, v in dataclasses.asdict(made.psf).items() if not isinstance(v, np.ndarray)}
    if made.wcs is not None:
        kw["wcs"] = made.wcs
        if made.wcs.wcs is not None:
            kw["pixel_scale_arcsec"] = made.pixel_scale
    if made.calibration is not None:
        cal = made.calibration
        kw.update(calibrated=True, band=cal.band, reference=cal.reference, reference_system=cal.reference_system,
                  match_radius_arcsec=cal.match_radius_arcsec, extinction_k=cal.extinction_k, zp=cal.zp,
                  zp_err=cal.zp_err, zp0=cal.zp0, zp_rms=cal.zp_rms, n_calibrators=cal.n_calibrators,
                  n_rejected=cal.n_rejected, color_coef=cal.color_coef, color_coef_err=cal.color_coef_err,
                  airmass_used=cal.airmass, zp_by_aperture=dict(cal.by_aperture), calibration_source=cal.source,
                  header_zp=cal.header_zp)
    return RunSummary(frame=str(path), profile=profile.name, run_dir=str(run_dir), rpp_version=__version__,
                      status=status, exit_code=exit_code, error=error, services=tuple(made.services),
                      timings=dict(job.timings), warnings=tuple(job.warnings), total_seconds=round(seconds, 3), **kw)
