"""The package stage's checks, without a model store (see tests/integration/test_serving.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.config import PreprocessParams
from medflow.errors import GateFailed
from medflow.handoffs import HandoffError
from medflow.models.artifact import ModelSpec
from medflow.registry.champion import Champion, read_champion
from medflow.registry.packaging import (
    CHAMPION_METRICS,
    CHAMPION_MODEL,
    PackageResult,
    model_labels,
    read_gate,
    served_spec,
    store_safe,
    write_champion,
    write_reference,
)
from tests.helpers.handoffs import gate_report, metrics


def _spec(threshold: float = 0.5, **provenance: object) -> ModelSpec:
    return ModelSpec(
        "SmallCNN",
        1,
        2,
        8,
        0.1,
        ["normal", "lesion"],
        PreprocessParams().model_dump(),
        threshold=threshold,
        provenance=dict(provenance),
    )


def _write(tmp_path: Path, obj: object, name: str = "x.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_read_gate_passed(tmp_path: Path) -> None:
    gate = gate_report(metrics())
    gate.write(tmp_path / "gate.json")
    assert read_gate(tmp_path / "gate.json") == gate


def test_read_gate_failed_lists_every_reason(tmp_path: Path) -> None:
    failures = ["auroc = 0.6 is below 0.85", "sensitivity = 0.2"]
    gate_report(metrics(), failures).write(tmp_path / "gate.json")
    with pytest.raises(GateFailed) as exc:
        read_gate(tmp_path / "gate.json")
    assert "auroc = 0.6 is below 0.85" in str(exc.value)
    assert "sensitivity = 0.2" in str(exc.value)


@pytest.mark.parametrize("passed", [None, "yes", 1])
def test_read_gate_refuses_an_unclear_decision(tmp_path: Path, passed: object) -> None:
    gate = {**gate_report(metrics()).model_dump(), "passed": passed}
    if passed is None:
        del gate["passed"]
    with pytest.raises(HandoffError, match=r"x\.json is not a valid GateReport \(passed: "):
        read_gate(_write(tmp_path, gate))


def test_read_gate_refuses_a_list(tmp_path: Path) -> None:
    with pytest.raises(HandoffError, match="x.json"):
        read_gate(_write(tmp_path, [True]))


def test_read_gate_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the gate stage"):
        read_gate(tmp_path / "gate.json")


def test_served_spec_takes_the_evaluated_threshold() -> None:
    spec = _spec(threshold=0.5)
    assert served_spec(spec, metrics(threshold=0.5)) is spec
    assert served_spec(spec, metrics(threshold=0.3)).threshold == 0.3
    with pytest.raises(ValueError, match="threshold"):
        served_spec(spec, metrics(threshold=1.5))


def test_store_safe_drops_none_and_stringifies_nan() -> None:
    raw = {"a": None, "b": [1, None, float("nan")], "c": {"d": (1, 2)}, "e": Path("x")}
    assert store_safe(raw) == {"b": [1, "nan"], "c": {"d": [1, 2]}, "e": "x"}


def test_model_labels_are_strings() -> None:
    labels = model_labels(_spec(data_hash="f" * 64))
    assert labels["data_hash"] == "f" * 64
    assert labels["classes"] == "normal,lesion"
    assert all(isinstance(v, str) for v in labels.values())
    assert "data_hash" not in model_labels(_spec())


def test_write_champion_records_metrics_and_tags(tmp_path: Path) -> None:
    result = PackageResult(model_tag="m:1", bento_tag="b:1")
    m = metrics(auroc=0.9, threshold=0.4)
    write_champion(tmp_path / "champion", result, m, _spec(data_hash="abc"))
    assert json.loads((tmp_path / "champion" / CHAMPION_METRICS).read_text()) == m.values()
    model = read_champion(tmp_path / "champion")
    assert model is not None and (model.model_tag, model.bento_tag) == ("m:1", "b:1")
    assert model.data_hash == "abc" and model.promoted_by == "package"
    raw = json.loads((tmp_path / "champion" / CHAMPION_MODEL).read_text())
    assert set(raw) == set(Champion.model_fields)  # every field written


def test_write_reference_stores_test_images_with_their_evaluated_probabilities(
    tmp_path: Path,
) -> None:
    ingested = tmp_path / "ingested"
    (ingested / "images").mkdir(parents=True)
    rows = ["image_id,file,frame,split,label"]
    for i, (split, label) in enumerate(
        [("train", 0), ("test", 1), ("test", 1), ("test", 0), ("val", 0), ("test", 1)]
    ):
        (ingested / "images" / f"{i}.dcm").write_bytes(f"dicom {i}".encode())
        rows.append(f"1.2.{i},images/{i}.dcm,0,{split},{label}")
    (ingested / "manifest.csv").write_text("\n".join(rows) + "\n")
    preds = ["image_id,label,p_normal,p_lesion"]
    preds += [f"1.2.{i},0,{1 - i / 10:.2f},{i / 10:.2f}" for i in (1, 2, 3, 5)]
    (tmp_path / "predictions.csv").write_text("\n".join(preds) + "\n")

    n = write_reference(
        tmp_path / "model",
        ingested / "manifest.csv",
        tmp_path / "predictions.csv",
        ["normal", "lesion"],
        n=3,
    )
    ref = tmp_path / "model" / "reference"
    samples = json.loads((ref / "expected.json").read_text())["samples"]
    assert n == 3 and [s["file"] for s in samples] == ["sample0.dcm", "sample1.dcm", "sample2.dcm"]
    # classes in turn, by image_id: 1.2.3 (normal), 1.2.1 (lesion), then 1.2.2 (lesion)
    assert [(ref / s["file"]).read_bytes() for s in samples] == [b"dicom 3", b"dicom 1", b"dicom 2"]
    assert [s["probabilities"] for s in samples] == [[0.7, 0.3], [0.9, 0.1], [0.8, 0.2]]
