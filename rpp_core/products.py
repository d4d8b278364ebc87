"""What the stages hand each other: the typed products of a run, in pipeline order.

=====================  ======================================  ==============================
product                made by                                 read by
=====================  ======================================  ==============================
:class:`Frame`         ``image.load_frame``                    metadata, masks, astrometry
:class:`ObservationMeta`  ``image.read_metadata``              every later stage, the summary
:class:`ExposureValues`   ``image.exposure_values``            the measurable image
:class:`MeasurableImage`  ``preprocess.measurable_image``      FWHM, detection, photometry
:class:`ApertureSet`   ``photometry.aperture_set``             photometry, calibration, plots, app
:class:`SourceCatalogue`  ``detect`` / ``photometry``          astrometry, calibration, outputs
:class:`WcsSolution`   ``astrometry`` (or the header)          sky positions, calibration
:class:`Calibration`   ``calibrate.calibrate``                 outputs, the summary
:class:`RunSummary`    the pipeline, at the end of a run       CLI, batch, watch, the app
=====================  ======================================  ==============================

Frozen dataclasses: a stage makes a new product rather than changing one it
was given (numpy arrays and tables inside are not copied: treat them as
read-only). Values keep their provenance as a :class:`Provenance`: text for
people, an :class:`Origin` for code, so no decision depends on the wording.

Kept free of astropy and numpy imports: the app reads :class:`RunSummary`
before it needs either.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import numpy as np
    from astropy.coordinates import EarthLocation
    from astropy.io import fits
    from astropy.table import Table
    from astropy.time import Time
    from astropy.wcs import WCS

    from .image.raw import RawLayout
    from .image.units import EffectiveGain, HeaderZeroPoints, ImageUnits


# ---------------------------------------------------------------- provenance

class Origin(enum.Enum):
    """Where a value came from."""

    HEADER = "header"
    PROFILE = "profile"
    WCS = "wcs"
    COMPUTED = "computed"
    ASSUMED = "assumed"  # a stand-in (date without time, gain 1): usable, but say so
    MISSING = "missing"  # no value


class Provenance(str):
    """Where a value came from: the text a person reads (``"header GAIN"``), and its :class:`Origin`.

    A ``str`` so logs, ``summary.json`` and comparisons use the text;
    decisions use ``.origin``.
    """

    origin: Origin

    def __new__(cls, text: str, origin: Origin) -> "Provenance":
        obj = super().__new__(cls, text)
        obj.origin = origin
        return obj

    def __reduce__(self):  # pickles (process pipes, Dask) keep the origin
        return Provenance, (str(self), self.origin)

    def __add__(self, more: str) -> "Provenance":
        return Provenance(str(self) + more, self.origin)


# ---------------------------------------------------------------- the frame and its metadata

@dataclass(frozen=True)
class Frame:
    """One image plane ready for processing.

    Attributes
    ----------
    path : Path
    hdu : int
        Index of the HDU in the file (0 = primary).
    data : ndarray
        float32, 2-D, physical units (scaling applied), 0-based ``[y, x]``.
    header : fits.Header
        Repaired header (plus inherited primary keywords for extensions);
        BSCALE/BZERO/BLANK removed and BITPIX = -32 so it matches ``data``.
    wcs : WCS or None
        Celestial 2-D WCS when ``wcs_status == "ok"``.
    wcs_status : str
        ``"ok"``, ``"missing"`` or ``"invalid: <why>"``.
    repairs : list of str
        One line per header change.
    notes : list of str
        Other facts worth logging (cube plane used, compression, scaling...).
    layout : RawLayout or None
        For a raw frame, what the loader did (overscan, trim, amplifier mosaic) and
        how the measured pixels map to the raw ones; None when the data are as stored.
    """

    path: Path
    hdu: int
    data: np.ndarray
    header: fits.Header
    wcs: WCS | None
    wcs_status: str
    repairs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: RawLayout | None = None


@dataclass(frozen=True)
class ObservationMeta:
    """Facts about the observation, each with its :class:`Provenance` in ``sources``.

    Attributes
    ----------
    date_obs : Time or None
        Mid-exposure (UTC) when the exposure time is known, else the start;
        ``sources["date_obs"]`` says which. Its origin is ``ASSUMED`` when only
        a date (00:00) or the file date is known: not good enough for airmass.
    exptime : float or None
        Exposure time, s.
    filter : str or None
    gain : float or None
        Detector e-/ADU, from the header (GAIN, EGAIN, CCDGAIN, amplifier mean) or the profile.
    read_noise : float or None
        e-.
    saturation : float or None
        ADU (in the units of ``Frame.data``). Not estimated from the data here.
    site : EarthLocation or None
    ra, dec : float or None
        Pointing, ICRS deg.
    pixel_scale : float or None
        arcsec/px (geometric mean of the two axes).
    airmass : float or None
    object : str or None
    units : ImageUnits or None
        What the pixel values are (counts, a rate, electrons, a flux density, a plate).
    effective_gain : EffectiveGain or None
        Electrons per image unit for the Poisson term (``value`` None: left out), with
        its typed source (:func:`rpp_core.image.units.decide_gain`; :class:`ExposureValues` carries it on).
    zero_points : HeaderZeroPoints or None
        Zero points the header gives, in rpp's convention (``zero_points.best`` is the one to use).
    sources : mapping
        field -> :class:`Provenance`: where the value came from, or why it is None.
    """

    date_obs: Time | None = None
    exptime: float | None = None
    filter: str | None = None
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    site: EarthLocation | None = None
    ra: float | None = None
    dec: float | None = None
    pixel_scale: float | None = None
    airmass: float | None = None
    object: str | None = None
    units: ImageUnits | None = None
    effective_gain: EffectiveGain | None = None
    zero_points: HeaderZeroPoints | None = None
    sources: Mapping[str, Provenance] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (time as ISO UTC, site as lat/lon deg and height m)."""
        import warnings

        from astropy import units as u
        from erfa import ErfaWarning

        site = None
        if self.site is not None:
            g = self.site.to_geodetic()
            site = {"lat_deg": float(g.lat.deg), "lon_deg": float(g.lon.deg), "height_m": float(g.height.to_value(u.m))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ErfaWarning)
            date = self.date_obs.utc.isot if self.date_obs is not None else None
        return {
            "date_obs": date,
            "exptime": self.exptime,
            "filter": self.filter,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "saturation": self.saturation,
            "site": site,
            "ra": self.ra,
            "dec": self.dec,
            "pixel_scale": self.pixel_scale,
            "airmass": self.airmass,
            "object": self.object,
            "units": self.units.kind.value if self.units is not None else None,
            "effective_gain": self.effective_gain.value if self.effective_gain is not None else None,
            "sources": {k: str(v) for k, v in self.sources.items()},
        }


