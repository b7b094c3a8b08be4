"""The champion is registry state, not a DVC output (dvc.yaml, package): a promotion or
rollback by hand leaves the pipeline up to date, and the next `dvc repro` keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.config import load_params
from medflow.data.dataset import Dataset, champion_folder
from medflow.registry.champion import CHAMPION_METRICS, read_champion, record_champion
from tests.helpers.pipeline_copy import clone, run
from tests.helpers.stages import ran_stages, stale_stages


@pytest.fixture
def repo(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    """A private clone of the session's `dvc repro` (conftest.py): the test may change it."""
    src, _ = reproduced
    return clone(src, tmp_path / "repo")


def _champion_dir(repo: Path) -> Path:
    """The champion folder of the copy's dataset (the synthetic demo)."""
    key = Dataset.of(load_params(repo / "params.yaml").data).key
    return champion_folder(repo / "reports/champion", key)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_packaged_model_is_champion_and_not_in_git(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced  # only read
    bento = json.loads((repo / "reports/bento.json").read_text())
    champion = read_champion(_champion_dir(repo))
    assert champion is not None, "the package stage recorded no champion"
    assert (champion.model_tag, champion.promoted_by) == (bento["model_tag"], "package")
    # ignored by the project's .gitignore, not by a reports/.gitignore DVC writes for outputs
    rel = _champion_dir(repo).relative_to(repo) / "champion.json"
    ignored = run(["git", "check-ignore", "-v", str(rel)], repo).stdout
    assert ignored.startswith(".gitignore:"), ignored


def _roll_back_by_hand(champ: Path) -> None:
    """Record what `medflow models rollback` records after infra-validating the Bento
    (medflow.registry.store; the commands themselves are tested in test_registry.py)."""
    metrics = json.loads((champ / CHAMPION_METRICS).read_text())
    record_champion(
        champ,
        model_tag="medflow-classifier:the-one-before",
        bento_tag="medflow-service:the-one-before",
        metrics={**metrics, "auroc": metrics["auroc"] - 0.01},
        data_hash=None,
        git_revision=None,
        promoted_by="rollback",
    )


def test_a_rollback_by_hand_survives_dvc_status_and_repro(repo: Path) -> None:
    champ = _champion_dir(repo)
    packaged = read_champion(champ)
    _roll_back_by_hand(champ)
    by_hand = _files(champ)
    assert read_champion(champ).model_tag != packaged.model_tag

    status = stale_stages(repo)
    assert status == {}, f"a rollback by hand made stages stale:\n{status}"
    out = run(["dvc", "repro"], repo).stdout
    assert ran_stages(out) == set(), out
    assert _files(champ) == by_hand, "dvc repro replaced the champion chosen by hand"
    assert read_champion(champ).model_tag != packaged.model_tag


def test_a_package_rebuild_of_the_same_network_does_not_undo_the_rollback(repo: Path) -> None:
    """A package run that only rebuilds the Bento (here forced; in practice serving code, the
    bentofile or package params changed) of the network the operator rolled back from builds
    the Bento but leaves the champion alone (medflow.registry.champion.replaced_by_hand)."""
    champ = _champion_dir(repo)
    _roll_back_by_hand(champ)
    by_hand = _files(champ)
    out = run(["dvc", "repro", "--force", "--single-item", "package"], repo)
    assert ran_stages(out.stdout) == {"package"}, out.stdout
    bento = json.loads((repo / "reports/bento.json").read_text())
    assert bento["champion"] is False and bento["bento_tag"], bento
    assert _files(champ) == by_hand, "the rebuild made the rolled-back network champion again"
    assert "Not made the champion: the same network was replaced by hand" in out.stdout
    assert f"medflow models promote {bento['model_tag']}" in out.stdout
    assert stale_stages(repo) == {}
