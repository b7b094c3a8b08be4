"""The PSI of predicted probabilities: its value, its bins, and how small samples are handled."""

import math

import numpy as np
import pytest

from medflow.monitor.psi import (
    MIN_REFERENCE,
    NOISE_SHARE,
    SMOOTHING,
    bins_for,
    probability_shift,
    psi,
)


def test_the_value_by_hand() -> None:
    # 100 reference values, 4 bins cut at 25.5, 50.5, 75.5 (each bin holds 25 of them)
    reference = np.arange(1, 101, dtype=float)
    production = np.full(40, 90.0)  # all in the top bin
    result = psi(reference, production, psi_bins=4, max_psi=10.0)
    assert result.bins == 4 and result.reference_counts == [25, 25, 25, 25]
    assert result.production_counts == [0, 0, 0, 40]
    p_ref = np.full(4, (25 + SMOOTHING) / (100 + 4 * SMOOTHING))
    p_prod = (np.array([0, 0, 0, 40]) + SMOOTHING) / (40 + 4 * SMOOTHING)
    expected = float(np.sum((p_prod - p_ref) * np.log(p_prod / p_ref)))
    assert result.score == pytest.approx(expected)
    assert math.isfinite(result.score) and result.score > 2  # empty bins: large, finite
    assert result.bins_note == "4 bins at the test split's quantiles"


def test_same_distribution_is_near_the_noise_and_a_shift_is_far_above() -> None:
    rng = np.random.default_rng(0)
    reference = rng.beta(2, 5, 500)
    same = psi(reference, rng.beta(2, 5, 400), psi_bins=10, max_psi=0.25)
    shifted = psi(reference, rng.beta(5, 2, 400), psi_bins=10, max_psi=0.25)
    assert same.bins == 10
    assert same.score < 3 * same.noise < 0.25
    assert shifted.score > 1.0
    assert same.noise == pytest.approx(9 * (1 / 500 + 1 / 400))


@pytest.mark.parametrize(
    ("n_reference", "n_production", "max_psi", "expected", "why"),
    [
        (1000, 1000, 0.25, 10, ""),  # plenty: monitor.psi_bins
        (28, 10**6, 2.0, 5, "at least 5 per bin"),  # a lenient max_psi: 5 values per bin
        (28, 100, 0.25, 2, "sampling alone"),  # the noise of 28 and 100 values decides
        (10, 10, 0.25, 2, "sampling alone"),  # never fewer than 2
    ],
)
def test_small_samples_get_fewer_bins(n_reference, n_production, max_psi, expected, why) -> None:
    bins, reason = bins_for(n_reference, n_production, psi_bins=10, max_psi=max_psi)
    assert bins == expected and why in reason
    noise = (bins - 1) * (1 / n_reference + 1 / n_production)
    assert noise <= NOISE_SHARE * max_psi or bins == 2


def test_a_small_reference_rarely_breaks_the_rule_by_chance() -> None:
    """Two samples of one distribution: with a 28-image test split (the tiny pipeline's) and
    100 predictions, the PSI stays within max_psi in at least 97% of draws."""
    rng = np.random.default_rng(1)
    scores = [
        psi(rng.beta(2, 2, 28), rng.beta(2, 2, 100), psi_bins=10, max_psi=0.25).score
        for _ in range(300)
    ]
    assert np.mean(np.array(scores) > 0.25) < 0.03
    # while a real shift still does
    shifted = psi(rng.beta(2, 2, 28), rng.beta(6, 1.5, 100), psi_bins=10, max_psi=0.25)
    assert shifted.score > 0.25
    assert "not monitor.psi_bins 10" in shifted.bins_note and "sampling alone" in shifted.bins_note


def test_tied_quantiles_merge_bins() -> None:
    # most of the reference sits at 0.0: its quantile cuts coincide
    reference = np.r_[np.zeros(80), np.linspace(0.5, 1, 20)]
    result = psi(reference, np.zeros(500), psi_bins=10, max_psi=10.0)
    assert result.bins < 10 and "tied" in result.bins_note
    assert sum(result.reference_counts) == 100 and sum(result.production_counts) == 500


@pytest.mark.parametrize(
    ("reference", "production", "message"),
    [
        (np.linspace(0, 1, MIN_REFERENCE - 1), np.ones(50), "too few"),
        (np.linspace(0, 1, 50), np.array([]), "no production"),
        (np.full(50, 0.3), np.ones(50), "all equal"),
    ],
)
def test_what_cannot_be_binned_is_refused(reference, production, message) -> None:
    with pytest.raises(ValueError, match=message):
        psi(reference, production, psi_bins=10, max_psi=0.25)


def test_binary_uses_the_positive_class_and_multiclass_the_largest() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(2, 5, 300)
    binary = probability_shift(
        np.c_[1 - p, p], np.c_[1 - p[:200], p[:200]], ["normal", "lesion"], 10, 0.25
    )
    assert list(binary.per_class) == ["lesion"] and binary.column == "lesion"
    assert (binary.n_reference, binary.n_production) == (300, 200)

    names = ["a", "b", "c"]
    ref = rng.dirichlet([2, 2, 2], 300)
    prod = rng.dirichlet([2, 2, 2], 300)
    prod[:, [1, 2]] = np.c_[prod[:, 1] * 0.2, prod[:, 2] + prod[:, 1] * 0.8]  # b -> c
    multi = probability_shift(ref, prod, names, 10, 0.25)
    assert set(multi.per_class) == set(names)
    assert multi.score == max(v.score for v in multi.per_class.values())
    assert multi.column in ("b", "c")

    with pytest.raises(ValueError, match=r"expected \(n, 3\)"):
        probability_shift(ref, prod[:, :2], names, 10, 0.25)
