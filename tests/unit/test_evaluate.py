"""The evaluate stage end to end on a tiny untrained network and hand-made arrays."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medflow.config import EvaluateParams, PreprocessParams
from medflow.data.arrays import META_FILE, ArraysMeta, write_images, write_labels
from medflow.evaluation.scoring import run_evaluate
from medflow.handoffs import NO_CHAMPION, Baseline, EvaluationContext, Metrics
from medflow.models.artifact import ModelSpec, save_model


@pytest.fixture
def workspace(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(
        architecture="SmallCNN",
        in_channels=1,
        num_classes=2,
        width=4,
        dropout=0.0,
        class_names=["normal", "lesion"],
        preprocess=PreprocessParams(image_size=8).model_dump(),
        provenance={"data_hash": "abc123", "git_revision": "deadbeef"},
    )
    save_model(tmp_path / "models", spec.build(), spec)
    arrays = tmp_path / "pre"
    arrays.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 8), ("val", 20), ("test", 40)):
        y = np.arange(n) % 2
        # a brighter image for the positive class, so the untrained net still ranks somewhat
        x = rng.random((n, 1, 8, 8), dtype=np.float32) + y[:, None, None, None] * 0.5
        ids = np.array([f"{split}-{i}" for i in range(n)])
        write_images(arrays, split, x)
        write_labels(arrays, split, y, ids)
        for i, image_id in enumerate(ids):
            rows.append(
                {
                    "image_id": image_id,
                    "patient_id": f"{split}-p{i // 2}",
                    "site": "A" if i < n * 0.8 else "B",
                    "manufacturer": "",
                    "label": int(y[i]),
                    "split": split,
                }
            )
    meta = ArraysMeta(
        counts={"train": 8, "val": 20, "test": 40},
        data_hash="abc123",
        preprocess=PreprocessParams(image_size=8),
        shape=(1, 8, 8),
    )
    meta.write(arrays / META_FILE)
    ingested = tmp_path / "ingested"
    ingested.mkdir()
    pd.DataFrame(rows).to_csv(ingested / "manifest.csv", index=False)
    return tmp_path


def test_run_evaluate_writes_every_report(workspace):
    params = EvaluateParams(n_bootstrap=50, min_subgroup_n=20)
    out = workspace / "reports"
    result = run_evaluate(
        params, workspace / "models", workspace / "pre", workspace / "ingested/manifest.csv", out
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(result.metrics.values(), nan_ok=True)
    assert Metrics.read(out / "metrics.json").values() == pytest.approx(metrics, nan_ok=True)
    # flat numbers only: DVC shows them and package reads them
    assert all(isinstance(v, int | float) for v in metrics.values())
    assert {"auroc", "auroc_ci_low", "auroc_ci_high", "ece", "threshold"} <= set(metrics)
    assert 0 < metrics["threshold"] < 1 and metrics["n_test"] == 40
    assert metrics["n_test_patients"] == 20
    # the chosen threshold reaches the target sensitivity on val, as the policy says
    assert metrics["val_sensitivity"] >= params.target_sensitivity

    subgroups = json.loads((out / "subgroups.json").read_text())
    assert set(subgroups) == {"site", "manufacturer"}
    assert subgroups["site"]["A"]["n"] == 32 and subgroups["site"]["A"]["small"] == 0
    assert subgroups["site"]["B"]["n"] == 8 and subgroups["site"]["B"]["small"] == 1
    assert set(subgroups["manufacturer"]) == {"(missing)"}  # blank values are a group too

    context = EvaluationContext.read(out / "evaluation.json")
    assert context.subgroups.missing == ["sex", "age_band"]
    assert context.bootstrap.unit == "patient"
    assert context.data.class_counts["test"] == {"normal": 20, "lesion": 20}
    assert context.data.data_hash == "abc123" and context.params == params
    raw = json.loads((out / "evaluation.json").read_text())
    assert raw["data"]["preprocess"] == PreprocessParams(image_size=8).model_dump()
    baseline = Baseline.read(out / "baseline.json")
    assert baseline.status == NO_CHAMPION and baseline.metrics is None
    assert json.loads((out / "baseline.json").read_text())["evaluated_on"] == {}

    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:4]) == ["image_id", "label", "actual", "predicted"]
    assert set(preds["actual"]) == {"normal", "lesion"}
    for name in ("roc", "pr", "calibration"):
        assert (out / "plots" / f"{name}.csv").stat().st_size > 0
    for name in ("roc", "pr", "calibration", "confusion"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_images_missing_from_the_manifest_are_an_error(workspace):
    manifest = workspace / "ingested/manifest.csv"
    df = pd.read_csv(manifest)
    df[df["image_id"] != "test-3"].to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="not in the manifest"):
        run_evaluate(
            EvaluateParams(n_bootstrap=0),
            workspace / "models",
            workspace / "pre",
            manifest,
            workspace / "reports",
        )


def test_arrays_without_meta_are_an_error_naming_the_file(workspace):
    (workspace / "pre" / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="meta.json.*run the preprocess stage"):
        run_evaluate(
            EvaluateParams(n_bootstrap=0),
            workspace / "models",
            workspace / "pre",
            workspace / "ingested/manifest.csv",
            workspace / "reports",
        )
