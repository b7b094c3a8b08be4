"""A segmentation model's Bento, for real: a tiny U-Net fitted on bright discs (real DICOM
files through medflow.imaging.preprocess), packaged by run_package with its reference samples,
served by `bentoml serve`, asked POST /segment for JSON and for a DICOM SEG, and
infra-validated (its reference masks through /segment).

BENTOML_HOME is a per-session temp folder (tests/conftest.py).
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pydicom
import pydicom.examples
import pytest
import torch
from PIL import Image

from medflow.config import GateParams, PackageParams, PreprocessParams, ServeParams
from medflow.handoffs import NO_CHAMPION, ChampionComparison, GateReport, SegmentationMetrics
from medflow.imaging.masks import to_source_mask
from medflow.imaging.preprocess import preprocess_dataset
from medflow.models.artifact import ModelSpec, save_model
from medflow.models.net import build_unet
from medflow.registry.infra_validation import (
    InfraValidationFailed,
    RunningBento,
    infra_validate,
    serve_bento,
)
from medflow.registry.packaging import PackageResult, run_package

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["background", "lesion"]
SIZE = 32
THRESHOLD = 0.4  # metrics.json's: what the Bento must serve (not model.json's 0.5)
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "MRN-0042-SECRET"
UPLOAD_NAME = "Doe_Jane_MRN-0042-SECRET.dcm"


def _disc_ct(centre: tuple[int, int], radius: int, seed: int | None) -> pydicom.Dataset:
    """pydicom's 128 x 128 CT with its pixels replaced by a bright disc on noise."""
    ds = pydicom.examples.ct  # a fresh copy each time
    rows, cols = np.mgrid[:128, :128]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    # seed None: no noise (a uniform image preprocesses to zeros: nothing to segment)
    noise = (
        np.zeros((128, 128))
        if seed is None
        else np.random.default_rng(seed).normal(0, 20, (128, 128))
    )
    ds.PixelData = np.where(disc, 1000, 0).astype("<i2").__add__(noise.astype("<i2")).tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    return ds


