"""The service's own Prometheus metrics, served on BentoML's /metrics beside its request metrics.

Predictions per model and class, feedback received, rows the prediction log dropped, and the
latest monitor run's drift scores and alarms (docs/monitoring.md, "Dashboards"). Created in
the worker, after BentoML has set up Prometheus' multiprocess directory (hence the imports
inside functions), once per process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any


@functools.cache
def _collectors() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge

    # Gauges: each worker sets the same values from the database; show the latest write.
    return {
        "predictions": Counter(
            "medflow_predictions",
            "Predictions answered, per model and predicted class",
            ("model_tag", "label"),
        ),
        "feedback": Counter(
            "medflow_feedback", "Ground-truth feedback recorded, per model", ("model_tag",)
        ),
        "dropped": Counter(
            "medflow_prediction_log_dropped",
            "Prediction log rows dropped (queue full while the database was down)",
        ),
        "score": Gauge(
            "medflow_drift_score",
            "The latest monitor run's value of each rule",
            ("model_tag", "name"),
            multiprocess_mode="mostrecent",
        ),
        "alarm": Gauge(
            "medflow_drift_alarm",
            "1 when the rule broke in the latest monitor run, else 0",
            ("model_tag", "name"),
            multiprocess_mode="mostrecent",
        ),
    }


class ServiceMetrics:
    """The metrics of one served model; each call is a few microseconds (no I/O)."""

    def __init__(self, model_tag: str, class_names: Sequence[str]) -> None:
        metrics = _collectors()
        self.model_tag = model_tag
        self._predicted = {
            name: metrics["predictions"].labels(model_tag=model_tag, label=name)
            for name in class_names
        }
        self._feedback = metrics["feedback"]
        self._feedback.labels(model_tag=model_tag)  # shown as 0 until the first feedback
        self._dropped = metrics["dropped"]
        self._score, self._alarm = metrics["score"], metrics["alarm"]

    def predicted(self, label: str) -> None:
        self._predicted[label].inc()

    def feedback(self, model_tag: str) -> None:
        """One feedback recorded for a prediction of `model_tag` (maybe an earlier model)."""
        self._feedback.labels(model_tag=model_tag).inc()

    def dropped(self, rows: int) -> None:
        self._dropped.inc(rows)

    def set_scores(self, rows: list[dict[str, Any]]) -> None:
        """The drift gauges from prediction_store.latest_scores rows."""
        for row in rows:
            labels = {"model_tag": row["model_tag"], "name": row["name"]}
            score = row["score"]
            self._score.labels(**labels).set(math.nan if score is None else float(score))
            self._alarm.labels(**labels).set(1.0 if row["broken"] else 0.0)
