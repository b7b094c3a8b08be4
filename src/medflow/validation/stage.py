"""The validate stage: the ingest manifest against its Great Expectations suites.

summary.json and Data Docs are written whether the data pass or not, then a failure raises
ValidationFailed; the drift reference is replaced only when the run passes (outputs:
docs/validation.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medflow.config import ValidateParams
from medflow.data.dataset import Dataset
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.errors import ValidationFailed
from medflow.io import atomic_dir, write_json_atomic
from medflow.validation import drift, mask_files, report, tables

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DOCS_DIR = "docs"
NO_REFERENCE = "no reference dataset: drift not checked"
# The drift suites whose failures are reported as warnings (the run still passes).
WARN_SUITES = frozenset({"drift_warnings"})
TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class ValidationResult:
    """What the stage found: failures and warnings are the summary.json entries, docs_index the
    Data Docs, drift what the drift comparison saw (or why there was none)."""

    success: bool
    statistics: dict[str, Any]
    summary_text: str
    failures: list[dict[str, Any]]
    docs_index: Path
    warnings: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)


def run_validate(
    params: ValidateParams,
    class_names: Sequence[str],
    ingest_dir: Path,
    out_dir: Path,
    reference: Path | None = None,
    dataset: Dataset | None = None,
    task: str = "classification",
) -> ValidationResult:
    """Validate ingest_dir/manifest.csv; write summary.json and Data Docs into out_dir.

    With a reference path: compare with the profile stored there (if any) and, when the run
    passes, replace it with this manifest's profile. `dataset` (whose reference it is) is
    named in the summary and the log; the first run on a dataset says it starts its reference.
    `task` (params data.task) "segmentation" adds the mask rules: each row's mask file is
    read (ingest_dir/mask_file) and checked against the row, the empty-mask share per split
    and the lesion area are checked, and the lesion area joins the drift profile.
    Raises ValidationFailed (after writing summary and docs) when any expectation fails or
    cannot run, fail-level drift included.
    """
    if len(class_names) < 2:
        raise ValueError(f"class_names needs at least 2 classes, got {list(class_names)}")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {list(TASKS)} (params data.task)")
    ingest_dir, out_dir = Path(ingest_dir), Path(out_dir)
    manifest = read_manifest(ingest_dir)
    # A broken reference is reported before the (slow) suites run.
    ref_profile = drift.read_reference(reference) if reference is not None else None
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
        "class_fractions": tables.class_fractions(manifest, class_names),
        "label_pairs": tables.label_pairs(manifest),
    }
    if task == drift.SEGMENTATION:
        derived["masks"] = mask_files.mask_table(manifest, ingest_dir)
        derived["empty_masks"] = tables.empty_masks(manifest)
    current = _profile(manifest, class_names, task)
    drift_info = _compare(reference, ref_profile, current, derived, dataset)
    # Imported here so that only this stage pays for GX's slow import
    # (why: docs/decisions/validation-speed.md).
    from medflow.validation.suite import build_drift_suites, build_suites, run_suites

    suites = build_suites(params, class_names, task)
    if "drift" in derived:
        suites += build_drift_suites(params.drift, drift.checks(task))

    with atomic_dir(out_dir) as tmp:
        run = run_suites(suites, derived, tmp / DOCS_DIR)
        blocking = [vr for vr in run.results if vr.suite_name not in WARN_SUITES]
        failed = report.failures(blocking)
        warned = report.failures([vr for vr in run.results if vr.suite_name in WARN_SUITES])
        stats = report.statistics(run.results, run.skipped)
        success = all(vr.success for vr in blocking) and not failed and not run.skipped
        drift_info["reference_updated"] = success and current is not None and reference is not None
        text = report.summary_text(
            success, stats, failed, run.skipped, warned, [drift_info["note"]]
        )
        write_json_atomic(
            tmp / SUMMARY_FILE,
            {
                "success": success,
                "statistics": stats,
                "failures": failed,
                "warnings": warned,
                "skipped": run.skipped,
                "drift": drift_info,
                "manifest": {"rows": len(manifest), "columns": list(map(str, manifest.columns))},
                "class_names": list(class_names),
                "task": task,
                "dataset": dataset.as_dict() if dataset is not None else None,
                "params": params.model_dump(),
                "docs_index": f"{DOCS_DIR}/index.html",
            },
        )
    if drift_info["reference_updated"]:
        write_json_atomic(reference, current)  # type: ignore[arg-type]
        if drift_info.get("first_run"):
            log.warning(
                "first run on dataset %s: its drift reference starts here, %s",
                drift_info.get("dataset", {}).get("key", "?"),
                reference,
            )
        else:
            log.info("drift reference updated: %s", reference)

    result = ValidationResult(
        success=success,
        statistics=stats,
        summary_text=text,
        failures=failed,
        docs_index=out_dir / DOCS_DIR / "index.html",
        warnings=warned,
        drift=drift_info,
    )
    if not success:
        log.error("%s", text)
        raise ValidationFailed(
            f"{text}\nDetails: {out_dir / SUMMARY_FILE} and {result.docs_index}."
            " Fix the data (re-run ingest) or, if the rule is wrong, the validate section"
            f" of params.yaml.{_drift_hint(failed, reference)}"
        )
    if warned:
        log.warning("%s", text)
    else:
        log.info("%s", text)
    return result


def _profile(manifest: Any, class_names: Sequence[str], task: str) -> dict[str, Any] | None:
    """The drift profile, or None when the manifest lacks a column it needs (the schema suite
    reports that, and a failing run never becomes the reference)."""
    try:
        return drift.profile(manifest, class_names, task)
    except KeyError as exc:
        log.warning("no drift profile: manifest column %s missing", exc)
        return None


def _compare(
    reference: Path | None,
    ref_profile: dict[str, Any] | None,
    current: dict[str, Any] | None,
    derived: dict[str, Any],
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Put the drift table into `derived` when there is something to compare; say what."""
    info: dict[str, Any] = {"reference": str(reference) if reference else None, "checked": False}
    if dataset is not None:
        info["dataset"] = dataset.as_dict()
    if reference is None:
        info["note"] = f"{NO_REFERENCE} (no reference path given)"
    elif ref_profile is None and dataset is not None:
        info["first_run"] = True
        info["note"] = (
            f"{NO_REFERENCE} (first run on dataset {dataset.key}, source {dataset.source}:"
            f" a passing run starts its reference {reference})"
        )
    elif ref_profile is None:
        info["first_run"] = True
        info["note"] = f"{NO_REFERENCE} ({reference} absent; a passing run writes it)"
    elif current is None:
        info["note"] = "drift not checked: the manifest lacks columns the profile needs"
    else:
        comparison = drift.compare(ref_profile, current)
        derived["drift"] = comparison.table
        skipped = "; ".join(comparison.not_compared)
        info.update(
            checked=True,
            compared=len(comparison.table),
            not_compared=comparison.not_compared,
            table=report.plain(comparison.table.to_dict(orient="records")),
            note=f"drift checked against {reference}"
            + (f" (dataset {dataset.key})" if dataset is not None else "")
            + f": {len(comparison.table)} quantities"
            + (f"; not compared: {skipped}" if skipped else ""),
        )
    return info


def _drift_hint(failed: Sequence[dict[str, Any]], reference: Path | None) -> str:
    if not any(f["suite"] == "drift" for f in failed):
        return ""
    return (
        " If the drift is deliberate (a new population on the same source), set the check's"
        f" action to warn in validate.drift for one run, or delete {reference}: the next run"
        " that passes becomes the new reference. A new data.source (or class_names) has a"
        " reference of its own (docs/validation.md)."
    )
