"""SEG -> mask decoding on real SEG objects built with highdicom (no mocks)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from medflow.data.seg_objects import SegError, decode_seg, is_segmentation
from tests.helpers.seg_files import segmentation, source_image

CLASSES = ["background", "lesion", "nodule"]


def _planes(decoded, k: int, shape: tuple[int, int], frames: int = 1) -> np.ndarray:
    """(frames, K, H, W) of what the SEG paints, by source frame (1-based numbers)."""
    out = np.zeros((frames, k, *shape), bool)
    for f in decoded.frames:
        out[(f.source_frame or 1) - 1, f.plane] |= f.pixels
    return out


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    """As read from a file: what ingest sees."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def test_binary_seg_decodes_to_the_drawn_mask_on_its_source() -> None:
    image = source_image(20, 16)
    mask = np.zeros((1, 20, 16, 1), bool)
    mask[0, 3:9, 4:10, 0] = True
    seg = _round_trip(segmentation([image], mask, ["Lesion"]))  # label case differs
    assert is_segmentation(seg) and not is_segmentation(image)
    decoded = decode_seg(seg, CLASSES)
    assert (decoded.rows, decoded.columns) == (20, 16)
    assert decoded.referenced() == [image.SOPInstanceUID]
    got = _planes(decoded, 2, (20, 16))[0]
    assert np.array_equal(got[0], mask[0, ..., 0])
    assert not got[1].any()


def test_fractional_seg_counts_pixels_from_one_half() -> None:
    image = source_image(20, 16)
    fractions = np.zeros((1, 20, 16, 1), np.float32)
    fractions[0, 2:6, 2:6, 0] = 0.9
    fractions[0, 10:14, 2:6, 0] = 0.3  # below one half: not in the segment
    fractions[0, 2:6, 10:14, 0] = 0.5
    seg = _round_trip(segmentation([image], fractions, ["nodule"], kind="FRACTIONAL"))
    got = _planes(decode_seg(seg, CLASSES), 2, (20, 16))[0]
    assert np.array_equal(got[1], fractions[0, ..., 0] >= 0.5)
    assert got[1].sum() == 32 and not got[0].any()


def test_overlapping_segments_keep_both_planes() -> None:
    image = source_image(20, 16)
    masks = np.zeros((1, 20, 16, 2), bool)
    masks[0, 2:10, 2:10, 0] = True
    masks[0, 6:14, 6:14, 1] = True  # overlaps the first
    got = _planes(
        decode_seg(_round_trip(segmentation([image], masks, CLASSES[1:])), CLASSES), 2, (20, 16)
    )[0]
    assert np.array_equal(got[0], masks[0, ..., 0])
    assert np.array_equal(got[1], masks[0, ..., 1])
    assert (got[0] & got[1]).sum() == 16


def test_multi_frame_seg_maps_frames_by_referenced_frame_number() -> None:
    image = source_image(20, 16, frames=3)
    masks = np.zeros((3, 20, 16, 2), bool)
    masks[0, 1:4, 1:4, 0] = True
    masks[2, 5:9, 3:7, 1] = True
    masks[2, 10:12, 10:12, 0] = True
    decoded = decode_seg(_round_trip(segmentation([image], masks, CLASSES[1:])), CLASSES)
    assert {f.source_frame for f in decoded.frames} == {1, 2, 3}
    got = _planes(decoded, 2, (20, 16), frames=3)
    assert np.array_equal(got, masks.transpose(0, 3, 1, 2))


def test_multi_frame_seg_of_single_frame_images_maps_each_frame_to_its_image() -> None:
    images = [source_image(20, 16) for _ in range(3)]
    study, series = images[0].StudyInstanceUID, images[0].SeriesInstanceUID
    frame_of_reference = pydicom.uid.generate_uid()
    for z, image in enumerate(images):  # one series of slices: highdicom needs positions
        image.StudyInstanceUID, image.SeriesInstanceUID = study, series
        image.PatientID = images[0].PatientID
        image.FrameOfReferenceUID = frame_of_reference
        image.ImagePositionPatient = [0.0, 0.0, float(z)]
        image.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        image.PixelSpacing, image.SliceThickness = [0.5, 0.5], 1.0
    masks = np.zeros((3, 20, 16, 1), bool)
    for z in range(3):
        masks[z, z : z + 4, 2:6, 0] = True
    decoded = decode_seg(_round_trip(segmentation(images, masks, ["lesion"])), CLASSES)
    by_image = {f.source_sop: f.pixels for f in decoded.frames if f.pixels.any()}
    for z, image in enumerate(images):
        assert np.array_equal(by_image[image.SOPInstanceUID], masks[z, ..., 0])


def test_a_segment_label_that_is_no_class_is_refused_naming_it() -> None:
    image = source_image(20, 16)
    mask = np.zeros((1, 20, 16, 2), bool)
    mask[0, 1:3, 1:3] = True
    seg = segmentation([image], mask, ["lesion", "liver"])
    with pytest.raises(SegError, match=r"SEG segment label.*'liver'"):
        decode_seg(seg, CLASSES)
    with pytest.raises(SegError, match="background"):  # the background is no segment
        decode_seg(segmentation([image], mask[..., :1], ["Background"]), CLASSES)
