"""A new hospital sending the served model its images: synthetic DICOM files rewritten as
another site stores them (another scanner maker, another intensity calibration, other
patients and UIDs), and the scan that finds their identifiers in what the system wrote."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from tests.helpers.identifiers import dataset_values

MANUFACTURER = "Globex Diagnostics"
INSTITUTION = "Eastgate Synthetic Medical Centre"
# What the leak scan looks for: the identifiers the issue names (the study and instance UIDs,
# the patient's name and ID) and their neighbours; no dates, whose digits occur in floats.
UPLOAD_KEYWORDS = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "InstitutionName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
_SYLLABLES = "qar vex tol mun bri sef dak wyl ozo pen rud gim".split()


def _scaled(value: object, scale: float, offset: float) -> object:
    if isinstance(value, MultiValue):
        return [f"{float(v) * scale + offset:.0f}" for v in value]
    return f"{float(value) * scale + offset:.0f}"


def shift_site(
    files: Sequence[Path], dest: Path, *, scale: float = 4.0, offset: float = 1000.0, seed: int = 0
) -> list[Path]:
    """Each file rewritten as the shifted site stores it, under a new random name in dest.

    The pixel data stay; the modality LUT (Rescale Slope/Intercept) maps them to
    scale * (the original site's values) + offset, and a stored window moves with them, so
    the displayed image, and what the model sees, is unchanged while the intensities (after
    the modality LUT, as the prediction log and the training manifest measure them) are not.
    Manufacturer and institution are the new site's; each source patient becomes a new one
    (name, ID) and each image gets new study, series and instance UIDs and accession number.
    """
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patients: dict[str, tuple[str, str]] = {}
    written = []
    for i, src in enumerate(files):
        ds = pydicom.dcmread(src)
        old_patient = str(ds.PatientID)
        if old_patient not in patients:
            name = "^".join("".join(rng.choice(_SYLLABLES, size=3)).capitalize() for _ in range(2))
            patients[old_patient] = (name, f"EGH{int(rng.integers(10**9, 10**10))}")
        ds.PatientName, ds.PatientID = patients[old_patient]
        ds.AccessionNumber = f"EG{int(rng.integers(10**9, 10**10))}"
        ds.Manufacturer, ds.InstitutionName, ds.StationName = MANUFACTURER, INSTITUTION, "EGX09"
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        ds.RescaleSlope, ds.RescaleIntercept = (
            f"{slope * scale:g}",
            f"{intercept * scale + offset:g}",
        )
        ds.RescaleType = ds.get("RescaleType", "US")
        if "WindowCenter" in ds and "WindowWidth" in ds:
            ds.WindowCenter = _scaled(ds.WindowCenter, scale, offset)
            ds.WindowWidth = _scaled(ds.WindowWidth, scale, 0.0)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(
                ds, keyword, generate_uid(entropy_srcs=["eastgate", str(seed), str(i), keyword])
            )
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = dest / f"eastgate-{rng.bytes(6).hex()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def upload_identifiers(files: Iterable[Path]) -> dict[str, str]:
    """{value: what it is} of the uploaded files: their UPLOAD_KEYWORDS values (of 8
    characters or more, tests.helpers.identifiers.dataset_values) and their names."""
    found: dict[str, str] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.update(dataset_values(ds, UPLOAD_KEYWORDS, min_length=8))
        found[path.name] = "file name"
        found[path.stem] = "file name"
    return found


def leaks(texts: dict[str, bytes], identifiers: dict[str, str]) -> list[str]:
    """'<where>: <what>' for each text (a file's bytes, a log) holding an identifier."""
    found = []
    for where, data in texts.items():
        kinds = sorted({kind for value, kind in identifiers.items() if value.encode() in data})
        found += [f"{where}: {kind}" for kind in kinds]
    return found
