"""Switching data.source after the demo (issue 16 D, E): each dataset has its own drift
reference and champion, the gate compares champion and candidate on the same test split,
and raw source files never enter DVC's cache.

One clone of the session's reproduced synthetic pipeline (conftest.py `reproduced`): then
`dvc repro` on a small PneumoniaMNIST archive (its official splits kept), back on the
synthetic demo, and on a folder of DICOM files outside the repository, nothing deleted by hand.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medflow.config import load_params
from medflow.data.dataset import Dataset, champion_folder, reference_profile
from medflow.handoffs import Baseline, GateReport, Metrics
from medflow.registry.champion import read_champion
from tests.helpers.pipeline_copy import TEST_DEID_KEY, clone, run, set_params
from tests.helpers.shared_data import shared_data
from tests.helpers.stages import ran_stages

DEMO = {"source": "synthetic", "class_names": ["normal", "lesion"]}
PNEUMONIA_CLASSES = ["normal", "pneumonia"]
# images kept per official split: small enough for two cores, each class well represented
SUBSAMPLE = {"train": 240, "val": 60, "test": 120}
# Change rules on: the synthetic candidate meets the demo champion. Wide enough that the
# tiny model's noise between two trainings never refuses it; the rules must be there.
CHANGE_RULES = {"auroc": 0.3, "sensitivity": 0.5, "specificity": 0.5, "ece": 0.3}
ENV = {"MEDFLOW_DEID_KEY": TEST_DEID_KEY}


def _subsample(src: Path, dest: Path, seed: int = 0) -> None:
    """A random subset of each official split, half of it from each class where possible."""
    rng = np.random.default_rng(seed)
    out = {}
    with np.load(src) as archive:
        for split, n in SUBSAMPLE.items():
            labels = archive[f"{split}_labels"].reshape(-1)
            picked = np.concatenate(
                [
                    rng.choice(np.flatnonzero(labels == c), n // 2, replace=False)
                    for c in np.unique(labels)
                ]
            )
            picked.sort()
            out[f"{split}_images"] = archive[f"{split}_images"][picked]
            out[f"{split}_labels"] = archive[f"{split}_labels"][picked]
    np.savez(dest, **out)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _dataset(repo: Path) -> Dataset:
    return Dataset.of(load_params(repo / "params.yaml").data)


def _repro(repo: Path) -> str:
    proc = run(["dvc", "repro"], repo, env=ENV)
    return proc.stdout + proc.stderr


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cached(repo: Path, raw: dict[str, str]) -> list[str]:
    """The names of `raw` ({md5: name} of source files) whose bytes are in the DVC cache."""
    cache = repo / ".dvc/cache"
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert len(cached) > 10, "nothing in the DVC cache: the check would prove nothing"
    # objects are named by the md5 of their content; check the content too
    names = {p.parent.name + p.name.split(".")[0] for p in cached}
    contents = {_md5(p) for p in cached}
    return sorted(name for md5, name in raw.items() if md5 in names | contents)


@pytest.fixture
def repo(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    """A private clone of the session's `dvc repro`, change rules on: the test switches its
    data source."""
    src, _ = reproduced
    dest = clone(src, tmp_path / "repo")
    set_params(dest, {"gate": {"max_worse_than_champion": CHANGE_RULES}})
    return dest


def test_each_source_has_its_own_reference_and_champion(repo: Path, tmp_path: Path) -> None:
    npz = shared_data("pneumoniamnist.npz")
    demo = _dataset(repo)
    refs, champions = repo / "data/reference", repo / "reports/champion"
    demo_ref = reference_profile(refs, demo.key)
    demo_ref_bytes = demo_ref.read_bytes()
    demo_champion = read_champion(champion_folder(champions, demo.key))
    assert demo_champion is not None, "the session's repro recorded no demo champion"

    # 1. your own data: the archive, other images and other class names
    archive = tmp_path / "pneumonia-small.npz"
    _subsample(npz, archive)
    set_params(repo, {"data": {"source": str(archive), "class_names": PNEUMONIA_CLASSES}})
    said = _repro(repo)
    pneu = _dataset(repo)
    assert pneu.key != demo.key and pneu.key.startswith("pneumonia-small-")
    summary = _json(repo / "data/validation/summary.json")
    assert summary["success"] and summary["dataset"]["key"] == pneu.key
    drift = summary["drift"]
    assert not drift["checked"] and drift["first_run"], drift
    assert f"first run on dataset {pneu.key}" in drift["note"]
    assert f"first run on dataset {pneu.key}" in said  # the log says it too
    assert reference_profile(refs, pneu.key).is_file()
    gate = GateReport.read(repo / "reports/gate.json")
    assert gate.passed and gate.champion.status == "no champion", gate.champion
    assert gate.champion.dataset == pneu.key
    assert "No champion of dataset" in (repo / "reports/model_card.md").read_text()
    bento = _json(repo / "reports/bento.json")
    pneu_champion = read_champion(champion_folder(champions, pneu.key))
    assert pneu_champion is not None and pneu_champion.model_tag == bento["model_tag"]
    assert pneu_champion.dataset is not None
    assert pneu_champion.dataset.class_names == PNEUMONIA_CLASSES
    # the demo's reference and champion are untouched
    assert demo_ref.read_bytes() == demo_ref_bytes
    assert read_champion(champion_folder(champions, demo.key)) == demo_champion

    # 2. back to the demo: its own reference and champion again
    set_params(repo, {"data": DEMO})
    said = _repro(repo)
    assert _dataset(repo) == demo
    summary = _json(repo / "data/validation/summary.json")
    drift = summary["drift"]
    assert summary["success"] and drift["checked"] and drift["compared"] > 0, drift
    assert Path(drift["reference"]) == demo_ref.relative_to(repo)
    assert demo.key in drift["note"] and not drift.get("first_run")
    baseline = Baseline.read(repo / "reports/baseline.json")
    metrics = Metrics.read(repo / "reports/metrics.json")
    assert baseline.status == "compared" and baseline.same_split, baseline
    assert baseline.champion.model_tag == demo_champion.model_tag
    assert baseline.evaluated_on.n_test == metrics.n_test
    gate = GateReport.read(repo / "reports/gate.json")
    assert gate.champion.status == "compared" and gate.champion.dataset == demo.key
    assert gate.champion.model_tag == demo_champion.model_tag
    changes = {r.rule for r in gate.rules if "champion" in r.rule}
    assert changes == {f"gate.max_worse_than_champion.{m}" for m in CHANGE_RULES}, gate.rules
    assert gate.passed, gate.failures
    # the champion the gate compared with is the one the package then replaced
    history = _json(champion_folder(champions, demo.key) / "history.json")
    assert history[-1]["previous"] == demo_champion.model_tag
    assert read_champion(champion_folder(champions, pneu.key)) == pneu_champion
    # an archive source is read, never cached (README; a folder source: the test below)
    assert not _cached(repo, {_md5(archive): archive.name}), "the archive is in .dvc/cache"


def test_a_folder_source_never_enters_the_dvc_cache(repo: Path, tmp_path: Path) -> None:
    """README: raw data lives outside the repository (or in a git-ignored folder), read-only,
    and is never `dvc add`ed; the ingest stage's dependency on it is hashed, not cached."""
    export = tmp_path / "hospital-export"  # outside the repository
    shutil.copytree(repo / "data/synthetic", export)
    sources = sorted(p for p in export.rglob("*") if p.is_file())
    # Files of another origin: the demo's own bytes are rightly cached as the synth output.
    for path in sources:
        if path.name == "labels.csv":  # the same labels, in another order
            labels = pd.read_csv(path)
            labels.iloc[::-1].to_csv(path, index=False)
        else:
            ds = pydicom.dcmread(path)
            ds.InstitutionName = "Export Hospital"
            ds.save_as(path)
    for path in sources:
        path.chmod(0o444)
    before = {p: _md5(p) for p in sources}
    set_params(repo, {"data": {"source": str(export), "class_names": DEMO["class_names"]}})
    said = _repro(repo)
    assert "ingest" in ran_stages(said), said[-3000:]
    manifest = pd.read_csv(repo / "data/ingested/manifest.csv")
    assert len(manifest) == len(pd.read_csv(export / "labels.csv")) > 0
    assert {p: _md5(p) for p in sources} == before, "the source was modified"

    raw = {md5: str(p.relative_to(export)) for p, md5 in before.items()}
    found = _cached(repo, raw)
    assert not found, f"source files whose bytes are in .dvc/cache: {found}"
