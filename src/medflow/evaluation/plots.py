"""Evaluation plots, twice: data files DVC renders (`dvc plots show`) and PNGs (model card).

    roc.csv           fpr, tpr, threshold        roc.png
    pr.csv            recall, precision          pr.png
    calibration.csv   mean_predicted, fraction_positive, count   calibration.png
    (predictions.csv: actual, predicted -> DVC's confusion template)   confusion.png

Binary curves are for the positive class (index 1); multi-class ones are micro-averaged
(every image x class pair one-vs-rest). Segmentation draws overlays instead (overlays.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from medflow.evaluation.metrics import calibration_bins
from medflow.handoffs import ScoredMetrics
from medflow.io import write_bytes_atomic, write_text_atomic

ROC, PR, CALIBRATION = "roc", "pr", "calibration"
CONFUSION = "confusion"


def _scores(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probs.shape[1] == 2:
        return (y == 1).astype(int), probs[:, 1]
    return np.eye(probs.shape[1], dtype=int)[y].ravel(), probs.ravel()


def curve_tables(y: np.ndarray, probs: np.ndarray, n_bins: int) -> dict[str, pd.DataFrame]:
    """The ROC, precision-recall and reliability-diagram data."""
    target, score = _scores(y, probs)
    fpr, tpr, thr = roc_curve(target, score)
    precision, recall, _ = precision_recall_curve(target, score)
    mean_conf, freq, count = calibration_bins(y, probs, n_bins)
    filled = count > 0
    return {
        ROC: pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)}),
        PR: pd.DataFrame({"recall": recall, "precision": precision}),
        CALIBRATION: pd.DataFrame(
            {
                "mean_predicted": mean_conf[filled],
                "fraction_positive": freq[filled],
                "count": count[filled].astype(int),
            }
        ),
    }


def png_bytes(fig) -> bytes:  # noqa: ANN001 (a matplotlib Figure)
    """The figure as PNG bytes (100 dpi, tight); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_plots(
    out_dir: Path,
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    class_names: list[str],
    n_bins: int,
    metrics: ScoredMetrics,
) -> dict[str, Path]:
    """Write the CSVs and PNGs into out_dir; returns name -> path of each PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (CI, servers)
    import matplotlib.pyplot as plt

    tables = curve_tables(y, probs, n_bins)
    for name, table in tables.items():
        write_text_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))

    figures = {}
    roc = tables[ROC]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(roc["fpr"], roc["tpr"], label=f"AUROC {metrics.auroc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC (test)")
    ax.legend(loc="lower right")
    figures[ROC] = fig

    pr = tables[PR]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(pr["recall"], pr["precision"], label=f"AUPRC {metrics.auprc:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    figures[PR] = fig

    cal = tables[CALIBRATION]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(cal["mean_predicted"], cal["fraction_positive"], "o-", label="model")
    xlabel = "mean p(positive)" if probs.shape[1] == 2 else "mean top-class confidence"
    ylabel = "fraction positive" if probs.shape[1] == 2 else "accuracy"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"Reliability (ECE {metrics.ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    figures[CALIBRATION] = fig

    cm = confusion_matrix(y, pred, labels=range(len(class_names)))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        dark = v > cm.max() / 2
        ax.text(j, i, str(v), ha="center", va="center", color="white" if dark else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    figures[CONFUSION] = fig

    paths = {}
    for name, fig in figures.items():
        paths[name] = out_dir / f"{name}.png"
        write_bytes_atomic(paths[name], png_bytes(fig))
    return paths
