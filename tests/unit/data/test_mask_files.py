"""labels.csv `path,mask` rows: PNG and NIfTI label maps become the images' masks."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medflow.config import Params
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.mask_files import MaskFileError, read_mask_file
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset, write_dicom


def test_png_and_nifti_label_maps_read_as_planes(tmp_path: Path) -> None:
    labels = np.zeros((6, 5), np.uint8)
    labels[1:3, 1:3] = 1
    labels[4, 0:2] = 2
    Image.fromarray(labels).save(tmp_path / "m.png")
    nibabel.save(nibabel.Nifti1Image(labels[..., None], np.eye(4)), tmp_path / "m.nii.gz")
    for name in ("m.png", "m.nii.gz"):
        planes = read_mask_file(tmp_path / name, 2)
        assert planes.shape == (2, 6, 5) and planes.dtype == np.uint8
        assert np.array_equal(planes[0], labels == 1) and np.array_equal(planes[1], labels == 2)
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(tmp_path / "binary.png")
    assert np.array_equal(read_mask_file(tmp_path / "binary.png", 1)[0], labels > 0)
    with pytest.raises(MaskFileError, match=r"value\(s\) \[2\]"):
        read_mask_file(tmp_path / "m.png", 1)


def test_ingest_takes_masks_from_labels_csv_and_quarantines_a_misfit(tmp_path: Path) -> None:
    source = tmp_path / "source"
    mask = np.zeros((12, 10), np.uint8)
    mask[2:6, 3:7] = 1
    for name in ("a", "b", "c"):
        pixels = np.arange(120, dtype=np.uint16).reshape(12, 10)
        write_dicom(image_dataset(pixels, PatientID=f"P{name}"), source / f"{name}.dcm")
    Image.fromarray(mask * 255).save(source / "a_mask.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(source / "c_mask.png")  # wrong size
    pd.DataFrame(
        {"path": ["a.dcm", "b.dcm", "c.dcm"], "mask": ["a_mask.png", "", "c_mask.png"]}
    ).to_csv(source / "labels.csv", index=False)
    params = Params.model_validate(
        {
            "data": {
                "source": str(source),
                "class_names": ["bg", "lesion"],
                "task": "segmentation",
            },
            "ingest": {"max_quarantine_fraction": 1.0, "workers": 1},
        }
    )
    result = run_ingest(IngestConfig.from_params(params), source, tmp_path / "out", KEY)
    out = tmp_path / "out"
    assert result.n_images == 2  # the mask PNGs are no files to ingest
    quarantine = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert list(quarantine.path) == ["c.dcm"] and quarantine.category[0] == "mask file"
    assert "5x5" in quarantine.reason[0] and "12x10" in quarantine.reason[0]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False).sort_values("label")
    assert manifest.label.tolist() == [0, 1]
    assert np.array_equal(np.load(out / manifest.mask_file.iloc[1])[0], mask)
    assert manifest.mask_fraction.iloc[1] == pytest.approx(16 / 120)


def test_npz_masks_go_along_with_their_images(tmp_path: Path) -> None:
    from tests.helpers.npz_archives import SIZES, make_npz

    masks = {}
    for split, n in SIZES.items():
        maps = np.zeros((n, 28, 28), np.uint8)
        maps[::2, 5:12, 6:10] = 1  # every other image holds a lesion
        masks[f"{split}_masks"] = maps
    archive = make_npz(tmp_path / "archive.npz", **masks)
    params = Params.model_validate(
        {"data": {"source": str(archive), "class_names": ["bg", "lesion"], "task": "segmentation"}}
    )
    result = run_ingest(IngestConfig.from_params(params), archive, tmp_path / "out", KEY)
    assert result.n_images == sum(SIZES.values())
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert manifest.label.sum() == sum((n + 1) // 2 for n in SIZES.values())
    for row in manifest.itertuples():
        mask = np.load(tmp_path / "out" / row.mask_file)
        assert mask.shape == (1, 28, 28) and mask.sum() == 28 * row.label
        assert row.mask_components == row.label
