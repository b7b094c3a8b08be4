"""Suite construction: the rules carry params' thresholds and match what they should."""

from __future__ import annotations

import re

import pytest

from medflow.config import ValidateParams
from medflow.data.manifest import COLUMNS
from medflow.validation.suite import (
    build_drift_suites,
    build_suites,
    identifying_column_regex,
)
from tests.helpers.manifest_factory import CLASS_NAMES


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


def test_new_thresholds_come_from_params() -> None:
    params = ValidateParams(
        min_columns=16,
        max_columns=256,
        min_pixel_spacing=0.05,
        max_pixel_spacing=2.0,
        max_constant_fraction=0.5,
        min_class_fraction=0.2,
        max_class_fraction=0.8,
    )
    kwargs = {
        (s.name, e.expectation_type, getattr(e, "column", None)): e.configuration.kwargs
        for s in build_suites(params, CLASS_NAMES)
        for e in s.expectations
    }
    between = "expect_column_values_to_be_between"
    columns = kwargs[("manifest", between, "columns")]
    assert (columns["min_value"], columns["max_value"]) == (16, 256)
    spacing = kwargs[("manifest", between, "pixel_spacing")]
    assert (spacing["min_value"], spacing["max_value"]) == (0.05, 2.0)
    assert kwargs[("manifest", between, "pixel_constant_fraction")]["max_value"] == 0.5
    fraction = kwargs[("class_fractions", between, "fraction")]
    assert (fraction["min_value"], fraction["max_value"]) == (0.2, 0.8)
    # spacing may be absent unless min_pixel_spacing_present asks otherwise
    assert ("manifest", "expect_column_values_to_not_be_null", "pixel_spacing") not in kwargs


def test_drift_checks_go_to_the_suite_of_their_action() -> None:
    params = ValidateParams(
        drift={
            "label_balance": {"max_change": 0.1, "action": "fail"},
            "manufacturer_mix": {"max_change": 0.3, "action": "warn"},
            "intensity": {"max_change": 2.0, "action": "warn"},
        }
    )
    suites = {s.name: s for s in build_drift_suites(params.drift)}
    assert {n: s.table for n, s in suites.items()} == {"drift": "drift", "drift_warnings": "drift"}
    assert [e.meta["check"] for e in suites["drift"].expectations] == ["label_balance"]
    assert [e.max_value for e in suites["drift_warnings"].expectations] == [0.3, 2.0]

    all_warn = params.drift.model_copy(
        update={"label_balance": params.drift.label_balance.model_copy(update={"action": "warn"})}
    )
    assert [s.name for s in build_drift_suites(all_warn)] == ["drift_warnings"]


def test_ranges_must_be_ordered_and_every_problem_is_named() -> None:
    with pytest.raises(ValueError, match="min_rows .* max_rows.*min_class_fraction"):
        ValidateParams(min_rows=100, max_rows=10, min_class_fraction=0.9, max_class_fraction=0.1)
