"""One upload -> model input, through medflow.imaging.preprocess, with every check a client error.

Order matters: size of the upload, what kind of file it is, the header (pixel data present,
bomb guard on rows x columns x frames, modality) and only then pixel decoding. Nothing here
logs or returns a file name or an identifying header value.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from medflow.config import PreprocessParams, ServeParams
from medflow.imaging.dicom import DicomError, check_image
from medflow.imaging.pixels import n_frames
from medflow.imaging.preprocess import PreprocessSummary, preprocess_dataset, read_dicom
from medflow.serving.errors import ServeError, from_dicom_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICM_MAGIC = (128, b"DICM")  # after the 128-byte preamble of a Part-10 file


@dataclass(frozen=True)
class Prepared:
    """A model input (channels, size, size), what was done to get it, and the data set it came
    from (its header and pixel data: /segment reads PixelSpacing and builds a SEG on it)."""

    image: np.ndarray
    summary: PreprocessSummary
    input_format: str  # dicom | png | jpeg
    ds: Dataset | None = None


def sniff(head: bytes) -> str:
    """'png', 'jpeg', or 'dicom' (anything else is tried as DICOM and refused if it is not)."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return "dicom"


@dataclass(frozen=True)
class Checked:
    """An upload that passed every check short of decoding its pixels (PNG/JPEG: decoded)."""

    ds: Dataset
    input_format: str  # dicom | png | jpeg
    values: int  # rows x columns x frames x samples


def prepare_upload(raw: bytes, serve: ServeParams, params: PreprocessParams) -> Prepared:
    """The model input for one uploaded file (its bytes); raises ServeError (a 4xx) naming the
    problem. pydicom and Pillow parse from memory: no upload is written to disk here."""
    return prepare_checked(check_upload(raw, serve, params), params)


def check_upload(raw: bytes, serve: ServeParams, params: PreprocessParams) -> Checked:
    """The first half of prepare_upload: size, kind, header (a DICOM's pixels stay encoded)."""
    size = len(raw)
    if size == 0:
        raise ServeError(HTTPStatus.BAD_REQUEST, "empty_upload", "the file is empty (0 bytes)")
    if size > serve.max_upload_bytes:
        raise ServeError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "upload_too_large",
            f"the file has {size:,} bytes, above the limit of {serve.max_upload_bytes:,}"
            " (package.serve.max_upload_bytes)",
        )
    kind = sniff(raw[: DICM_MAGIC[0] + len(DICM_MAGIC[1])])
    if kind == "dicom":
        ds = _read_dicom(raw, serve)
        values = _check_header(ds, serve, params)
        _check_modality(ds, serve)
        return Checked(ds, kind, values)
    if not serve.allow_png_jpeg:
        raise ServeError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "png_jpeg_not_allowed",
            f"this server takes DICOM files only, not {kind.upper()}"
            " (package.serve.allow_png_jpeg is false)",
        )
    ds = picture_dataset(raw, kind, serve, params)
    return Checked(ds, kind, int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel))


def prepare_checked(checked: Checked, params: PreprocessParams) -> Prepared:
    """The second half of prepare_upload: decoding and medflow.imaging.preprocess."""
    try:
        image, summary = preprocess_dataset(checked.ds, params)
    except DicomError as exc:
        raise from_dicom_error(exc) from None
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, AttributeError) as exc:
        # odd header values that pass the checks but break a computation: still the file's fault
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "invalid_image",
            f"the image cannot be preprocessed: {type(exc).__name__}",
        ) from None
    return Prepared(image=image, summary=summary, input_format=checked.input_format, ds=checked.ds)


def _read_dicom(raw: bytes, serve: ServeParams) -> Dataset:
    # Parsed from the bytes, never by path: pydicom messages can quote a path, and the
    # client's file name may name the patient.
    try:
        return read_dicom(raw)
    except DicomError as exc:
        offset, magic = DICM_MAGIC
        if raw[offset : offset + len(magic)] == magic:
            raise ServeError(
                HTTPStatus.BAD_REQUEST, "unreadable_dicom", f"{exc}; the file is damaged"
            ) from None
        also = " (or PNG/JPEG)" if serve.allow_png_jpeg else ""
        raise ServeError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "not_dicom",
            f"not a DICOM file ({exc}); send one DICOM image{also} as the form field 'file'",
        ) from None


def _check_header(ds: Dataset, serve: ServeParams, params: PreprocessParams) -> int:
    """Pixel data present, an image, and not a decompression bomb, from the header alone;
    returns the number of values the header claims."""
    try:
        check_image(ds, params.max_frame_pixels)  # per frame: the one frame decoded
    except DicomError as exc:
        raise from_dicom_error(exc) from None
    rows, cols = int(ds.Rows), int(ds.Columns)  # check_image made sure these parse
    frames, samples = n_frames(ds), int(ds.get("SamplesPerPixel", 1) or 1)
    total = rows * cols * frames * samples
    if total > serve.max_image_pixels:
        raise ServeError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "image_too_large",
            f"the header claims {rows} x {cols} pixels x {frames} frame(s) x {samples}"
            f" sample(s) = {total:,} values, above the limit of {serve.max_image_pixels:,}"
            " (package.serve.max_image_pixels); refused before decoding",
        )
    return total


def _check_modality(ds: Dataset, serve: ServeParams) -> None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in serve.allowed_modalities:
        what = f"Modality {modality!r}" if modality else "a file without Modality"
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "unsupported_modality",
            f"{what} is not served; expected one of {', '.join(serve.allowed_modalities)}"
            " (package.serve.allowed_modalities)",
        )


def picture_dataset(raw: bytes, kind: str, serve: ServeParams, params: PreprocessParams) -> Dataset:
    """A PNG or JPEG as a secondary-capture DICOM data set, so that it takes the very same
    preprocessing path as a DICOM upload. The size is checked on the header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
            bands = 3 if len(im.getbands()) >= 3 else 1
            if width * height * bands > min(serve.max_image_pixels, params.max_frame_pixels):
                raise ServeError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "image_too_large",
                    f"the {kind.upper()} header claims {width} x {height} pixels x {bands}"
                    " sample(s), above the limit (package.serve.max_image_pixels,"
                    " preprocess.max_frame_pixels); refused before decoding",
                )
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype("<u2")
            elif bands == 1:
                pixels = np.asarray(im.convert("L"), dtype=np.uint8)
            else:
                pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ServeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at open
        raise ServeError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "image_too_large", f"{kind.upper()}: {exc}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ServeError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "undecodable_pixel_data",
            f"cannot decode the {kind.upper()} image: {type(exc).__name__}",
        ) from None
    bits = 16 if pixels.dtype.itemsize == 2 else 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds
