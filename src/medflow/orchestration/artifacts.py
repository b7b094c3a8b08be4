"""Prefect artifacts of a pipeline run, read from the files the stages wrote.

Keys are stable (the UI and tests look them up): validation-summary, data-docs, metrics,
gate-decision, model-card, bento. Every run publishes them, also when a stage was skipped as
unchanged (then they show the outputs DVC says are current).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from medflow.handoffs import (
    METRICS,
    SEGMENTATION_METRICS,
    GateReport,
    Handoff,
    HandoffError,
    Metrics,
    SegmentationMetrics,
    read_metrics,
)
from medflow.stages.layout import Layout

H = TypeVar("H", bound=Handoff)
log = logging.getLogger(__name__)

KEYS = ("validation-summary", "data-docs", "metrics", "gate-decision", "model-card", "bento")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def validation(layout: Layout) -> None:
    """Publish the validation summary table and a link to the Data Docs."""
    summary = _json(layout.validation / "summary.json")
    if summary is None:
        return
    rows: list[dict[str, Any]] = [
        {"item": k, "value": v} for k, v in sorted(summary.get("statistics", {}).items())
    ]
    rows.append({"item": "verdict", "value": "passed" if summary.get("success") else "FAILED"})
    rows.append({"item": "manifest rows", "value": summary.get("manifest", {}).get("rows")})
    for kind in ("failures", "warnings"):
        for entry in summary.get(kind, []):
            what = entry.get("expectation") or entry.get("check") or json.dumps(entry)[:120]
            rows.append({"item": kind[:-1], "value": str(what)})
    drift = summary.get("drift", {})
    rows.append(
        {"item": "drift", "value": "checked" if drift.get("checked") else drift.get("note")}
    )
    create_table_artifact(
        key="validation-summary", table=rows, description="Great Expectations validation"
    )
    docs = layout.validation / summary.get("docs_index", "docs/index.html")
    if docs.is_file():
        create_link_artifact(
            key="data-docs", link=docs.resolve().as_uri(), link_text="Data Docs (open locally)"
        )


def _read(model: type[H], path: Path) -> H | None:
    # published when present and valid; the stage that wrote it reports its own problems
    try:
        return model.read(path)
    except FileNotFoundError:
        return None
    except HandoffError as exc:
        log.warning("not published: %s", exc)
        return None


def _read_metrics(path: Path) -> Metrics | SegmentationMetrics | None:
    try:
        return read_metrics(path)
    except FileNotFoundError:
        return None
    except HandoffError as exc:
        log.warning("not published: %s", exc)
        return None


def metrics(layout: Layout) -> None:
    m = _read_metrics(layout.metrics)
    if m is None:
        return
    segmentation = isinstance(m, SegmentationMetrics)
    names = SEGMENTATION_METRICS if segmentation else METRICS
    counts = (
        ("threshold", "detection_sensitivity", "false_positives_per_image", "n_images")
        + ("n_patients", "n_lesions")
        if segmentation
        else ("threshold", "n_test", "n_test_patients")
    )
    table = [
        {"metric": name, "value": _num(value), "ci_low": _num(low), "ci_high": _num(high)}
        for name in sorted(names)
        for value, low, high in [m.interval(name)]
    ]
    table += [
        {"metric": name, "value": _num(getattr(m, name)), "ci_low": "-", "ci_high": "-"}
        for name in counts
    ]
    create_table_artifact(key="metrics", table=table, description="Test metrics, 95% intervals")


def gate(layout: Layout) -> None:
    g = _read(GateReport, layout.gate)
    if g is None:
        return
    lines = [f"# Gate: **{g.decision.upper()}**", ""]
    champion = g.champion
    reason = f" ({champion.reason})" if champion.reason else ""
    dataset = champion.dataset or "?"
    lines.append(f"Champion of dataset {dataset}: {champion.status}{reason}")
    if g.failures:
        lines += ["", "## Reasons", *(f"- {f}" for f in g.failures)]
    lines += [
        "",
        "| rule | metric | observed | op | threshold | passed |",
        "|---|---|---|---|---|---|",
    ]
    for r in g.rules:
        lines.append(
            f"| {r.rule} | {r.metric} | {_num(r.observed)} | {r.op} "
            f"| {r.threshold} | {'yes' if r.passed else '**no**'} |"
        )
    create_markdown_artifact(key="gate-decision", markdown="\n".join(lines))
    if layout.model_card.is_file():
        create_markdown_artifact(key="model-card", markdown=layout.model_card.read_text())


def bento(layout: Layout) -> None:
    """Publish the Bento's tag, model and how to serve it."""
    b = _json(layout.bento)
    if b is None:
        return
    create_markdown_artifact(
        key="bento",
        markdown=(
            f"# Bento `{b['bento_tag']}`\n\nModel: `{b.get('model_tag', '?')}`\n\n"
            f"- serve: `{b.get('serve', '')}`\n- container: `{b.get('containerize', '')}`\n"
        ),
    )


# what to publish after each stage
AFTER_STAGE = {"validate": validation, "evaluate": metrics, "gate": gate, "package": bento}
