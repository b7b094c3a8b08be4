"""MedMNIST-style .npz archives as DICOM, so they enter the same ingest path as hospital data.

An archive holds `{train,val,test}_images` (uint8, (N, H, W) or (N, H, W, 3)) and
`{train,val,test}_labels` ((N, 1) or (N,) integers). Each image becomes a Secondary Capture
file of its own pseudo-patient (MedMNIST has no patient ids); its official split is kept.
Optional `{split}_masks` ((N, H, W) class-index label maps, or (N, K, H, W) planes) go along
as masks/<split>_<index>.npy, named by labels.csv's `mask` column (data.task segmentation).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medflow.data.manifest import SPLITS
from medflow.io import atomic_dir

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class NpzRecord:
    """One converted image: its file (relative, forward slashes), label index and split."""

    path: str
    label: int
    split: str
    index: int  # position within the archive's split


def _checked_arrays(
    archive: np.lib.npyio.NpzFile, class_names: Sequence[str], name: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validate the archive, reporting every problem at once."""
    expected = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    missing = [k for k in expected if k not in archive.files]
    if missing:
        raise ValueError(
            f"{name} lacks the keys {missing}; a MedMNIST-style archive needs {expected}"
            f" (found {sorted(archive.files)})"
        )
    problems: list[str] = []
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
        if images.dtype != np.uint8:
            problems.append(f"{split}_images has dtype {images.dtype}, expected uint8")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            problems.append(
                f"{split}_images has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)"
            )
        if labels.ndim == 2 and labels.shape[1] != 1:
            problems.append(
                f"{split}_labels has shape {labels.shape}: {labels.shape[1]} label columns"
                " (a multi-label task); expected one label per image, shape (N, 1) or (N,)"
            )
        elif labels.ndim not in (1, 2):
            problems.append(f"{split}_labels has shape {labels.shape}, expected (N, 1) or (N,)")
        elif len(labels) != len(images):
            problems.append(
                f"{split}_labels has {len(labels)} labels but {split}_images has {len(images)}"
            )
        elif labels.size and not np.issubdtype(labels.dtype, np.integer):
            problems.append(f"{split}_labels has dtype {labels.dtype}, expected integers")
        else:
            flat = labels.reshape(-1).astype(np.int64)
            bad = sorted(set(np.unique(flat).tolist()) - set(range(len(class_names))))
            if bad:
                problems.append(
                    f"{split}_labels holds {bad[:10]}, outside range({len(class_names)}) ="
                    f" the indices of data.class_names {list(class_names)}"
                )
            arrays[split] = (images, flat)
    if problems:
        raise ValueError(f"{name} is not usable: " + "; ".join(problems))
    return arrays


def _checked_masks(
    archive: np.lib.npyio.NpzFile,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    name: str,
) -> dict[str, np.ndarray]:
    """The `{split}_masks` arrays present, checked against their images."""
    masks: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for split in SPLITS:
        if f"{split}_masks" not in archive.files:
            continue
        mask, images = archive[f"{split}_masks"], arrays[split][0]
        size = images.shape[1:3]
        if mask.ndim not in (3, 4) or len(mask) != len(images) or mask.shape[-2:] != size:
            problems.append(
                f"{split}_masks has shape {mask.shape}; expected ({len(images)}, {size[0]},"
                f" {size[1]}) label maps or ({len(images)}, K, {size[0]}, {size[1]}) planes"
            )
        elif not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
            problems.append(f"{split}_masks has dtype {mask.dtype}, expected integers")
        else:
            masks[split] = mask
    if problems:
        raise ValueError(f"{name} is not usable: " + "; ".join(problems))
    return masks


def _dataset(image: np.ndarray, uid_src: str, patient_id: str) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[uid_src, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_src, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_src, "series"])
    ds.PatientID = patient_id
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    photometric = "RGB" if image.ndim == 3 else "MONOCHROME2"
    ds.set_pixel_data(image, photometric, 8, generate_instance_uid=False)
    return ds


def npz_to_dicom(npz_path: Path, class_names: Sequence[str], out_dir: Path) -> list[NpzRecord]:
    """Convert every image of a MedMNIST-style archive into a DICOM file under out_dir.

    Writes out_dir/<split>/<split>_<index>.dcm and out_dir/labels.csv (path,label with class
    names), atomically. Raises ValueError naming the key or value when the archive is unusable.
    """
    npz_path, out_dir = Path(npz_path), Path(out_dir)
    digest = hashlib.sha256(npz_path.read_bytes()).hexdigest()
    with np.load(npz_path, allow_pickle=False) as archive:
        arrays = _checked_arrays(archive, class_names, npz_path.name)
    with np.load(npz_path, allow_pickle=False) as archive:
        masks = _checked_masks(archive, arrays, npz_path.name)
    records: list[NpzRecord] = []
    mask_paths: list[str] = []
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            images, labels = arrays[split]
            (tmp / split).mkdir()
            if split in masks:
                (tmp / "masks").mkdir(exist_ok=True)
                for i, mask in enumerate(masks[split]):
                    np.save(tmp / f"masks/{split}_{i:06d}.npy", mask, allow_pickle=False)
                    mask_paths.append(f"masks/{split}_{i:06d}.npy")
            else:
                mask_paths += [""] * len(images)
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                rel = f"{split}/{split}_{i:06d}.dcm"
                uid_src = f"medflow-npz/{digest}/{split}/{i}"
                patient_id = f"NPZ{digest[:8].upper()}{split[:2].upper()}{i:06d}"
                buf = io.BytesIO()
                pydicom.dcmwrite(
                    buf, _dataset(image, uid_src, patient_id), enforce_file_format=True
                )
                (tmp / rel).write_bytes(buf.getvalue())
                records.append(NpzRecord(path=rel, label=int(label), split=split, index=i))
        table = {
            "path": [r.path for r in records],
            "label": [class_names[r.label] for r in records],
        }
        if masks:
            table["mask"] = mask_paths
        pd.DataFrame(table).to_csv(tmp / LABELS_FILE, index=False)
    logger.info(
        "converted %s: %s images to DICOM",
        npz_path.name,
        ", ".join(f"{s} {len(arrays[s][0])}" for s in SPLITS),
    )
    return records
