"""The evaluate stage for segmentation (data.task: segmentation): test masks scored per image
and segment (Dice, IoU, HD95, lesion detection; evaluation.seg_metrics), their means with
patient-bootstrap intervals, per subgroup, overlays of the best, median and worst cases, and
the champion scored on the same test split.

Writes what the classification evaluate writes (medflow.evaluation.scoring): metrics.json
(SegmentationMetrics), evaluation.json, baseline.json, subgroups.json, predictions.csv (one
row per test image) and plots/overlay_{best,median,worst}.png (docs/evaluation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medflow.config import EvaluateParams
from medflow.data.arrays import ArraysMeta, load_ids, load_masks, load_split, read_meta
from medflow.data.dataset import Dataset
from medflow.data.manifest import MANIFEST_FILE, read_manifest
from medflow.data.preprocessing import preprocess_rows
from medflow.evaluation.overlays import write_overlays
from medflow.evaluation.scoring import (
    CONTEXT_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    PREDICTIONS_FILE,
    SUBGROUPS_FILE,
    EvaluateResult,
    _test_rows,
    evaluation_context,
)
from medflow.evaluation.seg_metrics import ImageScores, per_segment, score_images, summarize
from medflow.evaluation.subgroups import subgroup_table
from medflow.handoffs import (
    COMPARED,
    Baseline,
    DatasetRef,
    EvaluatedOn,
    EvaluationContext,
    SegmentationMetrics,
    SubgroupCoverage,
    ThresholdChoice,
)
from medflow.imaging.masks import model_pixel_spacing, to_model_mask
from medflow.io import write_json_atomic, write_text_atomic
from medflow.models.artifact import ModelSpec, load_model
from medflow.registry.baseline import BASELINE_FILE, ChampionModel, find_baseline

log = logging.getLogger(__name__)
TASK = "segmentation"


@dataclass(frozen=True)
class _TestSplit:
    """The test split as scored: images, true masks, ids, manifest rows, patient groups."""

    x: np.ndarray
    masks: np.ndarray  # (N, K, S, S) uint8
    ids: np.ndarray
    rows: pd.DataFrame
    groups: np.ndarray | None


def predict_masks(
    net: torch.nn.Module, x: np.ndarray, threshold: float, batch_size: int = 32
) -> np.ndarray:
    """(N, K, S, S) uint8 masks: sigmoid(logits) >= threshold, on the GPU when there is one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(device).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.array(x[i : i + batch_size], dtype=np.float32)).to(device)
            logits = net(batch)
            if logits.ndim != 4:
                raise ValueError(
                    f"a segmentation network gives logits (N, K, S, S), this one {logits.shape}:"
                    " is the model a classifier? (data.task, model.json task)"
                )
            out.append((logits.sigmoid() >= threshold).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), dtype=np.uint8)


def pixel_spacing(rows: pd.DataFrame, size: int) -> tuple[np.ndarray, str]:
    """(per test image the side of one model-space pixel, "mm") from the manifest's
    pixel_spacing, rows and columns; (ones, "pixel") when any image lacks a spacing, so a
    mean never mixes millimetres with pixels."""
    if "pixel_spacing" not in rows or len(rows) == 0:
        return np.ones(len(rows)), "pixel"
    spacing = pd.to_numeric(rows["pixel_spacing"], errors="coerce")
    side = [
        model_pixel_spacing(s, (r, c), size)
        for s, r, c in zip(spacing, rows["rows"], rows["columns"], strict=True)
    ]
    side = np.asarray(side, dtype=float)
    bad = ~(np.isfinite(side) & (side > 0))
    if bad.any():
        log.warning(
            "%d of %d test images carry no PixelSpacing: HD95 is in model pixels, not mm",
            int(bad.sum()),
            len(side),
        )
        return np.ones(len(rows)), "pixel"
    return side, "mm"


def _test_split(arrays_dir: Path, manifest_file: Path) -> _TestSplit:
    x, _ = load_split(arrays_dir, "test")
    masks = load_masks(arrays_dir, "test")
    if masks.shape[0] != len(x) or masks.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"test masks {masks.shape} do not match the test images {x.shape}: re-run preprocess"
        )
    ids = load_ids(arrays_dir, "test")
    if manifest_file.name != MANIFEST_FILE:
        raise ValueError(f"expected the ingest stage's {MANIFEST_FILE}, got {manifest_file}")
    rows = _test_rows(read_manifest(manifest_file.parent), ids)
    groups = rows["patient_id"].to_numpy(dtype=str) if "patient_id" in rows else None
    return _TestSplit(x, np.asarray(masks), ids, rows, groups)


