"""Synthetic frames with injected stars: truth for tests, the benchmark and the sample.

Stars are Moffat profiles integrated over pixels (sub-pixel sampling), on a
sky with a gentle gradient, with Poisson noise (gain), read noise, cosmic-ray
hits and a few saturated stars. Everything follows from ``seed``.

Photometric model (the one :mod:`rpp_core.calibrate` inverts)::

    flux_e = exptime * 10**(-0.4 * (mag + color_term * color - zp0 + k * airmass))   [electrons]
    flux_adu = flux_e / gain

so ``mag = -2.5 log10(flux_adu / exptime) + zp_adu - k X ...`` with
``zp_adu = zp0 - 2.5 log10(gain)``. Pixel coordinates in truth tables are
0-based (numpy / photutils convention); FITS CRPIX is 1-based as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS


def moffat_alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(r: np.ndarray | float, fwhm: float, beta: float) -> np.ndarray:
    """Fraction of a Moffat profile's total flux inside radius ``r`` (px)."""
    alpha = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (np.asarray(r) / alpha) ** 2) ** (1.0 - beta)


@dataclass
class SyntheticFrame:
    data: np.ndarray
    header: fits.Header
    wcs: WCS
    truth: Table  # x, y (0-based px), ra, dec (deg), mag, color, flux (ADU, total), saturated
    refcat: Table  # ra, dec, <band>, <band>_err, BP, RP: a reference catalogue of the truth
    params: dict = field(default_factory=dict)

    def write(self, path, compress: bool = False) -> None:
        hdu = fits.PrimaryHDU(self.data, header=self.header)
        if compress:
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(self.data, header=self.header)]).writeto(path, overwrite=True)
        else:
            hdu.writeto(path, overwrite=True)

    def write_refcat(self, path, **kw) -> None:
        self.refcat.write(path, overwrite=True, **kw)


def render_moffat(shape, x, y, flux, fwhm, beta, half=None, oversample=3, out=None):
    """Add pixel-integrated Moffat stars to ``out`` (float64). x, y are 0-based pixel centres."""
    ny, nx = shape
    if out is None:
        out = np.zeros(shape, dtype=np.float64)
    alpha = moffat_alpha(fwhm, beta)
    if half is None:
        half = int(np.ceil(7 * fwhm))
    size = 2 * half + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    norm = (beta - 1.0) / (np.pi * alpha**2) / oversample**2
    for xi, yi, fi in zip(x, y, flux):
        ix, iy = int(np.round(xi)), int(np.round(yi))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xi
        gy = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - yi
        r2 = gy[:, None] ** 2 + gx[None, :] ** 2
        prof = (1.0 + r2 / alpha**2) ** (-beta) * norm
        prof = prof.reshape(y1 - y0, oversample, x1 - x0, oversample).sum(axis=(1, 3))
        out[y0:y1, x0:x1] += fi * prof
    del size
    return out


