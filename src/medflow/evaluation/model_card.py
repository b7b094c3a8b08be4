"""The model card: one Markdown page per evaluated model, written by the gate stage whether
the model passed or not (a refused model's card says why)."""

from __future__ import annotations

import json
import math
from typing import Any

from medflow.evaluation.metrics import METRICS

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


def _ci(row: dict[str, Any], metric: str) -> str:
    return f"{_num(row.get(metric))} [{_num(row.get(f'{metric}_ci_low'))}, " + (
        f"{_num(row.get(f'{metric}_ci_high'))}]"
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_model_card(
    metrics: dict[str, Any],
    subgroups: dict[str, dict[str, dict[str, Any]]],
    context: dict[str, Any],
    gate: dict[str, Any],
) -> str:
    """Markdown: intended use and limits, data, metrics with intervals, subgroups,
    calibration, the gate decision with its reasons, params, versions and revisions."""
    model = context.get("model", {})
    prov = model.get("provenance", {})
    data = context.get("data", {})
    thr = context.get("threshold", {})
    boot = context.get("bootstrap", {})
    plots = context.get("plots", {})
    classes = model.get("class_names") or []
    decision = "ACCEPTED" if gate.get("passed") else "REFUSED"
    level = boot.get("level", 0.95)

    lines = [
        f"# Model card: {' / '.join(classes) or 'image'} classifier",
        "",
        f"**Gate decision: {decision}.** Data `{data.get('data_hash') or 'unknown'}`,"
        f" code `{prov.get('git_revision', 'unknown')}`.",
        "",
        "## Intended use and limits",
        "",
        f"- Classifies a 2-D medical image into {', '.join(classes) or 'its classes'}, as a"
        " research and triage aid for trained readers. It is not a diagnostic device and has"
        " no regulatory clearance.",
        "- Judged only on the test split below: sites, scanners and patients unlike these"
        " (other modalities, paediatric patients, other vendors) are outside what was measured.",
        f"- Decides `{thr.get('applies', 'p(positive) >= threshold')}` at threshold"
        f" {_num(thr.get('value'), 4)} ({thr.get('policy', 'fixed')}, chosen on"
        f" {thr.get('chosen_on', 'params')}); another threshold changes sensitivity and"
        " specificity.",
    ]
    missing = context.get("subgroups", {}).get("missing") or []
    if missing:
        lines.append(
            f"- Not measured per subgroup: {', '.join(missing)} (not in the manifest):"
            " performance across these groups is unknown."
        )

    lines += ["", "## Data", ""]
    lines.append(f"Dataset hash `{data.get('data_hash') or 'unknown'}`.")
    class_counts = data.get("class_counts") or {}
    if class_counts:
        lines.append("")
        rows = [
            [split, *(str(counts.get(c, 0)) for c in classes), str(sum(counts.values()))]
            for split, counts in sorted(class_counts.items(), key=lambda kv: _SPLITS.index(kv[0]))
        ]
        lines += _table(["split", *classes, "images"], rows)

    lines += [
        "",
        f"## Metrics (test split, {level:.0%} bootstrap intervals)",
        "",
        f"{_num(metrics.get('n_test'))} images of {_num(metrics.get('n_test_patients'))}"
        f" patients; intervals from {boot.get('n', '?')} resamples of"
        f" {boot.get('unit', 'image')}s (seed {boot.get('seed', '?')}).",
        "",
    ]
    lines += _table(
        ["metric", f"value [{level:.0%} CI]"], [[_LABELS[m], _ci(metrics, m)] for m in METRICS]
    )
    lines += [
        "",
        f"At this threshold on the validation split: sensitivity"
        f" {_num(metrics.get('val_sensitivity'))}, specificity"
        f" {_num(metrics.get('val_specificity'))}.",
    ]

    lines += ["", "## Subgroups", ""]
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
    if missing:
        lines += ["", f"Missing from the manifest, so not reported: {', '.join(missing)}."]

    lines += [
        "",
        "## Calibration",
        "",
        f"Expected calibration error {_ci(metrics, 'ece')}, Brier score {_ci(metrics, 'brier')}.",
    ]
    if "calibration" in plots:
        lines += ["", f"![reliability diagram]({plots['calibration']})"]
    curves = [name for name in ("roc", "pr", "confusion") if name in plots]
    if curves:
        lines += ["", "## Curves (test split)"]
    for name in curves:
        if name in plots:
            lines += ["", f"![{name}]({plots[name]})"]

    lines += ["", f"## Gate decision: {decision}", ""]
    champion = gate.get("champion", {})
    status, reason = champion.get("status", "no champion"), champion.get("reason") or ""
    dataset = f" of dataset `{champion['dataset']}`" if champion.get("dataset") else ""
    if status == "compared":
        lines.append(
            f"Compared with the current champion{dataset}, `{champion.get('model_tag')}`,"
            f" scored on this model's test split: {reason}. The change rules"
            " (`max_worse_than_champion`) apply."
        )
    elif status == "no champion":
        lines.append(f"No champion{dataset}: judged by the value rules alone. {reason}".strip())
    else:
        lines.append(
            f"Champion{dataset} not compared ({status}): judged by the value rules alone,"
            f" the change rules were not applied. {reason}".strip()
        )
    failures = gate.get("failures") or []
    if failures:
        lines += ["", "Failed rules:", "", *(f"- {f}" for f in failures)]
    rules = gate.get("rules") or []
    if rules:
        lines.append("")
        lines += _table(
            ["rule", "metric", "observed", "needs", "result"],
            [
                [
                    r["rule"],
                    r["metric"],
                    _num(r.get("observed"), 4),
                    f"{r['op']} {_num(r['threshold'], 4)}",
                    "pass" if r["passed"] else "FAIL",
                ]
                for r in rules
            ],
        )

    params = {
        "train": prov.get("train_params"),
        "evaluate": context.get("params"),
        "gate": gate.get("thresholds"),
        "preprocess": data.get("preprocess"),
    }
    lines += [
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(params, indent=2, sort_keys=True),
        "```",
        "",
        "## Provenance",
        "",
        f"- model: {model.get('architecture', 'unknown')}, {prov.get('epochs_run', '?')} epochs,"
        f" best validation AUROC {_num(prov.get('best_val_auroc'))}",
        f"- trained at git revision `{prov.get('git_revision', 'unknown')}`",
        "- evaluated at git revision"
        f" `{context.get('evaluated_with', {}).get('git_revision', 'unknown')}`",
        "",
    ]
    versions = prov.get("library_versions") or context.get("evaluated_with", {}).get(
        "library_versions", {}
    )
    if versions:
        lines += _table(["library", "version"], [[k, v] for k, v in sorted(versions.items())])
    return "\n".join(lines) + "\n"
