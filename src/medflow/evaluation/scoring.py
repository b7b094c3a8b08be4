"""The evaluate stage: test-split metrics with bootstrap intervals, per subgroup, and plots.

Writes into the reports folder (docs/evaluation.md):
    metrics.json      flat numbers (DVC metrics): each metric with _ci_low/_ci_high, the
                      operating threshold chosen on the validation split, counts
    subgroups.json    the same metrics per subgroup (DVC metrics)
    evaluation.json   what the model card needs besides numbers: policy, data, model, params
    predictions.csv   per test image: probabilities, actual and predicted class (DVC
                      confusion plot)
    plots/            roc, pr, calibration CSVs (DVC plots) and PNGs (model card)
    baseline.json     the champion of the dataset scored on the same test split with its own
                      preprocessing and threshold (medflow.registry.baseline), or why there is none:
                      what the gate's change rules compare with
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medflow.config import EvaluateParams, PreprocessParams
from medflow.data.dataset import Dataset
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.data.preprocessing import META_FILE, preprocess_rows
from medflow.evaluation.metrics import choose_threshold, metrics_with_ci, point_metrics, predict
from medflow.evaluation.plots import write_plots
from medflow.evaluation.subgroups import subgroup_metrics
from medflow.io import write_json_atomic, write_text_atomic
from medflow.models.artifact import load_model
from medflow.models.lightning import load_split
from medflow.provenance import git_revision, library_versions
from medflow.registry.baseline import (
    BASELINE_FILE,
    COMPARED,
    Baseline,
    ChampionModel,
    find_baseline,
)

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
SUBGROUPS_FILE = "subgroups.json"
CONTEXT_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.csv"
PLOTS_DIR = "plots"


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
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _test_rows(manifest: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """The manifest rows of the test images, in the order of the arrays."""
    rows = manifest.drop_duplicates("image_id").set_index("image_id")
    unknown = [i for i in ids if i not in rows.index]
    if unknown:
        raise ValueError(
            f"{len(unknown)} test image(s) are not in the manifest (e.g. {unknown[0]}):"
            " the preprocessed arrays and the manifest come from different ingests; re-run"
            " preprocess"
        )
    return rows.loc[list(ids)].reset_index()


def score_champion(
    found: ChampionModel,
    params: EvaluateParams,
    test: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    rows: pd.DataFrame,
    ingest_dir: Path,
    meta: dict,
) -> Baseline:
    """The champion's metrics on the candidate's test split `test` (x, y, patient groups):
    its own preprocessing (the test arrays when its preprocess params are the candidate's,
    else the split's DICOM files through medflow.imaging.preprocess with its params), its own
    threshold, the same metrics code and bootstrap as the candidate."""
    x, y, groups = test
    own = found.spec.preprocess_params
    made = meta.get("preprocess")
    if made is not None and PreprocessParams.model_validate(made) == own:
        inputs, how = x, "the test arrays (its preprocess params are the candidate's)"
    else:
        inputs = preprocess_rows(own, ingest_dir, rows)
        how = "the test split's DICOM files, preprocessed with its own params"
    probs = predict_proba(found.net, inputs)
    threshold = found.spec.threshold
    metrics = metrics_with_ci(y, probs, threshold, params, groups)
    metrics.update({"threshold": threshold, "n_test": int(len(y))})
    tag = found.champion.get("model_tag")
    log.info(
        "champion %s on this test split (%d images, threshold %.4g): %s",
        tag,
        len(y),
        threshold,
        ", ".join(f"{m}={metrics[m]:.3f}" for m in ("auroc", "sensitivity", "specificity", "ece")),
    )
    return Baseline(
        COMPARED,
        f"champion {tag} scored on this run's test split ({len(y)} images) with its own"
        f" preprocessing and threshold {threshold:.4g}",
        champion=found.champion,
        metrics=metrics,
        evaluated_on={
            "split": "test",
            "n_test": int(len(y)),
            "data_hash": meta.get("data_hash"),
            "inputs": how,
            "preprocess": own.model_dump(),
        },
    )


def run_evaluate(
    params: EvaluateParams,
    model_dir: Path,
    arrays_dir: Path,
    manifest_file: Path,
    out_dir: Path,
    *,
    champion_dir: Path | None = None,
    dataset: Dataset | None = None,
) -> EvaluateResult:
    """Choose the operating threshold on val, score the test split, write the reports.

    With champion_dir (the dataset's champion folder), the champion is scored on the same
    test split too (score_champion); baseline.json says what the gate compares with.
    """
    arrays_dir, out_dir = Path(arrays_dir), Path(out_dir)
    net, spec = load_model(model_dir)
    x, y = load_split(arrays_dir, "test")
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"the test split holds only class(es) {present.tolist()}; AUROC needs two")
    ids = np.load(arrays_dir / "test_ids.npy")
    manifest_file = Path(manifest_file)
    if manifest_file.name != MANIFEST_FILE:
        raise ValueError(f"expected the ingest stage's {MANIFEST_FILE}, got {manifest_file}")
    rows = _test_rows(read_manifest(manifest_file.parent), ids)
    # patients, not images, are the independent units of the bootstrap
    groups = rows["patient_id"].to_numpy(dtype=str) if "patient_id" in rows else None
    probs = predict_proba(net, x)
    binary = probs.shape[1] == 2

    x_val, y_val = load_split(arrays_dir, "val")
    val_probs = predict_proba(net, x_val)
    threshold = choose_threshold(y_val, val_probs[:, 1], params) if binary else params.threshold
    at_val = point_metrics(y_val, val_probs, threshold, params.n_bins)

    metrics = metrics_with_ci(y, probs, threshold, params, groups)
    metrics.update(
        {
            "threshold": threshold,
            "val_sensitivity": at_val["sensitivity"],
            "val_specificity": at_val["specificity"],
            "n_test": int(len(y)),
            "n_test_patients": int(len(np.unique(groups))) if groups is not None else len(y),
        }
    )
    if binary:
        metrics["n_test_positive"] = int(np.sum(y == 1))
    subgroups, missing = subgroup_metrics(rows, y, probs, threshold, params, groups)

    pred = predict(probs, threshold)
    names = np.asarray(spec.class_names)
    preds = pd.DataFrame(
        {"image_id": ids, "label": y, "actual": names[y], "predicted": names[pred]}
    )
    for i, name in enumerate(spec.class_names):
        preds[f"p_{name}"] = probs[:, i]
    plots = write_plots(
        out_dir / PLOTS_DIR, y, probs, pred, spec.class_names, params.n_bins, metrics
    )

    meta_file = arrays_dir / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    found = find_baseline(champion_dir, dataset, list(spec.class_names))
    if isinstance(found, ChampionModel):
        test = (x, y, groups)
        baseline = score_champion(found, params, test, rows, manifest_file.parent, meta)
    else:
        baseline = found
    baseline = replace(baseline, dataset=dataset.as_dict() if dataset is not None else None)
    class_counts = {}
    for split in ("train", "val", "test"):
        y_path = arrays_dir / f"{split}_y.npy"
        if y_path.is_file():
            counts = np.bincount(np.load(y_path), minlength=len(spec.class_names))
            class_counts[split] = dict(zip(spec.class_names, map(int, counts), strict=True))
    context = {
        "params": params.model_dump(),
        "threshold": {
            "policy": params.threshold_policy,
            "value": threshold,
            "chosen_on": "val" if binary and params.threshold_policy != "fixed" else "params",
            "applies": "p(positive) >= threshold" if binary else "not used: argmax",
        },
        "bootstrap": {
            "unit": "patient" if groups is not None else "image",
            "n": params.n_bootstrap,
            "level": params.ci_level,
            "seed": params.seed,
        },
        "subgroups": {"reported": sorted(subgroups), "missing": missing},
        "data": {
            "data_hash": meta.get("data_hash"),
            "counts": meta.get("counts"),
            "class_counts": class_counts,
            "preprocess": meta.get("preprocess"),
        },
        "model": {
            "architecture": spec.architecture,
            "class_names": spec.class_names,
            "num_classes": spec.num_classes,
            "provenance": spec.provenance,
        },
        "plots": {name: f"{PLOTS_DIR}/{path.name}" for name, path in plots.items()},
        "evaluated_with": {
            "git_revision": git_revision(),
            "library_versions": library_versions(),
        },
    }

    write_text_atomic(out_dir / PREDICTIONS_FILE, preds.to_csv(index=False))
    write_json_atomic(out_dir / SUBGROUPS_FILE, subgroups)
    write_json_atomic(out_dir / CONTEXT_FILE, context)
    write_json_atomic(out_dir / BASELINE_FILE, baseline.as_dict())
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    log.info(
        "test metrics at threshold %.4g (%s): %s",
        threshold,
        params.threshold_policy,
        ", ".join(
            f"{m}={metrics[m]:.3f} [{metrics[m + '_ci_low']:.3f}, {metrics[m + '_ci_high']:.3f}]"
            for m in ("auroc", "sensitivity", "specificity", "ece")
        ),
    )
    return EvaluateResult(metrics=metrics, metrics_file=out_dir / METRICS_FILE)
