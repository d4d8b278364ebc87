"""The help screen (`?`): what each screen is for and its keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

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

**Files** `enter` select frame, `u` parent folder, `o` go to a path, `c` copy path.

**Parameters** `ctrl+s` save, `ctrl+n` save as, `ctrl+o` load, `ctrl+r` rename,
`ctrl+t` delete profile. Values are checked as you type. API keys are stored
in a 0600 secrets file and never shown again.

**Run** `l` log level, `enter` results, `c` copy output folder.

**Catalogue** `/` filter (`snr>10 and flags==0`, or a name), `s` sort by the
highlighted column (again: reverse), `v` columns, `d` details, `e` export the
view to CSV, `c` copy value, `L` copy SIMBAD link.

**Plots** `n`/`p` next/previous figure.

**Image** arrows or `hjkl` pan, `+`/`-` zoom, `0` fit, `m` overlay.

**History** `enter`/`o` open, `d` delete, `C` clean up old runs, `R` reload.

Copying uses the terminal clipboard (OSC 52): it works over SSH when the
terminal allows it.
"""


class HelpScreen(ModalScreen[None]):
    AUTO_FOCUS = "*"
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
