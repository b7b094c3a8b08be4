"""The service's Prometheus metrics, read back as /metrics exposes them."""

from __future__ import annotations

import math

from prometheus_client import REGISTRY, generate_latest

from medflow.serving.metrics import ServiceMetrics


def _value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_predictions_feedback_and_drops_are_counted() -> None:
    metrics = ServiceMetrics("test-counts:v1", ["normal", "lesion"])
    assert _value("medflow_predictions_total", model_tag="test-counts:v1", label="lesion") == 0
    assert _value("medflow_feedback_total", model_tag="test-counts:v1") == 0
    dropped = _value("medflow_prediction_log_dropped_total") or 0.0
    for label in ("lesion", "lesion", "normal"):
        metrics.predicted(label)
    metrics.feedback("test-counts:v0")  # feedback on an earlier model's prediction
    metrics.dropped(3)
    assert _value("medflow_predictions_total", model_tag="test-counts:v1", label="lesion") == 2
    assert _value("medflow_predictions_total", model_tag="test-counts:v1", label="normal") == 1
    assert _value("medflow_feedback_total", model_tag="test-counts:v0") == 1
    assert _value("medflow_prediction_log_dropped_total") == dropped + 3
    assert b'medflow_predictions_total{label="lesion",model_tag="test-counts:v1"} 2.0' in (
        generate_latest(REGISTRY)
    )


def test_drift_gauges_hold_the_latest_scores() -> None:
    metrics = ServiceMetrics("test-drift:v1", ["a", "b"])
    run = [
        {
            "model_tag": "test-drift:v1",
            "name": "psi",
            "score": 0.4,
            "threshold": 0.25,
            "broken": True,
        },
        {
            "model_tag": "test-drift:v1",
            "name": "intensity",
            "score": None,
            "threshold": 0.2,
            "broken": False,
        },
    ]
    metrics.set_scores(run)
    assert _value("medflow_drift_score", model_tag="test-drift:v1", name="psi") == 0.4
    assert _value("medflow_drift_alarm", model_tag="test-drift:v1", name="psi") == 1
    assert math.isnan(_value("medflow_drift_score", model_tag="test-drift:v1", name="intensity"))
    assert _value("medflow_drift_alarm", model_tag="test-drift:v1", name="intensity") == 0
    metrics.set_scores([{**run[0], "score": 0.1, "broken": False}])
    assert _value("medflow_drift_score", model_tag="test-drift:v1", name="psi") == 0.1
    assert _value("medflow_drift_alarm", model_tag="test-drift:v1", name="psi") == 0
