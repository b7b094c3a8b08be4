"""The /segment JSON answer: masks back in the upload's geometry, areas, boxes, PNGs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pydicom.examples
import pytest
from PIL import Image

from medflow.config import PreprocessParams
from medflow.imaging.masks import to_model_mask
from medflow.imaging.preprocess import preprocess_dataset
from medflow.serving.segment import (
    bounding_box,
    overlay,
    overlay_png,
    pixel_spacing,
    segments,
    source_image,
    source_masks,
)


def _png(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


def test_model_space_probabilities_come_back_in_the_uploads_geometry() -> None:
    """A disc on a 60 x 100 image, taken to model space as preprocessing takes the image,
    thresholded there and mapped back: the same disc, the upload's rows and columns."""
    rows, cols = np.mgrid[:60, :100]
    truth = ((rows - 30) ** 2 + (cols - 40) ** 2 <= 12**2).astype(np.uint8)[None]
    model = to_model_mask(truth, 200).astype(np.float32) * 0.9  # "probabilities"
    masks = source_masks(model, 0.5, (60, 100))
    assert masks.shape == (1, 60, 100) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, truth)
    # below the threshold: nothing
    assert source_masks(model, 0.95, (60, 100)).sum() == 0
    with pytest.raises(ValueError, match="K, S, S"):
        source_masks(model[0], 0.5, (60, 100))


def test_threshold_is_inclusive() -> None:
    probs = np.full((1, 4, 4), 0.3, dtype=np.float32)
    assert source_masks(probs, 0.3, (4, 4)).all()


def test_pixel_spacing_and_its_absence() -> None:
    ct = pydicom.examples.ct
    assert pixel_spacing(ct) == (0.661468, 0.661468)
    del ct.PixelSpacing
    assert pixel_spacing(ct) is None
    ct.PixelSpacing = [0, 1]
    assert pixel_spacing(ct) is None


def test_bounding_box_is_inclusive_and_none_when_empty() -> None:
    plane = np.zeros((10, 12), np.uint8)
    assert bounding_box(plane) is None
    plane[2:5, 7:11] = 1
    box = bounding_box(plane)
    assert (box.row_min, box.row_max, box.col_min, box.col_max) == (2, 4, 7, 10)


def test_segments_give_area_box_and_png_per_plane() -> None:
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 3:7, 10:15] = 1  # 4 x 5 = 20 pixels
    segs = segments(masks, ["lesion", "cyst"], (0.5, 2.0))
    assert [s.name for s in segs] == ["lesion", "cyst"]
    assert [s.number for s in segs] == [1, 2]
    lesion, cyst = segs
    assert lesion.area_px == 20 and lesion.area_mm2 == pytest.approx(20.0)
    assert lesion.bounding_box.model_dump() == {
        "row_min": 3,
        "row_max": 6,
        "col_min": 10,
        "col_max": 14,
    }
    png = _png(lesion.mask_png)
    assert png.shape == (20, 30) and set(np.unique(png)) == {0, 255}
    np.testing.assert_array_equal(png == 255, masks[0] == 1)
    assert cyst.area_px == 0 and cyst.area_mm2 == 0.0 and cyst.bounding_box is None
    assert not _png(cyst.mask_png).any()
    # without PixelSpacing: no mm²
    assert segments(masks, ["lesion", "cyst"], None)[0].area_mm2 is None
    with pytest.raises(ValueError, match="2 mask planes for 1 segment names"):
        segments(masks, ["lesion"], None)


def test_overlay_colours_the_segments_over_the_frame() -> None:
    ct = pydicom.examples.ct
    params = PreprocessParams(image_size=64)
    _, summary = preprocess_dataset(ct, params)
    grey = source_image(ct, summary.frame_used, params)
    assert grey.shape == (128, 128) and 0 <= grey.min() and grey.max() <= 1
    masks = np.zeros((1, 128, 128), np.uint8)
    masks[0, 40:60, 40:60] = 1
    rgb = overlay(grey, masks)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    inside, outside = rgb[50, 50], rgb[5, 5]
    assert inside[0] > inside[1] and inside[0] > inside[2]  # red over the segment
    assert outside[0] == outside[1] == outside[2]  # grey elsewhere
    np.testing.assert_array_equal(_png(overlay_png(grey, masks)), rgb)
