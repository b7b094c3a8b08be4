"""Segmentation metrics per test image and segment, and their means with patient-bootstrap
intervals.

Overlap: Dice, IoU and the 95th-percentile Hausdorff distance (HD95) from MONAI, on binary
(N, K, S, S) masks in model space. HD95 is scaled by each image's model-space pixel side (mm,
medflow.imaging.masks.model_pixel_spacing); when any test image lacks PixelSpacing, every
distance stays in model pixels so that the mean never mixes units. Empty masks, which MONAI
leaves undefined, are scored by rule: truth and prediction both empty is Dice/IoU 1, HD95 0;
exactly one empty is Dice/IoU 0 and HD95 the model image's diagonal (S * sqrt(2) pixels,
scaled), the largest distance the image allows.

Lesions: the connected components of each plane, 4-connected as scipy.ndimage.label and the
ingest's manifest `mask_components` count them. A true lesion is detected when
some predicted component overlaps it with IoU >= evaluate.detection_min_iou; a predicted
component that reaches that IoU with no true lesion is a false positive.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from medflow.config import EvaluateParams
from medflow.evaluation.metrics import percentile_interval, resamples
from medflow.handoffs import SEGMENTATION_METRICS

# 4-connectivity (scipy's default, as ingest counts mask_components): pixels touching only at
# a corner are two lesions
CONNECTIVITY = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class ImageScores:
    """(N, K) arrays, one entry per test image and segment."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    true_lesions: np.ndarray
    detected: np.ndarray
    pred_lesions: np.ndarray
    false_positives: np.ndarray
    true_area: np.ndarray  # pixels in model space
    pred_area: np.ndarray

    def __len__(self) -> int:
        return len(self.dice)

    def subset(self, idx: np.ndarray) -> ImageScores:
        """The scores of the images `idx` (a subgroup)."""
        return ImageScores(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def _binary(masks: np.ndarray, name: str) -> torch.Tensor:
    arr = np.asarray(masks)
    if arr.ndim != 4:
        raise ValueError(f"{name} masks must be (N, K, S, S), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr > 0, dtype=np.float32))


def overlap_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Dice, IoU, HD95), each (N, K), of binary masks (N, K, S, S).

    Args:
        spacing: (N,) the side of one model-space pixel per image (HD95 is multiplied by it).
    """
    from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_iou

    p, t = _binary(pred, "predicted"), _binary(truth, "true")
    if p.shape != t.shape:
        raise ValueError(f"predicted masks {tuple(p.shape)} and true masks {tuple(t.shape)} differ")
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (len(p),) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be {len(p)} positive numbers, got {spacing.tolist()}")
    n, k, side = p.shape[0], p.shape[1], p.shape[2]
    if n == 0:
        empty = np.zeros((0, k))
        return empty, empty.copy(), empty.copy()
    dice_metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    dice = dice_metric(y_pred=p, y=t).numpy().astype(float)
    iou = compute_iou(p, t, include_background=True, ignore_empty=False).numpy().astype(float)

    p_any, t_any = p.flatten(2).any(-1).numpy(), t.flatten(2).any(-1).numpy()
    hd95 = np.where(p_any == t_any, 0.0, side * math.sqrt(2)) * spacing[:, None]
    both = np.argwhere(p_any & t_any)
    if len(both):
        i, j = both[:, 0], both[:, 1]
        with warnings.catch_warnings():
            # MONAI's own deprecation notices about its internals, on every call
            warnings.simplefilter("ignore", FutureWarning)
            distances = compute_hausdorff_distance(
                p[i, j][:, None],
                t[i, j][:, None],
                include_background=True,
                percentile=95,
                spacing=[[float(s), float(s)] for s in spacing[i]],
            )
        hd95[i, j] = distances[:, 0].numpy()
    return dice, iou, hd95


def lesion_matches(
    truth: np.ndarray, pred: np.ndarray, min_iou: float
) -> tuple[int, int, int, int]:
    """(true lesions, detected, predicted lesions, false positives) of one (H, W) plane."""
    from scipy import ndimage

    lt, n_true = ndimage.label(np.asarray(truth) > 0, structure=CONNECTIVITY)
    lp, n_pred = ndimage.label(np.asarray(pred) > 0, structure=CONNECTIVITY)
    if n_true == 0 or n_pred == 0:
        return n_true, 0, n_pred, n_pred
    # joint histogram of the labels: pixels shared by true lesion a and predicted lesion b
    joint = np.bincount(
        (lt * (n_pred + 1) + lp).ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:]
    area_t, area_p = joint[1:].sum(1), joint[:, 1:].sum(0)
    iou = inter / (area_t[:, None] + area_p[None, :] - inter)
    match = iou >= min_iou
    return n_true, int(match.any(1).sum()), n_pred, int((~match.any(0)).sum())


def score_images(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: np.ndarray,
    min_iou: float,
    chunk: int = 64,
) -> ImageScores:
    """Every per-image, per-segment score of (N, K, S, S) masks (see the module docstring),
    `chunk` images at a time so that memory stays flat."""
    parts = [
        overlap_scores(pred[i : i + chunk], truth[i : i + chunk], spacing[i : i + chunk])
        for i in range(0, max(len(pred), 1), chunk)
    ]
    dice, iou, hd95 = (np.concatenate([part[j] for part in parts]) for j in range(3))
    n, k = dice.shape
    lesions = np.zeros((4, n, k), dtype=np.int64)
    for i in range(n):
        for j in range(k):
            lesions[:, i, j] = lesion_matches(truth[i, j], pred[i, j], min_iou)
    return ImageScores(
        dice=dice,
        iou=iou,
        hd95=hd95,
        true_lesions=lesions[0],
        detected=lesions[1],
        pred_lesions=lesions[2],
        false_positives=lesions[3],
        true_area=(np.asarray(truth) > 0).sum((2, 3)),
        pred_area=(np.asarray(pred) > 0).sum((2, 3)),
    )


def point_scores(scores: ImageScores, idx: np.ndarray | None = None) -> dict[str, float]:
    """Means over the images `idx` (all: None) and segments; detection as pooled rates."""
    sel = slice(None) if idx is None else idx
    n_images = len(scores.dice[sel])
    true = scores.true_lesions[sel].sum()
    return {
        "dice": _mean(scores.dice[sel]),
        "iou": _mean(scores.iou[sel]),
        "hd95": _mean(scores.hd95[sel]),
        "detection_sensitivity": float(scores.detected[sel].sum() / true) if true else math.nan,
        "false_positives_per_image": (
            float(scores.false_positives[sel].sum() / n_images) if n_images else math.nan
        ),
    }


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def summarize(
    scores: ImageScores, params: EvaluateParams, groups: np.ndarray | None
) -> dict[str, float]:
    """Flat: point_scores with `<metric>_ci_low/_ci_high` for Dice, IoU and HD95, the
    percentile bootstrap over patients (groups) or images, as the classification metrics."""
    out = point_scores(scores)
    draws = np.full((params.n_bootstrap, len(SEGMENTATION_METRICS)), np.nan)
    if len(scores):
        for b, idx in enumerate(resamples(len(scores), groups, params.n_bootstrap, params.seed)):
            point = point_scores(scores, idx)
            draws[b] = [point[m] for m in SEGMENTATION_METRICS]
    for j, metric in enumerate(SEGMENTATION_METRICS):
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = percentile_interval(
            draws[:, j], params.ci_level
        )
    return out


def per_segment(scores: ImageScores, names: list[str]) -> dict[str, dict[str, float]]:
    """Segment name -> its mean Dice, IoU and HD95 over the images."""
    return {
        name: {
            "dice": _mean(scores.dice[:, j]),
            "iou": _mean(scores.iou[:, j]),
            "hd95": _mean(scores.hd95[:, j]),
        }
        for j, name in enumerate(names)
    }
