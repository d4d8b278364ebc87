"""Fault injection for tests/test_faults.py, loaded by every Python process started with this folder on PYTHONPATH.

Inert unless one of these is set in the environment:

``RPP_FAULT_HOLD_REPLACE=SUFFIX``
    the first ``os.replace`` whose destination ends with SUFFIX (``catalog.ecsv``,
    ``.zip``) does not happen: the process writes its pid to ``RPP_FAULT_READY``
    and waits there to be killed ("the machine died while writing that file").
``RPP_FAULT_SLOW_REPLACE=SUFFIX`` with ``RPP_FAULT_SLOW_S=SECONDS``
    that ``os.replace`` happens SECONDS late (a slow disk), after writing the pid
    to ``RPP_FAULT_READY``: a signal sent then lands in the middle of the outputs.
``RPP_FAULT_STARTED=PATH``
    the interpreter writes PATH as soon as it starts, before rpp imports anything.

Every rpp file is put in place by ``os.replace`` (rpp_core.fsio), so the hooks
hit whatever writes the file.
"""

import os

if os.environ.get("RPP_FAULT_STARTED"):
    with open(os.environ["RPP_FAULT_STARTED"], "w") as _fh:
        _fh.write(str(os.getpid()))

_HOLD = os.environ.get("RPP_FAULT_HOLD_REPLACE")
_SLOW = os.environ.get("RPP_FAULT_SLOW_REPLACE")

if _HOLD or _SLOW:
    import time

    _replace = os.replace

    def _ready() -> None:
        ready = os.environ["RPP_FAULT_READY"]
        with open(ready + ".tmp", "w") as fh:
            fh.write(str(os.getpid()))
        _replace(ready + ".tmp", ready)

    def _faulty_replace(src, dst, *args, **kwargs):
        global _HOLD, _SLOW
        if _HOLD and os.fspath(dst).endswith(_HOLD):
            _HOLD = None
            _ready()
            while True:
                time.sleep(1.0)
        if _SLOW and os.fspath(dst).endswith(_SLOW):
            _SLOW = None
            _ready()
            time.sleep(float(os.environ.get("RPP_FAULT_SLOW_S", "5")))
        return _replace(src, dst, *args, **kwargs)

    os.replace = _faulty_replace
