"""The test metrics per subgroup (site, manufacturer, sex, age band, ...) of the manifest.

Subgroups come from manifest columns named in evaluate.subgroups; a column the manifest does
not have is reported as missing, never silently skipped (blank values form the group
"(missing)"). Small subgroups are reported with `small: 1` and left to the
reader: their intervals are wide and the gate does not judge them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from medflow.config import EvaluateParams
from medflow.evaluation.metrics import metrics_with_ci

log = logging.getLogger(__name__)
MISSING_VALUE = "(missing)"


def subgroup_metrics(
    frame: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    params: EvaluateParams,
    groups: np.ndarray | None,
) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """({attribute: {value: metrics}}, missing attributes).

    frame holds one row per test image, in the order of y and probs, with the manifest's
    subgroup columns. Each subgroup's metrics carry n, n_positive (binary) and small (0/1).
    """

    def score(mask: np.ndarray) -> dict[str, float]:
        row: dict[str, float] = {}
        if probs.shape[1] == 2:
            row["n_positive"] = int(np.sum(y[mask] == 1))
        sub_groups = None if groups is None else groups[mask]
        row.update(metrics_with_ci(y[mask], probs[mask], threshold, params, sub_groups))
        return row

    return subgroup_table(frame, params, score)


def subgroup_table(
    frame: pd.DataFrame,
    params: EvaluateParams,
    score: Callable[[np.ndarray], dict[str, float]],
) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    """({attribute: {value: n, small and score(its boolean row mask)}}, missing attributes)
    over the subgroup columns of `frame` (one row per test image): the slicing both tasks
    share."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    missing = [a for a in params.subgroups if a not in frame.columns]
    if missing:
        log.warning("subgroups not in the manifest, not reported: %s", ", ".join(missing))
    for attribute in (a for a in params.subgroups if a in frame.columns):
        values = frame[attribute].astype("string").fillna(MISSING_VALUE).replace("", MISSING_VALUE)
        out[attribute] = {}
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            row: dict[str, float] = {
                "n": int(mask.sum()),
                "small": int(mask.sum() < params.min_subgroup_n),
            }
            row.update(score(mask))
            out[attribute][str(value)] = row
        log.info(
            "subgroups by %s: %s",
            attribute,
            ", ".join(f"{v} n={r['n']}" for v, r in out[attribute].items()),
        )
    return out, missing
