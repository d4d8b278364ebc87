"""A greyscale image drawn with half-block characters, with markers, pan and zoom.

Each terminal cell shows two image samples: the upper one as the foreground of
``▀`` and the lower one as its background, so an 80x24 terminal shows 80x48
samples. The image arrives already scaled to 0-255 (``uint8``) by a worker;
this widget only samples it, so panning a 9k x 6k frame costs one numpy
fancy-index of the visible cells per refresh.

Display convention: FITS row 0 is at the bottom of the screen (north up for
an unrotated frame), like DS9.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

_HALF = "▀"


@dataclass(frozen=True)
class Marker:
    """A source drawn over the image: 0-based pixel position, a glyph and a colour."""

    x: float
    y: float
    glyph: str = "+"
    color: str = "green"


def _grey_styles() -> list[Style]:
    return [Style(color=f"rgb({g},{g},{g})") for g in range(256)]


class HalfBlockImage(Widget, can_focus=True):
    """Shows a ``uint8`` image; keys pan (arrows / hjkl) and zoom (+ / - / 0)."""

    DEFAULT_CSS = """
    HalfBlockImage { width: 1fr; height: 1fr; min-height: 4; }
    """

    BINDINGS = [
        Binding("plus,equals_sign", "zoom(2)", "Zoom in", key_display="+"),
        Binding("minus", "zoom(0.5)", "Zoom out", key_display="-"),
        Binding("0", "fit", "Fit"),
        Binding("left,h", "pan(-1,0)", "Pan", show=False),
        Binding("right,l", "pan(1,0)", "Pan", show=False),
        Binding("up,k", "pan(0,1)", "Pan", show=False),
        Binding("down,j", "pan(0,-1)", "Pan", show=False),
    ]

    #: display samples per image pixel; 0 means "fit the whole frame"
    zoom: reactive[float] = reactive(0.0)
    center: reactive[tuple[float, float]] = reactive((0.0, 0.0))
    show_markers: reactive[bool] = reactive(True)

    def __init__(self, *, message: str = "", name=None, id=None, classes=None) -> None:  # noqa: A002
        super().__init__(name=name, id=id, classes=classes)
        self._image: np.ndarray | None = None
        self._levels: list[np.ndarray] = []
        self._markers: list[Marker] = []
        self._message = message
        self._grid: np.ndarray | None = None
        self._marker_cells: dict[tuple[int, int], Marker] = {}
        self._greys = _grey_styles()
        self._pair_cache: dict[tuple[int, int], Style] = {}

    # ------------------------------------------------------------ data
    def set_image(self, image, markers: list[Marker] | None = None, message: str = "") -> None:
        """Show ``image`` (2-D uint8, row 0 = bottom of the frame) or a message when ``None``.

        ``image`` may also be a list: the frame then its 2x2 halvings (``loaders.pyramid``),
        which zoomed-out views sample so that stars do not fall between the samples.
        """
        if isinstance(image, (list, tuple)):
            self._levels = list(image)
            image = self._levels[0]
        else:
            self._levels = [image] if image is not None else []
        self._image = image
        self._markers = list(markers or [])
        self._message = message
        if image is not None:
            ny, nx = image.shape
            self.set_reactive(HalfBlockImage.center, (nx / 2.0, ny / 2.0))
            self.set_reactive(HalfBlockImage.zoom, 0.0)
        self._invalidate()

    def set_markers(self, markers: list[Marker]) -> None:
        self._markers = list(markers)
        self._invalidate()

    @property
    def has_image(self) -> bool:
        return self._image is not None

    def _invalidate(self) -> None:
        self._grid = None
        self.refresh()

    class ViewChanged(Message):
        """Zoom or centre changed."""

    def watch_zoom(self) -> None:
        self._invalidate()
        self.post_message(self.ViewChanged())

    def watch_center(self) -> None:
        self._invalidate()
        self.post_message(self.ViewChanged())

    def watch_show_markers(self) -> None:
        self._invalidate()

    def on_resize(self) -> None:
        self._invalidate()

    # ------------------------------------------------------------ geometry
    def effective_zoom(self) -> float:
        if self._image is None:
            return 1.0
        if self.zoom > 0:
            return self.zoom
        ny, nx = self._image.shape
        w, h = max(self.size.width, 1), max(self.size.height * 2, 1)
        return min(w / nx, h / ny)

    def _build(self) -> None:
        w, h = self.size.width, self.size.height
        self._marker_cells = {}
        if self._image is None or w <= 0 or h <= 0:
            self._grid = None
            return
        ny, nx = self._image.shape
        z = self.effective_zoom()
        cx, cy = self.center if self.zoom > 0 else (nx / 2.0, ny / 2.0)
        cols = np.arange(w)
        rows = np.arange(2 * h)
        ix = np.floor(cx + (cols + 0.5 - w / 2.0) / z).astype(np.int64)
        # screen rows go down, FITS rows go up
        iy = np.floor(cy - (rows + 0.5 - h) / z).astype(np.int64)
        okx = (ix >= 0) & (ix < nx)
        oky = (iy >= 0) & (iy < ny)
        grid = np.full((2 * h, w), -1, dtype=np.int16)
        # zoomed out: sample the first halving whose pixels are at least one screen sample wide,
        # so consecutive samples never skip a pooled pixel (and the star in it)
        level = 0
        while level + 1 < len(self._levels) and 2 ** level < 1.0 / z:
            level += 1
        src = self._levels[level] if self._levels else self._image
        f = 2 ** level
        sy, sx = src.shape
        sub = src[np.clip(iy // f, 0, sy - 1)][:, np.clip(ix // f, 0, sx - 1)].astype(np.int16)
        grid[:] = np.where(oky[:, None] & okx[None, :], sub, -1)
        self._grid = grid
        if self.show_markers and self._markers:
            for m in self._markers:
                col = int(np.floor((m.x + 0.5 - cx) * z + w / 2.0))
                row = int(np.floor((cy - (m.y + 0.5)) * z + h))
                if 0 <= col < w and 0 <= row < 2 * h:
                    self._marker_cells[(row // 2, col)] = m

    def _style(self, top: int, bottom: int) -> Style:
        key = (top, bottom)
        style = self._pair_cache.get(key)
        if style is None:
            fg = f"rgb({top},{top},{top})" if top >= 0 else "black"
            bg = f"rgb({bottom},{bottom},{bottom})" if bottom >= 0 else "black"
            style = self._pair_cache[key] = Style(color=fg, bgcolor=bg)
            if len(self._pair_cache) > 20000:
                self._pair_cache.clear()
        return style

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self._image is None:
            text = self._message if y == self.size.height // 2 else ""
            return Strip([Segment(text.center(width)[:width], self.rich_style)], width)
        if self._grid is None:
            self._build()
        grid = self._grid
        if grid is None or 2 * y + 1 >= grid.shape[0]:
            return Strip.blank(width, self.rich_style)
        top, bottom = grid[2 * y], grid[2 * y + 1]
        segments = []
        for x in range(width):
            marker = self._marker_cells.get((y, x))
            b = int(bottom[x])
            if marker is not None:
                bg = f"rgb({b},{b},{b})" if b >= 0 else "black"
                segments.append(Segment(marker.glyph, Style(color=marker.color, bgcolor=bg, bold=True)))
            else:
                segments.append(Segment(_HALF, self._style(int(top[x]), b)))
        return Strip(segments, width)

    # ------------------------------------------------------------ actions
    def action_zoom(self, factor: float) -> None:
        if self._image is None:
            return
        current = self.effective_zoom()
        if self.zoom == 0:
            ny, nx = self._image.shape
            self.center = (nx / 2.0, ny / 2.0)
        self.zoom = float(min(max(current * factor, 1 / 64), 32.0))

    def action_fit(self) -> None:
        self.zoom = 0.0

    def action_pan(self, dx: int, dy: int) -> None:
        if self._image is None:
            return
        if self.zoom == 0:
            self.zoom = self.effective_zoom()
            ny, nx = self._image.shape
            self.center = (nx / 2.0, ny / 2.0)
        z = self.effective_zoom()
        # a quarter of the visible width/height per key press
        step_x = self.size.width / z / 4.0
        step_y = self.size.height * 2 / z / 4.0
        ny, nx = self._image.shape
        cx, cy = self.center
        self.center = (float(np.clip(cx + dx * step_x, 0, nx)), float(np.clip(cy + dy * step_y, 0, ny)))

    def describe_view(self) -> str:
        """One line saying what is on screen: zoom and centre (1-based like DS9)."""
        if self._image is None:
            return ""
        ny, nx = self._image.shape
        z = self.effective_zoom()
        cx, cy = self.center if self.zoom > 0 else (nx / 2.0, ny / 2.0)
        mode = "fit" if self.zoom == 0 else f"x{z:.3g}"
        return f"{nx}x{ny} zoom {mode} at ({cx + 0.5:.0f},{cy + 0.5:.0f})"
