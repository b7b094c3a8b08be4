"""Multi-class end to end: a real `dvc repro` on a three-class MedMNIST-style archive, through
ingest, validation, training, evaluation (macro AUROC, argmax), the gate and the Bento."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medflow.handoffs import EvaluationContext, GateReport, Metrics
from tests.helpers.pipeline_copy import make_copy, package_in_background
from tests.helpers.stages import always_changed, dvc_stages, ran_stages

CLASSES = ["normal", "nodule", "effusion"]
SIZES = {"train": 180, "val": 60, "test": 90}


def _image(label: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8: noise, plus a bright disc (nodule) or a bright lower band (effusion),
    placed with jitter so that the network has to learn the shape, not a pixel."""
    img = rng.normal(70, 12, (28, 28))
    yy, xx = np.mgrid[:28, :28]
    if label == 1:
        cy, cx = rng.integers(8, 20, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] += 110
    elif label == 2:
        top = rng.integers(17, 21)
        img[top:, 3:25] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def write_archive(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SIZES.items():
        labels = np.arange(n) % len(CLASSES)
        rng.shuffle(labels)
        arrays[f"{split}_images"] = np.stack([_image(int(y), rng) for y in labels])
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez(path, **arrays)


def _prepare(dest: Path) -> None:
    make_copy(
        dest,
        {
            "data": {"source": "three.npz", "class_names": CLASSES},
            # the synthetic site/manufacturer columns do not exist in an archive
            "evaluate": {"subgroups": []},
            "gate": {"min_auroc": 0.9},
        },
    )
    (dest / "data").mkdir(exist_ok=True)
    write_archive(dest / "data/three.npz")


REPRO = package_in_background("multiclass_repo", _prepare)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The copy after its `dvc repro package` (started in the background by conftest.py)."""
    dest, proc = REPRO.result(tmp_path_factory)
    assert proc.returncode == 0, (
        f"dvc repro package exited {proc.returncode}\n--stdout--\n{proc.stdout[-4000:]}"
        f"\n--stderr--\n{proc.stderr[-4000:]}"
    )
    return dest, proc.stdout + proc.stderr


def test_every_stage_ran_and_a_bento_was_built(repo) -> None:
    dest, out = repo
    # every stage but synth, which makes the demo data this copy does not use
    assert set(dvc_stages()) - {"synth"} - always_changed() <= ran_stages(out)
    bento = json.loads((dest / "reports/bento.json").read_text())
    assert bento["bento_tag"].startswith("medflow-service:")


def test_model_has_three_outputs_and_names(repo) -> None:
    dest, _ = repo
    spec = json.loads((dest / "models/model.json").read_text())
    assert spec["num_classes"] == 3 and spec["class_names"] == CLASSES
    assert spec["provenance"]["counts"]["train"] == SIZES["train"]


def test_macro_metrics_and_argmax_decisions(repo) -> None:
    dest, _ = repo
    metrics = Metrics.read(dest / "reports/metrics.json")
    # macro one-vs-rest AUROC of an easy three-class task, with its interval
    assert metrics.auroc >= 0.9, metrics
    assert metrics.auroc_ci_low <= metrics.auroc <= metrics.auroc_ci_high
    assert metrics.n_test_positive is None  # no positive class among three
    evaluation = EvaluationContext.read(dest / "reports/evaluation.json")
    assert evaluation.threshold.applies == "not used: argmax"
    predictions = (dest / "reports/predictions.csv").read_text().splitlines()
    assert len(predictions) == SIZES["test"] + 1
    header = predictions[0].split(",")
    # every class's probability is in the predictions, and the predicted labels use all three
    assert all(any(name in col for col in header) for name in CLASSES), header
    gate = GateReport.read(dest / "reports/gate.json")
    assert gate.passed is True, gate.failures


def test_model_card_lists_every_class(repo) -> None:
    dest, _ = repo
    card = (dest / "reports/model_card.md").read_text()
    for name in CLASSES:
        assert name in card
