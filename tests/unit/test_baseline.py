"""The gate's change rules compare champion and candidate on the same test split.

Real DICOM files (pydicom), real small networks (one trained for a few seconds), the real
BentoML model store (a per-session temp folder, tests/conftest.py), the real evaluate and
gate stages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medflow.config import EvaluateParams, GateParams, PackageParams, PreprocessParams
from medflow.data.arrays import META_FILE, ArraysMeta, write_images, write_labels
from medflow.data.dataset import Dataset, champion_folder
from medflow.data.preprocessing import preprocess_rows
from medflow.errors import GateFailed
from medflow.evaluation.gate import run_gate
from medflow.evaluation.metrics import metrics_with_ci
from medflow.evaluation.scoring import predict_proba, run_evaluate
from medflow.handoffs import Baseline, GateReport, Metrics
from medflow.imaging.preprocess import preprocess_file
from medflow.models.artifact import ModelSpec, load_model, save_model
from medflow.registry.baseline import CLASSES_DIFFER, COMPARED, NO_CHAMPION, UNAVAILABLE
from medflow.registry.champion import read_champion, record_champion
from medflow.registry.packaging import save_to_store
from tests.helpers.handoffs import gate_report
from tests.helpers.handoffs import metrics as full_metrics

CLASSES = ["normal", "lesion"]
DATASET = Dataset(source="synthetic", class_names=tuple(CLASSES))
CANDIDATE_PRE = PreprocessParams(image_size=8)
PARAMS = EvaluateParams(n_bootstrap=20, threshold_policy="fixed", threshold=0.5)


def _dicom(path: Path, label: int, rng: np.random.Generator) -> None:
    """A 24x24 secondary capture; a lesion is a bright square in the middle."""
    pixels = rng.integers(200, 900, size=(24, 24)).astype(np.uint16)
    if label:
        pixels[8:16, 8:16] += 2500
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ingest folder of real DICOM (manifest.csv), the candidate's arrays, and an
    untrained candidate network: what the evaluate stage reads."""
    root = tmp_path_factory.mktemp("baseline")
    ingest, arrays = root / "ingested", root / "pre"
    (ingest / "images").mkdir(parents=True)
    arrays.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 48), ("val", 20), ("test", 40)):
        for i in range(n):
            label = i % 2
            image_id = f"{split}-{i:03d}"
            _dicom(ingest / "images" / f"{image_id}.dcm", label, rng)
            rows.append(
                {
                    "image_id": image_id,
                    "patient_id": f"{split}-p{i // 2}",
                    "file": f"images/{image_id}.dcm",
                    "frame": 0,
                    "label": label,
                    "split": split,
                    "site": "A",
                    "manufacturer": "",
                }
            )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(ingest / "manifest.csv", index=False)
    for split in ("train", "val", "test"):
        part = manifest[manifest.split == split].sort_values("image_id")
        write_images(arrays, split, preprocess_rows(CANDIDATE_PRE, ingest, part))
        write_labels(arrays, split, part.label.to_numpy(), part.image_id.to_numpy())
    counts = manifest.split.value_counts().to_dict()
    shape = (1, CANDIDATE_PRE.image_size, CANDIDATE_PRE.image_size)
    meta = ArraysMeta(counts=counts, data_hash="feed", preprocess=CANDIDATE_PRE, shape=shape)
    meta.write(arrays / META_FILE)
    torch.manual_seed(0)
    spec = _spec(CANDIDATE_PRE, 0.5)
    save_model(root / "candidate", spec.build(), spec)
    return root


def _spec(pre: PreprocessParams, threshold: float, classes: list[str] = CLASSES) -> ModelSpec:
    return ModelSpec(
        architecture="smallcnn",
        in_channels=1,
        num_classes=len(classes),
        width=4,
        dropout=0.0,
        class_names=list(classes),
        preprocess=pre.model_dump(),
        threshold=threshold,
        provenance={"data_hash": "other-data"},
    )


def _trained(work: Path, pre: PreprocessParams) -> torch.nn.Module:
    """A network trained for a few seconds on the train split, preprocessed by `pre`."""
    manifest = pd.read_csv(work / "ingested/manifest.csv")
    train = manifest[manifest.split == "train"]
    x = torch.from_numpy(preprocess_rows(pre, work / "ingested", train))
    y = torch.tensor(train.label.to_numpy(dtype=np.int64))
    torch.manual_seed(1)
    net = _spec(pre, 0.5).build()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _make_champion(work: Path, name: str, net: torch.nn.Module, spec: ModelSpec) -> Path:
    """Package-like: the network into the model store, recorded as the dataset's champion
    with metrics measured on other data (what the old gate compared with)."""
    save_model(work / name, net, spec)
    stored = full_metrics(auroc=0.999, sensitivity=0.999, specificity=0.999, ece=0.001)
    tag = save_to_store(PackageParams().model_name, work / name, spec, stored, gate_report(stored))
    champions = work / f"champions-{name}"
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
    return champions


def _evaluate(work: Path, champions: Path | None, out: str) -> tuple[Metrics, Baseline, Path]:
    reports = work / out
    run_evaluate(
        PARAMS,
        work / "candidate",
        work / "pre",
        work / "ingested/manifest.csv",
        reports,
        champion_dir=champion_folder(champions, DATASET.key) if champions else None,
        dataset=DATASET,
    )
    return Metrics.read(reports / "metrics.json"), Baseline.read(reports / "baseline.json"), reports


