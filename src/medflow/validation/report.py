"""Turn Great Expectations results into summary.json content and a short text for people.

Works on the result objects' attributes only, so it needs no Great Expectations import.
Offending values are manifest values: pseudonymous ids, column names, codes and counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from medflow.validation.tables import ROW_NOUNS

MAX_OFFENDING = 5
_MAX_RULE_CHARS = 90


def failures(results: Iterable[Any]) -> list[dict[str, Any]]:
    """One dict per failed expectation, in suite order."""
    found = []
    for vr in results:
        table = (vr.meta or {}).get("active_batch_definition", {}).get("data_asset_name")
        for r in vr.results:
            if not r.success:
                found.append(_failure(vr.suite_name, table, r))
    return found


def statistics(results: Sequence[Any], skipped: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GX statistics summed over suites, plus the expectations that could not run."""
    keys = ("evaluated_expectations", "successful_expectations", "unsuccessful_expectations")
    stats: dict[str, Any] = {k: sum(int(vr.statistics.get(k, 0)) for vr in results) for k in keys}
    evaluated = stats["evaluated_expectations"]
    stats["success_percent"] = (
        round(100 * stats["successful_expectations"] / evaluated, 2) if evaluated else None
    )
    stats["skipped_expectations"] = len(skipped)
    return stats


def summary_text(
    success: bool,
    stats: Mapping[str, Any],
    failed: Sequence[Mapping[str, Any]],
    skipped: Sequence[Mapping[str, Any]],
    warnings: Sequence[Mapping[str, Any]] = (),
    notes: Sequence[str] = (),
) -> str:
    """A header line, one line per failed expectation, per warning, for what did not run, and
    the notes (e.g. whether drift was checked)."""
    verdict = "passed" if success else "FAILED"
    if warnings:
        verdict += f" with {len(warnings)} warning(s)"
    lines = [
        f"manifest validation {verdict}: {stats['successful_expectations']} of"
        f" {stats['evaluated_expectations']} expectations met"
    ]
    lines += [_line(f) for f in failed]
    lines += [_line(w, prefix="- warning: ") for w in warnings]
    if skipped:
        reasons = sorted({s["reason"] for s in skipped})
        lines.append(f"- {len(skipped)} expectation(s) not run: {'; '.join(reasons)}")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def _failure(suite: str, table: str | None, r: Any) -> dict[str, Any]:
    kwargs = dict(r.expectation_config.kwargs)
    result = dict(r.result or {})
    info = r.exception_info or {}
    # A failed metric reports its exception one level down, keyed by metric id.
    errors = [v for v in info.values() if isinstance(v, Mapping)] or [info]
    error = next((e.get("exception_message") for e in errors if e.get("raised_exception")), None)
    columns = [c for c in (kwargs.get(k) for k in ("column", "column_A", "column_B")) if c]
    columns += list(kwargs.get("column_list") or [])
    meta = r.expectation_config.meta or {}
    return plain(
        {
            "suite": suite,
            "table": table,
            "expectation": r.expectation_config.type,
            "column": ", ".join(columns) or None,
            "rule": meta.get("rule") or _rule(r.expectation_config.type, kwargs),
            "observed_value": result.get("observed_value"),
            "element_count": result.get("element_count"),
            "unexpected_count": result.get("unexpected_count"),
            "unexpected_percent": result.get("unexpected_percent"),
            "offending": _offending(result, columns),
            "error": error,
        }
    )


def _offending(result: Mapping[str, Any], checked: Sequence[str]) -> list[Any]:
    """Up to MAX_OFFENDING missing column names, unexpected rows (ids first) or values."""
    mismatched = (result.get("details") or {}).get("mismatched") or {}
    if mismatched.get("missing"):
        return list(mismatched["missing"][:MAX_OFFENDING])
    rows = result.get("partial_unexpected_index_list")
    if rows:
        # GX puts the checked value first; a reader looks for the row's id first.
        return [
            {k: row[k] for k in sorted(row, key=lambda k: k in checked)}
            for row in rows[:MAX_OFFENDING]
        ]
    return list((result.get("partial_unexpected_list") or [])[:MAX_OFFENDING])


def _rule(expectation: str, kwargs: Mapping[str, Any]) -> str:
    """What the expectation demands, from its type and arguments."""
    parts = []
    if expectation.endswith("_to_not_be_null"):
        parts.append("no nulls")
    if expectation.endswith("_to_be_unique"):
        parts.append("unique values")
    if kwargs.get("column_set") is not None:
        exact = "exactly" if kwargs.get("exact_match") else "at least"
        parts.append(f"{exact} the {len(kwargs['column_set'])} manifest columns")
    if kwargs.get("value_set") is not None:
        parts.append(f"in {list(kwargs['value_set'])}")
    if kwargs.get("value_pairs_set") is not None:
        parts.append(f"pair in {[tuple(p) for p in kwargs['value_pairs_set']]}")
    if kwargs.get("regex") is not None:
        parts.append(f"not matching {kwargs['regex']}")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None:
        parts.append(f"{'>' if kwargs.get('strict_min') else '>='} {_num(low)}")
    if high is not None:
        parts.append(f"{'<' if kwargs.get('strict_max') else '<='} {_num(high)}")
    text = " and ".join(parts) or "as declared"
    mostly = kwargs.get("mostly")
    if mostly is not None and mostly < 1:
        text += f" for {mostly:.0%} of rows"
    return text if len(text) <= _MAX_RULE_CHARS else text[: _MAX_RULE_CHARS - 1] + "…"


def _line(f: Mapping[str, Any], prefix: str = "- ") -> str:
    target = f"({f['column']})" if f["column"] else ""
    head = f"{prefix}{f['suite']}: {f['expectation']}{target}, expected {f['rule']}"
    if f["error"]:
        return f"{head}: error: {f['error']}"
    if f["expectation"] == "expect_table_columns_to_match_set":
        return f"{head}: missing {', '.join(map(str, f['offending']))}"
    if f["unexpected_count"] is not None:
        noun = ROW_NOUNS.get(f["table"] or "", "rows")
        head += f": {f['unexpected_count']} of {f['element_count']} {noun} unexpected"
    elif f["observed_value"] is not None:
        head += f": observed {f['observed_value']}"
    if f["offending"]:
        head += "; e.g. " + ", ".join(_show(o) for o in f["offending"])
    return head


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + " ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/NA to None, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value
