"""Classification metrics at an operating threshold, with bootstrap confidence intervals.

Binary (two classes): the positive class is index 1, predicted when p(1) >= threshold;
calibration (Brier, ECE) is that of p(1). Multi-class: argmax predictions, macro one-vs-rest
AUROC/AUPRC, macro sensitivity/specificity/F1, Brier summed over classes, top-label ECE.
A metric a sample cannot define (AUROC with one class present) is NaN, never a guess.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from medflow.config import EvaluateParams

# the metric names are part of metrics.json's format, so medflow.handoffs defines them
from medflow.handoffs import METRICS as METRICS

# scipy and sklearn are imported where used: they cost a stage about 2 s of start-up.


def binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with one class."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's average_precision_score."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, t = np.asarray(score)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def predict(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class predictions: p(1) >= threshold for two classes, the argmax otherwise."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(1)


def calibration_bins(
    y: np.ndarray, probs: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency, count.

    Binary: p(1) against the positive rate. Multi-class: the top-label confidence against
    the accuracy. Empty bins have count 0 and NaN means.
    """
    if probs.shape[1] == 2:
        conf, hit = probs[:, 1], (y == 1).astype(float)
    else:
        conf, hit = probs.max(1), (probs.argmax(1) == y).astype(float)
    idx = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=n_bins) / count
        freq = np.bincount(idx, hit, minlength=n_bins) / count
    return mean_conf, freq, count


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """ECE: the count-weighted mean gap |mean predicted - observed| over the bins."""
    mean_conf, freq, count = calibration_bins(y, probs, n_bins)
    filled = count > 0
    return float(np.sum(np.abs(mean_conf - freq)[filled] * count[filled]) / count.sum())


def point_metrics(
    y: np.ndarray, probs: np.ndarray, threshold: float, n_bins: int
) -> dict[str, float]:
    """Every metric in METRICS for one sample of (label, probabilities)."""
    y = np.asarray(y)
    n_classes = probs.shape[1]
    pred = predict(probs, threshold)
    classes = [1] if n_classes == 2 else range(n_classes)
    sens, spec, f1 = [], [], []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fn = np.sum((pred != c) & (y == c))
        tn = np.sum((pred != c) & (y != c))
        fp = np.sum((pred == c) & (y != c))
        sens.append(tp / (tp + fn) if tp + fn else np.nan)
        spec.append(tn / (tn + fp) if tn + fp else np.nan)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    if n_classes == 2:
        auroc = binary_auroc(y == 1, probs[:, 1])
        auprc = average_precision(y == 1, probs[:, 1])
        brier = float(np.mean((probs[:, 1] - (y == 1)) ** 2))
    else:
        present = [c for c in range(n_classes) if 0 < np.sum(y == c) < len(y)]
        auroc = _nanmean([binary_auroc(y == c, probs[:, c]) for c in present])
        auprc = _nanmean([average_precision(y == c, probs[:, c]) for c in present])
        brier = float(np.mean(np.sum((probs - np.eye(n_classes)[y]) ** 2, axis=1)))
    return {
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": float(np.mean(pred == y)),
        "sensitivity": _nanmean(sens),
        "specificity": _nanmean(spec),
        "f1": _nanmean(f1),
        "brier": brier,
        "ece": expected_calibration_error(y, probs, n_bins),
    }


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def bootstrap_intervals(
    y: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    n_bins: int,
    *,
    groups: np.ndarray | None,
    n_bootstrap: int,
    level: float,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric.

    Resamples whole groups (patients: their images are not independent) with replacement,
    or single images when groups is None. Replicates where a metric is undefined (e.g. a
    resample with one class) are left out of that metric's interval.
    """
    if n_bootstrap == 0 or len(y) == 0:
        return {m: (float("nan"), float("nan")) for m in METRICS}
    draws = np.empty((n_bootstrap, len(METRICS)))
    for b, idx in enumerate(resamples(len(y), groups, n_bootstrap, seed)):
        values = point_metrics(y[idx], probs[idx], threshold, n_bins)
        draws[b] = [values[m] for m in METRICS]
    return {m: percentile_interval(draws[:, j], level) for j, m in enumerate(METRICS)}


def resamples(
    n: int, groups: np.ndarray | None, n_bootstrap: int, seed: int
) -> Iterator[np.ndarray]:
    """`n_bootstrap` bootstrap samples of the indices 0..n-1: whole groups (patients) drawn
    with replacement, or single items when groups is None. The classification and the
    segmentation intervals both draw through here."""
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    for _ in range(n_bootstrap):
        picked = rng.integers(0, len(members), len(members))
        yield np.concatenate([members[g] for g in picked])


def percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of the finite draws (NaN, NaN when none)."""
    finite = draws[np.isfinite(draws)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def metrics_with_ci(
    y: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    params: EvaluateParams,
    groups: np.ndarray | None,
) -> dict[str, float]:
    """Flat: every metric, with `<metric>_ci_low` and `<metric>_ci_high` (DVC shows numbers)."""
    point = point_metrics(y, probs, threshold, params.n_bins)
    ci = bootstrap_intervals(
        y,
        probs,
        threshold,
        params.n_bins,
        groups=groups,
        n_bootstrap=params.n_bootstrap,
        level=params.ci_level,
        seed=params.seed,
    )
    out: dict[str, float] = {}
    for metric in METRICS:
        out[metric] = point[metric]
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = ci[metric]
    return out


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, params: EvaluateParams) -> float:
    """The operating threshold on p(positive), chosen on the validation split (see
    EvaluateParams.threshold_policy); kept inside (0, 1) as serving requires."""
    if params.threshold_policy == "fixed":
        return params.threshold
    y_val = np.asarray(y_val) == 1
    if y_val.all() or not y_val.any():
        raise ValueError(
            f"threshold_policy {params.threshold_policy!r} needs both classes in the validation"
            f" split, which holds {int(y_val.sum())} positive of {len(y_val)} images; use"
            " evaluate.threshold_policy: fixed, or a larger validation split"
        )
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y_val, p_val, drop_intermediate=False)
    if params.threshold_policy == "target_sensitivity":
        # thresholds fall and sensitivity rises along the curve: the first point reaching
        # the target is the highest threshold that does
        i = int(np.argmax(tpr >= params.target_sensitivity - 1e-12))
    else:  # youden
        i = int(np.argmax(tpr - fpr))
    return float(np.clip(thr[i], 1e-6, 1 - 1e-6))
