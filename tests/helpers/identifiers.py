"""The original identifying values of DICOM files: what no output may contain."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom

from tests.helpers.hashing import regular_files

# The attributes whose original values de-identification replaces (docs/ingest.md).
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
# values some files carry instead of an identifier
PLACEHOLDERS = {"anonymized", "anonymous", "anonymised"}


def _read(path: Path) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM, or too broken to hold identifiers
            return None


def dataset_values(
    ds: pydicom.Dataset,
    keywords: tuple[str, ...] = IDENTIFYING_KEYWORDS,
    min_length: int = 6,
    vendors: tuple[str, ...] = (),
) -> dict[str, str]:
    """{value: keyword} of the identifying values of one dataset.

    A person name also counts by each of its parts and as written out ("Last First", "First
    Last"). Left out: values shorter than min_length, digit strings under 8 characters and
    placeholders (named ones, or one character repeated), which occur by chance in hashes,
    UIDs and binary data; and values inside the Manufacturer or one of `vendors` (vendor test
    files give the vendor as institution, and the manufacturer is kept on purpose).
    """
    vendors = (*vendors, str(ds.get("Manufacturer", "") or ""))
    found: dict[str, str] = {}
    for keyword in keywords:
        value = str(ds.get(keyword, "") or "").strip()
        values = {value}
        if keyword.endswith("Name"):
            parts = [p.strip() for p in value.split("^") if p.strip()]
            values |= {*parts, " ".join(parts), " ".join(reversed(parts))}
        for v in values:
            if (
                len(v) >= min_length
                and not (v.isdigit() and len(v) < 8)
                and v.lower() not in PLACEHOLDERS
                and len(set(v)) > 1  # 11111111, XXXXXX: a placeholder too
                and not any(v in vendor for vendor in vendors)
            ):
                found.setdefault(v, keyword)
    return found


def identifying_values(
    source: Path, keywords: tuple[str, ...] = IDENTIFYING_KEYWORDS, min_length: int = 6
) -> dict[str, str]:
    """{value: keyword} of every identifying value (dataset_values) of every DICOM file under
    source, the manufacturers of all of them counting as vendors; files that are not DICOM,
    or too broken to read, are passed over."""
    datasets = [ds for ds in map(_read, regular_files(source)) if ds is not None]
    vendors = tuple({str(ds.get("Manufacturer", "") or "") for ds in datasets})
    found: dict[str, str] = {}
    for ds in datasets:
        found = {**dataset_values(ds, keywords, min_length, vendors), **found}
    return found
