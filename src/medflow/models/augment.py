"""Batch augmentations for medical images, run on whatever device the batch is on.

All draws come from the generator passed in, so a run is repeatable from its seed (and a
resumed run draws the same numbers as an uninterrupted one: see Classifier).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medflow.config import AugmentParams


def _uniform(
    n: int, bound: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * bound


def random_shift(
    x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Translate each image by up to max_shift whole pixels (zero fill), on the batch's device."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def random_affine(
    x: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """Rotation, isotropic scale and translation (max_shift pixels) in one resampling of the
    batch (affine_grid + grid_sample, bilinear, zero fill): no per-image Python loop."""
    n, _, h, w = x.shape
    dev = x.device
    angle = _uniform(n, math.radians(params.max_rotation), generator, dev)
    scale = 1 + _uniform(n, params.max_scale, generator, dev)
    # affine_grid works in [-1, 1]: a shift of s pixels is 2 s / size
    tx = _uniform(n, 2 * params.max_shift / w, generator, dev)
    ty = _uniform(n, 2 * params.max_shift / h, generator, dev)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(
    x: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """The augmentations of `params` on a batch (N, C, H, W) with values in [0, 1]."""
    n = x.shape[0]
    dev = x.device
    if params.max_rotation > 0 or params.max_scale > 0:
        x = random_affine(x, params, generator)
    elif params.max_shift > 0:
        x = random_shift(x, params.max_shift, generator=_cpu_twin(generator))
    if params.contrast > 0:
        gain = 1 + _uniform(n, params.contrast, generator, dev).to(x.dtype)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * gain + mean
    if params.brightness > 0:
        x = x + _uniform(n, params.brightness, generator, dev).to(x.dtype)[:, None, None, None]
    if params.horizontal_flip:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _cpu_twin(generator: torch.Generator) -> torch.Generator:
    # random_shift draws its offsets on the CPU (they index a Python loop)
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)
