"""Memory measures shared by the benchmarks."""

from __future__ import annotations

import contextlib
import threading

import psutil

__all__ = ["PeakRSS"]


class PeakRSS:
    """Peak resident memory of this process and all its children (worker processes
    included), sampled every ``every`` seconds in a thread; ``peak`` may be reset to 0 to
    measure the next step on its own."""

    def __init__(self, every: float = 0.2) -> None:
        self.peak = 0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that just ended
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
