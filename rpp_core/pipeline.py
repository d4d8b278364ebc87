"""The pipeline: one FITS frame in, a calibrated catalogue out, as one async job.

:func:`run` composes the stage functions (plain functions over plain data, in
their own modules), runs the CPU-heavy ones off the event loop, reports
:mod:`rpp_core.events` through ``on_event`` and honours ``cancel`` between and
inside long stages. It decides what degrades gracefully:

- no usable WCS and no solution: sky columns are empty, calibration is
  skipped, the pixel-space catalogue is still written, exit code 6;
- no reference catalogue configured: calibration skipped with a warning (exit 0);
- reference given but no calibrators in the field: catalogue written, exit code 5;
- a failing enrichment service: a warning naming it, the run goes on;
- bad input or no stars: the run fails (exit 3 / 4) with a readable log.

Threads, not processes, run the stages: sep, astroscrappy and numpy release
the GIL; DAOStarFinder and EPSFBuilder hold it for a few seconds at most on a
4k frame, which the TUI tolerates (its event loop still gets time slices).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.table import Table

from . import __version__, events as ev, fsio, locations, results
from .errors import CalibrationError, Cancelled, NoStarsError, RppError, ServiceError
from .settings import Profile


@dataclass
class RunResult:
    """What a finished run hands back. ``exit_code`` 0 = fully successful (see errors.py)."""

    run_dir: Path
    catalog: Table
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0
    message: str = ""


class _Job:
    """Per-run plumbing: events, log file, timings, cancellation, worker threads."""

    def __init__(self, on_event, cancel: asyncio.Event, log: results.RunLog | None, cache_dir=None,
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
              offline: bool | None = None, cache_dir=None, secrets: dict | None = None) -> RunResult:
    """Process one frame; see the module docstring. Raises RppError subclasses on failure.

    ``catalog_files`` add local reference catalogues to ``profile.calibration.catalog_files``;
    ``offline`` overrides ``profile.services.offline``. ``cache_dir`` (catalogue answers) and
    ``secrets`` (API keys) default to the user's (:mod:`rpp_core.locations`, ``secrets.toml``).
    """
    profile = profile or Profile()
    if catalog_files:
        profile = dataclasses.replace(profile, calibration=dataclasses.replace(
            profile.calibration, catalog_files=[*profile.calibration.catalog_files, *map(str, catalog_files)]))
    if offline is not None:
        profile = dataclasses.replace(profile, services=dataclasses.replace(profile.services, offline=offline))
    cancel = cancel or asyncio.Event()
    path = Path(path)
    run_dir = results.make_run_dir(out_dir or locations.workspace_dir(), path)
    log = results.RunLog(run_dir / "run.log")
    job = _Job(on_event, cancel, log, cache_dir, secrets)
    job.emit(ev.RunStarted(path=str(path), profile=profile.name, run_dir=str(run_dir)))
    job.log(f"rpp {__version__}: frame {path}, profile {profile.name!r}, run folder {run_dir}")
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"frame": str(path), "profile": profile.name, "run_dir": str(run_dir), "rpp_version": __version__}
    try:
        try:
            result = await _run_stages(job, path, profile, run_dir, hdu, summary)
        finally:
            with contextlib.suppress(Exception):
                await job.close()
    except BaseException as exc:
        summary["total_seconds"] = round(time.perf_counter() - t_start, 3)
        summary["timings"] = job.timings
        summary["warnings"] = job.warnings
        if isinstance(exc, (Cancelled, asyncio.CancelledError)):
            err = exc if isinstance(exc, Cancelled) else Cancelled()
            summary["status"] = "cancelled"
        elif isinstance(exc, RppError):
            err = exc
            summary["status"] = "failed"
        else:
            err = RppError(f"internal error in stage {job.stage!r}: {type(exc).__name__}: {exc} (a bug: please report it with run.log)")
            log.write("ERROR", traceback.format_exc(), job.stage)
            summary["status"] = "failed"
        summary["error"] = str(err)
        summary["exit_code"] = err.exit_code
        results.remove_partial_files(run_dir)
        with contextlib.suppress(Exception):
            results.write_summary(summary, run_dir / "summary.json")
        job.log(f"run {summary['status']} in stage {job.stage!r}: {err}", "ERROR")
        job.emit(ev.RunFailed(stage=job.stage, message=str(err), exit_code=err.exit_code, run_dir=str(run_dir)))
        log.close()
        if isinstance(exc, asyncio.CancelledError):
            raise
        if err is exc:
            raise
        raise err from exc
    result.summary["total_seconds"] = round(time.perf_counter() - t_start, 3)
    results.write_summary(result.summary, run_dir / "summary.json")
    job.log(f"run finished in {result.summary['total_seconds']:.1f} s: {run_dir}")
    job.emit(ev.RunFinished(result=result))
    log.close()
    if profile.output.zip:
        result.files["zip"] = await asyncio.to_thread(results.make_zip, run_dir)
    return result


def run_sync(path, profile: Profile | None = None, **kwargs) -> RunResult:
    """Blocking wrapper of :func:`run` for process pools and Dask workers."""
    return asyncio.run(run(path, profile, **kwargs))


async def _run_stages(job: _Job, path: Path, profile: Profile, run_dir: Path, hdu, summary: dict) -> RunResult:
    from . import detect, image, photometry, preprocess

    det, phot = profile.detection, profile.photometry

    async with job.step("load") as fig:
        frame = await asyncio.to_thread(image.load_frame, path, hdu)
        for note in frame.notes:
            job.log(note)
        for rep in frame.repairs:
            job.log(f"header repair: {rep}", "WARNING")
        fig.update(shape=f"{frame.data.shape[1]}x{frame.data.shape[0]}", hdu=frame.hdu, wcs=frame.wcs_status)
    summary.update(hdu=frame.hdu, shape=list(frame.data.shape), wcs_status=frame.wcs_status)
    results.write_header(frame.header, run_dir / "header.txt")

    async with job.step("metadata") as fig:
        meta = image.read_metadata(frame, profile.observatory)
        for key, src in meta.sources.items():
            job.log(f"{key}: {getattr(meta, key, None)!s} ({src})", "DEBUG")
        gain = meta.gain or profile.observatory.gain or None
        if not gain:
            gain = 1.0
            job.warn("no GAIN in the header or profile: using 1 e-/ADU (Poisson errors may be wrong); set observatory.gain")
        read_noise = meta.read_noise or profile.observatory.read_noise or 0.0
        exptime = meta.exptime if meta.exptime and meta.exptime > 0 else None
        if exptime is None:
            job.warn("no EXPTIME: instrumental magnitudes are per frame, not per second")
        if meta.saturation and meta.saturation > 0:
            saturation, sat_src = float(meta.saturation), meta.sources.get("saturation", "header")
        elif profile.observatory.saturation > 0:
            saturation, sat_src = profile.observatory.saturation, "profile observatory.saturation"
        else:
            saturation, sat_src = None, "none given: the frame maximum if it is a clipped plateau"
        masks = preprocess.make_masks(frame.data, saturation, det)
        saturation = masks.saturation_level
        job.log(f"saturation level {saturation if saturation is not None else 'none'} ADU ({sat_src})")
        fig.update(exptime=exptime, filter=meta.filter, airmass=meta.airmass, pixel_scale=meta.pixel_scale, gain=gain)
    summary.update(
        date_obs=meta.date_obs.isot if meta.date_obs is not None else None,
        mjd=float(meta.date_obs.mjd) if meta.date_obs is not None else None,
        exptime=exptime, filter=meta.filter, object=meta.object, airmass=meta.airmass,
        pixel_scale_arcsec=meta.pixel_scale, gain=gain, read_noise=read_noise, saturation=saturation,
        pointing=[meta.ra, meta.dec], metadata_sources=meta.sources,
    )

    mask = masks.combined
    async with job.step("background") as fig:
        bkg = await asyncio.to_thread(preprocess.estimate_background, frame.data, mask, det)
        data_sub = (frame.data - bkg.background).astype(np.float32, copy=False)
        fig.update(background=float(bkg.global_bkg), rms=float(bkg.global_rms))
    summary.update(background=float(bkg.global_bkg), background_rms=float(bkg.global_rms))

    async with job.step("fwhm") as fig:
        # the header seeing is a hint to compare with, never a prior (issue 9): a 3x wrong one must not matter
        hint = det.seeing_arcsec / meta.pixel_scale if meta.pixel_scale else None
        fw = await asyncio.to_thread(detect.measure_fwhm, data_sub, bkg.rms, mask, hint, det,
                                     progress=job.progress_cb("fwhm"), cancel=job.cancelled)
        job.log(fw.summary())
        fig.update(fwhm_px=fw.fwhm_px, scatter_px=fw.scatter_px, n_stars=fw.n_stars)
    fwhm = float(fw.fwhm_px)
    summary.update(fwhm_px=fwhm, fwhm_scatter_px=float(fw.scatter_px), fwhm_n_stars=int(fw.n_stars),
                   fwhm_arcsec=fwhm * meta.pixel_scale if meta.pixel_scale else None,
                   fwhm_gauss_px=float(fw.gauss_fwhm_px), fwhm_first_pass_px=float(fw.first_pass_px),
                   fwhm_beta=float(fw.beta), fwhm_method=fw.method)

    async with job.step("detect") as fig:
        if fw.undersampled:
            _, kf = detect.detection_kernel(fwhm)
            job.log(f"undersampled stars (FWHM {fwhm:.2f} px): detection filter for {kf:.1f} px, apertures sized for "
                    f"FWHM {photometry.aperture.aperture_fwhm(phot, fwhm):.2f} px (photometry.min_aperture_px)")
        sources = await asyncio.to_thread(detect.find_stars, data_sub, bkg.rms, mask, fwhm, det, masks.saturated,
                                          progress=job.progress_cb("detect"), cancel=job.cancelled)
        fig["n_sources"] = len(sources)

    cr = profile.cosmic_rays
    plan = preprocess.cosmic_ray_plan(fwhm, fw.peak_share)
    if cr.enabled and not plan.run:
        job.warn(plan.note, "cosmics")
        job.skip("cosmics", "stars as sharp as cosmic-ray hits")
    elif cr.enabled:
        async with job.step("cosmics") as fig:
            if plan.note:
                job.log(plan.note)
            # the largest radius any measurement uses: apertures and the PSF fit
            scale = photometry.aperture.aperture_fwhm(phot, fwhm)
            radius = max(max(phot.aperture_factors) * scale, phot.fixed_aperture_px,
                         (phot.psf_fit_radius * scale) if phot.psf else 0.0)
            args = (frame.data, masks.nan | masks.saturated)
            # on the background-relative signal: the frame's pedestal must not matter (issue 14)
            kw = dict(background=bkg.background, rms=bkg.rms, star_share=plan.star_share,
                      progress=job.progress_cb("cosmics"), cancel=job.cancelled)
            if cr.scope == "frame":
                cleaned, cr_mask = await asyncio.to_thread(preprocess.remove_cosmics, *args, cr.gain or gain,
                                                           saturation, cr, **kw)
            else:
                cleaned, cr_mask = await asyncio.to_thread(
                    preprocess.remove_cosmics_near, *args, np.asarray(sources["x"]), np.asarray(sources["y"]), radius,
                    cr.gain or gain, saturation, cr, **kw)
            # a "star" whose peak pixel is a cosmic ray is a hit the detection let through
            px = np.clip(np.round(np.asarray(sources["x"])).astype(int), 0, cr_mask.shape[1] - 1)
            py = np.clip(np.round(np.asarray(sources["y"])).astype(int), 0, cr_mask.shape[0] - 1)
            is_cr = cr_mask[py, px]
            if is_cr.any():
                sources = sources[~is_cr]
                sources["id"] = np.arange(1, len(sources) + 1)
            data_sub = (cleaned - bkg.background).astype(np.float32, copy=False)
            del cleaned
            mask = mask | cr_mask
            fig.update(n_cr_pixels=int(cr_mask.sum()), dropped_sources=int(is_cr.sum()), scope=cr.scope)
    else:
        job.skip("cosmics", "disabled in the profile")
    summary["n_sources"] = len(sources)
    if len(sources) == 0:
        raise NoStarsError(f"{path}: every detection was a cosmic-ray hit: no stars to measure")

    async with job.step("aperture") as fig:
        cat = await asyncio.to_thread(
            photometry.aperture_photometry, data_sub, bkg.rms, mask, sources, fwhm, gain, exptime, phot,
            masks.saturated, progress=job.progress_cb("aperture"), cancel=job.cancelled)
        labels = list(cat.meta["apertures"])
        fig["apertures_px"] = ", ".join(f"{r:.1f}" for r in cat.meta["apertures"].values())
    calib_label = labels[phot.calibration_aperture] if phot.fixed_aperture_px <= 0 else "fix"
    summary.update(apertures_px=dict(cat.meta["apertures"]), calibration_label=calib_label)

    psf_info = None
    if phot.psf:
        async with job.step("psf") as fig:
            try:
                cat, psf_info = await asyncio.to_thread(
                    photometry.psf_photometry, data_sub, bkg.rms, mask, cat, fwhm, gain, exptime, phot,
                    progress=job.progress_cb("psf"), cancel=job.cancelled, moffat_beta=fw.beta)
                if psf_info.model != "ePSF":
                    job.log(f"PSF fitted: {psf_info.model}, not the ePSF decimated to image pixels")
                fig.update(n_fitted=int(psf_info.n_fitted), apcorr=psf_info.apcorr)
                if psf_info.status != "ok":
                    job.warn(f"PSF photometry: {psf_info.status}")
            except (Cancelled, asyncio.CancelledError):
                raise
            except RppError as exc:
                job.warn(f"PSF photometry skipped: {exc}")
        if psf_info is not None:
            summary["psf"] = {k: v for k, v in dataclasses.asdict(psf_info).items() if not isinstance(v, np.ndarray)} \
                if dataclasses.is_dataclass(psf_info) else {}
            _save_psf(psf_info, run_dir)
    else:
        job.skip("psf", "disabled in the profile")

    # ---- astrometry
    wcs, wcs_info, refcat, ref_error = await _astrometry_stage(job, profile, frame, meta, cat, run_dir)
    if wcs is None:
        why = "no FITS WCS in the header" if frame.wcs_status == "missing" else f"WCS {frame.wcs_status}"
        job.warn(f"{why} and no plate solution: the catalogue has pixel positions only, no calibration "
                 "(enable astrometry.solve and give index files, see docs/astrometry.md)", "astrometry")
    summary["wcs"] = wcs_info

    # ---- sky positions
    if wcs is not None:
        ra, dec = _pix2radec(wcs, cat["x"], cat["y"])
        cat["ra"], cat["dec"] = ra, dec
        cat["ra"].unit = cat["dec"].unit = "deg"
        pixel_scale = image.pixel_scale_from_wcs(wcs) or meta.pixel_scale
        summary["pixel_scale_arcsec"] = pixel_scale
    else:
        cat["ra"] = np.full(len(cat), np.nan)
        cat["dec"] = np.full(len(cat), np.nan)
        pixel_scale = meta.pixel_scale

    # ---- reference catalogue + zero point
    zp_results: dict[str, Any] = {}
    exit_code, message = 0, ""
    if wcs is None:
        job.skip("reference", "no WCS")
        job.skip("calibrate", "no WCS")
        exit_code, message = 6, f"{path}: no usable WCS ({frame.wcs_status}) and plate solving did not give one: catalogue in pixel coordinates only"
    else:
        async with job.step("reference") as fig:
            # local files are always cut to this field here; a Gaia answer from the astrometry stage is reused
            if (refcat is None and ref_error is None) or refcat is job.local_reference:
                try:
                    refcat = await _reference_catalog(job, profile, meta, frame, wcs)
                except (CalibrationError, ServiceError) as exc:
                    refcat, ref_error = None, str(exc)
            if ref_error:
                job.warn(ref_error)
            fig["n_reference"] = 0 if refcat is None else len(refcat)
        if refcat is None:
            job.skip("calibrate", ref_error or "no reference catalogue")
            if ref_error:
                exit_code, message = 5, ref_error
        else:
            async with job.step("calibrate") as fig:
                try:
                    zp_results = _calibrate(job, cat, refcat, profile, meta, fwhm, pixel_scale, calib_label, wcs_info)
                    fig.update(zp=zp_results["zp"], zp_err=zp_results["zp_err"], n_calibrators=zp_results["n_calibrators"])
                except CalibrationError as exc:
                    job.warn(str(exc))
                    exit_code, message = 5, f"{path}: calibration failed: {exc}"
    summary.update(zp_results)
    summary.setdefault("zp", None)
    summary["calibrated"] = bool(zp_results)

    # ---- enrichment services
    await _crossmatch_services(job, cat, profile, meta, wcs, fwhm, pixel_scale, wcs_info, summary)

    # ---- outputs
    async with job.step("output") as fig:
        files = await asyncio.to_thread(_write_outputs, cat, summary, frame, wcs, run_dir, profile, fwhm, job.timings)
        fig["files"] = len(files)
    summary["timings"] = job.timings
    summary["warnings"] = job.warnings
    summary["status"] = "ok" if exit_code == 0 else "degraded"
    summary["exit_code"] = exit_code
    if message:
        summary["error"] = message
    files["summary"] = run_dir / "summary.json"
    files["log"] = run_dir / "run.log"
    return RunResult(run_dir=run_dir, catalog=cat, summary=summary, files=files, warnings=job.warnings,
                     exit_code=exit_code, message=message)


async def _astrometry_stage(job: _Job, profile: Profile, frame, meta, cat: Table, run_dir: Path):
    """Decide, solve and/or refine. Returns (wcs or None, info dict, reference table or None, reference error)."""
    from . import astrometry

    wcs = frame.wcs if frame.wcs_status == "ok" else None
    wcs_info: dict[str, Any] = {"status": frame.wcs_status, "source": "header" if wcs is not None else None}
    refcat, ref_error = None, None
    if profile.astrometry.solver == "none" or profile.astrometry.solve == "never":
        job.skip("astrometry", "disabled in the profile")
        return wcs, wcs_info, refcat, ref_error
    async with job.step("astrometry") as fig:
        try:
            refcat, ref_error = await _reference_for_astrometry(job, profile, meta, frame, wcs)
            need, why = astrometry.needs_solving(frame, meta, profile.astrometry, refcat=refcat, sources=cat)
            job.log(f"plate solving {'needed' if need else 'not needed'}: {why}")
            if need:
                res = await asyncio.to_thread(
                    astrometry.solve, cat, frame.data.shape, meta, profile.astrometry,
                    cancel=job.cancelled, progress=job.progress_cb("astrometry"), log=job.thread_log(), refcat=refcat)
                wcs = res.wcs
                wcs_info.update(status="solved", source=res.method, rms_arcsec=res.rms_arcsec, n_matched=res.n_matched)
                for line in astrometry.wcs_keywords(frame.header):
                    job.log(f"original WCS card: {line}", "DEBUG")
            # solve() already refines against refcat; refine a header WCS only
            elif wcs is not None and profile.astrometry.refine and refcat is not None and len(refcat) >= 5:
                ref = await asyncio.to_thread(astrometry.refine, cat, wcs, refcat, profile.astrometry)
                for line in ref.log:
                    job.log(line)
                if ref.wcs is not None and ref.wcs is not wcs:
                    wcs = ref.wcs
                    wcs_info.update(status="refined", refine_method=ref.method)
                wcs_info.update(rms_arcsec=ref.rms_arcsec, n_matched=ref.n_matched)
            fig.update({k: v for k, v in wcs_info.items() if k in ("status", "rms_arcsec", "n_matched")})
        except (Cancelled, asyncio.CancelledError):
            raise
        except RppError as exc:
            job.warn(f"astrometry failed: {exc}")
            wcs_info["error"] = str(exc)
            if isinstance(exc, (CalibrationError, ServiceError)):
                ref_error = str(exc)
    if wcs is not None and wcs is not frame.wcs:
        # the solved WCS goes into the header dump and a .wcs file; the originals are in the log
        astrometry.write_wcs_file(wcs, frame.data.shape, run_dir / "frame.wcs")
        results.write_header(astrometry.header_with_wcs(frame.header, wcs), run_dir / "header.txt")
    return wcs, wcs_info, refcat, ref_error


def _pix2radec(wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """ICRS RA/Dec (deg) of 0-based pixels, whatever the WCS frame (galactic mosaics too)."""
    from astropy.wcs.utils import pixel_to_skycoord

    c = pixel_to_skycoord(np.asarray(x, float), np.asarray(y, float), wcs, origin=0, mode="all").icrs
    return c.ra.deg, c.dec.deg


def _field_cone(wcs, shape) -> tuple[float, float, float]:
    """Centre (ra, dec) and radius (deg) of the circle round the frame footprint."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    xs = np.array([cx, 0, nx - 1, 0, nx - 1])
    ys = np.array([cy, 0, 0, ny - 1, ny - 1])
    ra, dec = _pix2radec(wcs, xs, ys)
    from astropy.coordinates import SkyCoord

    c = SkyCoord(ra, dec, unit="deg")
    return float(ra[0]), float(dec[0]), float(c[1:].separation(c[0]).deg.max()) * 1.05


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
    return job.local_reference


