"""Derived tables for rules that span rows or describe the manifest itself.

Great Expectations checks one row at a time on pandas, so cross-row rules (a patient in two
splits, a class missing from a split) are checked on small tables derived here, where one row
is one thing that can be wrong. Plain pandas: no Great Expectations import.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from medflow.data.manifest import SPLITS

# table name -> columns that identify a row in failure reports (pseudonymous ids only)
ROW_KEYS: dict[str, list[str]] = {
    "manifest": ["image_id"],
    "manifest_columns": ["column"],
    "patient_splits": ["patient_id", "splits"],
    "class_balance": ["split", "label_name"],
    "class_fractions": ["label_name", "n_images"],
    "label_pairs": ["label", "label_name", "n_images", "example_image_id"],
    "drift": ["quantity", "reference", "current", "detail"],
    "masks": ["image_id", "mask_file"],
    "empty_masks": ["split", "n_images", "n_empty"],
}

# table name -> what one row is, for the failure summary
ROW_NOUNS: dict[str, str] = {
    "manifest": "images",
    "manifest_columns": "columns",
    "patient_splits": "patients",
    "class_balance": "split/class pairs",
    "class_fractions": "classes",
    "label_pairs": "label/name pairs",
    "drift": "compared quantities",
    "masks": "masks",
    "empty_masks": "splits",
}

# derived table -> manifest columns it is built from
NEEDS: dict[str, tuple[str, ...]] = {
    "patient_splits": ("patient_id", "split"),
    "class_balance": ("split", "label"),
    "class_fractions": ("label",),
    "label_pairs": ("image_id", "label", "label_name"),
    "masks": ("image_id", "mask_file", "rows", "columns", "label", "mask_fraction"),
    "empty_masks": ("split", "mask_fraction"),
}


def manifest_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per manifest column name, so a forbidden column is an unexpected value."""
    return pd.DataFrame({"column": pd.array([str(c) for c in manifest.columns], dtype="string")})


def patient_splits(manifest: pd.DataFrame) -> pd.DataFrame | None:
    """One row per patient: patient_id, n_splits, splits (e.g. "test+train").

    None when the manifest lacks patient_id or split (the schema suite reports that).
    Rows with a null patient_id or split are left out here; the completeness suite counts them.
    """
    if not set(NEEDS["patient_splits"]) <= set(manifest.columns):
        return None
    rows = manifest[["patient_id", "split"]].dropna()
    per_patient = rows.groupby("patient_id", sort=True)["split"]
    table = pd.DataFrame(
        {
            "n_splits": per_patient.nunique(),
            "splits": per_patient.agg(lambda s: "+".join(sorted(set(map(str, s))))),
        }
    ).reset_index()
    table["patient_id"] = table["patient_id"].astype("string")
    table["splits"] = table["splits"].astype("string")
    return table[["patient_id", "n_splits", "splits"]]


def class_balance(manifest: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame | None:
    """One row per (split, class) over SPLITS x class_names: n_images, zero counts included.

    None when the manifest lacks split or label. Labels and splits outside the declared ones
    are not counted here; the values suite reports them.
    """
    if not set(NEEDS["class_balance"]) <= set(manifest.columns):
        return None
    grid = pd.MultiIndex.from_product(
        [list(SPLITS), range(len(class_names))], names=["split", "label"]
    )
    labels = pd.to_numeric(manifest["label"], errors="coerce")
    labels = labels.where(labels % 1 == 0)  # 1.5 is no class; the values suite reports it
    counts = (
        pd.DataFrame({"split": manifest["split"].astype("string"), "label": labels})
        .dropna()
        .astype({"label": "int64"})
        .value_counts()
        .reindex(grid, fill_value=0)
    )
    table = counts.rename("n_images").reset_index()
    table["split"] = table["split"].astype("string")
    table["label_name"] = pd.array([class_names[i] for i in table["label"]], dtype="string")
    return table[["split", "label", "label_name", "n_images"]]


def class_fractions(manifest: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame | None:
    """One row per class: label_name, n_images, fraction (its share of all images).

    None when the manifest lacks label. Images with an undeclared label count in the total
    (they dilute every class) but have no row; the values suite reports them.
    """
    if not set(NEEDS["class_fractions"]) <= set(manifest.columns):
        return None
    labels = pd.to_numeric(manifest["label"], errors="coerce")
    counts = [int((labels == i).sum()) for i in range(len(class_names))]
    total = len(manifest)
    return pd.DataFrame(
        {
            "label_name": pd.array(list(class_names), dtype="string"),
            "n_images": counts,
            "fraction": [c / total if total else 0.0 for c in counts],
        }
    )


def label_pairs(manifest: pd.DataFrame) -> pd.DataFrame | None:
    """One row per distinct (label, label_name): n_images and the first image_id with it.

    A per-row pair check costs Great Expectations a Python loop over every image; on the
    distinct pairs it is instant, and the example names an offending image.
    """
    if not set(NEEDS["label_pairs"]) <= set(manifest.columns):
        return None
    rows = manifest[["image_id", "label", "label_name"]]
    grouped = rows.groupby(["label", "label_name"], sort=True, dropna=False)["image_id"]
    table = pd.DataFrame({"n_images": grouped.size(), "example_image_id": grouped.min()})
    table = table.reset_index()
    table["label_name"] = table["label_name"].astype("string")
    table["example_image_id"] = table["example_image_id"].astype("string")
    return table[["label", "label_name", "n_images", "example_image_id"]]


def empty_masks(manifest: pd.DataFrame) -> pd.DataFrame | None:
    """Segmentation: one row per split with images: n_images, n_empty (mask_fraction 0) and
    empty_fraction.

    None when the manifest lacks split or mask_fraction. Rows with a null mask_fraction or an
    undeclared split are not counted; the completeness and values suites report them.
    """
    if not set(NEEDS["empty_masks"]) <= set(manifest.columns):
        return None
    fractions = pd.to_numeric(manifest["mask_fraction"], errors="coerce")
    rows = pd.DataFrame({"split": manifest["split"].astype("string"), "empty": fractions == 0})
    rows = rows[fractions.notna() & rows["split"].isin(SPLITS)]
    per_split = rows.groupby("split", sort=False)["empty"]
    table = pd.DataFrame({"n_images": per_split.size(), "n_empty": per_split.sum()})
    table = table.reindex([s for s in SPLITS if s in table.index]).reset_index()
    table["split"] = table["split"].astype("string")
    table["n_empty"] = table["n_empty"].astype("int64")
    table["empty_fraction"] = table["n_empty"] / table["n_images"]
    return table[["split", "n_images", "n_empty", "empty_fraction"]]
