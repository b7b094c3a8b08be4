"""Small synthetic manifests for the quality tests: valid by construction, broken on purpose."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from medflow.data.manifest import COLUMNS, MANIFEST_FILE

CLASS_NAMES = ["normal", "lesion"]
N_PATIENTS = 20
IMAGES_PER_PATIENT = 2


def split_of(patient: int) -> str:
    """Patients 0-11 train, 12-15 val, 16-19 test: every split holds both classes."""
    return "train" if patient < 12 else "val" if patient < 16 else "test"


def valid_manifest() -> pd.DataFrame:
    """40 images of 20 patients, 2 classes, 3 patient-disjoint splits, every column in COLUMNS."""
    rows = []
    for p in range(N_PATIENTS):
        label = p % 2
        for k in range(IMAGES_PER_PATIENT):
            image_id = f"2.25.{p:03d}{k}"
            rows.append(
                {
                    "image_id": image_id,
                    "file": f"images/{image_id}.dcm",
                    "frame": 0,
                    "patient_id": f"PSEUDO-{p:03d}",
                    "study_id": f"2.25.9{p:03d}",
                    "series_id": f"2.25.8{p:03d}",
                    "sop_instance_id": image_id,
                    "modality": "CR",
                    "manufacturer": "medflow-synth",
                    "site": "SITE-0001",
                    "sex": "FM"[p % 2],
                    "age_band": "40-59",
                    "rows": 64,
                    "columns": 64,
                    "frames": 1,
                    "pixel_spacing": 0.5,
                    "bits_stored": 12,
                    "photometric": "MONOCHROME2",
                    "label": label,
                    "label_name": CLASS_NAMES[label],
                    "split": split_of(p),
                    "content_hash": hashlib.sha256(image_id.encode()).hexdigest(),
                    "pixel_mean": 1000.0 + p,
                    "pixel_std": 120.0 + k,
                    "pixel_min": 0.0,
                    "pixel_max": 4095.0,
                    "pixel_constant_fraction": 0.02,
                    # segmentation only: what ingest writes for classification
                    "mask_file": "",
                    "mask_fraction": float("nan"),
                    "mask_components": 0,
                }
            )
    df = pd.DataFrame(rows)
    assert list(df.columns) == list(COLUMNS)
    return df


def write_manifest(df: pd.DataFrame, ingest_dir: Path) -> Path:
    """Write df as ingest_dir/manifest.csv, the way the ingest stage leaves it."""
    ingest_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(ingest_dir / MANIFEST_FILE, index=False)
    return ingest_dir


def shifted_manifest(
    labels: bool = True, manufacturer: bool = True, intensity: bool = True
) -> pd.DataFrame:
    """valid_manifest() with drifted class shares, manufacturer mix and/or intensities.

    labels: patients 0, 2, 4 and 6 (train, normal) become lesion: lesion share 0.5 -> 0.7.
    manufacturer: the 20 images of odd-numbered patients come from another vendor (TVD 0.5).
    intensity: pixel_mean +500, pixel_std x1.5 (the valid spread of pixel_mean is ~6).
    Every non-drift rule still holds.
    """
    df = valid_manifest()
    patient = df["patient_id"].str.removeprefix("PSEUDO-").astype(int)
    if labels:
        flip = patient.isin([0, 2, 4, 6])
        df.loc[flip, "label"] = 1
        df.loc[flip, "label_name"] = CLASS_NAMES[1]
    if manufacturer:
        df.loc[patient % 2 == 1, "manufacturer"] = "Other Vendor"
    if intensity:
        df["pixel_mean"] = df["pixel_mean"] + 500.0
        df["pixel_std"] = df["pixel_std"] * 1.5
    return df
