"""Overlay PNGs of segmentation test cases: the image in grey, the true outline and the
predicted outline in two colours, one panel per segment, for the best, median and worst test
images by Dice (the model card shows them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medflow.evaluation.plots import png_bytes
from medflow.io import write_bytes_atomic

TRUTH_COLOUR = "#00c000"  # green
PREDICTION_COLOUR = "#ff00ff"  # magenta: told apart from green also by red-green colour-blind
CASES = ("best", "median", "worst")


def pick_cases(dice: np.ndarray, shown: np.ndarray | None = None) -> dict[str, int]:
    """Case name -> test image index: highest, median and lowest per-image Dice (ties: the
    first image), from (N,) per-image Dice, among the images `shown` marks (those with a
    segment in truth or prediction: an image empty in both scores 1 and shows nothing);
    among all when none is marked."""
    dice = np.asarray(dice, dtype=float)
    if dice.size == 0:
        return {}
    candidates = np.arange(dice.size)
    if shown is not None and np.asarray(shown).any():
        candidates = candidates[np.asarray(shown, dtype=bool)]
    order = candidates[np.argsort(-dice[candidates], kind="stable")]  # best first
    return {"best": int(order[0]), "median": int(order[len(order) // 2]), "worst": int(order[-1])}


def write_overlays(
    out_dir: Path,
    x: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    dice: np.ndarray,
    segment_names: list[str],
) -> dict[str, Path]:
    """Write `overlay_<case>.png` for each case of pick_cases into out_dir.

    Args:
        x: (N, C, S, S) model inputs (the first channel is shown).
        truth, pred: (N, K, S, S) binary masks.
        dice: (N,) per-image Dice (the mean over segments).

    Returns:
        overlay_<case> -> path of each PNG.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (CI, servers)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    paths = {}
    n = len(dice)
    shown = (truth.reshape(n, -1).any(1) | pred.reshape(n, -1).any(1)) if n else None
    for case, i in pick_cases(dice, shown).items():
        k = len(segment_names)
        fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.4), squeeze=False)
        for j, ax in enumerate(axes[0]):
            ax.imshow(np.asarray(x[i, 0], dtype=float), cmap="gray", interpolation="nearest")
            for masks, colour in ((truth, TRUTH_COLOUR), (pred, PREDICTION_COLOUR)):
                plane = np.asarray(masks[i, j], dtype=float)
                if plane.any() and not plane.all():
                    ax.contour(plane, levels=[0.5], colors=[colour], linewidths=1.2)
            ax.set_title(segment_names[j], fontsize=9)
            ax.set_axis_off()
        handles = [
            Line2D([], [], color=TRUTH_COLOUR, label="truth"),
            Line2D([], [], color=PREDICTION_COLOUR, label="prediction"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle(f"{case} test case: Dice {float(dice[i]):.3f}", fontsize=10)
        name = f"overlay_{case}"
        paths[name] = Path(out_dir) / f"{name}.png"
        write_bytes_atomic(paths[name], png_bytes(fig))
    return paths