def _scored(
    scores: ImageScores,
    params: EvaluateParams,
    groups: np.ndarray | None,
    segments: list[str],
    threshold: float,
) -> SegmentationMetrics:
    return SegmentationMetrics(
        **summarize(scores, params, groups),
        per_segment=per_segment(scores, segments),
        threshold=threshold,
        n_images=len(scores),
        n_patients=int(len(np.unique(groups))) if groups is not None else len(scores),
        n_lesions=int(scores.true_lesions.sum()),
    )


def _log_metrics(what: str, m: SegmentationMetrics) -> None:
    log.info(
        "%s at threshold %.4g: %s; detection sensitivity %.3f, %.3f false positives per image",
        what,
        m.threshold,
        ", ".join("{}={:.3f} [{:.3f}, {:.3f}]".format(n, *m.interval(n)) for n in m.NAMES),
        m.detection_sensitivity,
        m.false_positives_per_image,
    )


def run_segmentation_evaluate(
    params: EvaluateParams,
    model_dir: Path,
    arrays_dir: Path,
    manifest_file: Path,
    out_dir: Path,
    *,
    champion_dir: Path | None = None,
    dataset: Dataset | None = None,
) -> EvaluateResult:
    """Score the segmentation model of model_dir on the test split, write the reports.

    With champion_dir (the dataset's champion folder), the champion is scored on the same
    test split too; baseline.json says what the gate compares with.
    """
    arrays_dir, out_dir, manifest_file = Path(arrays_dir), Path(out_dir), Path(manifest_file)
    net, spec = load_model(model_dir)
    if spec.task != TASK:
        raise ValueError(
            f"data.task is segmentation but the model in {model_dir} is a {spec.task} model:"
            " re-run train with data.task: segmentation"
        )
    meta = read_meta(arrays_dir)
    test = _test_split(arrays_dir, manifest_file)
    segments = list(spec.class_names[1:])
    if test.masks.shape[1] != len(segments):
        raise ValueError(
            f"the test masks have {test.masks.shape[1]} planes, the model {len(segments)}"
            f" segments ({segments}): re-run preprocess and train on one data.class_names"
        )
    threshold = params.mask_threshold
    pred = predict_masks(net, test.x, threshold)
    spacing, unit = pixel_spacing(test.rows, test.x.shape[-1])
    scores = score_images(pred, test.masks, spacing, params.detection_min_iou)
    metrics = _scored(scores, params, test.groups, segments, threshold)

    def subgroup_score(mask: np.ndarray) -> dict[str, float]:
        sub_groups = None if test.groups is None else test.groups[mask]
        return summarize(scores.subset(mask), params, sub_groups)

    subgroups, missing = subgroup_table(test.rows, params, subgroup_score)
    image_dice = scores.dice.mean(1)
    plots = write_overlays(out_dir / PLOTS_DIR, test.x, test.masks, pred, image_dice, segments)
    baseline = _baseline(params, champion_dir, dataset, spec, test, manifest_file.parent, meta)
    coverage = SubgroupCoverage(reported=sorted(subgroups), missing=missing)
    context = _context(params, spec, meta, arrays_dir, test, coverage, plots, unit)

    write_text_atomic(
        out_dir / PREDICTIONS_FILE, predictions(test, scores, segments).to_csv(index=False)
    )
    write_json_atomic(out_dir / SUBGROUPS_FILE, subgroups)
    context.write(out_dir / CONTEXT_FILE)
    baseline.write(out_dir / BASELINE_FILE)
    metrics.write(out_dir / METRICS_FILE)
    _log_metrics(f"test metrics ({len(scores)} images, HD95 in {unit})", metrics)
    return EvaluateResult(metrics=metrics, metrics_file=out_dir / METRICS_FILE)


