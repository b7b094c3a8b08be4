"""Value ranges, (sop_instance_id, frame) uniqueness, class shares and image statistics.

Each rule here is broken on its own rows of ONE manifest (the rules are independent, and a GX
run costs seconds), so one failing run names every rule with its offending rows; one passing
run holds each rule's edge cases that must pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medflow.config import ValidateParams
from medflow.errors import ValidationFailed
from medflow.validation.stage import SUMMARY_FILE, run_validate
from tests.helpers.manifest_factory import CLASS_NAMES, valid_manifest, write_manifest

# row -> (column, value): each broken row breaks exactly the rule listed against it in BROKEN
MUTATIONS: dict[str, dict[str, Any]] = {
    "2.25.0000": {"pixel_spacing": 50.0},
    "2.25.0011": {"frames": 0},  # also frame (0) < frames
    "2.25.0020": {"frame": 3},  # a 1-frame file has no frame 3
    "2.25.0031": {"frame": -1},
    "2.25.0040": {"bits_stored": 40},
    "2.25.0051": {"columns": 9000},
    "2.25.0060": {"sop_instance_id": "2.25.0061"},  # 2.25.0061 is that file's frame 0 too
    "2.25.0070": {"pixel_constant_fraction": 1.0},  # blank
    "2.25.0081": {"pixel_max": 1008.0, "pixel_min": 1008.0},  # == pixel_mean, std kept
    "2.25.0090": {"pixel_min": 2000.0},  # above pixel_mean 1009
    "2.25.0101": {"pixel_max": 500.0},  # below pixel_mean 1010
    "2.25.0110": {"pixel_spacing": np.nan},
    "2.25.0121": {"pixel_spacing": np.nan},
}
# params that break the class-share and spacing-presence rules on the same manifest
BROKEN_PARAMS = {"max_class_fraction": 0.45, "min_pixel_spacing_present": 0.99}

# (expectation, column as the summary names it), the offending ids or values it must show
BROKEN = [
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "pixel_spacing"),
        ["2.25.0000"],
        id="pixel-spacing-range",
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_not_be_null", "pixel_spacing"),
        ["2.25.0110", "2.25.0121"],
        id="pixel-spacing-present",
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "frames"), ["2.25.0011"], id="frames"
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "frame"), ["2.25.0031"], id="frame"
    ),
    pytest.param(
        ("manifest", "expect_column_pair_values_a_to_be_greater_than_b", "frames, frame"),
        ["2.25.0011", "2.25.0020"],
        id="frame-within-frames",
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "bits_stored"),
        ["2.25.0040"],
        id="bits-stored",
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "columns"),
        ["2.25.0051"],
        id="columns",
    ),
    pytest.param(
        ("manifest", "expect_compound_columns_to_be_unique", "sop_instance_id, frame"),
        ["2.25.0060", "2.25.0061"],
        id="sop-frame-unique",
    ),
    pytest.param(
        ("manifest", "expect_column_values_to_be_between", "pixel_constant_fraction"),
        ["2.25.0070"],
        id="blank-image-constant-fraction",
    ),
    pytest.param(
        ("manifest", "expect_column_pair_values_a_to_be_greater_than_b", "pixel_max, pixel_min"),
        ["2.25.0081"],
        id="max-above-min",
    ),
    pytest.param(
        ("manifest", "expect_column_pair_values_a_to_be_greater_than_b", "pixel_mean, pixel_min"),
        ["2.25.0090"],
        id="mean-above-min",
    ),
    pytest.param(
        ("manifest", "expect_column_pair_values_a_to_be_greater_than_b", "pixel_max, pixel_mean"),
        ["2.25.0101"],
        id="mean-below-max",
    ),
    pytest.param(
        ("class_fractions", "expect_column_values_to_be_between", "fraction"),
        ["normal", "lesion"],
        id="class-fraction",
    ),
]


def _mutated(mutations: dict[str, dict[str, Any]]) -> pd.DataFrame:
    df = valid_manifest()
    for image_id, values in mutations.items():
        for column, value in values.items():
            df.loc[df["image_id"] == image_id, column] = value
    return df


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("broken")
    ingest = write_manifest(_mutated(MUTATIONS), tmp / "ingest")
    with pytest.raises(ValidationFailed) as failed:
        run_validate(ValidateParams(**BROKEN_PARAMS), CLASS_NAMES, ingest, tmp / "out")
    return json.loads((tmp / "out" / SUMMARY_FILE).read_text()), str(failed.value)


@pytest.mark.parametrize(("rule", "shown"), BROKEN)
def test_each_rule_fails_naming_its_offending_rows(
    broken: tuple[dict[str, Any], str], rule: tuple[str, str, str], shown: list[str]
) -> None:
    summary, message = broken
    suite, expectation, column = rule
    matching = [
        f
        for f in summary["failures"]
        if (f["suite"], f["expectation"], f["column"]) == (suite, expectation, column)
    ]
    assert len(matching) == 1, [(f["expectation"], f["column"]) for f in summary["failures"]]
    offending = json.dumps(matching[0]["offending"])
    for value in shown:
        assert value in offending
    lines = [ln for ln in message.splitlines() if ln.startswith(f"- {suite}: {expectation}(")]
    line = next(ln for ln in lines if ln.startswith(f"- {suite}: {expectation}({column}),"))
    assert all(value in line for value in shown), line


def test_only_the_broken_rows_are_named(broken: tuple[dict[str, Any], str]) -> None:
    """Each mutation breaks its own rule and no other (else the pass cases would be unsure)."""
    summary, _ = broken
    expected = {p.values[0] for p in BROKEN}
    assert {(f["suite"], f["expectation"], f["column"]) for f in summary["failures"]} == expected
    named = {
        row["image_id"]
        for f in summary["failures"]
        for row in f["offending"]
        if isinstance(row, dict) and "image_id" in row
    }
    assert named == set(MUTATIONS) | {"2.25.0061"}  # the other half of the duplicate


def test_spacing_presence_failure_reports_the_observed_share(
    broken: tuple[dict[str, Any], str],
) -> None:
    summary, _ = broken
    (f,) = [
        f for f in summary["failures"] if f["expectation"] == "expect_column_values_to_not_be_null"
    ]
    assert (f["column"], f["unexpected_count"], f["element_count"]) == ("pixel_spacing", 2, 40)
    assert "for 99% of rows" in f["rule"]


# Edge cases every rule above must let through.
EDGES: dict[str, dict[str, Any]] = {
    "2.25.0000": {"pixel_spacing": np.nan},  # absent spacing: allowed by default
    "2.25.0011": {"pixel_spacing": 10.0, "bits_stored": 32, "columns": 8192},  # at the maxima
    "2.25.0020": {"pixel_spacing": 0.01, "bits_stored": 1, "columns": 8},  # at the minima
    "2.25.0031": {"pixel_constant_fraction": 0.9},  # at max_constant_fraction
    "2.25.0040": {"pixel_mean": 0.0},  # == pixel_min
    "2.25.0051": {"pixel_mean": 4095.0},  # == pixel_max
    # a 2-frame file: the same sop_instance_id twice, as frames 0 and 1
    "2.25.0060": {"frames": 2},
    "2.25.0061": {"frames": 2, "frame": 1, "sop_instance_id": "2.25.0060"},
}


def test_edge_values_pass_every_rule(tmp_path: Path) -> None:
    # class shares are 0.5 each: exactly at the bounds set here
    params = ValidateParams(min_class_fraction=0.5, max_class_fraction=0.5)
    ingest = write_manifest(_mutated(EDGES), tmp_path / "ingest")
    result = run_validate(params, CLASS_NAMES, ingest, tmp_path / "out")
    assert result.success, result.summary_text
    stats = result.statistics
    assert stats["evaluated_expectations"] == stats["successful_expectations"] > 40
