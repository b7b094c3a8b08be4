"""Synthetic chest-X-ray-like DICOM: a learnable, de-identification-worthy demo dataset.

Three fictional sites store the same anatomy differently (bit depth, rescale, matrix size,
spacing, MONOCHROME1) and every file carries fake identifiers. Class 1 images hold a faint
round lesion in one lung; for data.task segmentation its mask (where the lesion reaches half
its peak) is written as a DICOM SEG beside the image. The same `SynthParams.seed` gives the
same pixels, labels and UIDs.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from medflow.config import SynthParams
from medflow.io import atomic_dir

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"

# Lesion and noise strength in display units (soft tissue ~0.62, lung ~0.30), tuned to be
# learnable but not trivial (why: docs/decisions/synthetic-data.md).
LESION_AMPLITUDE = (0.14, 0.22)
LESION_SIGMA = (0.065, 0.095)  # fraction of the short image side
NOISE_SIGMA = 0.045
RIB_AMPLITUDE = 0.035
LOW_FREQ_AMPLITUDE = (0.01, 0.035)
# Every n-th image is written without the .dcm extension, as many hospital exports are.
NO_EXTENSION_EVERY = 11


@dataclass(frozen=True)
class Site:
    """One fictional scanner: how it stores the same display intensities."""

    manufacturer: str
    institution: str
    station: str
    modality: str
    rows: int
    columns: int
    spacing: float  # mm
    bits_stored: int
    photometric: str
    scale: float  # stored = offset + scale * intensity (inverted first for MONOCHROME1)
    offset: float
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: bool = False  # write the WindowCenter/Width the scanner's auto-window would choose


SITES = (
    Site("Northwind Imaging", "Lakeshore Synthetic Hospital", "NWDX01", "DX",
         96, 96, 0.40, 12, "MONOCHROME2", 3000.0, 400.0, window=True),
    Site("Contoso Medical", "Hillcrest Synthetic Clinic", "CMCR02", "CR",
         80, 80, 0.50, 8, "MONOCHROME1", 220.0, 20.0),
    Site("Fabrikam Radiography", "Riverside Synthetic Infirmary", "FBDX03", "DX",
         112, 128, 0.35, 16, "MONOCHROME2", 16000.0, 8000.0, rescale=(0.5, -1024.0)),
)  # fmt: skip

# Made-up syllables: fake names that are not real people and not common words.
_SYLLABLES = (
    "bra dov kel mir quo zan tev lor vyx sul gar fen nox pim rha wex jol tus yor hib".split()
)


@dataclass(frozen=True)
class SynthResult:
    """Where the synthetic dataset was written and how big it is."""

    out_dir: Path
    n_images: int
    n_patients: int


def _fake_name(rng: np.random.Generator, parts: int = 2) -> str:
    words = [
        "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        for _ in range(parts)
    ]
    return "^".join(words)


def _fake_date(rng: np.random.Generator, first_year: int, last_year: int) -> str:
    year, month, day = (
        rng.integers(first_year, last_year + 1),
        rng.integers(1, 13),
        rng.integers(1, 29),
    )
    return f"{year:04d}{month:02d}{day:02d}"


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, edge: float
) -> np.ndarray:
    """Soft ellipse mask in [0, 1]: 1 inside, a smooth ramp of width ~edge at the border."""
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return 1.0 / (1.0 + np.exp((d - 1.0) / edge))


def _render(
    anatomy: dict[str, float], site: Site, rng: np.random.Generator, lesion: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Display intensity image (rows, columns) in roughly [0, 1], bright = dense, and the
    lesion's mask (bool, same shape; all False without lesion): the pixels where the drawn
    Gaussian blob reaches half its peak (its full width at half maximum)."""
    h, w = site.rows, site.columns
    # Physical-ish coordinates: the short side spans [0, 1], so anatomy keeps its aspect ratio.
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy = (yy - (h - 1) / 2) / side + 0.5
    xx = (xx - (w - 1) / 2) / side + 0.5
    jy, jx = rng.normal(0, 0.012, size=2)  # positioning differs a little between exposures
    cy, cx = anatomy["cy"] + jy, anatomy["cx"] + jx

    body = _ellipse(yy, xx, cy, cx, anatomy["body_ry"], anatomy["body_rx"], 0.04)
    lungs = []
    for sign in (-1.0, 1.0):
        lungs.append(
            _ellipse(
                yy,
                xx,
                cy - 0.05,
                cx + sign * anatomy["lung_dx"],
                anatomy["lung_ry"],
                anatomy["lung_rx"],
                0.06,
            )
        )
    lung = np.maximum(*lungs)
    heart = _ellipse(yy, xx, cy + 0.12, cx + 0.06, 0.13, 0.12, 0.08)

    img = 0.07 + 0.55 * body - 0.32 * lung * body + 0.12 * heart * lung
    # Ribs: faint oblique stripes, only visible over the lungs.
    ribs = np.sin(
        2 * np.pi * (anatomy["rib_freq"] * yy + 1.5 * (xx - cx) ** 2) + anatomy["rib_phase"]
    )
    img += RIB_AMPLITUDE * ribs * lung
    # Smooth low-frequency variation (scatter, tissue thickness): a few long cosines.
    for _ in range(3):
        fy, fx = rng.uniform(0.3, 1.6, size=2)
        img += rng.uniform(*LOW_FREQ_AMPLITUDE) * np.cos(
            2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi)
        )
    mask = np.zeros((h, w), dtype=bool)
    if lesion:
        # Anywhere inside one lung, within 65% of its radii.
        r, t = np.sqrt(rng.uniform()) * 0.65, rng.uniform(0, 2 * np.pi)
        ly = cy - 0.05 + r * np.sin(t) * anatomy["lung_ry"]
        lx = cx + rng.choice([-1.0, 1.0]) * anatomy["lung_dx"] + r * np.cos(t) * anatomy["lung_rx"]
        sigma, amp = rng.uniform(*LESION_SIGMA), rng.uniform(*LESION_AMPLITUDE)
        img += amp * np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * sigma**2))
        # exp(-d^2 / 2 sigma^2) >= 1/2, without a second exp (no random draw either)
        mask = (yy - ly) ** 2 + (xx - lx) ** 2 <= 2 * sigma**2 * np.log(2.0)
    # Exposure differs between images; noise last.
    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03)
    img += rng.normal(0, NOISE_SIGMA, size=img.shape)
    return img, mask


