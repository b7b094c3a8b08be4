"""A Bento of a MONAI backbone (monai_resnet18, 32 px, untrained): built offline, served by
`bentoml serve` in a subprocess, it rebuilds the network from model.json (stem and all) and
answers what the packaged network gives here, in process."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pydicom.examples
import pytest
import torch

from medflow.config import PackageParams, PreprocessParams
from medflow.imaging.preprocess import preprocess_file
from medflow.models.artifact import ModelSpec, load_model, save_model
from medflow.models.net import build_network
from medflow.registry.infra_validation import serve_bento
from medflow.registry.packaging import run_package
from tests.helpers.handoffs import write_evaluated

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_a_monai_backbone_is_served(tmp_path: Path) -> None:
    preprocess = PreprocessParams(image_size=32)
    # architecture, in_channels, num_classes, width, dropout, class names, preprocessing
    spec = ModelSpec("monai_resnet18", 1, 2, 24, 0.1, ["normal", "lesion"], preprocess.model_dump())
    torch.manual_seed(0)
    net = build_network("monai_resnet18", 1, 2, 24, 0.1, image_size=32)
    save_model(tmp_path / "model", net, spec)
    write_evaluated(tmp_path, threshold=0.5)
    result = run_package(
        PackageParams(),
        model_dir=tmp_path / "model",
        metrics_file=tmp_path / "metrics.json",
        gate_file=tmp_path / "gate.json",
        project_root=ROOT,
        out_file=tmp_path / "package.json",
    )

    image = tmp_path / "ct.dcm"
    pydicom.examples.ct.save_as(image)
    loaded, _ = load_model(tmp_path / "model")
    with torch.no_grad():
        x = torch.from_numpy(preprocess_file(image, preprocess))[None]
        expected = loaded(x).softmax(-1)[0].tolist()

    with (
        serve_bento(result.bento_tag, workdir=tmp_path / "serve", timeout=120) as server,
        image.open("rb") as fh,
    ):
        resp = httpx.post(f"{server.url}/predict", files={"file": ("ct.dcm", fh)}, timeout=60)
    assert resp.status_code == 200, resp.text
    served = resp.json()["probabilities"]
    assert list(served) == ["normal", "lesion"]
    for got, want in zip(served.values(), expected, strict=True):
        assert math.isclose(got, want, abs_tol=1e-5), (served, expected)
