from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from medflow.config import SplitParams
from medflow.data.splits import _majority_labels, assign_splits


def _images(n_patients: int, per_patient: int = 3, positive_every: int = 3) -> pd.DataFrame:
    rows = [
        {"patient_id": f"PSN-{p:04d}", "label": int(p % positive_every == 0)}
        for p in range(n_patients)
        for _ in range(per_patient)
    ]
    return pd.DataFrame(rows)


def test_every_patient_in_exactly_one_split() -> None:
    images = _images(60)
    splits = assign_splits(images, SplitParams())
    assert set(splits) == set(images.patient_id)
    assert set(splits.values()) == {"train", "val", "test"}
    images["split"] = images.patient_id.map(splits)
    assert (images.groupby("patient_id").split.nunique() == 1).all()


def test_sizes_follow_the_fractions() -> None:
    splits = assign_splits(_images(2000, 1), SplitParams(val_fraction=0.15, test_fraction=0.25))
    counts = Counter(splits.values())
    # each patient's split is a fair draw: within 4 standard deviations of the fractions
    assert abs(counts["test"] - 500) <= 4 * (2000 * 0.25 * 0.75) ** 0.5
    assert abs(counts["val"] - 300) <= 4 * (2000 * 0.15 * 0.85) ** 0.5


def test_adding_patients_never_moves_existing_ones() -> None:
    params = SplitParams()
    before = assign_splits(_images(300), params)
    after = assign_splits(_images(400), params)
    assert {pid: after[pid] for pid in before} == before


def test_stratified_every_class_in_every_split() -> None:
    images = _images(20, positive_every=5)  # 4 positive patients only
    splits = assign_splits(images, SplitParams())
    images["split"] = images.patient_id.map(splits)
    for split in ("train", "val", "test"):
        assert set(images[images.split == split].label) == {0, 1}


def test_deterministic_and_independent_of_row_order() -> None:
    images = _images(50)
    params = SplitParams(seed=5)
    shuffled = images.sample(frac=1.0, random_state=1)
    assert assign_splits(images, params) == assign_splits(shuffled, params)
    assert assign_splits(images, params) != assign_splits(images, SplitParams(seed=6))


def test_majority_label_decides_the_stratum() -> None:
    images = pd.DataFrame(
        {"patient_id": ["p1", "p1", "p1", "p2", "p2", "p3"], "label": [1, 1, 0, 0, 1, 0]}
    )
    majority = _majority_labels(images)
    assert majority.to_dict() == {"p1": 1, "p2": 1, "p3": 0}  # a tie goes to the higher label


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="label"):
        assign_splits(pd.DataFrame({"patient_id": ["a"]}), SplitParams())
