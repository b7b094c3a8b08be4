"""Grad-CAM with plain torch hooks, and the heatmap as a PNG.

The target layer is the network's last conv stage (`features[-1]` of medflow.models.net's
networks, else the last nn.Conv2d); its activations are weighted by the mean gradient of the
explained class's logit (Selvaraju et al., 2017), ReLU'd and upsampled to the input.
"""

from __future__ import annotations

import copy
import struct
import threading
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medflow.models.ensemble import members_of


def cam_layer(net: nn.Module) -> nn.Module:
    """The layer whose activations Grad-CAM weighs: the network's last conv stage."""
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential) and len(features):
        return features[-1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


class GradCam:
    """Grad-CAM of a network; of an ensemble (models.ensemble.Composite), the mean of its
    members' heatmaps on the image itself (test-time views are not explained). Works on its
    own copies (the hooks and gradients never touch the network that serves predictions) and
    one image at a time (a lock: the hooks keep state)."""

    def __init__(self, net: nn.Module) -> None:
        self._lock = threading.Lock()
        self._members = [_MemberCam(member) for member in members_of(net)]

    def __call__(self, image: np.ndarray, target: int) -> np.ndarray:
        """Heatmap (H, W) in [0, 1] of `image` (C, H, W) for class index `target`."""
        with self._lock, torch.enable_grad():
            cam = torch.stack([member(image, target) for member in self._members]).mean(0)
            top = float(cam.max())
            cam = cam / top if top > 0 else torch.zeros_like(cam)
        return cam.numpy().astype(np.float32)


class _MemberCam:
    """Grad-CAM of one plain network (a copy), before normalisation."""

    def __init__(self, net: nn.Module) -> None:
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._activation: torch.Tensor | None = None
        self._gradient: torch.Tensor | None = None
        cam_layer(self.net).register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._activation = output
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad: torch.Tensor) -> None:
        self._gradient = grad

    def __call__(self, image: np.ndarray, target: int) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].requires_grad_()
        logits = self.net(x)
        logits[0, int(target)].backward()
        activation, gradient = self._activation, self._gradient
        self._activation = self._gradient = None
        if activation is None or gradient is None:
            raise RuntimeError("Grad-CAM hooks did not fire: is cam_layer in the forward?")
        weights = gradient[0].mean(dim=(1, 2))
        cam = torch.relu((weights[:, None, None] * activation[0].detach()).sum(0))
        return F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The model input (C, H, W) in grey with the heatmap blended on: (H, W, 3) uint8.

    Colours run black -> red -> yellow -> white with the heat (a perceptually ordered ramp
    that needs no colormap library)."""
    grey = image.mean(axis=0) if image.ndim == 3 else image
    heat = np.stack(
        [np.clip(3 * cam, 0, 1), np.clip(3 * cam - 1, 0, 1), np.clip(3 * cam - 2, 0, 1)], -1
    )
    rgb = (1 - alpha) * grey[..., None] + alpha * heat
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 as a PNG file (8-bit RGB), or (H, W) uint8 as 8-bit grey; no
    filtering, zlib only."""
    if rgb.ndim == 2:
        (height, width), colour = rgb.shape, 0
    else:
        (height, width, _), colour = rgb.shape, 2
    rows = np.asarray(rgb, dtype=np.uint8).reshape(height, -1)
    # each row starts with its filter type, 0 (none)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