def make_frame(
    shape=(1024, 1024),
    n_stars=400,
    fwhm=3.5,
    beta=3.0,
    seed=42,
    mag_range=(12.0, 19.5),
    zp0=25.0,
    extinction_k=0.0,
    airmass=1.0,
    color_term=0.0,
    exptime=60.0,
    gain=1.5,
    read_noise=5.0,
    sky=300.0,
    saturation=60000.0,
    n_cosmics=60,
    n_saturated=3,
    ra0=150.0,
    dec0=20.0,
    pixscale=1.0,
    rotation_deg=0.0,
    band="G",
    border=15,
    min_separation=0.0,
    date_obs="2025-01-02T03:04:05",
    site=(28.7606, -17.8792, 2332.0),
    filter_name="G",
    write_airmass=True,
    dtype=np.float32,
) -> SyntheticFrame:
    """Make a synthetic frame; see the module docstring for the photometric model.

    ``pixscale`` is in arcsec/px, ``rotation_deg`` rotates the sky on the detector.
    ``min_separation`` (px) keeps injected stars apart when > 0.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(border, nx - 1 - border, n_stars * 3)
    y = rng.uniform(border, ny - 1 - border, n_stars * 3)
    if min_separation > 0:
        keep_x, keep_y = [], []
        for xi, yi in zip(x, y):
            if keep_x and np.min(np.hypot(np.array(keep_x) - xi, np.array(keep_y) - yi)) < min_separation:
                continue
            keep_x.append(xi)
            keep_y.append(yi)
            if len(keep_x) == n_stars:
                break
        x, y = np.array(keep_x), np.array(keep_y)
    x, y = x[:n_stars], y[:n_stars]
    n = len(x)
    # magnitudes from a rising number count: more faint stars than bright ones
    u = rng.uniform(0, 1, n)
    lo, hi = mag_range
    slope = 0.3 * np.log(10)
    mag = lo + np.log1p(u * (np.exp(slope * (hi - lo)) - 1)) / slope
    color = rng.normal(0.8, 0.35, n)
    flux_e = exptime * 10 ** (-0.4 * (mag + color_term * color - zp0 + extinction_k * airmass))
    flux_adu = flux_e / gain

    saturated = np.zeros(n, bool)
    if n_saturated:
        # make the first few stars very bright: their peaks will clip
        idx = np.arange(min(n_saturated, n))
        alpha = moffat_alpha(fwhm, beta)
        peak_per_flux = (beta - 1) / (np.pi * alpha**2)
        flux_adu[idx] = 3.0 * saturation / peak_per_flux
        mag[idx] = -2.5 * np.log10(flux_adu[idx] * gain / exptime) + zp0 - extinction_k * airmass - color_term * color[idx]
        saturated[idx] = True

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    sky_map = sky * (1.0 + 0.05 * (xx / nx) - 0.03 * (yy / ny))
    model = render_moffat(shape, x, y, flux_adu, fwhm, beta)
    model += sky_map
    electrons = rng.poisson(np.clip(model * gain, 0, None)).astype(np.float64)
    image = electrons / gain + rng.normal(0.0, read_noise / gain, shape)

    # cosmic rays: short bright tracks of 1-4 pixels
    cr_mask = np.zeros(shape, bool)
    for _ in range(n_cosmics):
        cx, cy = rng.integers(5, nx - 5), rng.integers(5, ny - 5)
        length = rng.integers(1, 5)
        dx, dy = rng.choice([-1, 0, 1]), rng.choice([0, 1])
        amp = rng.uniform(500, 5000)
        for i in range(length):
            px, py = cx + i * dx, cy + i * dy
            image[py, px] += amp
            cr_mask[py, px] = True
    image = np.minimum(image, saturation)

    w = WCS(naxis=2)
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.crval = [ra0, dec0]
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    s = pixscale / 3600.0
    th = np.deg2rad(rotation_deg)
    w.wcs.cd = np.array([[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]])
    ra, dec = w.all_pix2world(x, y, 0)

    hdr = fits.Header()
    hdr.update(w.to_header())
    hdr["DATE-OBS"] = date_obs
    hdr["EXPTIME"] = exptime
    hdr["FILTER"] = filter_name
    hdr["GAIN"] = (gain, "e-/ADU")
    hdr["RDNOISE"] = (read_noise, "e-")
    hdr["SATURATE"] = saturation
    hdr["SITELAT"] = site[0]
    hdr["SITELONG"] = site[1]
    hdr["SITEELEV"] = site[2]
    hdr["RA"] = ra0
    hdr["DEC"] = dec0
    hdr["OBJECT"] = "SYNTH"
    if write_airmass:
        hdr["AIRMASS"] = airmass

    truth = Table(
        {"x": x, "y": y, "ra": ra, "dec": dec, "mag": mag, "color": color, "flux": flux_adu, "saturated": saturated}
    )
    truth.meta.update({"fwhm": fwhm, "beta": beta, "zp0": zp0, "gain": gain})
    merr = np.full(n, 0.005)
    bp = mag + 0.5 * color
    rp = bp - color
    refcat = Table(
        {
            "source_id": np.arange(1, n + 1, dtype=np.int64),
            "ra": ra,
            "dec": dec,
            band: mag,
            f"{band}_err": merr,
            "BP": bp,
            "RP": rp,
        }
    )
    params = dict(
        shape=shape, n_stars=n, fwhm=fwhm, beta=beta, seed=seed, zp0=zp0, extinction_k=extinction_k,
        airmass=airmass, color_term=color_term, exptime=exptime, gain=gain, read_noise=read_noise,
        sky=sky, saturation=saturation, band=band, cosmic_mask=cr_mask,
    )
    return SyntheticFrame(image.astype(dtype), hdr, w, truth, refcat, params)
