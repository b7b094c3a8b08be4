"""VOI (windowing) and colour in the one preprocessing path, on real files written to disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_palette_files
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi, pixel_array

from medflow.config import PreprocessParams
from medflow.imaging.pixels import decode_frame
from medflow.imaging.preprocess import normalise, preprocess_dataset
from tests.helpers.dicom_files import image_dataset, write_dicom

P = PreprocessParams(image_size=8)
LIMIT = P.max_frame_pixels
# 12-bit ramp over the whole stored range, as an 8 x 8 frame (no resizing at image_size 8)
RAMP = np.linspace(0, 4095, 64).round().astype(np.uint16).reshape(8, 8)


def _reread(ds: Dataset, tmp_path: Path, name: str = "x.dcm") -> Dataset:
    return pydicom.dcmread(write_dicom(ds, tmp_path / name))


def _normalised(ds: Dataset, params: PreprocessParams = P) -> tuple[np.ndarray, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about VOI LUTs on float input
        return normalise(decode_frame(ds, 0, LIMIT), ds, params)


def _voi_lut(n: int, first: int, bits: int, values: np.ndarray) -> list[Dataset]:
    item = Dataset()
    item.LUTDescriptor = [n, first, bits]
    # OW, as scanners write it: pydicom must read the words in the file's byte order
    item.add_new("LUTData", "OW", np.asarray(values, "<u2").tobytes())
    return [item]


# -------------------------------------------------------------------------- params window


def test_params_window_for_the_modality_overrides_the_file_window() -> None:
    ds = examples.ct
    ds.WindowCenter, ds.WindowWidth = "500", "100"  # the file says: a narrow bone-ish window
    hu = decode_frame(ds, 0, LIMIT)
    params = PreprocessParams(windows={"ct": {"center": 40, "width": 400}})  # lower case on purpose
    out, how = normalise(hu, ds, params)
    assert how == "CT window (params)"
    np.testing.assert_allclose(out, np.clip((hu - (40 - 200)) / 400, 0, 1), atol=1e-6)
    file_out, file_how = normalise(hu, ds, PreprocessParams())
    assert file_how == "file window C=500 W=100" and not np.allclose(out, file_out)


def test_params_window_of_another_modality_is_not_used() -> None:
    ds = examples.mr  # WindowCenter 600, WindowWidth 1600
    params = PreprocessParams(windows={"CT": {"center": 40, "width": 400}})
    _, how = _normalised(ds, params)
    assert how == "file window C=600 W=1600"


def test_params_window_overrides_a_file_voi_lut(tmp_path: Path) -> None:
    lut = _voi_lut(4096, 0, 16, np.linspace(65535, 0, 4096))
    ds = _reread(image_dataset(RAMP, Modality="DX", VOILUTSequence=lut), tmp_path)
    out, how = _normalised(ds, PreprocessParams(windows={"DX": {"center": 2048, "width": 4096}}))
    assert how == "DX window (params)"
    np.testing.assert_allclose(out, np.clip(RAMP / 4096.0, 0, 1), atol=1e-6)


# ---------------------------------------------------------------------------- file VOI LUT


def test_file_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    values = np.linspace(65535, 0, 4096).round()  # an inverting LUT: not a window
    ds = image_dataset(
        RAMP, VOILUTSequence=_voi_lut(4096, 0, 16, values), WindowCenter="2048", WindowWidth="10"
    )
    ds = _reread(ds, tmp_path)
    out, how = _normalised(ds)
    assert how == "file VOI LUT"  # preferred over the file's window
    np.testing.assert_allclose(out, values[RAMP] / 65535, atol=1e-6)
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0


def test_voi_lut_first_mapped_value_and_range_are_respected(tmp_path: Path) -> None:
    # 1024 entries from stored value 1000: below -> first entry, above 2023 -> last entry
    values = np.linspace(1000, 4000, 1024).round()
    ds = _reread(image_dataset(RAMP, VOILUTSequence=_voi_lut(1024, 1000, 12, values)), tmp_path)
    out, _ = _normalised(ds)
    index = np.clip(RAMP.astype(int) - 1000, 0, 1023)
    np.testing.assert_allclose(out, values[index] / 4095, atol=1e-6)
    assert np.isclose(out.min(), 1000 / 4095) and np.isclose(out.max(), 4000 / 4095)


def test_malformed_voi_lut_falls_back_to_the_file_window(tmp_path: Path) -> None:
    # 9 bits per entry is not allowed for a VOI LUT (8 or 10-16)
    lut = _voi_lut(4096, 0, 9, np.zeros(4096))
    ds = image_dataset(RAMP, VOILUTSequence=lut, WindowCenter="1000", WindowWidth="2000")
    out, how = _normalised(_reread(ds, tmp_path))
    assert how == "file window C=1000 W=2000"
    np.testing.assert_allclose(out, np.clip(RAMP / 2000.0, 0, 1), atol=1e-6)


def test_malformed_voi_lut_without_window_falls_back_to_percentiles(tmp_path: Path) -> None:
    ds = image_dataset(RAMP, VOILUTSequence=_voi_lut(4096, 0, 9, np.zeros(4096)))
    _, how = _normalised(_reread(ds, tmp_path))
    assert how == "percentiles 0.5-99.5"


def test_eight_bit_voi_lut_over_twelve_bit_pixels(tmp_path: Path) -> None:
    values = np.linspace(255, 0, 4096).round()
    ds = _reread(image_dataset(RAMP, VOILUTSequence=_voi_lut(4096, 0, 8, values)), tmp_path)
    out, how = _normalised(ds)
    assert how == "file VOI LUT"
    np.testing.assert_allclose(out, values[RAMP] / 255, atol=1e-6)


@pytest.mark.parametrize("vr", ["OW", "US"])
def test_voi_lut_agrees_with_pydicom_where_pydicom_is_right(tmp_path: Path, vr: str) -> None:
    values = np.random.default_rng(0).integers(0, 2**16, 3000)
    item = Dataset()
    item.LUTDescriptor = [3000, 500, 16]
    if vr == "OW":
        item.add_new("LUTData", "OW", np.asarray(values, "<u2").tobytes())
    else:
        item.add_new("LUTData", "US", [int(v) for v in values])
    ds = _reread(image_dataset(RAMP, VOILUTSequence=[item]), tmp_path)
    out, how = _normalised(ds)
    assert how == "file VOI LUT"
    np.testing.assert_allclose(out, apply_voi(pixel_array(ds), ds) / 65535, atol=1e-6)


def test_voi_lut_of_65536_entries_is_described_as_zero(tmp_path: Path) -> None:
    values = np.arange(2**16)[::-1]
    ds = _reread(image_dataset(RAMP, VOILUTSequence=_voi_lut(0, 0, 16, values)), tmp_path)
    out, how = _normalised(ds)
    assert how == "file VOI LUT"
    np.testing.assert_allclose(out, values[RAMP] / 65535, atol=1e-6)


def test_voi_lut_first_mapped_written_unsigned_for_signed_pixels(tmp_path: Path) -> None:
    signed = (RAMP.astype(np.int16) - 2048).astype(np.int16)
    item = Dataset()
    # -2048 as the 16-bit unsigned word 63488: the VR is US although the pixels are signed
    item.add_new("LUTDescriptor", "US", [4096, 2**16 - 2048, 12])
    item.add_new("LUTData", "OW", np.arange(4096, dtype="<u2").tobytes())
    ds = _reread(image_dataset(signed, VOILUTSequence=[item]), tmp_path)
    assert ds.PixelRepresentation == 1 and ds.VOILUTSequence[0].LUTDescriptor[1] == 63488
    out, how = _normalised(ds)
    assert how == "file VOI LUT"
    np.testing.assert_allclose(out, RAMP / 4095, atol=1e-6)


# ----------------------------------------------------------------------------- file window


def test_linear_file_window_maps_its_edges_to_zero_and_one(tmp_path: Path) -> None:
    ds = image_dataset(RAMP, WindowCenter=["1000", "3000"], WindowWidth=["1000", "200"])
    out, how = _normalised(_reread(ds, tmp_path))
    assert how == "file window C=1000 W=1000"  # the first of several windows
    np.testing.assert_allclose(out, np.clip((RAMP - 500.0) / 1000.0, 0, 1), atol=1e-6)
    assert (out[RAMP <= 500] == 0).all() and (out[RAMP >= 1500] == 1).all()


def test_sigmoid_voi_lut_function(tmp_path: Path) -> None:
    ds = image_dataset(RAMP, WindowCenter="2000", WindowWidth="1000", VOILUTFunction="SIGMOID")
    out, how = _normalised(_reread(ds, tmp_path))
    assert how == "file window C=2000 W=1000 sigmoid"
    expected = 1.0 / (1.0 + np.exp(-4.0 * (RAMP - 2000.0) / 1000.0))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # smooth, not clipped: even the extremes stay strictly inside (0, 1) at float64
    assert 0 < expected.min() < 0.001 and expected.max() > 0.999
    assert len(np.unique(out)) == len(np.unique(RAMP))


def test_sigmoid_centre_is_mid_grey(tmp_path: Path) -> None:
    pixels = np.full((8, 8), 1234, np.uint16)
    ds = image_dataset(pixels, WindowCenter="1234", WindowWidth="300", VOILUTFunction="SIGMOID")
    out, _ = _normalised(_reread(ds, tmp_path))
    np.testing.assert_allclose(out, 0.5)


def test_window_of_zero_width_is_ignored(tmp_path: Path) -> None:
    ds = image_dataset(RAMP, WindowCenter="1000", WindowWidth="0")
    _, how = _normalised(_reread(ds, tmp_path))
    assert how.startswith("percentiles")


# ----------------------------------------------------------------------------- percentiles


def test_percentiles_are_the_fallback_and_follow_params(tmp_path: Path) -> None:
    ds = _reread(image_dataset(RAMP), tmp_path)
    params = PreprocessParams(percentile_low=10, percentile_high=90)
    out, how = _normalised(ds, params)
    assert how == "percentiles 10-90"
    lo, hi = np.percentile(RAMP, [10, 90])
    np.testing.assert_allclose(out, np.clip((RAMP - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert 0.05 < (out == 1).mean() < 0.15 and 0.05 < (out == 0).mean() < 0.15


def test_constant_image_gives_zeros_not_nan(tmp_path: Path) -> None:
    ds = _reread(image_dataset(np.full((8, 8), 700, np.uint16)), tmp_path)
    out, _ = _normalised(ds)
    assert np.isfinite(out).all() and (out == 0).all()


# ----------------------------------------------------------------------------- MONOCHROME1


@pytest.mark.parametrize(
    "attrs",
    [{"WindowCenter": "1000", "WindowWidth": "1000"}, {}],
    ids=["file window", "percentiles"],
)
def test_monochrome1_is_inverted_after_voi(tmp_path: Path, attrs: dict[str, str]) -> None:
    mono2 = _reread(image_dataset(RAMP, **attrs), tmp_path, "m2.dcm")
    mono1 = _reread(image_dataset(RAMP, "MONOCHROME1", **attrs), tmp_path, "m1.dcm")
    out2, how2 = _normalised(mono2)
    out1, how1 = _normalised(mono1)
    assert how1 == how2
    np.testing.assert_allclose(out1, 1.0 - out2, atol=1e-6)
    assert out1[0, 0] == 1.0  # the lowest stored value is white in MONOCHROME1


# ----------------------------------------------------------------------------------- colour


def _quadrants() -> np.ndarray:
    """8 x 8 RGB: pure red, green and blue quadrants and a white one."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4, :4, 0] = rgb[:4, 4:, 1] = rgb[4:, :4, 2] = 255
    rgb[4:, 4:] = 255
    return rgb


