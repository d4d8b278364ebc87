"""Plots: the run's figures (rpp_core.plots) drawn with plotext, resizing with the terminal."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import OptionList, TabPane
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from rpp_core import plots


class FigurePlot(PlotextPlot):
    """A plotext widget that redraws one named figure of :mod:`rpp_core.plots` at its current size."""

    def __init__(self, *, id=None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.figure = "zp_fit"
        self.run = None

    def show(self, figure: str, run) -> None:
        self.figure, self.run = figure, run
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_figure()
        if self.run is None or self.run.catalog is None:
            plt.title("no run loaded: run a frame or open one from History (7)")
        else:
            plots.draw(self.figure, plt, self.run.catalog, self.run.plot_meta())
        self.refresh()


class PlotsPane(TabPane):
    """Figure list on the left, the figure on the right."""

    BINDINGS = [
        Binding("n,right", "step(1)", "Next", key_display="n"),
        Binding("p,left", "step(-1)", "Previous", key_display="p"),
    ]

    def __init__(self) -> None:
        super().__init__("5 Plots", id="plots")
        self.run = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield OptionList(*[Option(title, id=name) for name, (title, _) in plots.FIGURES.items()], id="figures")
            yield FigurePlot(id="figure")

    def focus_main(self) -> None:
        self.query_one("#figures", OptionList).focus()

    def on_mount(self) -> None:
        self.query_one("#figures", OptionList).highlighted = 0

    def show_run(self, run) -> None:
        self.run = run
        self._draw()

    @property
    def current_figure(self) -> str:
        return self.query_one(FigurePlot).figure

    def _draw(self) -> None:
        options = self.query_one("#figures", OptionList)
        index = options.highlighted or 0
        name = options.get_option_at_index(index).id
        self.query_one(FigurePlot).show(name, self.run)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        self._draw()

    def action_step(self, delta: int) -> None:
        options = self.query_one("#figures", OptionList)
        options.highlighted = ((options.highlighted or 0) + delta) % options.option_count

    def show_figure(self, name: str) -> None:
        options = self.query_one("#figures", OptionList)
        options.highlighted = options.get_option_index(name)
