"""First in a runner forkserver's preload (:data:`rpp_core.runner.CORE_PRELOAD`): the server imports
the rest with Python's cyclic garbage collector off, and each process it forks turns it back on.

The pipeline's imports make ~100,000 objects and no garbage worth collecting, yet the collector
ran ~270 times among them: 0.15-0.2 s of the server's ~1.1 s of CPU, all of it before a one-shot
run's first stage. The server does nothing but fork afterwards. A child freezes what it inherited
(:func:`gc.freeze`: its own collections never walk the server's modules) and collects as usual.

Only a forkserver started by :func:`rpp_core.runner.process_context`'s caller acts on this: that
caller names itself in ``RPP_FORKSERVER_OF``, the server is its child and runs
``multiprocessing.forkserver``. Imported anywhere else (another child of that caller too), the
module does nothing.
"""

import gc
import os
import sys


def _in_child() -> None:
    gc.freeze()
    gc.enable()


# the server runs multiprocessing.forkserver's main; another child of the caller that imports this is left alone
if (os.environ.get("RPP_FORKSERVER_OF") == str(os.getppid()) and "multiprocessing.forkserver" in sys.modules
        and gc.isenabled()):
    gc.disable()
    os.register_at_fork(after_in_child=_in_child)
