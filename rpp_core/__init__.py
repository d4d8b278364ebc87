"""RPP core: a photometry pipeline usable as a library.

`rpp_core` never imports textual, `rpp_tui` or `rpp_cli`. The app (`rpp_tui`)
and the command line (`rpp_cli`) run frames through :mod:`rpp_core.runner`
(each run in a worker process) and follow them through :mod:`rpp_core.events`;
:func:`rpp_core.pipeline.run` is the same run in the calling process.
"""

__version__ = "0.1.0"
