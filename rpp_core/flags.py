"""Quality flag bits of the catalogue: one table, so a bit always means the same thing.

Each bit is set by the stage named; the per-aperture ``flag_<L>`` columns, the
overall ``flags`` column (detection flags OR-ed with the calibration aperture's)
and ``psf_flag`` all use these bits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    bit: int
    name: str
    meaning: str


FLAGS: tuple[Flag, ...] = (
    Flag(1, "masked", "a masked, NaN or cosmic-ray pixel in the aperture (detection: within 1 FWHM)"),
    Flag(2, "saturated", "a saturated pixel in the aperture (detection: within 1 FWHM)"),
    Flag(4, "edge", "aperture cut by the frame edge, or the source within border_px + 1 FWHM of it"),
    Flag(8, "annulus", "local background annulus unreliable (fewer than max(10, 25 %) of its pixels left)"),
    Flag(16, "nonpositive", "non-positive flux: no magnitude"),
    Flag(32, "crowded", "another source's centre inside the aperture"),
    Flag(64, "psf_failed", "PSF fit failed or not attempted (psf_flag only)"),
)

FLAG_MASKED = 1
FLAG_SATURATED = 2
FLAG_EDGE = 4
FLAG_ANNULUS = 8
FLAG_NONPOSITIVE = 16
FLAG_CROWDED = 32
FLAG_PSF_FAILED = 64


def describe(value: int) -> list[str]:
    """The names of the bits set in ``value``, e.g. ``describe(6) == ["saturated", "edge"]``."""
    return [f.name for f in FLAGS if int(value) & f.bit]
