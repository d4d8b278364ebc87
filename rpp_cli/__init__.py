"""The ``rpp`` command line, above :mod:`rpp_core` (the pipeline) and :mod:`rpp_tui` (the app).

One module per command group, each with ``register(subparsers)``; :mod:`rpp_cli.main`
builds the parser from them. Modules import only argparse at load time and the
core (astropy, numpy, the pipeline, textual) inside their command functions, so
``rpp --help`` answers at once.
"""
