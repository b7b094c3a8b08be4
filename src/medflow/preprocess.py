"""The one preprocessing path, imported by preprocess (training), evaluation and serving.

DICOM dataset -> one frame (decoded alone) -> modality LUT -> VOI: a window for the
modality from params, else the file's VOI LUT or window, else robust percentiles ->
MONOCHROME1 inverted -> padded square -> resized -> float32 (channels, size, size) in [0, 1].
Colour (RGB, YBR, PALETTE COLOR) stays RGB for 3 channels and becomes luminance for 1.

Keep this module light (numpy, pydicom, torch): the Bento imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi

from medflow.config import PreprocessParams
from medflow.dicom import DicomError, NotAnImage, read_dicom
from medflow.pixels import decode_frame, frame_indices, luminance, n_frames, photometric

__all__ = [
    "DicomError",
    "NotAnImage",
    "PreprocessSummary",
    "decode_frame",
    "frame_indices",
    "luminance",
    "normalise",
    "preprocess_dataset",
    "preprocess_file",
    "read_dicom",
    "to_model_input",
]


@dataclass(frozen=True)
class PreprocessSummary:
    """What preprocessing did to one image (safe to return to clients: no identifiers)."""

    frames_in_file: int
    frame_used: int
    photometric: str
    window: str
    original_shape: tuple[int, int]
    output_size: int


def _first(value: object) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def _file_window(ds: Dataset) -> tuple[float, float, str] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    try:
        c, w = _first(centre), _first(width)
    except (TypeError, ValueError):
        return None
    if w <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return c, w, function


def _voi(grey: np.ndarray, ds: Dataset, params: PreprocessParams) -> tuple[np.ndarray, str]:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    preset = params.windows.get(modality)
    if preset is not None:
        c, w, function, how = preset.center, preset.width, "LINEAR", f"{modality} window (params)"
    elif "VOILUTSequence" in ds:
        try:
            out = apply_voi(grey, ds, index=0)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            return np.clip(out / float(2**bits - 1), 0.0, 1.0), "file VOI LUT"
        except Exception:  # a malformed LUT falls back to the window or percentiles
            pass
        window = _file_window(ds)
        if window is None:
            return _percentiles(grey, params)
        c, w, function = window
        how = f"file window C={c:g} W={w:g}"
    elif (window := _file_window(ds)) is not None:
        c, w, function = window
        how = f"file window C={c:g} W={w:g}"
    else:
        return _percentiles(grey, params)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (grey - c) / w)), how + " sigmoid"
    return np.clip((grey - (c - w / 2.0)) / w, 0.0, 1.0), how


def _percentiles(grey: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, str]:
    lo, hi = np.percentile(grey, [params.percentile_low, params.percentile_high])
    scale = hi - lo
    out = np.zeros_like(grey) if scale <= 0 else np.clip((grey - lo) / scale, 0.0, 1.0)
    return out, f"percentiles {params.percentile_low:g}-{params.percentile_high:g}"


def normalise(pixels: np.ndarray, ds: Dataset, params: PreprocessParams) -> tuple[np.ndarray, str]:
    """Scale a decoded frame to [0, 1]; returns the image and how it was windowed.

    Grey: window per modality from params, else the file's VOI, else percentiles;
    MONOCHROME1 inverted. RGB: divided by the largest value BitsStored allows.
    """
    if pixels.ndim == 3:
        bits = int(ds.get("BitsStored", 8) or 8)
        top = float(2**bits - 1)
        return np.clip(pixels / top, 0.0, 1.0).astype(np.float32), f"colour / {top:g}"
    out, how = _voi(pixels, ds, params)
    if photometric(ds) == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32), how


def to_model_input(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0, 1] -> (channels, size, size) float32: pad square, resize."""
    if image.ndim == 3 and params.channels == 1:
        image = luminance(image)
    planes = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    c, h, w = planes.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((c, side, side), dtype=np.float32)
    square[:, top : top + h, left : left + w] = planes
    t = torch.from_numpy(square)[None]
    if side != params.image_size:
        t = F.interpolate(
            t,
            size=(params.image_size, params.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=side > params.image_size,
        )
    out = t[0].clamp_(0.0, 1.0).numpy()
    if params.channels == 3 and out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocess_dataset(
    ds: Dataset, params: PreprocessParams, frame: int | None = None
) -> tuple[np.ndarray, PreprocessSummary]:
    """The full path for one DICOM dataset: model input and a summary of what was done.

    `frame` picks the frame (as the manifest records it); by default preprocess.frames
    decides, and `all` (one sample per frame in training) means the middle frame here.
    """
    if frame is None:
        frame = frame_indices(ds, "middle" if params.frames == "all" else params.frames)[0]
    pixels = decode_frame(ds, frame, params.max_frame_pixels)
    image, how = normalise(pixels, ds, params)
    summary = PreprocessSummary(
        frames_in_file=n_frames(ds),
        frame_used=frame,
        photometric=photometric(ds),
        window=how,
        original_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        output_size=params.image_size,
    )
    return to_model_input(image, params), summary


def preprocess_file(source: Path | str | bytes | BinaryIO, params: PreprocessParams) -> np.ndarray:
    """Read and preprocess one DICOM file; raises DicomError naming the problem."""
    return preprocess_dataset(read_dicom(source), params)[0]
