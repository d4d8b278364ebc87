"""Files: browse to a frame, see its header facts and a quick-look preview."""

from __future__ import annotations

import os
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DirectoryTree, Static, TabPane
from textual.worker import get_current_worker

from rpp_core.fitsnames import is_fits_name

from .. import loaders
from ..messages import FrameChosen
from ..widgets.fits_tree import FitsTree
from ..widgets.halfblock import HalfBlockImage

def format_facts(facts: dict) -> str:
    """The header facts of :func:`rpp_core.image.header_summary` as aligned lines."""
    lines = [f"{'File':<10}{Path(str(facts.get('path', ''))).name}"]
    if facts.get("size_bytes") is not None:
        lines.append(f"{'Size':<10}{facts['size_bytes'] / 1e6:.2f} MB" + ("  (compressed)" if facts.get("compressed") else ""))
    shape = facts.get("shape")
    if shape:
        dims = " x ".join(str(n) for n in reversed(list(shape)))
        lines.append(f"{'Image':<10}{dims} px, BITPIX {facts.get('bitpix')}")
    lines.append(f"{'HDUs':<10}{facts.get('n_hdus', 0)}" + (f", image in HDU {facts['hdu']}" if facts.get("hdu") is not None else ""))
    for key, label in (("object", "Object"), ("filter", "Filter"), ("exptime", "Exposure"), ("date_obs", "Date")):
        value = facts.get(key)
        if value not in (None, ""):
            lines.append(f"{label:<10}{value}{' s' if key == 'exptime' else ''}")
    status = facts.get("wcs_status")
    lines.append(f"{'WCS':<10}{'yes' if facts.get('has_wcs') else 'no'}" + (f" ({status})" if status and status != "ok" else ""))
    if facts.get("error"):
        lines.append(f"{'Problem':<10}{facts['error']}")
    return "\n".join(lines)


class FilesPane(TabPane):
    """Directory tree filtered to FITS frames, header facts and a preview of the highlighted frame."""

    BINDINGS = [
        Binding("enter", "choose", "Select", show=False),
        Binding("u,backspace", "up", "Parent", key_display="u"),
        Binding("c", "copy_path", "Copy path"),
        Binding("o", "open_path", "Go to path"),
        Binding("R", "reload", "Reload", show=False),
    ]

    def __init__(self, start_path: Path) -> None:
        super().__init__("1 Files", id="files")
        self.start_path = start_path
        self.highlighted: Path | None = None

    def compose(self) -> ComposeResult:
        yield FitsTree(self.start_path, id="tree")
        with Vertical(id="file-side"):
            yield Static("Select a FITS frame", id="facts", markup=False)
            yield HalfBlockImage(id="preview", message="no frame selected")

    def focus_main(self) -> None:
        self.query_one(FitsTree).focus()

    # ------------------------------------------------------------ events
    def on_tree_node_highlighted(self, event) -> None:
        node = event.node
        data = getattr(node, "data", None)
        path = getattr(data, "path", None)
        if path is None or Path(path).is_dir():
            return
        self.show_frame(Path(path))

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.show_frame(Path(event.path))
        self.post_message(FrameChosen(Path(event.path)))

    def show_frame(self, path: Path) -> None:
        if path == self.highlighted:
            return
        self.highlighted = path
        self.query_one("#facts", Static).update(f"{path.name}\nreading header…")
        self.query_one("#preview", HalfBlockImage).set_image(None, message="loading preview…")
        self.load_facts(path)
        self.load_preview(path)

    @work(thread=True, exclusive=True, group="facts")
    def load_facts(self, path: Path) -> None:
        try:
            text = format_facts(loaders.header_facts(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a message, not a crash
            text = f"{path.name}\ncannot read header: {exc}"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._set_facts, path, text)

    def _set_facts(self, path: Path, text: str) -> None:
        if path == self.highlighted:
            self.query_one("#facts", Static).update(text)

    @work(thread=True, exclusive=True, group="preview")
    def load_preview(self, path: Path) -> None:
        try:
            image, message = loaders.preview_image(path), ""
        except Exception as exc:  # noqa: BLE001
            image, message = None, f"no preview: {exc}"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._set_preview, path, image, message)

    def _set_preview(self, path: Path, image, message: str) -> None:
        if path == self.highlighted:
            self.query_one("#preview", HalfBlockImage).set_image(image, message=message)

    # ------------------------------------------------------------ actions
    def action_choose(self) -> None:
        tree = self.query_one(FitsTree)
        node = tree.cursor_node
        if node is not None and node.data is not None and not Path(node.data.path).is_dir():
            self.post_message(FrameChosen(Path(node.data.path)))

    def action_up(self) -> None:
        tree = self.query_one(FitsTree)
        tree.path = Path(tree.path).resolve().parent
        tree.focus()

    def action_copy_path(self) -> None:
        path = self.highlighted or getattr(self.app, "selected_path", None)
        if path:
            self.app.copy_to_clipboard(str(Path(path).resolve()))
            self.notify(f"copied {Path(path).resolve()}")

    def action_open_path(self) -> None:
        from .dialogs import AskText, PathSuggester

        def done(value: str | None) -> None:
            if not value:
                return
            p = Path(value).expanduser()
            if p.is_dir():
                self.query_one(FitsTree).path = p
            elif p.is_file():
                self.query_one(FitsTree).path = p.parent
                self.show_frame(p)
                self.post_message(FrameChosen(p))
            else:
                self.notify(f"{p} does not exist", severity="error")

        start = str(self.query_one(FitsTree).path).rstrip(os.sep) + os.sep
        self.app.push_screen(AskText("Go to folder or frame", start, suggester=PathSuggester(is_fits_name),
                                     hint="→ completes the path, Enter goes there, Escape cancels"), done)

    def action_reload(self) -> None:
        self.query_one(FitsTree).reload()

    def go_to(self, path: Path) -> None:
        tree = self.query_one(FitsTree)
        if path.is_dir():
            tree.path = path
        else:
            tree.path = path.parent
            self.show_frame(path)
