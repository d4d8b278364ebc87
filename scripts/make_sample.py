"""Regenerate the bundled sample frame and its offline reference catalogue.

The sample is a synthetic 768x768 uint16 frame (as a camera writes it) with
injected Moffat stars, a TAN WCS, a realistic header, and the matching
reference catalogue in Gaia-like columns. Deterministic (fixed seed)::

    python scripts/make_sample.py
"""

from pathlib import Path

import numpy as np
from astropy.io import fits

from rpp_core.synthetic import make_frame

DATA = Path(__file__).resolve().parents[1] / "rpp_core" / "data"


def main() -> None:
    fr = make_frame(shape=(768, 768), n_stars=350, fwhm=3.2, seed=2026, zp0=24.5, extinction_k=0.15,
                    airmass=1.25, exptime=120.0, gain=1.6, read_noise=6.0, sky=450.0, saturation=65000.0,
                    n_cosmics=40, n_saturated=2, ra0=132.84, dec0=11.80, pixscale=1.1, rotation_deg=0.7,
                    date_obs="2026-01-15T22:41:07", filter_name="G", mag_range=(11.5, 19.0))
    data = np.clip(np.round(fr.data), 0, 65535).astype(np.uint16)
    hdr = fr.header.copy()
    hdr["OBJECT"] = "RPP sample (synthetic)"
    hdr["TELESCOP"] = "RPP synthetic 0.5m"
    hdr["INSTRUME"] = "SYNTHCAM"
    hdr["COMMENT"] = "Synthetic frame made by scripts/make_sample.py; truth in the reference catalogue."
    # astropy stores uint16 as BITPIX=16 with BZERO=32768, as cameras do
    hdu = fits.PrimaryHDU(data, header=hdr)
    hdu.writeto(DATA / "sample_frame.fits.gz", overwrite=True)
    ref = fr.refcat
    rng = np.random.default_rng(7)
    ref["G"] = ref["G"] + rng.normal(0, 0.01, len(ref))  # a real catalogue is not perfect
    ref["G_err"][:] = 0.01
    ref.meta["system"] = "Vega"
    ref.meta["comment"] = "synthetic reference for the bundled sample frame"
    ref.write(DATA / "sample_refcat.ecsv", overwrite=True)
    print(f"wrote {DATA / 'sample_frame.fits.gz'} and {DATA / 'sample_refcat.ecsv'}")


if __name__ == "__main__":
    main()
