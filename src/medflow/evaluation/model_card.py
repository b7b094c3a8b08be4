"""The model card: one Markdown page per evaluated model, written by the gate stage whether
the model passed or not (a refused model's card says why)."""

from __future__ import annotations

import json
import math
from typing import Any

from medflow.handoffs import (
    COMPARED,
    METRICS,
    NO_CHAMPION,
    EvaluationContext,
    GateReport,
    Metrics,
    ScoredMetrics,
)

_LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "accuracy": "accuracy",
    "sensitivity": "sensitivity (recall)",
    "specificity": "specificity",
    "f1": "F1",
    "brier": "Brier score (lower is better)",
    "ece": "expected calibration error (lower is better)",
}


_SPLITS = ["train", "val", "test"]


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    if isinstance(value, int):
        return str(value)
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(row: ScoredMetrics | dict[str, Any], metric: str) -> str:
    """`value [low, high]` of a metric of metrics.json, or of a subgroups.json row."""
    if isinstance(row, ScoredMetrics):
        value, low, high = row.interval(metric)
    else:
        value, low, high = (row.get(f"{metric}{end}") for end in ("", "_ci_low", "_ci_high"))
    return f"{_num(value)} [{_num(low)}, {_num(high)}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_model_card(
    metrics: Metrics,
    subgroups: dict[str, dict[str, dict[str, Any]]],
    context: EvaluationContext | None,
    gate: GateReport,
) -> str:
    """Markdown: intended use and limits, data, metrics with intervals, subgroups,
    calibration, the gate decision with its reasons, params, versions and revisions.

    Without `context` (no evaluation.json) what only it knows is shown as unknown.
    """
    decision = "ACCEPTED" if gate.passed else "REFUSED"
    classes = context.model.class_names if context else []
    data_hash = context.data.data_hash if context else "unknown"
    revision = _provenance(context).get("git_revision", "unknown")
    lines = [
        f"# Model card: {' / '.join(classes) or 'image'} classifier",
        "",
        f"**Gate decision: {decision}.** Data `{data_hash}`, code `{revision}`.",
    ]
    lines += _intended_use(metrics, context)
    lines += _data(context)
    lines += _metrics(metrics, context)
    lines += _subgroups(subgroups, context)
    lines += _calibration(metrics, context)
    lines += _gate(gate, decision)
    lines += _parameters(context, gate)
    lines += _provenance_section(context)
    return "\n".join(lines) + "\n"


def _provenance(context: EvaluationContext | None) -> dict[str, Any]:
    # model.json's provenance: its keys grew over releases, so each is looked up
    return context.model.provenance if context else {}


def _missing(context: EvaluationContext | None) -> list[str]:
    return context.subgroups.missing if context else []


def _intended_use(metrics: Metrics, context: EvaluationContext | None) -> list[str]:
    classes = context.model.class_names if context else []
    if context is not None:
        thr = context.threshold
        rule = f"`{thr.applies}` at threshold {_num(thr.value, 4)} ({thr.policy}, chosen on"
        rule += f" {thr.chosen_on})"
    else:
        rule = f"at threshold {_num(metrics.threshold, 4)}"
    lines = [
        "",
        "## Intended use and limits",
        "",
        f"- Classifies a 2-D medical image into {', '.join(classes) or 'its classes'}, as a"
        " research and triage aid for trained readers. It is not a diagnostic device and has"
        " no regulatory clearance.",
        "- Judged only on the test split below: sites, scanners and patients unlike these"
        " (other modalities, paediatric patients, other vendors) are outside what was measured.",
        f"- Decides {rule}; another threshold changes sensitivity and specificity.",
    ]
    missing = _missing(context)
    if missing:
        lines.append(
            f"- Not measured per subgroup: {', '.join(missing)} (not in the manifest):"
            " performance across these groups is unknown."
        )
    return lines


