"""Generated inputs for the ingest tests: one small valid DICOM image and what breaks it.

Not a test module: tests import it to write the files they feed to the ingest. Every file
is synthetic (pydicom 3); nothing here is patient data. `write_broken_set` returns, per
path, what the ingest must make of it, so a test can check the outcome and its reason.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

SIZE = 32  # rows and columns of the valid image
HUGE = 60000  # rows and columns the bomb header claims
# Identifying values written into every generated file: no output may contain them.
PATIENT_NAME = "Brokenfile^Quentin"
PATIENT_ID = "BRKN-PID-7731"
# A long string value: the header is truncated in its middle (never on an element boundary,
# where the cut file would read as a complete data set without pixel data).
CUT_HERE = "medflow truncation marker inside a value"

QUARANTINED, SKIPPED, DUPLICATE = "quarantined", "skipped", "duplicate"


@dataclass(frozen=True)
class Expected:
    """What the ingest must make of a file: its outcome, and words its reason must hold.

    `reason_any` lists alternatives (case-insensitive); the reason must contain one of them.
    An outcome of None means the file must be ingested (in the manifest).
    """

    outcome: str | None
    reason_any: tuple[str, ...] = ()

    def matches(self, reason: str) -> bool:
        return any(word.lower() in reason.lower() for word in self.reason_any)


INGESTED = Expected(None)
_TRUNCATED = ("truncat", "end of file", "EOF", "unreadable", "incomplete", "corrupt")


def valid_dataset(seed: int = 0, *, patient_id: str = PATIENT_ID) -> Dataset:
    """A 32x32 MONOCHROME2 uint16 CT image with identifying attributes set.

    The seed makes the pixels and the UIDs, so two seeds give two different images and the
    same seed the same bytes (when written with the same function).
    """
    rng = np.random.default_rng(seed)
    entropy = [f"medflow-broken-files-{seed}"]
    study = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"])
    series = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"])
    sop = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "sop"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19610417"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACCBRKN0042"
    ds.ReferringPhysicianName = "Referrer^Ophelia"
    ds.InstitutionName = "Brokenfile General Hospital"
    ds.StudyDescription = CUT_HERE
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = seed + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    pixels = rng.integers(0, 4096, size=(SIZE, SIZE), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """ds as a Part-10 file: preamble, 'DICM', file meta, explicit VR little endian."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_valid(path: Path, seed: int = 0, *, patient_id: str = PATIENT_ID) -> Path:
    """Write a valid image (see valid_dataset) to path and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(valid_dataset(seed, patient_id=patient_id)))
    return path


def raw_dataset_bytes(ds: Dataset) -> bytes:
    """ds without the 128-byte preamble, 'DICM' and file meta: a bare implicit VR LE data set.

    Old modalities and some archives write files like this; pydicom reads them only with
    force=True.
    """
    bare = Dataset()
    bare.update(ds)  # a copy of the elements, without file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def png_bytes(width: int = 16, height: int = 16) -> bytes:
    """A real greyscale PNG (signature, IHDR, IDAT, IEND), written by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(
        b"\x00" + bytes((x * 16 + y) % 256 for x in range(width)) for y in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pixel_data_offset(data: bytes) -> int:
    """Where the (7FE0,0010) Pixel Data element starts in explicit VR little endian bytes."""
    offset = data.rfind(b"\xe0\x7f\x10\x00OW")
    if offset < 0:
        raise ValueError("no Pixel Data element in these bytes")
    return offset


def write_broken_set(folder: Path, seed: int = 1000) -> dict[str, Expected]:
    """Write every broken case (and one valid preamble-less file) into folder.

    Returns {path relative to folder (POSIX): Expected}. The directory symlink loop is an
    entry too (`sub/loop`, pointing back at `folder`), but not a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = dicom_bytes(valid_dataset(seed))
    pixels_at = pixel_data_offset(good)
    value_at = good.find(CUT_HERE.encode())
    if not 132 < value_at < pixels_at:
        raise AssertionError(f"unexpected layout of the valid file: {value_at=}, {pixels_at=}")

    no_pixels = valid_dataset(seed + 1)
    del no_pixels.PixelData

    bomb = valid_dataset(seed + 2)
    bomb.Rows = bomb.Columns = HUGE
    bomb.PixelData = b"\x00\x00\x00\x00"

    rng = np.random.default_rng(seed)
    files: dict[str, tuple[bytes, Expected]] = {
        "empty.dcm": (b"", Expected(QUARANTINED, ("empty", "0 bytes"))),
        "truncated/in_preamble.dcm": (
            good[:64],
            Expected(QUARANTINED, (*_TRUNCATED, "not a DICOM")),
        ),
        "truncated/in_header.dcm": (
            good[: value_at + len(CUT_HERE) // 2],
            Expected(QUARANTINED, _TRUNCATED),
        ),
        "truncated/in_pixel_data": (  # no .dcm suffix on purpose: any file name is read
            good[: pixels_at + 12 + (SIZE * SIZE * 2) // 2],
            Expected(QUARANTINED, (*_TRUNCATED, "less than expected", "pixel data")),
        ),
        "random.dcm": (
            rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes(),
            Expected(QUARANTINED, ("not a DICOM", "not DICOM")),
        ),
        "picture.dcm": (png_bytes(), Expected(QUARANTINED, ("not a DICOM", "not DICOM"))),
        "no_pixels.dcm": (
            dicom_bytes(no_pixels),
            Expected(QUARANTINED, ("no pixel data",)),
        ),
        "bomb.dcm": (dicom_bytes(bomb), Expected(QUARANTINED, (str(HUGE),))),
        "raw/no_preamble.dcm": (raw_dataset_bytes(valid_dataset(seed + 3)), INGESTED),
    }
    expected: dict[str, Expected] = {}
    for rel, (data, outcome) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = outcome
    (folder / "sub").mkdir(exist_ok=True)
    write_valid(folder / "sub" / "inside_loop_folder.dcm", seed + 4)
    expected["sub/inside_loop_folder.dcm"] = INGESTED
    os.symlink("..", folder / "sub" / "loop", target_is_directory=True)
    expected["sub/loop"] = Expected(SKIPPED, ("loop",))
    return expected
