"""The help screen (`?`): what each screen is for and its keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen

HELP = """\
# RPP keys

Everything works from the keyboard; the mouse is optional. `ctrl+p` opens the
command palette, where every action can be searched by name.

| key | anywhere |
|---|---|
| `1`-`7` | Files, Parameters, Run, Catalogue, Plots, Image, History |
| `r` | run the selected frame (queued if a run is going) |
| `x` | cancel the current run |
| `?` | this help |
| `ctrl+p` | command palette (themes too) |
| `q` | quit |
| `Esc` | leave a text field (then the keys above work again) |

**Files** `enter` select frame, `u` parent folder, `o` go to a path (`→` completes it), `c` copy path.

**Parameters** `ctrl+s` save, `ctrl+n` save as, `ctrl+o` load (a list), `ctrl+r` rename,
`ctrl+t` delete profile. Values are checked as you type, the whole profile too
(an aperture list with a negative radius is refused at once). API keys are
stored in a 0600 secrets file and never shown again.

**Run** `l` log level, `enter` results, `c` copy output folder, `s` copy the
path of the run's `sky.html` (Aladin Lite view of the field; a table offline).
Before a run the frame, reference files, their columns and the service
addresses are checked; problems name the Parameters field to change.

**Catalogue** `/` filter (`snr>10 and (flags==0 or mag<15)`, `not flags==0`, or a
name to find; `mag` is the calibrated magnitude when the frame is calibrated),
`s` sort by the highlighted column (again: reverse), `v` columns, `d` details,
`e` export the view to CSV, `c` copy value, `L` / `S` / `A` copy the SIMBAD /
ESA Sky / Aladin link of the source, `Home` / `End` first / last row.

**Plots** `n`/`p` next/previous figure. PNG versions are in the run folder (`plots/*.png`).

**Image** arrows or `hjkl` pan, `+`/`-` zoom by steps, `=` 1:1, `0` fit, `s` stretch
(zscale, histogram equalisation, asinh), `m` overlay (zoomed out: the brightest).

**History** `enter`/`o` open, `d` delete, `C` clean up old runs, `R` (or `f5`) reload, `c` copy path.

Copying uses the terminal clipboard (OSC 52): it works over SSH when the
terminal allows it.
"""


class HelpScreen(ModalScreen[None]):
    AUTO_FOCUS = "*"
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown  # only when help is opened: not part of the app's start

        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
