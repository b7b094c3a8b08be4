"""Live performance from feedback: the evaluate stage's metrics on the predictions whose
ground truth came back, with bootstrap intervals, and the AUROC-drop rule.

The metrics are medflow.evaluation.metrics' (the threshold is the one served); intervals
resample images, or whole images when one was predicted more than once (groups).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medflow.config import EvaluateParams, MonitorParams
from medflow.evaluation.metrics import METRICS, metrics_with_ci
from medflow.monitor.rules import AUROC_DROP, Rule, not_judged


@dataclass(frozen=True)
class LivePerformance:
    """Metrics (METRICS) of the labelled predictions, their intervals and counts."""

    n_labelled: int
    labelled_per_class: dict[str, int]
    threshold: float
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    ci_level: float


def live_performance(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    class_names: Sequence[str],
    params: EvaluateParams,
    groups: np.ndarray | None = None,
) -> LivePerformance:
    """Metrics of (labels, probabilities) at the served threshold, with percentile bootstrap
    intervals (EvaluateParams n_bins, n_bootstrap, ci_level, seed).

    Raises:
        ValueError: no labelled predictions, or probabilities not (n, len(class_names)).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=float)
    if len(labels) == 0:
        raise ValueError("no predictions with feedback")
    if probs.shape != (len(labels), len(class_names)):
        raise ValueError(
            f"probabilities have shape {probs.shape}, expected ({len(labels)}, {len(class_names)})"
        )
    flat = metrics_with_ci(labels, probs, threshold, params, groups)
    return LivePerformance(
        n_labelled=len(labels),
        labelled_per_class={name: int(np.sum(labels == i)) for i, name in enumerate(class_names)},
        threshold=threshold,
        metrics={m: float(flat[m]) for m in METRICS},
        intervals={m: (float(flat[f"{m}_ci_low"]), float(flat[f"{m}_ci_high"])) for m in METRICS},
        ci_level=params.ci_level,
    )


def auroc_drop_rule(
    live: LivePerformance | None, evaluated_auroc: float | None, params: MonitorParams
) -> Rule:
    """Broken when, with at least monitor.min_feedback labelled predictions, the live AUROC is
    below the evaluated test AUROC minus monitor.max_auroc_drop. Score: evaluated - live."""
    limit = params.max_auroc_drop
    n = 0 if live is None else live.n_labelled
    if n < params.min_feedback:
        return not_judged(
            AUROC_DROP,
            limit,
            f"{n} predictions with feedback, fewer than monitor.min_feedback {params.min_feedback}",
        )
    assert live is not None
    if evaluated_auroc is None or not math.isfinite(evaluated_auroc):
        return not_judged(AUROC_DROP, limit, "the model's evaluated test AUROC is not known")
    auroc = live.metrics["auroc"]
    if not math.isfinite(auroc):
        return not_judged(
            AUROC_DROP,
            limit,
            f"live AUROC undefined: the {n} labelled predictions hold one class only",
        )
    drop = evaluated_auroc - auroc
    low, high = live.intervals["auroc"]
    ci = f", {live.ci_level:.0%} interval {low:.3f}-{high:.3f}" if math.isfinite(low) else ""
    return Rule(
        name=AUROC_DROP,
        judged=True,
        broken=drop > limit,
        score=drop,
        threshold=limit,
        detail=(
            f"live AUROC {auroc:.3f}{ci} on {n} labelled predictions, evaluated test AUROC"
            f" {evaluated_auroc:.3f}: a drop of {drop:.3f}"
            + (f" > {limit:g}" if drop > limit else f" <= {limit:g}")
        ),
    )
