"""The /segment DICOM SEG answer, read back by highdicom: it references the upload, names the
algorithm, and holds the masks of the JSON answer."""

from __future__ import annotations

import base64
import io

import highdicom as hd
import numpy as np
import pydicom
import pydicom.examples
import pytest
from PIL import Image

from medflow.serving.errors import ServeError
from medflow.serving.seg_dicom import build_seg, seg_source, wants_dicom
from medflow.serving.segment import segments
from tests.helpers.shared_data import shared_data

NAMES = ["lesion", "cyst"]


def _masks(rows: int, cols: int) -> np.ndarray:
    masks = np.zeros((2, rows, cols), np.uint8)
    masks[0, 10:30, 20:45] = 1
    masks[1, 25:40, 40:60] = 1  # overlaps segment 1
    return masks


def _read(raw: bytes) -> hd.seg.Segmentation:
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(raw)))


def test_seg_references_the_upload_and_holds_the_json_masks() -> None:
    ct = pydicom.examples.ct
    ct.PatientName, ct.PatientID = "Doe^Jane", "MRN-0042"
    before = ct.to_json_dict()
    masks = _masks(ct.Rows, ct.Columns)
    raw = build_seg(ct, masks, 0, NAMES, "medflow-seg", "v123")
    assert ct.to_json_dict() == before  # the upload is not modified

    seg = _read(raw)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    (study, series, sop) = seg.get_source_image_uids()[0]
    assert (study, series, sop) == (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert seg.StudyInstanceUID == ct.StudyInstanceUID
    assert seg.SeriesInstanceUID != ct.SeriesInstanceUID  # a series of its own
    assert seg.SOPInstanceUID != ct.SOPInstanceUID
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert refs[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    # segment labels are the class names; the algorithm is the model, name and version
    assert [s.SegmentLabel for s in seg.SegmentSequence] == NAMES
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medflow-seg", "v123")
    # the patient module is the upload's, nothing added
    assert (seg.PatientName, seg.PatientID) == ("Doe^Jane", "MRN-0042")

    pixels = seg.get_pixels_by_source_instance([ct.SOPInstanceUID], segment_numbers=[1, 2])
    np.testing.assert_array_equal(np.moveaxis(pixels[0], -1, 0), masks)
    # the JSON answer's masks are these very masks
    for k, segment in enumerate(segments(masks, NAMES, None)):
        with Image.open(io.BytesIO(base64.b64decode(segment.mask_png))) as im:
            np.testing.assert_array_equal(np.asarray(im) > 0, pixels[0, ..., k] > 0)


def test_empty_masks_still_make_a_seg() -> None:
    ct = pydicom.examples.ct
    seg = _read(build_seg(ct, np.zeros((1, 128, 128), np.uint8), 0, ["lesion"], "m", "1"))
    pixels = seg.get_pixels_by_source_instance([ct.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, 128, 128, 1) and not pixels.any()


def test_a_dx_without_patient_attributes_gets_them_empty_not_invented() -> None:
    """highdicom needs PatientName, PatientID ... (type 2): added empty on a copy of the
    header, never filled with values the upload did not carry."""
    dx = pydicom.dcmread(shared_data("dicom-seg/dx_image.dcm"))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        if keyword in dx:
            delattr(dx, keyword)
    source = seg_source(dx)
    assert "PixelData" not in source and "PixelData" in dx
    assert source.PatientName == "" and source.PatientID == "" and "PatientID" not in dx
    masks = np.zeros((1, dx.Rows, dx.Columns), np.uint8)
    masks[0, 5:9, 5:9] = 1
    seg = _read(build_seg(dx, masks, 0, ["lesion"], "m", "1"))
    assert seg.PatientID == "" and seg.PatientName == ""
    assert seg.get_source_image_uids()[0][2] == dx.SOPInstanceUID


def test_an_image_with_a_frame_of_reference_but_no_slice_thickness_is_readable() -> None:
    """A projection image (the synthetic DX: FrameOfReferenceUID and PixelSpacing, no
    SliceThickness): highdicom's reader refuses a Pixel Measures Sequence without a slice
    thickness, so the SEG leaves the spacing out and stays readable."""
    image = pydicom.examples.ct.copy()
    for keyword in ("SliceThickness", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(image, keyword)
    assert "FrameOfReferenceUID" in image and "PixelSpacing" in image
    masks = np.zeros((1, image.Rows, image.Columns), np.uint8)
    masks[0, 40:60, 30:50] = 1
    seg = _read(build_seg(image, masks, 0, ["lesion"], "m", "1"))
    pixels = seg.get_pixels_by_source_instance([image.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, ..., 0], masks[0])


def test_an_upload_without_uids_cannot_be_referenced() -> None:
    ct = pydicom.examples.ct
    del ct.SOPInstanceUID
    with pytest.raises(ServeError) as caught:
        build_seg(ct, np.zeros((1, 128, 128), np.uint8), 0, ["lesion"], "m", "1")
    assert (caught.value.status, caught.value.code) == (422, "invalid_image")
    assert "SOPInstanceUID" in caught.value.detail


@pytest.mark.parametrize(
    ("accept", "dicom"),
    [
        ("application/dicom", True),
        ("application/json, application/dicom;q=0.9", True),
        ("Application/DICOM", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accept_header(accept: str, dicom: bool) -> None:
    assert wants_dicom(accept) is dicom
