"""Burned-in text: real tesseract on real DICOM files with a name and ID rendered in the pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from medflow.config import (
    BurnedInTextParams,
    DataParams,
    DeidParams,
    IngestParams,
    PreprocessParams,
)
from medflow.data import burned_in
from medflow.data.burned_in import find_text, is_screened, screen, screened_frames
from medflow.data.ingest import IngestConfig, run_ingest
from medflow.data.manifest import read_manifest
from medflow.data.shard import QUARANTINED, ShardSettings, ShardTask, ingest_shard
from medflow.errors import IngestFailed
from medflow.imaging.pixels import decode_frame, luminance
from tests.helpers.deid_key import KEY
from tests.helpers.dicom_files import image_dataset, write_dicom
from tests.helpers.ocr import read_text

needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr is not installed: make system-deps"
)

# image_dataset's own patient: the pixels show the header's identifiers
NAME, ID = "QUORVEX^TILDANA", "MRN55501234"
SIZE, HEADER = 256, 40  # text in the top HEADER rows, image content below
MAX_PIXELS = 64 * 1024 * 1024


def _picture(rgb: bool = False, text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, mask of the text pixels): a name and ID line over a noisy gradient."""
    rng = np.random.default_rng(3)
    grey = np.zeros((SIZE, SIZE))
    grey[HEADER:] = np.linspace(20, 200, SIZE)[None, :] + rng.normal(0, 8, (SIZE - HEADER, SIZE))
    grey = grey.clip(0, 255).astype(np.uint8)
    mask_img = Image.new("L", (SIZE, SIZE), 0)
    if text:
        font = ImageFont.load_default(size=16)
        ImageDraw.Draw(mask_img).text((6, 8), f"{NAME}  {ID}", fill=255, font=font)
    mask = np.asarray(mask_img) > 0
    if not rgb:
        return np.where(mask, np.asarray(mask_img), grey).astype(np.uint8), mask
    pixels = np.stack([grey, grey, grey // 2], axis=-1)
    pixels[mask] = (255, 230, 0)  # yellow text, as scanners draw it
    return pixels, mask


def _dicom(pixels: np.ndarray, sop_class: str, modality: str, **attrs: object) -> Dataset:
    photometric = "RGB" if pixels.ndim == 3 and pixels.shape[-1] == 3 else "MONOCHROME2"
    return image_dataset(pixels, photometric, 8, sop_class, Modality=modality, **attrs)


def _shows_identifiers(text: str) -> bool:
    squashed = "".join(text.upper().split())
    return any(part in squashed for part in ("QUORVEX", "TILDANA", "55501234", "5550"))


def _settings(**params: object) -> ShardSettings:
    return ShardSettings(
        class_names=("normal", "lesion"),
        frames="first",
        max_frame_pixels=MAX_PIXELS,
        allow_burned_in_annotation=False,
        burned_in_text=BurnedInTextParams(**params),
    )


def _ingest(tmp_path: Path, ds: Dataset, **params: object):
    """One file through ingest_shard: (result, the de-identified output or None)."""
    source, out = tmp_path / "source", tmp_path / "out"
    write_dicom(ds, source / "a.dcm")
    result = ingest_shard(
        ShardTask(str(source), str(out), (("a.dcm", 0),), KEY, _settings(**params))
    )
    written = sorted((out / "images").glob("*.dcm"))
    return result, (pydicom.dcmread(written[0]) if written else None)


def _codes(ds: Dataset) -> list[str]:
    return [str(item.CodeValue) for item in ds.get("DeidentificationMethodCodeSequence", [])]


# ------------------------------------------------------------------------------- units


def test_screened_images_are_the_listed_modalities_and_secondary_captures() -> None:
    pixels, _ = _picture()
    params = BurnedInTextParams()
    assert is_screened(_dicom(pixels, UltrasoundImageStorage, "US"), params)
    assert is_screened(_dicom(pixels, SecondaryCaptureImageStorage, "CT"), params)
    assert not is_screened(_dicom(pixels, CTImageStorage, "CT"), params)
    # a VL class shares the Secondary Capture prefix without being one
    assert not is_screened(_dicom(pixels, "1.2.840.10008.5.1.4.1.1.77.1.1", "CT"), params)
    sc = _dicom(pixels, SecondaryCaptureImageStorage, "CT")
    assert not is_screened(sc, BurnedInTextParams(secondary_capture=False))
    assert not is_screened(
        _dicom(pixels, UltrasoundImageStorage, "US"), BurnedInTextParams(action="off")
    )


def test_frames_screened_are_spread_and_capped() -> None:
    assert screened_frames(3, 8) == [0, 1, 2]
    assert screened_frames(500, 4) == [0, 166, 333, 499]
    assert screened_frames(1, 1) == [0]


@needs_tesseract
def test_boxes_cover_every_text_pixel_and_nothing_of_a_clean_image() -> None:
    pixels, mask = _picture()
    boxes = find_text(pixels, BurnedInTextParams())
    covered = np.zeros_like(mask)
    for b in boxes:
        covered[b.top : b.bottom, b.left : b.right] = True
    assert boxes and covered[mask].all()
    assert not covered[HEADER + 4 :].any()  # the image below the text is left alone
    clean, _ = _picture(text=False)
    assert find_text(clean, BurnedInTextParams()) == []


# ------------------------------------------------------------------ one file, ingested


@needs_tesseract
@pytest.mark.parametrize(
    ("rgb", "sop_class", "modality"),
    [
        (False, UltrasoundImageStorage, "US"),  # MONOCHROME2 ultrasound
        (True, SecondaryCaptureImageStorage, "CT"),  # an RGB screenshot kept as CT
    ],
)
def test_redacted_output_shows_no_name_or_id(
    tmp_path: Path, rgb: bool, sop_class: str, modality: str
) -> None:
    pixels, mask = _picture(rgb)
    ds = _dicom(pixels, sop_class, modality)
    assert _shows_identifiers(read_text(decode_frame(ds, 0, MAX_PIXELS)))  # the test can fail
    result, out = _ingest(tmp_path, ds)
    assert result.outcomes == [] and len(result.rows) == 1
    assert out is not None
    written = out.pixel_array
    assert not _shows_identifiers(read_text(decode_frame(out, 0, MAX_PIXELS)))
    assert (written[mask] == written[mask][0]).all()  # every text pixel filled
    assert np.array_equal(written[HEADER + 4 :], pixels[HEADER + 4 :])  # the rest untouched
    assert "113101" in _codes(out)
    # the manifest's statistics are those of the redacted pixels
    redacted_mean = float(luminance(written.astype(float)).mean())
    assert result.rows[0]["pixel_mean"] == pytest.approx(redacted_mean)
    assert redacted_mean < float(luminance(pixels.astype(float)).mean())


@needs_tesseract
def test_compressed_source_is_redacted_and_stored_uncompressed(tmp_path: Path) -> None:
    pixels, mask = _picture()
    ds = _dicom(pixels, UltrasoundImageStorage, "US")
    ds.compress(RLELossless, generate_instance_uid=False)
    result, out = _ingest(tmp_path, ds)
    assert result.outcomes == [] and out is not None
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not out["PixelData"].is_undefined_length
    assert not _shows_identifiers(read_text(decode_frame(out, 0, MAX_PIXELS)))
    assert (out.pixel_array[mask] == 0).all()


@needs_tesseract
def test_ybr_source_is_redacted_and_stored_as_rgb(tmp_path: Path) -> None:
    pixels, mask = _picture(rgb=True)
    ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
    ds = image_dataset(ybr, "YBR_FULL", 8, SecondaryCaptureImageStorage, Modality="OT")
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    result, out = _ingest(tmp_path, ds)
    assert result.outcomes == [] and out is not None
    assert out.PhotometricInterpretation == "RGB" and out.PlanarConfiguration == 0
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not _shows_identifiers(read_text(decode_frame(out, 0, MAX_PIXELS)))
    rest = out.pixel_array[HEADER + 4 :].astype(int) - pixels[HEADER + 4 :]
    assert np.abs(rest).max() <= 2  # the YBR round trip, nothing more


@needs_tesseract
def test_every_frame_of_a_cine_is_redacted(tmp_path: Path) -> None:
    pixels, mask = _picture()
    frames = np.stack([pixels, pixels, pixels])
    ds = _dicom(frames, UltrasoundMultiFrameImageStorage, "US")
    result, out = _ingest(tmp_path, ds, max_frames=2)  # frames 0 and 2 are read
    assert result.outcomes == [] and out is not None
    for k in range(3):
        assert (out.pixel_array[k][mask] == 0).all()
    assert np.array_equal(out.pixel_array[:, HEADER + 4 :], frames[:, HEADER + 4 :])


@needs_tesseract
def test_quarantine_names_the_problem_never_the_text(tmp_path: Path) -> None:
    pixels, _ = _picture()
    result, out = _ingest(
        tmp_path, _dicom(pixels, UltrasoundImageStorage, "US"), action="quarantine"
    )
    assert out is None and result.rows == []
    (outcome,) = result.outcomes
    assert (outcome.outcome, outcome.category) == (QUARANTINED, "burned-in text")
    assert "deid.burned_in_text.action" in outcome.reason
    assert not _shows_identifiers(outcome.reason)


@needs_tesseract
def test_clean_image_keeps_its_pixels(tmp_path: Path) -> None:
    pixels, _ = _picture(text=False)
    result, out = _ingest(tmp_path, _dicom(pixels, UltrasoundImageStorage, "US"))
    assert result.outcomes == [] and out is not None
    assert out.PixelData == pixels.tobytes()
    assert "113101" not in _codes(out)


def test_unlisted_modality_is_not_read(tmp_path: Path) -> None:
    pixels, _ = _picture()
    result, out = _ingest(tmp_path, _dicom(pixels, CTImageStorage, "CT"))
    assert result.outcomes == [] and out is not None
    assert out.PixelData == pixels.tobytes()  # the text stays: CT is not OCR'd


def test_missing_tesseract_stops_the_run_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(burned_in, "TESSERACT", "tesseract-not-installed-here")
    burned_in._check_installed.cache_clear()
    try:
        pixels, _ = _picture()
        with pytest.raises(IngestFailed, match=r"make system-deps.*apt-get install tesseract-ocr"):
            _ingest(tmp_path, _dicom(pixels, UltrasoundImageStorage, "US"))
        # nothing to read: no need for tesseract
        assert screen(_dicom(pixels, CTImageStorage, "CT"), BurnedInTextParams(), MAX_PIXELS) == 0
    finally:
        burned_in._check_installed.cache_clear()


# ------------------------------------------------------------------------ whole ingest


@needs_tesseract
def test_ingest_redacts_and_quarantines_per_params(tmp_path: Path) -> None:
    source = tmp_path / "source"
    named, mask = _picture()
    clean, _ = _picture(text=False)
    files = {
        "us_named.dcm": _dicom(named, UltrasoundImageStorage, "US", PatientID="P1"),
        "us_clean.dcm": _dicom(clean, UltrasoundImageStorage, "US", PatientID="P2"),
        "ct_named.dcm": _dicom(named, CTImageStorage, "CT", PatientID="P3"),
    }
    for name, ds in files.items():
        write_dicom(ds, source / name)
    (source / "labels.csv").write_text(
        "path,label\n" + "".join(f"{name},normal\n" for name in files)
    )

    def ingest(action: str, out: Path):
        deid = DeidParams(burned_in_text=BurnedInTextParams(action=action))
        params = IngestParams(workers=1, max_quarantine_fraction=1.0)
        data = DataParams(source="source", class_names=["normal", "lesion"])
        run_ingest(IngestConfig(data, params, deid, PreprocessParams()), source, out, KEY)
        return read_manifest(out)

    manifest = ingest("redact", tmp_path / "redacted")
    assert len(manifest) == 3
    for row in manifest.itertuples():
        out = pydicom.dcmread(tmp_path / "redacted" / row.file)
        text = read_text(decode_frame(out, 0, MAX_PIXELS))
        # the CT is not screened (not a listed modality): its text is left as it was
        assert _shows_identifiers(text) == (row.modality == "CT")
    log = (tmp_path / "redacted" / "ingest.log").read_text()
    assert "1 image(s) read in this run showed text in their pixels" in log
    assert not _shows_identifiers(log)

    manifest = ingest("quarantine", tmp_path / "quarantined")
    assert sorted(manifest.modality) == ["CT", "US"]
    quarantine = (tmp_path / "quarantined" / "quarantine.csv").read_text()
    assert "us_named.dcm" in quarantine and "burned-in text" in quarantine
    assert not _shows_identifiers(quarantine)