async def _reference_catalog(job: _Job, profile: Profile, meta, frame, wcs) -> Table | None:
    """Local files first when configured, else Gaia DR3 (unless offline); falls back to local files."""
    cal = profile.calibration
    ra0, dec0, radius = _field_cone(wcs, frame.data.shape)
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
        client=job.service_client(profile), cancel=job.cancelled, log=job.log)
    job.log(f"reference catalogue: {len(ref)} Gaia DR3 stars within {radius * 60:.1f}'")
    return ref


def _calibrate(job: _Job, cat: Table, refcat: Table, profile: Profile, meta, fwhm: float, pixel_scale,
               calib_label: str, wcs_info: dict) -> dict:
    from . import calibrate

    cal = profile.calibration
    radius = calibrate.match_radius_arcsec(fwhm, pixel_scale, cal, wcs_info.get("rms_arcsec") or 0.0)
    i_src, i_ref, sep = calibrate.crossmatch(cat["ra"], cat["dec"], refcat["ra"], refcat["dec"], radius)
    n = len(cat)
    mag_ref = np.full(n, np.nan)
    mag_ref_err = np.full(n, np.nan)
    color = np.full(n, np.nan)
    ref_id = np.full(n, "", dtype=object)
    ref_sep = np.full(n, np.nan)
    mag_ref[i_src] = refcat["mag"][i_ref]
    mag_ref_err[i_src] = refcat["mag_err"][i_ref]
    color[i_src] = refcat["color"][i_ref]
    ref_id[i_src] = np.asarray(refcat["ref_id"]).astype(str)[i_ref]
    ref_sep[i_src] = sep
    cat["ref_id"] = ref_id.astype(str)
    cat["ref_sep_arcsec"] = ref_sep
    cat["mag_ref"] = mag_ref
    cat["mag_ref_err"] = mag_ref_err
    cat["ref_color"] = color
    job.log(f"cross-match with the reference: {len(i_src)} pairs within {radius:.2f}\"")
    in_range = (mag_ref >= cal.mag_min) & (mag_ref <= cal.mag_max)
    if not in_range.any():
        raise CalibrationError(
            f"no calibrators: {len(i_src)} sources matched the reference within {radius:.1f}\" but none with "
            f"{cal.band} between {cal.mag_min} and {cal.mag_max} (calibration.mag_min/mag_max)")

    labels = list(cat.meta["apertures"])
    if "psf_mag" in cat.colnames:
        labels.append("psf")
    out: dict[str, Any] = {"band": cal.band, "reference": refcat.meta.get("source", ""),
                           "reference_system": refcat.meta.get("system", ""), "match_radius_arcsec": radius,
                           "extinction_k": cal.extinction_k, "zp_by_aperture": {}}
    main = None
    for label in labels:
        mcol, ecol, fcol = (("psf_mag", "psf_magerr", "psf_flag") if label == "psf"
                            else (f"mag_{label}", f"magerr_{label}", f"flag_{label}"))
        mi = np.asarray(cat[mcol], float)
        ei = np.asarray(cat[ecol], float)
        flags = np.asarray(cat[fcol]) if fcol in cat.colnames else np.zeros(n, int)
        usable = in_range & (flags == 0) & np.isfinite(mi)
        try:
            zp = calibrate.fit_zero_point(mi, ei, mag_ref, mag_ref_err, color, meta.airmass, cal, usable=usable)
        except CalibrationError as exc:
            if label == calib_label:
                raise
            job.log(f"zero point for {label} not fitted: {exc}", "DEBUG")
            continue
        mc, ec = calibrate.apply_zero_point(mi, ei, zp, color)
        name = "psf" if label == "psf" else label
        cat[f"mag_cal_{name}"] = mc
        cat[f"magerr_cal_{name}"] = ec
        out["zp_by_aperture"][name] = {"zp": zp.zp, "zp_err": zp.zp_err, "zp0": zp.zp0, "n": zp.n_used, "rms": zp.rms}
        if label == calib_label:
            main = zp
    assert main is not None
    cat["calib_used"] = main.used
    cat["calib_rejected"] = main.rejected
    cat["calib_residual"] = np.where(main.used | main.rejected, main.residuals, np.nan)
    cat["zp"] = np.full(n, main.zp)
    cat["zp_err"] = np.full(n, main.zp_err)
    cat["airmass"] = np.full(n, main.airmass)
    if cal.color_term:
        job.log(f"colour term C = {main.color_coef:.4f} ± {main.color_coef_err:.4f}")
    job.log(f"zero point ({calib_label}) = {main.zp:.4f} ± {main.zp_err:.4f} mag at airmass {main.airmass:.3f} "
            f"(ZP0 = {main.zp0:.4f}, k = {cal.extinction_k}), {main.n_used} calibrators, {main.n_rejected} rejected, "
            f"rms {main.rms:.4f}")
    out.update(zp=main.zp, zp_err=main.zp_err, zp0=main.zp0, zp_rms=main.rms, n_calibrators=main.n_used,
               n_rejected=main.n_rejected, color_coef=main.color_coef, color_coef_err=main.color_coef_err,
               airmass_used=main.airmass)
    return out


