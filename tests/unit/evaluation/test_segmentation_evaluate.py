"""The segmentation evaluate end to end: a tiny MONAI U-Net (trained for seconds) saved with
save_model, hand-made arrays, masks and manifest, the champion in the real BentoML store."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medflow.config import EvaluateParams, GateParams, PackageParams, PreprocessParams
from medflow.data.arrays import META_FILE, ArraysMeta, write_images, write_labels
from medflow.data.dataset import Dataset, champion_folder
from medflow.evaluation.gate import run_gate
from medflow.evaluation.scoring import run_evaluate
from medflow.evaluation.segmentation import run_segmentation_evaluate
from medflow.handoffs import (
    COMPARED,
    NO_CHAMPION,
    Baseline,
    EvaluationContext,
    GateReport,
    SegmentationMetrics,
    read_metrics,
)
from medflow.models.artifact import ModelSpec, load_spec, save_model
from medflow.registry.champion import record_champion
from medflow.registry.packaging import save_to_store
from tests.helpers.handoffs import gate_report

CLASSES = ["normal", "lesion"]
SIDE = 16
DATASET = Dataset(source="synthetic-seg", class_names=tuple(CLASSES))
PARAMS = EvaluateParams(n_bootstrap=30, min_subgroup_n=10)


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; every other one holds a bright square, its mask the square."""
    x = rng.random((n, 1, SIDE, SIDE), dtype=np.float32) * 0.3
    m = np.zeros((n, 1, SIDE, SIDE), dtype=np.uint8)
    for i in range(1, n, 2):
        r, c = rng.integers(1, SIDE - 6, size=2)
        x[i, 0, r : r + 5, c : c + 5] += 0.7
        m[i, 0, r : r + 5, c : c + 5] = 1
    return x, m


def _trained_unet(spec: ModelSpec, x: np.ndarray, m: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(0)
    net = spec.build()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, mt = torch.from_numpy(x), torch.from_numpy(m.astype(np.float32))
    net.train()
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(xt), mt).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    arrays, ingested = root / "pre", root / "ingested"
    arrays.mkdir()
    ingested.mkdir()
    rng = np.random.default_rng(0)
    rows, data = [], {}
    for split, n in (("train", 40), ("val", 8), ("test", 24)):
        x, m = _split(rng, n)
        data[split] = (x, m)
        ids = np.array([f"{split}-{i:02d}" for i in range(n)])
        write_images(arrays, split, x)
        np.save(arrays / f"{split}_m.npy", m)
        write_labels(arrays, split, m.reshape(n, -1).max(1).astype(np.int64), ids)
        for i, image_id in enumerate(ids):
            rows.append(
                {
                    "image_id": image_id,
                    "patient_id": f"{split}-p{i // 2}",
                    "site": "A" if i < n * 0.75 else "B",
                    "label": int(m[i].max()),
                    "split": split,
                    # 32 x 24 source images of 0.5 mm pixels: a model pixel is 1 mm
                    "rows": 32,
                    "columns": 24,
                    "pixel_spacing": 0.5,
                }
            )
    ArraysMeta(
        counts={"train": 40, "val": 8, "test": 24},
        data_hash="seg123",
        preprocess=PreprocessParams(image_size=SIDE),
        shape=(1, SIDE, SIDE),
        segments=1,
    ).write(arrays / META_FILE)
    pd.DataFrame(rows).to_csv(ingested / "manifest.csv", index=False)
    spec = ModelSpec(
        architecture="unet",
        in_channels=1,
        num_classes=1,
        width=4,
        dropout=0.0,
        class_names=CLASSES,
        preprocess=PreprocessParams(image_size=SIDE).model_dump(),
        provenance={"data_hash": "seg123", "git_revision": "deadbeef", "epochs_run": 1},
        task="segmentation",
        unet_channels=[8, 16],
    )
    net = _trained_unet(spec, *data["train"])
    save_model(root / "models", net, spec)
    return root


def _evaluate(work, out, champions=None):
    return run_segmentation_evaluate(
        PARAMS,
        work / "models",
        work / "pre",
        work / "ingested/manifest.csv",
        work / out,
        champion_dir=champion_folder(champions, DATASET.key) if champions else None,
        dataset=DATASET,
    )


