"""Segmentation validation: mask files against their rows, empty-mask share, lesion area and its
drift. Real Great Expectations runs on manifests and (K, H, W) .npy masks written here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medflow.config import Params, ValidateParams
from medflow.errors import ValidationFailed
from medflow.stages.validate import validate
from medflow.validation import drift
from medflow.validation.mask_files import mask_table, read_mask
from medflow.validation.stage import SUMMARY_FILE, ValidationResult, run_validate
from medflow.validation.suite import build_drift_suites, build_suites
from medflow.validation.tables import empty_masks
from tests.helpers.manifest_factory import CLASS_NAMES, valid_manifest, write_manifest

SEG = "segmentation"
Mutation = Callable[[pd.DataFrame, Path], pd.DataFrame]


def _lesion(i: int, rows: int, columns: int, scale: float = 1.0) -> np.ndarray:
    """A (1, rows, columns) mask with one square lesion, 6 to 14 pixels a side (x scale)."""
    side = round((6 + 2 * (i % 5)) * scale)
    mask = np.zeros((1, rows, columns), np.uint8)
    mask[0, 8 : 8 + side, 10 : 10 + side] = 1
    return mask


def _save(ingest: Path, relative: str, mask: np.ndarray) -> None:
    path = ingest / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, mask)


def seg_manifest(ingest: Path, scale: float = 1.0) -> pd.DataFrame:
    """valid_manifest() as a segmentation dataset: label 1 rows have one lesion, label 0 rows an
    empty mask; masks/<content_hash>_<frame>.npy written in ingest, manifest too."""
    df = valid_manifest()
    files, fractions, components = [], [], []
    for i, row in enumerate(df.itertuples()):
        mask = (
            _lesion(i, row.rows, row.columns, scale)
            if row.label == 1
            else np.zeros((1, row.rows, row.columns), np.uint8)
        )
        relative = f"masks/{row.content_hash}_{row.frame}.npy"
        _save(ingest, relative, mask)
        files.append(relative)
        fractions.append(float(mask.any(axis=0).mean()))
        components.append(int(mask.any()))
    df = df.assign(mask_file=files, mask_fraction=fractions, mask_components=components)
    write_manifest(df, ingest)
    return df


def _run(
    tmp: Path,
    df: pd.DataFrame,
    reference: Path | None = None,
    params: ValidateParams | None = None,
) -> ValidationResult:
    write_manifest(df, tmp / "ingest")
    return run_validate(
        params or ValidateParams(), CLASS_NAMES, tmp / "ingest", tmp / "out", reference, task=SEG
    )


def _failed(tmp: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((tmp / "out" / SUMMARY_FILE).read_text())
    assert summary["success"] is False and summary["task"] == SEG
    return {f["rule"]: f for f in summary["failures"]}


def _image(df: pd.DataFrame, label: int, n: int = 0) -> pd.Series:
    return df[df["label"] == label].iloc[n]


def _replace_mask(df: pd.DataFrame, ingest: Path, image_id: str, mask: np.ndarray) -> None:
    """Write a new mask for one image, its manifest columns kept in step with it."""
    at = df["image_id"] == image_id
    _save(ingest, df.loc[at, "mask_file"].iloc[0], mask)
    df.loc[at, "mask_fraction"] = float(mask.astype(bool).any(axis=0).mean())


# ---- good data


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A passing segmentation run through the stage function (params data.task), which writes
    the drift reference."""
    tmp = tmp_path_factory.mktemp("good")
    seg_manifest(tmp / "ingest")
    reference = tmp / "reference" / "profile.json"
    params = Params(data={"task": SEG})
    result = validate(params, tmp / "ingest", tmp / "out", reference=reference)
    return tmp, reference, result


