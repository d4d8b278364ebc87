"""``python -m rpp_cli``: the same as the ``rpp`` console script."""

import sys

from .main import main

sys.exit(main())
