"""The metric maths: AUROC/AUPRC against scikit-learn, intervals, ECE, threshold policies."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medflow.config import EvaluateParams
from medflow.evaluation.metrics import (
    METRICS,
    average_precision,
    binary_auroc,
    bootstrap_intervals,
    choose_threshold,
    expected_calibration_error,
    metrics_with_ci,
    point_metrics,
)


def _binary(n: int, seed: int, separation: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """p(1) spread by `separation`, then each label drawn with exactly that probability:
    calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, separation * 1.5, n)))
    y = (rng.random(n) < p).astype(np.int64)
    return y, np.stack([1 - p, p], 1)


def test_binary_metrics_at_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.4, 0.6, 0.55, 0.8, 0.3])
    m = point_metrics(y, np.stack([1 - p1, p1], 1), threshold=0.5, n_bins=10)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(6 / 9)
    assert m["brier"] == pytest.approx(np.mean((p1 - y) ** 2))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200) * 0.5 + 0.4 * y, 1)  # coarse: many ties
    assert binary_auroc(y, score) == pytest.approx(roc_auc_score(y, score))
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score))


def test_one_class_sample_gives_nan_not_a_guess():
    m = point_metrics(np.zeros(4, int), np.full((4, 2), 0.5), 0.5, 10)
    assert np.isnan(m["auroc"]) and np.isnan(m["sensitivity"])
    assert m["specificity"] == 0.0  # every negative called positive at p >= 0.5


def test_multiclass_macro_auroc_and_argmax():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.8 + 0.2 / 3
    m = point_metrics(y, probs, threshold=0.99, n_bins=10)  # threshold unused: argmax
    assert m["auroc"] == 1.0 and m["accuracy"] == 1.0 and m["sensitivity"] == 1.0
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert m["auroc"] == pytest.approx(expected)


def test_ece_of_a_calibrated_model_is_near_zero_and_of_an_overconfident_one_is_not():
    y, probs = _binary(20_000, seed=0)
    assert expected_calibration_error(y, probs, 10) < 0.02
    p = probs[:, 1]
    sharp = np.clip(np.where(p > 0.5, p + 0.3, p - 0.3), 0, 1)
    assert expected_calibration_error(y, np.stack([1 - sharp, sharp], 1), 10) > 0.1


@pytest.mark.parametrize("seed", range(3))
def test_interval_contains_the_point_estimate(seed):
    y, probs = _binary(300, seed=seed)
    params = EvaluateParams(n_bootstrap=300, seed=seed)
    groups = np.repeat(np.arange(150), 2)  # two images per patient
    m = metrics_with_ci(y, probs, 0.5, params, groups)
    for metric in METRICS:
        assert m[f"{metric}_ci_low"] <= m[metric] <= m[f"{metric}_ci_high"], metric
        assert m[f"{metric}_ci_low"] < m[f"{metric}_ci_high"], metric


def test_intervals_are_seeded_and_resample_patients():
    y, probs = _binary(200, seed=1)
    kwargs = {"n_bootstrap": 200, "level": 0.95, "seed": 3}
    a = bootstrap_intervals(y, probs, 0.5, 10, groups=None, **kwargs)
    assert a == bootstrap_intervals(y, probs, 0.5, 10, groups=None, **kwargs)
    # one patient holding every image: each resample is the whole set, the interval a point
    one = bootstrap_intervals(y, probs, 0.5, 10, groups=np.zeros(200), **kwargs)
    assert one["auroc"][0] == pytest.approx(one["auroc"][1])
    assert a["auroc"][0] < a["auroc"][1]


def test_no_bootstrap_gives_nan_intervals():
    y, probs = _binary(50, seed=2)
    m = metrics_with_ci(y, probs, 0.5, EvaluateParams(n_bootstrap=0), None)
    assert np.isnan(m["auroc_ci_low"]) and np.isfinite(m["auroc"])


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_target_sensitivity_threshold_reaches_the_target_on_val(target):
    y, probs = _binary(400, seed=4, separation=0.8)
    params = EvaluateParams(threshold_policy="target_sensitivity", target_sensitivity=target)
    t = choose_threshold(y, probs[:, 1], params)
    sens = np.mean(probs[y == 1, 1] >= t)
    assert sens >= target
    # the highest such threshold: the next score above it misses the target
    above = np.sort(np.unique(probs[:, 1][probs[:, 1] > t]))
    if len(above):
        assert np.mean(probs[y == 1, 1] >= above[0]) < target


def test_youden_threshold_maximises_tpr_minus_fpr():
    y, probs = _binary(400, seed=5)
    t = choose_threshold(y, probs[:, 1], EvaluateParams(threshold_policy="youden"))

    def j(th: float) -> float:
        return np.mean(probs[y == 1, 1] >= th) - np.mean(probs[y == 0, 1] >= th)

    assert j(t) == pytest.approx(max(j(th) for th in np.unique(probs[:, 1])))


def test_fixed_threshold_and_one_class_val():
    y, probs = _binary(50, seed=6)
    assert choose_threshold(y, probs[:, 1], EvaluateParams(threshold_policy="fixed")) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(10), np.linspace(0, 1, 10), EvaluateParams())
