"""The preprocess stage: de-identified DICOM -> arrays ready for training, one set per split.

Uses medflow.imaging.preprocess, the same path the Bento runs at serving time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medflow.config import PreprocessParams
from medflow.data.arrays import META_FILE, ArraysMeta, open_images, open_masks, write_labels
from medflow.data.manifest import SPLITS, read_manifest
from medflow.imaging.masks import to_model_mask
from medflow.imaging.preprocess import preprocess_dataset, read_dicom
from medflow.io import atomic_dir

log = logging.getLogger(__name__)
SIZE_STEP = 8  # a source-sized model input is a multiple of this


@dataclass(frozen=True)
class PreprocessResult:
    out_dir: Path
    counts: dict[str, int]
    data_hash: str


def dataset_hash(manifest) -> str:  # noqa: ANN001 (a pandas DataFrame)
    """Content hash of the dataset: source file hashes with their labels and splits."""
    rows = sorted(zip(manifest["content_hash"], manifest["label"], manifest["split"], strict=True))
    digest = hashlib.sha256()
    for content, label, split in rows:
        digest.update(f"{content}:{label}:{split}\n".encode())
    return digest.hexdigest()


def _inputs(params: PreprocessParams, ingest_dir: Path, rows: pd.DataFrame) -> Iterator[np.ndarray]:
    for rel, frame in zip(rows["file"], rows["frame"], strict=True):
        yield preprocess_dataset(read_dicom(Path(ingest_dir) / rel), params, frame=int(frame))[0]


def preprocess_rows(params: PreprocessParams, ingest_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """Model inputs (N, C, S, S) for the manifest rows, in their order, by `params`: the test
    split as another model (the champion) preprocesses it."""
    shape = (len(rows), params.channels, params.image_size, params.image_size)
    x = np.empty(shape, dtype=np.float32)
    for i, image in enumerate(_inputs(params, ingest_dir, rows)):
        x[i] = image
    return x


def mask_files(manifest: pd.DataFrame) -> pd.Series | None:
    """The rows' mask files (segmentation), or None when the manifest has none."""
    if "mask_file" not in manifest.columns:
        return None
    files = manifest["mask_file"].fillna("").astype(str)
    return files if (files != "").any() else None


def _segments(ingest_dir: Path, files: pd.Series) -> int:
    first = next(f for f in files if f)
    return int(np.load(Path(ingest_dir) / first, mmap_mode="r").shape[0])


def _masks(ingest_dir: Path, rows: pd.DataFrame, k: int, size: int) -> Iterator[np.ndarray]:
    for rel, image_id in zip(rows["mask_file"], rows["image_id"], strict=True):
        if not rel:
            raise ValueError(f"image {image_id} has no mask file: re-run the ingest stage")
        mask = np.load(Path(ingest_dir) / rel)
        if mask.ndim != 3 or mask.shape[0] != k:
            raise ValueError(
                f"mask of image {image_id} has shape {mask.shape}, expected ({k}, rows, columns)"
            )
        yield to_model_mask(mask, size)


def input_size(params: PreprocessParams, manifest: pd.DataFrame) -> PreprocessParams:
    """`params` with the side the arrays get: `image_size`, or with `follow_source_size` the
    source's own side when smaller (the median longer side of the train split, rounded up to
    a multiple of SIZE_STEP)."""
    if not params.follow_source_size or manifest.empty:
        return params
    train = manifest[manifest["split"] == "train"]
    rows = train if len(train) else manifest
    sides = np.maximum(
        pd.to_numeric(rows["rows"], errors="coerce"),
        pd.to_numeric(rows["columns"], errors="coerce"),
    ).dropna()
    if sides.empty:
        return params
    median = int(sides.median())
    side = max(SIZE_STEP, -(-median // SIZE_STEP) * SIZE_STEP)
    if side >= params.image_size:
        return params
    log.info(
        "model input %d px: the source's images are %d px (median longer side), smaller than "
        "preprocess.image_size %d (follow_source_size)",
        side,
        median,
        params.image_size,
    )
    return params.model_copy(update={"image_size": side})


def run_preprocess(params: PreprocessParams, ingest_dir: Path, out_dir: Path) -> PreprocessResult:
    """Write the arrays of train, val and test and their meta.json (medflow.data.arrays), at
    the side `input_size` gives."""
    manifest = read_manifest(ingest_dir)
    params = input_size(params, manifest)
    shape = (params.channels, params.image_size, params.image_size)
    masks = mask_files(manifest)
    segments = 0 if masks is None else _segments(ingest_dir, masks)
    counts: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split].sort_values("image_id")
            # stream into a memory-mapped file so memory stays flat as the dataset grows
            x = open_images(tmp, split, len(rows), shape)
            for i, image in enumerate(_inputs(params, ingest_dir, rows)):
                x[i] = image
            x.flush()
            del x
            if segments:
                m = open_masks(tmp, split, len(rows), (segments, *shape[1:]))
                for i, mask in enumerate(_masks(ingest_dir, rows, segments, params.image_size)):
                    m[i] = mask
                m.flush()
                del m
            write_labels(tmp, split, rows["label"].to_numpy(), rows["image_id"].to_numpy())
            counts[split] = len(rows)
        data_hash = dataset_hash(manifest)
        meta = ArraysMeta(
            counts=counts, data_hash=data_hash, preprocess=params, shape=shape, segments=segments
        )
        meta.write(tmp / META_FILE)
    log.info(
        "preprocessed %s images into %s (shape %s%s)",
        counts,
        out_dir,
        shape,
        f", masks of {segments} segment(s)" if segments else "",
    )
    return PreprocessResult(out_dir=out_dir, counts=counts, data_hash=data_hash)
