"""The monitoring reference: written into the model store at package time (real store entries in
the session's BentoML home), read back by the monitor by model tag."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medflow.config import PreprocessParams
from medflow.handoffs import HandoffError
from medflow.models.artifact import WEIGHTS_FILE, ModelSpec
from medflow.monitor.reference import load_reference
from medflow.registry.monitoring import MONITORING_FILE, MonitoringReference, build_reference
from medflow.registry.packaging import save_to_store
from medflow.validation import drift
from tests.helpers.handoffs import gate_report, metrics
from tests.helpers.manifest_factory import CLASS_NAMES, valid_manifest, write_manifest
from tests.helpers.monitoring import reference, store_model


def _evaluated(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame]:
    """An ingested folder (manifest and its files) and predictions.csv of its test split."""
    manifest = valid_manifest()
    ingested = write_manifest(manifest, tmp_path / "ingested")
    for file in manifest["file"]:
        (ingested / file).parent.mkdir(parents=True, exist_ok=True)
        (ingested / file).write_bytes(b"a de-identified DICOM file")
    test = manifest[manifest["split"] == "test"]
    p = np.linspace(0.05, 0.95, len(test))
    preds = pd.DataFrame(
        {"image_id": test["image_id"], "label": test["label"], "p_normal": 1 - p, "p_lesion": p}
    )
    preds.to_csv(tmp_path / "predictions.csv", index=False)
    return ingested / "manifest.csv", tmp_path / "predictions.csv", manifest


def test_build_reference_holds_the_training_profile_and_test_predictions(tmp_path: Path) -> None:
    manifest_file, predictions, manifest = _evaluated(tmp_path)
    ref = build_reference(manifest_file, predictions, CLASS_NAMES, 0.4, metrics().values())
    assert ref.profile == drift.profile(manifest, CLASS_NAMES)  # validate's profile, all splits
    assert len(ref.probabilities) == 8 and ref.probabilities[0] == pytest.approx([0.95, 0.05])
    assert ref.threshold == 0.4 and ref.metrics["auroc"] == metrics().auroc
    assert ref.class_names == CLASS_NAMES and ref.task == "classification"
    # numbers and category names only: no image id, file or pseudonym
    text = ref.model_dump_json()
    assert not any(v in text for v in [*manifest["image_id"], *manifest["patient_id"]])
    assert "images/" not in text

    ref.write(tmp_path / MONITORING_FILE)
    assert MonitoringReference.read(tmp_path / MONITORING_FILE) == ref


def test_build_reference_names_missing_columns(tmp_path: Path) -> None:
    manifest_file, predictions, manifest = _evaluated(tmp_path)
    with pytest.raises(ValueError, match=r"predictions.csv has no columns \['p_benign'\]"):
        build_reference(manifest_file, predictions, ["normal", "benign"], 0.5, {})
    manifest.drop(columns="manufacturer").to_csv(manifest_file, index=False)
    with pytest.raises(ValueError, match=r"has no columns \['manufacturer'\]: re-run the ingest"):
        build_reference(manifest_file, predictions, CLASS_NAMES, 0.5, {})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": 2}, "format"),
        ({"probabilities": [[0.5, 0.5], [1.0]]}, "1 probability rows do not have 2 values"),
        ({"profile": {"format": 1}}, "not a format-1 drift profile"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_damaged_reference_is_named(tmp_path: Path, change: dict, problem: str) -> None:
    path = tmp_path / MONITORING_FILE
    path.write_text(json.dumps({**reference().model_dump(), **change}))
    with pytest.raises(HandoffError, match=problem) as exc:
        MonitoringReference.read(path)
    assert str(path) in str(exc.value) and "re-package the model" in str(exc.value)


def _spec(threshold: float) -> ModelSpec:
    return ModelSpec(
        "SmallCNN", 1, 2, 8, 0.1, CLASS_NAMES, PreprocessParams().model_dump(), threshold=threshold
    )


def test_save_to_store_writes_monitoring_json_and_the_monitor_finds_it(tmp_path: Path) -> None:
    manifest_file, predictions, manifest = _evaluated(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / WEIGHTS_FILE).write_bytes(b"weights")
    m = metrics(auroc=0.91, threshold=0.35)
    tag = save_to_store(
        "medflow-monitor-pkg",
        model_dir,
        _spec(0.35),
        m,
        gate_report(m),
        reference=(manifest_file, predictions),
    )
    found = load_reference(tag)
    assert found.missing is None and found.reference is not None
    assert found.reference.threshold == 0.35 and found.evaluated["auroc"] == 0.91
    assert found.reference.profile["images"] == len(manifest)
    assert len(found.reference.probabilities) == int((manifest["split"] == "test").sum())

    # without the manifest and predictions (as infra-validation tests package): no reference
    bare = save_to_store("medflow-monitor-pkg", model_dir, _spec(0.35), m, gate_report(m))
    old = load_reference(bare)
    assert old.reference is None and old.evaluated["auroc"] == 0.91  # from the store metadata
    assert f"model {bare} has no {MONITORING_FILE}" in old.missing


def test_an_unknown_tag_or_a_damaged_file(tmp_path: Path) -> None:
    gone = load_reference("medflow-monitor-test:doesnotexist")
    assert gone.reference is None and gone.evaluated == {}
    assert "is not in the BentoML model store" in gone.missing

    tag = store_model(reference())
    import bentoml

    (Path(bentoml.models.get(tag).path) / MONITORING_FILE).write_text("{")
    with pytest.raises(HandoffError, match="is not valid JSON"):
        load_reference(tag)
