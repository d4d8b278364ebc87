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
:mod:`.keywords` (keyword value parsers).
"""

from .companions import NoiseMap, PixelWeights, load_pixel_weights, noise_map
from .header import pixel_scale_from_wcs, repair_header, wcs_from_header
from .keywords import parse_date
from ..products import ExposureValues, Frame, ObservationMeta
from .load import load_frame
from .metadata import compute_airmass, exposure_values, header_metadata, read_metadata
from .raw import RawLayout
from .summary import header_summary
from .units import EffectiveGain, GainSource, HeaderZeroPoint, HeaderZeroPoints, ImageUnits, UnitKind

__all__ = [
    "EffectiveGain",
    "ExposureValues",
    "Frame",
    "GainSource",
    "HeaderZeroPoint",
    "HeaderZeroPoints",
    "ImageUnits",
    "NoiseMap",
    "ObservationMeta",
    "PixelWeights",
    "RawLayout",
    "UnitKind",
    "compute_airmass",
    "exposure_values",
    "header_summary",
    "load_frame",
    "load_pixel_weights",
    "noise_map",
    "parse_date",
    "pixel_scale_from_wcs",
    "header_metadata",
    "read_metadata",
    "repair_header",
    "wcs_from_header",
]
