"""The gate stage: a model that breaks a rule in params.yaml is never packaged.

Value rules judge the candidate's own numbers (classification: AUROC, sensitivity...;
segmentation: Dice and HD95); change rules compare it with the champion scored on the same
test split (baseline.json), for the metrics of max_worse_than_champion the candidate has. The
decision (gate.json) and the model card are written whether the model passes or not, then a
refusal raises GateFailed (docs/evaluation.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.config import HIGHER_IS_BETTER, GateParams
from medflow.errors import GateFailed
from medflow.handoffs import (
    COMPARED,
    Baseline,
    ChampionComparison,
    EvaluationContext,
    GateReport,
    GateRule,
    Metrics,
    SegmentationMetrics,
    read_metrics,
)
from medflow.handoffs import NO_CHAMPION as NO_CHAMPION
from medflow.io import write_text_atomic

log = logging.getLogger(__name__)

# metric -> (GateParams field, ">=" for a lower bound or "<=" for an upper bound)
_VALUE_RULES = {
    "auroc": ("min_auroc", ">="),
    "auroc_ci_low": ("min_auroc_ci_low", ">="),
    "sensitivity": ("min_sensitivity", ">="),
    "specificity": ("min_specificity", ">="),
    "ece": ("max_ece", "<="),
}
_SEGMENTATION_VALUE_RULES = {
    "dice": ("min_dice", ">="),
    "dice_ci_low": ("min_dice_ci_low", ">="),
    "hd95": ("max_hd95", "<="),
}
SEGMENTATION = "segmentation"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str]
    report_file: Path


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4f}"


def _check(rule: str, metric: str, observed: Any, threshold: float, op: str) -> GateRule:
    value = float(observed) if isinstance(observed, int | float) else None
    ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
    word = "below" if op == ">=" else "above"  # NaN compares False: it fails, as it should
    if value is None:
        message = f"{metric} is missing from the metrics (needs {op} {threshold})"
    elif not math.isfinite(value):
        message = f"{metric} = {value} is not defined (needs {op} {threshold} by {rule})"
    else:
        message = f"{metric} = {value:.4f} is {word} {rule} = {threshold}"
    return GateRule(
        rule=rule,
        metric=metric,
        observed=value,
        threshold=threshold,
        op=op,
        passed=ok,
        message="" if ok else message,
    )


def _segmentation(metrics: Mapping[str, Any]) -> bool:
    # metrics.json of a segmentation model says so; a classifier's has no task key
    return metrics.get("task") == SEGMENTATION


def value_rules(params: GateParams, metrics: Mapping[str, Any]) -> list[GateRule]:
    """The rules on the candidate's own metrics, those of its task."""
    rules = _SEGMENTATION_VALUE_RULES if _segmentation(metrics) else _VALUE_RULES
    return [
        _check(f"gate.{field}", metric, metrics.get(metric), getattr(params, field), op)
        for metric, (field, op) in rules.items()
    ]


def subgroup_rules(
    params: GateParams, subgroups: dict[str, dict[str, dict[str, Any]]]
) -> list[GateRule]:
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
    params: GateParams, metrics: Mapping[str, Any], champion: Mapping[str, Any]
) -> list[GateRule]:
    """No metric worse than the champion's by more than gate.max_worse_than_champion, for
    the metrics the candidate has (a classifier has no dice, a segmentation model no auroc:
    those keys are not rules for it)."""
    out = []
    for metric, delta in sorted(params.max_worse_than_champion.items()):
        rule = f"gate.max_worse_than_champion.{metric}"
        if metric not in metrics:
            log.debug("%s: the candidate's task has no %s", rule, metric)
            continue
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
            result = result.model_copy(update={"message": msg})
        out.append(result)
    return out


