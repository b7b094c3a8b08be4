"""The monitor's report: monitor.json (every number) and report.html (one self-contained page,
plots inline), next to the drift suites' Data Docs (docs/<model>/index.html).

Numbers, rule names, class, modality and manufacturer names only: no identifier, image hash
or prediction id reaches either file.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medflow.evaluation.metrics import METRICS
from medflow.io import write_json_atomic, write_text_atomic
from medflow.monitor import plots
from medflow.monitor.result import REPORT_FILE, ModelMonitoring, MonitorResult, docs_slug
from medflow.validation.report import plain

SUMMARY_FILE = "monitor.json"
FORMAT = 1


def write_report(folder: Path, result: MonitorResult) -> None:
    """Write monitor.json and report.html into folder."""
    write_json_atomic(folder / SUMMARY_FILE, report_json(result))
    write_text_atomic(folder / REPORT_FILE, report_html(result))


# ---------------------------------------------------------------------------- monitor.json


def report_json(result: MonitorResult) -> dict[str, Any]:
    """Every number of the run, JSON-safe."""
    return plain(
        {
            "format": FORMAT,
            **{k: v for k, v in result.summary().items() if k != "models"},
            "params": {
                "monitor": result.params.monitor.model_dump(),
                "drift": {
                    c: result.params.validate_.drift.model_dump()[c]
                    for c in ("manufacturer_mix", "intensity")
                },
            },
            "models": [_model_json(m) for m in result.models],
        }
    )


def _model_json(m: ModelMonitoring) -> dict[str, Any]:
    out: dict[str, Any] = {
        **m.summary(),
        "class_names": m.class_names,
        "threshold": m.threshold,
        "predicted_per_class": m.predicted_per_class,
        "evaluated": m.reference.evaluated,
        "notes": m.notes,
    }
    if m.inputs is not None:
        out["inputs"] = {
            "table": m.inputs.table.to_dict(orient="records"),
            "not_compared": m.inputs.not_compared,
            "failed_expectations": m.inputs.failures,
            "data_docs": f"docs/{docs_slug(m.model_tag)}/index.html",
        }
    if m.production is not None:
        out["production_profile"] = m.production
    if m.shift is not None:
        out["psi"] = {
            "score": m.shift.score,
            "class": m.shift.column,
            "n_reference": m.shift.n_reference,
            "n_production": m.shift.n_production,
            "per_class": {
                name: {
                    "score": p.score,
                    "bins": p.bins,
                    "bins_note": p.bins_note,
                    "cuts": p.cuts,
                    "reference_counts": p.reference_counts,
                    "production_counts": p.production_counts,
                    "expected_without_shift": p.noise,
                }
                for name, p in m.shift.per_class.items()
            },
        }
    if m.performance is not None:
        perf = m.performance
        out["performance"] = {
            "n_labelled": perf.n_labelled,
            "labelled_per_class": perf.labelled_per_class,
            "threshold": perf.threshold,
            "ci_level": perf.ci_level,
            "metrics": {
                name: {
                    "value": perf.metrics[name],
                    "ci_low": perf.intervals[name][0],
                    "ci_high": perf.intervals[name][1],
                    "evaluated": m.reference.evaluated.get(name),
                }
                for name in METRICS
            },
        }
    return out


# ---------------------------------------------------------------------------- report.html

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.6em 0}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f2f2f2}.broken{color:#b00020;font-weight:bold}
.ok{color:#1b5e20}.muted{color:#666}.alarm{background:#fdecea;border:1px solid #b00020;
padding:0.6em 1em}.fine{background:#edf7ed;border:1px solid #1b5e20;padding:0.6em 1em}
img{max-width:100%;margin:0.3em 0.6em 0.3em 0}
"""


