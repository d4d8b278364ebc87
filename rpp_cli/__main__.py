"""``python -m rpp_cli``: the same as the ``rpp`` console script."""

from . import entry

entry()
