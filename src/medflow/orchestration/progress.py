"""Prefect progress artifacts (`<stage>-progress`) of the stages that report progress.

A stage's progress callback updates its artifact at most about once a second and once a
percent; publishing is best effort: a failure is logged once and never fails the stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

log = logging.getLogger(__name__)


def progress_key(stage: str) -> str:
    """The artifact key of a stage's progress (Prefect keys: lowercase letters, digits, -)."""
    return f"{stage.lower().replace('_', '-')}-progress"


class StageProgress:
    """The progress artifact of one stage run: created at 0 %, then call it with
    (done, in all) as the stage goes, and `finish()` at the end (100 %)."""

    def __init__(
        self,
        stage: str,
        min_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.key = progress_key(stage)
        self.min_seconds = min_seconds
        self.clock = clock
        self.artifact_id: UUID | None = None  # None: not published (see the log)
        self._percent = 0.0  # the last published
        self._time = clock()
        try:
            self.artifact_id = create_progress_artifact(
                0.0, key=self.key, description=f"{stage}: starting"
            )
        except Exception as exc:  # noqa: BLE001 - progress must never fail a stage
            log.warning("progress of %s not published: %s", stage, exc)

    def __call__(self, done: int, total: int) -> None:
        percent = min(100.0, 100.0 * done / total) if total > 0 else 0.0
        if int(percent) <= int(self._percent) or self.clock() - self._time < self.min_seconds:
            return
        self._publish(percent, f"{self.stage}: {done} of {total}")

    def finish(self) -> None:
        """Set the artifact to 100 % (a stage may end early, e.g. early stopping)."""
        if self._percent < 100.0:
            self._publish(100.0, f"{self.stage}: done")

    def _publish(self, percent: float, description: str) -> None:
        if self.artifact_id is None:  # never created, or an update failed: stay quiet
            return
        try:
            update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as exc:  # noqa: BLE001 - progress must never fail a stage
            log.warning("progress of %s not published: %s", self.stage, exc)
            self.artifact_id = None
            return
        self._percent = percent
        self._time = self.clock()
