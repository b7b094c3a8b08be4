"""Tiny preprocessed arrays (as the preprocess stage writes them) for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medflow.config import PreprocessParams
from medflow.data.arrays import META_FILE, ArraysMeta, write_images, write_labels


def write_arrays(
    folder: Path, n: int = 48, channels: int = 1, classes: int = 2, size: int = 16
) -> Path:
    """Separable toy data of `size` px: class k has a bright square in the k-th position."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        y = np.arange(count) % classes
        x = rng.normal(0.3, 0.05, (count, channels, size, size)).astype(np.float32)
        for i, k in enumerate(y):
            x[i, :, 2 + 4 * k : 6 + 4 * k, 4:10] += 0.5
        write_images(folder, split, x)
        write_labels(folder, split, y, np.array([f"{split}-{i}" for i in range(count)]))
    ArraysMeta(
        counts={"train": n, "val": n // 2, "test": n // 2},
        data_hash="toy",
        preprocess=PreprocessParams(image_size=size, channels=channels),
        shape=(channels, size, size),
    ).write(folder / META_FILE)
    return folder
