"""A monitoring rule's outcome: judged or not (and why), its score, threshold and verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# the rules, in report order; also the `name` of their drift_scores rows and /metrics gauges
INPUT_RULES = ("manufacturer_mix", "intensity")
PSI = "psi"
AUROC_DROP = "auroc_drop"
RULES = (*INPUT_RULES, PSI, AUROC_DROP)


@dataclass(frozen=True)
class Rule:
    """One rule for one model tag in one run.

    score and threshold are in the rule's own unit (manufacturer_mix: total variation
    distance; intensity: reference standard deviations; psi: population stability index;
    auroc_drop: evaluated minus live AUROC). A rule that was not judged has broken False and
    says why in `detail`.
    """

    name: str
    judged: bool
    broken: bool
    score: float | None
    threshold: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN as None)."""
        return {
            "name": self.name,
            "judged": self.judged,
            "broken": self.broken,
            "score": _finite(self.score),
            "threshold": self.threshold,
            "detail": self.detail,
        }


def not_judged(name: str, threshold: float | None, why: str) -> Rule:
    """A rule that could not be judged in this run, and why."""
    return Rule(name=name, judged=False, broken=False, score=None, threshold=threshold, detail=why)


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)
