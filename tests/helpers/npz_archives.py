"""Small MedMNIST-style .npz archives with deterministic content."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES = {"train": 6, "val": 3, "test": 4}


def make_npz(path: Path, *, rgb: bool = False, **override: np.ndarray) -> Path:
    """A small MedMNIST-style archive with deterministic content."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in SIZES.items():
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path
