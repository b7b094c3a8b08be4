"""Grad-CAM on both networks, and the PNG it is returned as."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medflow.models.net import SmallCNN, SmallResNet, build_network
from medflow.serving.gradcam import GradCam, cam_layer, overlay, png_bytes


@pytest.mark.parametrize("architecture", ["smallcnn", "resnet"])
def test_gradcam_is_a_normalised_map_at_input_size(architecture: str) -> None:
    torch.manual_seed(0)
    net = build_network(architecture, 1, 2, width=8, dropout=0.0).eval()
    image = np.random.default_rng(0).random((1, 32, 32), dtype=np.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cam = GradCam(net)(image, target=1)
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)
    # the served network is untouched: no hooks, no gradients
    assert not net.features[-1]._forward_hooks
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_gradcam_follows_the_evidence() -> None:
    """A network whose convolutions pass intensity through and whose class-1 logit grows with
    it: the heat of class 1 lies where the image is bright."""
    net = SmallCNN(1, 2, width=4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.weight[:, :, 1, 1] = 1.0  # centre tap only: intensity passes through
        net.head[-1].weight.copy_(torch.tensor([[-1.0] * 16, [1.0] * 16]))
        net.head[-1].bias.zero_()
    net.eval()
    image = np.zeros((1, 32, 32), dtype=np.float32)
    image[:, 8:24, 20:28] = 1.0  # bright block on the right
    cam = GradCam(net)(image, target=1)
    assert cam[:, 16:].sum() > 0
    assert cam[:, :16].sum() < 0.1 * cam[:, 16:].sum()


def test_cam_layer_is_the_last_conv_stage() -> None:
    cnn, resnet = SmallCNN(1, 2, width=4), SmallResNet(1, 2, width=4)
    assert cam_layer(cnn) is cnn.features[-1]
    assert cam_layer(resnet) is resnet.features[-1]
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3), nn.Flatten())
    assert cam_layer(plain) is plain[2]
    with pytest.raises(ValueError, match="no Conv2d"):
        cam_layer(nn.Linear(2, 2))


def test_png_round_trips_through_pillow() -> None:
    cam = np.linspace(0, 1, 12 * 20, dtype=np.float32).reshape(12, 20)
    rgb = overlay(np.full((1, 12, 20), 0.5, dtype=np.float32), cam)
    assert rgb.shape == (12, 20, 3) and rgb.dtype == np.uint8
    with Image.open(io.BytesIO(png_bytes(rgb))) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (20, 12))
        assert np.array_equal(np.asarray(im), rgb)