async def _crossmatch_services(job: _Job, cat: Table, profile: Profile, meta, wcs, fwhm, pixel_scale, wcs_info, summary) -> None:
    svc = profile.services
    if wcs is None or not svc.enabled:
        job.skip("crossmatch", "no WCS" if wcs is None else "no services enabled")
        return
    from .catalogs import crossmatch as xm

    async with job.step("crossmatch") as fig:
        ra0, dec0, radius = _field_cone(wcs, (int(summary["shape"][0]), int(summary["shape"][1])))
        radius_arcsec = max(1.0 * fwhm * (pixel_scale or 1.0), 3.0 * (wcs_info.get("rms_arcsec") or 0.0), 1.0)
        columns, statuses = await xm.crossmatch_services(
            np.asarray(cat["ra"], float), np.asarray(cat["dec"], float), radius_arcsec, (ra0, dec0), radius,
            meta.date_obs, svc, profile.observatory, job.secrets,
            cancel=job.cancelled, log=job.log, warn=lambda service, reason: job.warn(f"{service}: {reason}"),
            client=job.service_client(profile), site=meta.site)
        for name in columns.colnames:
            cat[name] = columns[name]
        summary["services"] = statuses
        fig["n_identified"] = int(np.sum(np.asarray(cat["matches"]).astype(str) != "")) if "matches" in cat.colnames else 0