def test_good_segmentation_data_pass_every_mask_rule(good: tuple[Path, Path, Any]) -> None:
    tmp, reference, result = good
    assert result.success and result.failures == [] and result.warnings == []
    summary = json.loads((tmp / "out" / SUMMARY_FILE).read_text())
    assert summary["task"] == SEG and summary["skipped"] == []
    rules = {
        (e.meta or {}).get("rule")
        for s in build_suites(ValidateParams(), CLASS_NAMES, SEG)
        for e in s.expectations
    }
    assert "mask height = image rows" in rules and "mask values 0 and 1 only" in rules
    assert (
        result.statistics["evaluated_expectations"] == result.statistics["successful_expectations"]
    )
    # the mask suites are in the Data Docs like the others
    pages = {p.name for p in (tmp / "out" / "docs").rglob("*")}
    assert {"mask_files", "empty_masks"} <= pages
    profile = json.loads(reference.read_text())
    assert profile["lesion_area"]["masked_images"] == 20
    assert profile["lesion_area"]["images"] == 40


# ---- bad data: each fails naming its rule and its image


def _shape(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    row = _image(df, 1)
    _replace_mask(df, ingest, row["image_id"], _lesion(0, 32, row["columns"]))
    return df


def _values(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    row = _image(df, 1)
    _replace_mask(df, ingest, row["image_id"], _lesion(0, row["rows"], row["columns"]) * 255)
    return df


def _planes(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    row = _image(df, 1)
    lesion = _lesion(0, row["rows"], row["columns"])
    _replace_mask(df, ingest, row["image_id"], np.concatenate([lesion, 0 * lesion]))
    return df


def _dtype(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    row = _image(df, 1)
    _replace_mask(df, ingest, row["image_id"], _lesion(0, 64, 64).astype("float32"))
    return df


def _missing(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    (ingest / _image(df, 1)["mask_file"]).unlink()
    return df


def _label_disagrees(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    at = df["image_id"] == _image(df, 1)["image_id"]
    df.loc[at, ["label", "label_name"]] = [0, "normal"]
    df.loc[at, "split"] = "train"  # train keeps enough of both classes
    return df


def _huge(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    row = _image(df, 1)
    mask = np.ones((1, row["rows"], row["columns"]), np.uint8)
    mask[0, :2, :] = 0  # 62 of 64 rows: 0.97 of the frame
    _replace_mask(df, ingest, row["image_id"], mask)
    return df


def _fraction_wrong(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    df.loc[df["image_id"] == _image(df, 1)["image_id"], "mask_fraction"] = 0.5
    return df


def _components_zero(df: pd.DataFrame, ingest: Path) -> pd.DataFrame:
    df.loc[df["image_id"] == _image(df, 1)["image_id"], "mask_components"] = 0
    return df


BAD = {
    "shape mismatch": (_shape, "mask height = image rows", "mask_rows=32"),
    "mask values not 0/1": (_values, "mask values 0 and 1 only", "mask_values=0,255"),
    "too many planes": (_planes, "1 mask plane(s): K = len(class_names) - 1", "mask_planes=2"),
    "float mask": (
        _dtype,
        "mask file readable: a (K, H, W) uint8 .npy in the ingest folder",
        "dtype float32",
    ),
    "mask file missing": (
        _missing,
        "mask file readable: a (K, H, W) uint8 .npy in the ingest folder",
        "file missing",
    ),
    "label disagrees with mask": (
        _label_disagrees,
        "label = highest class in the mask (plane k: k + 1; empty: 0)",
        "mask_label=1",
    ),
    "lesion covers the frame": (
        _huge,
        "lesion area: 0.0 <= mask_fraction <= 0.9 where not empty",
        "mask_fraction=0.96875",
    ),
    "recorded fraction wrong": (
        _fraction_wrong,
        "mask_fraction = the file's, within 0.0001",
        "mask_file=masks/",
    ),
    "components on an empty-looking row": (
        _components_zero,
        "mask_components >= 1 where mask_fraction > 0",
        "mask_components=0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_masks_fail_naming_the_rule_and_the_image(tmp_path: Path, case: str) -> None:
    mutate, rule, shown = BAD[case]
    df = seg_manifest(tmp_path / "ingest")
    target = _image(df, 1)["image_id"]
    df = mutate(df, tmp_path / "ingest")
    with pytest.raises(ValidationFailed) as failed:
        _run(tmp_path, df)

    failures = _failed(tmp_path)
    assert set(failures) == {rule}, f"{case}: {sorted(failures)}"
    failure = failures[rule]
    assert failure["unexpected_count"] == 1
    line = next(x for x in str(failed.value).splitlines() if rule in x)
    assert target in line and shown in line, line


def test_label_outside_the_segments_fails(tmp_path: Path) -> None:
    df = seg_manifest(tmp_path / "ingest")
    image_id = _image(df, 1)["image_id"]
    df.loc[df["image_id"] == image_id, "label"] = 2  # K = 1: labels 0..1
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_be_in_set\(label\)"):
        _run(tmp_path, df)
    failures = _failed(tmp_path)
    assert image_id in json.dumps(failures["in [0, 1]"]["offending"])
    assert "label = highest class in the mask (plane k: k + 1; empty: 0)" in failures


def test_all_masks_empty_fails_the_empty_share_of_every_split(tmp_path: Path) -> None:
    df = seg_manifest(tmp_path / "ingest")
    for row in df.itertuples():
        _save(tmp_path / "ingest", row.mask_file, np.zeros((1, 64, 64), np.uint8))
    df = df.assign(mask_fraction=0.0, mask_components=0, label=0, label_name="normal")
    with pytest.raises(ValidationFailed, match="share of empty masks per split"):
        _run(tmp_path, df)
    failure = _failed(tmp_path)["share of empty masks per split within [0.0, 0.9]"]
    assert failure["suite"] == "empty_masks" and failure["unexpected_count"] == 3
    assert {o["split"] for o in failure["offending"]} == {"train", "val", "test"}
    assert {o["empty_fraction"] for o in failure["offending"]} == {1.0}


def test_missing_mask_columns_are_named(tmp_path: Path) -> None:
    df = seg_manifest(tmp_path / "ingest").drop(columns=["mask_file"])
    with pytest.raises(ValidationFailed, match="table masks needs manifest column"):
        _run(tmp_path, df)


# ---- drift of the lesion area


def _reference_copy(good: tuple[Path, Path, Any], tmp: Path) -> Path:
    copy = tmp / "profile.json"
    copy.write_bytes(good[1].read_bytes())
    return copy


def test_same_masks_show_no_lesion_area_drift(good: tuple[Path, Path, Any], tmp_path: Path) -> None:
    result = _run(tmp_path, seg_manifest(tmp_path / "ingest"), _reference_copy(good, tmp_path))
    assert result.success and result.warnings == []
    rows = [r for r in result.drift["table"] if r["check"] == "lesion_area"]
    assert [r["quantity"] for r in rows] == [
        "lesion area: mean of mask_fraction",
        "lesion area: q50 of mask_fraction",
    ]
    assert {r["change"] for r in rows} == {0.0}


def test_larger_lesions_warn_by_default_and_fail_when_asked(
    good: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    bigger = seg_manifest(tmp_path / "warn" / "ingest", scale=2.0)  # 4x the area, still < 0.9
    reference = _reference_copy(good, tmp_path / "warn")
    result = _run(tmp_path / "warn", bigger, reference)
    assert result.success
    assert [w["rule"] for w in result.warnings] == ["lesion_area change <= 0.5"]
    assert "lesion area: q50 of mask_fraction" in result.summary_text
    assert result.drift["reference_updated"]  # accepted with a warning: the new reference

    seg_manifest(tmp_path / "fail" / "ingest", scale=2.0)
    reference = _reference_copy(good, tmp_path / "fail")
    strict = ValidateParams(drift={"lesion_area": {"max_change": 0.5, "action": "fail"}})
    with pytest.raises(ValidationFailed, match="lesion area: mean of mask_fraction"):
        _run(tmp_path / "fail", bigger, reference, strict)
    assert [f["suite"] for f in _failed(tmp_path / "fail").values()] == ["drift"]
    assert reference.read_bytes() == good[1].read_bytes()  # a failed run is no reference


# ---- the parts, without a Great Expectations run


def test_lesion_area_profile_and_comparison() -> None:
    df = valid_manifest().assign(
        mask_fraction=lambda d: np.where(d["label"] == 1, 0.01 + 0.001 * (d.index % 4), 0.0)
    )
    ref = drift.profile(df, CLASS_NAMES, SEG)
    area = ref["lesion_area"]
    assert (area["images"], area["masked_images"]) == (40, 20)
    lesions = df.loc[df["label"] == 1, "mask_fraction"]
    assert area["mask_fraction"]["q50"] == pytest.approx(lesions.median())
    cur = drift.profile(df.assign(mask_fraction=df["mask_fraction"] * 2), CLASS_NAMES, SEG)
    table = drift.compare(ref, cur).table
    mean = table[table["quantity"] == "lesion area: mean of mask_fraction"].iloc[0]
    sd = area["mask_fraction"]["std"]
    assert mean["change"] == pytest.approx(area["mask_fraction"]["mean"] / sd, rel=1e-4)

    # a reference from before, or with no lesion at all: listed, not compared
    classification = drift.profile(df, CLASS_NAMES)
    assert "lesion_area" not in classification
    assert drift.compare(classification, cur).not_compared == [
        "lesion area: the reference profile has none"
    ]
    none = drift.profile(df.assign(mask_fraction=0.0), CLASS_NAMES, SEG)
    assert drift.compare(ref, none).not_compared == [
        "lesion area: no non-empty masks in the current dataset"
    ]


def test_classification_suites_and_drift_checks_are_unchanged() -> None:
    params = ValidateParams()
    names = [s.name for s in build_suites(params, CLASS_NAMES)]
    assert "mask_files" not in names and "empty_masks" not in names
    columns = {
        getattr(e, "column", None)
        for s in build_suites(params, CLASS_NAMES)
        for e in s.expectations
    }
    assert not {"mask_file", "mask_fraction", "mask_components"} & columns
    checks = [e.meta["check"] for s in build_drift_suites(params.drift) for e in s.expectations]
    assert checks == list(drift.CHECKS) and "lesion_area" not in checks
    seg = [
        e.meta["check"]
        for s in build_drift_suites(params.drift, drift.checks(SEG))
        for e in s.expectations
    ]
    assert "lesion_area" in seg


def test_empty_masks_table_counts_per_split() -> None:
    df = valid_manifest().assign(mask_fraction=lambda d: d["label"] * 0.02)
    df.loc[0, "mask_fraction"] = np.nan  # not counted: the completeness rule reports it
    table = empty_masks(df)
    assert table["split"].tolist() == ["train", "val", "test"]
    assert table["n_images"].tolist() == [23, 8, 8]
    assert table["n_empty"].tolist() == [11, 4, 4]
    assert empty_masks(df.drop(columns=["mask_fraction"])) is None


def test_read_mask_facts_and_refusals(tmp_path: Path) -> None:
    mask = np.zeros((2, 10, 12), np.uint8)
    mask[1, :5, :6] = 1
    mask[0, :2, :2] = 1
    _save(tmp_path, "masks/a.npy", mask)
    facts = read_mask(tmp_path, "masks/a.npy")
    assert (facts.planes, facts.rows, facts.columns) == (2, 10, 12)
    assert facts.values == "0,1" and facts.label == 2 and facts.fraction == 30 / 120
    assert read_mask(tmp_path, "../outside.npy").error.startswith("mask_file must be a relative")
    assert read_mask(tmp_path, None).error == "no mask_file"
    (tmp_path / "masks" / "b.npy").write_text("not numpy")
    assert read_mask(tmp_path, "masks/b.npy").error.startswith("not a .npy array")
    _save(tmp_path, "masks/c.npy", np.zeros((10, 12), np.uint8))
    assert read_mask(tmp_path, "masks/c.npy").error == "shape (10, 12): expected 3 axes (K, H, W)"
    assert mask_table(pd.DataFrame({"image_id": ["x"]}), tmp_path) is None


def test_new_ranges_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="min_empty_mask_fraction .*min_mask_fraction"):
        ValidateParams(
            min_empty_mask_fraction=0.8,
            max_empty_mask_fraction=0.2,
            min_mask_fraction=0.5,
            max_mask_fraction=0.1,
        )
