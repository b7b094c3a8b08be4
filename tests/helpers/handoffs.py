"""Complete hand-off files (medflow.handoffs) for tests that start after the evaluate stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medflow.config import EvaluateParams, GateParams, PreprocessParams
from medflow.handoffs import (
    METRICS,
    NO_CHAMPION,
    ChampionComparison,
    EvaluationContext,
    GateReport,
    Metrics,
)

# a good binary model: every rule of params.yaml's gate passes
GOOD = {
    "auroc": 0.95,
    "auprc": 0.94,
    "accuracy": 0.88,
    "sensitivity": 0.9,
    "specificity": 0.85,
    "f1": 0.87,
    "brier": 0.08,
    "ece": 0.03,
}


def metrics_values(**overrides: Any) -> dict[str, Any]:
    """metrics.json as a dict: GOOD with intervals of +-0.05, then `overrides` (a key of
    None is left out, to make a file that lacks it)."""
    out: dict[str, Any] = {}
    for name in METRICS:
        out[name] = GOOD[name]
        out[f"{name}_ci_low"] = round(GOOD[name] - 0.05, 4)
        out[f"{name}_ci_high"] = round(min(GOOD[name] + 0.05, 1.0), 4)
    out.update(
        threshold=0.5,
        val_sensitivity=0.9,
        val_specificity=0.85,
        n_test=120,
        n_test_patients=40,
        n_test_positive=60,
    )
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def metrics(**overrides: Any) -> Metrics:
    """A complete Metrics: GOOD with `overrides`."""
    return Metrics.model_validate(metrics_values(**overrides))


def gate_report(m: Metrics, failures: list[str] | None = None) -> GateReport:
    """A gate decision that accepted `m` (refused it, with `failures`), judged by no rule."""
    return GateReport(
        passed=not failures,
        decision="refused" if failures else "accepted",
        failures=failures or [],
        rules=[],
        champion=ChampionComparison(status=NO_CHAMPION, reason="test: no champion"),
        thresholds=GateParams(),
        metrics=m,
    )


def write_evaluated(
    folder: Path, failures: list[str] | None = None, **overrides: Any
) -> tuple[Path, Path]:
    """metrics.json and gate.json in `folder`, as evaluate and gate write them: the gate
    accepted the model, or refused it for `failures`."""
    m = metrics(**overrides)
    m.write(folder / "metrics.json")
    gate_report(m, failures).write(folder / "gate.json")
    return folder / "metrics.json", folder / "gate.json"


def evaluation_context(provenance: dict[str, Any] | None = None) -> EvaluationContext:
    """evaluation.json of a normal/lesion SmallCNN at revision 0123abc; `provenance` adds to
    (or replaces keys of) its model.json provenance."""
    return EvaluationContext.model_validate(
        {
            "threshold": {
                "policy": "target_sensitivity",
                "value": 0.37,
                "chosen_on": "val",
                "applies": "p(positive) >= threshold",
            },
            "bootstrap": {"unit": "patient", "n": 1000, "level": 0.95, "seed": 0},
            "subgroups": {"reported": ["site"], "missing": ["sex", "age_band"]},
            "data": {
                "data_hash": "cafe1234",
                "counts": {"test": 120, "train": 200},
                "class_counts": {"test": {"normal": 70, "lesion": 50}, "train": {"normal": 200}},
                "preprocess": PreprocessParams(),
            },
            "model": {
                "architecture": "SmallCNN",
                "class_names": ["normal", "lesion"],
                "num_classes": 2,
                "provenance": {
                    "git_revision": "0123abc",
                    "library_versions": {"torch": "2.13.0"},
                    "train_params": {"max_epochs": 3},
                    **(provenance or {}),
                },
            },
            "params": EvaluateParams(n_bins=10),
            "plots": {"calibration": "plots/calibration.png", "roc": "plots/roc.png"},
            "evaluated_with": {"git_revision": "0123abc", "library_versions": {"torch": "2.13.0"}},
        }
    )
