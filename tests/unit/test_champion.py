from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.champion import (
    CHAMPION_METRICS,
    CHAMPION_MODEL,
    HISTORY_FILE,
    champion_stack,
    read_champion,
    record_champion,
    rollback_target,
)


def _record(folder: Path, tag: str, by: str = "promote") -> None:
    record_champion(
        folder,
        model_tag=tag,
        bento_tag=f"bento-{tag}",
        metrics={"auroc": float(len(tag))},
        data_hash="h",
        git_revision=None,
        promoted_by=by,
    )


def test_record_writes_all_three_files_and_keeps_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "champion"
    folder.mkdir()
    (folder / "README").write_text("keep me")
    _record(folder, "m:1")
    _record(folder, "m:22")
    assert read_champion(folder)["bento_tag"] == "bento-m:22"
    assert json.loads((folder / CHAMPION_METRICS).read_text()) == {"auroc": 4.0}
    history = json.loads((folder / HISTORY_FILE).read_text())
    assert [(h["model_tag"], h["previous"]) for h in history] == [("m:1", None), ("m:22", "m:1")]
    assert (folder / "README").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["champion"]


def test_rollback_walks_back_through_promotions(tmp_path: Path) -> None:
    for tag in ("a", "b", "c"):
        _record(tmp_path, tag)
    assert rollback_target(tmp_path) == "b"
    _record(tmp_path, "b", by="rollback")
    assert champion_stack(tmp_path) == ["a", "b"]
    assert rollback_target(tmp_path) == "a"
    _record(tmp_path, "a", by="rollback")
    with pytest.raises(ValueError, match="no previous champion"):
        rollback_target(tmp_path)


def test_a_champion_from_before_the_history_is_the_bottom_of_the_stack(tmp_path: Path) -> None:
    (tmp_path / CHAMPION_MODEL).write_text(json.dumps({"model_tag": "old", "bento_tag": "b"}))
    assert champion_stack(tmp_path) == ["old"]
    _record(tmp_path, "new")
    assert rollback_target(tmp_path) == "old"


def test_no_champion(tmp_path: Path) -> None:
    assert read_champion(tmp_path) is None
    with pytest.raises(ValueError, match="promote a model by tag"):
        rollback_target(tmp_path)