@dataclass(frozen=True)
class ExposureValues:
    """The gain, read noise, exposure time and saturation level every stage uses, with provenance.

    Made once by :func:`rpp_core.image.exposure_values` (the metadata policy):
    ``gain`` the effective gain, electrons per image unit, None when the Poisson
    term is left out (plates, calibrated images with no gain; 1 e-/ADU assumed
    only when nothing at all is known, said in ``sources``), ``read_noise`` 0 e-
    when unknown, ``exptime`` None when unknown or not positive,
    ``exptime_magnitudes`` what instrumental magnitudes divide by (EXPTIME for
    counts and electrons; None for rates and physical units, or no EXPTIME),
    ``saturation`` None when neither header nor profile gives one (the mask stage
    then looks for a clipped plateau).
    """

    gain: float | None
    read_noise: float
    exptime: float | None
    saturation: float | None
    sources: Mapping[str, Provenance] = field(default_factory=dict)
    exptime_magnitudes: float | None = None

    def assumed(self) -> list[Provenance]:
        """What a user should hear about: the values that stand in for a missing one."""
        return [p for p in self.sources.values() if p.origin is Origin.ASSUMED]


# ---------------------------------------------------------------- pixels and sources

@dataclass(frozen=True)
class MeasurableImage:
    """The frame ready to measure: what FWHM, detection and photometry read.

    ``data`` is background-subtracted (ADU, float32; cosmic rays cleaned once
    that stage has run), ``rms`` the background RMS map (ADU), ``mask`` True
    where a pixel must not be used (NaN, saturated, border, cosmic rays),
    ``saturated`` the (dilated) saturated pixels, ``saturation`` the level
    used (ADU, None = no saturation mask). ``rms`` is the weight map's noise
    when the frame came with one. ``gain`` electrons per image unit (None: no
    Poisson term), ``read_noise`` e-, ``exptime`` s, what instrumental magnitudes
    divide by (None: not divided; :attr:`ExposureValues.exptime_magnitudes`).
    ``background`` and ``background_rms`` are the global levels (ADU).
    ``border_px`` the width of the frame-edge strip set in ``mask`` (px; the
    profile's ``masks.border_px``): detection seeks no star centre in it.
    """

    data: np.ndarray
    rms: np.ndarray
    mask: np.ndarray
    saturated: np.ndarray
    saturation: float | None
    gain: float | None
    read_noise: float
    exptime: float | None
    background: float
    background_rms: float
    border_px: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class ApertureSet:
    """The apertures of a run and THE one that calibrates, decided once (:func:`rpp_core.photometry.aperture_set`).

    ``labels`` in column order (``ap1p5``, ``ap2``, ..., ``fix``), ``radii_px``
    their radii (px), ``calibration`` the label whose magnitudes give the zero
    point, the flags, the S/N cut and the PSF aperture correction (the fixed
    aperture when there is one, else ``aperture_factors[calibration_aperture]``).
    ``annulus_px`` the local background annulus (inner, outer), ``fwhm_px`` the
    FWHM the radii scale with.
    """

    labels: tuple[str, ...]
    radii_px: tuple[float, ...]
    calibration: str
    annulus_px: tuple[float, float]
    fwhm_px: float

    def radius(self, label: str) -> float:
        return self.radii_px[self.labels.index(label)]

    def as_dict(self) -> dict[str, float]:
        """``{label: radius_px}`` in column order."""
        return dict(zip(self.labels, self.radii_px))

    @property
    def largest(self) -> str:
        return self.labels[max(range(len(self.labels)), key=self.radii_px.__getitem__)]