def test_rgb_is_kept_for_three_channels(tmp_path: Path) -> None:
    ds = _reread(image_dataset(_quadrants(), "RGB", 8), tmp_path)
    x, summary = preprocess_dataset(ds, PreprocessParams(image_size=8, channels=3))
    assert x.shape == (3, 8, 8) and summary.window == "colour / 255"
    np.testing.assert_allclose(x, np.moveaxis(_quadrants(), -1, 0) / 255.0, atol=1e-6)


def test_rgb_becomes_luminance_for_one_channel(tmp_path: Path) -> None:
    ds = _reread(image_dataset(_quadrants(), "RGB", 8), tmp_path)
    x, _ = preprocess_dataset(ds, PreprocessParams(image_size=8, channels=1))
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0, 0, 0], 0.299, atol=1e-6)
    np.testing.assert_allclose(x[0, 0, 7], 0.587, atol=1e-6)
    np.testing.assert_allclose(x[0, 7, 0], 0.114, atol=1e-6)
    np.testing.assert_allclose(x[0, 7, 7], 1.0, atol=1e-6)


def test_sixteen_bit_rgb_is_scaled_by_its_bits_stored(tmp_path: Path) -> None:
    rgb = (_quadrants().astype(np.uint16) * 257) // 2  # half intensity at 16 bits
    ds = _reread(image_dataset(rgb, "RGB", 16), tmp_path)
    x, summary = preprocess_dataset(ds, PreprocessParams(image_size=8, channels=3))
    assert summary.window == "colour / 65535"
    np.testing.assert_allclose(x.max(), 32767 / 65535, atol=1e-6)


