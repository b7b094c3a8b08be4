"""The population stability index of the predicted probabilities: production against the
test split's predictions stored with the model.

Bins are cut at the reference's quantiles, so each holds about the same share of the
reference. monitor.psi_bins is the most; fewer when the samples are small: at least
MIN_PER_BIN reference values per bin, and few enough that the PSI expected from sampling alone,
about (bins - 1) x (1/n_reference + 1/n_production), stays within NOISE_SHARE of
monitor.max_psi (else two samples of one distribution would often break the rule). Tied
quantiles merge bins. Every bin count is smoothed by SMOOTHING before the shares are taken, so
an empty bin gives a large but finite term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_REFERENCE = 10  # fewer reference probabilities: no PSI (the bins would mean nothing)
MIN_PER_BIN = 5  # reference values per bin, at least: fewer bins for a small reference
NOISE_SHARE = 0.25  # the PSI expected without a shift may be at most this share of max_psi
SMOOTHING = 0.5  # added to every bin count on both sides (a Jeffreys prior)


@dataclass(frozen=True)
class Psi:
    """The PSI of one probability column, with the bins it was computed on."""

    score: float
    cuts: list[float]  # inner bin edges; bin i is (cuts[i-1], cuts[i]]
    reference_counts: list[int]
    production_counts: list[int]
    bins_note: str  # how many bins, and why not psi_bins when fewer

    @property
    def bins(self) -> int:
        return len(self.reference_counts)

    @property
    def noise(self) -> float:
        """The PSI expected from sampling alone, with no shift: about (bins - 1) x
        (1/n_reference + 1/n_production). A score near it is not evidence of a shift."""
        n_ref, n_prod = sum(self.reference_counts), sum(self.production_counts)
        return (self.bins - 1) * (1 / n_ref + 1 / n_prod)


@dataclass(frozen=True)
class ProbabilityShift:
    """The rule's PSI (binary: of p(class 1); multi-class: the largest per-class PSI), each
    class's PSI and the counts on both sides."""

    score: float
    column: str  # the class whose probability gave `score`
    per_class: dict[str, Psi]
    n_reference: int
    n_production: int


def bins_for(n_reference: int, n_production: int, psi_bins: int, max_psi: float) -> tuple[int, str]:
    """How many quantile bins samples of these sizes support (before ties), and why when
    fewer than psi_bins: MIN_PER_BIN reference values per bin, and the expected PSI without a
    shift within NOISE_SHARE x max_psi. Never fewer than 2."""
    by_count = n_reference // MIN_PER_BIN
    by_noise = 1 + math.floor(NOISE_SHARE * max_psi / (1 / n_reference + 1 / n_production))
    bins = max(2, min(psi_bins, by_count, by_noise))
    why = []
    if by_count < psi_bins:
        why.append(f"{n_reference} test-split predictions, at least {MIN_PER_BIN} per bin")
    if by_noise < psi_bins:
        why.append(
            f"with {n_reference} test-split and {n_production} production predictions, more"
            f" bins would let sampling alone give a PSI above {NOISE_SHARE:g} x"
            " monitor.max_psi"
        )
    return bins, "; ".join(why)


def psi(reference: np.ndarray, production: np.ndarray, psi_bins: int, max_psi: float) -> Psi:
    """PSI = sum over bins of (production share - reference share) x ln(production share /
    reference share), with bins at the reference's quantiles (bins_for says how many).

    Raises:
        ValueError: fewer than MIN_REFERENCE reference values, no production values, or a
            reference whose values are all equal (no bins can be cut).
    """
    reference = np.asarray(reference, dtype=float)
    production = np.asarray(production, dtype=float)
    if len(reference) < MIN_REFERENCE:
        raise ValueError(
            f"the reference holds {len(reference)} test-split predictions, fewer than"
            f" {MIN_REFERENCE}: too few to cut probability bins"
        )
    if len(production) == 0:
        raise ValueError("no production predictions to compare")
    wanted, why = bins_for(len(reference), len(production), psi_bins, max_psi)
    cuts = np.unique(np.quantile(reference, np.arange(1, wanted) / wanted))
    # a cut at the reference's maximum would leave its upper bin without reference values
    cuts = cuts[cuts < reference.max()]
    if len(cuts) == 0:
        raise ValueError("the reference's predicted probabilities are all equal: no bins")
    bins = len(cuts) + 1
    notes = [f"{wanted}, not monitor.psi_bins {psi_bins}: {why}"] if why else []
    if bins < wanted:
        notes.append(f"{bins} after merging bins whose test-split quantiles are tied")
    note = f"{bins} bins at the test split's quantiles" + (
        f" ({'; '.join(notes)})" if notes else ""
    )
    ref_counts = np.bincount(np.searchsorted(cuts, reference, side="left"), minlength=bins)
    prod_counts = np.bincount(np.searchsorted(cuts, production, side="left"), minlength=bins)
    p_ref = (ref_counts + SMOOTHING) / (len(reference) + SMOOTHING * bins)
    p_prod = (prod_counts + SMOOTHING) / (len(production) + SMOOTHING * bins)
    score = float(np.sum((p_prod - p_ref) * np.log(p_prod / p_ref)))
    return Psi(
        score=score,
        cuts=[float(c) for c in cuts],
        reference_counts=[int(c) for c in ref_counts],
        production_counts=[int(c) for c in prod_counts],
        bins_note=note,
    )


def probability_shift(
    reference: np.ndarray,
    production: np.ndarray,
    class_names: Sequence[str],
    psi_bins: int,
    max_psi: float,
) -> ProbabilityShift:
    """The shift of the predicted-probability distribution, (N, K) reference and (M, K)
    production probabilities in class order: binary, the PSI of p(class 1); multi-class, the
    largest of the per-class PSIs. Raises ValueError as psi()."""
    reference = np.asarray(reference, dtype=float)
    production = np.asarray(production, dtype=float)
    k = len(class_names)
    for name, arr in (("reference", reference), ("production", production)):
        if arr.ndim != 2 or arr.shape[1] != k:
            raise ValueError(f"{name} probabilities have shape {arr.shape}, expected (n, {k})")
    columns = [1] if k == 2 else range(k)
    per_class = {
        class_names[c]: psi(reference[:, c], production[:, c], psi_bins, max_psi) for c in columns
    }
    column = max(per_class, key=lambda c: per_class[c].score)
    return ProbabilityShift(
        score=per_class[column].score,
        column=column,
        per_class=per_class,
        n_reference=len(reference),
        n_production=len(production),
    )