@dataclass(frozen=True)
class SourceCatalogue:
    """The sources and what has been measured on them: one row per source.

    ``table`` columns are documented in docs/catalogue.md (``x``, ``y``
    0-based px; per-aperture ``flux_<L>``, ``mag_<L>``...; ``ra``/``dec`` deg
    once there is a WCS). ``apertures`` is None until aperture photometry ran.
    """

    table: Table
    apertures: ApertureSet | None = None

    def __len__(self) -> int:
        return len(self.table)

    def with_table(self, table: Table) -> "SourceCatalogue":
        return dataclasses.replace(self, table=table)


@dataclass(frozen=True)
class WcsSolution:
    """The frame's WCS and how it was obtained.

    ``status``: ``"ok"`` (header WCS used as it is), ``"solved"``, ``"refined"``,
    ``"missing"`` or ``"invalid: <why>"`` (no WCS). ``source``: ``"header"`` or
    the solver (``"astrometry.net (hinted)"``...). ``rms_arcsec`` and
    ``n_matched``: residual RMS and stars matched in the solve or refinement.
    ``wcs`` is not written to summary.json (it is in ``frame.wcs``).
    """

    wcs: WCS | None = field(default=None, compare=False, repr=False)
    status: str = "missing"
    source: str | None = None
    rms_arcsec: float | None = None
    n_matched: int | None = None
    refine_method: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(dataclasses.replace(self, wcs=None)).items() if k != "wcs"}


# ---------------------------------------------------------------- calibration

@dataclass(frozen=True)
class ZeroPointFit:
    """One aperture's zero point (mag): ``zp`` for this frame, ``zp0`` above the atmosphere."""

    zp: float
    zp_err: float
    zp0: float
    n: int
    rms: float


@dataclass(frozen=True)
class Calibration:
    """The photometric calibration of a frame (model and errors: :mod:`rpp_core.calibrate`).

    ``label`` is the calibration aperture (``ApertureSet.calibration``);
    ``zp``... are its fit; ``by_aperture`` has every aperture's fit (and
    ``psf``), ``skipped`` why an aperture has none. Magnitudes in the reference
    band ``band`` (system ``reference_system``); ``airmass`` the one used;
    ``n_matched`` sources matched with the reference within ``match_radius_arcsec``.
    ``source`` says where the zero point came from: ``"fit to <reference>"``, or
    the header's (``"header MAGZPT"``, ``"header BUNIT nanomaggy"``: no reference,
    :func:`rpp_core.calibrate.header_calibration`); ``header_zp`` the header's zero
    point when there is one (beside a fit: with ``fitted_minus_header``).
    """

    label: str
    band: str
    reference: str
    reference_system: str
    match_radius_arcsec: float
    extinction_k: float
    zp: float
    zp_err: float
    zp0: float
    zp_rms: float
    n_calibrators: int
    n_rejected: int
    color_coef: float
    color_coef_err: float
    airmass: float
    n_matched: int = 0
    by_aperture: Mapping[str, ZeroPointFit] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    header_zp: Mapping[str, Any] | None = None


# ---------------------------------------------------------------- the run summary

