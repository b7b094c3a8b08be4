"""The one preprocessing path, on real DICOM files bundled with pydicom."""

import numpy as np
import pydicom
import pytest
from pydicom import examples

from medflow.config import PreprocessParams
from medflow.imaging.preprocess import DicomError, preprocess_dataset, preprocess_file, read_dicom

P = PreprocessParams(image_size=32)


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color", "ybr_color", "palette_color", "jpeg2k"])
def test_real_files_become_unit_range_arrays(name):
    x, summary = preprocess_dataset(getattr(examples, name), P)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01
    assert summary.output_size == 32


def test_three_channels_and_multiframe_takes_first_frame():
    x, summary = preprocess_dataset(examples.ybr_color, PreprocessParams(image_size=16, channels=3))
    assert x.shape == (3, 16, 16)
    assert summary.frames_in_file > 1 and summary.frame_used == 0


def test_monochrome1_is_inverted():
    ds = examples.ct
    mono2, _ = preprocess_dataset(ds, P)
    ds1 = pydicom.dcmread(examples.get_path("ct"))
    ds1.PhotometricInterpretation = "MONOCHROME1"
    mono1, _ = preprocess_dataset(ds1, P)
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-5)


def test_file_window_is_used_when_present():
    _, summary = preprocess_dataset(examples.mr, P)
    assert summary.window.startswith("file window")


def test_non_square_is_padded_not_stretched():
    ds = examples.rgb_color  # 240 x 320
    x, _ = preprocess_dataset(ds, PreprocessParams(image_size=32))
    # the padding band (top rows) is empty; the centre carries image content
    assert x[0, 0].max() == 0.0 and x[0, 16].max() > 0.0


def test_text_file_is_refused_clearly(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello, not an image")
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dicom(f)


def test_dicom_without_pixels_is_refused(tmp_path):
    ds = pydicom.dcmread(examples.get_path("ct"))
    del ds.PixelData
    f = tmp_path / "nopix.dcm"
    ds.save_as(f)
    with pytest.raises(DicomError, match="no pixel data"):
        preprocess_file(f, P)


def test_bytes_and_path_give_the_same_array():
    path = examples.get_path("ct")
    np.testing.assert_array_equal(preprocess_file(path, P), preprocess_file(path.read_bytes(), P))


def _ingest_stats(ds: pydicom.Dataset, frame: int) -> dict[str, float]:
    """pixel_mean and pixel_std as ingest writes them into the manifest (medflow.data.shard)."""
    from medflow.data.shard import _Scratch, _stats
    from medflow.imaging.preprocess import decode_frame, luminance

    scratch = _Scratch()
    grey = decode_frame(ds, frame, P.max_frame_pixels, out=scratch.frame(ds))
    return _stats(luminance(grey), scratch)


@pytest.mark.parametrize("name", ["ct", "mr", "rgb_color", "ybr_color", "palette_color", "jpeg2k"])
def test_intensity_is_the_manifests(name):
    """Production inputs (the prediction log) and training data (the manifest) are compared
    on these two numbers: the same definition, to 1e-9 relative."""
    ds = getattr(examples, name)
    _, summary = preprocess_dataset(ds, P)
    expected = _ingest_stats(ds, summary.frame_used)
    assert summary.pixel_mean == pytest.approx(expected["pixel_mean"], rel=1e-9, abs=1e-12)
    assert summary.pixel_std == pytest.approx(expected["pixel_std"], rel=1e-9)
    assert summary.pixel_std > 0


def test_intensity_keeps_its_digits_when_the_spread_is_tiny():
    """A large mean and a tiny spread: the one-pass formula would lose the variance."""
    from medflow.imaging.preprocess import intensity

    rng = np.random.default_rng(0)
    for frame in (
        3000.0 + rng.normal(0, 1e-3, (64, 64)),
        np.full((8, 8), 1234.5),
        rng.integers(0, 4096, (64, 48)).astype(np.float64),
        rng.uniform(0, 255, (20, 30, 3)),
    ):
        grey = frame if frame.ndim == 2 else frame @ np.array([0.299, 0.587, 0.114])
        mean, std = intensity(frame)
        assert mean == pytest.approx(grey.mean(), rel=1e-12)
        assert std == pytest.approx(grey.std(), rel=1e-9, abs=1e-12)
