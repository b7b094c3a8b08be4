"""Batch augmentations and the epoch-seeded sampler."""

from __future__ import annotations

import torch

from medflow.config import AugmentParams
from medflow.models.augment import augment_batch, random_affine
from medflow.models.lightning import EpochSampler, class_weights
from medflow.models.net import build_network


def _batch() -> torch.Tensor:
    return torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    p = AugmentParams()
    a = augment_batch(_batch(), p, torch.Generator().manual_seed(1))
    b = augment_batch(_batch(), p, torch.Generator().manual_seed(1))
    c = augment_batch(_batch(), p, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == _batch().shape


def test_affine_without_rotation_scale_shift_is_identity() -> None:
    p = AugmentParams(max_shift=0, max_rotation=0, max_scale=0)
    x = _batch()
    assert torch.allclose(random_affine(x, p, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_all_off_leaves_the_batch_alone() -> None:
    p = AugmentParams(max_shift=0, max_rotation=0, max_scale=0, brightness=0, contrast=0)
    x = _batch()
    assert torch.equal(augment_batch(x, p, torch.Generator().manual_seed(0)), x)


def test_no_flip_by_default_keeps_laterality() -> None:
    # a bright left half stays on the left with every default augmentation
    x = torch.zeros(16, 1, 32, 32)
    x[..., :12] = 1.0
    out = augment_batch(x, AugmentParams(), torch.Generator().manual_seed(0))
    assert (out[..., :16].mean((1, 2, 3)) > out[..., 16:].mean((1, 2, 3))).all()


def test_sampler_repeats_per_epoch_and_balances() -> None:
    s = EpochSampler(10, seed=3)
    s.set_epoch(4)
    first = list(s)
    s.set_epoch(4)
    assert list(s) == first and sorted(first) == list(range(10))
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = (1.0 / torch.bincount(labels).double())[labels]
    drawn = labels[list(EpochSampler(100, seed=0, weights=w)) * 1]
    assert 30 < int(drawn.sum()) < 70  # about half from the 10 % class


def test_class_weights_inverse_frequency() -> None:
    import numpy as np

    assert class_weights(np.array([0, 0, 0, 1]), 2) == [4 / 6, 4 / 2]


def test_networks_take_one_or_three_channels_and_any_class_count() -> None:
    for arch in ("resnet", "smallcnn", "SmallCNN"):
        for c, k in ((1, 2), (3, 5)):
            net = build_network(arch, c, k, 8, 0.1).eval()
            assert net(torch.zeros(2, c, 28, 28)).shape == (2, k)
