"""Upload checks in the order the service runs them, on real files: each a ServeError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from PIL import Image

from medflow.config import PreprocessParams, ServeParams
from medflow.imaging.preprocess import preprocess_dataset
from medflow.serving.errors import ServeError
from medflow.serving.inputs import check_upload, prepare_checked, prepare_upload

PRE = PreprocessParams(image_size=32)
SERVE = ServeParams(allow_png_jpeg=True, max_upload_bytes=200_000)


def _ct(tmp_path: Path, **changes: object) -> Path:
    ds = pydicom.examples.ct
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / "upload.dcm"
    ds.save_as(path)
    return path


def _refused(path: Path, serve: ServeParams = SERVE) -> ServeError:
    with pytest.raises(ServeError) as info:
        prepare_upload(path.read_bytes(), serve, PRE)
    return info.value


def test_dicom_takes_the_training_path(tmp_path: Path) -> None:
    got = prepare_upload(_ct(tmp_path).read_bytes(), SERVE, PRE)
    expected, summary = preprocess_dataset(pydicom.examples.ct, PRE)
    assert np.array_equal(got.image, expected)
    assert (got.summary, got.input_format) == (summary, "dicom")


def test_checked_then_prepared_is_prepare_upload(tmp_path: Path) -> None:
    raw = _ct(tmp_path).read_bytes()
    checked = check_upload(raw, SERVE, PRE)
    assert (checked.input_format, checked.values) == ("dicom", 128 * 128)
    whole = prepare_upload(raw, SERVE, PRE)
    assert np.array_equal(prepare_checked(checked, PRE).image, whole.image)


def test_values_come_from_the_header_of_a_compressed_file(tmp_path: Path) -> None:
    """What the service's event-loop path looks at: a 150 kB JPEG 2000 of 480 x 640 x 3
    values is small on the wire but not to decode."""
    ds = pydicom.examples.jpeg2k
    ds.save_as(tmp_path / "j2k.dcm")
    raw = (tmp_path / "j2k.dcm").read_bytes()
    checked = check_upload(raw, ServeParams(max_upload_bytes=1_000_000), PRE)
    assert len(raw) < 256 * 1024
    assert checked.values == 480 * 640 * int(ds.SamplesPerPixel) > 512 * 512


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"Modality": "ES"}, 422, "unsupported_modality"),
        ({"PhotometricInterpretation": "HSV"}, 422, "unsupported_photometric"),
        ({"Rows": 4096, "Columns": 4096, "NumberOfFrames": 100}, 413, "image_too_large"),
        ({"Rows": 60000, "Columns": 60000}, 413, "image_too_large"),  # preprocess's frame cap
    ],
)
def test_refused_before_decoding(tmp_path: Path, changes: dict, status: int, code: str) -> None:
    error = _refused(_ct(tmp_path, **changes))
    assert (error.status, error.code) == (status, code)


def test_no_pixels_not_dicom_empty_too_large(tmp_path: Path) -> None:
    ds = pydicom.examples.ct
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert _refused(tmp_path / "nopix.dcm").code == "no_pixel_data"
    (tmp_path / "notes.txt").write_text("hello")
    assert (_refused(tmp_path / "notes.txt").status, _refused(tmp_path / "notes.txt").code) == (
        415,
        "not_dicom",
    )
    (tmp_path / "empty").write_bytes(b"")
    assert _refused(tmp_path / "empty").code == "empty_upload"
    (tmp_path / "big").write_bytes(bytes(SERVE.max_upload_bytes + 1))
    assert _refused(tmp_path / "big").status == 413


@pytest.mark.parametrize(("mode", "shape"), [("L", (20, 30)), ("RGB", (20, 30, 3))])
def test_png_becomes_a_secondary_capture(tmp_path: Path, mode: str, shape: tuple) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(path)
    got = prepare_upload(path.read_bytes(), SERVE, PRE)
    assert got.input_format == "png"
    assert got.image.shape == (1, 32, 32)
    assert got.summary.photometric == ("MONOCHROME2" if mode == "L" else "RGB")
    assert got.summary.original_shape == (20, 30)
    refused = _refused(path, ServeParams(allow_png_jpeg=False))
    assert (refused.status, refused.code) == (415, "png_jpeg_not_allowed")
