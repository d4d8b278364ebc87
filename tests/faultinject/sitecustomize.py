"""Fault injection for tests/test_faults.py, loaded by every Python process started with this folder on PYTHONPATH.

Inert unless one of these is set in the environment:

``RPP_FAULT_HOLD_REPLACE=SUFFIX``
    the first ``os.replace`` whose destination ends with SUFFIX (``catalog.ecsv``,
    ``.zip``) does not happen: the process writes its pid to ``RPP_FAULT_READY``
    and waits there to be killed ("the machine died while writing that file").
``RPP_FAULT_SLOW_REPLACE=SUFFIX`` with ``RPP_FAULT_SLOW_S=SECONDS``
    that ``os.replace`` happens SECONDS late (a slow disk), after writing the pid
    to ``RPP_FAULT_READY``: a signal sent then lands in the middle of the outputs.
``RPP_FAULT_SLOW_STAGE=STAGE`` with ``RPP_FAULT_SLOW_S=SECONDS``
    the pipeline stage STAGE (a name of ``rpp_core.events.STAGE_NAMES``) takes
    SECONDS longer: once it has started, the process writes its pid to
    ``RPP_FAULT_READY`` and works on, checking for a cancel every 20 ms as rpp's
    stages do; with ``RPP_FAULT_DEAF=1`` it holds the event loop without
    checking, as a stage deep in a C library does.
``RPP_FAULT_HOLD_CHECK=PATH``
    ``rpp run``'s checks that read files (``rpp_core.preflight.file_problems``, in
    the worker) write the pid to ``RPP_FAULT_READY`` and then wait until PATH
    exists before they end, as the reading of a big catalogue would.
``RPP_FAULT_STARTED=PATH``
    PATH is written as soon as rpp's first line has run (the ``rpp_cli``
    package, which takes the signals over first), before rpp imports anything
    else: from there on a signal must end rpp with one line. (What comes
    before, the interpreter reading that file, is Python's own start-up.)

Every rpp file is put in place by ``os.replace`` (rpp_core.fsio), so the hooks
hit whatever writes the file.
"""

import os

_HOLD = os.environ.get("RPP_FAULT_HOLD_REPLACE")
_SLOW = os.environ.get("RPP_FAULT_SLOW_REPLACE")
_STAGE = os.environ.get("RPP_FAULT_SLOW_STAGE")
_replace = os.replace


def _ready() -> None:
    ready = os.environ["RPP_FAULT_READY"]
    with open(ready + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    _replace(ready + ".tmp", ready)


if _HOLD or _SLOW:
    import time

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


_AFTER_IMPORT = {}  #: module name -> called with the module once it has been executed


def _started(module) -> None:
    with open(os.environ["RPP_FAULT_STARTED"], "w") as fh:
        fh.write(str(os.getpid()))


if os.environ.get("RPP_FAULT_STARTED"):
    _AFTER_IMPORT["rpp_cli"] = _started


def _slow_down(pipeline) -> None:
    import asyncio
    import contextlib
    import time

    step = pipeline._Job.step
    seconds, deaf = float(os.environ.get("RPP_FAULT_SLOW_S", "5")), bool(os.environ.get("RPP_FAULT_DEAF"))

    @contextlib.asynccontextmanager
    async def slow_step(self, name):
        async with step(self, name) as figures:
            if name == _STAGE:
                _ready()
                t_end = time.monotonic() + seconds
                while time.monotonic() < t_end:
                    if deaf:
                        time.sleep(0.02)
                    else:
                        self.check_cancel()
                        await asyncio.sleep(0.02)
            yield figures

    pipeline._Job.step = slow_step


if _STAGE:
    _AFTER_IMPORT["rpp_core.pipeline"] = _slow_down


def _hold_check(preflight) -> None:
    import time

    checks = preflight.file_problems

    def held(*args, **kwargs):
        _ready()
        while not os.path.exists(os.environ["RPP_FAULT_HOLD_CHECK"]):
            time.sleep(0.01)
        return checks(*args, **kwargs)

    preflight.file_problems = held


if os.environ.get("RPP_FAULT_HOLD_CHECK"):
    _AFTER_IMPORT["rpp_core.preflight"] = _hold_check

if _AFTER_IMPORT:
    import importlib.abc
    import importlib.machinery
    import sys

    class _AfterImportFinder(importlib.abc.MetaPathFinder):
        """Calls the hook of a module as it is imported (in rpp, or in the forkserver that preloads it)."""

        def find_spec(self, name, path, target=None):
            if name not in _AFTER_IMPORT:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_hook(module):
                exec_module(module)
                _AFTER_IMPORT[name](module)

            spec.loader.exec_module = exec_and_hook
            return spec

    sys.meta_path.insert(0, _AfterImportFinder())
