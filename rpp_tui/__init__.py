"""RPP terminal app (Textual): presentation only, over :mod:`rpp_core`. Entry point: :func:`rpp_tui.app.run_app`."""
