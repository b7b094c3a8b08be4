from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.registry.champion import (
    CHAMPION_METRICS,
    CHAMPION_MODEL,
    HISTORY_FILE,
    champion_stack,
    read_champion,
    record_champion,
    replaced_by_hand,
    rollback_target,
)


def _record(folder: Path, tag: str, by: str = "promote", weights: str | None = None) -> None:
    record_champion(
        folder,
        model_tag=tag,
        bento_tag=f"bento-{tag}",
        metrics={"auroc": float(len(tag))},
        data_hash="h",
        git_revision=None,
        promoted_by=by,
        weights_sha256=weights,
    )


def test_record_writes_all_three_files_and_keeps_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "champion"
    folder.mkdir()
    (folder / "README").write_text("keep me")
    _record(folder, "m:1")
    _record(folder, "m:22")
    champion = read_champion(folder)
    assert champion is not None and champion.bento_tag == "bento-m:22"
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


def test_round_trip(tmp_path: Path) -> None:
    dataset = {
        "key": "synthetic-0123abcd",
        "source": "synthetic",
        "class_names": ["a", "b"],
        "task": "classification",
    }
    recorded = record_champion(
        tmp_path,
        model_tag="m:1",
        bento_tag="b:1",
        metrics={"auroc": 0.9},
        data_hash="h",
        git_revision="rev",
        promoted_by="package",
        weights_sha256="w",
        dataset=dataset,
    )
    assert read_champion(tmp_path) == recorded
    raw = json.loads((tmp_path / CHAMPION_MODEL).read_text())
    assert raw == {**recorded.model_dump(), "dataset": dataset}
    assert sorted(raw) == sorted(
        [
            "model_tag",
            "bento_tag",
            "data_hash",
            "git_revision",
            "promoted_at",
            "promoted_by",
            "weights_sha256",
            "dataset",
        ]
    )


def test_an_old_champion_json_still_loads(tmp_path: Path) -> None:
    # written before dataset, weights and git revision were recorded, with a key since dropped
    old = {"model_tag": "old", "bento_tag": "b", "promoted_at": "2025-01-01", "note": "x"}
    (tmp_path / CHAMPION_MODEL).write_text(json.dumps(old))
    champion = read_champion(tmp_path)
    assert champion is not None and champion.model_tag == "old"
    assert champion.dataset is None and champion.weights_sha256 is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"model_tag": "m:1"}, "bento_tag"), ({"model_tag": "m:1", "bento_tag": ""}, "bento_tag")],
)
def test_a_champion_json_without_a_bento_names_the_file_and_field(
    tmp_path: Path, raw: dict, field: str
) -> None:
    (tmp_path / CHAMPION_MODEL).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"champion\.json is not a valid Champion \({field}: "):
        read_champion(tmp_path)


def test_no_champion(tmp_path: Path) -> None:
    assert read_champion(tmp_path) is None
    with pytest.raises(ValueError, match="promote a model by tag"):
        rollback_target(tmp_path)


def test_a_network_replaced_by_hand_is_not_re_recorded_by_a_package_rebuild(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "champion"
    assert replaced_by_hand(folder, "wB") is None  # no history yet
    _record(folder, "m:a", "package", "wA")
    _record(folder, "m:b", "package", "wB")
    assert replaced_by_hand(folder, "wB") is None  # the pipeline's own succession
    _record(folder, "m:a", "rollback", "wA")
    event = replaced_by_hand(folder, "wB")
    assert event is not None and (event["action"], event["model_tag"]) == ("rollback", "m:a")
    assert replaced_by_hand(folder, "wA") is None  # the one chosen
    assert replaced_by_hand(folder, "wC") is None  # a new network: the gate decides
    assert replaced_by_hand(folder, None) is None
    # a package run of a new network, then a promote by hand of B's rebuilt Bento: B is
    # chosen again, and a later rebuild of it may be recorded
    _record(folder, "m:c", "package", "wC")
    assert replaced_by_hand(folder, "wB") is not None
    _record(folder, "m:b2", "promote", "wB")
    assert replaced_by_hand(folder, "wB") is None
    # promoting another model by hand demotes the one it replaced, as a rollback does
    _record(folder, "m:c", "promote", "wC")
    assert replaced_by_hand(folder, "wB")["action"] == "promote"


def test_history_without_weights_demotes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "champion"
    _record(folder, "m:a", "package")
    _record(folder, "m:b", "rollback")
    assert replaced_by_hand(folder, "wA") is None
