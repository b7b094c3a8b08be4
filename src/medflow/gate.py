"""The gate stage: a model below the thresholds in params.yaml is never packaged."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from medflow.config import GateParams
from medflow.errors import GateFailed
from medflow.io import write_json_atomic

log = logging.getLogger(__name__)

# metric -> the GateParams field holding its lower bound
_RULES = {
    "auroc": "min_auroc",
    "sensitivity": "min_sensitivity",
    "specificity": "min_specificity",
}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str]
    report_file: Path


def judge(params: GateParams, metrics: dict[str, float]) -> list[str]:
    """Every failed rule, with the observed value and the threshold."""
    failures = []
    for metric, field in _RULES.items():
        threshold = getattr(params, field)
        value = metrics.get(metric)
        if value is None:
            failures.append(f"{metric} is missing from the metrics (needs >= {threshold})")
        elif not value >= threshold:  # also catches NaN
            failures.append(f"{metric} = {value:.4f} is below gate.{field} = {threshold}")
    return failures


def run_gate(params: GateParams, metrics_file: Path, out_file: Path) -> GateResult:
    """Write the decision to out_file; raise GateFailed with every reason when it fails."""
    metrics = json.loads(Path(metrics_file).read_text())
    failures = judge(params, metrics)
    passed = not failures
    write_json_atomic(
        out_file,
        {
            "passed": passed,
            "failures": failures,
            "thresholds": params.model_dump(),
            "metrics": metrics,
        },
    )
    if not passed:
        raise GateFailed("model refused by the evaluation gate:\n  - " + "\n  - ".join(failures))
    log.info("gate passed: %s", ", ".join(f"{k}={metrics[k]:.4f}" for k in _RULES))
    return GateResult(passed=True, failures=[], report_file=Path(out_file))
