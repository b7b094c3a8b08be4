"""The gate stage: a model that breaks a rule in params.yaml is never packaged.

Two kinds of rules (docs/evaluation.md), TFX-style:
  value rules   the candidate's own numbers: AUROC, the lower end of its interval, ECE,
                sensitivity, specificity, AUROC of every subgroup not flagged small;
  change rules  against the champion of the dataset (the last model packaged or promoted
                on it), scored by the evaluate stage on the candidate's own test split
                (reports/baseline.json, medflow.registry.baseline): no metric worse by more than its
                allowed delta.
Without a champion to compare with (the first model on a dataset, a champion of other class
names, a champion whose model is gone from the store) the value rules alone judge, and the
report says which of these it was.
The decision, every rule with its observed value and threshold, and the model card are
written whether the model passes or not; a refusal then raises GateFailed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medflow.config import HIGHER_IS_BETTER, GateParams
from medflow.errors import GateFailed
from medflow.io import write_json_atomic, write_text_atomic
from medflow.registry.baseline import COMPARED
from medflow.registry.baseline import NO_CHAMPION as NO_CHAMPION

log = logging.getLogger(__name__)

# metric -> (GateParams field, ">=" for a lower bound or "<=" for an upper bound)
_VALUE_RULES = {
    "auroc": ("min_auroc", ">="),
    "auroc_ci_low": ("min_auroc_ci_low", ">="),
    "sensitivity": ("min_sensitivity", ">="),
    "specificity": ("min_specificity", ">="),
    "ece": ("max_ece", "<="),
}


@dataclass(frozen=True)
class RuleResult:
    rule: str  # the params key, e.g. gate.min_auroc
    metric: str  # what was measured, e.g. auroc, or site=SITE-1/auroc
    observed: float | None
    threshold: float
    op: str  # ">=" or "<=": passed when `observed op threshold`
    passed: bool
    message: str


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str]
    report_file: Path


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4f}"


def _check(rule: str, metric: str, observed: Any, threshold: float, op: str) -> RuleResult:
    value = float(observed) if isinstance(observed, int | float) else None
    ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    word = "below" if op == ">=" else "above"  # NaN compares False: it fails, as it should
    if value is None:
        message = f"{metric} is missing from the metrics (needs {op} {threshold})"
    elif not math.isfinite(value):
        message = f"{metric} = {value} is not defined (needs {op} {threshold} by {rule})"
    else:
        message = f"{metric} = {value:.4f} is {word} {rule} = {threshold}"
    return RuleResult(rule, metric, value, threshold, op, ok, "" if ok else message)


def value_rules(params: GateParams, metrics: dict[str, Any]) -> list[RuleResult]:
    return [
        _check(f"gate.{field}", metric, metrics.get(metric), getattr(params, field), op)
        for metric, (field, op) in _VALUE_RULES.items()
    ]


def subgroup_rules(
    params: GateParams, subgroups: dict[str, dict[str, dict[str, Any]]]
) -> list[RuleResult]:
    """AUROC of every subgroup that is not flagged small; off when min_subgroup_auroc is 0."""
    if params.min_subgroup_auroc <= 0:
        return []
    out = []
    for attribute, values in sorted(subgroups.items()):
        for value, row in sorted(values.items()):
            if row.get("small"):
                continue
            result = _check(
                "gate.min_subgroup_auroc",
                f"{attribute}={value} (n={row.get('n')}) auroc",
                row.get("auroc"),
                params.min_subgroup_auroc,
                ">=",
            )
            out.append(result)
    return out


def champion_rules(
    params: GateParams, metrics: dict[str, Any], champion: dict[str, Any]
) -> list[RuleResult]:
    """No metric worse than the champion's by more than gate.max_worse_than_champion."""
    out = []
    for metric, delta in sorted(params.max_worse_than_champion.items()):
        rule = f"gate.max_worse_than_champion.{metric}"
        base = champion.get(metric)
        if not isinstance(base, int | float) or not math.isfinite(base):
            log.warning("champion has no %s: %s not checked", metric, rule)
            continue
        higher = metric in HIGHER_IS_BETTER
        bound = base - delta if higher else base + delta
        result = _check(rule, metric, metrics.get(metric), bound, ">=" if higher else "<=")
        if not result.passed and result.observed is not None and math.isfinite(result.observed):
            gap = abs(result.observed - base)
            side = "below" if higher else "above"
            msg = (
                f"{metric} = {result.observed:.4f} is {gap:.4f} {side} the champion's"
                f" {base:.4f} ({rule} = {delta})"
            )
            result = RuleResult(**{**asdict(result), "message": msg})
        out.append(result)
    return out


