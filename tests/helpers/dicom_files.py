"""Small real DICOM files built in code: an image SOP instance, Part-10 and bare encodings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, generate_uid


def image_dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    sop_class: str = CTImageStorage,
    **attrs: object,
) -> Dataset:
    """A small but complete image SOP instance: file meta, patient, study and pixel data.

    `pixels` is (rows, cols), (frames, rows, cols), or (rows, cols, 3) for RGB.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Quorvex^Tildana", "MRN55501234"
    ds.StudyDate, ds.StudyTime = "20210304", "101500"
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(ds: Dataset, path: Path) -> Path:
    """Write ds as a Part-10 file (preamble, DICM, file meta) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def raw_dataset_bytes(name: str, *, implicit: bool, little: bool) -> bytes:
    """A pydicom test file re-written as a bare data set: no preamble, no 'DICM', no meta."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=implicit, little_endian=little)
    return buf.getvalue()
