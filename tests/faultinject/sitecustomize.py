"""Fault injection for tests/test_faults.py, loaded by every Python process started with this folder on PYTHONPATH.

Inert unless ``RPP_FAULT_HOLD_REPLACE`` is set: then the first ``os.replace``
whose destination ends with that text (``catalog.ecsv``, ``.zip``) does not
happen; the process writes its pid to ``RPP_FAULT_READY`` and waits there to
be killed. Every rpp file is put in place by ``os.replace`` (rpp_core.fsio),
so this is "the machine died while writing that file", whatever writes it.
"""

import os

_HOLD = os.environ.get("RPP_FAULT_HOLD_REPLACE")

if _HOLD:
    import time

    _replace = os.replace

    def _holding_replace(src, dst, *args, **kwargs):
        global _HOLD
        if _HOLD and os.fspath(dst).endswith(_HOLD):
            _HOLD = None
            ready = os.environ["RPP_FAULT_READY"]
            with open(ready + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            _replace(ready + ".tmp", ready)
            while True:
                time.sleep(1.0)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _holding_replace