def judge(
    params: GateParams,
    metrics: dict[str, Any],
    subgroups: dict[str, Any] | None = None,
    champion: dict[str, Any] | None = None,
) -> list[str]:
    """Every failed rule, with the observed value and the threshold."""
    return [r.message for r in all_rules(params, metrics, subgroups, champion) if not r.passed]


def all_rules(
    params: GateParams,
    metrics: dict[str, Any],
    subgroups: dict[str, Any] | None = None,
    champion: dict[str, Any] | None = None,
) -> list[RuleResult]:
    rules = value_rules(params, metrics) + subgroup_rules(params, subgroups or {})
    if champion is not None:
        rules += champion_rules(params, metrics, champion)
    return rules


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def champion_report(baseline: dict[str, Any] | None, baseline_file: Path | None) -> dict[str, Any]:
    """gate.json's `champion`: what the change rules compared with, or why they did not run."""
    if baseline is None:
        where = str(baseline_file) if baseline_file else None
        return {"status": NO_CHAMPION, "reason": f"no baseline ({where})", "file": where}
    champion = baseline.get("champion") or {}
    return {
        "status": baseline.get("status", NO_CHAMPION),
        "reason": baseline.get("reason", ""),
        "same_split": baseline.get("status") == COMPARED,
        "dataset": (baseline.get("dataset") or {}).get("key"),
        "model_tag": champion.get("model_tag"),
        "evaluated_on": baseline.get("evaluated_on") or {},
        "metrics": baseline.get("metrics"),
        "file": str(baseline_file) if baseline_file else None,
    }


def run_gate(
    params: GateParams,
    metrics_file: Path,
    out_file: Path,
    *,
    subgroups_file: Path | None = None,
    baseline_file: Path | None = None,
    context_file: Path | None = None,
    card_file: Path | None = None,
) -> GateResult:
    """Judge the evaluation, write the decision to out_file (and the model card to card_file);
    raise GateFailed with every reason when it fails.

    baseline_file: the evaluate stage's baseline.json; the change rules apply only when its
    status is `compared` (the champion scored on this test split).
    """
    metrics = json.loads(Path(metrics_file).read_text())
    subgroups = _read_json(subgroups_file) or {}
    baseline = _read_json(baseline_file)
    report_champion = champion_report(baseline, baseline_file)
    champion = report_champion["metrics"] if report_champion["status"] == COMPARED else None
    if champion is None and report_champion["status"] == COMPARED:
        raise ValueError(f"{baseline_file} says compared but holds no metrics: re-run evaluate")
    rules = all_rules(params, metrics, subgroups, champion)
    failures = [r.message for r in rules if not r.passed]
    passed = not failures
    report = {
        "passed": passed,
        "decision": "accepted" if passed else "refused",
        "failures": failures,
        "rules": [asdict(r) for r in rules],
        "champion": report_champion,
        "thresholds": params.model_dump(),
        "metrics": metrics,
    }
    write_json_atomic(out_file, report)
    if card_file is not None:
        from medflow.evaluation.model_card import render_model_card

        context = _read_json(context_file) or {}
        write_text_atomic(card_file, render_model_card(metrics, subgroups, context, report))
    if champion is None:
        log.info(
            "gate: %s (%s), judged by the value rules alone",
            report_champion["status"],
            report_champion["reason"],
        )
    else:
        log.info("gate: change rules against %s", report_champion["reason"])
    if not passed:
        raise GateFailed("model refused by the evaluation gate:\n  - " + "\n  - ".join(failures))
    log.info("gate passed %d rules: %s", len(rules), ", ".join(f"{r.metric}" for r in rules))
    return GateResult(passed=True, failures=[], report_file=Path(out_file))
