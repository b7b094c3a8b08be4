"""Networks: plain nn.Modules (no Lightning), so serving needs only torch."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A compact VGG-style CNN that trains in minutes on a CPU; no pretrained weights.

    Four stages of two 3x3 conv-BN-ReLU layers, max-pooling between stages,
    global average pooling and a linear head giving one logit per class.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers.append(_block(c_in, c_out))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Residual(nn.Module):
    """Basic residual block (two 3x3 conv-BN, identity or 1x1 projection shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        # zero-init the last BN so every block starts as the identity: trains faster, stabler
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for small images that trains in minutes on a CPU; no pretrained weights.

    A stride-2 3x3 stem, then three stages of two residual blocks at widths w, 2w, 4w, each
    halving the resolution (64 px in: 16, 8, 4 px; a ResNet's stem works at 1/4 too, and it
    is where a CPU spends its time), global average pooling and a linear head, one logit per
    class.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = width
        for c_out in (width, width * 2, width * 4):
            blocks += [_Residual(c_in, c_out, 2), _Residual(c_out, c_out, 1)]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


# Names as written in params.yaml (train.architecture) and in model.json (ModelSpec).
ARCHITECTURES: dict[str, type[nn.Module]] = {"smallcnn": SmallCNN, "resnet": SmallResNet}


def build_network(
    architecture: str, in_channels: int, num_classes: int, width: int, dropout: float
) -> nn.Module:
    """The network named `architecture` (case-insensitive: model.json of older models says
    'SmallCNN')."""
    cls = ARCHITECTURES.get(architecture.lower())
    if cls is None:
        raise ValueError(
            f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
        )
    return cls(in_channels, num_classes, width, dropout)