def judge(
    params: GateParams,
    metrics: Mapping[str, Any],
    subgroups: dict[str, Any] | None = None,
    champion: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every failed rule, with the observed value and the threshold."""
    return [r.message for r in all_rules(params, metrics, subgroups, champion) if not r.passed]


def all_rules(
    params: GateParams,
    metrics: Mapping[str, Any],
    subgroups: dict[str, Any] | None = None,
    champion: Mapping[str, Any] | None = None,
) -> list[GateRule]:
    """Every rule of the gate: value and subgroup rules, and the change rules when there is a
    champion's metrics (name -> number) to compare with. Segmentation has no subgroup rule
    (subgroups.json reports them; min_subgroup_auroc is a classifier's)."""
    rules = value_rules(params, metrics)
    if not _segmentation(metrics):
        rules += subgroup_rules(params, subgroups or {})
    if champion is not None:
        rules += champion_rules(params, metrics, champion)
    return rules


def _read_subgroups(path: Path | None) -> dict[str, Any]:
    # subgroups.json: attribute -> value -> metrics (a DVC metrics file of evaluate)
    if path is None or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


def champion_report(baseline: Baseline | None, baseline_file: Path | None) -> ChampionComparison:
    """gate.json's `champion`: what the change rules compared with, or why they did not run."""
    where = str(baseline_file) if baseline_file else None
    if baseline is None:
        return ChampionComparison(status=NO_CHAMPION, reason=f"no baseline ({where})", file=where)
    return ChampionComparison(
        status=baseline.status,
        reason=baseline.reason,
        same_split=baseline.same_split,
        dataset=baseline.dataset.key if baseline.dataset is not None else None,
        model_tag=baseline.champion.model_tag if baseline.champion is not None else None,
        evaluated_on=baseline.evaluated_on,
        metrics=baseline.metrics,
        file=where,
    )


def _card(
    metrics: Metrics | SegmentationMetrics,
    subgroups: dict[str, Any],
    context: EvaluationContext | None,
    report: GateReport,
) -> str:
    """The model card of the metrics' task."""
    if isinstance(metrics, SegmentationMetrics):
        from medflow.evaluation.segmentation_card import render_segmentation_card

        return render_segmentation_card(metrics, subgroups, context, report)
    from medflow.evaluation.model_card import render_model_card

    return render_model_card(metrics, subgroups, context, report)


def run_gate(
    params: GateParams,
    metrics_file: Path,
    out_file: Path,
    *,
    subgroups_file: Path | None = None,
    baseline_file: Path | None = None,
    context_file: Path | None = None,
    card_file: Path | None = None,
    task: str | None = None,
) -> GateResult:
    """Judge the evaluation, write the decision to out_file (and the model card to card_file);
    raise GateFailed with every reason when it fails.

    baseline_file: the evaluate stage's baseline.json; the change rules apply only when its
    status is `compared` (the champion scored on this test split).
    task: data.task, when known: a metrics file of the other task is an error.
    """
    metrics = read_metrics(metrics_file)
    found = SEGMENTATION if isinstance(metrics, SegmentationMetrics) else "classification"
    if task is not None and task != found:
        raise ValueError(
            f"data.task is {task} but {metrics_file} holds {found} metrics: re-run evaluate"
        )
    subgroups = _read_subgroups(subgroups_file)
    has_baseline = baseline_file is not None and Path(baseline_file).is_file()
    baseline = Baseline.read(baseline_file) if has_baseline else None
    report_champion = champion_report(baseline, baseline_file)
    compared = report_champion.metrics if report_champion.status == COMPARED else None
    champion = compared.values() if compared is not None else None
    rules = all_rules(params, metrics.values(), subgroups, champion)
    failures = [r.message for r in rules if not r.passed]
    report = GateReport(
        passed=not failures,
        decision="refused" if failures else "accepted",
        failures=failures,
        rules=rules,
        champion=report_champion,
        thresholds=params,
        metrics=metrics,
    )
    report.write(out_file)
    if card_file is not None:
        has_context = context_file is not None and Path(context_file).is_file()
        context = EvaluationContext.read(context_file) if has_context else None
        write_text_atomic(card_file, _card(metrics, subgroups, context, report))
    if champion is None:
        log.info(
            "gate: %s (%s), judged by the value rules alone",
            report_champion.status,
            report_champion.reason,
        )
    else:
        log.info("gate: change rules against %s", report_champion.reason)
    if failures:
        raise GateFailed("model refused by the evaluation gate:\n  - " + "\n  - ".join(failures))
    log.info("gate passed %d rules: %s", len(rules), ", ".join(f"{r.metric}" for r in rules))
    return GateResult(passed=True, failures=[], report_file=Path(out_file))
