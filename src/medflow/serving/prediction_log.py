"""The prediction log's writer: the Bento records each classification without waiting for it.

`PredictionLog.record` only appends a row to a bounded in-memory queue (microseconds on the
request path); a daemon thread inserts the queue in batches, deletes rows past retention
about hourly and reads the monitor's latest drift scores for /metrics. A database that is down
never fails or slows a prediction: rows wait and are retried, the oldest dropped (and
counted) when the queue is full, and one warning a minute says how many. The tables, reads
and the monitor's writes are in medflow.serving.prediction_store (names re-exported here).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from medflow.serving.prediction_store import (
    KEY_ENV,
    PredictionRow,
    database_url,
    engine_for,
    find_prediction,
    hash_key,
    hash_message,
    image_hash,
    insert_feedback,
    insert_predictions,
    latest_scores,
    purge,
    read_window,
    row_params,
    safe_url,
    write_scores,
)

__all__ = [
    "KEY_ENV",
    "Feedback",
    "LogUnavailable",
    "PredictionLog",
    "PredictionRow",
    "database_url",
    "engine_for",
    "hash_message",
    "image_hash",
    "latest_scores",
    "read_window",
    "write_scores",
]

logger = logging.getLogger(__name__)

WARN_EVERY_S = 60.0


class LogUnavailable(Exception):
    """The prediction log's database cannot be reached (the message names the error type)."""


@dataclass(frozen=True)
class Feedback:
    """What POST /feedback recorded: the prediction, its model, the label index on record and
    whether the feedback repeated an earlier one (then nothing was counted)."""

    prediction_id: str
    model_tag: str
    label_index: int
    duplicate: bool


