"""Checks before a run: what would make it fail late, found in a second instead of after the whole run.

:func:`preflight` looks at the frame and the profile without processing
anything: the frame exists; every local reference catalogue exists, is
readable and holds the columns the profile names (by the same rules the
calibration uses, :func:`rpp_core.catalogs.local.standardize`); service
endpoints are URLs; when the frame needs solving, astrometry.net has index files
and one of them can solve it (the solve stage's own plan, from the header alone).

:func:`file_problems` is the part that reads the files (the catalogues' rows, the
frame's header: astropy.table, wcs and coordinates, 0.5-0.6 s of CPU to import);
``rpp run`` leaves it to its worker, which has them imported already
(:attr:`rpp_core.runner.RunRequest.check_files`), and checks the rest itself.

Each finding is a :class:`Problem` naming the setting to change, so each
interface can give the advice in its own words: the CLI says
``--set calibration.ra_column=...``, the app names the Parameters field
(:func:`Problem.advice`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .settings import Profile

#: settings that are service endpoints (URLs), by section
ENDPOINTS = ("gaia_tap", "simbad_tap", "vizier_tap", "skybot", "vsx", "astrocolibri", "vizier")


@dataclass(frozen=True)
class Problem:
    """One thing that would make the run fail or degrade.

    ``setting``: the profile key to change (``section.name``), or ``"frame"``;
    ``message``: what is wrong, naming the file, column or value;
    ``fix``: what to do, without saying where (each interface adds that);
    ``severity``: ``"error"`` stops the run, ``"warning"`` lets it go on degraded.
    """

    setting: str
    message: str
    fix: str
    severity: str = "error"

    def advice(self, interface: str = "cli") -> str:
        """The whole sentence for ``interface``: ``"cli"`` (rpp run) or ``"app"`` (the Parameters screen)."""
        if self.setting == "frame":
            where = "pick another frame in Files (1)" if interface == "app" else "give an existing FITS file"
            return f"{self.message}: {where}"
        if self.setting == "calibration.catalog_files" and interface == "cli":
            where = "--catalog FILE or --set calibration.catalog_files=FILE"
        elif interface == "app":
            section, _, name = self.setting.partition(".")
            where = f"in Parameters (2) › {section.replace('_', ' ').capitalize()} › {name}"
        else:
            where = f"--set {self.setting}=..."
        return f"{self.message}: {self.fix} ({where})"


def _missing_catalogue_problems(profile: Profile) -> list[Problem]:
    cal = profile.calibration
    out = [Problem("calibration.catalog_files", f"reference catalogue {path} does not exist",
                   "give the path of an existing file")
           for path in (Path(name).expanduser() for name in cal.catalog_files) if not path.exists()]
    if cal.catalog == "file" and not cal.catalog_files:
        out.append(Problem("calibration.catalog_files", "calibration.catalog = 'file' but no catalogue file is given",
                           "give a reference catalogue file"))
    return out


def _catalogue_content_problems(profile: Profile) -> list[Problem]:
    from .errors import CalibrationError

    cal = profile.calibration
    out: list[Problem] = []
    for name in cal.catalog_files:
        path = Path(name).expanduser()
        if not path.exists():
            continue  # said by _missing_catalogue_problems
        from .catalogs import local  # astropy.table and coordinates (0.2 s): only for a file to read

        try:
            table = local.read_table(path)
        except CalibrationError as exc:
            out.append(Problem("calibration.catalog_files", str(exc).split(";")[0],
                               "use CSV with a header line, ECSV, FITS or VOTable"))
            continue
        columns = ", ".join(table.colnames[:20]) + (" …" if len(table.colnames) > 20 else "")
        try:
            # the calibration's own rules, names and aliases it accepts, on every row: the values count too
            # (a text or empty magnitude column, Dec beyond 90), and checking them costs less than the reading
            local.standardize(table, cal, str(path))
        except CalibrationError as exc:
            text = str(exc)
            if "position columns" in text:
                out.append(Problem("calibration.ra_column",
                                   f"{path.name} has no RA/Dec columns {cal.ra_column!r}/{cal.dec_column!r} "
                                   f"(its columns: {columns})", "name its RA and Dec columns (ra_column, dec_column)"))
            elif "no magnitude column" in text:
                wanted = cal.mag_column or cal.band
                setting = "calibration.mag_column" if cal.mag_column else "calibration.band"
                out.append(Problem(setting, f"{path.name} has no magnitude column {wanted!r} (its columns: {columns})",
                                   "name its magnitude column"))
            elif "colour columns" in text:
                out.append(Problem("calibration.color_columns",
                                   f"{path.name} lacks the colour columns {cal.color_columns} (its columns: {columns})",
                                   "name two of its magnitude columns, or leave color_columns empty"))
            else:
                out.append(Problem("calibration.catalog_files", text, "check the file"))
        if cal.mag_err_column and cal.mag_err_column.lower() not in {c.lower() for c in table.colnames}:
            out.append(Problem("calibration.mag_err_column",
                               f"{path.name} has no column {cal.mag_err_column!r} (its columns: {columns})",
                               "name its magnitude-error column, or leave it empty", "warning"))
    return out


def _endpoint_problems(profile: Profile) -> list[Problem]:
    out = []
    for name in ENDPOINTS:
        value = getattr(profile.services, name, None)
        if value is None:
            continue
        url = urlparse(str(value).strip())
        if url.scheme not in ("http", "https") or not url.netloc or " " in str(value).strip():
            out.append(Problem(f"services.{name}", f"services.{name} = {value!r} is not a URL",
                               "give an http(s):// address, e.g. the default"))
    return out


def _astrometry_problems(profile: Profile, frame: Path | None) -> list[Problem]:
    """No index files, or none that can solve this frame (its size, scale hints and pointing).

    ``frame``: an existing frame, or None when it is unknown; an unreadable one is the load stage's to
    speak for. Its header is read only here, when the profile may solve: the facts import astropy.wcs,
    coordinates, time and table (0.3-0.5 s of CPU before a run that never uses them).
    """
    ast = profile.astrometry
    if ast.solver != "astrometry.net" or ast.solve == "never":
        return []
    facts = None
    if frame is not None:
        from .image import header_summary

        facts = header_summary(frame)  # never raises: an unreadable frame is the load stage's message
    has_wcs = None if facts is None or facts.get("error") else bool(facts.get("has_wcs"))
    if ast.solve == "auto" and has_wcs is not False:
        return []  # the header's WCS will do (or the frame is unreadable: the load stage says so)
    from . import astrometry

    dirs = astrometry.index_dirs_for(ast)
    files = astrometry.index_files(dirs)
    where = ", ".join(str(d) for d in dirs) or "no folder given"
    if not files:
        return [Problem("astrometry.index_dirs", f"the frame needs plate solving but there are no astrometry.net "
                        f"index files ({where})", "give a folder of index files (rpp index build makes them)",
                        "warning")]
    if facts is None or facts.get("header") is None or not facts.get("shape") or len(facts["shape"]) != 2 \
            or (facts.get("n_images", 1) > 1 and "DETSEC" in facts["header"]):
        return []  # amplifiers are assembled at load: the frame's size is not known from one header
    from types import SimpleNamespace

    from .image import header_metadata

    shape = tuple(int(n) for n in facts["shape"])
    # the same hints and plan the solve stage makes, from the header alone
    meta = header_metadata(facts["header"], facts["wcs"], shape, profile.observatory)
    frame = SimpleNamespace(header=facts["header"], wcs=facts["wcs"], wcs_status=facts.get("wcs_status") or "missing")
    plan = astrometry.plan_astrometry_net(shape, astrometry.solve_hints(frame, meta),
                                          astrometry.index_infos(files), ast)
    if plan.attempts:
        return []
    why = "; ".join(plan.skipped) or "no index file fits"
    return [Problem("astrometry.index_dirs", f"the frame needs plate solving but none of the {len(files)} index "
                    f"files in {where} can solve it: {why}", plan.advice or "give a folder of index files that fit",
                    "warning")]


def preflight(profile: Profile, frame: str | Path | None = None, *, read_files: bool = True) -> list[Problem]:
    """Problems found before running ``frame`` with ``profile`` (empty list: nothing found).

    Reads the frame's header only when the profile may solve (to know whether it has a WCS and
    what can solve it) and the local reference catalogues; never touches the network.
    ``read_files`` False leaves out what :func:`file_problems` finds (files are only looked for).
    """
    problems: list[Problem] = []
    path = None
    if frame is not None:
        path = Path(frame).expanduser()
        if not path.exists():
            problems.append(Problem("frame", f"frame {path} does not exist", ""))
            path = None
    problems += _missing_catalogue_problems(profile)
    problems += _endpoint_problems(profile)
    if read_files:
        problems += file_problems(profile, path)
    return problems


def file_problems(profile: Profile, frame: str | Path | None) -> list[Problem]:
    """What :func:`preflight` finds by reading files: the reference catalogues' columns and values
    (of the files that exist) and, when the profile may solve, whether the frame can be solved.
    ``frame``: an existing frame, or None when it is unknown or missing."""
    return _catalogue_content_problems(profile) + _astrometry_problems(profile, None if frame is None else Path(frame))
