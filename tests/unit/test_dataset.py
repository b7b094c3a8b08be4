"""The dataset key, and the reference and champion folders looked up by it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medflow.config import DataParams, ValidateParams
from medflow.data.dataset import (
    Dataset,
    champion_folder,
    check_key,
    dataset_key,
    known_keys,
    reference_profile,
)
from medflow.registry.champion import read_champion, record_champion
from medflow.validation.stage import NO_REFERENCE, run_validate
from tests.helpers.manifest_factory import valid_manifest, write_manifest

DEMO = DataParams()  # synthetic, [normal, lesion]
PNEUMONIA = DataParams(source="pneumoniamnist.npz", class_names=["normal", "pneumonia"])


def _record(folder: Path, tag: str, by: str = "package", ds: Dataset | None = None) -> None:
    """What package (or promote/rollback) records: `tag` as the champion in folder."""
    record_champion(
        folder,
        model_tag=f"m:{tag}",
        bento_tag=f"b:{tag}",
        metrics={"auroc": 0.9},
        data_hash=None,
        git_revision=None,
        promoted_by=by,
        dataset=ds.as_dict() if ds is not None else None,
    )


def test_key_is_a_readable_slug_and_a_short_hash() -> None:
    assert Dataset.of(DEMO).key.startswith("synthetic-")
    assert Dataset.of(PNEUMONIA).key.startswith("pneumoniamnist-")
    key = dataset_key("/mnt/exports/Hospital A (2024)/", ["normal", "lesion"])
    assert key.startswith("hospital-a-2024-") and len(key.rsplit("-", 1)[1]) == 8
    assert check_key(key) == key


def test_key_is_stable_and_tells_sources_and_class_names_apart() -> None:
    demo = Dataset.of(DEMO).key
    assert Dataset.of(DataParams()).key == demo  # the same params: the same key, every run
    assert dataset_key("synthetic/", ["normal", "lesion"]) == demo  # one folder, one key
    others = {
        Dataset.of(PNEUMONIA).key,
        dataset_key("synthetic", ["normal", "pneumonia"]),  # other class names
        dataset_key("synthetic", ["lesion", "normal"]),  # other class order: other indices
        dataset_key("other/synthetic", ["normal", "lesion"]),  # same name, other folder
    }
    assert demo not in others and len(others) == 4


@pytest.mark.parametrize("bad", ["", "..", "../x-0123abcd", "a/b-0123abcd", "synthetic"])
def test_a_key_that_is_not_a_folder_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not of the form"):
        check_key(bad)


def test_references_and_champions_live_per_dataset(tmp_path: Path) -> None:
    demo, pneu = Dataset.of(DEMO), Dataset.of(PNEUMONIA)
    ref = reference_profile(tmp_path / "reference", demo.key)
    assert ref == tmp_path / "reference" / demo.key / "profile.json"
    for ds, tag in ((demo, "demo"), (pneu, "pneu")):
        _record(champion_folder(tmp_path / "champion", ds.key), tag, ds=ds)
    assert known_keys(tmp_path / "champion") == sorted([demo.key, pneu.key])
    demo_champion = read_champion(champion_folder(tmp_path / "champion", demo.key))
    assert demo_champion is not None and demo_champion.model_tag == "m:demo"
    assert demo_champion.dataset is not None
    assert demo_champion.dataset.model_dump() == {
        "key": demo.key,
        "source": "synthetic",
        "class_names": ["normal", "lesion"],
        "task": "classification",
    }
    # a promote that does not say the dataset keeps the folder's
    folder = champion_folder(tmp_path / "champion", pneu.key)
    _record(folder, "pneu2", by="promote")
    assert read_champion(folder).dataset.key == pneu.key


def test_validate_keeps_one_reference_per_dataset(tmp_path: Path) -> None:
    """A first run on a new dataset starts its reference and says so; going back to the
    first dataset compares with its own reference again."""
    ingest = tmp_path / "ingested"
    write_manifest(valid_manifest(), ingest)
    demo = Dataset.of(DEMO)
    other = Dataset(source="hospital", class_names=demo.class_names)
    refs = tmp_path / "reference"
    classes = list(demo.class_names)

    def validate(ds: Dataset):
        ref = reference_profile(refs, ds.key)
        return run_validate(ValidateParams(), classes, ingest, tmp_path / "v", ref, ds), ref

    first, ref_demo = validate(demo)
    assert not first.drift["checked"] and first.drift["first_run"]
    assert (
        NO_REFERENCE in first.drift["note"]
        and f"first run on dataset {demo.key}" in (first.drift["note"])
    )
    assert ref_demo.is_file()
    summary = json.loads((tmp_path / "v/summary.json").read_text())
    assert summary["dataset"]["key"] == demo.key and "first run on dataset" in str(summary)

    new, ref_other = validate(other)  # another source: its own reference, not the demo's
    assert not new.drift["checked"] and ref_other.is_file() and ref_other != ref_demo

    back, _ = validate(demo)
    assert back.drift["checked"] and back.drift["reference"] == str(ref_demo)
    assert demo.key in back.drift["note"]
    assert sorted(p.name for p in refs.iterdir()) == sorted([demo.key, other.key])


def test_promote_refuses_a_model_of_another_dataset(tmp_path: Path) -> None:
    from datetime import datetime

    from medflow.registry.store import ModelEntry, _promote

    pneu = Dataset.of(PNEUMONIA)
    entry = ModelEntry(
        tag="medflow-classifier:pneu",
        created=datetime.now(),
        metrics={},
        gate="passed",
        data_hash=None,
        class_names=["normal", "pneumonia"],
        bentos=["medflow-service:pneu"],
        dataset=pneu.key,
    )
    demo = Dataset.of(DEMO)
    folder = champion_folder(tmp_path, demo.key)
    with pytest.raises(ValueError, match=f"packaged on dataset {pneu.key}, not {demo.key}"):
        _promote(entry, folder, "promote", demo.as_dict())
    assert not folder.exists()


def test_cli_selects_the_dataset_and_lists_the_others(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medflow.cli import app

    pneu, demo = Dataset.of(PNEUMONIA), Dataset.of(DEMO)
    _record(champion_folder(tmp_path, pneu.key), "pneu", ds=pneu)
    runner = CliRunner()
    root = Path(__file__).resolve().parents[2]
    common = ["--params", str(root / "params.yaml"), "--champions", str(tmp_path)]
    listed = runner.invoke(app, ["models", "datasets", *common])
    assert listed.exit_code == 0, listed.output
    assert f"{pneu.key}  source=pneumoniamnist.npz  classes=normal,pneumonia" in listed.output
    assert "champion=m:pneu" in listed.output
    # params.yaml's dataset is the demo, which has no champion here: said, naming the others
    served = runner.invoke(app, ["models", "served-bento", *common])
    assert served.exit_code == 1 and f"datasets with a champion: {pneu.key}" in served.output
    assert demo.key in served.output or "no champion" in served.output
    chosen = runner.invoke(app, ["models", "served-bento", *common, "--dataset", pneu.key])
    assert chosen.exit_code == 0 and chosen.output.strip() == "b:pneu", chosen.output
    bad = runner.invoke(app, ["models", "served-bento", *common, "--dataset", "../etc"])
    assert bad.exit_code == 1 and "not of the form" in bad.output


def test_a_segmentation_task_is_another_dataset_and_classification_keys_stay() -> None:
    seg = Dataset.of(DataParams(task="segmentation"))
    cls = Dataset.of(DataParams())
    assert seg.key != cls.key and seg.key.startswith("synthetic-")
    # the key classification datasets had before the task existed
    digest = hashlib.sha256(json.dumps(["synthetic", ["normal", "lesion"]]).encode()).hexdigest()
    assert cls.key == f"synthetic-{digest[:8]}"
