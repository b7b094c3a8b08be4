"""Temperature scaling: the fitted T, folding it into the network, and what it may not change."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medflow.models.calibration import fit_temperature, fold_temperature, logits_of
from medflow.models.net import build_network


def _overconfident(n: int = 4000, scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the logits handed over are scale * z (over-confident)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 3, generator=g) * 1.5
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, labels


def test_recovers_the_temperature_of_overconfident_logits() -> None:
    logits, labels = _overconfident(scale=4.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, rel=0.1)
    assert F.cross_entropy(logits / t, labels) < F.cross_entropy(logits, labels)


def test_calibrated_logits_stay_put() -> None:
    logits, labels = _overconfident(scale=1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.1)


def test_separated_split_leaves_the_network_uncalibrated(caplog: pytest.LogCaptureFixture) -> None:
    # every image ranked right: the NLL falls as T shrinks, without a minimum inside the range
    labels = torch.tensor([0, 1] * 40)
    logits = torch.stack([-(labels.double() * 2 - 1), labels.double() * 2 - 1], dim=1)
    assert F.cross_entropy(logits / 0.1, labels) < F.cross_entropy(logits, labels)
    with caplog.at_level("WARNING", logger="medflow.models.calibration"):
        assert fit_temperature(logits, labels) == 1.0
    assert "cannot be fitted" in caplog.text


def test_empty_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty validation split"):
        fit_temperature(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("architecture", ["smallcnn", "resnet"])
def test_folding_divides_the_logits_and_keeps_the_ranking(architecture: str) -> None:
    torch.manual_seed(0)
    net = build_network(architecture, 1, 2, width=8, dropout=0.0).eval()
    x = torch.randn(16, 1, 32, 32)
    before = logits_of(net, x)
    fold_temperature(net, 2.5)
    after = logits_of(net, x)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-4, atol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))


def test_non_positive_temperature_is_refused() -> None:
    net = build_network("smallcnn", 1, 2, width=8, dropout=0.0)
    with pytest.raises(ValueError, match="positive"):
        fold_temperature(net, -math.inf)
