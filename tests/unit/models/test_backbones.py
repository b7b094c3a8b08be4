"""The monai_* standard backbones: 2-D, stems adapted to small images, lazy MONAI import, and
a tiny real fit of each that load_model rebuilds."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medflow.config import TrainParams
from medflow.data.arrays import load_split
from medflow.models.artifact import load_model
from medflow.models.calibration import final_linear, fold_temperature, logits_of
from medflow.models.net import ARCHITECTURES, build_network
from medflow.models.training import run_train
from tests.helpers.arrays_factory import write_arrays

MONAI = [a for a in ARCHITECTURES if a.startswith("monai_")]


def test_params_offer_every_architecture() -> None:
    field = TrainParams.model_fields["architecture"]
    assert typing.get_args(field.annotation) == ARCHITECTURES
    assert MONAI == [
        "monai_resnet18",
        "monai_resnet34",
        "monai_densenet121",
        "monai_efficientnet_b0",
    ]


def _last_stage_side(net: nn.Module, image_size: int) -> int:
    """Side in px of the feature map that the global pooling averages."""
    # the last one: EfficientNet's squeeze-and-excitation blocks pool too
    pool = [m for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)][-1]
    seen: list[torch.Tensor] = []
    pool.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 1, image_size, image_size))
    return seen[0].shape[-1]


@pytest.mark.parametrize(
    ("architecture", "image_size", "side"),
    [
        *[("monai_resnet18", s, d) for s, d in [(28, 4), (32, 4), (64, 4), (128, 4), (224, 7)]],
        # DenseNet's transitions average-pool 2x2: 28 -> 14 -> 7 -> 3
        *[("monai_densenet121", s, d) for s, d in [(28, 3), (32, 4), (64, 4), (128, 4)]],
    ],
)
def test_stem_keeps_small_images_large_enough(
    architecture: str, image_size: int, side: int
) -> None:
    net = build_network(architecture, 1, 2, width=8, dropout=0.0, image_size=image_size)
    assert all(not isinstance(m, nn.Conv3d) for m in net.modules())  # MONAI's default is 3-D
    assert _last_stage_side(net, image_size) == side


@pytest.mark.parametrize(("image_size", "side"), [(32, 2), (64, 4), (128, 4)])
def test_efficientnet_stem_keeps_small_images_large_enough(image_size: int, side: int) -> None:
    net = build_network("monai_efficientnet_b0", 1, 2, 8, 0.0, image_size=image_size)
    assert _last_stage_side(net, image_size) == side


@pytest.mark.parametrize("architecture", MONAI)
def test_channels_classes_dropout_and_temperature_folding(architecture: str) -> None:
    torch.manual_seed(0)
    net = build_network(architecture, 3, 5, width=8, dropout=0.3, image_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    assert logits_of(net, x).shape == (2, 5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in net.modules())
    assert final_linear(net).out_features == 5  # the head calibration scales
    before = logits_of(net, x)
    fold_temperature(net, 2.0)
    torch.testing.assert_close(logits_of(net, x), before / 2)


def test_serving_a_smallcnn_never_imports_monai() -> None:
    code = (
        "import sys\n"
        "from medflow.models.artifact import ModelSpec\n"
        "from medflow.config import PreprocessParams\n"
        "spec = ModelSpec('smallcnn', 1, 2, 8, 0.1, ['a', 'b'], PreprocessParams().model_dump())\n"
        "spec.build()\n"
        "assert 'monai' not in sys.modules, 'monai imported'\n"
        "spec = ModelSpec('monai_resnet18', 1, 2, 8, 0.1, ['a', 'b'],"
        " PreprocessParams().model_dump())\n"
        "spec.build()\n"
        "assert 'monai' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("architecture", "channels", "classes"),
    [
        ("monai_resnet18", 1, 2),
        pytest.param("monai_resnet34", 1, 2, marks=pytest.mark.slow),
        pytest.param("monai_densenet121", 1, 2, marks=pytest.mark.slow),
        ("monai_efficientnet_b0", 3, 3),
    ],
)
def test_tiny_fit_writes_a_model_load_model_rebuilds(
    tmp_path: Path, architecture: str, channels: int, classes: int
) -> None:
    """Two optimizer steps at 32 px on the CPU; model.json alone rebuilds the network (its
    stem depends on the image size): the kept checkpoint's logits, scaled by the temperature."""
    arrays = write_arrays(tmp_path / "arrays", n=24, channels=channels, classes=classes, size=32)
    p = TrainParams(
        architecture=architecture,
        max_epochs=1,
        batch_size=12,
        time_budget_minutes=None,  # one network of max_epochs
        tta=False,
        calibration="temperature",
    )
    names = [f"c{i}" for i in range(classes)]
    result = run_train(p, names, arrays, tmp_path / "models")
    assert 0.0 <= result.best_val_auroc <= 1.0

    net, spec = load_model(tmp_path / "models")
    assert spec.architecture == architecture and spec.preprocess["image_size"] == 32
    assert spec.provenance["pretrained_weights"] is None
    state = torch.load(tmp_path / "models" / "checkpoints" / "best.ckpt", weights_only=True)
    trained = spec.build()
    trained.load_state_dict(
        {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}
    )
    x_val = torch.from_numpy(load_split(arrays, "val")[0].copy())
    temperature = spec.provenance["calibration"]["temperature"]
    assert logits_of(net, x_val).shape == (len(x_val), classes)
    torch.testing.assert_close(
        logits_of(net, x_val) * temperature, logits_of(trained.eval(), x_val), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("architecture", MONAI)
def test_gradcam_explains_the_monai_backbones(architecture: str) -> None:
    from medflow.serving.gradcam import GradCam

    torch.manual_seed(0)
    net = build_network(architecture, 1, 2, width=8, dropout=0.0, image_size=32).eval()
    image = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    cam = GradCam(net)(image, target=1)
    assert cam.shape == (32, 32) and np.isfinite(cam).all()
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)


def test_the_bento_carries_monai() -> None:
    """The Bento rebuilds monai_* networks from model.json: MONAI must be among its packages
    (tests/unit/test_lock.py checks the pin against requirements.lock)."""
    import yaml

    bentofile = Path(__file__).resolve().parents[3] / "deploy" / "bentofile.yaml"
    packages = yaml.safe_load(bentofile.read_text())["python"]["packages"]
    assert [p for p in packages if p.startswith("monai==")], packages