def _data(context: EvaluationContext | None) -> list[str]:
    if context is None:
        return ["", "## Data", "", "Dataset hash `unknown` (no evaluation.json)."]
    lines = ["", "## Data", "", f"Dataset hash `{context.data.data_hash}`."]
    class_counts = context.data.class_counts
    classes = context.model.class_names
    if class_counts:
        lines.append("")
        rows = [
            [split, *(str(counts.get(c, 0)) for c in classes), str(sum(counts.values()))]
            for split, counts in sorted(class_counts.items(), key=lambda kv: _SPLITS.index(kv[0]))
        ]
        lines += _table(["split", *classes, "images"], rows)
    return lines


def _metrics(metrics: Metrics, context: EvaluationContext | None) -> list[str]:
    boot = context.bootstrap if context else None
    level = boot.level if boot else 0.95
    resamples = f"{boot.n} resamples of {boot.unit}s (seed {boot.seed})" if boot else "? resamples"
    lines = [
        "",
        f"## Metrics (test split, {level:.0%} bootstrap intervals)",
        "",
        f"{_num(metrics.n_test)} images of {_num(metrics.n_test_patients)} patients;"
        f" intervals from {resamples}.",
        "",
    ]
    lines += _table(
        ["metric", f"value [{level:.0%} CI]"], [[_LABELS[m], _ci(metrics, m)] for m in METRICS]
    )
    lines += [
        "",
        f"At this threshold on the validation split: sensitivity"
        f" {_num(metrics.val_sensitivity)}, specificity {_num(metrics.val_specificity)}.",
    ]
    return lines


def _subgroups(
    subgroups: dict[str, dict[str, dict[str, Any]]], context: EvaluationContext | None
) -> list[str]:
    lines = ["", "## Subgroups", ""]
    if subgroups:
        rows = []
        for attribute, values in sorted(subgroups.items()):
            for value, row in sorted(values.items()):
                rows.append(
                    [
                        attribute,
                        value,
                        _num(row.get("n")),
                        _num(row.get("n_positive")),
                        _ci(row, "auroc"),
                        _num(row.get("sensitivity")),
                        _num(row.get("specificity")),
                        _num(row.get("ece")),
                        "small: interpret with care" if row.get("small") else "",
                    ]
                )
        header = ["attribute", "value", "n", "positives", "AUROC [CI]", "sens.", "spec."]
        lines += _table([*header, "ECE", "flag"], rows)
    else:
        lines.append("No subgroup attribute was available.")
    missing = _missing(context)
    if missing:
        lines += ["", f"Missing from the manifest, so not reported: {', '.join(missing)}."]
    return lines


def _calibration(metrics: Metrics, context: EvaluationContext | None) -> list[str]:
    plots = context.plots if context else {}
    lines = [
        "",
        "## Calibration",
        "",
        f"Expected calibration error {_ci(metrics, 'ece')}, Brier score {_ci(metrics, 'brier')}.",
        *_calibrated(_provenance(context).get("calibration")),
    ]
    if "calibration" in plots:
        lines += ["", f"![reliability diagram]({plots['calibration']})"]
    curves = [name for name in ("roc", "pr", "confusion") if name in plots]
    if curves:
        lines += ["", "## Curves (test split)"]
    for name in curves:
        lines += ["", f"![{name}]({plots[name]})"]
    return lines


def _calibrated(calibration: dict[str, Any] | None) -> list[str]:
    # model.json's provenance.calibration (medflow.models.calibration.Calibration.as_dict)
    if not calibration:
        return []
    method = calibration.get("method")
    line = f"Calibrated on the validation split: {method}"
    if method == "temperature":
        line += f" (T = {_num(calibration.get('temperature'))})"
    elif method == "platt":
        line += f" (a = {_num(calibration.get('scale'))}, b = {_num(calibration.get('shift'))})"
    scores = calibration.get("cross_fitted_nll") or {}
    if scores:
        line += "; cross-fitted validation NLL " + ", ".join(
            f"{name} {_num(value)}" for name, value in scores.items()
        )
    return ["", line + "."]


