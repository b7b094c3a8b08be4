"""Masks on the image's one preprocessing path (medflow.imaging.preprocess), both ways.

A mask is (K, H, W) uint8, one binary plane per segment (data.class_names[1:], in order), so
segments may overlap. `to_model_mask` gives it the geometry `to_model_input` gives the image
(padded square, resized, nearest neighbour so labels stay labels); `to_source_mask` takes a
model-space mask back to the image's own rows and columns (the served SEG's geometry). Light
(numpy, torch): the Bento imports it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["model_pixel_spacing", "to_model_mask", "to_source_mask"]


def _square_offsets(h: int, w: int) -> tuple[int, int, int]:
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def to_model_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W) or (H, W) mask -> (K, size, size) uint8, placed as the image is: padded to a
    square about its centre, then resized by nearest neighbour."""
    planes = np.asarray(mask)
    if planes.ndim == 2:
        planes = planes[None]
    if planes.ndim != 3:
        raise ValueError(f"a mask is (K, H, W) or (H, W), got shape {planes.shape}")
    k, h, w = planes.shape
    side, top, left = _square_offsets(h, w)
    square = np.zeros((k, side, side), dtype=np.uint8)
    square[:, top : top + h, left : left + w] = planes > 0
    if side == size:
        return square
    t = torch.from_numpy(square)[None].float()
    out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    return np.ascontiguousarray(out[0].numpy() > 0.5, dtype=np.uint8)


def to_source_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, S, S) model-space mask (binary, or probabilities thresholded by the caller) -> (K,
    rows, columns) uint8 of the image it was made from: resized back to the padded square
    (nearest neighbour) and cropped to the image."""
    planes = np.asarray(mask)
    if planes.ndim != 3 or planes.shape[1] != planes.shape[2]:
        raise ValueError(f"a model-space mask is (K, S, S), got shape {planes.shape}")
    h, w = int(shape[0]), int(shape[1])
    side, top, left = _square_offsets(h, w)
    t = torch.from_numpy(np.ascontiguousarray(planes > 0, dtype=np.uint8))[None].float()
    if planes.shape[1] != side:
        t = F.interpolate(t, size=(side, side), mode="nearest-exact")
    square = t[0].numpy() > 0.5
    return np.ascontiguousarray(square[:, top : top + h, left : left + w], dtype=np.uint8)


def model_pixel_spacing(spacing_mm: float, shape: tuple[int, int], size: int) -> float:
    """The side of one model-space pixel in mm, for an image of `shape` whose pixels are
    `spacing_mm` (NaN stays NaN: distances are then in model pixels' own units)."""
    return float(spacing_mm) * max(int(shape[0]), int(shape[1])) / int(size)
