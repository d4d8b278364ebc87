"""``rpp batch``: many frames, one bounded worker pool (or a Dask cluster), one night summary.

Each frame runs :func:`rpp_core.pipeline.run_sync` in a worker *process*
(the CPU stages hold the GIL, so threads would serialise them), or as a task
on an existing ``dask.distributed`` cluster with ``--scheduler``. The parent
process only schedules, prints and records:

- one line per frame (ok / degraded / FAILED with the reason, FWHM, zero
  point, number of sources, seconds) through ``on_result``;
- a ledger entry per frame (:class:`Ledger`), so re-running the same command
  skips frames already done with the same profile (``--force`` redoes them);
- a night report folder ``<workspace>/batch_<UTC timestamp>/``: summary table
  (CSV and text), zero point and FWHM against time (plotext text figures)
  and the batch log (``run.log``, which also makes ``rpp clean`` treat the
  folder like a run).

One bad frame never stops the batch: every failure becomes a result line.
A worker that dies (out of memory, a crash inside a library) is replaced and
its frame retried once.

Frames of one field are scheduled so the catalogue cache can work: the first
frame of each field (pointing within :data:`FIELD_RADIUS_DEG`) runs first, the
rest of that field only once it finished, so they find the reference
catalogue in the on-disk cache instead of asking the service again.

Dask workers must see the frames and the workspace at the same paths
(a shared file system) and have rpp installed.

Modules: :mod:`.inputs` (frames and the profile hash), :mod:`.worker` (one
frame, its result line), :mod:`.ledger`, :mod:`.fields` (grouping by
pointing), :mod:`.report` (night report), :mod:`.executors` (local pool,
Dask), :mod:`.run` (:func:`run_batch`).
"""

from .executors import connect_dask
from .fields import FIELD_RADIUS_DEG, group_fields
from .inputs import collect_frames, profile_hash
from .ledger import LEDGER_DIRNAME, FrameKey, Ledger
from .report import night_table, stats_lines, write_night_report
from .run import MAX_ATTEMPTS, BatchReport, run_batch
from .worker import FrameResult, process_frame, result_from_summary

__all__ = [
    "FIELD_RADIUS_DEG", "LEDGER_DIRNAME", "MAX_ATTEMPTS", "BatchReport", "FrameKey", "FrameResult", "Ledger",
    "collect_frames", "connect_dask", "group_fields", "night_table", "process_frame", "profile_hash",
    "result_from_summary", "run_batch", "stats_lines", "write_night_report",
]
