"""The preprocessed arrays, the preprocess stage's hand-off to train and evaluate: per split
`<split>_x.npy` (N, C, S, S float32 in [0, 1]), `<split>_y.npy` (int64 labels) and
`<split>_ids.npy` (pseudonymous image ids), plus meta.json (ArraysMeta). Segmentation adds
`<split>_m.npy` (N, K, S, S uint8 masks, one plane per segment, medflow.imaging.masks)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from medflow.config import PreprocessParams
from medflow.handoffs import Handoff

META_FILE = "meta.json"
_FIX = "run the preprocess stage first"


class ArraysMeta(Handoff):
    """meta.json: what the arrays were made from and how."""

    FIX: ClassVar[str] = _FIX

    counts: dict[str, int]  # images per split
    data_hash: str  # medflow.data.preprocessing.dataset_hash of the manifest
    preprocess: PreprocessParams
    shape: tuple[int, int, int]  # (C, S, S) of one image
    segments: int = 0  # K planes of <split>_m.npy; 0: no masks (classification)


def _path(folder: Path, split: str, kind: str) -> Path:
    return Path(folder) / f"{split}_{kind}.npy"


def open_images(folder: Path, split: str, n: int, shape: tuple[int, ...]) -> np.memmap:
    """A new memory-mapped `<split>_x.npy` of n images to fill in place (memory stays flat)."""
    return np.lib.format.open_memmap(
        _path(folder, split, "x"), mode="w+", dtype=np.float32, shape=(n, *shape)
    )


def open_masks(folder: Path, split: str, n: int, shape: tuple[int, ...]) -> np.memmap:
    """A new memory-mapped `<split>_m.npy` of n (K, S, S) uint8 masks to fill in place."""
    return np.lib.format.open_memmap(
        _path(folder, split, "m"), mode="w+", dtype=np.uint8, shape=(n, *shape)
    )


def write_images(folder: Path, split: str, x: np.ndarray) -> None:
    """`<split>_x.npy` from images held in memory (N, C, S, S)."""
    np.save(_path(folder, split, "x"), np.asarray(x, dtype=np.float32))


def write_labels(folder: Path, split: str, labels: np.ndarray, ids: np.ndarray) -> None:
    """`<split>_y.npy` (int64) and `<split>_ids.npy` (str), in the order of the images."""
    np.save(_path(folder, split, "y"), np.asarray(labels, dtype=np.int64))
    np.save(_path(folder, split, "ids"), np.asarray(ids, dtype=str))


def read_meta(folder: Path) -> ArraysMeta:
    """meta.json of the arrays in `folder`."""
    return ArraysMeta.read(Path(folder) / META_FILE)


def _load(folder: Path, split: str, kind: str, mmap: bool = False) -> np.ndarray:
    path = _path(folder, split, kind)
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {folder}: {_FIX}")
    return np.load(path, mmap_mode="r" if mmap else None)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images memory-mapped, labels) of `split`."""
    return _load(folder, split, "x", mmap=True), _load(folder, split, "y")


def load_labels(folder: Path, split: str) -> np.ndarray:
    return _load(folder, split, "y")


def load_ids(folder: Path, split: str) -> np.ndarray:
    return _load(folder, split, "ids")


def load_masks(folder: Path, split: str) -> np.ndarray:
    """`<split>_m.npy` (N, K, S, S uint8), memory-mapped: the segmentation targets."""
    return _load(folder, split, "m", mmap=True)
