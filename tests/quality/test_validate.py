"""The validate stage on small manifests: a clean one passes, each kind of broken one fails
naming the broken rule and its offending rows. Real Great Expectations, real Data Docs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medflow.config import ValidateParams
from medflow.errors import ValidationFailed
from medflow.validation.stage import DOCS_DIR, SUMMARY_FILE, run_validate
from tests.helpers.manifest_factory import CLASS_NAMES, valid_manifest, write_manifest

Mutation = Callable[[pd.DataFrame], pd.DataFrame]


def _validate(
    tmp_path: Path, df: pd.DataFrame, params: ValidateParams | None = None
) -> tuple[Path, Any]:
    ingest = write_manifest(df, tmp_path / "ingest")
    out = tmp_path / "validate"
    return out, run_validate(params or ValidateParams(), CLASS_NAMES, ingest, out)


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / SUMMARY_FILE).read_text())


def _set(image_id: str, column: str, value: Any) -> Mutation:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df["image_id"] == image_id, column] = value
        return df

    return mutate


def _add_column(name: str, value: Any) -> Mutation:
    return lambda df: df.assign(**{name: value})


def _copy(column: str, source: str, target: str) -> Mutation:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        value = df.loc[df["image_id"] == source, column].iloc[0]
        df.loc[df["image_id"] == target, column] = value
        return df

    return mutate


def _drop_rows(split: str, label: int) -> Mutation:
    return lambda df: df[~((df["split"] == split) & (df["label"] == label))]


FAILING = [
    # mutation, params, (suite, expectation, column), strings the failure line must show.
    # An added PatientName column: test_phi_values_never_reach_the_outputs.
    pytest.param(
        _add_column("patientbirthdate", "19700101"),
        {},
        ("identifying_columns", "expect_column_values_to_not_match_regex", "column"),
        ["patientbirthdate"],
        id="phi-column-lowercase",
    ),
    pytest.param(
        _set("2.25.0030", "split", "test"),
        {},
        ("patient_leakage", "expect_column_values_to_be_between", "n_splits"),
        ["PSEUDO-003", "test+train"],
        id="patient-in-two-splits",
    ),
    pytest.param(
        _set("2.25.0051", "pixel_std", 0.0),
        {},
        ("manifest", "expect_column_values_to_be_between", "pixel_std"),
        ["2.25.0051"],
        id="blank-image",
    ),
    pytest.param(
        _set("2.25.0070", "label", 2),
        {},
        ("manifest", "expect_column_values_to_be_in_set", "label"),
        ["2.25.0070", "label=2"],
        id="unknown-label",
    ),
    pytest.param(
        _set("2.25.0000", "label_name", "lesion"),
        {},
        ("label_names", "expect_column_pair_values_to_be_in_set", "label, label_name"),
        ["2.25.0000"],
        id="label-name-mismatch",
    ),
    pytest.param(
        _set("2.25.0101", "modality", "XX"),
        {},
        ("manifest", "expect_column_values_to_be_in_set", "modality"),
        ["2.25.0101", "modality=XX"],
        id="unknown-modality",
    ),
    pytest.param(
        _set("2.25.0110", "rows", 4),
        {},
        ("manifest", "expect_column_values_to_be_between", "rows"),
        ["2.25.0110", "rows=4"],
        id="image-too-small",
    ),
    pytest.param(
        lambda df: df,
        {"min_columns": 128},
        ("manifest", "expect_column_values_to_be_between", "columns"),
        ["40 of 40 images unexpected"],
        id="min-columns-from-params",
    ),
    pytest.param(
        _set("2.25.0120", "patient_id", None),
        {},
        ("manifest", "expect_column_values_to_not_be_null", "patient_id"),
        ["2.25.0120"],
        id="null-patient-id",
    ),
    pytest.param(
        _copy("content_hash", "2.25.0010", "2.25.0141"),
        {},
        ("manifest", "expect_compound_columns_to_be_unique", "content_hash, frame"),
        ["2.25.0010", "2.25.0141"],
        id="duplicate-content-hash",
    ),
    pytest.param(
        _copy("image_id", "2.25.0020", "2.25.0021"),
        {},
        ("manifest", "expect_column_values_to_be_unique", "image_id"),
        ["2.25.0020"],
        id="duplicate-image-id",
    ),
    pytest.param(
        lambda df: df.drop(columns=["content_hash"]),
        {},
        ("manifest", "expect_table_columns_to_match_set", None),
        ["missing content_hash", "not run"],
        id="missing-column",
    ),
    pytest.param(
        lambda df: df.iloc[0:0],
        {},
        ("manifest", "expect_table_row_count_to_be_between", None),
        ["observed 0"],
        id="empty-manifest",
    ),
    pytest.param(
        _drop_rows("val", 1),
        {},
        ("class_balance", "expect_column_values_to_be_between", "n_images"),
        ["split=val label_name=lesion n_images=0"],
        id="class-absent-from-val",
    ),
    pytest.param(
        lambda df: df,
        {"min_images_per_class_per_split": 5},
        ("class_balance", "expect_column_values_to_be_between", "n_images"),
        ["split=val label_name=normal n_images=4", "split=test label_name=lesion n_images=4"],
        id="balance-threshold-from-params",
    ),
]


@pytest.mark.parametrize(("mutate", "params", "rule", "shown"), FAILING)
def test_broken_manifest_fails_naming_the_rule_and_offending_rows(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mutate: Mutation,
    params: dict[str, Any],
    rule: tuple[str, str, str | None],
    shown: list[str],
) -> None:
    caplog.set_level(logging.ERROR, logger="medflow.validation.stage")
    with pytest.raises(ValidationFailed) as failed:
        _validate(tmp_path, mutate(valid_manifest()), ValidateParams(**params))

    out = tmp_path / "validate"
    summary = _summary(out)
    assert summary["success"] is False
    assert (out / DOCS_DIR / "index.html").is_file()

    suite, expectation, column = rule
    matching = [
        f
        for f in summary["failures"]
        if (f["suite"], f["expectation"], f["column"]) == (suite, expectation, column)
    ]
    assert matching, (
        f"no {rule} among {[(f['suite'], f['expectation']) for f in summary['failures']]}"
    )
    assert summary["statistics"]["unsuccessful_expectations"] >= 1
    offending = json.dumps(matching[0]["offending"])
    for image_or_patient in (s for s in shown if s.startswith(("2.25.", "PSEUDO-"))):
        assert image_or_patient in offending

    # The one line for this failure, in the exception, the log and the summary text alike.
    target = f"({column})" if column else ""
    lines = [
        line
        for line in str(failed.value).splitlines()
        if line.startswith(f"- {suite}: {expectation}{target},")
    ]
    assert len(lines) == 1, str(failed.value)
    text = "\n".join([lines[0], *(ln for ln in str(failed.value).splitlines() if "not run" in ln)])
    for s in shown:
        assert s in text, f"{s!r} not in {text!r}"
    assert lines[0] in caplog.text


def test_phi_values_never_reach_the_outputs(tmp_path: Path) -> None:
    """The failure names the identifying column, never what it holds."""
    df = valid_manifest().assign(PatientName="Doe^John", ReferringPhysicianName="Dr^Who")
    with pytest.raises(ValidationFailed, match="PatientName") as failed:
        _validate(tmp_path, df)
    out = tmp_path / "validate"
    offending = [o["column"] for f in _summary(out)["failures"] for o in f["offending"]]
    assert sorted(offending) == ["PatientName", "ReferringPhysicianName"]
    docs = "".join(p.read_text() for p in (out / DOCS_DIR).rglob("*.html"))
    for value in ("Doe^John", "Dr^Who"):
        assert value not in str(failed.value)
        assert value not in (out / SUMMARY_FILE).read_text()
        assert value not in docs


PASSING = [
    pytest.param(lambda df: df, {}, id="clean"),
    # Not every extra column is identifying; patient_id (a pseudonym) is not PatientID either.
    pytest.param(_add_column("site_code", "S1"), {}, id="extra-harmless-column"),
    # val keeps one patient per class: 2 images each, exactly the threshold.
    pytest.param(
        lambda df: df[~df["patient_id"].isin(["PSEUDO-014", "PSEUDO-015"])],
        {"min_images_per_class_per_split": 2},
        id="balance-at-threshold",
    ),
    pytest.param(
        _set("2.25.0101", "modality", "XX"),
        {"allowed_modalities": ["CR", "XX"]},
        id="modality-allowed-by-params",
    ),
]


@pytest.mark.parametrize(("mutate", "params"), PASSING)
def test_valid_manifest_passes_every_suite(
    tmp_path: Path, mutate: Mutation, params: dict[str, Any]
) -> None:
    out, result = _validate(tmp_path, mutate(valid_manifest()), ValidateParams(**params))

    assert result.success, result.summary_text
    assert result.failures == []
    stats = result.statistics
    assert stats["evaluated_expectations"] == stats["successful_expectations"] > 20
    assert stats["skipped_expectations"] == 0
    summary = _summary(out)
    assert summary["success"] is True and summary["failures"] == []
    assert {f["suite"] for f in summary["failures"]} == set()
    assert result.docs_index == out / DOCS_DIR / "index.html"
    assert result.docs_index.is_file()


def test_docs_survive_the_atomic_rename_and_a_rerun_replaces_them(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed):
        _validate(tmp_path, _set("2.25.0051", "pixel_std", 0.0)(valid_manifest()))
    out, result = _validate(tmp_path, valid_manifest())

    assert _summary(out)["success"] is True
    assert sorted(p.name for p in out.iterdir()) == [DOCS_DIR, SUMMARY_FILE]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # Every validation page the index links to exists, relative to the final folder.
    index = result.docs_index.read_text()
    pages = set(re.findall(r"validations/[^'\"]+?\.html", index))
    suites = {
        "manifest",
        "identifying_columns",
        "patient_leakage",
        "class_balance",
        "class_fractions",
        "label_names",
    }
    assert {p.split("/")[1] for p in pages} == suites
    for page in pages:
        assert (out / DOCS_DIR / page).is_file(), page


def test_missing_manifest_fails_before_great_expectations(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the ingest stage first"):
        run_validate(ValidateParams(), CLASS_NAMES, tmp_path / "ingest", tmp_path / "out")
    assert not (tmp_path / "out").exists()
