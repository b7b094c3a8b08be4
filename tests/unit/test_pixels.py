"""Decoding one frame: frame policy, decoders, colour spaces, modality LUT (real DICOM files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array

from medflow.imaging.dicom import DicomError
from medflow.imaging.pixels import decode_frame, frame_indices, luminance
from tests.helpers.dicom_files import image_dataset, raw_dataset_bytes, write_dicom

LIMIT = 64 * 1024 * 1024


def _frames(n: int, rows: int = 6, cols: int = 7) -> np.ndarray:
    """n frames that differ everywhere: frame k is a ramp plus 500 * k."""
    ramp = np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols)
    return np.stack([ramp + 500 * k for k in range(n)]).astype(np.uint16)


@pytest.mark.parametrize(
    ("n", "policy", "expected"),
    [
        (1, "first", [0]),
        (1, "middle", [0]),
        (1, "all", [0]),
        (4, "first", [0]),
        (4, "middle", [2]),
        (5, "middle", [2]),
        (5, "all", [0, 1, 2, 3, 4]),
    ],
)
def test_frame_indices_follow_the_policy(n: int, policy: str, expected: list[int]) -> None:
    ds = image_dataset(_frames(n)) if n > 1 else image_dataset(_frames(1)[0])
    assert frame_indices(ds, policy) == expected


def test_frame_indices_without_number_of_frames_is_one_frame() -> None:
    ds = image_dataset(_frames(1)[0])
    assert "NumberOfFrames" not in ds
    assert frame_indices(ds, "all") == [0] and frame_indices(ds, "middle") == [0]


def test_each_frame_of_a_multiframe_file_is_decoded_alone(tmp_path: Path) -> None:
    frames = _frames(4)
    path = write_dicom(image_dataset(frames), tmp_path / "multi.dcm")
    ds = pydicom.dcmread(path)
    for k in range(4):
        out = decode_frame(ds, k, LIMIT)
        assert out.dtype == np.float64 and out.shape == (6, 7)
        np.testing.assert_array_equal(out, frames[k])


def test_a_frame_past_the_end_is_a_dicom_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_dicom(image_dataset(_frames(3)), tmp_path / "multi.dcm"))
    with pytest.raises(DicomError, match="cannot decode pixel data"):
        decode_frame(ds, 3, LIMIT)


def test_compressed_multiframe_ybr_frame_is_converted_to_rgb() -> None:
    ds = examples.ybr_color  # JPEG baseline, YBR_FULL_422, 30 frames
    out = decode_frame(ds, 5, LIMIT)
    ybr = pixel_array(ds, index=5, as_rgb=False)
    np.testing.assert_array_equal(out, convert_color_space(ybr, "YBR_FULL", "RGB"))
    assert np.abs(out - ybr).max() > 50  # really converted, not passed through
    assert not np.array_equal(out, decode_frame(ds, 0, LIMIT))


def test_uncompressed_ybr_is_converted_to_rgb() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    out = decode_frame(ds, 0, LIMIT)
    ybr = pixel_array(ds, as_rgb=False)
    np.testing.assert_array_equal(out, convert_color_space(ybr, "YBR_FULL", "RGB"))
    assert np.abs(out - ybr).max() > 50


def test_rle_multiframe_rgb_takes_the_requested_frame() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    both = pixel_array(ds)
    assert not np.array_equal(both[0], both[1])
    np.testing.assert_array_equal(decode_frame(ds, 1, LIMIT), both[1])


def test_palette_color_goes_through_the_colour_lut() -> None:
    ds = examples.palette_color
    out = decode_frame(ds, 0, LIMIT)
    indices = pixel_array(ds)
    assert indices.ndim == 2 and out.shape == (*indices.shape, 3)
    np.testing.assert_array_equal(out, apply_color_lut(indices, ds))


def test_modality_lut_gives_real_world_values(tmp_path: Path) -> None:
    stored = _frames(1)[0] + 1000
    ds = image_dataset(stored, RescaleSlope="0.5", RescaleIntercept="-1024")
    out = decode_frame(pydicom.dcmread(write_dicom(ds, tmp_path / "ct.dcm")), 0, LIMIT)
    np.testing.assert_allclose(out, stored * 0.5 - 1024)


def test_real_ct_is_in_hounsfield_units() -> None:
    ds = examples.ct  # RescaleIntercept -1024
    out = decode_frame(ds, 0, LIMIT)
    np.testing.assert_array_equal(out, pixel_array(ds).astype(np.float64) - 1024)
    assert out.min() < 0


@pytest.mark.parametrize(
    ("implicit", "little"), [(True, True), (False, True), (False, False)], ids=str
)
def test_raw_data_sets_decode_in_the_encoding_they_were_read(implicit: bool, little: bool) -> None:
    source = "MR_small_bigendian.dcm" if not little else "MR_small.dcm"
    data = raw_dataset_bytes(source, implicit=implicit, little=little)
    assert data[128:132] != b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    assert "TransferSyntaxUID" not in ds.file_meta
    expected = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(decode_frame(ds, 0, LIMIT), expected)


def test_unsupported_photometric_is_named() -> None:
    ds = image_dataset(_frames(1)[0])
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(DicomError, match="unsupported PhotometricInterpretation 'HSV'"):
        decode_frame(ds, 0, LIMIT)


def test_oversized_header_is_refused_before_decoding() -> None:
    ds = image_dataset(_frames(1)[0])
    ds.Rows = ds.Columns = 60000  # the 84 bytes of pixel data could never fill this
    with pytest.raises(DicomError, match="image too large"):
        decode_frame(ds, 0, LIMIT)


def test_luminance_weights_rgb_and_keeps_grey() -> None:
    rgb = np.zeros((1, 3, 3))
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 100.0
    np.testing.assert_allclose(luminance(rgb), [[29.9, 58.7, 11.4]])
    grey = np.arange(6.0).reshape(2, 3)
    assert luminance(grey) is grey
