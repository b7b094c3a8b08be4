"""Masks take the image's geometry: the one path for train, eval and serving, both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medflow.config import DataParams, DeidParams, IngestParams, PreprocessParams
from medflow.data.arrays import load_ids, load_masks, load_split, read_meta
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.data.preprocessing import run_preprocess
from medflow.imaging.masks import model_pixel_spacing, to_model_mask, to_source_mask
from medflow.imaging.preprocess import to_model_input
from tests.helpers.deid_key import KEY
from tests.helpers.npz_archives import make_npz


def _box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows, cols] = 1
    return mask


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (30, 30), (100, 60)])
def test_a_mask_lands_where_the_image_does(shape: tuple[int, int]) -> None:
    """A bright box in an image and the same box as a mask: after the image's resize the
    bright pixels are the mask's (away from the box's blurred edge)."""
    mask = _box(shape, slice(shape[0] // 4, shape[0] // 2), slice(shape[1] // 3, shape[1] - 2))
    image = to_model_input(mask.astype(np.float32), PreprocessParams(image_size=32))[0]
    model_mask = to_model_mask(mask, 32)
    assert model_mask.shape == (1, 32, 32) and model_mask.dtype == np.uint8
    assert set(np.unique(model_mask)) <= {0, 1}
    assert np.all(model_mask[0][image > 0.9] == 1)
    assert np.all(model_mask[0][image < 0.1] == 0)


def test_overlapping_segments_stay_apart_and_come_back() -> None:
    a = _box((48, 32), slice(5, 30), slice(4, 20))
    b = _box((48, 32), slice(20, 40), slice(10, 28))
    mask = np.stack([a, b])
    model = to_model_mask(mask, 48)  # no resize: padding only
    assert model[0].sum() == a.sum() and model[1].sum() == b.sum()
    assert np.array_equal(to_source_mask(model, (48, 32)), mask)
    # a resize and back keeps the masks up to the edge pixels
    back = to_source_mask(to_model_mask(mask, 64), (48, 32))
    for plane, original in zip(back, mask, strict=True):
        assert np.abs(plane.astype(int) - original).sum() <= 0.1 * original.sum()


def test_bad_masks_are_refused_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        to_model_mask(np.zeros((1, 2, 3, 4)), 8)
    with pytest.raises(ValueError, match=r"\(K, S, S\)"):
        to_source_mask(np.zeros((1, 8, 9)), (8, 9))


def test_model_pixel_spacing_scales_by_the_longer_side() -> None:
    assert model_pixel_spacing(0.5, (200, 100), 50) == pytest.approx(2.0)
    assert np.isnan(model_pixel_spacing(float("nan"), (200, 100), 50))


def test_preprocess_writes_masks_beside_the_images(tmp_path: Path) -> None:
    """An ingested dataset whose manifest names a mask per row: preprocess writes
    <split>_m.npy in the images' order and geometry, and meta.json counts the segments."""
    make_npz(tmp_path / "tiny.npz")
    data = DataParams(source="tiny.npz", class_names=["normal", "pneumonia"])
    config = IngestConfig(data, IngestParams(workers=1), DeidParams(), PreprocessParams())
    ingested = tmp_path / "ingested"
    run_ingest(config, tmp_path / "tiny.npz", ingested, key=KEY)
    manifest = read_manifest(ingested)
    (ingested / "masks").mkdir()
    files = []
    for i, row in enumerate(manifest.itertuples()):
        shape = (int(row.rows), int(row.columns))
        mask = _box(shape, slice(2, 2 + 4 + i % 10), slice(3, 12))[None]
        rel = f"masks/{row.image_id}.npy".replace(":", "_")
        np.save(ingested / rel, mask)
        files.append(rel)
    manifest.assign(mask_file=files).to_csv(ingested / MANIFEST_FILE, index=False)

    out = tmp_path / "arrays"
    run_preprocess(PreprocessParams(), ingested, out)
    meta = read_meta(out)
    assert meta.segments == 1
    size = meta.preprocess.image_size
    by_id = dict(zip(manifest["image_id"], files, strict=True))
    for split in ("train", "val", "test"):
        x, _ = load_split(out, split)
        masks = load_masks(out, split)
        assert masks.shape == (len(x), 1, size, size) and masks.dtype == np.uint8
        for image_id, m in zip(load_ids(out, split), masks, strict=True):
            expected = to_model_mask(np.load(ingested / by_id[image_id]), size)
            assert np.array_equal(m, expected)


def test_classification_arrays_have_no_masks(tmp_path: Path) -> None:
    make_npz(tmp_path / "tiny.npz")
    data = DataParams(source="tiny.npz", class_names=["normal", "pneumonia"])
    config = IngestConfig(data, IngestParams(workers=1), DeidParams(), PreprocessParams())
    run_ingest(config, tmp_path / "tiny.npz", tmp_path / "ingested", key=KEY)
    run_preprocess(PreprocessParams(), tmp_path / "ingested", tmp_path / "arrays")
    assert read_meta(tmp_path / "arrays").segments == 0
    with pytest.raises(FileNotFoundError, match="preprocess"):
        load_masks(tmp_path / "arrays", "train")