def test_real_rgb_file_keeps_distinct_channels() -> None:
    x, _ = preprocess_dataset(examples.rgb_color, PreprocessParams(image_size=32, channels=3))
    assert x.shape == (3, 32, 32)
    assert np.abs(x[0] - x[1]).max() > 0.2 and np.abs(x[1] - x[2]).max() > 0.2


def test_palette_color_keeps_its_grey_levels() -> None:
    ds = examples.palette_color  # 8-bit indices, 16-bit palette entries
    out, _ = normalise(decode_frame(ds, 0, LIMIT), ds, P)
    rgb = apply_color_lut(pixel_array(ds), ds)
    np.testing.assert_allclose(out, rgb / 65535.0, atol=0.01)


def _palette_image(tmp_path: Path, palette: str, *, in_words: bool = False) -> Dataset:
    """12-bit palette indices coloured by one of pydicom's well-known 8-bit palettes."""
    indices = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds = image_dataset(indices, "PALETTE COLOR", 12)
    source = pydicom.dcmread(get_palette_files(palette)[0])
    for keyword in source.dir("PaletteColorLookupTable"):
        ds[keyword] = source[keyword]
    if in_words:  # 8-bit entries each in a 16-bit word, as some writers store them
        for colour in ("Red", "Green", "Blue"):
            element = ds[f"{colour}PaletteColorLookupTableData"]
            words = np.frombuffer(element.value, np.uint8).astype("<u2").tobytes()
            element.VR, element.value = "OW", words
    return _reread(ds, tmp_path, palette)


