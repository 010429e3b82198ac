"""The one place that runs featurization in parallel: Dask, by process (RDKit holds the GIL).

Dask's local process pool by default, or an existing ``distributed`` scheduler by address; one
task, or one worker, runs in this process (no process start-up to pay). Tasks are named
``featurize-shard-*`` so that progress counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
from dask.callbacks import Callback

__all__ = ["Progress", "offset_progress", "run_tasks"]

#: progress callback: (partitions done, partitions total)
Progress = Callable[[int, int], None]


class _Counter(Callback):
    """Dask local-scheduler callback: count finished shard tasks."""

    def __init__(self, total: int, progress: Progress | None):
        super().__init__()
        self.total, self.done, self.progress = total, 0, progress

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("featurize-shard"):
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)


def run_tasks(
    tasks: list[Any],
    n_workers: int,
    dask_address: str | None,
    progress: Progress | None,
    total: int,
) -> list[Any]:
    """Compute the ``featurize-shard-*`` tasks; results in task order.

    On an existing scheduler by address, or Dask's local process pool; one task, or one
    worker, runs in this process (no process start-up to pay).
    """
    if not tasks:
        return []
    if dask_address is not None:
        from distributed import Client, as_completed

        with Client(dask_address) as client:
            futures = client.compute(tasks)
            for done, fut in enumerate(as_completed(futures), start=1):
                fut.result()
                if progress is not None:
                    progress(done, total)
            return list(client.gather(futures))
    with _Counter(total, progress):
        if n_workers == 1 or len(tasks) == 1:
            return list(dask.compute(*tasks, scheduler="synchronous"))
        with dask.config.set({"multiprocessing.context": "spawn"}):
            return list(
                dask.compute(*tasks, scheduler="processes", num_workers=n_workers, chunksize=1)
            )


def offset_progress(progress: Progress | None, already: int) -> Progress | None:
    """``progress`` for a run whose first ``already`` partitions were done before it."""
    if progress is None:
        return None
    return lambda done, total: progress(already + done, total)
