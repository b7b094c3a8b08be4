"""Decoding one frame of a DICOM image: pixel decoders, photometric, modality LUT.

numpy and pydicom only, so ingest workers start fast; medflow.imaging.preprocess builds the model
input from what this returns.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

from medflow.imaging.dicom import (
    DicomError,
    UndecodablePixels,
    UnsupportedImage,
    UnsupportedPhotometric,
    check_image,
)

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def photometric(ds: Dataset) -> str:
    """PhotometricInterpretation, stripped and upper-cased ('' when absent)."""
    return str(ds.get("PhotometricInterpretation", "")).strip().upper()


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or empty."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def frame_indices(ds: Dataset, policy: str) -> list[int]:
    """Frames to take from ds under preprocess.frames: first, middle or all."""
    n = n_frames(ds)
    if policy == "all":
        return list(range(n))
    return [n // 2 if policy == "middle" else 0]


def transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    """The transfer syntax ds is encoded in; for a raw data set, the encoding it was read in."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        return pydicom.uid.UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        return pydicom.uid.ExplicitVRBigEndian
    if implicit is not False:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian


def palette_bits(ds: Dataset) -> int:
    """Bits per value of the RGB that apply_color_lut gives for a PALETTE COLOR ds (8 or 16).

    The bits of the palette entries (RedPaletteColorLookupTableDescriptor[2]), not BitsStored,
    which counts the bits of the palette index. Mirrors apply_color_lut: entries stored one
    byte each are 8-bit whatever the descriptor says; 8-bit entries in 16-bit words stay
    8-bit (the standard's note on such files) unless a word holds more than 8 bits, in which
    case the descriptor is wrong and the words are 16-bit values. A segmented LUT expands
    to the descriptor's depth.
    """
    descriptor = ds.RedPaletteColorLookupTableDescriptor
    entries, nominal = int(descriptor[0]) or 2**16, int(descriptor[2])
    data = ds.get("RedPaletteColorLookupTableData")
    if not data:
        return nominal
    stored = 8 * len(data) // entries
    if stored < nominal:
        return stored
    if stored > nominal:
        # native byte order, as apply_color_lut reads these words
        words = np.frombuffer(data, np.uint16, count=len(data) // 2)
        return stored if int(words.max()) > 2**nominal - 1 else nominal
    return nominal


def decode_frame(
    ds: Dataset, index: int, max_pixels: int, *, out: np.ndarray | None = None
) -> np.ndarray:
    """One frame, decoded on its own: float64 (H, W) after the modality LUT, or (H, W, 3) RGB.

    `out`, a float64 array: a grey frame of its shape with a rescale (slope and intercept)
    is written into it and `out` returned, the same values without new arrays (a caller
    decoding many frames reuses one; why: docs/decisions/ingest-speed.md).

    Raises DicomError naming the problem: not an image, too large, unsupported
    photometric interpretation, or pixel data that cannot be decoded.
    """
    check_image(ds, max_pixels)
    pi = photometric(ds)
    if pi not in _GREY + _COLOUR:
        raise UnsupportedPhotometric(
            f"unsupported PhotometricInterpretation {pi!r}; expected one of"
            f" {', '.join(_GREY + _COLOUR)}"
        )
    arr = stored_frame(ds, index)
    if pi == "PALETTE COLOR":
        try:
            # an optional alpha LUT adds a 4th channel; the model sees RGB only
            arr = apply_color_lut(arr, ds)[..., :3]
        except Exception as exc:  # malformed LUTs raise many kinds of errors
            raise UndecodablePixels(
                f"cannot apply the PALETTE COLOR lookup table: {type(exc).__name__}: {exc}"
            ) from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr.astype(np.float64)
    if arr.ndim != 2:
        raise DicomError(f"expected a 2-D image per frame, got pixel array of shape {arr.shape}")
    rescale = _plain_rescale(ds)
    if out is not None and rescale and out.shape == arr.shape and out.dtype == np.float64:
        # apply_modality_lut's own steps (astype, *, +=), in place: the same float64 values
        np.copyto(out, arr, casting="unsafe")
        out *= rescale[0]
        out += rescale[1]
        return out
    return apply_modality_lut(arr, ds).astype(np.float64)


def _plain_rescale(ds: Dataset) -> tuple[float, float] | None:
    """(slope, intercept) when apply_modality_lut would rescale with them: no Modality LUT
    Sequence, both present and plain numbers; else None."""
    if ds.get("ModalityLUTSequence") or "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return None
    slope, intercept = ds.RescaleSlope, ds.RescaleIntercept
    if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in (slope, intercept)):
        return None
    return slope, intercept


def stored_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame's stored values as decoded, YBR converted to RGB; no lookup table applied.

    Raises UnsupportedImage when no decoder handles the transfer syntax, UndecodablePixels
    when decoding fails.
    """
    ts = transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnsupportedImage(f"no pixel decoder for transfer syntax {ts.name} ({ts})") from exc
    try:
        # as_rgb converts YBR to RGB; frames are decoded one at a time (bounded memory).
        arr, _ = decoder.as_array(ds, index=index, as_rgb=True)
    except Exception as exc:
        raise UndecodablePixels(
            f"cannot decode pixel data ({ts.name}): {type(exc).__name__}: {exc}"
        ) from exc
    return arr


def luminance(pixels: np.ndarray) -> np.ndarray:
    """Grey values of a decoded frame (ITU-R BT.601 luminance for RGB)."""
    if pixels.ndim == 3:
        return pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    return pixels