def _fit(params: PreprocessParams) -> torch.nn.Module:
    """A [8, 16] U-Net fitted for 150 steps on discs and blanks: a deterministic net whose
    masks are discs, not empty and not everything, and empty on a blank image."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(24):
        centre = tuple(int(v) for v in rng.integers(30, 98, 2))
        radius = int(rng.integers(10, 25))
        image, summary = preprocess_dataset(_disc_ct(centre, radius, i), params)
        rows, cols = np.mgrid[:SIZE, :SIZE] * (128 / SIZE) + 128 / SIZE / 2
        truth = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
        images.append(image)
        masks.append(truth[None].astype(np.float32))
    for _ in range(6):  # and uniform images, which preprocess to zeros: no disc there
        image, _ = preprocess_dataset(_disc_ct((0, 0), 0, None), params)
        images.append(image)
        masks.append(np.zeros((1, SIZE, SIZE), np.float32))
    x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))
    net = build_unet(1, 1, [8, 16])
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimiser.step()
    return net.eval()


def _metrics() -> SegmentationMetrics:
    return SegmentationMetrics(
        dice=0.9,
        dice_ci_low=0.85,
        dice_ci_high=0.94,
        iou=0.82,
        iou_ci_low=0.75,
        iou_ci_high=0.88,
        hd95=2.0,
        hd95_ci_low=1.5,
        hd95_ci_high=2.5,
        detection_sensitivity=1.0,
        false_positives_per_image=0.0,
        per_segment={"lesion": {"dice": 0.9, "iou": 0.82, "hd95": 2.0}},
        threshold=THRESHOLD,
        n_images=4,
        n_patients=4,
        n_lesions=4,
    )


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seg_dicom")
    files = {
        "disc": _disc_ct((50, 70), 18, 100),
        "small": _disc_ct((90, 40), 12, 101),
        "blank": _disc_ct((0, 0), 0, None),
    }
    paths = {}
    for name, ds in files.items():
        paths[name] = folder / name / UPLOAD_NAME
        paths[name].parent.mkdir()
        ds.save_as(paths[name], enforce_file_format=True)
    paths["text"] = folder / "notes.txt"
    paths["text"].write_text("not an image\n")
    return paths


@pytest.fixture(scope="module")
def packaged(
    tmp_path_factory: pytest.TempPathFactory, dicoms: dict[str, Path]
) -> tuple[PackageResult, Path]:
    tmp = tmp_path_factory.mktemp("seg_pkg")
    params = PreprocessParams(image_size=SIZE)
    spec = ModelSpec(
        architecture="unet",
        in_channels=1,
        num_classes=1,
        width=8,
        dropout=0.0,
        class_names=CLASSES,
        preprocess=params.model_dump(),
        provenance={"data_hash": "c" * 64},
        task="segmentation",
        unet_channels=[8, 16],
    )
    save_model(tmp / "model", _fit(params), spec)
    metrics = _metrics()
    metrics.write(tmp / "metrics.json")
    GateReport(
        passed=True,
        decision="accepted",
        failures=[],
        rules=[],
        champion=ChampionComparison(status=NO_CHAMPION, reason="test: no champion"),
        thresholds=GateParams(),
        metrics=metrics,
    ).write(tmp / "gate.json")
    # an ingested manifest of three test images: the reference samples come from it
    ingested = tmp / "ingested"
    rows = []
    for i, name in enumerate(("disc", "small", "blank")):
        (ingested / "images").mkdir(parents=True, exist_ok=True)
        target = ingested / "images" / f"im{i}.dcm"
        target.write_bytes(dicoms[name].read_bytes())
        label = 0 if name == "blank" else 1
        rows.append(
            {"image_id": f"im{i}", "file": f"images/im{i}.dcm", "split": "test", "label": label}
        )
    pd.DataFrame(rows).to_csv(ingested / "manifest.csv", index=False)
    result = run_package(
        PackageParams(model_name="medflow-segmenter", serve=ServeParams(allow_png_jpeg=True)),
        model_dir=tmp / "model",
        metrics_file=tmp / "metrics.json",
        gate_file=tmp / "gate.json",
        project_root=ROOT,
        out_file=tmp / "package.json",
        manifest=ingested / "manifest.csv",
    )
    return result, tmp / "model"


@pytest.fixture(scope="module")
def server(
    packaged: tuple[PackageResult, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningBento]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_SERVE_")}
    environ.pop("MEDFLOW_API_TOKEN", None)
    try:
        with serve_bento(
            packaged[0].bento_tag,
            workdir=tmp_path_factory.mktemp("serve_seg"),
            timeout=90,
            env=environ,
        ) as running:
            yield running
    except InfraValidationFailed as exc:
        pytest.fail(str(exc))


def _post(server: RunningBento, path: Path, route: str = "/segment", **kw) -> httpx.Response:
    return httpx.post(
        f"{server.url}{route}",
        files={"file": (path.name, path.read_bytes())},
        timeout=60,
        **kw,
    )


def _expected(model_dir: Path, path: Path) -> np.ndarray:
    """The packaged network run here on `path`: the masks (K, rows, cols) the Bento must give."""
    import bentoml  # noqa: F401  (the store holds the same weights as model_dir)

    from medflow.models.artifact import load_model

    net, spec = load_model(model_dir)
    image, summary = preprocess_dataset(pydicom.dcmread(path), spec.preprocess_params)
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.from_numpy(image)[None]))[0].numpy()
    return to_source_mask((probs >= THRESHOLD).astype(np.uint8), summary.original_shape)


def _png(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


def test_segment_answers_json(
    server: RunningBento, packaged: tuple[PackageResult, Path], dicoms: dict[str, Path]
) -> None:
    result, model_dir = packaged
    resp = _post(server, dicoms["disc"], data={"overlay": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["model_tag"] == result.model_tag
    assert f"{body['model_name']}:{body['model_version']}" == result.model_tag
    assert body["threshold"] == THRESHOLD
    assert body["shape"] == [128, 128]
    assert body["pixel_spacing_mm"] == pytest.approx([0.661468, 0.661468])
    (segment,) = body["segments"]
    assert (segment["number"], segment["name"]) == (1, "lesion")
    mask = _png(segment["mask_png"]) > 0
    expected = _expected(model_dir, dicoms["disc"])[0]
    np.testing.assert_array_equal(mask, expected > 0)
    # a disc where the disc is: not empty, not everything, around (50, 70)
    assert 300 < segment["area_px"] == int(mask.sum()) < 3000
    assert segment["area_mm2"] == pytest.approx(segment["area_px"] * 0.661468**2, rel=1e-6)
    box = segment["bounding_box"]
    assert box["row_min"] < 50 < box["row_max"] and box["col_min"] < 70 < box["col_max"]
    overlay = _png(body["overlay_png"])
    assert overlay.shape == (128, 128, 3)
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe_Jane"):
        assert secret not in resp.text
    # without overlay=true: none
    assert _post(server, dicoms["disc"]).json()["overlay_png"] is None


def test_segment_answers_a_dicom_seg(
    server: RunningBento, packaged: tuple[PackageResult, Path], dicoms: dict[str, Path]
) -> None:
    import highdicom as hd

    result, _ = packaged
    as_json = _post(server, dicoms["disc"]).json()
    resp = _post(server, dicoms["disc"], headers={"Accept": "application/dicom"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/dicom"
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(resp.content)))
    upload = pydicom.dcmread(dicoms["disc"])
    assert seg.get_source_image_uids()[0] == (
        upload.StudyInstanceUID,
        upload.SeriesInstanceUID,
        upload.SOPInstanceUID,
    )
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert refs[0].ReferencedSOPInstanceUID == upload.SOPInstanceUID
    assert seg.SeriesInstanceUID != upload.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    name, _, version = result.model_tag.partition(":")
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (name, version)
    pixels = seg.get_pixels_by_source_instance([upload.SOPInstanceUID], segment_numbers=[1])
    json_mask = _png(as_json["segments"][0]["mask_png"]) > 0
    np.testing.assert_array_equal(pixels[0, ..., 0] > 0, json_mask)
    assert json_mask.any()


def test_empty_image_gives_empty_segments(server: RunningBento, dicoms: dict[str, Path]):
    body = _post(server, dicoms["blank"]).json()
    (segment,) = body["segments"]
    assert segment["area_px"] == 0 and segment["bounding_box"] is None


def test_bad_inputs_and_the_wrong_route_are_client_errors(
    server: RunningBento, dicoms: dict[str, Path], tmp_path: Path
) -> None:
    text = _post(server, dicoms["text"])
    assert (text.status_code, text.json()["error"]) == (415, "not_dicom")
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(png)
    seg_of_png = _post(server, png, headers={"Accept": "application/dicom"})
    assert (seg_of_png.status_code, seg_of_png.json()["error"]) == (415, "png_jpeg_not_allowed")
    assert _post(server, png).status_code == 200  # JSON for a PNG: allowed by this Bento
    wrong = _post(server, dicoms["disc"], route="/predict")
    assert wrong.status_code == 409
    assert wrong.json()["error"] == "wrong_task" and "/segment" in wrong.json()["detail"]
    flag = _post(server, dicoms["disc"], data={"overlay": "maybe"})
    assert (flag.status_code, flag.json()["error"]) == (400, "bad_field")
    for path in ("/healthz", "/readyz", "/livez"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200
    assert _post(server, dicoms["disc"]).status_code == 200


def test_nothing_identifying_in_the_server_log(server: RunningBento, dicoms: dict[str, Path]):
    _post(server, dicoms["disc"], headers={"Accept": "application/dicom"})
    _post(server, dicoms["text"])
    time.sleep(1)
    log = server.log.read_text(errors="replace")
    upload = pydicom.dcmread(dicoms["disc"])
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe_Jane", upload.SOPInstanceUID):
        assert secret not in log
    assert "Traceback" not in log


def test_infra_validation_compares_the_reference_masks(
    packaged: tuple[PackageResult, Path],
) -> None:
    import bentoml

    result, _ = packaged
    reference = Path(bentoml.models.get(result.model_tag).path) / "reference"
    assert sorted(p.name for p in reference.iterdir()) == [
        "expected.json",
        *sorted(f"sample{i}{end}" for i in range(3) for end in (".dcm", "_mask.npy")),
    ]
    assert any(np.load(reference / f"sample{i}_mask.npy").any() for i in range(3))
    report = infra_validate(result.bento_tag, result.model_tag, CLASSES, timeout=90)
    assert report.n_samples == 3
