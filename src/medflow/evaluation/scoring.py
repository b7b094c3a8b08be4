"""The evaluate stage: test-split metrics with bootstrap intervals, per subgroup, and plots.

Writes metrics.json, evaluation.json and baseline.json (medflow.handoffs), subgroups.json,
predictions.csv and plots/ into the reports folder (docs/evaluation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medflow.config import EvaluateParams
from medflow.data.arrays import ArraysMeta, load_ids, load_labels, load_split, read_meta
from medflow.data.dataset import Dataset
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.data.preprocessing import preprocess_rows
from medflow.evaluation.metrics import choose_threshold, metrics_with_ci, point_metrics, predict
from medflow.evaluation.plots import write_plots
from medflow.evaluation.subgroups import subgroup_metrics
from medflow.handoffs import (
    COMPARED,
    Baseline,
    BootstrapSetup,
    DatasetRef,
    DataSummary,
    EvaluatedOn,
    EvaluationContext,
    Metrics,
    ModelSummary,
    ScoredMetrics,
    SegmentationMetrics,
    SubgroupCoverage,
    ThresholdChoice,
    Versions,
)
from medflow.io import write_json_atomic, write_text_atomic
from medflow.models.artifact import ModelSpec, load_model
from medflow.provenance import git_revision, library_versions
from medflow.registry.baseline import BASELINE_FILE, ChampionModel, find_baseline

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
SUBGROUPS_FILE = "subgroups.json"
CONTEXT_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.csv"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class EvaluateResult:
    metrics: Metrics | SegmentationMetrics  # the latter: evaluation.segmentation
    metrics_file: Path


@dataclass(frozen=True)
class _TestSplit:
    """The test split as scored: images, labels, ids, manifest rows and patient groups."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    rows: pd.DataFrame
    groups: np.ndarray | None  # patient ids: the independent units of the bootstrap


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


def _log_metrics(what: str, metrics: ScoredMetrics) -> None:
    log.info(
        "%s at threshold %.4g: %s",
        what,
        metrics.threshold,
        ", ".join(
            "{}={:.3f} [{:.3f}, {:.3f}]".format(m, *metrics.interval(m))
            for m in ("auroc", "sensitivity", "specificity", "ece")
        ),
    )


def score_champion(
    found: ChampionModel,
    params: EvaluateParams,
    test: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    rows: pd.DataFrame,
    ingest_dir: Path,
    meta: ArraysMeta,
) -> Baseline:
    """The champion's metrics on the candidate's test split `test` (x, y, patient groups):
    its own preprocessing (the test arrays when its preprocess params are the candidate's,
    else the split's DICOM files through medflow.imaging.preprocess with its params), its own
    threshold, the same metrics code and bootstrap as the candidate."""
    x, y, groups = test
    own = found.spec.preprocess_params
    if meta.preprocess == own:
        inputs, how = x, "the test arrays (its preprocess params are the candidate's)"
    else:
        inputs = preprocess_rows(own, ingest_dir, rows)
        how = "the test split's DICOM files, preprocessed with its own params"
    probs = predict_proba(found.net, inputs)
    threshold = found.spec.threshold
    metrics = ScoredMetrics(
        **metrics_with_ci(y, probs, threshold, params, groups),
        threshold=threshold,
        n_test=int(len(y)),
    )
    tag = found.champion.model_tag
    _log_metrics(f"champion {tag} on this test split ({len(y)} images)", metrics)
    return Baseline(
        status=COMPARED,
        reason=f"champion {tag} scored on this run's test split ({len(y)} images) with its own"
        f" preprocessing and threshold {threshold:.4g}",
        champion=found.champion,
        metrics=metrics,
        evaluated_on=EvaluatedOn(
            split="test", n_test=int(len(y)), data_hash=meta.data_hash, inputs=how, preprocess=own
        ),
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
    arrays_dir, out_dir, manifest_file = Path(arrays_dir), Path(out_dir), Path(manifest_file)
    net, spec = load_model(model_dir)
    if spec.task != "classification":
        raise ValueError(
            f"the model in {model_dir} is a {spec.task} model: set data.task: {spec.task}"
            " (evaluation.segmentation scores it), or re-run train"
        )
    meta = read_meta(arrays_dir)
    test = _test_split(arrays_dir, manifest_file)
    probs = predict_proba(net, test.x)
    metrics = _metrics(params, net, arrays_dir, test, probs)
    threshold = metrics.threshold
    subgroups, missing = subgroup_metrics(test.rows, test.y, probs, threshold, params, test.groups)
    preds = _predictions(test, probs, threshold, spec.class_names)
    plots = write_plots(
        out_dir / PLOTS_DIR,
        test.y,
        probs,
        predict(probs, threshold),
        spec.class_names,
        params.n_bins,
        metrics,
    )
    baseline = _baseline(params, champion_dir, dataset, spec, test, manifest_file.parent, meta)
    coverage = SubgroupCoverage(reported=sorted(subgroups), missing=missing)
    context = _context(params, spec, meta, arrays_dir, test, metrics, coverage, plots)

    write_text_atomic(out_dir / PREDICTIONS_FILE, preds.to_csv(index=False))
    write_json_atomic(out_dir / SUBGROUPS_FILE, subgroups)
    context.write(out_dir / CONTEXT_FILE)
    baseline.write(out_dir / BASELINE_FILE)
    metrics.write(out_dir / METRICS_FILE)
    _log_metrics(f"test metrics ({params.threshold_policy})", metrics)
    return EvaluateResult(metrics=metrics, metrics_file=out_dir / METRICS_FILE)


def _test_split(arrays_dir: Path, manifest_file: Path) -> _TestSplit:
    """The test arrays with their manifest rows (ValueError when they do not match)."""
    x, y = load_split(arrays_dir, "test")
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"the test split holds only class(es) {present.tolist()}; AUROC needs two")
    ids = load_ids(arrays_dir, "test")
    if manifest_file.name != MANIFEST_FILE:
        raise ValueError(f"expected the ingest stage's {MANIFEST_FILE}, got {manifest_file}")
    rows = _test_rows(read_manifest(manifest_file.parent), ids)
    groups = rows["patient_id"].to_numpy(dtype=str) if "patient_id" in rows else None
    return _TestSplit(x, y, ids, rows, groups)


