"""The ingest manifest: one row per image, pseudonymous identifiers only.

Shared by ingest (which writes it), validate (which checks it) and preprocess
(which reads it). Identifying DICOM attributes never appear as columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

MANIFEST_FILE = "manifest.csv"
SPLITS = ("train", "val", "test")

# column -> pandas dtype
COLUMNS: dict[str, str] = {
    # pseudonymous, stable per sample: the de-identified SOPInstanceUID, with ":<frame>"
    # appended when one file gives several samples (preprocess.frames: all)
    "image_id": "string",
    "file": "string",  # de-identified DICOM, images/<content_hash>.dcm in the ingest output
    "frame": "int64",  # the frame of that file this row is (preprocess.frames)
    "patient_id": "string",  # keyed pseudonym of PatientID
    "study_id": "string",  # de-identified StudyInstanceUID
    "series_id": "string",  # de-identified SeriesInstanceUID
    "sop_instance_id": "string",  # de-identified SOPInstanceUID (one per file)
    "modality": "string",
    "manufacturer": "string",
    "site": "string",  # keyed pseudonym of InstitutionName ("" when absent)
    # Patient characteristics the Basic Profile's Retain Patient Characteristics option keeps,
    # coarse enough for subgroup metrics: PatientSex (M, F, O; "" when absent) and PatientAge
    # in bands (AGE_BANDS; "" when absent or unreadable)
    "sex": "string",
    "age_band": "string",
    "rows": "int64",
    "columns": "int64",
    "frames": "int64",
    "pixel_spacing": "float64",  # mm, row spacing; NaN when absent
    "bits_stored": "int64",
    "photometric": "string",
    "label": "int64",  # index into data.class_names
    "label_name": "string",
    "split": "string",  # train | val | test
    "content_hash": "string",  # sha256 of the source file
    "pixel_mean": "float64",  # statistics of the stored pixels after the modality LUT
    "pixel_std": "float64",
    "pixel_min": "float64",
    "pixel_max": "float64",
    # share of pixels at the frame's minimum or maximum, whichever is larger: 1.0 for a blank
    # image, high for a black, saturated or clipped one
    "pixel_constant_fraction": "float64",
    # data.task segmentation only ("" / NaN / 0 for classification): the row's mask, (K, H,
    # W) uint8 in the image's own geometry, one plane per segment (class_names[1:]), as
    # masks/<content_hash>_<frame>.npy; the share of the frame's pixels in any segment; and
    # the connected lesions summed over the planes (0 when empty)
    "mask_file": "string",
    "mask_fraction": "float64",
    "mask_components": "int64",
}

MASKS_DIR = "masks"
SEGMENTATIONS_FILE = "segmentations.csv"  # the de-identified SEG objects an ingest kept
# segmentations.csv: one row per SEG object kept (segmentations/<content_hash>.dcm)
SEG_COLUMNS: dict[str, str] = {
    "content_hash": "string",  # sha256 of the source SEG file
    "file": "string",  # segmentations/<content_hash>.dcm
    "patient_id": "string",  # keyed pseudonym, equal to its images'
    "study_id": "string",
    "sop_instance_id": "string",  # the SEG's own de-identified SOPInstanceUID
    "referenced_sop_instance_ids": "string",  # the images it masks, ";"-separated
}

# Upper bounds (exclusive, years) and names of the age bands; the last band is open: ages
# above 89 identify on their own (HIPAA), so they share one band with everyone over 80.
AGE_BANDS = ((18, "0-17"), (40, "18-39"), (60, "40-59"), (80, "60-79"), (None, "80+"))
_AGE_UNITS = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}  # PatientAge units per year


def age_band(patient_age: object) -> str:
    """The band of a DICOM Age String ("045Y", "018M", ...); "" when absent or malformed."""
    text = str(patient_age or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in _AGE_UNITS:
        return ""
    years = int(text[:3]) / _AGE_UNITS[text[3]]
    return next(name for bound, name in AGE_BANDS if bound is None or years < bound)


def sex(patient_sex: object) -> str:
    """PatientSex as M, F or O; "" when absent or not one of those."""
    text = str(patient_sex or "").strip().upper()
    return text if text in ("M", "F", "O") else ""


# DICOM keywords that identify a person; none may appear as a manifest column.
IDENTIFYING_COLUMNS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientTelephoneNumbers",
    "ReferringPhysicianName",
    "InstitutionName",
    "AccessionNumber",
)


def read_manifest(folder: Path) -> pd.DataFrame:
    """Read the manifest written by the ingest stage, with its declared dtypes."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}: run the ingest stage first")
    df = pd.read_csv(path, dtype={k: v for k, v in COLUMNS.items() if v == "string"})
    return df