def _gate(gate: GateReport, decision: str) -> list[str]:
    lines = ["", f"## Gate decision: {decision}", ""]
    champion = gate.champion
    status, reason = champion.status, champion.reason
    dataset = f" of dataset `{champion.dataset}`" if champion.dataset else ""
    if status == COMPARED:
        lines.append(
            f"Compared with the current champion{dataset}, `{champion.model_tag}`,"
            f" scored on this model's test split: {reason}. The change rules"
            " (`max_worse_than_champion`) apply."
        )
    elif status == NO_CHAMPION:
        lines.append(f"No champion{dataset}: judged by the value rules alone. {reason}".strip())
    else:
        lines.append(
            f"Champion{dataset} not compared ({status}): judged by the value rules alone,"
            f" the change rules were not applied. {reason}".strip()
        )
    if gate.failures:
        lines += ["", "Failed rules:", "", *(f"- {f}" for f in gate.failures)]
    if gate.rules:
        lines.append("")
        lines += _table(
            ["rule", "metric", "observed", "needs", "result"],
            [
                [
                    r.rule,
                    r.metric,
                    _num(r.observed, 4),
                    f"{r.op} {_num(r.threshold, 4)}",
                    "pass" if r.passed else "FAIL",
                ]
                for r in gate.rules
            ],
        )
    return lines


def _parameters(context: EvaluationContext | None, gate: GateReport) -> list[str]:
    params = {
        "train": _provenance(context).get("train_params"),
        "evaluate": context.params.model_dump() if context else None,
        "gate": gate.thresholds.model_dump(),
        "preprocess": context.data.preprocess.model_dump() if context else None,
    }
    return ["", "## Parameters", "", "```json", json.dumps(params, indent=2, sort_keys=True), "```"]


def _provenance_section(context: EvaluationContext | None) -> list[str]:
    prov = _provenance(context)
    architecture = context.model.architecture if context else "unknown"
    evaluated = context.evaluated_with if context else None
    lines = [
        "",
        "## Provenance",
        "",
        f"- model: {architecture}, {prov.get('epochs_run', '?')} epochs,"
        f" best validation AUROC {_num(prov.get('best_val_auroc'))}",
        *_plan(prov.get("plan")),
        _initial_weights(prov.get("pretrained_weights")),
        f"- trained at git revision `{prov.get('git_revision', 'unknown')}`",
        f"- evaluated at git revision `{evaluated.git_revision if evaluated else 'unknown'}`",
        "",
    ]
    versions = prov.get("library_versions") or (evaluated.library_versions if evaluated else {})
    if versions:
        lines += _table(["library", "version"], [[k, v] for k, v in sorted(versions.items())])
    return lines


def _plan(plan: dict[str, Any] | None) -> list[str]:
    # model.json's provenance.plan (medflow.models.budget.Plan and what was trained)
    if not plan:
        return []
    budget = plan.get("budget_seconds")
    spent = plan.get("seconds_spent")
    return [
        f"- training plan: {plan.get('members_trained', plan.get('members'))} member(s) of up"
        f" to {plan.get('epochs')} epochs ({plan.get('reason')}); "
        + (f"{spent} s spent of a {budget:.0f} s budget" if budget else f"{spent} s, no budget")
    ]


def _initial_weights(weights: dict[str, Any] | None) -> str:
    # model.json's provenance.pretrained_weights (medflow.models.pretrained.load_pretrained)
    if not weights:
        return "- initial weights: random (no pretrained weights)"
    skipped = len(weights.get("skipped_shape", []))
    return (
        f"- initial weights: pretrained, `{weights.get('path')}` (sha256"
        f" `{weights.get('sha256')}`): {weights.get('loaded', '?')} tensors loaded,"
        f" {skipped} of another shape initialised at random"
    )
