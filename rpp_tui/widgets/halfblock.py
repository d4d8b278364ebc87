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
    """A source drawn over the image: 0-based pixel position, a glyph, a colour and a drawing priority.

    ``rank`` orders markers when the view is too small for all of them: lower
    ranks first (calibrators, then detections brightest first).
    """

    x: float
    y: float
    glyph: str = "+"
    color: str = "green"
    rank: float = 0.0


#: zoom steps (display samples per image pixel): + and - move along them; 1 is one pixel per half cell
ZOOM_STEPS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
#: at most one marker per this many cells: more is a carpet that hides the frame
CELLS_PER_MARKER = 12


def _grey_styles() -> list[Style]:
    return [Style(color=f"rgb({g},{g},{g})") for g in range(256)]


class HalfBlockImage(Widget, can_focus=True):
    """Shows a ``uint8`` image; keys pan (arrows / hjkl) and zoom (+ / - / 0)."""

    DEFAULT_CSS = """
    HalfBlockImage { width: 1fr; height: 1fr; min-height: 4; }
    """

    BINDINGS = [
        Binding("plus", "zoom(1)", "Zoom in", key_display="+"),
        Binding("minus", "zoom(-1)", "Zoom out", key_display="-"),
        Binding("0", "fit", "Fit"),
        Binding("equals_sign", "actual_size", "1:1", key_display="=", show=False),
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
        #: True when a graphics widget (textual-image) draws the frame over this one: draw nothing, keep the keys
        self.graphics = False
        self._image: np.ndarray | None = None
        self._levels: list[np.ndarray] = []
        self._luts: dict[str, np.ndarray] = {}
        self._lut: np.ndarray | None = None
        self.stretch = ""
        self._markers: list[Marker] = []
        self.markers_shown = 0
        self._message = message
        self._grid: np.ndarray | None = None
        self._marker_cells: dict[tuple[int, int], Marker] = {}
        self._greys = _grey_styles()
        self._pair_cache: dict[tuple[int, int], Style] = {}

    # ------------------------------------------------------------ data
    def set_image(self, image, markers: list[Marker] | None = None, message: str = "") -> None:
        """Show ``image`` (2-D uint8, row 0 = bottom of the frame) or a message when ``None``.

        ``image`` may also be a list: the frame then its 2x2 halvings (``loaders.pyramid``),
        which zoomed-out views sample so that stars do not fall between the samples;
        or a ``loaders.FrameImage`` (16-bit levels and one grey table per stretch, see :meth:`set_stretch`).
        """
        self._luts, self._lut = {}, None
        if hasattr(image, "levels") and hasattr(image, "luts"):
            self._luts = dict(image.luts)
            self.stretch = self.stretch if self.stretch in self._luts else next(iter(self._luts), "")
            self._lut = self._luts.get(self.stretch)
            image = list(image.levels)
        if isinstance(image, (list, tuple)):
            self._levels = list(image)
            image = self._levels[0]
        else:
            self._levels = [image] if image is not None else []
        self._image = image
        self._markers = sorted(markers or [], key=lambda m: m.rank)
        self._message = message
        if image is not None:
            ny, nx = image.shape
            self.set_reactive(HalfBlockImage.center, (nx / 2.0, ny / 2.0))
            self.set_reactive(HalfBlockImage.zoom, 0.0)
        self._invalidate()

    def set_markers(self, markers: list[Marker]) -> None:
        self._markers = sorted(markers, key=lambda m: m.rank)
        self._invalidate()

    @property
    def stretches(self) -> list[str]:
        return list(self._luts)

    def set_stretch(self, name: str) -> None:
        """Show the frame with the grey table ``name`` of its ``FrameImage`` (zscale, histeq, asinh)."""
        if name in self._luts:
            self.stretch, self._lut = name, self._luts[name]
            self._invalidate()
            self.post_message(self.ViewChanged())

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
        self.post_message(self.ViewChanged())  # "fit" means another zoom at another size

    # ------------------------------------------------------------ geometry
    def effective_zoom(self) -> float:
        if self._image is None:
            return 1.0
        if self.zoom > 0:
            return self.zoom
        ny, nx = self._image.shape
        w, h = max(self.size.width, 1), max(self.size.height * 2, 1)
        return min(w / nx, h / ny)

    def _view(self) -> tuple[float, float, float]:
        """Zoom (samples per pixel) and centre (0-based pixels) of what is on screen."""
        ny, nx = self._image.shape
        cx, cy = self.center if self.zoom > 0 else (nx / 2.0, ny / 2.0)
        return self.effective_zoom(), cx, cy

    def _sample(self, cols: np.ndarray, rows: np.ndarray, zx: float, zy: float, cx: float, cy: float) -> np.ndarray:
        """Grey levels (-1 outside the frame) at display columns/rows spaced 1/zx, 1/zy frame pixels.

        ``cols``/``rows`` are offsets from the view centre in display units; rows go
        down the screen while frame rows go up. Zoomed out, the first pyramid level
        whose pixels are at least one display unit wide is sampled, so consecutive
        samples never skip a pooled pixel (and the star in it).
        """
        ny, nx = self._image.shape
        ix = np.floor(cx + cols / zx).astype(np.int64)
        iy = np.floor(cy - rows / zy).astype(np.int64)
        okx = (ix >= 0) & (ix < nx)
        oky = (iy >= 0) & (iy < ny)
        z = min(zx, zy)
        level = 0
        while level + 1 < len(self._levels) and 2 ** level < 1.0 / z:
            level += 1
        src = self._levels[level] if self._levels else self._image
        f = 2 ** level
        sy, sx = src.shape
        sub = src[np.clip(iy // f, 0, sy - 1)][:, np.clip(ix // f, 0, sx - 1)]
        if self._lut is not None:
            sub = self._lut[sub]
        return np.where(oky[:, None] & okx[None, :], sub.astype(np.int16), -1)

    def view_rgb(self, cell_px: tuple[int, int] = (10, 20), max_width: int = 2000):
        """The view as a PIL RGB image at the terminal's pixel resolution, overlay drawn (for textual-image).

        ``cell_px`` is the terminal cell size in pixels; the picture covers the
        widget's cells exactly (scaled down to ``max_width`` at most).
        """
        from PIL import Image as PILImage, ImageDraw

        w, h = max(self.size.width, 1), max(self.size.height, 1)
        cw, ch = cell_px
        scale = min(1.0, max_width / (w * cw))
        out_w, out_h = max(int(w * cw * scale), 1), max(int(h * ch * scale), 1)
        if self._image is None:
            return PILImage.new("RGB", (out_w, out_h))
        z, cx, cy = self._view()
        # one sample is one cell wide and half a cell high: frame pixels per output pixel on each axis
        zx, zy = z * out_w / w, z * out_h / (2 * h)
        grid = self._sample(np.arange(out_w) + 0.5 - out_w / 2.0, np.arange(out_h) + 0.5 - out_h / 2.0, zx, zy, cx, cy)
        grey = np.where(grid < 0, 0, grid).astype(np.uint8)
        picture = PILImage.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
        if self.show_markers and self._markers:
            draw = ImageDraw.Draw(picture)
            radius = max(3.0, 3.0 * zx)
            colours = {"green": (0, 210, 0), "cyan": (0, 220, 255), "red": (255, 60, 60)}
            drawn = 0
            for m in self._markers:
                px = (m.x + 0.5 - cx) * zx + out_w / 2.0
                py = (cy - (m.y + 0.5)) * zy + out_h / 2.0
                if 0 <= px < out_w and 0 <= py < out_h:
                    colour = colours.get(m.color, (255, 255, 0))
                    if m.glyph == "x":
                        draw.line([(px - radius, py - radius), (px + radius, py + radius)], fill=colour)
                        draw.line([(px - radius, py + radius), (px + radius, py - radius)], fill=colour)
                    else:
                        draw.ellipse([px - radius, py - radius, px + radius, py + radius], outline=colour)
                    drawn += 1
                    if drawn >= max(50, out_w * out_h // 400):
                        break
        return picture

    def _build(self) -> None:
        w, h = self.size.width, self.size.height
        self._marker_cells = {}
        if self._image is None or w <= 0 or h <= 0:
            self._grid = None
            return
        z, cx, cy = self._view()
        self._grid = grid = self._sample(np.arange(w) + 0.5 - w / 2.0, np.arange(2 * h) + 0.5 - h, z, z, cx, cy)
        self.markers_shown = 0
        if self.show_markers and self._markers:
            # markers in rank order (calibrators, then the brightest), one per cell and none touching,
            # and no more than one per CELLS_PER_MARKER cells: zoomed out, the faint ones make way
            budget = max(8, (w * h) // CELLS_PER_MARKER)
            taken: set[tuple[int, int]] = set()
            for m in self._markers:
                col = int(np.floor((m.x + 0.5 - cx) * z + w / 2.0))
                row = int(np.floor((cy - (m.y + 0.5)) * z + h))
                if not (0 <= col < w and 0 <= row < 2 * h):
                    continue
                cell = (row // 2, col)
                if any((cell[0] + dy, cell[1] + dx) in taken for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
                    continue
                taken.add(cell)
                self._marker_cells[cell] = m
                if len(taken) >= budget:
                    break
            self.markers_shown = len(taken)

    def ensure_built(self) -> None:
        """Sample the current view now (not at the next render), so ``markers_shown`` describes it."""
        if self._grid is None and self._image is not None:
            self._build()

    def _cell(self, top: int, bottom: int) -> Segment:
        """One cell: two samples as ``▀`` (upper one the foreground); outside the frame, the widget's background.

        The margin is drawn with the background colour itself (a space), not as
        black half blocks: those showed as stripes where the theme's black is not
        the background.
        """
        key = (top, bottom)
        seg = self._pair_cache.get(key)
        if seg is None:
            base = self.rich_style
            if top < 0 and bottom < 0:
                seg = Segment(" ", base)
            elif top < 0:
                seg = Segment("▄", base + Style(color=f"rgb({bottom},{bottom},{bottom})"))
            elif bottom < 0:
                seg = Segment(_HALF, base + Style(color=f"rgb({top},{top},{top})"))
            else:
                seg = Segment(_HALF, Style(color=f"rgb({top},{top},{top})", bgcolor=f"rgb({bottom},{bottom},{bottom})"))
            self._pair_cache[key] = seg
            if len(self._pair_cache) > 70000:
                self._pair_cache.clear()
        return seg

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self.graphics and self._image is not None:
            return Strip.blank(width, self.rich_style)
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
                bg = Style(bgcolor=f"rgb({b},{b},{b})") if b >= 0 else self.rich_style
                segments.append(Segment(marker.glyph, bg + Style(color=marker.color, bold=True)))
            else:
                segments.append(self._cell(int(top[x]), b))
        return Strip(segments, width)

    # ------------------------------------------------------------ actions
    def action_zoom(self, direction: int) -> None:
        """The next step of :data:`ZOOM_STEPS` in (``direction`` > 0) or out from the current zoom."""
        if self._image is None:
            return
        current = self.effective_zoom()
        if self.zoom == 0:
            ny, nx = self._image.shape
            self.center = (nx / 2.0, ny / 2.0)
        if direction > 0:
            steps = [z for z in ZOOM_STEPS if z > current * 1.001]
            self.zoom = steps[0] if steps else ZOOM_STEPS[-1]
        else:
            steps = [z for z in ZOOM_STEPS if z < current / 1.001]
            self.zoom = steps[-1] if steps else ZOOM_STEPS[0]

    def action_actual_size(self) -> None:
        """1:1, one frame pixel per half cell, centred where the view is."""
        if self._image is None:
            return
        if self.zoom == 0:
            ny, nx = self._image.shape
            self.center = (nx / 2.0, ny / 2.0)
        self.zoom = 1.0

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
        ratio = f"1:{1 / z:.3g}" if z < 1 else f"{z:.3g}:1"
        mode = f"fit ({ratio})" if self.zoom == 0 else ratio
        return f"{nx}x{ny} zoom {mode} at ({cx + 0.5:.0f},{cy + 0.5:.0f})"
