"""The evaluate stage: test-split metrics as DVC metrics, the ROC curve as a DVC plot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from medflow.config import EvaluateParams
from medflow.io import write_json_atomic, write_text_atomic
from medflow.models.artifact import load_model
from medflow.models.lightning import load_split

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
ROC_FILE = "roc.csv"
PREDICTIONS_FILE = "predictions.csv"


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float]
    metrics_file: Path


def predict_proba(net: torch.nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for preprocessed images (N, C, S, S), on the GPU when there is one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.array(x[i : i + batch_size], dtype=np.float32)).to(device)
            out.append(net(batch).softmax(-1).float().cpu().numpy())
    return np.concatenate(out)


def classification_metrics(y: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, accuracy, sensitivity and specificity.

    Binary: the positive class is index 1, predicted when p(1) >= threshold.
    Multi-class: macro one-vs-rest AUROC, argmax predictions, macro sensitivity/specificity.
    """
    n_classes = probs.shape[1]
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"the test split holds only class(es) {present.tolist()}; AUROC needs two")
    if n_classes == 2:
        pred = (probs[:, 1] >= threshold).astype(int)
        auroc = roc_auc_score(y, probs[:, 1])
    else:
        pred = probs.argmax(1)
        auroc = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(n_classes))
    sens, spec = [], []
    for c in range(1, 2) if n_classes == 2 else range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fn = np.sum((pred != c) & (y == c))
        tn = np.sum((pred != c) & (y != c))
        fp = np.sum((pred == c) & (y != c))
        sens.append(tp / max(tp + fn, 1))
        spec.append(tn / max(tn + fp, 1))
    return {
        "auroc": float(auroc),
        "accuracy": float(np.mean(pred == y)),
        "sensitivity": float(np.mean(sens)),
        "specificity": float(np.mean(spec)),
        "threshold": float(threshold),
        "n_test": int(len(y)),
    }


def run_evaluate(
    params: EvaluateParams, model_dir: Path, arrays_dir: Path, out_dir: Path
) -> EvaluateResult:
    """Score the test split; write metrics.json, roc.csv and predictions.csv into out_dir."""
    net, spec = load_model(model_dir)
    x, y = load_split(arrays_dir, "test")
    ids = np.load(arrays_dir / "test_ids.npy")
    probs = predict_proba(net, x)
    metrics = classification_metrics(y, probs, params.threshold)

    positive = probs[:, 1] if probs.shape[1] == 2 else probs.max(1)
    target = y == 1 if probs.shape[1] == 2 else probs.argmax(1) == y
    fpr, tpr, thr = roc_curve(target, positive)
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
    preds = pd.DataFrame({"image_id": ids, "label": y})
    for i, name in enumerate(spec.class_names):
        preds[f"p_{name}"] = probs[:, i]

    write_text_atomic(out_dir / ROC_FILE, roc.to_csv(index=False))
    write_text_atomic(out_dir / PREDICTIONS_FILE, preds.to_csv(index=False))
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    log.info("test metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return EvaluateResult(metrics=metrics, metrics_file=out_dir / METRICS_FILE)
