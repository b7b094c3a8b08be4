"""The model card of a segmentation model: the classification card's frame (data, gate,
parameters, versions; evaluation.model_card) around the segmentation metrics, per segment
and subgroup, lesion detection and the overlays of the best, median and worst test cases."""

from __future__ import annotations

from typing import Any

from medflow.evaluation.model_card import (
    _data,
    _gate,
    _missing,
    _num,
    _parameters,
    _provenance,
    _table,
)
from medflow.handoffs import EvaluationContext, GateReport, SegmentationMetrics

_LABELS = {
    "dice": "Dice",
    "iou": "IoU (Jaccard)",
    "hd95": "HD95 (lower is better)",
}
_CASES = ("best", "median", "worst")


def _unit(context: EvaluationContext | None) -> str:
    unit = context.hd95_unit if context else None
    return {"mm": "mm", "pixel": "model pixels"}.get(unit or "", "mm or pixels")


def _ci(values: tuple[float, float, float]) -> str:
    value, low, high = values
    return f"{_num(value)} [{_num(low)}, {_num(high)}]"


def render_segmentation_card(
    metrics: SegmentationMetrics,
    subgroups: dict[str, dict[str, dict[str, Any]]],
    context: EvaluationContext | None,
    gate: GateReport,
) -> str:
    """Markdown: intended use and limits, data, metrics with intervals, per segment, lesion
    detection, subgroups, overlays, the gate decision, params, versions.

    Without `context` (no evaluation.json) what only it knows is shown as unknown.
    """
    decision = "ACCEPTED" if gate.passed else "REFUSED"
    classes = context.model.class_names if context else []
    segments = list(metrics.per_segment)
    data_hash = context.data.data_hash if context else "unknown"
    revision = _provenance(context).get("git_revision", "unknown")
    lines = [
        f"# Model card: {' / '.join(segments) or 'lesion'} segmentation",
        "",
        f"**Gate decision: {decision}.** Data `{data_hash}`, code `{revision}`.",
    ]
    lines += _intended_use(metrics, context, segments)
    lines += _data(context)
    if classes:
        lines += ["", f"Images per split by the highest class in their mask ({classes[0]}: empty)."]
    lines += _metrics(metrics, context)
    lines += _subgroups(subgroups, context)
    lines += _overlays(context)
    lines += _gate(gate, decision)
    lines += _parameters(context, gate)
    lines += _provenance_lines(context)
    return "\n".join(lines) + "\n"


def _intended_use(
    metrics: SegmentationMetrics, context: EvaluationContext | None, segments: list[str]
) -> list[str]:
    lines = [
        "",
        "## Intended use and limits",
        "",
        f"- Outlines {', '.join(segments) or 'its segments'} on a 2-D medical image, as a"
        " research aid for trained readers, who review every outline. It is not a diagnostic"
        " device and has no regulatory clearance.",
        "- Judged only on the test split below: sites, scanners and patients unlike these are"
        " outside what was measured.",
        f"- A pixel is in a segment where sigmoid(logit) >= {_num(metrics.threshold, 4)}"
        " (evaluate.mask_threshold); another threshold changes the outlines.",
        "- Scored in the model's input geometry (the image padded square and resized), so"
        " areas are in model pixels.",
    ]
    missing = _missing(context)
    if missing:
        lines.append(
            f"- Not measured per subgroup: {', '.join(missing)} (not in the manifest):"
            " performance across these groups is unknown."
        )
    return lines


