from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.config import PreprocessParams, SynthParams
from medflow.data.synthetic import run_synth
from medflow.imaging.preprocess import preprocess_dataset
from tests.helpers.identifiers import IDENTIFYING_KEYWORDS
from tests.helpers.synthetic import CLASSES, SMALL

# what the synthetic source sets: the identifiers and the quasi-identifiers
IDENTIFYING = (*IDENTIFYING_KEYWORDS, "PatientSex", "PatientAge", "StudyDate", "StudyTime")


def _datasets(folder: Path) -> dict[str, pydicom.Dataset]:
    labels = pd.read_csv(folder / "labels.csv")
    return {p: pydicom.dcmread(folder / p) for p in labels.path}


def test_labels_csv_lists_every_file_once_with_class_names(synth_dir: Path) -> None:
    labels = pd.read_csv(synth_dir / "labels.csv")
    assert list(labels.columns) == ["path", "label"]
    files = sorted(
        p.relative_to(synth_dir).as_posix()
        for p in synth_dir.rglob("*")
        if p.is_file() and p.name != "labels.csv"
    )
    assert sorted(labels.path) == files
    assert len(files) == SMALL.n_patients * SMALL.images_per_patient
    assert set(labels.label) == set(CLASSES)
    assert all("\\" not in p and not p.startswith("/") for p in labels.path)
    # Hospital exports often have no extension: a few files must look like that.
    assert any(not p.endswith(".dcm") for p in labels.path)
    assert any(p.endswith(".dcm") for p in labels.path)


def test_files_are_part10_dicom_with_identifying_tags(synth_dir: Path) -> None:
    for rel, ds in _datasets(synth_dir).items():
        assert (synth_dir / rel).read_bytes()[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality in ("DX", "CR")
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        for keyword in IDENTIFYING:
            assert str(ds.get(keyword, "")).strip(), f"{rel} lacks {keyword}"
        assert "^" in str(ds.PatientName)


def test_patients_share_identity_and_uids_are_unique(synth_dir: Path) -> None:
    datasets = _datasets(synth_dir)
    by_folder: dict[str, set[str]] = {}
    for rel, ds in datasets.items():
        by_folder.setdefault(rel.split("/")[0], set()).add(str(ds.PatientID))
    assert all(len(ids) == 1 for ids in by_folder.values())
    assert len({next(iter(ids)) for ids in by_folder.values()}) == SMALL.n_patients
    sops = [ds.SOPInstanceUID for ds in datasets.values()]
    assert len(set(sops)) == len(sops)


def test_sites_differ_in_storage_and_one_writes_monochrome1(synth_dir: Path) -> None:
    datasets = list(_datasets(synth_dir).values())
    assert len({ds.Manufacturer for ds in datasets}) == 3
    assert len({ds.InstitutionName for ds in datasets}) == 3
    assert {ds.PhotometricInterpretation for ds in datasets} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({ds.BitsStored for ds in datasets}) == 3
    assert any(ds.Rows != ds.Columns for ds in datasets)
    assert any("RescaleSlope" in ds for ds in datasets)
    assert any("WindowCenter" in ds for ds in datasets)
    assert len({float(ds.PixelSpacing[0]) for ds in datasets}) == 3


def test_every_file_goes_through_the_preprocessing_path(synth_dir: Path) -> None:
    for ds in _datasets(synth_dir).values():
        x, summary = preprocess_dataset(ds, PreprocessParams())
        assert x.shape == (1, 64, 64) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1


def test_same_seed_same_pixels_labels_and_uids(synth_dir: Path, tmp_path: Path) -> None:
    again = run_synth(SMALL, CLASSES, tmp_path / "again").out_dir
    a, b = _datasets(synth_dir), _datasets(again)
    assert list(a) == list(b)
    assert pd.read_csv(synth_dir / "labels.csv").equals(pd.read_csv(again / "labels.csv"))
    for rel in a:
        assert np.array_equal(a[rel].pixel_array, b[rel].pixel_array)
        assert a[rel].SOPInstanceUID == b[rel].SOPInstanceUID
        assert a[rel].PatientName == b[rel].PatientName


def test_other_seed_other_data(synth_dir: Path, tmp_path: Path) -> None:
    params = SynthParams(**{**SMALL.model_dump(), "seed": SMALL.seed + 1})
    other = _datasets(run_synth(params, CLASSES, tmp_path / "other").out_dir)
    first = _datasets(synth_dir)
    rel = next(iter(first))
    assert other[rel].SOPInstanceUID != first[rel].SOPInstanceUID
    assert not np.array_equal(other[rel].pixel_array, first[rel].pixel_array)


def test_only_binary_class_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 classes"):
        run_synth(SMALL, ["a", "b", "c"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_windows_written_in_files_fit_their_pixels(synth_dir: Path) -> None:
    windowed = [ds for ds in _datasets(synth_dir).values() if "WindowCenter" in ds]
    assert windowed
    for ds in windowed:
        centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
        pixels = ds.pixel_array
        inside = (pixels >= centre - width / 2) & (pixels <= centre + width / 2)
        # Covers the image, yet tighter than its full range: chosen for it, not a default.
        assert inside.mean() > 0.95 and width <= int(pixels.max()) - int(pixels.min())