def _save_psf(psf_info, run_dir: Path) -> None:
    if psf_info.epsf is None:
        return
    from astropy.io import fits

    hdr = fits.Header()
    for key in ("oversampling", "n_stars", "apcorr", "apcorr_err"):
        val = getattr(psf_info, key)
        if isinstance(val, (int, float)) and np.isfinite(val):
            hdr[key.upper()[:8]] = val
    with fsio.atomic_path(run_dir / "psf.fits") as tmp:
        fits.PrimaryHDU(np.asarray(psf_info.epsf, np.float32), header=hdr).writeto(tmp, overwrite=True)


def _write_outputs(cat: Table, summary: dict, frame, wcs, run_dir: Path, profile: Profile, fwhm: float, timings) -> dict:
    files: dict[str, Path] = {}
    label = summary.get("calibration_label", "")
    meta_plot = {"calibration_label": label, "zp": summary.get("zp"), "zp_err": summary.get("zp_err"),
                 "n_calibrators": summary.get("n_calibrators", 0), "band": summary.get("band", ""),
                 "zp_rms": summary.get("zp_rms", float("nan"))}
    files.update(results.write_plots(cat, meta_plot, run_dir))
    files["regions"] = results.write_regions(cat, run_dir / "regions.reg", radius_px=float(cat.meta["apertures"].get(label, 2 * fwhm)))
    if wcs is not None and (run_dir / "frame.wcs").exists():
        files["wcs"] = run_dir / "frame.wcs"
    cat.meta.update({
        "frame": summary["frame"], "date_obs": summary.get("date_obs"), "filter": summary.get("filter"),
        "exptime": summary.get("exptime"), "airmass": summary.get("airmass"), "fwhm_px": fwhm,
        "zp": summary.get("zp"), "zp_err": summary.get("zp_err"), "band": summary.get("band"),
        "calibration_aperture": label, "pixel_origin": 0, "rpp_version": summary.get("rpp_version"),
    })
    summary["timings"] = dict(timings)
    files.update(results.write_catalog(cat, run_dir, profile.output.formats))
    return files
