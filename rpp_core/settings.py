"""Typed processing profile, its validation and its TOML storage.

A profile is a :class:`Profile` made of one dataclass per section, each
section holding what one stage reads. Every field is typed down to its
elements (``list[float]``) and its choices (``Literal[...]``), and carries
metadata used by validation, by the TUI forms and by the docs:

``help``   one line for humans
``unit``   unit of the value (``"arcsec"``, ``"px"``, ``"x FWHM"``, ``"mag"`` ...)
``range``  inclusive ``(min, max)`` for numbers (for each element of a list of numbers)

Every value from outside (``rpp --set``, a TOML file, a TUI form) goes through
one coercion path, :func:`coerce`: ``"1.5,2,3"`` and ``"[1.5, 2, 3]"`` both give
``[1.5, 2.0, 3.0]``, ``"[]"`` and ``""`` an empty list. Profiles written before
a key moved section still load: :data:`MOVED` maps the old place to the new and
``Profile.notes`` says what moved.

Profiles live in ``<config>/profiles/<name>.toml`` (see :mod:`rpp_core.locations`).
API keys never go in a profile: they live in ``<config>/secrets.toml``, created
with mode 0600, read by :func:`load_secrets`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

from . import fsio, locations
from .errors import SettingsError


def _f(default, help: str, unit: str = "", range=None):  # noqa: A002
    meta = {"help": help, "unit": unit}
    if range is not None:
        meta["range"] = range
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


Service = Literal["gaia", "simbad", "skybot", "vsx", "milliquas", "10pc", "astrocolibri"]
CatalogFormat = Literal["csv", "ecsv", "votable", "fits", "parquet"]


@dataclass
class ObservatorySettings:
    """Site and camera used when the FITS header does not say (SITELAT/SITELONG/SITEELEV, GAIN...)."""

    name: str = _f("", "observatory name")
    iau_code: str = _f("", "IAU/MPC observatory code, used by SkyBoT (e.g. 'J13')")
    latitude: float = _f(0.0, "geodetic latitude, north positive", "deg", (-90.0, 90.0))
    longitude: float = _f(0.0, "longitude, east positive", "deg", (-180.0, 360.0))
    elevation: float = _f(0.0, "height above sea level", "m", (-500.0, 9000.0))
    pixel_size_um: float = _f(0.0, "detector pixel size, 0 = unknown", "um", (0.0, 100.0))
    focal_length_mm: float = _f(0.0, "telescope focal length, 0 = unknown", "mm", (0.0, 100000.0))
    gain: float = _f(0.0, "gain when the header has none, 0 = header or 1", "e-/ADU", (0.0, 1000.0))
    read_noise: float = _f(0.0, "read noise when the header has none", "e-", (0.0, 1000.0))
    saturation: float = _f(0.0, "saturation level when the header has none, 0 = estimate", "ADU", (0.0, 1e9))


@dataclass
class MaskSettings:
    """Pixels not to trust: the frame border, saturated pixels, and the weight map and mask of a frame."""

    border_px: int = _f(10, "mask the frame edge and ignore sources closer than this to it", "px", (0, 1000))
    saturation_fraction: float = _f(0.95, "pixels above this fraction of SATURATE are masked", "", (0.1, 1.0))
    saturation_dilate_px: int = _f(1, "grow the saturated-pixel mask by this many pixels", "px", (0, 20))
    companions: bool = _f(True, "use a weight map and mask found beside the frame (DECam _oow_/_ood_ names, "
                                "WTMAP/BPM keywords)")
    weight_file: str = _f("", "inverse-variance weight map for every frame ('' = none, or one found beside it)")
    mask_file: str = _f("", "bad-pixel mask for every frame, nonzero = bad, e.g. the camera's ('' = none or found)")


@dataclass
class BackgroundSettings:
    """The 2-D background and RMS maps (SExtractor's estimator)."""

    box: int = _f(64, "2-D background mesh size", "px", (8, 1024))
    filter: int = _f(3, "median filter over background meshes", "meshes", (1, 15))


@dataclass
class DetectionSettings:
    seeing_arcsec: float = _f(2.5, "expected seeing: only compared with the measured FWHM in the log, never used to measure it", "arcsec", (1.0, 6.0))
    threshold_sigma: float = _f(5.0, "detection threshold: peak amplitude of a star in units of the background RMS map", "sigma", (1.5, 100.0))
    finder: Literal["sep", "daofind"] = _f("sep", "sep: SExtractor's filtered thresholding with deblending (fast); daofind: DAOStarFinder, adds sharpness and roundness columns")
    deblend_method: Literal["threshold", "watershed"] = _f("threshold", "sep finder: SExtractor's multi-threshold deblending, or a watershed from every local maximum at least half a FWHM apart")
    deblend_contrast: float = _f(0.0001, "sep finder: smallest flux fraction a peak needs to be split off as its own source (SExtractor DEBLEND_MINCONT, 0.005 there, merges the stars on the wings of saturated ones and the 4-5 px pairs of a crowded plate)", "", (1e-6, 1.0))
    fwhm_max_stars: int = _f(60, "isolated stars used to measure the FWHM", "", (5, 2000))
    max_sources: int = _f(0, "keep only the N brightest detections, 0 = all", "", (0, 10_000_000))


@dataclass
class CosmicRaySettings:
    enabled: bool = _f(True, "remove cosmic rays with astroscrappy")
    sigclip: float = _f(4.5, "Laplacian-to-noise limit", "sigma", (1.0, 50.0))
    sigfrac: float = _f(0.3, "fractional detection limit for neighbours", "", (0.01, 1.0))
    objlim: float = _f(5.0, "contrast limit between CR and underlying object", "", (0.5, 100.0))
    niter: int = _f(1, "astroscrappy iterations (4 = library default; 1 found the same hits on our test frames)", "", (1, 10))
    scope: Literal["sources", "frame"] = _f("sources", "where to look: round detected sources only (fast) or the whole frame")
    tile_px: int = _f(1024, "process the frame in tiles of this size (progress and cancel between tiles), 0 = one piece", "px", (0, 100000))
    workers: int = _f(2, "threads over tiles (astroscrappy also uses OpenMP)", "", (1, 64))


@dataclass
class PhotometrySettings:
    aperture_factors: list[float] = _f([1.5, 2.0, 2.5, 3.0], "aperture radii", "x FWHM", (0.3, 20.0))
    annulus_inner: float = _f(4.0, "local background annulus inner radius", "x FWHM", (1.0, 20.0))
    annulus_outer: float = _f(6.0, "local background annulus outer radius", "x FWHM", (1.5, 30.0))
    calibration_aperture: int = _f(1, "index in aperture_factors of the aperture used for the zero point "
                                      "(the fixed aperture when there is one)", "", (0, 9))
    fixed_aperture_px: float = _f(0.0, "extra aperture of fixed radius, 0 = none; when set it calibrates", "px", (0.0, 200.0))
    min_aperture_px: float = _f(2.0, "smallest aperture radius: undersampled stars get apertures and annulus sized as for a FWHM of this over the smallest factor", "px", (0.0, 50.0))
    psf: bool = _f(True, "build an ePSF and run PSF photometry")
    psf_stars: int = _f(100, "isolated stars used to build the ePSF", "", (5, 1000))
    psf_oversampling: int = _f(2, "ePSF oversampling", "", (1, 4))
    psf_max_fit: int = _f(20000, "fit at most the N brightest sources with the PSF (cost ~0.1 ms/star)", "", (0, 10_000_000))
    annulus_sigma: float = _f(3.0, "sigma-clipping threshold of the local annulus statistic", "sigma", (1.5, 10.0))
    psf_iterations: int = _f(3, "ePSF build iterations (fixed, so a run is reproducible)", "", (1, 50))
    psf_radius: float = _f(5.0, "half-size of the ePSF stamp (its flux is what psf_flux measures)", "x FWHM", (2.0, 15.0))
    psf_fit_radius: float = _f(3.0, "only pixels within this radius of a source enter its PSF fit", "x FWHM", (1.0, 15.0))
    min_snr: float = _f(0.0, "drop sources whose SNR in the calibration aperture is below this", "", (0.0, 1000.0))


@dataclass
class AstrometrySettings:
    solver: Literal["astrometry.net", "siril", "none"] = _f("astrometry.net", "plate solver")
    solve: Literal["auto", "always", "never"] = _f("auto", "when to solve")
    index_dirs: list[str] = _f([], "folders with astrometry.net index files")
    timeout_s: float = _f(120.0, "plate-solving time limit", "s", (5.0, 3600.0))
    scale_tolerance: float = _f(0.2, "relative tolerance on the pixel-scale hint", "", (0.01, 1.0))
    search_radius_deg: float = _f(2.0, "search radius round the pointing hint", "deg", (0.01, 180.0))
    refine: bool = _f(True, "refine the WCS against the reference catalogue")
    sip_order: int = _f(2, "SIP distortion order when residuals call for it, 0 = never", "", (0, 5))
    check_tolerance_arcsec: float = _f(3.0, "a WCS whose median offset to the reference exceeds this is re-solved", "arcsec", (0.1, 600.0))
    min_matches: int = _f(6, "fewest matched reference stars for a WCS check or refinement to count", "", (3, 10000))
    max_solve_sources: int = _f(500, "brightest detections handed to the plate solver", "", (10, 100000))
    blind_fallback: bool = _f(True, "retry without scale/position hints when the hinted solve fails")
    use_system_indexes: bool = _f(True, "also search /usr/share/astrometry (Debian astrometry-data-* packages)")
    use_user_indexes: bool = _f(True, "also search the folder `rpp index build` writes to ($RPP_INDEX_DIR, default <user data>/rpp/indexes)")
    solve_field: str = _f("solve-field", "astrometry.net solve-field executable (name on PATH or full path)")
    siril_cli: str = _f("siril-cli", "Siril command-line executable, used as second solver when it can plate-solve (Siril >= 1.2)")


@dataclass
class CalibrationSettings:
    band: str = _f("G", "reference band to calibrate to (column of the reference catalogue, see mag_column)")
    catalog_files: list[str] = _f([], "local reference catalogue files (CSV/ECSV/FITS/VOTable)")
    catalog: Literal["auto", "file", "gaia"] = _f("auto", "reference source")
    ra_column: str = _f("ra", "RA column (deg) of local catalogues")
    dec_column: str = _f("dec", "Dec column (deg) of local catalogues")
    mag_column: str = _f("", "magnitude column, '' = the band name")
    mag_err_column: str = _f("", "magnitude error column, '' = '<mag>_err' if present")
    color_columns: list[str] = _f([], "two magnitude columns whose difference is the colour, e.g. ['BP', 'RP']")
    color_term: bool = _f(False, "fit a colour term")
    mag_min: float = _f(8.0, "brightest reference magnitude used", "mag", (-5.0, 30.0))
    mag_max: float = _f(18.0, "faintest reference magnitude used", "mag", (-5.0, 30.0))
    match_radius_fwhm: float = _f(1.0, "match radius", "x FWHM", (0.1, 10.0))
    match_radius_min_arcsec: float = _f(1.0, "lower bound of the match radius", "arcsec", (0.05, 60.0))
    extinction_k: float = _f(0.0, "extinction coefficient k (m0 = m - k X)", "mag/airmass", (0.0, 2.0))
    clip_sigma: float = _f(3.0, "outlier rejection in MAD-sigma", "sigma", (1.5, 10.0))
    min_calibrators: int = _f(3, "fewest calibrators for a zero point", "", (1, 1000))
    gaia_max_ruwe: float = _f(1.4, "Gaia calibration stars: largest RUWE", "", (1.0, 100.0))
    gaia_color_min: float = _f(-0.5, "Gaia calibration stars: bluest BP-RP", "mag", (-5.0, 10.0))
    gaia_color_max: float = _f(4.0, "Gaia calibration stars: reddest BP-RP", "mag", (-5.0, 10.0))
    gaia_isolation_arcsec: float = _f(5.0, "Gaia calibration stars: no neighbour within this radius brighter than 2.5 mag fainter", "arcsec", (0.0, 120.0))
    gaia_exclude_variable: bool = _f(True, "Gaia calibration stars: drop phot_variable_flag = VARIABLE")


@dataclass
class ServicesSettings:
    offline: bool = _f(False, "use only cache and local catalogue files")
    enabled: list[Service] = _f(["gaia", "simbad", "skybot", "vsx", "milliquas", "10pc", "astrocolibri"], "cross-match services")
    gaia_tap: str = _f("https://gea.esac.esa.int/tap-server/tap", "Gaia archive TAP endpoint")
    simbad_tap: str = _f("https://simbad.cds.unistra.fr/simbad/sim-tap", "SIMBAD TAP endpoint")
    vizier_tap: str = _f("https://tapvizier.cds.unistra.fr/TAPVizieR/tap", "VizieR TAP endpoint")
    skybot: str = _f("https://ssp.imcce.fr/webservices/skybot/api/conesearch.php", "SkyBoT cone search endpoint")
    vsx: str = _f("https://www.aavso.org/vsx/index.php", "AAVSO VSX API endpoint")
    astrocolibri: str = _f("https://astro-colibri.science", "Astro-Colibri API base URL")
    timeout_s: float = _f(30.0, "longest one request may take: connect, each read and the whole answer", "s", (1.0, 600.0))
    retries: int = _f(3, "retries on connect errors, 5xx and 429", "", (0, 10))
    rate_limit_per_s: float = _f(2.0, "requests per second per service", "1/s", (0.01, 100.0))
    cache_max_mb: float = _f(500.0, "on-disk answer cache size bound, per service", "MB", (1.0, 100000.0))
    gaia_mag_limit: float = _f(19.0, "faintest Gaia G fetched", "mag", (5.0, 22.0))
    transient_days: float = _f(60.0, "Astro-Colibri time window round the observation", "days", (1.0, 3650.0))
    # --- added by the catalogue-services work (issue 3): see docs/catalogs.md
    vizier: str = _f("https://vizier.cds.unistra.fr/viz-bin/votable", "VizieR ASU VOTable endpoint (B/vsx, Milliquas, 10 pc cones)")
    vsx_source: Literal["vizier", "api"] = _f("vizier", "where VSX comes from: VizieR B/vsx or the AAVSO VSX API")
    backoff_s: float = _f(1.0, "first retry delay, doubled at each retry", "s", (0.0, 60.0))
    retry_after_max_s: float = _f(120.0, "longest Retry-After wait honoured before giving up", "s", (0.0, 3600.0))
    max_rows: int = _f(50000, "most rows asked of one cross-match service per field", "", (10, 10_000_000))
    gaia_tile_deg: float = _f(1.0, "Gaia cones wider than this are split into tiles of this radius", "deg", (0.05, 5.0))
    gaia_batch_ids: int = _f(500, "source_ids per synthetic-photometry query", "", (10, 5000))
    # --- added by issues 13/14 (catalogue answers): see docs/catalogs.md
    cache_days: float = _f(180.0, "how long cached Gaia, SIMBAD, VizieR and VSX answers stay valid", "days", (0.01, 3650.0))
    cache_days_transient: float = _f(1.0, "how long cached SkyBoT and Astro-Colibri answers (keyed by the epoch) stay valid", "days", (0.001, 365.0))
    max_answer_mb: float = _f(50.0, "largest answer read from SIMBAD, VizieR, VSX, SkyBoT or Astro-Colibri; a bigger one is cut off and the service fails", "MB", (0.01, 10000.0))
    gaia_max_answer_mb: float = _f(200.0, "largest answer read from the Gaia archive (one tile or batch)", "MB", (0.01, 10000.0))


@dataclass
class OutputSettings:
    formats: list[CatalogFormat] = _f(["csv", "ecsv", "votable", "fits", "parquet"],
                                      "catalogue formats (CSV and ECSV are always written)")
    zip: bool = _f(True, "pack the run folder into a ZIP")
    keep_days: float = _f(0.0, "delete runs older than this after each run, 0 = keep", "days", (0.0, 36500.0))
    max_total_gb: float = _f(0.0, "delete oldest runs beyond this total size, 0 = no bound", "GB", (0.0, 100000.0))


SECTIONS: dict[str, type] = {
    "observatory": ObservatorySettings,
    "masks": MaskSettings,
    "background": BackgroundSettings,
    "detection": DetectionSettings,
    "cosmic_rays": CosmicRaySettings,
    "photometry": PhotometrySettings,
    "astrometry": AstrometrySettings,
    "calibration": CalibrationSettings,
    "services": ServicesSettings,
    "output": OutputSettings,
}

#: keys that moved to the section of the stage that reads them: old "section.key" -> new "section.key"
MOVED: dict[str, str] = {
    "detection.border_px": "masks.border_px",
    "detection.saturation_fraction": "masks.saturation_fraction",
    "detection.saturation_dilate_px": "masks.saturation_dilate_px",
    "detection.background_box": "background.box",
    "detection.background_filter": "background.filter",
    "services.gaia_max_ruwe": "calibration.gaia_max_ruwe",
    "services.gaia_color_min": "calibration.gaia_color_min",
    "services.gaia_color_max": "calibration.gaia_color_max",
    "services.gaia_isolation_arcsec": "calibration.gaia_isolation_arcsec",
    "services.gaia_exclude_variable": "calibration.gaia_exclude_variable",
    # one gain and read noise for every stage, resolved by rpp_core.image.metadata
    "cosmic_rays.gain": "observatory.gain",
    "cosmic_rays.read_noise": "observatory.read_noise",
}


@dataclass
class Profile:
    """A complete processing profile. ``name`` is the file stem in the profiles dir.

    ``notes`` (not saved) says what was changed while reading an older profile.
    """

    name: str = "default"
    observatory: ObservatorySettings = field(default_factory=ObservatorySettings)
    masks: MaskSettings = field(default_factory=MaskSettings)
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    cosmic_rays: CosmicRaySettings = field(default_factory=CosmicRaySettings)
    photometry: PhotometrySettings = field(default_factory=PhotometrySettings)
    astrometry: AstrometrySettings = field(default_factory=AstrometrySettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    services: ServicesSettings = field(default_factory=ServicesSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    notes: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name}
        for sec in SECTIONS:
            out[sec] = dataclasses.asdict(getattr(self, sec))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> "Profile":
        data, notes = _migrate(data, source)
        unknown = set(data) - set(SECTIONS) - {"name"}
        if unknown:
            raise SettingsError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
        kwargs: dict[str, Any] = {"name": str(data.get("name", "default"))}
        for sec, klass in SECTIONS.items():
            kwargs[sec] = section_from_dict(klass, data.get(sec, {}), f"{source} [{sec}]")
        profile = cls(**kwargs, notes=notes)
        validate(profile, source)
        return profile

    def with_catalog_files(self, files) -> "Profile":
        """Copy with the local reference catalogues ``files`` added to ``calibration.catalog_files``
        (``--catalog`` on the command line, ``catalog_files`` of a run)."""
        if not files:
            return self
        return dataclasses.replace(self, calibration=dataclasses.replace(
            self.calibration, catalog_files=[*self.calibration.catalog_files, *map(str, files)]))

    def replace(self, **changes: Any) -> "Profile":
        """Copy with dotted changes, e.g. ``replace(**{"detection.threshold_sigma": 3})``, validated.

        Values may be typed or text (``"1.5,2,3"``): both go through :func:`coerce`.
        """
        data = self.to_dict()
        for key, value in changes.items():
            sec, _, name = key.partition(".")
            if sec not in SECTIONS or not name:
                raise SettingsError(f"unknown setting {key!r}: use section.name, sections {sorted(SECTIONS)}")
            data[sec][name] = value
        return Profile.from_dict(data, f"profile {self.name!r}")


def _migrate(data: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Move keys of an older profile to their sections (:data:`MOVED`); the notes say which."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    moved = []
    for old, new in MOVED.items():
        osec, okey = old.split(".")
        nsec, nkey = new.split(".")
        section = data.get(osec)
        if not isinstance(section, dict) or okey not in section:
            continue
        value = section.pop(okey)
        target = data.setdefault(nsec, {})
        if not isinstance(target, dict):
            continue
        if nkey in target and old.startswith("cosmic_rays."):
            moved.append(f"{old} dropped ({new} = {target[nkey]} is the one value now)")
            continue
        if old.startswith("cosmic_rays.") and not value:
            moved.append(f"{old} dropped (0 meant: the header's or {new})")
            continue
        target[nkey] = value
        moved.append(f"{old} -> {new}")
    notes = [f"{source}: older profile: {', '.join(moved)}; save it to keep the new layout"] if moved else []
    return data, notes


# ---------------------------------------------------------------- types and the one coercion path

@dataclass(frozen=True)
class FieldSpec:
    """What a form needs to edit a setting: its kind, element kind and choices, unit, range, help."""

    name: str
    kind: str  # "bool", "int", "float", "str", "choice" or "list"
    element: str = ""  # for lists: "float", "int", "str" or "choice"
    choices: tuple = ()
    unit: str = ""
    range: tuple | None = None
    help: str = ""


def _kind(typ: Any) -> tuple[str, tuple]:
    if get_origin(typ) is Literal:
        return "choice", get_args(typ)
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(typ, "str"), ()


@functools.cache
def _hints(klass: type) -> dict[str, Any]:
    """``get_type_hints`` of a settings section, once per class: it evaluates every string
    annotation (``from __future__ import annotations``), 0.3 s per profile load when asked per field."""
    return get_type_hints(klass)


@functools.cache
def _fields(klass: type) -> dict[str, Any]:
    return {f.name: f for f in fields(klass)}


@functools.cache
def field_spec(klass: type, name: str) -> FieldSpec:
    """The :class:`FieldSpec` of ``klass.name`` from its type annotation and metadata."""
    f = _fields(klass)[name]
    typ = _hints(klass)[name]
    meta = f.metadata
    common = dict(unit=meta.get("unit", ""), range=meta.get("range"), help=meta.get("help", ""))
    if get_origin(typ) is list:
        element, choices = _kind(get_args(typ)[0])
        return FieldSpec(name, "list", element, choices, **common)
    kind, choices = _kind(typ)
    return FieldSpec(name, kind, "", choices, **common)


def _parse_list(text: str, where: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise SettingsError(f"{where}: {text!r} is not a list; write a, b, c or [\"a\", \"b\"]") from None
        return list(value)
    return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]


def coerce(value: Any, typ: Any, where: str) -> Any:
    """``value`` (typed, or text from a command line or a form) as type ``typ``; raise :class:`SettingsError`.

    The one coercion path: TOML, ``--set`` and the TUI all come through here.
    Lists are coerced element by element; ``Literal`` choices are enforced.
    """
    origin = get_origin(typ)
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            raise SettingsError(f"{where} = {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (element,) = get_args(typ)
        if isinstance(value, str):
            value = _parse_list(value, where)
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        raise SettingsError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if typ is float:
        if isinstance(value, bool):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SettingsError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: settings of type {typ!r} are not supported")


def section_from_dict(klass: type, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: expected a table of settings, got {data!r}")
    names = set(_fields(klass))
    unknown = set(data) - names
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    return klass(**{k: check_value(klass, k, v, where) for k, v in data.items()})


def check_value(klass: type, name: str, value: Any, where: str = "") -> Any:
    """Coerce and range-check one value; raise :class:`SettingsError` naming it.

    Used by TOML loading, ``--set`` and the TUI form (as the user types).
    """
    label = f"{where} {name}".strip()
    value = coerce(value, _hints(klass)[name], label)
    rng = _fields(klass)[name].metadata.get("range")
    unit = field_spec(klass, name).unit
    for v in (value if isinstance(value, list) else [value]):
        if rng is not None and isinstance(v, (int, float)) and not (rng[0] <= v <= rng[1]):
            u = f" {unit}" if unit else ""
            raise SettingsError(f"{label} = {value}{u} is out of range: allowed {rng[0]} to {rng[1]}{u}")
    return value


def validate(profile: Profile, source: str = "profile") -> None:
    """Check every type and range and the cross-field rules; raise :class:`SettingsError`."""
    for sec, klass in SECTIONS.items():
        obj = getattr(profile, sec)
        for f in fields(klass):
            check_value(klass, f.name, getattr(obj, f.name), f"{source} [{sec}]")
    ph = profile.photometry
    if not 1 <= len(ph.aperture_factors) <= 10:
        raise SettingsError(f"{source} [photometry] aperture_factors = {ph.aperture_factors}: give 1 to 10 numbers between 0.3 and 20 (x FWHM)")
    if ph.calibration_aperture >= len(ph.aperture_factors):
        raise SettingsError(
            f"{source} [photometry] calibration_aperture = {ph.calibration_aperture} but only "
            f"{len(ph.aperture_factors)} apertures are defined: use 0..{len(ph.aperture_factors) - 1}")
    if ph.annulus_outer <= ph.annulus_inner:
        raise SettingsError(f"{source} [photometry] annulus_outer ({ph.annulus_outer}) must exceed annulus_inner ({ph.annulus_inner})")
    if ph.annulus_inner <= max(ph.aperture_factors):
        raise SettingsError(f"{source} [photometry] annulus_inner ({ph.annulus_inner} x FWHM) must exceed the largest aperture ({max(ph.aperture_factors)} x FWHM)")
    cal = profile.calibration
    if cal.mag_max <= cal.mag_min:
        raise SettingsError(f"{source} [calibration] mag_max ({cal.mag_max}) must be fainter than mag_min ({cal.mag_min})")
    if cal.color_columns and len(cal.color_columns) != 2:
        raise SettingsError(f"{source} [calibration] color_columns must name two columns, got {cal.color_columns}")
    check_profile_name(profile.name)


# ---------------------------------------------------------------- storage

#: a profile name is a file stem in the profiles folder: no separators, no "..", not hidden
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


def check_profile_name(name: str) -> str:
    """``name`` if it is a plain profile name; :class:`SettingsError` for anything reaching outside the folder."""
    if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name):
        raise SettingsError(f"profile name {name!r}: use letters, digits, '.', '_' and '-' only, not starting with "
                            "'.' (a name, not a path: profiles live in `rpp profile path`)")
    return name


def profile_path(name: str) -> Path:
    """``<config>/profiles/<name>.toml``; the name is checked, so the path never leaves the folder."""
    return locations.profiles_dir() / f"{check_profile_name(name)}.toml"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in locations.profiles_dir().glob("*.toml"))


def dumps(profile: Profile) -> str:
    return tomli_w.dumps(profile.to_dict())


def loads(text: str, source: str = "profile") -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: not valid TOML ({exc}); fix the file or delete it") from None
    return Profile.from_dict(data, source)


def load_profile(name_or_path: str | os.PathLike | None = None) -> Profile:
    """Load a profile by name (from the profiles dir) or by path; ``None`` gives defaults.

    The name ``default`` gives the built-in defaults when no such file exists.
    """
    if name_or_path is None:
        return Profile()
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.exists():
        path = text_path
    else:
        if not _PROFILE_NAME.fullmatch(str(name_or_path)):
            raise SettingsError(f"profile file {text_path} does not exist")
        path = profile_path(str(name_or_path))
        if not path.exists():
            if str(name_or_path) == "default":
                return Profile()
            raise SettingsError(
                f"profile {name_or_path!r} not found in {locations.profiles_dir()}; "
                f"known profiles: {', '.join(list_profiles()) or 'none'} (create one with `rpp profile new NAME`)")
    if not path.exists():
        raise SettingsError(f"profile file {path} does not exist")
    profile = loads(_read_text(path, "profile"), str(path))
    if profile.name == "default" and path.stem != "default":
        profile.name = path.stem
    return profile


def save_profile(profile: Profile, path: str | os.PathLike | None = None) -> Path:
    validate(profile)
    target = Path(path) if path else profile_path(profile.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fsio.write_text(target, dumps(profile))
    return target


def load_named_profile(name: str) -> Profile:
    """The profile saved under ``name`` in the profiles folder (never a path; ``default`` may be unsaved)."""
    path = profile_path(name)
    if not path.exists() and name == "default":
        return Profile()
    if not path.exists():
        raise SettingsError(f"profile {name!r} not found in {locations.profiles_dir()}; "
                            f"known profiles: {', '.join(list_profiles()) or 'none'}")
    return load_profile(path)


def delete_profile(name: str) -> None:
    path = profile_path(name)
    if not path.exists():
        raise SettingsError(f"profile {name!r} not found in {locations.profiles_dir()}")
    path.unlink()


def rename_profile(old: str, new: str) -> Path:
    """Rename a saved profile; both are names in the profiles folder, and ``new`` must be free."""
    source, target = profile_path(old), profile_path(new)
    if target.exists():
        raise SettingsError(f"profile {new!r} exists ({target}): delete it first or choose another name")
    profile = load_named_profile(old)
    profile.name = new
    save_profile(profile)
    source.unlink()
    return target


# ---------------------------------------------------------------- secrets

SECRET_ENV = {"astrocolibri_uid": "ASTROCOLIBRI_UID"}


def _read_text(path: Path, what: str) -> str:
    """A settings file's text; :class:`SettingsError` naming it when it is unreadable or not UTF-8 text."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not a text {what} file (byte 0x{exc.object[exc.start]:02x} at offset "
                            f"{exc.start} is not UTF-8); fix the file or delete it") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the {what} file ({exc.strerror}); check its permissions") from None


def _secrets_file() -> dict[str, Any]:
    """What ``secrets.toml`` holds ({} without one); :class:`SettingsError` when it is damaged."""
    path = locations.secrets_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(_read_text(path, "secrets"))
    except tomllib.TOMLDecodeError:
        raise SettingsError(f"{path}: not valid TOML; fix or delete it and enter the keys again") from None


def load_secrets() -> dict[str, str]:
    """API keys from ``secrets.toml`` (0600), overridden by environment variables."""
    data = {k: str(v) for k, v in _secrets_file().items()}
    for key, env in SECRET_ENV.items():
        if os.environ.get(env):
            data[key] = os.environ[env]
    return data


def load_secrets_or_warning() -> tuple[dict[str, str], str | None]:
    """:func:`load_secrets` for a run: a secrets file (or config folder) that cannot be read gives the
    keys of the environment variables and a warning to show, never a failure."""
    try:
        return load_secrets(), None
    except (SettingsError, OSError, UnicodeDecodeError, ValueError) as exc:
        where = os.path.join(os.environ.get("RPP_CONFIG_DIR") or "the config folder", "secrets.toml")
        reason = str(exc) if isinstance(exc, SettingsError) else f"{where} cannot be read ({type(exc).__name__}: {exc})"
        return ({key: os.environ[env] for key, env in SECRET_ENV.items() if os.environ.get(env)},
                f"API keys not loaded: {reason}; services that need a key (Astro-Colibri) are skipped this run. "
                f"Fix or delete secrets.toml and store the key again: rpp secret set astrocolibri_uid")


def save_secret(key: str, value: str) -> Path:
    """Store one API key in the secrets file with mode 0600."""
    path = locations.secrets_path()
    data = _secrets_file()  # a damaged file is refused, not overwritten: it may hold other keys
    if value:
        data[key] = value
    else:
        data.pop(key, None)
    fsio.write_text(path, tomli_w.dumps(data), mode=0o600)
    return path


def mask_secret(value: str) -> str:
    """What a UI may show of a secret: never the value itself."""
    return "" if not value else "•" * 8 + f" ({len(value)} chars)"
