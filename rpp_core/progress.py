"""The callbacks long stage functions take, and the one check that honours cancel.

Conventions (every stage function):

- ``progress(done, total)``: called now and then from the worker thread;
  ``done == total`` at the end. The pipeline rate-limits what reaches a UI.
- ``cancel()``: true means stop now; the stage calls :func:`check_cancel`
  between chunks of work, which raises :class:`rpp_core.errors.Cancelled`.
- ``log(text)``: a line for the run log (solver output, refinement steps).
"""

from __future__ import annotations

from typing import Callable

from .errors import Cancelled

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise :class:`~rpp_core.errors.Cancelled` when ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled()


def report(progress: ProgressFn | None, done: int, total: int) -> None:
    """``progress(done, total)`` when there is a progress callback."""
    if progress is not None:
        progress(done, total)