def report_html(result: MonitorResult) -> str:
    """One page: the window, the verdict, then per model tag its counts, rules, input drift,
    PSI and live performance, each with its plot."""
    s = result.summary()
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>medflow monitor</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>medflow monitor</h1>",
        _table(
            ["", ""],
            [
                [
                    "window",
                    f"{result.since:%Y-%m-%d %H:%M} to {result.until:%Y-%m-%d %H:%M} UTC"
                    f" ({s['window']['hours']:g} h)",
                ],
                ["prediction log", s["store"]],
                ["predictions in the window", s["predictions"]],
                ["model tags", ", ".join(m.model_tag for m in result.models) or "none"],
            ],
        ),
    ]
    if result.broken:
        items = "".join(
            f"<li><b>{_e(tag)}</b>: {_e(r.name)} {_num(r.score)} (threshold {_num(r.threshold)})"
            f": {_e(r.detail)}</li>"
            for tag, r in result.broken
        )
        parts.append(
            f"<div class='alarm'><b>Alarm: {len(result.broken)} rule(s) broke.</b>"
            f"<ul>{items}</ul></div>"
        )
    else:
        parts.append("<div class='fine'>No rule broke.</div>")
    parts += [f"<p class='muted'>{_e(n)}</p>" for n in result.notes]
    for m in result.models:
        parts += _model_html(m, result)
    parts.append(_rules_legend(result))
    parts.append("</body></html>")
    return "\n".join(parts)


def _model_html(m: ModelMonitoring, result: MonitorResult) -> list[str]:
    out = [f"<h2>Model {_e(m.model_tag)}</h2>"]
    perf = m.performance
    out.append(
        _table(
            ["", ""],
            [
                ["predictions", m.n_predictions],
                [
                    "predicted class",
                    ", ".join(f"{k} {v}" for k, v in m.predicted_per_class.items()),
                ],
                ["with feedback (ground truth)", len(m.feedback_labels)],
                ["decision threshold", f"{m.threshold:g}"],
                [
                    "reference",
                    m.reference.missing
                    or "the model's monitoring.json: training data"
                    f" profile ({_ref_images(m)} images), {_ref_predictions(m)} test-split"
                    " predictions, evaluated metrics",
                ],
            ],
        )
    )
    out += [f"<p class='muted'>{_e(n)}</p>" for n in m.notes]
    out.append("<h3>Rules</h3>")
    out.append(
        _table(
            ["rule", "verdict", "score", "threshold", "what was compared"],
            [
                [r.name, _verdict(r.judged, r.broken), _num(r.score), _num(r.threshold), r.detail]
                for r in m.rules
            ],
            raw_columns={1},
        )
    )
    out += _inputs_html(m)
    out += _psi_html(m)
    out += _performance_html(m, perf, result.params.evaluate.n_bins)
    return out


def _inputs_html(m: ModelMonitoring) -> list[str]:
    out = ["<h3>Inputs against the training data</h3>"]
    if m.inputs is None:
        out.append("<p>Not judged (see the rules above).</p>")
    else:
        rows = [
            [
                r["check"],
                r["quantity"],
                _num(r["reference"]),
                _num(r["current"]),
                _num(r["change"]),
                _num(r["max_change"]),
                "<span class='broken'>out of bounds</span>" if r["broken"] else "within",
                r["detail"],
            ]
            for r in m.inputs.table.to_dict(orient="records")
        ]
        out.append(
            "<p>The validate stage's drift rules (validate.drift, its Great Expectations"
            " suites) on the window's profile against the training data's. Intensity changes are"
            " in reference standard deviations between images; the manufacturer mix is a total"
            " variation distance (0 same mix, 1 disjoint).</p>"
        )
        out.append(
            _table(
                ["check", "quantity", "training", "production", "change", "max", "", "detail"],
                rows,
                raw_columns={6},
            )
        )
        if m.inputs.not_compared:
            out.append("<p>Not compared: " + _e("; ".join(m.inputs.not_compared)) + "</p>")
        docs = f"docs/{docs_slug(m.model_tag)}/index.html"
        out.append(f"<p><a href='{_e(docs)}'>Data Docs of the drift suites</a></p>")
    if m.production is not None:
        out.append(_img(plots.manufacturer_plot(m)))
        out.append(_img(plots.intensity_plot(m)))
    return out


