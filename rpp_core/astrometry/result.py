"""What a solver or the refinement hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

from astropy.wcs import WCS


@dataclass
class SolveResult:
    """A WCS and how good it is.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS, pixel origin as usual for astropy (``all_pix2world(x, y, 0)``
        takes 0-based pixels). ``wcs.pixel_shape`` is ``(nx, ny)`` when known.
    rms_arcsec : float
        RMS of the sky separations of the matched stars, arcsec (nan if unknown).
    n_matched : int
        Stars matched between the detections and the reference (or solver index).
    method : str
        What produced the WCS, e.g. ``"astrometry.net (hinted)"``,
        ``"refine TAN-SIP 2"``, ``"kept original"``.
    log : list of str
        Human-readable lines for the run log.
    pixel_scale : float
        Pixel scale of the WCS, arcsec/px (:func:`rpp_core.image.pixscale.wcs_pixel_scale`:
        sqrt |det CD|); nan when unknown.
    elapsed_s : float
        Wall-clock time spent, s.
    """

    wcs: WCS
    rms_arcsec: float
    n_matched: int
    method: str
    log: list[str] = field(default_factory=list)
    pixel_scale: float = float("nan")
    elapsed_s: float = 0.0


class SolveTrail(list):
    """The lines saying what the solvers tried (a list of str), how many solver runs started, and advice.

    ``advice``: what would let the frame solve, when a solver saw that nothing it
    has could (for example which index file to get); '' otherwise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0
        self.advice = ""
