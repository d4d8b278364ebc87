"""Command palette entries (ctrl+p): every action of the app, searchable by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

#: (title, help, action string run on the app)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("Show Files", "browse to a FITS frame (1)", "show_tab('files')"),
    ("Show Parameters", "edit the processing profile (2)", "show_tab('parameters')"),
    ("Show Run", "stages, progress and log of the run (3)", "show_tab('run')"),
    ("Show Catalogue", "the run's sources (4)", "show_tab('catalogue')"),
    ("Show Plots", "zero point, residuals, histogram, errors (5)", "show_tab('plots')"),
    ("Show Image", "the frame with detections overlaid (6)", "show_tab('image')"),
    ("Show History", "earlier runs in the workspace (7)", "show_tab('history')"),
    ("Run selected frame", "process the selected frame with the current profile (r)", "run"),
    ("Cancel run", "stop the current run; nothing half-written is left (x)", "cancel_run"),
    ("Cancel queued runs", "drop runs waiting in the queue", "cancel_queued"),
    ("Save profile", "write the profile to the config dir (ctrl+s)", "pane('parameters', 'save')"),
    ("Save profile as", "save under a new name (ctrl+n)", "pane('parameters', 'save_as')"),
    ("Load profile", "load a saved profile (ctrl+o)", "pane('parameters', 'load')"),
    ("Rename profile", "rename the saved profile (ctrl+r)", "pane('parameters', 'rename')"),
    ("Delete profile", "delete the saved profile (ctrl+t)", "pane('parameters', 'delete')"),
    ("Filter catalogue", "e.g. snr>10 and flags==0 (/)", "pane('catalogue', 'filter')"),
    ("Sort catalogue", "by the highlighted column (s)", "pane('catalogue', 'sort')"),
    ("Choose catalogue columns", "columns shown in the table (v)", "pane('catalogue', 'columns')"),
    ("Export catalogue view", "write the rows and columns shown to CSV (e)", "pane('catalogue', 'export')"),
    ("Copy catalogue value", "copy the highlighted cell (c)", "pane('catalogue', 'copy_value')"),
    ("Copy SIMBAD link", "of the highlighted source (L)", "pane('catalogue', 'copy_link')"),
    ("Copy ESA Sky link", "of the highlighted source (S)", "pane('catalogue', \"copy_link('ESA Sky')\")"),
    ("Copy Aladin link", "of the highlighted source (A)", "pane('catalogue', \"copy_link('Aladin')\")"),
    ("Toggle source details", "show or hide the details panel (d)", "pane('catalogue', 'details')"),
    ("Zero-point plot", "catalogue vs instrumental magnitude", "plot('zp_fit')"),
    ("Residuals vs magnitude plot", "calibration residuals", "plot('residuals_mag')"),
    ("Residuals vs colour plot", "calibration residuals", "plot('residuals_color')"),
    ("Magnitude histogram", "all sources", "plot('mag_hist')"),
    ("Error vs magnitude plot", "photometric errors", "plot('err_mag')"),
    ("Toggle image overlay", "detections and calibrators (m)", "pane('image', 'markers')"),
    ("Zoom in", "next zoom step of the Image (+)", "pane('image', \"zoom('in')\")"),
    ("Zoom out", "previous zoom step of the Image (-)", "pane('image', \"zoom('out')\")"),
    ("Zoom to fit", "the whole frame in the Image (0)", "pane('image', \"zoom('fit')\")"),
    ("Zoom 1:1", "one frame pixel per half cell (=)", "pane('image', \"zoom('actual')\")"),
    ("Next image stretch", "zscale, histogram equalisation, asinh (s in Image)", "pane('image', 'stretch')"),
    ("Stretch: zscale", "linear between the zscale limits", "pane('image', \"stretch('zscale')\")"),
    ("Stretch: histogram equalisation", "every grey level equally used", "pane('image', \"stretch('histeq')\")"),
    ("Stretch: asinh", "faint and bright sources both readable", "pane('image', \"stretch('asinh')\")"),
    ("Reload history", "rescan the workspace (R)", "pane('history', 'reload')"),
    ("Clean up old runs", "remove runs older than an age (C)", "pane('history', 'cleanup')"),
    ("Parent folder", "go up one folder in Files (u)", "pane('files', 'up')"),
    ("Go to path", "type a folder or frame to open in Files (o)", "pane('files', 'open_path')"),
    ("Show results", "the catalogue of the last run (enter in Run)", "pane('run', 'results')"),
    ("Open run", "open the highlighted run of History (o)", "pane('history', 'open')"),
    ("Delete run", "delete the highlighted run of History after confirmation (d)", "pane('history', 'delete')"),
    ("Copy run path", "of the highlighted run in History (c)", "pane('history', 'copy_path')"),
    ("Copy frame path", "of the selected frame (c in Files)", "pane('files', 'copy_path')"),
    ("Copy output folder", "of the last run (c in Run)", "pane('run', 'copy_folder')"),
    ("Copy sky view path", "sky.html of the last run: Aladin Lite with the sources (s in Run)", "pane('run', 'copy_sky')"),
    ("Cycle log level", "DEBUG, INFO, WARNING, ERROR (l in Run)", "pane('run', 'cycle_level')"),
    ("Help", "keys of every screen (?)", "help"),
)


class RppCommands(Provider):
    """Searches :data:`COMMANDS`; with no query, lists them all."""

    async def discover(self) -> Hits:
        for title, help_text, action in COMMANDS:
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self.app.run_action, action), help=help_text)
