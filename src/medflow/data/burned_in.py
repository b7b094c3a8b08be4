"""Burned-in text: OCR of the pixels of images that usually carry it, then redact or refuse.

Ultrasound, secondary captures and screenshots often show the patient's name in the pixels.
tesseract (Debian `tesseract-ocr`) finds word boxes; `screen` fills them in every frame, or
quarantines the file, per deid.burned_in_text. The text read never leaves this module.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits
from pydicom.uid import ExplicitVRLittleEndian

from medflow.config import BurnedInTextParams
from medflow.errors import IngestFailed
from medflow.imaging.dicom import DicomError
from medflow.imaging.pixels import (
    decode_frame,
    luminance,
    n_frames,
    photometric,
    stored_frame,
    transfer_syntax,
)

logger = logging.getLogger(__name__)

TESSERACT = "tesseract"
# Secondary Capture Image Storage and its multi-frame variants (…1.1.7.1 to …1.1.7.4); the
# VL classes (…1.1.77.x) share the prefix but not the dot.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MIN_SIDE = 32  # frames narrower than this (in pixels) hold no legible text: not OCR'd
# Frames larger than this (pixels, either side) are not read enlarged: their fonts are not
# small, and tesseract's time grows with the area.
MAX_ENLARGED_SIDE = 2048
BRIGHT = 0.6  # see _readings: the share of a frame's grey range below which pixels are hidden
_NOT_INSTALLED = (
    "burned-in text screening (deid.burned_in_text) needs the tesseract OCR program, which"
    " is not installed: run `make system-deps` (or `apt-get install tesseract-ocr"
    " tesseract-ocr-eng`), or set deid.burned_in_text.action: off if this source has no"
    " text in its pixels"
)


@dataclass(frozen=True)
class Box:
    """A rectangle of pixels, rows top:bottom and columns left:right (ends exclusive)."""

    top: int
    left: int
    bottom: int
    right: int


def is_screened(ds: Dataset, params: BurnedInTextParams) -> bool:
    """Whether ds is OCR'd: its Modality is listed, or it is a Secondary Capture image."""
    if params.action == "off":
        return False
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    secondary = sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + ".")
    return modality in params.modalities or (params.secondary_capture and secondary)


def screened_frames(n: int, max_frames: int) -> list[int]:
    """Up to max_frames frame indices spread evenly over n frames, first and last included."""
    if n <= max_frames:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, max_frames).round()})


