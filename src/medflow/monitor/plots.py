"""The monitor report's plots, as PNG bytes: predicted probabilities (test split against
production), manufacturer shares, image intensity per modality and the reliability of the
feedback. Drawn from numbers and category names only."""

from __future__ import annotations

from typing import Any

import numpy as np

from medflow.evaluation.metrics import calibration_bins
from medflow.monitor.result import ModelMonitoring

HIST_BINS = 20
MAX_MODALITY_PLOTS = 6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    from medflow.evaluation.plots import png_bytes

    return png_bytes(fig)


def probability_plot(m: ModelMonitoring) -> bytes | None:
    """Histograms of the PSI's class probability: the test split and production."""
    if len(m.probabilities) == 0:
        return None
    plt = _pyplot()
    column = m.shift.column if m.shift is not None else m.class_names[-1]
    c = m.class_names.index(column)
    edges = np.linspace(0, 1, HIST_BINS + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ref = m.reference.reference
    if ref is not None and ref.class_names == m.class_names:
        values = np.array(ref.probabilities)[:, c]
        ax.hist(values, edges, density=True, alpha=0.5, label=f"test split (n={len(values)})")
    ax.hist(
        m.probabilities[:, c],
        edges,
        density=True,
        alpha=0.5,
        label=f"production (n={len(m.probabilities)})",
    )
    title = f"p({column})"
    if m.shift is not None:
        title += f", PSI {m.shift.score:.3f}"
    ax.set(xlabel=f"predicted p({column})", ylabel="density", title=title)
    ax.legend()
    return _png(fig)


def manufacturer_plot(m: ModelMonitoring) -> bytes | None:
    """Each manufacturer's share of the training data and of production."""
    assert m.production is not None
    prod = m.production["manufacturer_fractions"]
    ref = m.reference.reference.profile["manufacturer_fractions"] if m.reference.reference else {}
    names = sorted(set(prod) | set(ref))
    if not names:
        return None
    plt = _pyplot()
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * len(names)))
    if ref:
        ax.barh(y + 0.2, [ref.get(n, 0.0) for n in names], 0.4, label="training data")
    ax.barh(y - 0.2, [prod.get(n, 0.0) for n in names], 0.4, label="production")
    ax.set_yticks(y, names)
    ax.set(xlabel="share of images", title="Manufacturers", xlim=(0, 1))
    ax.legend(loc="lower right")
    return _png(fig)


def intensity_plot(m: ModelMonitoring) -> bytes | None:
    """Per modality: production's image mean intensities, the training quantiles marked."""
    frame = m.intensity.dropna()
    modalities = sorted(map(str, frame["modality"].unique()))[:MAX_MODALITY_PLOTS]
    if not modalities:
        return None
    plt = _pyplot()
    ref = m.reference.reference.profile["intensity"] if m.reference.reference else {}
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities), 3), squeeze=False)
    for ax, modality in zip(axes[0], modalities, strict=True):
        values = frame.loc[frame["modality"].astype(str) == modality, "pixel_mean"].astype(float)
        ax.hist(values, HIST_BINS, alpha=0.6, label=f"production (n={len(values)})")
        stats = (ref.get(modality) or {}).get("pixel_mean") or {}
        for key, style in (("q05", ":"), ("q50", "--"), ("q95", ":")):
            if stats.get(key) is not None:
                ax.axvline(
                    stats[key],
                    color="black",
                    ls=style,
                    lw=1,
                    label="training q05/q50/q95" if key == "q50" else None,
                )
        ax.set(title=f"{modality}: image mean intensity", xlabel="pixel_mean", ylabel="images")
        ax.legend(fontsize="small")
    return _png(fig)


def reliability_plot(m: ModelMonitoring, n_bins: int) -> bytes | None:
    """The reliability diagram of the predictions with feedback (evaluate.n_bins bins)."""
    perf = m.performance
    if perf is None:
        return None
    mean_conf, freq, count = calibration_bins(m.feedback_labels, m.feedback_probabilities, n_bins)
    filled = count > 0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(mean_conf[filled], freq[filled], "o-", label=f"feedback (n={perf.n_labelled})")
    binary = len(m.class_names) == 2
    ax.set(
        xlabel="mean p(positive)" if binary else "mean top-class confidence",
        ylabel="fraction positive" if binary else "accuracy",
        title=f"Reliability (ECE {perf.metrics['ece']:.3f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    return _png(fig)
