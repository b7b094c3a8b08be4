"""Mask files named by labels.csv's `mask` column: PNG, NIfTI or .npy, read as (K, H, W) uint8.

A PNG or NIfTI mask is a label map: pixel value v is class v of data.class_names (0 the
background), so segment planes cannot overlap; in a PNG of a binary task (one segment) 255
also means class 1. NIfTI arrays are taken as nibabel gives them, axis 0 the rows and axis 1
the columns (as `nib.Nifti1Image(mask, affine)` of a (rows, columns) array stores them), 2-D
or with a singleton third axis. A .npy holds an (H, W) label map or (K, H, W) planes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_SUFFIXES = (".png", ".nii", ".nii.gz", ".npy")


class MaskFileError(ValueError):
    """A mask file that cannot be read as a mask; the message names the problem."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in MASK_SUFFIXES if name.endswith(s)), path.suffix.lower())


def _label_map(values: np.ndarray, n_segments: int, *, png: bool) -> np.ndarray:
    if values.ndim != 2:
        raise MaskFileError(f"mask has shape {values.shape}, expected a 2-D label map")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.all(values == np.rint(values)):
            raise MaskFileError("mask holds non-integer values; expected class indices")
        values = values.astype(np.int64)
    if png and n_segments == 1:
        values = np.where(values == 255, 1, values)
    bad = sorted(set(np.unique(values).tolist()) - set(range(n_segments + 1)))
    if bad:
        raise MaskFileError(
            f"mask holds the value(s) {bad[:10]}; expected class indices 0..{n_segments}"
            + (" (or 255 for class 1 of a binary task)" if png else "")
        )
    return np.stack([values == k + 1 for k in range(n_segments)]).astype(np.uint8)


def read_mask_file(path: Path, n_segments: int) -> np.ndarray:
    """The (K, H, W) uint8 mask of a PNG, NIfTI (.nii, .nii.gz) or .npy file.

    Raises:
        MaskFileError: unknown format, unreadable file, wrong shape or values.
    """
    kind = _suffix(path)
    try:
        if kind == ".png":
            from PIL import Image

            with Image.open(path) as image:
                if image.mode not in ("1", "L", "P", "I", "I;16"):
                    raise MaskFileError(
                        f"PNG mask in mode {image.mode}: expected a grey or palette label map"
                    )
                values = np.asarray(image)
            return _label_map(values.astype(np.int64), n_segments, png=True)
        if kind in (".nii", ".nii.gz"):
            import nibabel

            values = np.asanyarray(nibabel.load(path).dataobj)
            if values.ndim == 3 and values.shape[2] == 1:
                values = values[:, :, 0]
            return _label_map(np.asarray(values), n_segments, png=False)
        if kind == ".npy":
            values = np.load(path, allow_pickle=False)
            if values.ndim == 3:
                if values.shape[0] != n_segments:
                    raise MaskFileError(
                        f"mask has {values.shape[0]} planes, expected {n_segments} (one per"
                        " segment of data.class_names[1:])"
                    )
                return (values > 0).astype(np.uint8)
            return _label_map(values, n_segments, png=False)
    except MaskFileError:
        raise
    except Exception as exc:
        raise MaskFileError(f"mask file unreadable: {type(exc).__name__}: {exc}") from exc
    raise MaskFileError(
        f"mask file of unknown format {kind or 'without suffix'!r}; expected one of"
        f" {list(MASK_SUFFIXES)}"
    )
