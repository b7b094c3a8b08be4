"""Drift against the last accepted dataset, through the real stage and real Great Expectations.

One reference (the valid manifest's profile, written by its passing first run) is shared by
the module; each later run works on its own copy of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medflow.config import ValidateParams
from medflow.errors import ValidationFailed
from medflow.validation.stage import NO_REFERENCE, SUMMARY_FILE, ValidationResult, run_validate
from tests.helpers.manifest_factory import (
    CLASS_NAMES,
    shifted_manifest,
    valid_manifest,
    write_manifest,
)

CHECKS = ("label_balance", "manufacturer_mix", "intensity")


def _params(action: str) -> ValidateParams:
    defaults = ValidateParams().drift
    drift = {c: {"max_change": getattr(defaults, c).max_change, "action": action} for c in CHECKS}
    return ValidateParams(drift=drift)


def _run(
    tmp: Path, df: pd.DataFrame, reference: Path, params: ValidateParams | None = None
) -> ValidationResult:
    ingest = write_manifest(df, tmp / "ingest")
    return run_validate(params or ValidateParams(), CLASS_NAMES, ingest, tmp / "out", reference)


def _summary(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "out" / SUMMARY_FILE).read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationResult]:
    tmp = tmp_path_factory.mktemp("first")
    reference = tmp / "reference" / "profile.json"
    return reference, _run(tmp, valid_manifest(), reference)


@pytest.fixture
def reference(first_run: tuple[Path, ValidationResult], tmp_path: Path) -> Path:
    copy = tmp_path / "reference" / "profile.json"
    copy.parent.mkdir()
    shutil.copy(first_run[0], copy)
    return copy


def test_first_run_has_no_reference_says_so_and_writes_one(
    first_run: tuple[Path, ValidationResult],
) -> None:
    reference, result = first_run
    assert result.success
    assert result.drift["checked"] is False
    assert NO_REFERENCE in result.drift["note"]
    assert NO_REFERENCE in result.summary_text
    assert result.drift["reference_updated"] is True
    profile = json.loads(reference.read_text())
    assert profile["label_fractions"] == {"normal": 0.5, "lesion": 0.5}
    assert profile["manufacturer_fractions"] == {"medflow-synth": 1.0}
    assert profile["intensity"]["CR"]["images"] == 40


def test_same_data_again_shows_no_drift(reference: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, valid_manifest(), reference)
    assert result.success and result.warnings == []
    assert result.drift["checked"] is True
    table = result.drift["table"]
    assert {r["check"] for r in table} == set(CHECKS)
    assert max(r["change"] for r in table) == 0
    assert "drift checked against" in result.summary_text
    # every drift check ran (and met its threshold) in Great Expectations
    assert (
        result.statistics["evaluated_expectations"] == result.statistics["successful_expectations"]
    )


def test_warn_level_drift_passes_with_warnings_and_becomes_the_reference(
    reference: Path, tmp_path: Path
) -> None:
    result = _run(tmp_path, shifted_manifest(), reference, _params("warn"))

    assert result.success and result.failures == []
    warned = {w["rule"].split()[0]: w for w in result.warnings}
    assert set(warned) == set(CHECKS)
    assert {w["suite"] for w in result.warnings} == {"drift_warnings"}
    assert "share of class lesion" in json.dumps(warned["label_balance"]["offending"])
    assert "Other Vendor 0.00->0.50" in json.dumps(warned["manufacturer_mix"]["offending"])
    assert "CR mean of pixel_mean" in json.dumps(warned["intensity"]["offending"])
    assert "passed with 3 warning(s)" in result.summary_text
    assert "- warning: drift_warnings:" in result.summary_text
    summary = _summary(tmp_path)
    assert summary["success"] is True and len(summary["warnings"]) == 3
    # accepted: the shifted data are the new reference
    assert json.loads(reference.read_text())["manufacturer_fractions"]["Other Vendor"] == 0.5


def test_fail_level_drift_fails_and_keeps_the_reference(reference: Path, tmp_path: Path) -> None:
    before = reference.read_bytes()
    with pytest.raises(ValidationFailed, match="set the check's action to warn") as failed:
        _run(tmp_path, shifted_manifest(), reference, _params("fail"))

    summary = _summary(tmp_path)
    assert summary["success"] is False and summary["warnings"] == []
    failed_checks = {f["rule"].split()[0] for f in summary["failures"]}
    assert failed_checks == set(CHECKS)
    assert {f["suite"] for f in summary["failures"]} == {"drift"}
    assert "share of class lesion" in str(failed.value)
    assert reference.read_bytes() == before


def test_default_params_fail_on_label_shift_only_warn_on_the_rest(
    reference: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValidationFailed):
        _run(tmp_path, shifted_manifest(), reference)
    summary = _summary(tmp_path)
    assert [f["rule"].split()[0] for f in summary["failures"]] == ["label_balance"]
    assert {w["rule"].split()[0] for w in summary["warnings"]} == {"manufacturer_mix", "intensity"}


def test_unreadable_reference_fails_before_the_suites(tmp_path: Path) -> None:
    reference = tmp_path / "profile.json"
    reference.write_text("{not json")
    with pytest.raises(ValueError, match="delete it to start afresh"):
        _run(tmp_path, valid_manifest(), reference)
    assert not (tmp_path / "out").exists()