def _metrics(
    params: EvaluateParams,
    net: torch.nn.Module,
    arrays_dir: Path,
    test: _TestSplit,
    probs: np.ndarray,
) -> Metrics:
    """The test metrics at the operating threshold chosen on the validation split."""
    binary = probs.shape[1] == 2
    x_val, y_val = load_split(arrays_dir, "val")
    val_probs = predict_proba(net, x_val)
    threshold = choose_threshold(y_val, val_probs[:, 1], params) if binary else params.threshold
    at_val = point_metrics(y_val, val_probs, threshold, params.n_bins)
    y, groups = test.y, test.groups
    metrics = Metrics(
        **metrics_with_ci(y, probs, threshold, params, groups),
        threshold=threshold,
        val_sensitivity=at_val["sensitivity"],
        val_specificity=at_val["specificity"],
        n_test=int(len(y)),
        n_test_patients=int(len(np.unique(groups))) if groups is not None else len(y),
        n_test_positive=int(np.sum(y == 1)) if binary else None,
    )
    return metrics


def _predictions(
    test: _TestSplit, probs: np.ndarray, threshold: float, class_names: list[str]
) -> pd.DataFrame:
    """predictions.csv: per test image its label, prediction and class probabilities."""
    names = np.asarray(class_names)
    pred = predict(probs, threshold)
    preds = pd.DataFrame(
        {"image_id": test.ids, "label": test.y, "actual": names[test.y], "predicted": names[pred]}
    )
    for i, name in enumerate(class_names):
        preds[f"p_{name}"] = probs[:, i]
    return preds


def _baseline(
    params: EvaluateParams,
    champion_dir: Path | None,
    dataset: Dataset | None,
    spec: ModelSpec,
    test: _TestSplit,
    ingest_dir: Path,
    meta: ArraysMeta,
) -> Baseline:
    """The dataset's champion scored on this test split, or why there is none."""
    found = find_baseline(champion_dir, dataset, list(spec.class_names))
    if isinstance(found, ChampionModel):
        triple = (test.x, test.y, test.groups)
        found = score_champion(found, params, triple, test.rows, ingest_dir, meta)
    ref = DatasetRef.model_validate(dataset.as_dict()) if dataset is not None else None
    return found.model_copy(update={"dataset": ref})


def _context(
    params: EvaluateParams,
    spec: ModelSpec,
    meta: ArraysMeta,
    arrays_dir: Path,
    test: _TestSplit,
    metrics: Metrics,
    subgroups: SubgroupCoverage,
    plots: dict[str, Path],
) -> EvaluationContext:
    """evaluation.json: how the threshold was chosen, the bootstrap, data, model, versions."""
    binary = spec.num_classes == 2
    threshold = ThresholdChoice(
        policy=params.threshold_policy,
        value=metrics.threshold,
        chosen_on="val" if binary and params.threshold_policy != "fixed" else "params",
        applies="p(positive) >= threshold" if binary else "not used: argmax",
    )
    return evaluation_context(params, spec, meta, arrays_dir, test, threshold, subgroups, plots)


def evaluation_context(
    params: EvaluateParams,
    spec: ModelSpec,
    meta: ArraysMeta,
    arrays_dir: Path,
    test: _TestSplit,
    threshold: ThresholdChoice,
    subgroups: SubgroupCoverage,
    plots: dict[str, Path],
    **extra: object,
) -> EvaluationContext:
    """evaluation.json of either task: `threshold`, the bootstrap, data (class counts per
    split), model, plots and versions, plus the task's `extra` fields."""
    class_counts = {}
    for split in ("train", "val", "test"):
        try:
            labels = load_labels(arrays_dir, split)
        except FileNotFoundError:
            continue
        counts = np.bincount(labels, minlength=len(spec.class_names))
        class_counts[split] = dict(zip(spec.class_names, map(int, counts), strict=True))
    return EvaluationContext(
        params=params,
        threshold=threshold,
        bootstrap=BootstrapSetup(
            unit="patient" if test.groups is not None else "image",
            n=params.n_bootstrap,
            level=params.ci_level,
            seed=params.seed,
        ),
        subgroups=subgroups,
        data=DataSummary(
            data_hash=meta.data_hash,
            counts=meta.counts,
            class_counts=class_counts,
            preprocess=meta.preprocess,
        ),
        model=ModelSummary(
            architecture=spec.architecture,
            class_names=list(spec.class_names),
            num_classes=spec.num_classes,
            provenance=spec.provenance,
        ),
        plots={name: f"{PLOTS_DIR}/{path.name}" for name, path in plots.items()},
        evaluated_with=Versions(git_revision=git_revision(), library_versions=library_versions()),
        **extra,
    )
