"""What is known about a frame before solving it: pointing and pixel-scale hints, each with its origin.

A frame is solved because its header WCS is missing or failed its check, so
nothing in the header is trusted blindly: the WCS's pixel scale, ``PIXSCALE``,
the plate scale, pixel size over focal length are each one hint. Hints that may
describe the camera at another binning (a WCS that failed its check, pixel size
and focal length) also stand for 2, 3 and 4 times their value: a header written
for the unbinned camera is the common way for them to be wrong. The solver
tries the range that covers every hint.

Pixel scales in arcsec/px, positions ICRS degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..image.pixscale import header_optics_pixel_scale, keyword_pixel_scale, plate_scan_pixel_scale, wcs_pixel_scale

#: largest binning factor a header may have left out
MAX_BINNING = 4
#: hints closer than this (relative) are the same hint
_SAME = 0.01


@dataclass(frozen=True)
class ScaleHint:
    """One pixel-scale hint.

    ``binning_unknown``: the value may describe the unbinned camera, so the
    frame's scale may be up to :data:`MAX_BINNING` times larger.
    """

    arcsec_per_px: float
    source: str
    binning_unknown: bool = False

    def describe(self) -> str:
        extra = f" (x1-{MAX_BINNING}: binning not known)" if self.binning_unknown else ""
        return f"{self.arcsec_per_px:.4g}\"/px from {self.source}{extra}"


@dataclass
class SolveHints:
    """Pointing and pixel-scale hints for the plate solver.

    Attributes
    ----------
    ra, dec : float or None
        Pointing, ICRS deg.
    position_source : str
        Where the pointing came from.
    scales : list of ScaleHint
    """

    ra: float | None = None
    dec: float | None = None
    position_source: str = ""
    scales: list[ScaleHint] = field(default_factory=list)

    @property
    def has_position(self) -> bool:
        return self.ra is not None and self.dec is not None and math.isfinite(self.ra) and math.isfinite(self.dec)

    def scale_range(self, tolerance: float) -> tuple[float, float] | None:
        """Pixel scales (arcsec/px) covering every hint, ``tolerance`` (relative) beyond; None without hints."""
        if not self.scales:
            return None
        lo = min(h.arcsec_per_px for h in self.scales)
        hi = max(h.arcsec_per_px * (MAX_BINNING if h.binning_unknown else 1) for h in self.scales)
        return lo * (1.0 - tolerance), hi * (1.0 + tolerance)

    def describe_scales(self) -> str:
        return "; ".join(h.describe() for h in self.scales) or "no pixel-scale hint"

    def describe_position(self) -> str:
        if not self.has_position:
            return "no pointing"
        return f"RA {self.ra:.4f} Dec {self.dec:+.4f}" + (f" from {self.position_source}" if self.position_source else "")

    def add_scale(self, value, source: str, binning_unknown: bool = False) -> None:
        """Add a hint unless it is not a usable scale or repeats one already there (the first source wins)."""
        if value is None or not math.isfinite(value) or not 0 < value < 3600:
            return
        for k, h in enumerate(self.scales):
            if abs(h.arcsec_per_px / value - 1.0) < _SAME:
                if binning_unknown and not h.binning_unknown:
                    self.scales[k] = ScaleHint(h.arcsec_per_px, h.source, True)
                return
        self.scales.append(ScaleHint(float(value), source, binning_unknown))

    @classmethod
    def from_meta(cls, meta) -> "SolveHints":
        """Hints from :class:`~rpp_core.image.ObservationMeta` alone, its pixel scale taken as it is."""
        hints = cls()
        hints._position_from(meta)
        scale = getattr(meta, "pixel_scale", None) if meta is not None else None
        hints.add_scale(scale, _source(meta, "pixel_scale"))
        return hints

    def _position_from(self, meta) -> None:
        ra, dec = (getattr(meta, "ra", None), getattr(meta, "dec", None)) if meta is not None else (None, None)
        if ra is not None and dec is not None:
            self.ra, self.dec = float(ra), float(dec)
            self.position_source = _source(meta, "ra", "")


def _source(meta, key: str, default: str = "the observation metadata") -> str:
    return (getattr(meta, "sources", None) or {}).get(key, default)


def solve_hints(frame, meta, trust_wcs_scale: bool = False) -> SolveHints:
    """Every pointing and pixel-scale hint of a frame that is about to be solved.

    Parameters
    ----------
    frame : rpp_core.image.Frame
        Uses ``header``, ``wcs`` (its scale is one hint whatever its status) and ``wcs_status``.
    meta : rpp_core.image.ObservationMeta
        ``ra``, ``dec`` and ``pixel_scale`` with their ``sources``.
    trust_wcs_scale : bool
        Take the header WCS's scale as it is (a WCS that passed its check, e.g.
        when sizing index files for frames); by default it may be a binning factor off.

    Returns
    -------
    SolveHints
        Scales from the header WCS and from pixel size over focal length may be a
        binning factor off (``binning_unknown``); ``PIXSCALE``-like keywords and
        the plate scale of a plate scan are taken as written.
    """
    hints = SolveHints()
    hints._position_from(meta)
    header = getattr(frame, "header", None)
    wcs = getattr(frame, "wcs", None)
    status = str(getattr(frame, "wcs_status", "") or "")
    if wcs is not None:
        hints.add_scale(wcs_pixel_scale(wcs), "the header WCS" + (f" ({status})" if status and status != "ok" else ""),
                        not trust_wcs_scale)
    if header is not None:
        hints.add_scale(*keyword_pixel_scale(header))
        hints.add_scale(*plate_scan_pixel_scale(header))
        scale, src = header_optics_pixel_scale(header)
        hints.add_scale(scale, src, True)
    scale = getattr(meta, "pixel_scale", None) if meta is not None else None
    if scale:
        source = _source(meta, "pixel_scale")
        # the profile's pixel size and focal length say nothing about this frame's binning either
        unsure = any(w in source for w in ("XPIXSZ", "pixel_size", "focal")) or ("WCS" in source and not trust_wcs_scale)
        hints.add_scale(scale, source, unsure)
    return hints
