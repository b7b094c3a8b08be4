"""Calibration: temperature and Platt fitted, folded into the network (every member of an
ensemble), and chosen by cross-fitted NLL; and what it may not change."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medflow.models.calibration import (
    Calibration,
    fit_platt,
    fit_temperature,
    fold_calibration,
    fold_temperature,
    logits_of,
    select_calibration,
)
from medflow.models.ensemble import assemble
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


def _shifted_binary(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary labels from sigmoid(m - 1); the logits handed over have margin 2 m (too sharp and
    a bias of +1 on the positive class)."""
    g = torch.Generator().manual_seed(1)
    m = torch.randn(n, generator=g) * 2
    labels = torch.bernoulli(torch.sigmoid(m - 1), generator=g).long()
    return torch.stack([torch.zeros(n), 2 * m], dim=1), labels


def test_platt_recovers_scale_and_bias_and_folds_into_the_network() -> None:
    logits, labels = _shifted_binary()
    a, b = fit_platt(logits, labels)
    assert a == pytest.approx(0.5, rel=0.1) and b == pytest.approx(-1.0, abs=0.15)
    net = build_network("smallcnn", 1, 2, 4, 0.0).eval()
    x = torch.rand(16, 1, 16, 16)
    before = logits_of(net, x)
    fold_calibration(net, Calibration("platt", scale=a, shift=b))
    after = logits_of(net, x)
    margin = lambda z: z[:, 1] - z[:, 0]  # noqa: E731
    torch.testing.assert_close(margin(after), a * margin(before) + b, rtol=1e-4, atol=1e-4)


def test_auto_keeps_the_lower_cross_fitted_nll_of_none_and_temperature() -> None:
    logits, labels = _overconfident(scale=4.0)
    chosen = select_calibration("auto", logits, labels)
    assert chosen.method == "temperature" and chosen.temperature == pytest.approx(4.0, rel=0.1)
    assert set(chosen.cross_fitted_nll) == {"none", "temperature"}
    assert chosen.cross_fitted_nll["temperature"] < chosen.cross_fitted_nll["none"]

    logits, labels = _overconfident(scale=1.0)  # calibrated already: fitting T buys nothing
    kept = select_calibration("auto", logits, labels)
    assert kept.cross_fitted_nll["none"] <= kept.cross_fitted_nll["temperature"] + 1e-3
    assert kept.method in ("none", "temperature")
    assert kept.temperature == pytest.approx(1.0, rel=0.1)


def test_platt_is_named_not_chosen_by_auto_and_refused_for_three_classes() -> None:
    logits, labels = _shifted_binary()
    assert select_calibration("auto", logits, labels).method != "platt"
    assert select_calibration("platt", logits, labels).method == "platt"
    three, labels3 = _overconfident()
    with pytest.raises(ValueError, match="two classes"):
        select_calibration("platt", three, labels3)


def test_an_ensemble_is_calibrated_in_every_member() -> None:
    torch.manual_seed(0)
    members = [build_network("smallcnn", 1, 2, 4, 0.0) for _ in range(3)]
    net = assemble(members, ["identity", "shift+", "shift-"], shift=1).eval()
    x = torch.rand(8, 1, 16, 16)
    before = logits_of(net, x)
    fold_temperature(net, 2.0)
    torch.testing.assert_close(logits_of(net, x), before / 2.0, rtol=1e-4, atol=1e-5)
