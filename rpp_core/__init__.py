"""RPP core: a photometry pipeline usable as a library.

`rpp_core` never imports textual. The UI (`rpp_tui`) and the CLI talk to it
through :func:`rpp_core.pipeline.run` and the events in :mod:`rpp_core.events`.
"""

__version__ = "0.1.0"