def _psi_html(m: ModelMonitoring) -> list[str]:
    out = ["<h3>Predicted probabilities against the test split</h3>"]
    if m.shift is None:
        out.append("<p>Not judged (see the rules above).</p>")
    else:
        out.append(
            _table(
                [
                    "class",
                    "PSI",
                    "bins",
                    "reference per bin",
                    "production per bin",
                    "expected without shift",
                ],
                [
                    [
                        name,
                        _num(p.score),
                        p.bins_note,
                        " ".join(map(str, p.reference_counts)),
                        " ".join(map(str, p.production_counts)),
                        _num(p.noise),
                    ]
                    for name, p in m.shift.per_class.items()
                ],
            )
        )
    out.append(_img(plots.probability_plot(m)))
    return out


def _performance_html(m: ModelMonitoring, perf: Any, n_bins: int) -> list[str]:
    out = ["<h3>Live performance from feedback</h3>"]
    if perf is None:
        out.append("<p>No prediction in the window has feedback yet.</p>")
        return out
    per_class = ", ".join(f"{k} {v}" for k, v in perf.labelled_per_class.items())
    out.append(
        f"<p>{perf.n_labelled} labelled predictions ({_e(per_class)}); sensitivity and"
        f" specificity at the served threshold {perf.threshold:g}; {perf.ci_level:.0%}"
        " bootstrap intervals.</p>"
    )
    rows = [
        [
            name,
            _num(perf.metrics[name]),
            f"{_num(perf.intervals[name][0])} to {_num(perf.intervals[name][1])}",
            _num(m.reference.evaluated.get(name)),
        ]
        for name in METRICS
    ]
    out.append(_table(["metric", "live", "interval", "evaluated (test split)"], rows))
    out.append(_img(plots.reliability_plot(m, n_bins)))
    return out


def _rules_legend(result: MonitorResult) -> str:
    p = result.params.monitor
    return (
        "<h2>How the rules judge</h2><ul>"
        "<li><b>manufacturer_mix</b>, <b>intensity</b>: validate.drift's rules (the same Great"
        " Expectations suites as the validate stage); any quantity above its max_change breaks"
        " the rule, whatever validate.drift's action. Judged with at least"
        f" monitor.min_predictions ({p.min_predictions}) predictions.</li>"
        f"<li><b>psi</b>: population stability index above monitor.max_psi ({p.max_psi:g}),"
        " at most monitor.psi_bins bins at the test split's quantiles (fewer for small"
        " samples, as said per class).</li>"
        f"<li><b>auroc_drop</b>: with at least monitor.min_feedback ({p.min_feedback})"
        " labelled predictions, the live AUROC below the evaluated test AUROC minus"
        f" monitor.max_auroc_drop ({p.max_auroc_drop:g}).</li></ul>"
    )


# ---------------------------------------------------------------------------- html bits


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not math.isfinite(number) else f"{number:.4g}"


def _verdict(judged: bool, broken: bool) -> str:
    if not judged:
        return "<span class='muted'>not judged</span>"
    return "<span class='broken'>BROKEN</span>" if broken else "<span class='ok'>ok</span>"


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], raw_columns: set[int] | None = None
) -> str:
    """An HTML table; cells escaped except in raw_columns (markup made here)."""
    raw = raw_columns or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header) if any(header) else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td>{cell if i in raw else _e(cell)}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _img(png: bytes | None) -> str:
    if png is None:
        return ""
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _ref_images(m: ModelMonitoring) -> Any:
    ref = m.reference.reference
    return ref.profile.get("images", "?") if ref is not None else "?"


def _ref_predictions(m: ModelMonitoring) -> int:
    ref = m.reference.reference
    return len(ref.probabilities) if ref is not None else 0
