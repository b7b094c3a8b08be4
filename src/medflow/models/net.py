"""Networks: plain nn.Modules (no Lightning). medflow's own need only torch; the monai_*
standard backbones (2-D, adapted to small images) import MONAI when built."""

from __future__ import annotations

from collections.abc import Callable

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


def _small_image_stem(image_size: int) -> str:
    """How much a standard backbone's stem may shrink an image of `image_size` px.

    A standard stem (7x7 stride-2 conv, 3x3 stride-2 max-pool) divides the side by 4: 224 px
    leaves 56 px for the first stage, but 32 px would leave 8 and 1 px at the end. So its
    first stage sees about 32 px: 'standard' above 64 px, 'no_pool' (the stride-2 conv alone)
    from 33 to 64 px, 'none' (a 3x3 stride-1 conv, as CIFAR and MedMNIST-28 networks do) at
    32 px and below.
    """
    if image_size > 64:
        return "standard"
    return "no_pool" if image_size > 32 else "none"


def _monai_resnet(
    layers: list[int], in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    from monai.networks.nets import ResNet

    stem = _small_image_stem(image_size)
    net = ResNet(
        "basic",
        layers,
        [64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=3 if stem == "none" else 7,
        conv1_t_stride=1 if stem == "none" else 2,
        no_max_pool=stem != "standard",
        bias_downsample=False,  # torchvision's layout and parameter names
        num_classes=num_classes,
    )
    # dropout before `fc` without renaming a parameter (avgpool has none)
    net.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout))
    return net


def monai_resnet18(
    in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    """MONAI's 2-D ResNet-18 (torchvision's layout: basic blocks [2, 2, 2, 2], widths 64-512),
    its stem adapted to `image_size` (see `_small_image_stem`), dropout before `fc`."""
    return _monai_resnet([2, 2, 2, 2], in_channels, num_classes, dropout, image_size)


def monai_resnet34(
    in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    """MONAI's 2-D ResNet-34 (basic blocks [3, 4, 6, 3]), otherwise as `monai_resnet18`."""
    return _monai_resnet([3, 4, 6, 3], in_channels, num_classes, dropout, image_size)


def monai_densenet121(
    in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    """MONAI's 2-D DenseNet-121 (growth 32, blocks [6, 12, 24, 16]), its stem (`conv0`,
    `pool0`) adapted to `image_size` as the ResNets' are, dropout before the linear head."""
    from collections import OrderedDict

    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    stem = _small_image_stem(image_size)
    if stem == "none":
        net.features.conv0 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(net.features.conv0.weight)  # as DenseNet's own init
    if stem != "standard":
        net.features.pool0 = nn.Identity()
    head = net.class_layers
    net.class_layers = nn.Sequential(
        OrderedDict(
            relu=head.relu,
            pool=head.pool,
            flatten=head.flatten,
            drop=nn.Dropout(dropout),
            out=head.out,
        )
    )
    return net


def monai_efficientnet_b0(
    in_channels: int, num_classes: int, dropout: float, image_size: int
) -> nn.Module:
    """MONAI's 2-D EfficientNet-B0 (built with pretrained=False: nothing is downloaded). Its
    stem is a 3x3 stride-2 conv and the network divides the side by 32; at 64 px and below the
    stem keeps stride 1 (64 px ends at 4 px, not 2). `dropout` is the head's dropout rate."""
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN(
        "efficientnet-b0",
        pretrained=False,
        spatial_dims=2,
        in_channels=in_channels,
        num_classes=num_classes,
    )
    if image_size <= 64:
        out = net._conv_stem.out_channels
        net._conv_stem = nn.Conv2d(in_channels, out, 3, stride=1, padding=1, bias=False)
        net._conv_stem_padding = nn.Identity()  # the conv pads itself: "same" at stride 1
    net._dropout = nn.Dropout(dropout)
    return net


# Names as written in params.yaml (train.architecture) and in model.json (ModelSpec).
_OWN: dict[str, type[nn.Module]] = {"smallcnn": SmallCNN, "resnet": SmallResNet}
# Standard layouts: their widths are fixed (published weights fit), `width` is not used. They
# import MONAI when built, so serving a smallcnn never imports it.
_MONAI: dict[str, Callable[[int, int, float, int], nn.Module]] = {
    "monai_resnet18": monai_resnet18,
    "monai_resnet34": monai_resnet34,
    "monai_densenet121": monai_densenet121,
    "monai_efficientnet_b0": monai_efficientnet_b0,
}
ARCHITECTURES = (*_OWN, *_MONAI)


def build_network(
    architecture: str,
    in_channels: int,
    num_classes: int,
    width: int,
    dropout: float,
    image_size: int = 64,
) -> nn.Module:
    """The network named `architecture` (case-insensitive: model.json of older models says
    'SmallCNN'), for square images of side `image_size` (the monai_* stems depend on it)."""
    name = architecture.lower()
    if name in _OWN:
        return _OWN[name](in_channels, num_classes, width, dropout)
    if name in _MONAI:
        return _MONAI[name](in_channels, num_classes, dropout, image_size)
    raise ValueError(
        f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}"
    )


def build_unet(
    in_channels: int, num_segments: int, channels: list[int], dropout: float = 0.0
) -> nn.Module:
    """The segmentation network: MONAI's 2-D U-Net with one residual unit per level, giving
    per-segment logits (N, num_segments, S, S) for a side S divisible by 2**(levels - 1)."""
    from monai.networks.nets import UNet

    if len(channels) < 2:
        raise ValueError(f"a U-Net needs at least 2 levels of channels, got {channels}")
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_segments,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=1,
        dropout=dropout,
    )
