"""Input drift: the window's production profile against the training data's, judged by the
validate stage's own drift rules (its Great Expectations suites and validate.drift thresholds).

Production has no labels, so the class-balance check is not an input rule here (the shift of
the predicted classes is what the PSI measures); manufacturer_mix and intensity are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medflow.config import DriftParams
from medflow.monitor.rules import INPUT_RULES, Rule, not_judged
from medflow.validation import drift, report

# what one window row gives the profile (a manifest's columns, as preprocessing computes them)
WINDOW_COLUMNS = ("label_index", "manufacturer", "modality", "pixel_mean", "pixel_std")


@dataclass(frozen=True)
class InputDrift:
    """The compared quantities (one row each, with whether the suite found it out of bounds),
    what was not compared and why, the failed expectations and a rule per input check."""

    table: pd.DataFrame  # check, quantity, reference, current, change, detail, max_change, broken
    rules: list[Rule]
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    docs_index: Path | None = None


def production_profile(window: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    """drift.profile of the window's predictions: the predicted class stands for the label,
    which production does not have."""
    missing = [c for c in WINDOW_COLUMNS if c not in window.columns]
    if missing:
        raise ValueError(f"the prediction log's rows lack columns {missing}")
    frame = pd.DataFrame(
        {
            "label": window["label_index"],
            "manufacturer": window["manufacturer"],
            "modality": window["modality"],
            "pixel_mean": window["pixel_mean"],
            "pixel_std": window["pixel_std"],
        }
    )
    return drift.profile(frame, class_names, "classification")


def judge_inputs(
    reference: Mapping[str, Any],
    production: Mapping[str, Any],
    params: DriftParams,
    docs_dir: Path,
) -> InputDrift:
    """Compare the profiles (drift.compare) and run the validate stage's drift suites on the
    manufacturer_mix and intensity rows; Data Docs go to docs_dir.

    Any failed expectation breaks its rule, whatever validate.drift's action (warn or fail:
    the action is what the validate stage does about it, a monitor only reports).
    """
    # GX costs seconds to import: only a run that judges pays for it (as in the validate stage)
    from medflow.validation.suite import build_drift_suites, run_suites

    comparison = drift.compare(reference, production)
    table = comparison.table[comparison.table["check"].isin(INPUT_RULES)].reset_index(drop=True)
    suites = build_drift_suites(params, INPUT_RULES)
    run = run_suites(suites, {"drift": table}, docs_dir)
    outcome = _outcome_per_check(run.results)
    table = table.assign(
        max_change=[getattr(params, c).max_change for c in table["check"]],
        broken=[
            c in outcome and q in outcome[c].quantities
            for c, q in zip(table["check"], table["quantity"], strict=True)
        ],
    )
    rules = []
    for check in INPUT_RULES:
        limit = getattr(params, check).max_change
        rows = table[table["check"] == check]
        if rows.empty or check not in outcome:
            why = "; ".join(comparison.not_compared) or "nothing to compare"
            rules.append(not_judged(check, limit, why))
            continue
        result = outcome[check]
        worst = rows.loc[rows["change"].idxmax()]
        if result.success:
            detail = f"all {len(rows)} compared quantities within {limit:g}"
        else:
            detail = f"{result.unexpected} of {len(rows)} compared quantities above {limit:g}"
        detail += f"; largest: {worst['quantity']}, change {worst['change']:.3g}"
        if worst["detail"]:
            detail += f" ({worst['detail']})"
        rules.append(
            Rule(
                name=check,
                judged=True,
                broken=not result.success,
                score=float(worst["change"]),
                threshold=limit,
                detail=detail,
            )
        )
    return InputDrift(
        table=table,
        rules=rules,
        failures=report.failures(run.results),
        not_compared=list(comparison.not_compared),
        docs_index=docs_dir / "index.html",
    )


@dataclass(frozen=True)
class _CheckResult:
    success: bool
    unexpected: int  # rows out of bounds
    quantities: set[str]  # which (GX lists up to its partial_unexpected_count of them)


def _outcome_per_check(results: Sequence[Any]) -> dict[str, _CheckResult]:
    """check -> its expectation's outcome, from the GX results (their partial unexpected rows
    are keyed by the drift table's ROW_KEYS, quantity among them)."""
    found: dict[str, _CheckResult] = {}
    for vr in results:
        for r in vr.results:
            check = (r.expectation_config.meta or {}).get("check")
            if check is None:
                continue
            result = r.result or {}
            rows = result.get("partial_unexpected_index_list") or []
            found[check] = _CheckResult(
                success=bool(r.success),
                unexpected=int(result.get("unexpected_count") or 0),
                quantities={str(row["quantity"]) for row in rows},
            )
    return found