def _gate(reports: Path, params: GateParams) -> GateReport:
    try:
        run_gate(
            params,
            reports / "metrics.json",
            reports / "gate.json",
            baseline_file=reports / "baseline.json",
            context_file=reports / "evaluation.json",
            card_file=reports / "model_card.md",
        )
    except GateFailed:
        pass
    return GateReport.read(reports / "gate.json")


# value rules off: the candidate is an untrained network (only the change rules are tested)
LAX = {
    "min_auroc": 0.0,
    "min_auroc_ci_low": 0.0,
    "min_sensitivity": 0.0,
    "min_specificity": 0.0,
    "max_ece": 1.0,
    "min_subgroup_auroc": 0.0,
}


def test_the_same_network_as_champion_scores_exactly_the_candidates_metrics(work: Path) -> None:
    """Its stored metrics (0.999, from other data) are ignored: re-scored on this split, the
    champion that is the candidate's own network scores what the candidate scores."""
    net, _ = load_model(work / "candidate")
    champions = _make_champion(work, "same", net, _spec(CANDIDATE_PRE, PARAMS.threshold))
    metrics, baseline, reports = _evaluate(work, champions, "r-same")
    assert baseline.status == COMPARED and baseline.same_split
    assert baseline.evaluated_on.n_test == metrics.n_test == 40
    assert "test arrays" in baseline.evaluated_on.inputs
    for m in ("auroc", "sensitivity", "specificity", "ece", "brier"):
        assert baseline.metrics.interval(m) == pytest.approx(metrics.interval(m)), m
    gate = _gate(reports, GateParams(**LAX, max_worse_than_champion={"auroc": 0.0, "ece": 0.0}))
    assert gate.passed, gate.failures
    assert gate.champion.status == COMPARED and gate.champion.dataset == DATASET.key
    assert any(r.rule == "gate.max_worse_than_champion.auroc" for r in gate.rules)
    card = (reports / "model_card.md").read_text()
    assert "scored on this model's test split" in card and DATASET.key in card


def test_a_better_champion_with_its_own_preprocessing_refuses_the_candidate(work: Path) -> None:
    """A trained champion with other preprocess params (16 px, the candidate's arrays are
    8 px) and its own threshold: scored on the test split's DICOM files through
    medflow.imaging.preprocess with its params; better than the untrained candidate, so the change
    rule refuses it."""
    pre = PreprocessParams(image_size=16)
    net = _trained(work, pre)
    spec = _spec(pre, 0.4)
    champions = _make_champion(work, "better", net, spec)
    metrics, baseline, reports = _evaluate(work, champions, "r-better")
    assert baseline.status == COMPARED
    assert "DICOM files" in baseline.evaluated_on.inputs
    assert baseline.evaluated_on.preprocess == pre
    assert baseline.metrics.threshold == 0.4
    # what serving the champion would do, file by file, gives the same numbers
    manifest = pd.read_csv(work / "ingested/manifest.csv")
    test = manifest[manifest.split == "test"].sort_values("image_id")
    x = np.stack([preprocess_file(work / "ingested" / f, pre) for f in test.file])
    probs = predict_proba(net, x)
    expected = metrics_with_ci(test.label.to_numpy(), probs, 0.4, PARAMS, None)
    assert baseline.metrics.auroc == pytest.approx(expected["auroc"])
    assert baseline.metrics.sensitivity == pytest.approx(expected["sensitivity"])
    assert baseline.metrics.auroc > metrics.auroc + 0.05, (baseline, metrics)

    gate = _gate(reports, GateParams(**LAX, max_worse_than_champion={"auroc": 0.02}))
    assert not gate.passed
    assert any("below the champion's" in f for f in gate.failures), gate.failures


def test_a_champion_of_other_class_names_leaves_the_value_rules_only(work: Path) -> None:
    spec = _spec(CANDIDATE_PRE, 0.5, ["normal", "pneumonia"])
    torch.manual_seed(3)
    champions = _make_champion(work, "classes", spec.build(), spec)
    _, baseline, reports = _evaluate(work, champions, "r-classes")
    assert baseline.status == CLASSES_DIFFER and baseline.metrics is None
    assert "pneumonia" in baseline.reason
    gate = _gate(reports, GateParams(**LAX, max_worse_than_champion={"auroc": 0.0}))
    assert gate.passed and gate.champion.status == CLASSES_DIFFER
    assert not any("champion" in r.rule for r in gate.rules)
    card = (reports / "model_card.md").read_text()
    assert "class names differ" in card and "change rules were not applied" in card


def test_a_champion_gone_from_the_store_is_said_and_value_rules_judge(work: Path) -> None:
    import bentoml

    net, _ = load_model(work / "candidate")
    champions = _make_champion(work, "pruned", net, _spec(CANDIDATE_PRE, 0.5))
    tag = read_champion(champion_folder(champions, DATASET.key)).model_tag
    bentoml.models.delete(tag)
    _, baseline, reports = _evaluate(work, champions, "r-pruned")
    assert baseline.status == UNAVAILABLE and tag in baseline.reason
    gate = _gate(reports, GateParams(**LAX, max_worse_than_champion={"auroc": 0.0}))
    assert gate.passed and gate.champion.status == UNAVAILABLE
    assert "could not be loaded" in (reports / "model_card.md").read_text()


def test_no_champion_for_the_dataset(work: Path) -> None:
    _, baseline, reports = _evaluate(work, work / "no-champions", "r-none")
    assert baseline.status == NO_CHAMPION and DATASET.key in baseline.reason
    gate = _gate(reports, GateParams(**LAX))
    assert gate.champion.status == NO_CHAMPION
    assert "No champion of dataset" in (reports / "model_card.md").read_text()
    assert baseline.dataset.key == DATASET.key
