"""Helpers shared by the catalogue-service tests (imported by test modules, not a conftest)."""

from __future__ import annotations

from rpp_core.catalogs import field_of_view

#: the Astro-Colibri user id the loopback server accepts
UID = "test-uid-7f3a9c"


def sky_field(server, name="main"):
    """(frame, epoch, first Gaia id, object indices, (ra, dec, radius deg)) of a frame on the servers' sky."""
    name, frame, epoch, id0, info = server.sky.info(name)
    ra, dec, r = field_of_view(frame.wcs, frame.data.shape)
    return frame, epoch, id0, info, (ra, dec, r)


class Recorder:
    """Collects ``warn(service, reason)`` and ``log(message, level)`` calls."""

    def __init__(self):
        self.warnings: list[tuple[str, str]] = []
        self.lines: list[tuple[str, str]] = []

    def warn(self, service, reason):
        self.warnings.append((service, reason))

    def log(self, message, level="INFO"):
        self.lines.append((level, message))
