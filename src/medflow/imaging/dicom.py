"""Reading DICOM safely: parse, decide whether it is an image to learn from, refuse bombs.

Shared by ingest and serving, so both refuse the same inputs with the same words. Keep it
light (pydicom only): the Bento imports it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import UID, EnhancedUSVolumeStorage

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Elements every image SOP instance carries; a forced parse of random bytes has none of them.
_IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns")
# Image storage classes whose registry name lacks "Image Storage". Checked against every
# storage class in pydicom's UID registry: only Enhanced US Volume (acquired ultrasound
# frames) is such an image. Photoacoustic, Breast Tomosynthesis and the OCT classes are
# named "... Image Storage" already; derived results stay refused like SEG and parametric
# maps: OCT B-scan Volume Analysis, Ophthalmic Thickness Map, Corneal Topography Map. DICOS
# AIT classes are security screening scans, not medical images.
_IMAGE_CLASSES_NAMED_OTHERWISE = frozenset({EnhancedUSVolumeStorage})


class DicomError(ValueError):
    """The input is not a usable DICOM image; the message names the problem."""


class NotAnImage(DicomError):
    """A valid DICOM object that is not an image to learn from (SEG, SR, presentation state...)."""


class NoPixelData(DicomError):
    """A DICOM object without pixel data."""


class ImageTooLarge(DicomError):
    """The header claims more pixels than allowed: refused before decoding (bomb guard)."""


class UnsupportedImage(DicomError):
    """Pixel data this code does not handle: photometric interpretation, transfer syntax."""


class UnsupportedPhotometric(UnsupportedImage):
    """A PhotometricInterpretation outside the ones preprocessing handles."""


class UndecodablePixels(DicomError):
    """Pixel data that fails to decode (truncated, corrupt)."""


def sop_class_name(ds: Dataset) -> str:
    """The SOP class's registry name and UID, for messages (no identifying value)."""
    sop = ds.get("SOPClassUID")
    if sop is None:
        return "no SOP Class UID"
    uid = UID(str(sop))
    return f"{uid.name} ({uid})" if uid.name != str(uid) else f"unknown SOP class {uid}"


def _parse(source: BinaryIO, *, force: bool) -> Dataset:
    return pydicom.dcmread(source, force=force)


def read_dicom(source: Path | str | bytes | BinaryIO) -> Dataset:
    """Parse a DICOM file (path, bytes or file object); refuse anything else clearly.

    Part-10 files are read as such; a file without the 128-byte preamble and 'DICM' marker
    (raw data sets, as some old modalities write) is read too, if it parses as a data set
    that carries image attributes.
    """
    if isinstance(source, str | Path):
        source = Path(source).read_bytes()
    if isinstance(source, bytes):
        if not source:
            raise DicomError("empty file (0 bytes)")
        source = io.BytesIO(source)
    start = source.tell()
    try:
        try:
            ds = _parse(source, force=False)
        except InvalidDicomError:
            source.seek(start)
            ds = _parse(source, force=True)
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors
        raise DicomError(f"unreadable DICOM file: {type(exc).__name__}: {exc}") from exc
    if "SOPClassUID" not in ds and not all(k in ds for k in _IMAGE_PIXEL_KEYWORDS):
        raise DicomError(
            "not a DICOM file: no 'DICM' marker after the 128-byte preamble, and the bytes do"
            " not parse as a DICOM data set either"
        )
    _check_complete(ds)
    return ds


def _check_complete(ds: Dataset) -> None:
    """Refuse a file that ends inside its last element (pydicom reads such a value short)."""
    if not len(ds):
        return
    tag = max(ds.keys())
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
        have = len(raw.value) if raw.value is not None else 0
        if have < raw.length:
            name = keyword_for_tag(tag) or str(Tag(tag))
            raise DicomError(
                f"truncated file: it ends inside {name} {Tag(tag)}, which declares"
                f" {raw.length:,} bytes but only {have:,} are there"
            )


def check_image(ds: Dataset, max_pixels: int) -> None:
    """Raise unless ds is an image SOP instance whose pixel data may safely be decoded.

    The size check uses only the header, so a file that claims 60000 x 60000 pixels is
    refused before anything is allocated.
    """
    sop = ds.get("SOPClassUID")
    if sop is not None:
        uid = UID(str(sop))
        known = uid.name != str(uid)
        # Storage classes of images are named "... Image Storage" in the DICOM registry
        # (CT, MR, CR/DX, US, SC, NM, PET, MG, XA, RT Image, WSI, ...), but for the few in
        # _IMAGE_CLASSES_NAMED_OTHERWISE; SEG, SR, RT Dose, parametric maps, waveforms and
        # presentation states are not images.
        is_image = "Image Storage" in uid.name or uid in _IMAGE_CLASSES_NAMED_OTHERWISE
        if known and not is_image:
            raise NotAnImage(f"not an image to learn from: {uid.name} ({uid})")
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise NoPixelData(
            f"DICOM file has no pixel data ({sop_class_name(ds)}); an image is required"
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(f"image header incomplete or invalid (Rows, Columns, ...): {exc}") from exc
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3):
        raise DicomError(
            f"implausible image header: {rows} x {cols} pixels, {frames} frame(s),"
            f" {samples} sample(s) per pixel"
        )
    # Checked per frame: frames are decoded one at a time.
    if rows * cols * samples > max_pixels:
        raise ImageTooLarge(
            f"image too large: the header claims {rows} x {cols} pixels x {samples} sample(s)"
            f" per frame, above the limit of {max_pixels:,} (preprocess.max_frame_pixels);"
            " refused before decoding"
        )
