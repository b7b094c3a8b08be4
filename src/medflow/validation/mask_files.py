"""Segmentation: what each manifest row's mask file holds, as a table the masks suite checks.

One row per manifest row: the planes, rows and columns of its `masks/<key>.npy`, the distinct
values in it, the highest class it holds and the share of pixels in any segment, or why it
could not be read. Masks are memory-mapped and read, never written. No Great Expectations
import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medflow.validation.tables import NEEDS

log = logging.getLogger(__name__)

MASK_DTYPES = ("uint8", "bool")
# recorded mask_fraction vs the file's: CSV rounding passes, another mask does not
FRACTION_TOLERANCE = 1e-4
_MAX_VALUES_SHOWN = 8


@dataclass(frozen=True)
class MaskFacts:
    """What one mask file holds; `error` says why the rest is unknown (or only the shape is)."""

    error: str | None = None
    planes: int | None = None
    rows: int | None = None
    columns: int | None = None
    values: str | None = None
    label: int | None = None
    fraction: float = np.nan


def mask_table(manifest: pd.DataFrame, ingest_dir: Path) -> pd.DataFrame | None:
    """One row per manifest row: image_id, mask_file, the row's rows, columns, label and
    mask_fraction, and what the file holds: mask_error (None when readable), mask_planes,
    mask_rows, mask_columns, mask_values ("0,1"), mask_label (the highest class present:
    plane k is class k + 1, 0 when empty), measured_fraction and fraction_difference
    (|recorded - measured|).

    None when the manifest lacks a column this needs (the schema suite reports that).
    """
    if not set(NEEDS["masks"]) <= set(manifest.columns):
        return None
    ingest_dir = Path(ingest_dir)
    facts = [read_mask(ingest_dir, f) for f in manifest["mask_file"]]
    recorded = pd.to_numeric(manifest["mask_fraction"], errors="coerce").to_numpy()
    measured = np.array([f.fraction for f in facts], dtype="float64")
    table = pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype("string").to_numpy(),
            "mask_file": manifest["mask_file"].astype("string").to_numpy(),
            "rows": pd.to_numeric(manifest["rows"], errors="coerce").to_numpy(),
            "columns": pd.to_numeric(manifest["columns"], errors="coerce").to_numpy(),
            "label": pd.to_numeric(manifest["label"], errors="coerce").to_numpy(),
            "mask_fraction": recorded,
            "mask_error": pd.array([f.error for f in facts], dtype="string"),
            "mask_planes": pd.array([f.planes for f in facts], dtype="Int64"),
            "mask_rows": pd.array([f.rows for f in facts], dtype="Int64"),
            "mask_columns": pd.array([f.columns for f in facts], dtype="Int64"),
            "mask_values": pd.array([f.values for f in facts], dtype="string"),
            "mask_label": pd.array([f.label for f in facts], dtype="Int64"),
            "measured_fraction": measured,
            "fraction_difference": np.abs(recorded - measured),
        }
    )
    log.info(
        "read %d mask files: %d unreadable", len(table), int(table["mask_error"].notna().sum())
    )
    return table


def read_mask(ingest_dir: Path, mask_file: Any) -> MaskFacts:
    """The facts of ingest_dir/mask_file, a (K, H, W) uint8 array of 0 and 1 (bool is taken)."""
    if mask_file is None or pd.isna(mask_file) or not str(mask_file).strip():
        return MaskFacts(error="no mask_file")
    relative = Path(str(mask_file))
    if relative.is_absolute() or ".." in relative.parts:
        return MaskFacts(error="mask_file must be a relative path inside the ingest folder")
    path = ingest_dir / relative
    if not path.is_file():
        return MaskFacts(error="file missing")
    try:
        mask = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return MaskFacts(error=f"not a .npy array ({type(exc).__name__}: {str(exc)[:80]})")
    if not isinstance(mask, np.ndarray) or mask.ndim != 3:
        shape = getattr(mask, "shape", None)
        return MaskFacts(error=f"shape {shape}: expected 3 axes (K, H, W)")
    planes, rows, columns = (int(n) for n in mask.shape)
    if mask.dtype.name not in MASK_DTYPES:
        return MaskFacts(
            error=f"dtype {mask.dtype.name}: expected uint8 (0 and 1)",
            planes=planes,
            rows=rows,
            columns=columns,
        )
    pixels = np.asarray(mask).view(np.uint8)
    counts = np.bincount(pixels.reshape(-1), minlength=2)
    present = np.flatnonzero(counts)
    shown = ",".join(str(v) for v in present[:_MAX_VALUES_SHOWN])
    if len(present) > _MAX_VALUES_SHOWN:
        shown += f",... ({len(present)} values)"
    in_plane = np.flatnonzero(pixels.reshape(mask.shape[0], -1).any(axis=1))
    union = pixels.any(axis=0)
    return MaskFacts(
        planes=planes,
        rows=rows,
        columns=columns,
        values=shown,
        label=int(in_plane[-1]) + 1 if len(in_plane) else 0,
        fraction=float(union.mean()) if union.size else np.nan,
    )