def predictions(test: _TestSplit, scores: ImageScores, segments: list[str]) -> pd.DataFrame:
    """predictions.csv: per test image (pseudonymous image and patient ids) its means over
    segments, then per segment: Dice, IoU, HD95, true and predicted area (model pixels)."""
    preds = pd.DataFrame({"image_id": test.ids})
    if test.groups is not None:
        preds["patient_id"] = test.groups
    preds["dice"] = scores.dice.mean(1)
    preds["iou"] = scores.iou.mean(1)
    preds["hd95"] = scores.hd95.mean(1)
    preds["true_area"] = scores.true_area.sum(1)
    preds["predicted_area"] = scores.pred_area.sum(1)
    preds["true_lesions"] = scores.true_lesions.sum(1)
    preds["detected_lesions"] = scores.detected.sum(1)
    preds["false_positives"] = scores.false_positives.sum(1)
    for j, name in enumerate(segments):
        preds[f"dice_{name}"] = scores.dice[:, j]
        preds[f"iou_{name}"] = scores.iou[:, j]
        preds[f"hd95_{name}"] = scores.hd95[:, j]
        preds[f"true_area_{name}"] = scores.true_area[:, j]
        preds[f"predicted_area_{name}"] = scores.pred_area[:, j]
    return preds


def _source_masks(ingest_dir: Path, rows: pd.DataFrame, k: int, size: int) -> np.ndarray:
    """The test rows' ingested masks (the images' own geometry) at another model side."""
    out = np.zeros((len(rows), k, size, size), dtype=np.uint8)
    for i, (rel, image_id) in enumerate(zip(rows["mask_file"], rows["image_id"], strict=True)):
        if not isinstance(rel, str) or not rel:
            raise ValueError(f"test image {image_id} has no mask_file: re-run the ingest stage")
        out[i] = to_model_mask(np.load(Path(ingest_dir) / rel), size)
    return out


def score_segmentation_champion(
    found: ChampionModel,
    params: EvaluateParams,
    test: _TestSplit,
    ingest_dir: Path,
    meta: ArraysMeta,
) -> Baseline:
    """The champion's metrics on the candidate's test split: its own preprocessing (the test
    arrays and masks when its preprocess params are the candidate's, else the split's DICOM
    files and ingested masks at its own side), its own threshold, the same scoring and
    bootstrap as the candidate."""
    own = found.spec.preprocess_params
    if meta.preprocess == own:
        x, truth = test.x, test.masks
        how = "the test arrays and masks (its preprocess params are the candidate's)"
    else:
        x = preprocess_rows(own, ingest_dir, test.rows)
        truth = _source_masks(ingest_dir, test.rows, test.masks.shape[1], own.image_size)
        how = "the test split's DICOM files and masks, preprocessed with its own params"
    threshold = found.spec.threshold
    pred = predict_masks(found.net, x, threshold)
    spacing, _ = pixel_spacing(test.rows, x.shape[-1])
    scores = score_images(pred, truth, spacing, params.detection_min_iou)
    segments = list(found.spec.class_names[1:])
    metrics = _scored(scores, params, test.groups, segments, threshold)
    tag = found.champion.model_tag
    n = len(scores)
    _log_metrics(f"champion {tag} on this test split ({n} images)", metrics)
    return Baseline(
        status=COMPARED,
        reason=f"champion {tag} scored on this run's test split ({n} images) with its own"
        f" preprocessing and mask threshold {threshold:.4g}",
        champion=found.champion,
        metrics=metrics,
        evaluated_on=EvaluatedOn(
            split="test", n_test=n, data_hash=meta.data_hash, inputs=how, preprocess=own
        ),
    )


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
    found = find_baseline(champion_dir, dataset, list(spec.class_names), task=TASK)
    if isinstance(found, ChampionModel):
        found = score_segmentation_champion(found, params, test, ingest_dir, meta)
    ref = DatasetRef.model_validate(dataset.as_dict()) if dataset is not None else None
    return found.model_copy(update={"dataset": ref})


def _context(
    params: EvaluateParams,
    spec: ModelSpec,
    meta: ArraysMeta,
    arrays_dir: Path,
    test: _TestSplit,
    subgroups: SubgroupCoverage,
    plots: dict[str, Path],
    unit: str,
) -> EvaluationContext:
    """evaluation.json: the mask threshold, the bootstrap, data, model, versions, HD95 unit."""
    threshold = ThresholdChoice(
        policy="fixed",
        value=params.mask_threshold,
        chosen_on="params",
        applies="sigmoid(logit) >= threshold, per pixel and segment",
    )
    return evaluation_context(
        params, spec, meta, arrays_dir, test, threshold, subgroups, plots, hd95_unit=unit
    )
