"""A second synthetic frame, made independently of :mod:`rpp_core.synthetic`.

The rpp-vs-photutils comparison uses ``rpp_core.synthetic.make_frame`` (the
generator rpp's tests are tuned on). For the comparison with SExtractor and
stdpipe the benchmark also needs a frame rpp has never seen: another renderer,
another PSF shape, another flux law, another seed. This one:

- renders stars with photutils ``make_model_image`` and ``MoffatPSF``
  (beta 2.5, FWHM 3.0 px), pixel-integrated by 4 x 4 sub-sampling;
- draws positions uniformly and fluxes from a power law
  (dN/dF ~ F^-1.8 between 600 and 3e5 ADU) with ``numpy`` seed 20261201;
- adds a sky of 150 ADU with a slow sinusoidal ripple (+-2 %), Poisson noise
  at gain 2.0 e-/ADU (``photutils.datasets.apply_poisson_noise``) and
  Gaussian read noise of 4 e-; no cosmic rays, clipped at 65535 ADU;
- writes a TAN WCS (0.8"/px) and GAIN/RDNOISE/SATURATE/EXPTIME in the header.

Truth (``x``, ``y`` 0-based, ``flux`` total ADU) goes to ``truth_b.ecsv``;
``enclosed(r)`` gives the fraction of a star's flux inside radius ``r`` for
this very renderer (measured on noise-free single stars, so no analytic
profile of ours is trusted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FWHM = 3.0
BETA = 2.5
GAIN = 2.0
READ_NOISE = 4.0
SKY = 150.0
SEED = 20261201
OVERSAMPLE = 4


def _alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _model():
    from photutils.psf import MoffatPSF

    return MoffatPSF(alpha=_alpha(FWHM, BETA), beta=BETA)


def _render(shape, x, y, flux) -> np.ndarray:
    from astropy.table import Table
    from photutils.datasets import make_model_image

    params = Table({"x_0": x, "y_0": y, "flux": flux})
    # 41 px box: beyond 6.8 FWHM a beta-2.5 Moffat holds < 1 % of the light
    return make_model_image(shape, _model(), params, model_shape=(41, 41),
                            discretize_method="oversample", discretize_oversample=OVERSAMPLE)


def enclosed(radius: float, n: int = 16) -> float:
    """Fraction of the rendered (41 px box) flux inside ``radius`` px, averaged over sub-pixel phases."""
    import sep_x

    rng = np.random.default_rng(1)
    xs = 32 + rng.uniform(-0.5, 0.5, n)
    ys = 32 + rng.uniform(-0.5, 0.5, n)
    fr = []
    for xi, yi in zip(xs, ys):
        img = _render((65, 65), np.array([xi]), np.array([yi]), np.array([1.0])).astype(np.float32)
        s, _, _ = sep_x.sum_circle(img, np.array([xi]), np.array([yi]), radius, subpix=5)
        fr.append(float(s[0]))
    return float(np.mean(fr))


def make_frame_b(out: Path, size: int = 4096, n_stars: int = 6000) -> dict:
    """Write ``frame_b.fits`` and ``truth_b.ecsv`` into ``out``; returns the parameters."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS
    from photutils.datasets import apply_poisson_noise

    rng = np.random.default_rng(SEED)
    ny = nx = size
    x = rng.uniform(8, nx - 9, n_stars)
    y = rng.uniform(8, ny - 9, n_stars)
    # power law dN/dF ~ F^-a by inverse transform
    a, f0, f1 = 1.8, 600.0, 3e5
    u = rng.uniform(0, 1, n_stars)
    flux = (f0 ** (1 - a) + u * (f1 ** (1 - a) - f0 ** (1 - a))) ** (1 / (1 - a))
    image = _render((ny, nx), x, y, flux)
    yy, xx = np.mgrid[0:ny, 0:nx]
    image += SKY * (1.0 + 0.02 * np.sin(2 * np.pi * xx / nx) * np.cos(np.pi * yy / ny))
    del xx, yy
    image = apply_poisson_noise(image * GAIN, seed=SEED + 1) / GAIN
    image += rng.normal(0.0, READ_NOISE / GAIN, image.shape)
    image = np.minimum(image, 65535.0).astype(np.float32)

    w = WCS(naxis=2)
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.crval = [210.5, -12.25]
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    s = 0.8 / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    hdr = w.to_header()
    hdr.update({"EXPTIME": 30.0, "GAIN": GAIN, "RDNOISE": READ_NOISE, "SATURATE": 65535.0,
                "FILTER": "R", "DATE-OBS": "2026-03-04T05:06:07", "OBJECT": "SYNTH-B"})
    out.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(image, header=hdr).writeto(out / "frame_b.fits", overwrite=True)
    Table({"x": x, "y": y, "flux": flux}, meta={"fwhm": FWHM, "beta": BETA, "seed": SEED}).write(
        out / "truth_b.ecsv", overwrite=True)
    return {"size": size, "n_stars": n_stars, "fwhm": FWHM, "beta": BETA, "seed": SEED}