def _metrics(metrics: SegmentationMetrics, context: EvaluationContext | None) -> list[str]:
    boot = context.bootstrap if context else None
    level = boot.level if boot else 0.95
    resamples = f"{boot.n} resamples of {boot.unit}s (seed {boot.seed})" if boot else "? resamples"
    unit = _unit(context)
    min_iou = context.params.detection_min_iou if context else None
    lines = [
        "",
        f"## Metrics (test split, {level:.0%} bootstrap intervals)",
        "",
        f"{_num(metrics.n_images)} images of {_num(metrics.n_patients)} patients; means over"
        f" images and segments; intervals from {resamples}. HD95 in {unit}. An image where"
        " truth and prediction are both empty scores Dice 1 and HD95 0; where exactly one is"
        " empty, Dice 0 and HD95 the image's diagonal.",
        "",
    ]
    rows = [[_LABELS[m], _ci(metrics.interval(m))] for m in metrics.NAMES]
    rows += [
        ["lesion detection sensitivity", _num(metrics.detection_sensitivity)],
        ["false positive lesions per image", _num(metrics.false_positives_per_image)],
    ]
    lines += _table(["metric", f"value [{level:.0%} CI]"], rows)
    lines += [
        "",
        f"Lesions are connected components (4-connected) of each segment:"
        f" {_num(metrics.n_lesions)} true lesions; one is detected when a predicted lesion"
        f" overlaps it with IoU >= {_num(min_iou) if min_iou is not None else '?'}.",
        "",
        "### Per segment",
        "",
    ]
    lines += _table(
        ["segment", "Dice", "IoU", f"HD95 ({unit})"],
        [
            [name, _num(s.dice), _num(s.iou), _num(s.hd95)]
            for name, s in metrics.per_segment.items()
        ],
    )
    return lines


def _subgroups(
    subgroups: dict[str, dict[str, dict[str, Any]]], context: EvaluationContext | None
) -> list[str]:
    lines = ["", "## Subgroups", ""]
    if subgroups:
        rows = []
        for attribute, values in sorted(subgroups.items()):
            for value, row in sorted(values.items()):
                dice = tuple(row.get(f"dice{end}") for end in ("", "_ci_low", "_ci_high"))
                rows.append(
                    [
                        attribute,
                        value,
                        _num(row.get("n")),
                        _ci(dice),
                        _num(row.get("iou")),
                        _num(row.get("hd95")),
                        _num(row.get("detection_sensitivity")),
                        _num(row.get("false_positives_per_image")),
                        "small: interpret with care" if row.get("small") else "",
                    ]
                )
        header = ["attribute", "value", "n", "Dice [CI]", "IoU", "HD95", "detection sens."]
        lines += _table([*header, "FP/image", "flag"], rows)
        lines += ["", "Subgroups are reported, not gated."]
    else:
        lines.append("No subgroup attribute was available.")
    missing = _missing(context)
    if missing:
        lines += ["", f"Missing from the manifest, so not reported: {', '.join(missing)}."]
    return lines


def _overlays(context: EvaluationContext | None) -> list[str]:
    plots = context.plots if context else {}
    shown = [case for case in _CASES if f"overlay_{case}" in plots]
    if not shown:
        return []
    lines = [
        "",
        "## Test cases (best, median and worst by Dice)",
        "",
        "Truth outlined in green, prediction in magenta.",
    ]
    for case in shown:
        lines += ["", f"![{case} test case]({plots[f'overlay_{case}']})"]
    return lines


def _provenance_lines(context: EvaluationContext | None) -> list[str]:
    prov = _provenance(context)
    architecture = context.model.architecture if context else "unknown"
    evaluated = context.evaluated_with if context else None
    best = {k: v for k, v in sorted(prov.items()) if k.startswith("best_val_")}
    best_text = ", ".join(f"{k[len('best_') :]} {_num(v)}" for k, v in best.items())
    lines = [
        "",
        "## Provenance",
        "",
        f"- model: {architecture}, {prov.get('epochs_run', '?')} epochs"
        + (f", best {best_text}" if best_text else ""),
        f"- trained at git revision `{prov.get('git_revision', 'unknown')}`",
        f"- evaluated at git revision `{evaluated.git_revision if evaluated else 'unknown'}`",
        "",
    ]
    versions = prov.get("library_versions") or (evaluated.library_versions if evaluated else {})
    if versions:
        lines += _table(["library", "version"], [[k, v] for k, v in sorted(versions.items())])
    return lines