def _clean(obj):
    """JSON-ready: non-finite floats as null, numpy values as Python ones, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _clean(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array
        return _clean(obj.tolist())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


@dataclass(frozen=True)
class RunSummary:
    """What a run found, as written to ``summary.json``: the one thing CLI, batch, watch and the app read.

    ``status``: ``"ok"``, ``"degraded"`` (catalogue written, part of the job
    not done: ``exit_code`` and ``error`` say why), ``"failed"`` or
    ``"cancelled"``. Fields a run did not reach are None (a failed run keeps
    what it had measured). Units: px, arcsec, ADU, s, mag; times ISO UTC.
    """

    frame: str
    profile: str = ""
    run_dir: str = ""
    rpp_version: str = ""
    status: str = "ok"
    exit_code: int = 0
    error: str | None = None
    # the frame and its metadata
    hdu: int | None = None
    shape: tuple[int, int] | None = None
    wcs_status: str | None = None
    date_obs: str | None = None
    mjd: float | None = None
    exptime: float | None = None
    filter: str | None = None
    object: str | None = None
    airmass: float | None = None
    pixel_scale_arcsec: float | None = None
    gain: float | None = None
    gain_source: str | None = None
    units: str | None = None
    bunit: str | None = None
    exptime_magnitudes: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    pointing: tuple[float | None, float | None] | None = None
    metadata_sources: Mapping[str, str] = field(default_factory=dict)
    pixels: Mapping[str, Any] | None = None
    companions: Mapping[str, Any] | None = None
    # measurement
    background: float | None = None
    background_rms: float | None = None
    fwhm_px: float | None = None
    fwhm_scatter_px: float | None = None
    fwhm_n_stars: int | None = None
    fwhm_arcsec: float | None = None
    fwhm_gauss_px: float | None = None       # a Gaussian fit on the same stars (photutils fit_fwhm's convention)
    fwhm_first_pass_px: float | None = None  # the prior-free kernel scan
    fwhm_beta: float | None = None
    fwhm_method: str | None = None           # "moffat", or "kernel scan" when no star could be fitted
    n_sources: int | None = None
    apertures_px: Mapping[str, float] = field(default_factory=dict)
    calibration_label: str = ""
    psf: Mapping[str, Any] | None = None
    wcs: WcsSolution | None = None
    # calibration (None when not calibrated)
    calibrated: bool = False
    calibration_source: str | None = None
    header_zp: Mapping[str, Any] | None = None
    band: str | None = None
    reference: str | None = None
    reference_system: str | None = None
    match_radius_arcsec: float | None = None
    extinction_k: float | None = None
    zp: float | None = None
    zp_err: float | None = None
    zp0: float | None = None
    zp_rms: float | None = None
    n_calibrators: int | None = None
    n_rejected: int | None = None
    color_coef: float | None = None
    color_coef_err: float | None = None
    airmass_used: float | None = None
    zp_by_aperture: Mapping[str, ZeroPointFit] = field(default_factory=dict)
    # services, timing, messages
    services: tuple[Mapping[str, Any], ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    total_seconds: float | None = None

    @property
    def from_header(self) -> bool:
        """Calibrated with the header's zero point (no reference catalogue), not a fit."""
        return (self.calibration_source or "").startswith("header")

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (the content of ``summary.json``)."""
        return _clean({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def write(self, path: str | Path) -> Path:
        """Write ``summary.json`` atomically."""
        from .fsio import write_text

        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSummary":
        """A summary from ``summary.json`` data; unknown keys are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw.setdefault("frame", "")
        if isinstance(kw.get("wcs"), Mapping):
            wcs_names = {f.name for f in dataclasses.fields(WcsSolution)} - {"wcs"}
            kw["wcs"] = WcsSolution(**{k: v for k, v in kw["wcs"].items() if k in wcs_names})
        if isinstance(kw.get("zp_by_aperture"), Mapping):
            kw["zp_by_aperture"] = {k: ZeroPointFit(**v) for k, v in kw["zp_by_aperture"].items()
                                    if isinstance(v, Mapping) and set(v) >= {"zp", "zp_err", "zp0", "n", "rms"}}
        for name in ("shape", "pointing", "services", "warnings"):
            if isinstance(kw.get(name), list):
                kw[name] = tuple(kw[name])
        return cls(**kw)

    @classmethod
    def read(cls, path: str | Path) -> "RunSummary":
        """Read ``summary.json`` (raises OSError / ValueError for a missing or broken file)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- a run's result

@dataclass(frozen=True)
class RunResult:
    """What a finished run hands back. ``exit_code`` 0 = fully successful (see errors.py).

    Here, not in the pipeline, so that unpickling one (a worker's answer) imports only this module.

    ``summary`` is what ``summary.json`` holds; ``catalog`` the catalogue table
    (columns in docs/catalogue.md); ``files`` name -> path of every file written.
    """

    run_dir: Path
    catalog: Table
    summary: RunSummary
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0
    message: str = ""

    def summary_only(self) -> "RunResult":
        """This result without what takes astropy to read: the catalogue table and the WCS object (both
        are in the run folder: ``catalog.*``, ``frame.wcs``). A caller that only reads the summary (the
        CLI, the watcher) then unpickles it without importing astropy (0.5 s of CPU at the very end)."""
        summary = self.summary
        if summary.wcs is not None and summary.wcs.wcs is not None:
            summary = dataclasses.replace(summary, wcs=dataclasses.replace(summary.wcs, wcs=None))
        return dataclasses.replace(self, catalog=None, summary=summary)