class PredictionLog:
    """One per Bento worker: the queue of rows not yet written and the thread writing them.

    Args:
        url: the database (prediction_store.engine_for); a relative SQLite path is resolved
            against `root` (default: the working directory).
        retention_days: predictions older than this are deleted, with their feedback.
        max_queue: rows kept waiting at most while the database is down; beyond, the oldest
            are dropped and counted.
        batch_rows: a batch is written as soon as this many rows wait, else every interval_s.
        on_scores: called from the thread with latest_scores() every scores_every_s.
        on_dropped: called with the number of rows just dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        root: Path | None = None,
        retention_days: int = 90,
        max_queue: int = 10_000,
        batch_rows: int = 256,
        interval_s: float = 0.5,
        purge_every_s: float = 3600.0,
        scores_every_s: float = 30.0,
        on_scores: Callable[[list[dict[str, Any]]], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.url, self.root = url, root
        self.retention = timedelta(days=retention_days)
        self.max_queue, self.batch_rows, self.interval_s = max_queue, batch_rows, interval_s
        self.purge_every_s, self.scores_every_s = purge_every_s, scores_every_s
        self.on_scores, self.on_dropped = on_scores, on_dropped
        self.engine: sa.Engine | None = None
        self._key: bytes | None = None
        self._queue: collections.deque[PredictionRow] = collections.deque()
        self._pending: list[PredictionRow] = []  # taken from the queue, not written yet
        self._lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = False
        self.accepted = self.written = self.dropped = 0  # rows; accepted = written+dropped+waiting
        self._failures, self._failing_since, self._warned_at = 0, 0.0, 0.0
        self._last_error = ""
        self._next_try = self._next_purge = self._next_scores = 0.0
        self._setup()  # at once, so that the first answers carry a hash; retried if it fails
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the request path

    def image_hash(self, message: str) -> str | None:
        """The keyed hash of `message` (prediction_store.hash_message); None while the key is
        not known yet (the row then carries the message until the thread can hash it)."""
        key = self._key
        return None if key is None else image_hash(key, message)

    def record(self, row: PredictionRow) -> None:
        """Queue one row; never blocks on the database. A full queue drops its oldest row."""
        with self._lock:
            self.accepted += 1
            dropped = len(self._queue) >= self.max_queue
            if dropped:
                self._queue.popleft()
                self.dropped += 1
                self._settled.notify_all()
            self._queue.append(row)
            full = len(self._queue) >= self.batch_rows
        if dropped and self.on_dropped is not None:
            self.on_dropped(1)
        if full:
            self._wake.set()

    # ------------------------------------------------------------------ other callers

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row recorded so far is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        failures = self._failures
        with self._lock:
            target = self.accepted
            self._next_try = 0.0  # retry now, even while backing off
            self._wake.set()
            while self.written + self.dropped < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._failures > failures or not self._thread.is_alive():
                    return False  # timed out, the database refused, or closed
                self._settled.wait(min(left, 0.1))
                self._wake.set()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what waits (as far as the database lets within `timeout`) and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            lost = self.accepted - self.written - self.dropped
        if lost:
            logger.warning(
                "prediction log: %d row(s) not written at shutdown (database unavailable: %s)",
                lost,
                self._last_error or "timeout",
            )
        if self.engine is not None:
            self.engine.dispose()

    def add_feedback(
        self,
        label_index: int,
        *,
        prediction_id: str | None = None,
        image_hash: str | None = None,
        wait_s: float = 2.0,
    ) -> Feedback | None:
        """Record the ground truth of the prediction with `prediction_id` (or the latest of the
        image with `image_hash`); None when there is no such prediction.

        This worker's queue is flushed first; after a miss the database is asked again every
        0.25 s for up to `wait_s`, as another worker may not have written a prediction made
        just now (it writes every interval_s). Blocking: call it in a thread.

        Raises:
            LogUnavailable: the database cannot be reached.
        """
        self.flush()
        try:
            engine = self._ready_engine()
            deadline = time.monotonic() + wait_s
            found = find_prediction(engine, prediction_id, image_hash)
            while found is None and time.monotonic() < deadline:
                time.sleep(0.25)
                found = find_prediction(engine, prediction_id, image_hash)
            if found is None:
                return None
            inserted, recorded = insert_feedback(engine, found.prediction_id, label_index)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise LogUnavailable(type(exc).__name__) from None
        return Feedback(found.prediction_id, found.model_tag, recorded, duplicate=not inserted)

    def latest_scores(self) -> list[dict[str, Any]]:
        """Each model tag's latest monitor scores (prediction_store.latest_scores).

        Raises:
            LogUnavailable: the database cannot be reached.
        """
        try:
            return latest_scores(self._ready_engine())
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise LogUnavailable(type(exc).__name__) from None

    # ------------------------------------------------------------------ the thread

    def _ready_engine(self) -> sa.Engine:
        if self.engine is None and not self._setup():
            raise LogUnavailable(self._last_error)
        assert self.engine is not None
        return self.engine

    def _setup(self) -> bool:
        """Engine, tables and hash key; False (the error noted) when the database is down."""
        with self._setup_lock:  # the thread and a feedback may both try
            if self._key is not None:
                return True
            try:
                engine = self.engine or engine_for(self.url, self.root)
                self.engine = engine
                self._key = hash_key(engine)
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                self._failed(exc)
                return False
        logger.info("prediction log: %s", safe_url(engine))
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stopping = self._stopping  # then one last write of all that waits, backoff or not
            if stopping or time.monotonic() >= self._next_try:
                self._write()
            if stopping:
                return
            if self._key is not None:
                self._chores(time.monotonic())

    def _write(self) -> bool:
        """Insert every waiting row in one transaction; False when the database refused."""
        with self._lock:
            self._pending.extend(self._queue)
            self._queue.clear()
            overflow = len(self._pending) - self.max_queue
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow
                self._settled.notify_all()
            batch = list(self._pending)
        if overflow > 0 and self.on_dropped is not None:
            self.on_dropped(overflow)
        if not batch:
            return True
        if self._key is None and not self._setup():
            return False
        refused = 0
        try:
            insert_predictions(self.engine, [row_params(r, self._key) for r in batch])
        except (sa.exc.IntegrityError, sa.exc.DataError):
            refused = self._one_by_one(batch)  # a row the database refuses must not block others
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self._failed(exc)
            return False
        with self._lock:
            del self._pending[: len(batch)]
            self.written += len(batch) - refused
            self.dropped += refused
            self._settled.notify_all()
        if refused and self.on_dropped is not None:
            self.on_dropped(refused)
        if self._failures:
            logger.warning(
                "prediction log: database reachable again after %.0f s and %d failed"
                " attempt(s); %d row(s) written now, %d dropped so far",
                time.monotonic() - self._failing_since,
                self._failures,
                len(batch) - refused,
                self.dropped,
            )
        self._failures, self._failing_since, self._next_try = 0, 0.0, 0.0
        return True

    def _one_by_one(self, batch: list[PredictionRow]) -> int:
        """Insert rows one at a time; returns how many the database refused (dropped)."""
        refused = 0
        for row in batch:
            try:
                insert_predictions(self.engine, [row_params(row, self._key)])
            except (sa.exc.IntegrityError, sa.exc.DataError):
                refused += 1
        if refused:
            logger.warning("prediction log: the database refused %d row(s); dropped", refused)
        return refused

    def _failed(self, exc: BaseException) -> None:
        """Count a failure, back off (1 s doubling to 30 s), warn at most once a minute.
        Only the error's type is logged: SQLAlchemy's messages quote the rows' values."""
        now = time.monotonic()
        self._last_error = type(exc).__name__
        self._failures += 1
        self._failing_since = self._failing_since or now
        self._next_try = now + min(30.0, 2.0 ** min(self._failures - 1, 5))
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            with self._lock:
                waiting, dropped = len(self._queue) + len(self._pending), self.dropped
            logger.warning(
                "prediction log: database unavailable (%s) for %.0f s, %d failed attempt(s);"
                " %d row(s) waiting, %d dropped so far (queue bound %d); predictions go on",
                self._last_error,
                now - self._failing_since,
                self._failures,
                waiting,
                dropped,
                self.max_queue,
            )

    def _chores(self, now: float) -> None:
        """Retention (about hourly) and the drift scores for /metrics (every scores_every_s)."""
        try:
            if now >= self._next_purge:
                self._next_purge = now + self.purge_every_s
                deleted = purge(self.engine, datetime.now(UTC) - self.retention)
                if deleted:
                    logger.info("prediction log: deleted %d prediction(s) past retention", deleted)
            if self.on_scores is not None and now >= self._next_scores:
                self._next_scores = now + self.scores_every_s
                self.on_scores(latest_scores(self.engine))
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self._failed(exc)
