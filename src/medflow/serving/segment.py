"""The /segment answer as JSON: per segment its mask in the upload's geometry, area, box.

The U-Net's probabilities (K, S, S) >= the served threshold are the model-space masks;
medflow.imaging.masks.to_source_mask takes them back to the upload's rows and columns, the
geometry of every number and picture here. Nothing here reads an identifying header value:
only PixelSpacing, the decoded frame and the preprocessing summary.
"""

from __future__ import annotations

import base64

import numpy as np
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset

from medflow.config import PreprocessParams
from medflow.imaging.masks import to_source_mask
from medflow.imaging.preprocess import PreprocessSummary, decode_frame, luminance, normalise
from medflow.serving.gradcam import png_bytes

# segment k's colour in the overlay (k modulo the list): red, green, blue, yellow, magenta, cyan
COLOURS = np.array(
    [[255, 0, 0], [0, 200, 0], [40, 90, 255], [255, 220, 0], [230, 0, 230], [0, 220, 220]],
    dtype=np.float32,
)
OVERLAY_ALPHA = 0.45


class BoundingBox(BaseModel):
    """The smallest box holding a segment, in source pixels, both ends included."""

    row_min: int
    row_max: int
    col_min: int
    col_max: int


class Segment(BaseModel):
    """One segment (class_names[number]) of one image."""

    number: int  # 1-based: the DICOM SEG's SegmentNumber, class_names[number]
    name: str
    area_px: int
    # area_px times the PixelSpacing product; None when the upload has no PixelSpacing
    area_mm2: float | None
    bounding_box: BoundingBox | None  # None for an empty segment
    mask_png: str = Field(description="base64 PNG, the upload's rows x columns, 0 or 255")


class SegmentationResult(BaseModel):
    """The /segment answer for one image."""

    model_tag: str  # name:version in the BentoML model store
    model_name: str
    model_version: str
    threshold: float  # a pixel is in a segment where its probability reaches this
    input_format: str  # dicom | png | jpeg
    shape: tuple[int, int]  # rows, columns of the masks (the frame segmented)
    pixel_spacing_mm: tuple[float, float] | None  # row, column spacing; None when absent
    preprocessing: PreprocessSummary
    segments: list[Segment]
    # the frame in grey with the segments coloured over it, base64 PNG; only on request
    overlay_png: str | None = Field(None, description="base64 PNG, with overlay=true")


def source_masks(probabilities: np.ndarray, threshold: float, shape: tuple[int, int]) -> np.ndarray:
    """(K, S, S) probabilities -> (K, rows, columns) uint8 0/1 masks in the upload's geometry."""
    probs = np.asarray(probabilities)
    if probs.ndim != 3:
        raise ValueError(f"segment probabilities are (K, S, S), got shape {probs.shape}")
    return to_source_mask((probs >= threshold).astype(np.uint8), shape)


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing; None when absent or not two positive
    numbers."""
    value = ds.get("PixelSpacing")
    try:
        spacing = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    if len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return spacing[0], spacing[1]


def bounding_box(plane: np.ndarray) -> BoundingBox | None:
    """The box of a (rows, columns) mask's set pixels; None when none is set."""
    rows, cols = np.any(plane, axis=1), np.any(plane, axis=0)
    if not rows.any():
        return None
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return BoundingBox(row_min=int(r[0]), row_max=int(r[-1]), col_min=int(c[0]), col_max=int(c[-1]))


def mask_png(plane: np.ndarray) -> str:
    """A (rows, columns) 0/1 mask as a base64 grey PNG of 0 and 255."""
    return base64.b64encode(png_bytes(np.where(plane > 0, 255, 0).astype(np.uint8))).decode()


def segments(
    masks: np.ndarray, names: list[str], spacing: tuple[float, float] | None
) -> list[Segment]:
    """One Segment per plane of `masks` (K, rows, columns); names are class_names[1:]."""
    if len(masks) != len(names):
        raise ValueError(f"{len(masks)} mask planes for {len(names)} segment names {names}")
    out = []
    for k, (plane, name) in enumerate(zip(masks, names, strict=True), 1):
        area = int(np.count_nonzero(plane))
        out.append(
            Segment(
                number=k,
                name=name,
                area_px=area,
                area_mm2=None if spacing is None else area * spacing[0] * spacing[1],
                bounding_box=bounding_box(plane),
                mask_png=mask_png(plane),
            )
        )
    return out


def source_image(ds: Dataset, frame: int, params: PreprocessParams) -> np.ndarray:
    """The segmented frame in [0, 1], (rows, columns), grey: decoded and windowed as
    medflow.imaging.preprocess does, before its padding and resizing."""
    image, _ = normalise(decode_frame(ds, frame, params.max_frame_pixels), ds, params)
    return luminance(image) if image.ndim == 3 else image


def overlay(grey: np.ndarray, masks: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(rows, columns) in [0, 1] with each segment of `masks` blended on in its colour:
    (rows, columns, 3) uint8."""
    rgb = np.repeat(np.clip(grey, 0, 1)[..., None] * 255, 3, axis=-1).astype(np.float32)
    for k, plane in enumerate(masks):
        on = plane > 0
        rgb[on] = (1 - alpha) * rgb[on] + alpha * COLOURS[k % len(COLOURS)]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def overlay_png(grey: np.ndarray, masks: np.ndarray) -> str:
    """overlay() as a base64 RGB PNG."""
    return base64.b64encode(png_bytes(overlay(grey, masks))).decode()