def find_text(frame: np.ndarray, params: BurnedInTextParams) -> list[Box]:
    """Boxes of the words tesseract reads in one decoded frame (grey (H, W) or RGB (H, W, 3)).

    A word counts when it has at least params.min_chars letters or digits and a confidence
    of at least params.min_confidence (params.min_confidence_bright in the readings with the
    dim pixels hidden, where little noise is left to read as words); the other words on the
    same line as such a word count too (a name read with low confidence next to a confidently
    read ID). The frame is
    read three times (see `_readings`); the boxes of all readings are returned, widened by
    params.margin pixels and clipped to the frame. Frames narrower than MIN_SIDE pixels are
    not read.

    Raises:
        IngestFailed: tesseract is not installed or fails.
    """
    grey = luminance(np.asarray(frame, dtype=np.float64))
    rows, cols = grey.shape
    if min(rows, cols) < MIN_SIDE or not grey.max() > grey.min():
        return []  # too small for legible text, or constant
    m = params.margin
    boxes: list[Box] = []
    for image, scale, bright in _readings(grey, params.upscale):
        words = _ocr(image)
        threshold = params.min_confidence_bright if bright else params.min_confidence
        anchors = [w for w in words if w.confidence >= threshold and w.alnum >= params.min_chars]
        # a line's other words count if they are no taller than twice its text (not a bright
        # structure tesseract grouped with the words beside it)
        tallest = {w.line: 0 for w in anchors}
        for w in anchors:
            tallest[w.line] = max(tallest[w.line], w.height)
        boxes += [
            Box(
                max(0, w.top // scale - m),
                max(0, w.left // scale - m),
                min(rows, -(-(w.top + w.height) // scale) + m),
                min(cols, -(-(w.left + w.width) // scale) + m),
            )
            for w in words
            if w.line in tallest and w.alnum > 0 and w.height <= 2 * tallest[w.line]
        ]
    return boxes


def _readings(grey: np.ndarray, upscale: int) -> list[tuple[Image.Image, int, bool]]:
    """The images tesseract reads for one frame: (image, its scale, dim pixels hidden).

    Burned-in text is drawn brighter than the anatomy, so the frame is read with everything
    below BRIGHT of its range blacked out, at its size and `upscale` times enlarged (small
    fonts; frames up to MAX_ENLARGED_SIDE): speckle then no longer reads as words, and
    tesseract is several times faster (most of its time goes to textured regions). Once more
    whole, at its size, for dimmer text.
    """
    low, high = float(grey.min()), float(grey.max())
    bright = np.where(grey >= low + BRIGHT * (high - low), grey, low)
    images = [_to_8bit(bright, low, high), _to_8bit(grey, low, high)]
    rows, cols = grey.shape
    readings = [(images[0], 1, True), (images[1], 1, False)]
    if upscale > 1 and max(rows, cols) <= MAX_ENLARGED_SIDE:
        enlarged = images[0].resize((cols * upscale, rows * upscale), Image.LANCZOS)
        readings.insert(1, (enlarged, upscale, True))
    return readings


def _to_8bit(grey: np.ndarray, low: float, high: float) -> Image.Image:
    return Image.fromarray(np.round((grey - low) * (255.0 / (high - low))).astype(np.uint8))


def screen(ds: Dataset, params: BurnedInTextParams, max_pixels: int) -> int:
    """OCR the frames of ds if it is screened; redact what is found, or refuse the file.

    Redaction fills the union of the boxes found in the screened frames in every frame
    (overlays of a cine loop stay put) and stores the pixel data uncompressed (see `redact`).

    Returns:
        The number of boxes redacted (0: pixels untouched).

    Raises:
        DicomError: text found and params.action is quarantine (the reason gives counts only).
        IngestFailed: tesseract is not installed.
    """
    if not is_screened(ds, params):
        return 0
    total = n_frames(ds)
    indices = screened_frames(total, params.max_frames)
    boxes: set[Box] = set()
    frames_with_text = 0
    for index in indices:
        found = find_text(decode_frame(ds, index, max_pixels), params)
        frames_with_text += bool(found)
        boxes.update(found)
    if not boxes:
        return 0
    modality = str(ds.get("Modality", "") or "?")
    if params.action == "quarantine":
        raise DicomError(
            f"burned-in text: OCR found text ({len(boxes)} box(es)) in {frames_with_text} of"
            f" {len(indices)} screened frame(s) of this {modality} image;"
            " deid.burned_in_text.action is quarantine: mask the text upstream, or set the"
            " action to redact"
        )
    redact(ds, sorted(boxes, key=lambda b: (b.top, b.left, b.bottom, b.right)))
    logger.debug(
        "burned-in text: %d box(es) redacted in all %d frame(s) of a %s image (%d of %d"
        " screened frames had text)",
        len(boxes),
        total,
        modality,
        frames_with_text,
        len(indices),
    )
    return len(boxes)


def redact(ds: Dataset, boxes: list[Box]) -> None:
    """Fill boxes with each frame's lowest stored value, in every frame of ds, in place.

    The frames are decoded one at a time as pydicom stores them (YBR converted to RGB) and
    written back uncompressed: an encapsulated (compressed) source becomes explicit VR little
    endian, YBR becomes RGB with PlanarConfiguration 0; a native source keeps its transfer
    syntax and byte order. Raises DicomError if the pixel data cannot be decoded.
    """
    ts = transfer_syntax(ds)
    pi = photometric(ds)
    order = "<" if ts.is_little_endian or ts.is_encapsulated else ">"
    chunks: list[bytes] = []
    bits: list[np.ndarray] = []  # BitsAllocated 1: packed across frames at the end
    for index in range(n_frames(ds)):
        arr = np.array(stored_frame(ds, index))  # a writable copy
        fill = arr.min(axis=(0, 1))
        for box in boxes:
            arr[box.top : box.bottom, box.left : box.right] = fill
        if int(ds.BitsAllocated) == 1:
            bits.append(arr.ravel())
        else:
            chunks.append(arr.astype(arr.dtype.newbyteorder(order), copy=False).tobytes())
    data = pack_bits(np.concatenate(bits)) if bits else b"".join(chunks)
    ds.PixelData = data + b"\x00" * (len(data) % 2)
    elem = ds["PixelData"]
    elem.VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    elem.is_undefined_length = False
    for tag in (0x7FE00001, 0x7FE00002):  # extended offset table: encapsulated data only
        if tag in ds:
            del ds[tag]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        ds.PlanarConfiguration = 0  # as_array returns (rows, columns, samples)
        if pi.startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
    if ts.is_encapsulated:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


@dataclass(frozen=True)
class _Word:
    line: tuple[int, int, int]  # (block, paragraph, line) in tesseract's layout
    left: int
    top: int
    width: int
    height: int
    confidence: float
    alnum: int  # letters and digits in the word; the word itself is not kept


def _ocr(image: Image.Image) -> list[_Word]:
    """Words tesseract reads in image (sparse text, --psm 11), through pipes only.

    Not pytesseract: it writes the image and the text read to temporary files, and that
    text is PHI. OMP_THREAD_LIMIT=1: tesseract's OpenMP threads cost more than they give
    on frames this small (several times slower), and ingest runs workers in parallel anyway.
    """
    _check_installed()
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    try:
        done = subprocess.run(
            [TESSERACT, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
            input=png.getvalue(),
            capture_output=True,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            check=False,
        )
    except FileNotFoundError as exc:
        raise IngestFailed(_NOT_INSTALLED) from exc
    if done.returncode != 0:
        # stderr names files and settings, never the text read
        message = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise IngestFailed(
            f"tesseract failed (exit {done.returncode}: {message[0]}); check the"
            " installation (`tesseract --list-langs` must list eng)"
        )
    words = []
    rows = csv.DictReader(
        io.StringIO(done.stdout.decode("utf-8", errors="replace")),
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
    )
    for row in rows:
        text = (row.get("text") or "").strip()
        if row.get("level") != "5" or not text:
            continue
        words.append(
            _Word(
                (int(row["block_num"]), int(row["par_num"]), int(row["line_num"])),
                int(row["left"]),
                int(row["top"]),
                int(row["width"]),
                int(row["height"]),
                float(row["conf"]),
                sum(c.isalnum() for c in text),
            )
        )
    return words


@functools.cache
def _check_installed() -> None:
    """Fail once per process, clearly, when tesseract or its English data is missing."""
    try:
        done = subprocess.run([TESSERACT, "--list-langs"], capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise IngestFailed(_NOT_INSTALLED) from exc
    if "eng" not in done.stdout.decode(errors="replace").split():
        raise IngestFailed(
            "tesseract is installed without its English data: apt-get install"
            " tesseract-ocr-eng (or run `make system-deps`)"
        )
