"""The one preprocessing path, imported by preprocess (training), evaluation and serving.

DICOM dataset -> one frame -> modality LUT -> VOI (params window, else the file's, else robust
percentiles) -> MONOCHROME1 inverted -> padded square -> resized -> float32 (channels, size,
size) in [0, 1]; colour stays RGB for 3 channels. Light (numpy, pydicom, torch): the Bento
imports it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from medflow.config import PreprocessParams
from medflow.imaging.dicom import DicomError, NotAnImage, read_dicom
from medflow.imaging.pixels import (
    decode_frame,
    frame_indices,
    luminance,
    n_frames,
    palette_bits,
    photometric,
    transfer_syntax,
)

__all__ = [
    "DicomError",
    "NotAnImage",
    "PreprocessSummary",
    "decode_frame",
    "frame_indices",
    "intensity",
    "luminance",
    "normalise",
    "preprocess_dataset",
    "preprocess_file",
    "read_dicom",
    "to_model_input",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessSummary:
    """What preprocessing did to one image (safe to return to clients: no identifiers)."""

    frames_in_file: int
    frame_used: int
    photometric: str
    window: str
    original_shape: tuple[int, int]
    output_size: int
    # Intensity of the decoded frame after the modality LUT (luminance for colour): the
    # ingest manifest's pixel_mean and pixel_std, so production and training compare.
    pixel_mean: float
    pixel_std: float


def intensity(pixels: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a decoded frame (luminance for colour): the ingest
    manifest's pixel_mean and pixel_std (numpy's mean and std), to about 1e-12 relative.

    One pass (a sum and a dot product, no temporary array) unless the variance is tiny next
    to the squared mean, where that formula loses digits; then numpy's two passes.
    """
    flat = np.ravel(luminance(pixels))
    n = flat.size
    mean = float(np.add.reduce(flat)) / n
    variance = float(np.dot(flat, flat)) / n - mean * mean
    if variance <= 1e-4 * mean * mean:
        return float(flat.mean()), float(flat.std())
    return mean, math.sqrt(variance)


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
            out, bits = _voi_lut(grey, ds)
            return np.clip(out / float(2**bits - 1), 0.0, 1.0), "file VOI LUT"
        except Exception as exc:  # a malformed LUT falls back to the window or percentiles
            logger.warning("file VOI LUT not used (%s: %s)", type(exc).__name__, exc)
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


def _voi_lut(grey: np.ndarray, ds: Dataset, index: int = 0) -> tuple[np.ndarray, int]:
    """The first VOI LUT of ds applied to grey (modality LUT output); values and their bits.

    Our own lookup, not pydicom's apply_voi: that one indexes the LUT through an array of
    the LUT's entry type, so with 8-bit entries input values above 255 wrap around. Raises
    ValueError on a LUT that cannot be used.
    """
    item = ds.VOILUTSequence[index]
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ValueError(f"LUTDescriptor {descriptor} has {len(descriptor)} values, expected 3")
    entries, first, bits = descriptor
    entries = entries % 2**16 or 2**16  # read as SS it may be negative; 0 means 65536
    if bits != 8 and not 10 <= bits <= 16:
        raise ValueError(f"{bits} bits per VOI LUT entry; expected 8 or 10-16")
    # first mapped is US or SS: signed when the modality LUT output can be negative
    if first >= 2**15 and _signed_voi_input(ds):
        first -= 2**16
    lut = _lut_data(item.LUTData, entries, bits, little=transfer_syntax(ds).is_little_endian)
    position = np.clip(np.floor(grey) - first, 0, entries - 1)
    if not np.isfinite(position).all():
        raise ValueError("pixel values that are not finite cannot index a VOI LUT")
    return lut[position.astype(np.intp)].astype(np.float64), bits


def _lut_data(data: object, entries: int, bits: int, *, little: bool) -> np.ndarray:
    """LUT Data as int64 entries: OW bytes in the file's byte order, or US values."""
    if isinstance(data, bytes | bytearray):
        if len(data) >= 2 * entries:
            words = np.frombuffer(data, "<u2" if little else ">u2", count=entries)
            return words.astype(np.int64)
        if bits == 8 and len(data) == entries:  # 8-bit entries packed one per byte
            return np.frombuffer(data, np.uint8).astype(np.int64)
        raise ValueError(f"LUT Data of {len(data)} bytes is too short for {entries} entries")
    values = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if values.ndim != 1 or len(values) < entries:
        raise ValueError(f"LUT Data has {values.size} values, the descriptor says {entries}")
    return values[:entries]


def _signed_voi_input(ds: Dataset) -> bool:
    """Whether the VOI LUT input (modality LUT output) can be negative: SS first mapped value."""
    if "ModalityLUTSequence" in ds:
        return False  # a modality LUT gives unsigned values
    bits = int(ds.get("BitsStored", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return min(lo * slope, hi * slope) + intercept < 0


def _percentiles(grey: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, str]:
    lo, hi = np.percentile(grey, [params.percentile_low, params.percentile_high])
    scale = hi - lo
    out = np.zeros_like(grey) if scale <= 0 else np.clip((grey - lo) / scale, 0.0, 1.0)
    return out, f"percentiles {params.percentile_low:g}-{params.percentile_high:g}"


def normalise(pixels: np.ndarray, ds: Dataset, params: PreprocessParams) -> tuple[np.ndarray, str]:
    """Scale a decoded frame to [0, 1]; returns the image and how it was windowed.

    Grey: window per modality from params, else the file's VOI, else percentiles;
    MONOCHROME1 inverted. RGB: divided by the largest value BitsStored allows; PALETTE
    COLOR by the largest value of the palette's entries (BitsStored counts index bits).
    """
    if pixels.ndim == 3:
        if photometric(ds) == "PALETTE COLOR":
            bits = palette_bits(ds)
        else:
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
    mean, std = intensity(pixels)
    image, how = normalise(pixels, ds, params)
    summary = PreprocessSummary(
        frames_in_file=n_frames(ds),
        frame_used=frame,
        photometric=photometric(ds),
        window=how,
        original_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        output_size=params.image_size,
        pixel_mean=mean,
        pixel_std=std,
    )
    return to_model_input(image, params), summary


def preprocess_file(source: Path | str | bytes | BinaryIO, params: PreprocessParams) -> np.ndarray:
    """Read and preprocess one DICOM file; raises DicomError naming the problem."""
    return preprocess_dataset(read_dicom(source), params)[0]
