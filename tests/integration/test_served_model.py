"""Served = evaluated: the Bento the reproduced pipeline built answers, over HTTP and from the
test split's de-identified DICOM files, the very probabilities evaluate wrote to
reports/predictions.csv; infra-validation checks the same on the samples stored with the
model, and refuses a Bento whose network answers otherwise.

Uses the session's reproduced copy (conftest.py `reproduced`), read only; the perturbed model
goes to the session's BentoML store (tests/conftest.py). Three server start-ups.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch

from medflow.config import PackageParams
from medflow.models.artifact import WEIGHTS_FILE
from medflow.registry.champion import read_champion, record_champion
from medflow.registry.infra_validation import (
    REFERENCE_DIR,
    REFERENCE_FILE,
    InfraValidationFailed,
    infra_validate,
    serve_bento,
)
from medflow.registry.packaging import build_bento
from medflow.registry.store import promote

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = PackageParams().model_name


@dataclass(frozen=True)
class Built:
    repo: Path
    model_tag: str
    bento_tag: str
    class_names: list[str]


@pytest.fixture(scope="module")
def built(reproduced: tuple[Path, str]) -> Built:
    repo, _ = reproduced
    bento = json.loads((repo / "reports/bento.json").read_text())
    spec = json.loads((repo / "models/model.json").read_text())
    return Built(repo, bento["model_tag"], bento["bento_tag"], spec["class_names"])


def _test_split(repo: Path) -> pd.DataFrame:
    manifest = pd.read_csv(repo / "data/ingested/manifest.csv", dtype={"image_id": str})
    return manifest[manifest["split"] == "test"]


def test_served_bento_answers_what_evaluate_scored(built: Built, tmp_path: Path) -> None:
    """Every test-split DICOM file posted to the served Bento: its probabilities are those in
    predictions.csv, to 1e-4 (infra-validation's tolerance): served preprocessing and network
    are the evaluated ones."""
    test = _test_split(built.repo)
    preds = pd.read_csv(built.repo / "reports/predictions.csv", dtype={"image_id": str})
    preds = preds.set_index("image_id")
    assert len(test) >= 20 and set(test["image_id"]) == set(preds.index)
    columns = [f"p_{c}" for c in built.class_names]

    with serve_bento(built.bento_tag, workdir=tmp_path / "serve", timeout=120) as server:
        for i, row in enumerate(test.itertuples()):
            data = (built.repo / "data/ingested" / row.file).read_bytes()
            resp = httpx.post(
                f"{server.url}/predict", files={"file": (f"image{i}.dcm", data)}, timeout=60
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["model_tag"] == built.model_tag
            served = [body["probabilities"][c] for c in built.class_names]
            evaluated = preds.loc[row.image_id, columns].to_numpy(dtype=float).tolist()
            assert served == pytest.approx(evaluated, abs=1e-4), (i, served, evaluated)
            assert body["label"] == preds.loc[row.image_id, "predicted"], i
    # both classes predicted with some spread: a constant answer would prove little
    assert preds.loc[test["image_id"], "predicted"].nunique() == 2


def test_the_model_store_holds_de_identified_test_samples(built: Built) -> None:
    import bentoml
    import pydicom

    folder = Path(bentoml.models.get(built.model_tag).path) / REFERENCE_DIR
    samples = json.loads((folder / REFERENCE_FILE).read_text())["samples"]
    assert len(samples) == 4
    test = _test_split(built.repo)
    test_sops = set(test["sop_instance_id"].astype(str))
    labels = []
    for sample in samples:
        ds = pydicom.dcmread(folder / sample["file"])
        # a file of the ingested (de-identified) test split, under a neutral name
        assert str(ds.SOPInstanceUID) in test_sops
        assert str(ds.PatientID).startswith("PSN-")
        labels.append(test.set_index("sop_instance_id").loc[str(ds.SOPInstanceUID), "label"])
    assert sorted(set(labels)) == [0, 1]  # both classes


def test_infra_validation_compares_with_the_evaluated_probabilities(built: Built) -> None:
    report = infra_validate(built.bento_tag, built.model_tag, built.class_names)
    assert report.n_samples == 4 and report.served_model_tag == built.model_tag


def _perturbed_copy(model_tag: str) -> str:
    """A new model store entry: the same files, metadata and reference samples, but with the
    network's weights moved a little (as a wrong or corrupted model would answer)."""
    import bentoml

    original = bentoml.models.get(model_tag)
    with bentoml.models.create(
        name=MODEL_NAME, labels=original.info.labels, metadata=original.info.metadata
    ) as m:
        shutil.copytree(original.path, m.path, dirs_exist_ok=True, ignore=_store_files)
        state = torch.load(Path(m.path) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        gen = torch.Generator().manual_seed(0)
        for value in state.values():
            if value.dim() > 1:  # conv and linear weights (a BatchNorm variance must stay > 0)
                value.add_(0.05 * torch.randn(value.shape, generator=gen))
        torch.save(state, Path(m.path) / WEIGHTS_FILE)
    return str(m.tag)


def _store_files(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(".yaml")]  # BentoML's own model.yaml


def test_a_bento_answering_otherwise_is_not_promoted(built: Built, tmp_path: Path) -> None:
    perturbed = _perturbed_copy(built.model_tag)
    build_bento(ROOT / "deploy/bentofile.yaml", ROOT / "src", perturbed)
    champ = tmp_path / "champion"
    record_champion(
        champ,
        model_tag=built.model_tag,
        bento_tag=built.bento_tag,
        metrics={"auroc": 0.95},
        data_hash=None,
        git_revision=None,
        promoted_by="promote",
    )
    before = read_champion(champ)

    with pytest.raises(InfraValidationFailed, match="does not answer as the evaluated model"):
        promote(perturbed, MODEL_NAME, champ)
    assert read_champion(champ) == before