def _to_stored(img: np.ndarray, site: Site) -> np.ndarray:
    values = 1.0 - img if site.photometric == "MONOCHROME1" else img
    stored = np.rint(site.offset + site.scale * values)
    dtype = np.uint8 if site.bits_stored <= 8 else np.uint16
    return np.clip(stored, 0, 2**site.bits_stored - 1).astype(dtype)


def _dataset(
    site: Site, pixels: np.ndarray, tags: dict[str, object], uids: dict[str, str]
) -> Dataset:
    sop_class = (
        DigitalXRayImageStorageForPresentation
        if site.modality == "DX"
        else (ComputedRadiographyImageStorage)
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Modality = site.modality
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.StationName = site.station
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    spacing = [f"{site.spacing:.2f}", f"{site.spacing:.2f}"]
    ds.PixelSpacing = spacing
    if site.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = spacing
    ds.set_pixel_data(pixels, site.photometric, site.bits_stored, generate_instance_uid=False)
    if site.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in site.rescale)
        ds.RescaleType = "US"
    if site.window:
        # Like a DX console's auto-window: from this image's own histogram (no rescale here).
        # Why not per site: docs/decisions/synthetic-data.md.
        lo, hi = np.percentile(pixels, [0.5, 99.5])
        ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.0f}", f"{max(hi - lo, 1):.0f}"
    return ds


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["medflow-synth", str(seed), *map(str, parts)])


