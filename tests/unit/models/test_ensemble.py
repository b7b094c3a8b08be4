"""An ensemble with test-time views is one network: saved, loaded and explained as one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from medflow.config import AugmentParams, PreprocessParams
from medflow.models.artifact import ModelSpec, load_model, save_model
from medflow.models.calibration import logits_of
from medflow.models.ensemble import Composite, assemble, members_of, tta_views, view
from medflow.models.net import build_network
from medflow.serving.gradcam import GradCam


def test_views_respect_the_training_augmentations() -> None:
    assert tta_views(AugmentParams()) == ["identity", "shift+", "shift-"]  # flips off
    assert "hflip" in tta_views(AugmentParams(horizontal_flip=True))
    assert tta_views(AugmentParams(max_shift=0)) == ["identity"]


def test_views_move_the_image_as_named() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(view(x, "hflip", 1)[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    down = view(x, "shift+", 1)
    assert down[0, 0, 1, 1] == x[0, 0, 0, 0] and down[0, 0, 0].abs().sum() == 0
    up = view(x, "shift-", 1)
    assert up[0, 0, 0, 0] == x[0, 0, 1, 1] and up[0, 0, -1].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown test-time view"):
        view(x, "vflip", 1)


def test_composite_is_the_mean_of_members_over_views() -> None:
    torch.manual_seed(0)
    members = [build_network("smallcnn", 1, 2, 4, 0.0).eval() for _ in range(2)]
    net = assemble(members, ["identity", "hflip"]).eval()
    assert isinstance(net, Composite) and members_of(net) == members
    x = torch.rand(5, 1, 16, 16)
    expected = sum(m(v) for m in members for v in (x, torch.flip(x, dims=(-1,)))) / 4
    torch.testing.assert_close(logits_of(net, x), expected.detach())
    single = build_network("smallcnn", 1, 2, 4, 0.0)
    assert assemble([single], ["identity"]) is single  # one plain network keeps its keys


def test_model_json_rebuilds_the_ensemble_and_gradcam_explains_it(tmp_path: Path) -> None:
    torch.manual_seed(1)
    members = [build_network("smallcnn", 1, 2, 4, 0.0) for _ in range(3)]
    net = assemble(members, ["identity", "shift+", "shift-"], shift=2).eval()
    spec = ModelSpec(
        "smallcnn", 1, 2, 4, 0.0, ["a", "b"], PreprocessParams(image_size=16).model_dump()
    )
    save_model(tmp_path, net, dataclasses.replace(spec, members=3, tta=net.views, tta_shift=2))
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec.members == 3 and loaded_spec.tta == ["identity", "shift+", "shift-"]
    x = torch.rand(4, 1, 16, 16)
    torch.testing.assert_close(logits_of(loaded, x), logits_of(net, x))
    cam = GradCam(loaded)(x[0].numpy(), target=1)
    assert cam.shape == (16, 16) and 0.0 <= cam.min() and cam.max() <= 1.0
