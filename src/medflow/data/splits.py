"""Patient-level train/val/test splits: no patient's images on both sides of an evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medflow.config import SplitParams
from medflow.data.manifest import SPLITS


def _majority_labels(patients: pd.DataFrame) -> pd.Series:
    """One label per patient: the most frequent; a tie goes to the higher label index."""
    counts = patients.groupby(["patient_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, False])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"].sort_index()


def _split_sizes(n: int, params: SplitParams) -> tuple[int, int]:
    """(n_val, n_test) for a group of n patients; each split gets one when n allows it."""
    n_test = int(round(n * params.test_fraction))
    n_val = int(round(n * params.val_fraction))
    if n >= 3:
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    while n_test + n_val >= n and n_test + n_val > 0:  # keep at least one for training
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(patients: pd.DataFrame, params: SplitParams) -> dict[str, str]:
    """Map every patient_id to 'train', 'val' or 'test'.

    `patients` has one row per image (or per patient) with columns patient_id and label.
    Stratified by each patient's majority label, so every class reaches every split when it
    has at least three patients; deterministic for a given params.seed and set of patients.
    """
    missing = {"patient_id", "label"} - set(patients.columns)
    if missing:
        raise ValueError(f"patients needs columns patient_id and label; missing {sorted(missing)}")
    if patients.empty:
        return {}
    majority = _majority_labels(patients[["patient_id", "label"]].astype({"patient_id": str}))
    rng = np.random.default_rng(params.seed)
    assignment: dict[str, str] = {}
    for label in sorted(majority.unique()):
        # Sorted before shuffling: the result does not depend on the input row order.
        ids = sorted(majority.index[majority == label])
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_val, n_test = _split_sizes(len(ids), params)
        for i, pid in enumerate(ids):
            assignment[pid] = (
                SPLITS[2] if i < n_test else SPLITS[1] if i < n_test + n_val else SPLITS[0]
            )
    return assignment
