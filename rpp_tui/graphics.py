"""Whether the terminal shows real images (Kitty graphics protocol or Sixel), through ``textual-image``.

``textual-image`` asks the terminal what it supports with escape sequences,
which only works before Textual owns the terminal: :func:`detect` is called
by :func:`rpp_tui.app.run_app` before the app starts, and only when stdout is
a terminal. The Image screen then draws the frame at the terminal's pixel
resolution in Kitty, WezTerm, Konsole, foot, iTerm2 (also over SSH).

Everywhere else the frame is drawn with our half blocks
(:mod:`rpp_tui.widgets.halfblock`), which measured better than
textual-image's own half-cell fallback (bench/bench_image_render.py: 5.5 ms
against 216 ms a 160x48 screen, and a one-pixel star kept instead of lost).

``RPP_IMAGE=halfblock`` forces the half blocks (a terminal that claims more
than it draws).
"""

from __future__ import annotations

import os
import sys

#: "tgp" (Kitty graphics protocol), "sixel", or "" (half blocks)
PROTOCOL = ""
#: the textual-image widget class for PROTOCOL, or None
WIDGET = None
#: terminal cell size in pixels (width, height) as the terminal reported it
CELL_PX = (10, 20)


def detect() -> str:
    """Ask the terminal (before Textual starts) whether it shows images; sets :data:`PROTOCOL`."""
    global PROTOCOL, WIDGET, CELL_PX
    # the answer comes on stdin: both ends must be the terminal
    tty = bool(sys.__stdout__ and sys.__stdout__.isatty() and sys.__stdin__ and sys.__stdin__.isatty())
    if os.environ.get("RPP_IMAGE", "").lower() == "halfblock" or not tty:
        return PROTOCOL
    try:
        from textual_image import renderable
        from textual_image import widget as ti_widget
        from textual_image._terminal import get_cell_size
    except Exception:  # noqa: BLE001 - no image support is never a reason not to start
        return PROTOCOL
    if renderable.Image is renderable.TGPImage:
        PROTOCOL, WIDGET = "tgp", ti_widget.TGPImage
    elif renderable.Image is renderable.SixelImage:
        PROTOCOL, WIDGET = "sixel", ti_widget.SixelImage
    try:
        size = get_cell_size()
        CELL_PX = (int(size.width) or 10, int(size.height) or 20)
    except Exception:  # noqa: BLE001
        pass
    return PROTOCOL
