"""The one preprocessing path, imported by preprocess (training), evaluation and serving.

DICOM dataset -> first frame -> modality LUT -> colour to grey -> window (from the
file, else robust percentiles) -> MONOCHROME1 inverted -> padded square ->
resized -> float32 array of shape (channels, size, size) in [0, 1].

Keep this module light (numpy, pydicom, torch): the Bento imports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medflow.config import PreprocessParams

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


class DicomError(ValueError):
    """The input is not a usable DICOM image; the message names the problem."""


@dataclass(frozen=True)
class PreprocessSummary:
    """What preprocessing did to one image (safe to return to clients: no identifiers)."""

    frames_in_file: int
    frame_used: int
    photometric: str
    window: str
    original_shape: tuple[int, int]
    output_size: int


def read_dicom(source: Path | str | bytes | BinaryIO) -> Dataset:
    """Parse a DICOM Part-10 file (path, bytes or file object); refuse anything else clearly."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source)
    except InvalidDicomError as exc:
        raise DicomError(
            "not a DICOM file: no 'DICM' marker after the 128-byte preamble"
            f" and no recognisable DICOM header ({exc})"
        ) from exc
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors
        raise DicomError(f"unreadable DICOM file: {type(exc).__name__}: {exc}") from exc
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", sop) if sop is not None else "unknown SOP class"
        raise DicomError(f"DICOM file has no pixel data (SOP class: {name}); an image is required")
    return ds


def decode_pixels(ds: Dataset) -> tuple[np.ndarray, int, int]:
    """First frame as float64 (H, W) grey values after the modality LUT.

    Returns (pixels, frames_in_file, frame_used). Colour images become luminance.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _GREY + _COLOUR:
        raise DicomError(
            f"unsupported PhotometricInterpretation {photometric!r};"
            f" expected one of {', '.join(_GREY + _COLOUR)}"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(ds.file_meta, "TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        ts_name = getattr(ts, "name", ts) or "unknown transfer syntax"
        raise DicomError(f"cannot decode pixel data ({ts_name}): {type(exc).__name__}: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 3:
        # pydicom converts YBR to RGB by default; luminance per ITU-R BT.601
        rgb = arr.astype(np.float64)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    else:
        grey = apply_modality_lut(arr, ds).astype(np.float64)
    if grey.ndim != 2:
        raise DicomError(f"expected a 2-D image per frame, got pixel array of shape {arr.shape}")
    return grey, frames, 0


def _window(ds: Dataset) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    first = lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)  # noqa: E731
    c, w = first(centre), first(width)
    if w <= 0:
        return None
    return c - w / 2.0, c + w / 2.0


def normalise(grey: np.ndarray, ds: Dataset, params: PreprocessParams) -> tuple[np.ndarray, str]:
    """Scale to [0, 1] with the file's window, else with robust percentiles; invert MONOCHROME1."""
    window = None if ds.get("SamplesPerPixel", 1) == 3 else _window(ds)
    if window is not None:
        lo, hi = window
        how = f"file window [{lo:g}, {hi:g}]"
    else:
        lo, hi = np.percentile(grey, [params.percentile_low, params.percentile_high])
        how = f"percentiles {params.percentile_low:g}-{params.percentile_high:g}"
    scale = hi - lo
    out = np.zeros_like(grey) if scale <= 0 else np.clip((grey - lo) / scale, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32), how


def to_model_input(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """(H, W) in [0, 1] -> (channels, size, size) float32: pad to square, then resize."""
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side), dtype=np.float32)
    square[top : top + h, left : left + w] = image
    t = torch.from_numpy(square)[None, None]
    if side != params.image_size:
        t = F.interpolate(
            t,
            size=(params.image_size, params.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=side > params.image_size,
        )
    out = t[0].clamp_(0.0, 1.0).numpy()
    if params.channels == 3:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocess_dataset(ds: Dataset, params: PreprocessParams) -> tuple[np.ndarray, PreprocessSummary]:
    """The full path for one DICOM dataset: model input and a summary of what was done."""
    grey, frames, used = decode_pixels(ds)
    image, how = normalise(grey, ds, params)
    summary = PreprocessSummary(
        frames_in_file=frames,
        frame_used=used,
        photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        window=how,
        original_shape=(int(grey.shape[0]), int(grey.shape[1])),
        output_size=params.image_size,
    )
    return to_model_input(image, params), summary


def preprocess_file(source: Path | str | bytes | BinaryIO, params: PreprocessParams) -> np.ndarray:
    """Read and preprocess one DICOM file; raises DicomError naming the problem."""
    return preprocess_dataset(read_dicom(source), params)[0]
