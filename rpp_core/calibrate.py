"""Photometric calibration: sky cross-match and a robust zero point.

Model (magnitudes in the reference band's system, AB or Vega as the reference says)::

    m_ref = m_inst - k * X + ZP0 + C * colour

with ``m_inst = -2.5 log10(flux_ADU / exptime_s)``, ``k`` the extinction
coefficient from the profile (mag/airmass, positive), ``X`` the airmass and
``colour`` the reference catalogue colour (``C`` fitted only when asked).
``ZP0`` is the zero point above the atmosphere; ``zp = ZP0 - k X`` is the zero
point of this frame, so that ``m_cal = m_inst + zp (+ C colour)``.

Fit: weighted least squares with weights ``1 / (e_inst^2 + e_ref^2)``,
iterated with outlier rejection at ``clip_sigma`` times the MAD-based sigma
of the residuals (1.4826 MAD) until the set of calibrators stops changing.
The zero-point error is the formal error scaled by ``sqrt(chi2_red)`` when the
scatter exceeds the errors, and is added in quadrature to every calibrated
magnitude error: ``e_cal^2 = e_inst^2 + zp_err^2 (+ (colour e_C)^2)``.
Nothing is rounded before it is used.

:func:`calibrate` is the stage: sky match with the reference, then a fit for
every aperture (the calibration aperture's is the frame's zero point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from .errors import CalibrationError
from .products import Calibration, SourceCatalogue, ZeroPointFit
from .settings import CalibrationSettings


def crossmatch(src_ra, src_dec, ref_ra, ref_dec, radius_arcsec: float):
    """One-to-one sky match: pairs that are each other's nearest neighbour within the radius.

    All coordinates in deg (ICRS). Returns (idx_src, idx_ref, sep_arcsec) arrays.
    """
    src_ra = np.asarray(src_ra, float)
    src_dec = np.asarray(src_dec, float)
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    ok_src = np.flatnonzero(np.isfinite(src_ra) & np.isfinite(src_dec))
    if len(ok_src) == 0 or len(ref_ra) == 0:
        return empty
    src = SkyCoord(src_ra[ok_src] * u.deg, src_dec[ok_src] * u.deg)
    ref = SkyCoord(np.asarray(ref_ra, float) * u.deg, np.asarray(ref_dec, float) * u.deg)
    if len(ref) == 1 or len(src) == 1:
        sep = src.separation(ref[0]) if len(ref) == 1 else ref.separation(src[0])
        j = int(np.argmin(sep.arcsec))
        if sep.arcsec[j] > radius_arcsec:
            return empty
        return (np.array([ok_src[j if len(ref) == 1 else 0]]), np.array([0 if len(ref) == 1 else j]), np.array([sep.arcsec[j]]))
    i_ref, sep, _ = src.match_to_catalog_sky(ref)
    i_src_back, _, _ = ref.match_to_catalog_sky(src)
    k = np.arange(len(src))
    mutual = (i_src_back[i_ref] == k) & (sep.arcsec <= radius_arcsec)
    return ok_src[mutual], i_ref[mutual], sep.arcsec[mutual]


@dataclass
class ZeroPoint:
    """Result of :func:`fit_zero_point`. Magnitudes in mag; ``used``/``rejected`` index the inputs."""

    zp0: float  # above the atmosphere
    zp: float  # for this frame: zp0 - k * airmass
    zp_err: float
    color_coef: float = 0.0
    color_coef_err: float = 0.0
    extinction_k: float = 0.0
    airmass: float = 1.0
    n_used: int = 0
    n_rejected: int = 0
    rms: float = float("nan")  # robust (MAD) scatter of the used residuals
    chi2_red: float = float("nan")
    used: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # m_ref - model, all inputs


def _mad_sigma(x: np.ndarray) -> float:
    med = np.median(x)
    return 1.4826 * float(np.median(np.abs(x - med)))


def fit_zero_point(mag_inst, mag_inst_err, mag_ref, mag_ref_err, color=None, airmass: float | None = None,
                   settings: CalibrationSettings | None = None, usable=None, max_iter: int = 20) -> ZeroPoint:
    """Robust weighted fit of ``m_ref - m_inst + k X = ZP0 (+ C colour)``; see the module docstring.

    ``usable`` (bool array) preselects candidate calibrators; non-finite values are dropped.
    Raises :class:`CalibrationError` when fewer than ``settings.min_calibrators`` remain.
    """
    settings = settings or CalibrationSettings()
    mag_inst = np.asarray(mag_inst, float)
    n = len(mag_inst)
    e_inst = np.nan_to_num(np.asarray(mag_inst_err, float), nan=0.0)
    mag_ref = np.asarray(mag_ref, float)
    e_ref = np.nan_to_num(np.asarray(mag_ref_err, float), nan=0.0) if mag_ref_err is not None else np.zeros(n)
    color = np.asarray(color, float) if color is not None else np.full(n, np.nan)
    X = float(airmass) if airmass is not None and np.isfinite(airmass) else 1.0
    k = settings.extinction_k
    y = mag_ref - mag_inst + k * X
    ok = np.isfinite(y) & (np.ones(n, bool) if usable is None else np.asarray(usable, bool))
    fit_color = settings.color_term
    if fit_color:
        ok &= np.isfinite(color)
    if ok.sum() < settings.min_calibrators:
        raise CalibrationError(
            f"only {int(ok.sum())} usable calibrators (need {settings.min_calibrators}): widen calibration.mag_min/mag_max, "
            "check the band and the reference catalogue covers the field")
    # a floor on the errors keeps a few tiny-error bright stars from owning the fit
    var = e_inst**2 + e_ref**2 + 0.005**2
    used = ok.copy()
    for _ in range(max_iter):
        A = np.ones((used.sum(), 2 if fit_color else 1))
        if fit_color:
            A[:, 1] = color[used]
        w = 1.0 / var[used]
        AtW = A.T * w
        cov = np.linalg.inv(AtW @ A)
        coef = cov @ (AtW @ y[used])
        model = coef[0] + (coef[1] * np.nan_to_num(color) if fit_color else 0.0)
        resid = y - model
        sigma = max(_mad_sigma(resid[used]), 1e-4)
        new_used = ok & (np.abs(resid - np.median(resid[used])) <= settings.clip_sigma * sigma)
        if new_used.sum() < settings.min_calibrators:
            break
        if np.array_equal(new_used, used):
            break
        used = new_used
    dof = max(int(used.sum()) - len(coef), 1)
    chi2_red = float(np.sum(resid[used] ** 2 / var[used]) / dof)
    scale = np.sqrt(max(chi2_red, 1.0))
    errs = np.sqrt(np.diag(cov)) * scale
    zp0 = float(coef[0])
    return ZeroPoint(
        zp0=zp0, zp=zp0 - k * X, zp_err=float(errs[0]),
        color_coef=float(coef[1]) if fit_color else 0.0,
        color_coef_err=float(errs[1]) if fit_color else 0.0,
        extinction_k=k, airmass=X, n_used=int(used.sum()), n_rejected=int((ok & ~used).sum()),
        rms=_mad_sigma(resid[used]), chi2_red=chi2_red, used=used, rejected=ok & ~used,
        residuals=resid,
    )


def apply_zero_point(mag_inst, mag_inst_err, zp: ZeroPoint, color=None):
    """Calibrated magnitudes and errors: ``m_inst + zp (+ C colour)``, errors in quadrature.

    With a colour term, sources without a known colour get ``nan``.
    """
    mag_inst = np.asarray(mag_inst, float)
    err = np.asarray(mag_inst_err, float)
    mag = mag_inst + zp.zp
    var = err**2 + zp.zp_err**2
    if zp.color_coef or zp.color_coef_err:
        c = np.asarray(color, float) if color is not None else np.full(len(mag), np.nan)
        mag = mag + zp.color_coef * c
        var = var + (c * zp.color_coef_err) ** 2
    return mag, np.sqrt(var)


def match_radius_arcsec(fwhm_px: float, pixel_scale: float | None, settings: CalibrationSettings,
                        astrometric_rms_arcsec: float = 0.0) -> float:
    """Match radius: ``match_radius_fwhm`` x FWHM, at least the floor and 3x the astrometric RMS."""
    scale = pixel_scale or 1.0
    return float(max(settings.match_radius_fwhm * fwhm_px * scale, settings.match_radius_min_arcsec,
                     3.0 * astrometric_rms_arcsec))


def calibrate(catalogue: SourceCatalogue, reference: Table, settings: CalibrationSettings, *, airmass: float | None,
              fwhm_px: float, pixel_scale: float | None, astrometric_rms_arcsec: float = 0.0
              ) -> tuple[SourceCatalogue, Calibration]:
    """Match the catalogue to the reference on the sky and fit a zero point for every aperture.

    Parameters
    ----------
    catalogue : SourceCatalogue
        Sources with ``ra``/``dec`` (deg), per-aperture ``mag_<L>``, ``magerr_<L>``,
        ``flag_<L>`` (and ``psf_mag``... when PSF photometry ran); ``apertures``
        says which label calibrates.
    reference : Table
        A reference table (:mod:`rpp_core.catalogs.reference`): ``ra``, ``dec``,
        ``mag``, ``mag_err``, ``color``, ``ref_id``; ``meta`` band, system, source.
    settings : CalibrationSettings
        Match radius, magnitude range, clipping, extinction, colour term.
    airmass, fwhm_px, pixel_scale, astrometric_rms_arcsec
        For the extinction term and the match radius (:func:`match_radius_arcsec`).

    Returns
    -------
    (SourceCatalogue, Calibration)
        A copy of the catalogue with ``ref_id``, ``ref_sep_arcsec``, ``mag_ref``,
        ``mag_ref_err``, ``ref_color``, ``mag_cal_<L>``/``magerr_cal_<L>`` for each
        aperture that could be fitted (and ``psf``), ``calib_used``,
        ``calib_rejected``, ``calib_residual``, ``zp``, ``zp_err``, ``airmass``;
        and the :class:`~rpp_core.products.Calibration` of the calibration aperture.
        Only candidates with a reference magnitude in ``[mag_min, mag_max]``, flag
        0 in that aperture and a finite magnitude enter a fit.

    Raises
    ------
    CalibrationError
        No calibrator in the magnitude range, or too few for the calibration
        aperture (other apertures are then left uncalibrated, said in ``skipped``).
    """
    apertures = catalogue.apertures
    cat = catalogue.table.copy(copy_data=False)
    radius = match_radius_arcsec(fwhm_px, pixel_scale, settings, astrometric_rms_arcsec)
    i_src, i_ref, sep = crossmatch(cat["ra"], cat["dec"], reference["ra"], reference["dec"], radius)
    n = len(cat)
    mag_ref = np.full(n, np.nan)
    mag_ref_err = np.full(n, np.nan)
    color = np.full(n, np.nan)
    ref_id = np.full(n, "", dtype=object)
    ref_sep = np.full(n, np.nan)
    mag_ref[i_src] = reference["mag"][i_ref]
    mag_ref_err[i_src] = reference["mag_err"][i_ref]
    color[i_src] = reference["color"][i_ref]
    ref_id[i_src] = np.asarray(reference["ref_id"]).astype(str)[i_ref]
    ref_sep[i_src] = sep
    cat["ref_id"] = ref_id.astype(str)
    cat["ref_sep_arcsec"] = ref_sep
    cat["mag_ref"] = mag_ref
    cat["mag_ref_err"] = mag_ref_err
    cat["ref_color"] = color
    in_range = (mag_ref >= settings.mag_min) & (mag_ref <= settings.mag_max)
    if not in_range.any():
        raise CalibrationError(
            f"no calibrators: {len(i_src)} sources matched the reference within {radius:.1f}\" but none with "
            f"{settings.band} between {settings.mag_min} and {settings.mag_max} (calibration.mag_min/mag_max)")

    labels = list(apertures.labels) + (["psf"] if "psf_mag" in cat.colnames else [])
    fits: dict[str, ZeroPointFit] = {}
    skipped: dict[str, str] = {}
    main = None
    for label in labels:
        mcol, ecol, fcol = (("psf_mag", "psf_magerr", "psf_flag") if label == "psf"
                            else (f"mag_{label}", f"magerr_{label}", f"flag_{label}"))
        mi = np.asarray(cat[mcol], float)
        ei = np.asarray(cat[ecol], float)
        flags = np.asarray(cat[fcol]) if fcol in cat.colnames else np.zeros(n, int)
        usable = in_range & (flags == 0) & np.isfinite(mi)
        try:
            zp = fit_zero_point(mi, ei, mag_ref, mag_ref_err, color, airmass, settings, usable=usable)
        except CalibrationError as exc:
            if label == apertures.calibration:
                raise
            skipped[label] = str(exc)
            continue
        mc, ec = apply_zero_point(mi, ei, zp, color)
        cat[f"mag_cal_{label}"] = mc
        cat[f"magerr_cal_{label}"] = ec
        fits[label] = ZeroPointFit(zp=zp.zp, zp_err=zp.zp_err, zp0=zp.zp0, n=zp.n_used, rms=zp.rms)
        if label == apertures.calibration:
            main = zp
    cat["calib_used"] = main.used
    cat["calib_rejected"] = main.rejected
    cat["calib_residual"] = np.where(main.used | main.rejected, main.residuals, np.nan)
    cat["zp"] = np.full(n, main.zp)
    cat["zp_err"] = np.full(n, main.zp_err)
    cat["airmass"] = np.full(n, main.airmass)
    calibration = Calibration(
        label=apertures.calibration, band=settings.band, reference=str(reference.meta.get("source", "")),
        reference_system=str(reference.meta.get("system", "")), match_radius_arcsec=radius,
        extinction_k=settings.extinction_k, zp=main.zp, zp_err=main.zp_err, zp0=main.zp0, zp_rms=main.rms,
        n_calibrators=main.n_used, n_rejected=main.n_rejected, color_coef=main.color_coef,
        color_coef_err=main.color_coef_err, airmass=main.airmass, n_matched=len(i_src), by_aperture=fits,
        skipped=skipped, source=f"fit to {reference.meta.get('source') or 'the reference catalogue'}")
    return catalogue.with_table(cat), calibration


def header_calibration(catalogue: SourceCatalogue, zero_point, *, airmass: float | None = None
                       ) -> tuple[SourceCatalogue, Calibration]:
    """Calibrate with a zero point the header gives, when there is no reference catalogue (issue 9).

    ``zero_point`` is an :class:`rpp_core.image.units.HeaderZeroPoint`, in rpp's
    convention (``m_cal = m_inst + zp``). The same zero point serves every aperture
    (and ``psf``): it is for pixel sums, so a small aperture's calibrated magnitude
    misses the light outside it (no aperture correction). ``magerr_cal^2 = magerr^2 +
    zp_err^2`` when the header gives an error (``zp_err`` NaN otherwise). The
    :class:`~rpp_core.products.Calibration` has no calibrators, ``source`` names the
    header keyword and ``reference_system`` its system when known.
    """
    apertures = catalogue.apertures
    cat = catalogue.table.copy(copy_data=False)
    zp = float(zero_point.zp)
    zp_err = float(zero_point.zp_err) if zero_point.zp_err is not None else float("nan")
    labels = list(apertures.labels) + (["psf"] if "psf_mag" in cat.colnames else [])
    fits: dict[str, ZeroPointFit] = {}
    shift = ZeroPoint(zp0=zp, zp=zp, zp_err=float(np.nan_to_num(zp_err)))  # no colour term, no airmass
    for label in labels:
        mcol, ecol = ("psf_mag", "psf_magerr") if label == "psf" else (f"mag_{label}", f"magerr_{label}")
        cat[f"mag_cal_{label}"], cat[f"magerr_cal_{label}"] = apply_zero_point(cat[mcol], cat[ecol], shift)
        fits[label] = ZeroPointFit(zp=zp, zp_err=zp_err, zp0=zp, n=0, rms=float("nan"))
    n = len(cat)
    cat["zp"] = np.full(n, zp)
    cat["zp_err"] = np.full(n, zp_err)
    x = float(airmass) if airmass is not None else float("nan")
    calibration = Calibration(
        label=apertures.calibration, band="", reference=zero_point.source, reference_system=zero_point.system,
        match_radius_arcsec=float("nan"), extinction_k=0.0, zp=zp, zp_err=zp_err, zp0=zp, zp_rms=float("nan"),
        n_calibrators=0, n_rejected=0, color_coef=0.0, color_coef_err=0.0, airmass=x, by_aperture=fits,
        source=zero_point.source, header_zp=zero_point.to_dict())
    return catalogue.with_table(cat), calibration
