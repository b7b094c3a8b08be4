"""Tiny preprocessed arrays (as the preprocess stage writes them) for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medflow.config import PreprocessParams
from medflow.data.preprocessing import META_FILE


def write_arrays(folder: Path, n: int = 48, channels: int = 1, classes: int = 2) -> Path:
    """Separable toy data: class k has a bright square in the k-th position."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        y = np.arange(count) % classes
        x = rng.normal(0.3, 0.05, (count, channels, 16, 16)).astype(np.float32)
        for i, k in enumerate(y):
            x[i, :, 2 + 4 * k : 6 + 4 * k, 4:10] += 0.5
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", y.astype(np.int64))
    meta = {
        "counts": {"train": n},
        "data_hash": "toy",
        "preprocess": PreprocessParams(image_size=16, channels=channels).model_dump(),
        "shape": [channels, 16, 16],
    }
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder
