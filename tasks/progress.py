"""Progress of a long site step as a Prefect progress artifact: counts only, throttled."""

from __future__ import annotations

import time
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

__all__ = ["ArtifactProgress"]


class ArtifactProgress:
    """A ``(done, total)`` callback that keeps one progress artifact current.

    ``text`` words the counts (``"featurized 3/10 partitions"``); it is updated at most every
    ``every_s`` seconds, and always at the end. Only the two numbers ever reach it.
    """

    def __init__(self, key: str, text: str, every_s: float = 2.0) -> None:
        self.key, self.text, self.every_s = key, text, every_s
        self.artifact_id: UUID | None = None
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.every_s:
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        description = self.text.format(done=done, total=total)
        if self.artifact_id is None:
            created = create_progress_artifact(pct, key=self.key, description=description)
            self.artifact_id = cast(UUID, created)  # sync code: the id, not a coroutine
        else:
            update_progress_artifact(self.artifact_id, pct, description=description)
