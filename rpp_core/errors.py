"""Errors a user can act on, each with its documented exit code.

Every error names the file, the keyword or value at fault and what to do.
The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``.

=====  ==========================================================
code   meaning
=====  ==========================================================
0      success
1      unexpected internal error (a bug: please report it)
2      usage error (bad command line, bad profile value)
3      bad input frame (not FITS, truncated, no image, all NaN)
4      no stars detected
5      calibration failed (no reference catalogue, no calibrators)
6      astrometry failed where a WCS is required
7      catalogue service failure that the run could not survive
8      the results cannot be written (disk full, folder read-only)
130    cancelled (Ctrl-C / SIGTERM)
=====  ==========================================================
"""

from __future__ import annotations


class RppError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1


class UsageError(RppError):
    exit_code = 2


class SettingsError(UsageError):
    """A profile value out of range or of the wrong type."""


class InputError(RppError):
    """The input frame cannot be used."""

    exit_code = 3


class NoStarsError(RppError):
    exit_code = 4


class CalibrationError(RppError):
    exit_code = 5


class AstrometryError(RppError):
    exit_code = 6


class ServiceError(RppError):
    exit_code = 7


class OutputError(RppError):
    """The run folder cannot be written: disk full, read-only or not ours."""

    exit_code = 8


class Cancelled(RppError):
    """The run was cancelled by the user."""

    exit_code = 130

    def __init__(self, message: str = "run cancelled") -> None:
        super().__init__(message)
