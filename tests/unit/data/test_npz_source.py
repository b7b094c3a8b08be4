from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.data.npz_source import npz_to_dicom
from tests.helpers.npz_archives import SIZES, make_npz
from tests.helpers.shared_data import shared_data

CLASSES = ["normal", "pneumonia"]


def test_converts_every_image_with_label_and_official_split(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "tiny.npz")
    records = npz_to_dicom(npz, CLASSES, tmp_path / "out")
    assert Counter(r.split for r in records) == SIZES
    archive = np.load(npz)
    for r in records:
        ds = pydicom.dcmread(tmp_path / "out" / r.path)
        assert ds.Modality == "OT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert np.array_equal(ds.pixel_array, archive[f"{r.split}_images"][r.index])
        assert r.label == int(archive[f"{r.split}_labels"][r.index, 0])
    patients = {pydicom.dcmread(tmp_path / "out" / r.path).PatientID for r in records}
    assert len(patients) == len(records)  # each image its own pseudo-patient
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert sorted(labels.path) == sorted(r.path for r in records)
    assert set(labels.label) <= set(CLASSES)


def test_rgb_images_become_rgb_dicom(tmp_path: Path) -> None:
    records = npz_to_dicom(make_npz(tmp_path / "rgb.npz", rgb=True), CLASSES, tmp_path / "out")
    ds = pydicom.dcmread(tmp_path / "out" / records[0].path)
    assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.shape == (28, 28, 3)


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "tiny.npz")
    first = npz_to_dicom(npz, CLASSES, tmp_path / "a")
    second = npz_to_dicom(npz, CLASSES, tmp_path / "b")
    assert first == second
    uids = [pydicom.dcmread(tmp_path / d / first[0].path).SOPInstanceUID for d in ("a", "b")]
    assert uids[0] == uids[1]


def test_missing_keys_are_named(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "bad.npz", val_labels=None)
    with pytest.raises(ValueError, match="val_labels"):
        npz_to_dicom(npz, CLASSES, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_multi_label_arrays_are_refused(tmp_path: Path) -> None:
    labels = np.zeros((SIZES["train"], 3), dtype=np.uint8)
    npz = make_npz(tmp_path / "multi.npz", train_labels=labels)
    with pytest.raises(ValueError, match=r"train_labels.*multi-label"):
        npz_to_dicom(npz, CLASSES, tmp_path / "out")


def test_labels_outside_class_range_are_named(tmp_path: Path) -> None:
    labels = np.array([[0], [1], [7]], dtype=np.uint8)
    npz = make_npz(tmp_path / "range.npz", val_labels=labels)
    with pytest.raises(ValueError, match=r"val_labels holds \[7\].*range\(2\)"):
        npz_to_dicom(npz, CLASSES, tmp_path / "out")


def test_wrong_image_dtype_is_named(tmp_path: Path) -> None:
    images = np.zeros((SIZES["test"], 28, 28), dtype=np.float32)
    npz = make_npz(tmp_path / "float.npz", test_images=images)
    with pytest.raises(ValueError, match="test_images has dtype float32"):
        npz_to_dicom(npz, CLASSES, tmp_path / "out")


def test_pneumoniamnist_converts_quickly(tmp_path: Path) -> None:
    npz = shared_data("pneumoniamnist.npz")
    start = time.perf_counter()
    records = npz_to_dicom(npz, CLASSES, tmp_path / "out")
    elapsed = time.perf_counter() - start
    archive = np.load(npz)
    expected = {s: len(archive[f"{s}_labels"]) for s in ("train", "val", "test")}
    assert Counter(r.split for r in records) == expected
    assert Counter(r.label for r in records)[1] == sum(
        int(archive[f"{s}_labels"].sum()) for s in expected
    )
    assert elapsed < 45, f"conversion took {elapsed:.0f} s"
    ds = pydicom.dcmread(tmp_path / "out" / records[-1].path)
    assert ds.Rows == ds.Columns == 28
