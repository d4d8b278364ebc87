"""FITS frames: loading, header repair, observation metadata, the browser's quick look.

Conventions
-----------
- ``Frame.data`` is float32, 2-D, physical values (BSCALE/BZERO applied,
  BLANK pixels set to NaN), indexed ``data[y, x]`` with 0-based pixels.
- Sky coordinates are ICRS degrees; pixel scale in arcsec/px; times are
  :class:`astropy.time.Time` in UTC; exposure in seconds; site as
  :class:`astropy.coordinates.EarthLocation` (longitude east positive).

Modules: :mod:`.load` (file checks, HDU choice, scaling), :mod:`.raw`
(overscan, trim, amplifier assembly of raw frames), :mod:`.header`
(repair, WCS validity), :mod:`.metadata` (observation facts and their
fallbacks), :mod:`.units` (units, effective gain, header zero points),
:mod:`.companions` (weight maps and masks beside the image),
:mod:`.summary` (header facts for the file browser),
:mod:`.pixscale` (pixel scales from the WCS, keywords and optics),
:mod:`.keywords` (keyword value parsers).
"""

import importlib

#: public name -> the submodule defining it; imported on first use (PEP 562), so that
#: ``from rpp_core.image import header_summary`` (the file browser, preflight) does not
#: import scipy.ndimage and astropy.coordinates with the loader and metadata modules
_WHERE = {
    "NoiseMap": ".companions", "PixelWeights": ".companions", "load_pixel_weights": ".companions",
    "noise_map": ".companions", "repair_header": ".header",
    "wcs_from_header": ".header", "parse_date": ".keywords", "ExposureValues": "..products",
    "Frame": "..products", "ObservationMeta": "..products", "load_frame": ".load",
    "compute_airmass": ".metadata", "exposure_values": ".metadata", "header_metadata": ".metadata",
    "read_metadata": ".metadata", "RawLayout": ".raw", "header_summary": ".summary",
    "EffectiveGain": ".units", "GainSource": ".units", "HeaderZeroPoint": ".units",
    "HeaderZeroPoints": ".units", "ImageUnits": ".units", "UnitKind": ".units",
    "wcs_pixel_scale": ".pixscale",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_WHERE)
