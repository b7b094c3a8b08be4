"""The derived tables behind the cross-row rules, in plain pandas (no Great Expectations run)."""

from __future__ import annotations

import pandas as pd

from medflow.validation.tables import (
    class_balance,
    class_fractions,
    label_pairs,
    manifest_columns,
    patient_splits,
)
from tests.helpers.manifest_factory import CLASS_NAMES, N_PATIENTS, valid_manifest


def test_patient_splits_has_one_row_per_patient_and_flags_a_second_split() -> None:
    df = valid_manifest()
    assert (patient_splits(df)["n_splits"] == 1).all()

    df.loc[df["image_id"] == "2.25.0030", "split"] = "test"
    table = patient_splits(df)
    assert len(table) == N_PATIENTS
    leaked = table[table["n_splits"] > 1]
    assert leaked[["patient_id", "splits"]].values.tolist() == [["PSEUDO-003", "test+train"]]


def test_patient_splits_ignores_null_keys_and_needs_its_columns() -> None:
    df = valid_manifest()
    df.loc[0, "patient_id"] = None
    assert patient_splits(df)["n_splits"].max() == 1
    assert patient_splits(df.drop(columns=["split"])) is None


def test_class_balance_lists_every_split_and_class_with_zero_counts() -> None:
    df = valid_manifest()
    df = df[~((df["split"] == "val") & (df["label"] == 1))]
    table = class_balance(df, CLASS_NAMES)
    assert len(table) == 3 * len(CLASS_NAMES)
    counts = {(r.split, r.label_name): r.n_images for r in table.itertuples()}
    assert counts == {
        ("train", "normal"): 12,
        ("train", "lesion"): 12,
        ("val", "normal"): 4,
        ("val", "lesion"): 0,
        ("test", "normal"): 4,
        ("test", "lesion"): 4,
    }


def test_class_balance_counts_only_declared_labels_and_splits() -> None:
    df = valid_manifest()
    df["label"] = df["label"].astype("float64")
    df.loc[df["image_id"] == "2.25.0000", "label"] = 2  # no such class
    df.loc[df["image_id"] == "2.25.0010", "label"] = 0.5  # not a class index
    df.loc[df["image_id"] == "2.25.0020", "split"] = "holdout"  # no such split
    table = class_balance(df, CLASS_NAMES)
    assert table["n_images"].sum() == len(df) - 3
    assert class_balance(df.drop(columns=["label"]), CLASS_NAMES) is None


def test_manifest_columns_lists_names_as_rows() -> None:
    df = pd.DataFrame(columns=["image_id", "PatientName"])
    assert manifest_columns(df)["column"].tolist() == ["image_id", "PatientName"]


def test_class_fractions_are_shares_of_all_images() -> None:
    df = valid_manifest()
    df = df[~((df["split"] == "train") & (df["label"] == 1))]  # 12 lesion images fewer
    table = class_fractions(df, CLASS_NAMES)
    assert table["label_name"].tolist() == CLASS_NAMES
    assert table["n_images"].tolist() == [20, 8]
    assert table["fraction"].tolist() == [20 / 28, 8 / 28]
    assert class_fractions(df.drop(columns=["label"]), CLASS_NAMES) is None


def test_label_pairs_lists_each_distinct_pair_with_an_example_image() -> None:
    df = valid_manifest()
    assert len(label_pairs(df)) == len(CLASS_NAMES)
    df.loc[df["image_id"] == "2.25.0000", "label_name"] = "wrong"
    table = label_pairs(df)
    odd = table[table["label_name"] == "wrong"]
    assert odd[["n_images", "example_image_id"]].values.tolist() == [[1, "2.25.0000"]]
    assert label_pairs(df.drop(columns=["label_name"])) is None
