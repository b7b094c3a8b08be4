"""The registry for real: packaged models and Bentos in the BentoML store, `bentoml serve` of
each promoted Bento (infra-validation), and the champion files the gate and `make serve` read.

Four server start-ups in all (promote A, promote B, rollback to A, the broken Bento).
BENTOML_HOME is a per-session temp folder (tests/conftest.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medflow.cli import app
from medflow.config import DataParams, PackageParams, PreprocessParams
from medflow.data.dataset import Dataset, champion_folder
from medflow.models.artifact import WEIGHTS_FILE, ModelSpec, save_model
from medflow.models.net import SmallCNN
from medflow.registry.champion import (
    CHAMPION_METRICS,
    CHAMPION_MODEL,
    HISTORY_FILE,
    record_champion,
)
from medflow.registry.infra_validation import InfraValidationFailed, sample_dicoms
from medflow.registry.packaging import PackageResult, run_package
from medflow.registry.store import list_models, promote, rollback, served_bento
from tests.helpers.handoffs import write_evaluated

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = PackageParams().model_name
CLASSES = ["normal", "lesion"]
# the dataset of the project's params.yaml (the CLI's default --dataset): the synthetic demo
KEY = Dataset.of(DataParams()).key


@dataclass(frozen=True)
class Store:
    a: PackageResult
    b: PackageResult
    broken: PackageResult  # its weights in the model store are garbage: it cannot start
    metrics: dict[str, dict[str, float]]  # model tag -> metrics
    samples: list[Path]


def _package(tmp: Path, seed: int, auroc: float) -> tuple[PackageResult, dict[str, float]]:
    torch.manual_seed(seed)
    spec = ModelSpec(
        architecture="SmallCNN",
        in_channels=1,
        num_classes=2,
        width=8,
        dropout=0.1,
        class_names=CLASSES,
        preprocess=PreprocessParams(image_size=32).model_dump(),
        provenance={"data_hash": f"{seed:064d}", "git_revision": f"rev{seed}"},
    )
    save_model(tmp / "model", SmallCNN(1, 2, width=8), spec)
    write_evaluated(tmp, auroc=auroc, sensitivity=0.8, specificity=0.85, threshold=0.5)
    metrics = json.loads((tmp / "metrics.json").read_text())
    result = run_package(
        PackageParams(),
        tmp / "model",
        tmp / "metrics.json",
        tmp / "gate.json",
        ROOT,
        tmp / "package.json",
    )
    return result, metrics


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    import bentoml

    packaged = {
        name: _package(tmp_path_factory.mktemp(f"pkg_{name}"), seed, auroc)
        for name, seed, auroc in (("a", 1, 0.91), ("b", 2, 0.93), ("broken", 3, 0.95))
    }
    broken = packaged["broken"][0]
    (Path(bentoml.models.get(broken.model_tag).path) / WEIGHTS_FILE).write_bytes(b"not torch")
    return Store(
        a=packaged["a"][0],
        b=packaged["b"][0],
        broken=broken,
        metrics={r.model_tag: m for r, m in packaged.values()},
        samples=sample_dicoms(tmp_path_factory.mktemp("samples")),
    )


def _champion(folder: Path) -> tuple[dict, dict]:
    return (
        json.loads((folder / CHAMPION_MODEL).read_text()),
        json.loads((folder / CHAMPION_METRICS).read_text()),
    )


def test_list_shows_models_with_metrics_gate_and_bento(store: Store, tmp_path: Path) -> None:
    entries = {e.tag: e for e in list_models(MODEL_NAME)}
    assert {store.a.model_tag, store.b.model_tag, store.broken.model_tag} <= set(entries)
    a = entries[store.a.model_tag]
    assert a.bentos == [store.a.bento_tag]
    assert a.metrics["auroc"] == 0.91 and a.gate == "passed"
    assert a.data_hash == f"{1:064d}" and a.class_names == CLASSES

    out = CliRunner().invoke(app, ["models", "list", "--champions", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    listed = {row["tag"]: row for row in json.loads(out.output)}
    assert listed[store.b.model_tag]["bentos"] == [store.b.bento_tag]


def test_promote_and_rollback_change_what_is_served(store: Store, tmp_path: Path) -> None:
    champ = champion_folder(tmp_path, KEY)
    select = ["--champions", str(tmp_path), "--dataset", KEY]
    runner = CliRunner()

    first = promote(store.a.model_tag, MODEL_NAME, champ, samples=store.samples)
    assert first.infra.served_model_tag == store.a.model_tag
    assert first.infra.n_samples == len(store.samples)
    model, metrics = _champion(champ)
    assert (model["model_tag"], model["bento_tag"]) == (store.a.model_tag, store.a.bento_tag)
    assert metrics == store.metrics[store.a.model_tag]  # what the next gate compares with
    assert served_bento(champ) == store.a.bento_tag

    # by Bento tag this time: the registry finds the model it serves
    second = promote(store.b.bento_tag, MODEL_NAME, champ, samples=store.samples)
    assert (second.model_tag, second.previous) == (store.b.model_tag, store.a.model_tag)
    out = runner.invoke(app, ["models", "served-bento", *select])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == store.b.bento_tag
    assert _champion(champ)[1]["auroc"] == 0.93

    back = rollback(MODEL_NAME, champ, samples=store.samples)
    assert (back.model_tag, back.previous) == (store.a.model_tag, store.b.model_tag)
    model, metrics = _champion(champ)
    assert model["bento_tag"] == store.a.bento_tag and model["promoted_by"] == "rollback"
    assert metrics["auroc"] == 0.91
    assert served_bento(champ) == store.a.bento_tag
    history = json.loads((champ / HISTORY_FILE).read_text())
    assert [(h["action"], h["model_tag"]) for h in history] == [
        ("promote", store.a.model_tag),
        ("promote", store.b.model_tag),
        ("rollback", store.a.model_tag),
    ]
    # A before A: nothing left to roll back to, and saying so changes nothing.
    out = runner.invoke(app, ["models", "rollback", *select])
    assert out.exit_code == 1 and "no previous champion" in out.output
    assert len(json.loads((champ / HISTORY_FILE).read_text())) == 3


def test_failed_infra_validation_blocks_promotion(store: Store, tmp_path: Path) -> None:
    champ = tmp_path / "champion"
    record_champion(
        champ,
        model_tag=store.a.model_tag,
        bento_tag=store.a.bento_tag,
        metrics=store.metrics[store.a.model_tag],
        data_hash=None,
        git_revision=None,
        promoted_by="promote",
    )
    before = {p.name: p.read_bytes() for p in champ.iterdir()}

    with pytest.raises(InfraValidationFailed, match=f"{store.broken.bento_tag} could not start"):
        promote(store.broken.model_tag, MODEL_NAME, champ, samples=store.samples, timeout=30)
    with pytest.raises(ValueError, match="no model or Bento"):
        promote(f"{MODEL_NAME}:doesnotexist", MODEL_NAME, champ, samples=store.samples)

    assert {p.name: p.read_bytes() for p in champ.iterdir()} == before
    assert served_bento(champ) == store.a.bento_tag
