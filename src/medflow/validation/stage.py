"""The validate stage: the ingest manifest against its Great Expectations suites.

    out_dir/summary.json      verdict, statistics, every failed expectation with offending values
    out_dir/docs/index.html   Great Expectations Data Docs for this run

Both are written whether the data pass or not, so a failed run can be read; then a failure
raises ValidationFailed and the pipeline stops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.config import ValidateParams
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.errors import ValidationFailed
from medflow.io import atomic_dir, write_json_atomic
from medflow.validation import report, tables

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DOCS_DIR = "docs"


@dataclass(frozen=True)
class ValidationResult:
    """What the stage found; failures are the summary.json entries, docs_index the Data Docs."""

    success: bool
    statistics: dict[str, Any]
    summary_text: str
    failures: list[dict[str, Any]]
    docs_index: Path


def run_validate(
    params: ValidateParams, class_names: Sequence[str], ingest_dir: Path, out_dir: Path
) -> ValidationResult:
    """Validate ingest_dir/manifest.csv; write summary.json and Data Docs into out_dir.

    Raises ValidationFailed (after writing both) when any expectation fails or cannot run.
    """
    if len(class_names) < 2:
        raise ValueError(f"class_names needs at least 2 classes, got {list(class_names)}")
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    manifest = read_manifest(ingest_dir)
    log.info(
        "validating %s: %d images, %d patients, %d columns",
        ingest_dir / MANIFEST_FILE,
        len(manifest),
        manifest["patient_id"].nunique() if "patient_id" in manifest else 0,
        manifest.shape[1],
    )
    derived = {
        "manifest": manifest,
        "manifest_columns": tables.manifest_columns(manifest),
        "patient_splits": tables.patient_splits(manifest),
        "class_balance": tables.class_balance(manifest, class_names),
    }
    # Importing Great Expectations takes ~6 s; only this stage should pay for it.
    from medflow.validation.suite import build_suites, run_suites

    with atomic_dir(out_dir) as tmp:
        run = run_suites(build_suites(params, class_names), derived, tmp / DOCS_DIR)
        failed = report.failures(run.results)
        stats = report.statistics(run.results, run.skipped)
        success = all(vr.success for vr in run.results) and not failed and not run.skipped
        text = report.summary_text(success, stats, failed, run.skipped)
        write_json_atomic(
            tmp / SUMMARY_FILE,
            {
                "success": success,
                "statistics": stats,
                "failures": failed,
                "skipped": run.skipped,
                "manifest": {"rows": len(manifest), "columns": list(map(str, manifest.columns))},
                "class_names": list(class_names),
                "params": params.model_dump(),
                "docs_index": f"{DOCS_DIR}/index.html",
            },
        )

    result = ValidationResult(
        success=success,
        statistics=stats,
        summary_text=text,
        failures=failed,
        docs_index=out_dir / DOCS_DIR / "index.html",
    )
    if not success:
        log.error("%s", text)
        raise ValidationFailed(
            f"{text}\nDetails: {out_dir / SUMMARY_FILE} and {result.docs_index}."
            " Fix the data (re-run ingest) or, if the rule is wrong, the validate section"
            " of params.yaml."
        )
    log.info("%s", text)
    return result
