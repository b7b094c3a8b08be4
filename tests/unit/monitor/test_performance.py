"""Live performance from feedback: the evaluate stage's metrics with intervals, and the rule."""

import math

import numpy as np
import pytest

from medflow.config import EvaluateParams, MonitorParams
from medflow.evaluation.metrics import METRICS, point_metrics
from medflow.monitor.performance import LivePerformance, auroc_drop_rule, live_performance

CLASSES = ["normal", "lesion"]
FAST = EvaluateParams(n_bootstrap=200)


def _labelled(n: int, seed: int, wrong: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.6, 0.6, n)
    y = (rng.random(n) < p).astype(np.int64)
    return (1 - y if wrong else y), np.c_[1 - p, p]


def test_the_metrics_are_the_evaluate_stages_at_the_served_threshold() -> None:
    y, probs = _labelled(200, 0)
    live = live_performance(y, probs, 0.3, CLASSES, FAST)
    assert live.metrics == pytest.approx(point_metrics(y, probs, 0.3, FAST.n_bins))
    assert set(live.intervals) == set(METRICS) and live.threshold == 0.3
    for name in METRICS:
        low, high = live.intervals[name]
        assert low <= live.metrics[name] <= high, name
    assert live.n_labelled == 200 and sum(live.labelled_per_class.values()) == 200
    assert live.labelled_per_class["lesion"] == int(y.sum())


def test_groups_resample_an_image_predicted_twice_as_one() -> None:
    y, probs = _labelled(60, 1)
    y2, probs2 = np.r_[y, y], np.r_[probs, probs]
    groups = np.r_[np.arange(60), np.arange(60)].astype(str)
    grouped = live_performance(y2, probs2, 0.5, CLASSES, FAST, groups=groups)
    single = live_performance(y2, probs2, 0.5, CLASSES, FAST)
    width = lambda p: p.intervals["auroc"][1] - p.intervals["auroc"][0]  # noqa: E731
    assert width(grouped) > width(single)  # duplicates are not independent evidence


def test_nothing_labelled_or_a_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="no predictions with feedback"):
        live_performance(np.array([], dtype=int), np.zeros((0, 2)), 0.5, CLASSES, FAST)
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        live_performance(np.array([0, 1, 1]), np.zeros((3, 3)), 0.5, CLASSES, FAST)


def _live(auroc: float, n: int, interval: tuple[float, float] = (0.6, 0.8)) -> LivePerformance:
    metrics = dict.fromkeys(METRICS, 0.5) | {"auroc": auroc}
    intervals = dict.fromkeys(METRICS, (0.4, 0.6)) | {"auroc": interval}
    return LivePerformance(
        n, {"normal": n // 2, "lesion": n - n // 2}, 0.5, metrics, intervals, 0.95
    )


@pytest.mark.parametrize(
    ("live", "evaluated", "judged", "broken", "why"),
    [
        (None, 0.9, False, False, "0 predictions with feedback, fewer than monitor.min_feedback"),
        (_live(0.5, 29), 0.9, False, False, "29 predictions with feedback"),
        (_live(math.nan, 40), 0.9, False, False, "one class only"),
        (_live(0.7, 40), None, False, False, "evaluated test AUROC is not known"),
        (_live(0.85, 40), 0.9, True, False, "a drop of 0.050 <= 0.1"),
        (_live(0.75, 40), 0.9, True, True, "a drop of 0.150 > 0.1"),
    ],
)
def test_the_auroc_drop_rule(live, evaluated, judged, broken, why) -> None:
    rule = auroc_drop_rule(live, evaluated, MonitorParams(min_feedback=30, max_auroc_drop=0.1))
    assert (rule.name, rule.judged, rule.broken, rule.threshold) == (
        "auroc_drop",
        judged,
        broken,
        0.1,
    )
    assert why in rule.detail
    if judged:
        assert rule.score == pytest.approx(evaluated - live.metrics["auroc"])
        assert "95% interval 0.600-0.800 on 40 labelled predictions" in rule.detail
    else:
        assert rule.score is None


def test_wrong_labels_show_as_a_drop() -> None:
    y, probs = _labelled(120, 2, wrong=True)
    live = live_performance(y, probs, 0.5, CLASSES, FAST)
    rule = auroc_drop_rule(live, 0.9, MonitorParams())
    assert live.metrics["auroc"] < 0.3 and rule.broken
