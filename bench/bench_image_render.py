"""Half-block frame rendering: our HalfBlockImage against textual-image's half-cell renderer.

Measures, on a 2048x2048 frame with 1-pixel stars, drawn into 160x48 cells at "fit":
the time to draw one screen and whether a one-pixel star is still visible.
Run: .venv/bin/python bench/bench_image_render.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from PIL import Image as PILImage
from rich.console import Console
from textual.app import App

from rpp_tui import loaders
from rpp_tui.widgets.halfblock import HalfBlockImage

W, H = 160, 48


def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 10, (2048, 2048)).astype(np.float32)
    data[1234, 345] = 30000  # a one-pixel star
    return data


def brightest(segments) -> int:
    best = 0
    for seg in segments:
        style = seg.style
        for c in (style.color, style.bgcolor) if style else ():
            if c is not None and c.triplet is not None:
                best = max(best, c.triplet.red)
    return best


async def ours(img: loaders.FrameImage) -> tuple[float, int]:
    widget = HalfBlockImage()

    class One(App):
        def compose(self):
            yield widget

    async with One().run_test(size=(W, H)) as pilot:
        widget.set_image(img)
        await pilot.pause()
        t0 = time.perf_counter()
        for _ in range(5):
            widget._invalidate()
            lines = [widget.render_line(y) for y in range(widget.size.height)]
        dt = (time.perf_counter() - t0) / 5
        return dt, max(brightest(line) for line in lines)


def theirs(img: loaders.FrameImage) -> tuple[float, int]:
    from textual_image.renderable.halfcell import Image as Halfcell

    grey = img.luts["zscale"][img.levels[0]][::-1]  # PIL row 0 is the top
    pil = PILImage.fromarray(grey).convert("RGB")
    console = Console(width=W, height=H, color_system="truecolor", file=open("/dev/null", "w"))
    t0 = time.perf_counter()
    for _ in range(5):
        segments = list(console.render(Halfcell(pil, width=W, height=H), console.options))
    dt = (time.perf_counter() - t0) / 5
    return dt, brightest(segments)


def main() -> None:
    img = loaders.frame_image(frame())
    t_ours, b_ours = asyncio.run(ours(img))
    t_theirs, b_theirs = theirs(img)
    print(f"our half blocks:           {t_ours * 1000:6.1f} ms a 160x48 screen, brightest grey {b_ours} (star kept: {b_ours == 255})")
    print(f"textual-image half cells:  {t_theirs * 1000:6.1f} ms a 160x48 screen, brightest grey {b_theirs} (star kept: {b_theirs == 255})")


if __name__ == "__main__":
    main()
