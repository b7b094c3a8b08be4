"""Reading DICOM safely and deciding what is an image to learn from (real and synthetic files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedUSVolumeStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage,
    OphthalmicThicknessMapStorage,
    ParametricMapStorage,
    SegmentationStorage,
    generate_uid,
)

from medflow.imaging.dicom import DicomError, NotAnImage, check_image, read_dicom
from tests.helpers.dicom_files import image_dataset, raw_dataset_bytes, write_dicom

LIMIT = 64 * 1024 * 1024


def _non_image(sop_class: str, *, with_pixels: bool) -> Dataset:
    """A valid instance of a non-image SOP class, optionally carrying pixel data."""
    if with_pixels:
        return image_dataset(np.ones((4, 4), np.uint16), sop_class=sop_class)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "PR"
    return ds


# ------------------------------------------------------------------------------ read_dicom


def test_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for source in (empty, str(empty), b""):
        with pytest.raises(DicomError, match=r"empty file \(0 bytes\)"):
            read_dicom(source)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"\x89PNG\r\n\x1a\n" + bytes(200),
        bytes(1000),
    ],
    ids=["random", "png", "zeros"],
)
def test_garbage_is_refused_as_not_dicom(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(data)
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dicom(path)


@pytest.mark.parametrize(
    ("implicit", "little"), [(True, True), (False, True), (False, False)], ids=str
)
@pytest.mark.parametrize("kind", ["path", "bytes", "file"])
def test_preamble_less_image_is_read(
    tmp_path: Path, implicit: bool, little: bool, kind: str
) -> None:
    name = "MR_small.dcm" if little else "MR_small_bigendian.dcm"
    data = raw_dataset_bytes(name, implicit=implicit, little=little)
    assert data[128:132] != b"DICM"
    path = tmp_path / "raw"
    path.write_bytes(data)
    source = {"path": path, "bytes": data, "file": io.BytesIO(data)}[kind]
    ds = read_dicom(source)
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert ds.SOPInstanceUID == reference.SOPInstanceUID
    assert ds.original_encoding == (implicit, little)
    check_image(ds, LIMIT)  # an image: accepted


def test_file_object_is_read_from_its_current_position() -> None:
    data = examples.get_path("ct").read_bytes()
    stream = io.BytesIO(b"\x00" * 37 + data)
    stream.seek(37)
    assert read_dicom(stream).SOPInstanceUID == examples.ct.SOPInstanceUID


def test_preamble_less_non_image_is_read_then_refused() -> None:
    # An RT Ion Plan written as a bare data set (no preamble, no meta)
    ds = read_dicom(get_testdata_file("ExplVR_LitEndNoMeta.dcm"))
    with pytest.raises(NotAnImage, match="RT Ion Plan Storage"):
        check_image(ds, LIMIT)


def test_truncated_pixel_data_is_refused_when_read() -> None:
    data = examples.get_path("ct").read_bytes()[:-5000]
    with pytest.raises(DicomError, match=r"truncated file: it ends inside PixelData.*32,768"):
        read_dicom(data)


def test_a_file_cut_inside_a_header_value_is_truncated_not_imageless() -> None:
    path = examples.get_path("ct")
    name = pydicom.dcmread(path).get_item("PatientName")
    cut = name.value_tell + 2  # inside the value of PatientName
    data = path.read_bytes()
    with pytest.raises(DicomError, match="truncated file"):
        read_dicom(data[:cut])


# ----------------------------------------------------------------------------- check_image


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color", "ybr_color", "palette_color", "jpeg2k"])
def test_real_images_pass(name: str) -> None:
    check_image(getattr(examples, name), LIMIT)


@pytest.mark.parametrize(
    ("path", "sop_name"),
    [
        (examples.get_path("rt_plan"), "RT Plan Storage"),
        (examples.get_path("rt_dose"), "RT Dose Storage"),  # has pixel data, still no image
        (examples.get_path("rt_ss"), "RT Structure Set Storage"),
        (get_testdata_file("liver_1frame.dcm"), "Segmentation Storage"),
        (get_testdata_file("test-SR.dcm"), "Comprehensive SR Storage"),
        (get_testdata_file("reportsi.dcm"), "Basic Text SR Storage"),
        (examples.get_path("waveform"), "12-lead ECG Waveform Storage"),
    ],
    ids=["rt_plan", "rt_dose", "rt_struct", "seg", "comprehensive_sr", "text_sr", "ecg"],
)
def test_real_non_images_are_not_images(path: Path | str, sop_name: str) -> None:
    ds = read_dicom(Path(path))
    with pytest.raises(NotAnImage, match=f"not an image to learn from: {sop_name}"):
        check_image(ds, LIMIT)


@pytest.mark.parametrize(
    ("sop_class", "with_pixels"),
    [
        (GrayscaleSoftcopyPresentationStateStorage, False),
        (ParametricMapStorage, True),
        (SegmentationStorage, True),
        # derived results whose names lack "Image Storage", like Enhanced US Volume's
        (OphthalmicThicknessMapStorage, True),
        (OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage, True),
    ],
)
def test_synthetic_non_images_are_not_images(
    tmp_path: Path, sop_class: str, with_pixels: bool
) -> None:
    path = write_dicom(_non_image(sop_class, with_pixels=with_pixels), tmp_path / "x.dcm")
    with pytest.raises(NotAnImage, match=sop_class.replace(".", r"\.")):
        check_image(read_dicom(path), LIMIT)


def test_not_an_image_is_a_dicom_error() -> None:
    # Callers that catch DicomError (serving) must also catch NotAnImage.
    with pytest.raises(DicomError):
        check_image(examples.rt_plan, LIMIT)


def test_unknown_sop_class_with_pixels_is_accepted() -> None:
    ds = image_dataset(np.ones((4, 4), np.uint16), sop_class="1.2.826.0.1.3680043.9.9999.1")
    check_image(ds, LIMIT)


def test_image_without_pixel_data_is_refused_but_not_as_non_image() -> None:
    ds = pydicom.dcmread(examples.get_path("ct"))
    del ds.PixelData
    with pytest.raises(DicomError, match=r"no pixel data \(CT Image Storage") as info:
        check_image(ds, LIMIT)
    assert not isinstance(info.value, NotAnImage)


def test_huge_header_is_refused_without_allocating() -> None:
    ds = image_dataset(np.ones((4, 4), np.uint16))
    ds.Rows = ds.Columns = 60000
    with pytest.raises(DicomError, match=r"60000 x 60000 .*above the limit of 67,108,864"):
        check_image(ds, LIMIT)


def test_size_cap_counts_samples_per_pixel_and_is_inclusive() -> None:
    ds = examples.rgb_color  # 240 x 320 x 3
    per_frame = 240 * 320 * 3
    check_image(ds, per_frame)
    with pytest.raises(DicomError, match="image too large"):
        check_image(ds, per_frame - 1)


def test_size_cap_is_per_frame() -> None:
    ds = examples.ybr_color  # 30 frames of 240 x 320 x 3
    check_image(ds, 240 * 320 * 3)


@pytest.mark.parametrize(
    ("keyword", "value", "match"),
    [
        ("Rows", 0, "implausible image header: 0 x"),
        ("SamplesPerPixel", 4, "4 sample"),
        ("NumberOfFrames", -2, "-2 frame"),
    ],
)
def test_implausible_headers_are_refused(keyword: str, value: int, match: str) -> None:
    ds = image_dataset(np.ones((4, 4), np.uint16))
    setattr(ds, keyword, value)
    with pytest.raises(DicomError, match=match):
        check_image(ds, LIMIT)


def test_missing_columns_is_an_incomplete_header() -> None:
    ds = image_dataset(np.ones((4, 4), np.uint16))
    del ds.Columns
    with pytest.raises(DicomError, match="image header incomplete"):
        check_image(ds, LIMIT)


def test_enhanced_us_volume_is_an_image() -> None:
    ds = image_dataset(np.ones((2, 4, 4), np.uint16), sop_class=EnhancedUSVolumeStorage)
    check_image(ds, LIMIT)