def _segmentation(
    image: Dataset, mask: np.ndarray, label: str, seed: int, p: int, i: int
) -> Dataset:
    """The lesion's mask as a BINARY DICOM SEG of `image` (same study and patient, source
    image referenced per frame); deterministic, like the image."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=_uid(seed, p, i, "seg-series"),
        series_number=2,
        sop_instance_uid=_uid(seed, p, i, "seg-sop"),
        instance_number=1,
        manufacturer="medflow",
        manufacturer_model_name="medflow-synth",
        software_versions="1",
        device_serial_number="0001",
    )
    # highdicom stamps the time of writing: the study's own keeps the bytes reproducible
    seg.ContentDate, seg.ContentTime = image.StudyDate, image.StudyTime
    for keyword in ("SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, image.StudyDate if keyword.endswith("Date") else image.StudyTime)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{image.StudyDate}{image.StudyTime}"
    dimensions = _uid(seed, p, i, "seg-dimensions")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = dimensions
    return seg


def run_synth(
    params: SynthParams,
    class_names: list[str],
    out_dir: Path,
    task: str = "classification",
) -> SynthResult:
    """Write a synthetic chest-X-ray-like DICOM dataset with labels.csv into out_dir.

    task "segmentation" also writes each lesion image's mask as a DICOM SEG beside it
    (<patient>/SEG<n>.dcm, segment label class_names[1]); labels.csv still lists the images
    (not the SEGs), labelled by their masks. The images are the same for both tasks.
    """
    if len(class_names) != 2:
        raise ValueError(
            f"synthetic data is binary (no lesion / lesion) but data.class_names has"
            f" {len(class_names)} classes: {class_names}; use exactly two, e.g. [normal, lesion]"
        )
    out_dir = Path(out_dir)
    rows: list[tuple[str, str]] = []
    with atomic_dir(out_dir) as tmp:
        for p in range(params.n_patients):
            rng = np.random.default_rng([params.seed, p])
            site = SITES[p % len(SITES)]
            anatomy = {
                "cy": rng.normal(0.52, 0.02),
                "cx": rng.normal(0.5, 0.02),
                "body_ry": rng.uniform(0.42, 0.48),
                "body_rx": rng.uniform(0.38, 0.45),
                "lung_dx": rng.uniform(0.15, 0.18),
                "lung_ry": rng.uniform(0.24, 0.29),
                "lung_rx": rng.uniform(0.10, 0.13),
                "rib_freq": rng.uniform(6.0, 8.0),
                "rib_phase": rng.uniform(0, 2 * np.pi),
            }
            sex = str(rng.choice(["F", "M"]))
            birth = _fake_date(rng, 1935, 2005)
            patient_tags: dict[str, object] = {
                "PatientName": _fake_name(rng),
                "PatientID": f"MRN{int(rng.integers(10**7, 10**8))}{p:04d}",
                "PatientBirthDate": birth,
                "PatientSex": sex,
                "ReferringPhysicianName": _fake_name(rng),
            }
            folder = f"P{p + 1:04d}"
            (tmp / folder).mkdir()
            for i in range(params.images_per_patient):
                img_rng = np.random.default_rng([params.seed, p, i + 1])
                has_lesion = bool(img_rng.uniform() < params.lesion_prevalence)
                study_date = _fake_date(img_rng, 2015, 2024)
                age = max(0, int(study_date[:4]) - int(birth[:4]))
                tags = {
                    **patient_tags,
                    "PatientAge": f"{min(age, 999):03d}Y",
                    "AccessionNumber": f"ACC{int(img_rng.integers(10**8, 10**9))}",
                    "StudyDate": study_date,
                    "StudyTime": f"{img_rng.integers(7, 19):02d}{img_rng.integers(0, 60):02d}00",
                    "ContentDate": study_date,
                    "StudyID": f"{i + 1}",
                    "StudyDescription": "CHEST PA",
                }
                uids = {k: _uid(params.seed, p, i, k) for k in ("study", "series", "sop", "frame")}
                img, mask = _render(anatomy, site, img_rng, has_lesion)
                pixels = _to_stored(img, site)
                ds = _dataset(site, pixels, tags, uids)
                n = p * params.images_per_patient + i
                suffix = "" if n % NO_EXTENSION_EVERY == NO_EXTENSION_EVERY - 1 else ".dcm"
                rel = f"{folder}/IM{i + 1:04d}{suffix}"
                buf = io.BytesIO()
                pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                (tmp / rel).write_bytes(buf.getvalue())
                if task == "segmentation":
                    has_lesion = bool(mask.any())
                    if has_lesion:
                        seg = _segmentation(ds, mask, class_names[1], params.seed, p, i)
                        seg_buf = io.BytesIO()
                        pydicom.dcmwrite(seg_buf, seg, enforce_file_format=True)
                        (tmp / f"{folder}/SEG{i + 1:04d}.dcm").write_bytes(seg_buf.getvalue())
                rows.append((rel, class_names[int(has_lesion)]))
        pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp / LABELS_FILE, index=False)
    n_lesion = sum(label == class_names[1] for _, label in rows)
    logger.info(
        "synthetic dataset: %d images of %d patients (%d %s) in %s",
        len(rows),
        params.n_patients,
        n_lesion,
        class_names[1],
        out_dir,
    )
    return SynthResult(out_dir=out_dir, n_images=len(rows), n_patients=params.n_patients)