@pytest.mark.parametrize(
    ("palette", "in_words"),
    [("hotiron.dcm", False), ("spring.dcm", False), ("hotiron.dcm", True)],
    ids=["8-bit", "8-bit segmented", "8-bit in 16-bit words"],
)
def test_eight_bit_palette_is_scaled_by_its_entry_bits_not_the_index_bits(
    tmp_path: Path, palette: str, in_words: bool
) -> None:
    ds = _palette_image(tmp_path, palette, in_words=in_words)
    out, how = _normalised(ds)
    assert how == "colour / 255"  # not / 4095, the 12 bits of the index
    rgb = apply_color_lut(pixel_array(ds), ds)
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-6)
    assert out.max() == 1.0 and len(np.unique(out)) > 100  # grey levels, not saturated


def test_palette_words_wider_than_the_descriptor_says_are_sixteen_bit(tmp_path: Path) -> None:
    ds = _palette_image(tmp_path, "hotiron.dcm", in_words=True)
    for colour in ("Red", "Green", "Blue"):  # the descriptor still says 8 bits
        element = ds[f"{colour}PaletteColorLookupTableData"]
        element.value = (np.frombuffer(element.value, "<u2") * 257).astype("<u2").tobytes()
    out, how = _normalised(ds)
    assert how == "colour / 65535"
    np.testing.assert_allclose(out, apply_color_lut(pixel_array(ds), ds) / 65535.0, atol=1e-6)


# ---------------------------------------------------------------------------- which frame


def _three_frames(tmp_path: Path) -> Dataset:
    frames = np.stack([RAMP // 4 + 1000 * k for k in range(3)]).astype(np.uint16)
    return _reread(image_dataset(frames, Modality="CT"), tmp_path, "multi.dcm")


WINDOW = {"CT": {"center": 1500, "width": 3000}}  # fixed, so frames stay comparable


@pytest.mark.parametrize(("frames", "expected"), [("first", 0), ("middle", 1), ("all", 1)])
def test_frame_policy_picks_the_frame(tmp_path: Path, frames: str, expected: int) -> None:
    ds = _three_frames(tmp_path)
    x, summary = preprocess_dataset(ds, PreprocessParams(image_size=8, frames=frames))
    assert summary.frame_used == expected and summary.frames_in_file == 3
    assert x.shape == (1, 8, 8)


def test_explicit_frame_is_the_one_preprocessed(tmp_path: Path) -> None:
    ds = _three_frames(tmp_path)
    params = PreprocessParams(image_size=8, windows=WINDOW)
    outputs = [preprocess_dataset(ds, params, frame=k) for k in range(3)]
    for k, (x, summary) in enumerate(outputs):
        assert summary.frame_used == k
        single = image_dataset(RAMP // 4 + 1000 * k, Modality="CT")
        expected, _ = preprocess_dataset(_reread(single, tmp_path, f"f{k}.dcm"), params)
        np.testing.assert_array_equal(x, expected)
    assert not np.array_equal(outputs[0][0], outputs[2][0])
