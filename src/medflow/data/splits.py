"""Patient-level train/val/test splits: no patient's images on both sides of an evaluation."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pandas as pd

from medflow.config import SplitParams

HELD_OUT = ("val", "test")


def _majority_labels(patients: pd.DataFrame) -> pd.Series:
    """One label per patient: the most frequent; a tie goes to the higher label index."""
    counts = patients.groupby(["patient_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, False])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"].sort_index()


def _position(patient_id: str, seed: int) -> float:
    """A patient's fixed place in [0, 1): a hash of the seed and the pseudonym."""
    digest = hashlib.sha256(f"{seed}/{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    patients: pd.DataFrame, params: SplitParams, previous: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map every patient_id to 'train', 'val' or 'test'.

    `patients` has one row per image (or per patient) with columns patient_id and label.
    A patient's split depends only on a hash of params.seed and its pseudonym, so adding
    patients later does not move anyone. Small classes are the exception: a class with 3 or
    more patients and none in val or test gets the training patient nearest to that split
    lent to it, so every class reaches every split. Pass the last version's assignment
    (made with the same params) as `previous`: a patient who was in val or test then stays
    out of training now, even when the patient was only lent and the class has grown. The
    result is independent of row order.
    """
    missing = {"patient_id", "label"} - set(patients.columns)
    if missing:
        raise ValueError(f"patients needs columns patient_id and label; missing {sorted(missing)}")
    if patients.empty:
        return {}
    previous = previous or {}
    majority = _majority_labels(patients[["patient_id", "label"]].astype({"patient_id": str}))
    cut_test = params.test_fraction
    cut_val = params.test_fraction + params.val_fraction
    assignment: dict[str, str] = {}
    for label in sorted(majority.unique()):
        ids = sorted(majority.index[majority == label])
        position = {pid: _position(pid, params.seed) for pid in ids}
        for pid, u in position.items():
            assignment[pid] = "test" if u < cut_test else "val" if u < cut_val else "train"
            if previous.get(pid) in HELD_OUT:
                assignment[pid] = previous[pid]  # held out once, held out for good
        if len(ids) < 3:
            continue
        for split, target in (("test", cut_test / 2), ("val", (cut_test + cut_val) / 2)):
            members = [pid for pid in ids if assignment[pid] == split]
            train = [pid for pid in ids if assignment[pid] == "train"]
            if not members and len(train) > 1:
                nearest = min(train, key=lambda pid: (abs(position[pid] - target), pid))
                assignment[nearest] = split
    return assignment
