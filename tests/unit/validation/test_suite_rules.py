"""Suite construction: the rules carry params' thresholds and match what they should."""

from __future__ import annotations

import re

import pytest

from medflow.config import ValidateParams
from medflow.data.manifest import COLUMNS
from medflow.validation.suite import build_suites, identifying_column_regex
from tests.quality.manifest_factory import CLASS_NAMES


@pytest.mark.parametrize(
    "name", ["PatientName", "patientname", "PATIENTID", " PatientBirthDate ", "accessionnumber"]
)
def test_identifying_regex_matches_keywords_in_any_case(name: str) -> None:
    assert re.search(identifying_column_regex(), name)


@pytest.mark.parametrize("name", ["patient_id", "PatientNameHash", "study_id", "InstitutionNames"])
def test_identifying_regex_spares_pseudonym_and_other_columns(name: str) -> None:
    assert not re.search(identifying_column_regex(), name)


def test_no_manifest_column_is_identifying() -> None:
    assert not [c for c in COLUMNS if re.search(identifying_column_regex(), c)]


def test_thresholds_come_from_params() -> None:
    params = ValidateParams(
        allowed_modalities=["CT"], min_images_per_class_per_split=7, min_rows=32, max_rows=512
    )
    kwargs = {
        (s.name, e.expectation_type, getattr(e, "column", None)): e.configuration.kwargs
        for s in build_suites(params, CLASS_NAMES)
        for e in s.expectations
    }
    assert kwargs[("manifest", "expect_column_values_to_be_in_set", "modality")]["value_set"] == [
        "CT"
    ]
    rows = kwargs[("manifest", "expect_column_values_to_be_between", "rows")]
    assert (rows["min_value"], rows["max_value"]) == (32, 512)
    balance = kwargs[("class_balance", "expect_column_values_to_be_between", "n_images")]
    assert balance["min_value"] == 7
    labels = kwargs[("manifest", "expect_column_values_to_be_in_set", "label")]
    assert labels["value_set"] == [0, 1]