def test_segmentation_evaluate_writes_every_report(work):
    result = _evaluate(work, "reports")
    out = work / "reports"
    raw = json.loads((out / "metrics.json").read_text())
    expected = {"dice", "iou", "hd95", "detection_sensitivity", "false_positives_per_image"}
    expected |= {f"{m}_ci_{e}" for m in ("dice", "iou", "hd95") for e in ("low", "high")}
    expected |= {"n_images", "threshold", "task", "per_segment"}
    assert expected <= set(raw)
    assert raw["task"] == "segmentation" and raw["threshold"] == PARAMS.mask_threshold
    assert raw["n_images"] == 24 and raw["n_patients"] == 12 and raw["n_lesions"] == 12
    assert set(raw["per_segment"]) == {"lesion"}
    metrics = read_metrics(out / "metrics.json")
    assert isinstance(metrics, SegmentationMetrics) and metrics == result.metrics
    assert raw["dice_ci_low"] <= raw["dice"] <= raw["dice_ci_high"]
    # 150 steps on bright squares find them
    assert raw["dice"] > 0.9 and raw["detection_sensitivity"] > 0.9

    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 24 and preds["image_id"].tolist() == [f"test-{i:02d}" for i in range(24)]
    assert {"patient_id", "dice", "iou", "hd95", "true_area", "predicted_area"} <= set(preds)
    assert preds["true_area"].tolist() == [0, 25] * 12
    assert preds["dice"].mean() == pytest.approx(raw["dice"])
    # an empty truth and an empty prediction score 1; one of them empty: 0 and the diagonal
    both_empty = (preds["true_area"] == 0) & (preds["predicted_area"] == 0)
    assert (preds.loc[both_empty, "dice"] == 1).all() and (preds.loc[both_empty, "hd95"] == 0).all()
    one_empty = (preds["true_area"] == 0) != (preds["predicted_area"] == 0)
    # the manifest's 0.5 mm source pixels, 32 px the longer side, 16 px model side: 1 mm
    assert preds.loc[one_empty, "hd95"].tolist() == pytest.approx(
        [SIDE * math.sqrt(2)] * int(one_empty.sum())
    )

    subgroups = json.loads((out / "subgroups.json").read_text())
    assert subgroups["site"]["A"]["n"] == 18 and subgroups["site"]["A"]["small"] == 0
    assert subgroups["site"]["B"]["n"] == 6 and subgroups["site"]["B"]["small"] == 1
    assert {"dice", "dice_ci_low", "hd95", "detection_sensitivity"} <= set(subgroups["site"]["A"])

    context = EvaluationContext.read(out / "evaluation.json")
    assert context.hd95_unit == "mm" and context.bootstrap.unit == "patient"
    assert context.threshold.value == PARAMS.mask_threshold
    for case in ("best", "median", "worst"):
        assert context.plots[f"overlay_{case}"] == f"plots/overlay_{case}.png"
        assert (out / "plots" / f"overlay_{case}.png").read_bytes()[:4] == b"\x89PNG"
    baseline = Baseline.read(out / "baseline.json")
    assert baseline.status == NO_CHAMPION


def test_the_gate_and_card_of_a_segmentation_model(work):
    out = work / "reports-gate"
    _evaluate(work, out.name)
    # params.yaml's gate: Dice >= 0.8, its interval's low end >= 0.7, HD95 <= 10 mm
    result = run_gate(
        GateParams(),
        out / "metrics.json",
        out / "gate.json",
        subgroups_file=out / "subgroups.json",
        baseline_file=out / "baseline.json",
        context_file=out / "evaluation.json",
        card_file=out / "model_card.md",
        task="segmentation",
    )
    assert result.passed
    report = GateReport.read(out / "gate.json")
    assert [r.metric for r in report.rules] == ["dice", "dice_ci_low", "hd95"]
    assert isinstance(report.metrics, SegmentationMetrics)
    card = (out / "model_card.md").read_text()
    assert card.startswith("# Model card: lesion segmentation")
    assert "Gate decision: ACCEPTED" in card and "| Dice | 0.99" in card
    assert "HD95 in mm" in card and "| lesion |" in card
    assert "![worst test case](plots/overlay_worst.png)" in card
    assert "| site | B | 6 |" in card and "small: interpret with care" in card


def test_the_champion_is_scored_on_the_same_test_split(work):
    """The candidate's own network as the dataset's champion: re-scored on this split, it
    scores what the candidate scores, so the change rules on dice and hd95 pass."""
    spec_dir = work / "models"
    # what package would store: metrics measured elsewhere (a Dice the candidate lacks)
    stored = _evaluate(work, "reports-stored").metrics.model_copy(update={"dice": 0.999})
    spec = load_spec(spec_dir)
    tag = save_to_store(PackageParams().model_name, spec_dir, spec, stored, gate_report(stored))
    champions = work / "champions"
    record_champion(
        champion_folder(champions, DATASET.key),
        model_tag=tag,
        bento_tag="medflow-service:unused",
        metrics=stored.values(),
        data_hash="other-data",
        git_revision=None,
        promoted_by="package",
        dataset=DATASET.as_dict(),
    )
    result = _evaluate(work, "reports-champion", champions)
    baseline = Baseline.read(work / "reports-champion/baseline.json")
    assert baseline.status == COMPARED and baseline.same_split
    assert isinstance(baseline.metrics, SegmentationMetrics)
    # its stored 0.999 is ignored: re-scored here, it is the candidate
    assert baseline.metrics.dice == pytest.approx(result.metrics.dice)
    assert baseline.metrics.hd95 == pytest.approx(result.metrics.hd95)
    out = work / "reports-champion"
    lax = GateParams(min_dice=0.0, min_dice_ci_low=0.0, max_hd95=1000.0)
    run_gate(lax, out / "metrics.json", out / "gate.json", baseline_file=out / "baseline.json")
    report = GateReport.read(out / "gate.json")
    changed = [r.rule for r in report.rules if "champion" in r.rule]
    assert changed == ["gate.max_worse_than_champion.dice", "gate.max_worse_than_champion.hd95"]
    assert report.passed and report.champion.status == COMPARED


def test_the_classification_evaluate_refuses_a_segmentation_model(work):
    with pytest.raises(ValueError, match="set data.task: segmentation"):
        run_evaluate(
            PARAMS, work / "models", work / "pre", work / "ingested/manifest.csv", work / "x"
        )
