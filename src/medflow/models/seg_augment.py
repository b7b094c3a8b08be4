"""Batch augmentation of image and mask together, for segmentation: one random affine for both
(the image resampled bilinearly, the mask by nearest neighbour), intensity on the image only.

The draws are models.augment's, in its order, from the generator passed in: with the same
generator the image moves exactly as augment.random_affine would move it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medflow.config import AugmentParams
from medflow.models.augment import _uniform


def _theta(
    n: int, h: int, w: int, params: AugmentParams, generator: torch.Generator, dev: torch.device
) -> torch.Tensor:
    # the draws of augment.random_affine: angle, scale, then the shift in [-1, 1] units
    angle = _uniform(n, math.radians(params.max_rotation), generator, dev)
    scale = 1 + _uniform(n, params.max_scale, generator, dev)
    tx = _uniform(n, 2 * params.max_shift / w, generator, dev)
    ty = _uniform(n, 2 * params.max_shift / h, generator, dev)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)


def augment_pair(
    x: torch.Tensor, mask: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentations of `params` on images (N, C, H, W) in [0, 1] and their masks
    (N, K, H, W, 0/1, any dtype): shift, rotation and scale move both alike (zero fill);
    contrast and brightness change the image only; a horizontal flip (when allowed) flips
    both. Returns the image batch and the mask batch as float (0/1)."""
    n, _, h, w = x.shape
    dev = x.device
    mask = mask.to(x.dtype)
    if params.max_rotation > 0 or params.max_scale > 0 or params.max_shift > 0:
        theta = _theta(n, h, w, params, generator, dev).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if params.contrast > 0:
        gain = 1 + _uniform(n, params.contrast, generator, dev).to(x.dtype)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * gain + mean
    if params.brightness > 0:
        x = x + _uniform(n, params.brightness, generator, dev).to(x.dtype)[:, None, None, None]
    if params.horizontal_flip:
        flip = (torch.rand(n, generator=generator, device=dev) < 0.5)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
        mask = torch.where(flip, mask.flip(-1), mask)
    return x, mask
