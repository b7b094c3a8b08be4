"""The champion of each dataset (reports/champion/<key>/): champion.json (Champion), its
metrics.json and history.json, written only by record_champion, all three in one rename of
the folder under a lock (docs/decisions/champion-records.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import Field

from medflow.handoffs import DatasetRef, Handoff, read_json
from medflow.io import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

CHAMPION_METRICS = "metrics.json"
CHAMPION_MODEL = "champion.json"
HISTORY_FILE = "history.json"


class Champion(Handoff):
    """champion.json: which model and Bento the champion is, and how it became champion.

    Written with every field; read tolerantly, because champion.json outlives releases: keys
    it does not know are dropped (with a warning) and fields added since default to None.
    """

    FIX: ClassVar[str] = "promote a model again (medflow models promote TAG)"

    model_tag: str = Field(min_length=1)
    bento_tag: str = Field(min_length=1)
    data_hash: str | None = None
    git_revision: str | None = None
    promoted_at: str | None = None  # ISO 8601, UTC
    promoted_by: str | None = None  # package, promote or rollback
    weights_sha256: str | None = None  # of model.pt: the same network under another tag
    dataset: DatasetRef | None = None

    @classmethod
    def read(cls, path: Path) -> Self:
        raw = read_json(path, cls.FIX)
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - set(cls.model_fields))
            if unknown:
                logger.warning("%s: ignoring keys this version does not know: %s", path, unknown)
                raw = {k: v for k, v in raw.items() if k in cls.model_fields}
        return cls.parse(raw, Path(path))


def read_champion(folder: Path) -> Champion | None:
    """champion.json of `folder`, or None when there is no champion yet."""
    path = Path(folder) / CHAMPION_MODEL
    return Champion.read(path) if path.is_file() else None


def read_history(folder: Path) -> list[dict[str, Any]]:
    """Every change of champion recorded in `folder`, oldest first ([] before the first)."""
    path = Path(folder) / HISTORY_FILE
    if not path.is_file():
        return []
    history = json.loads(path.read_text())
    if not isinstance(history, list):
        raise ValueError(f"{path} must hold a JSON list, got {type(history).__name__}")
    return history


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Lock the parent folder itself (no lock file left behind): the champion folder is
    # replaced by a rename while we hold the lock. Advisory: it orders champion writers only.
    parent = Path(folder).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_champion(
    folder: Path,
    *,
    model_tag: str,
    bento_tag: str,
    metrics: dict[str, Any],
    data_hash: str | None,
    git_revision: str | None,
    promoted_by: str,
    weights_sha256: str | None = None,
    dataset: dict[str, Any] | None = None,
) -> Champion:
    """Make `model_tag` (served by `bento_tag`) the champion and append it to the history.

    `dataset` (medflow.data.dataset.Dataset.as_dict()) names the dataset the folder belongs to;
    without it the previous champion's is kept.

    `promoted_by` says what did it: "package", "promote" or "rollback". `weights_sha256`
    (of model.pt) tells the same network apart from a new one under another tag (each package
    run saves the model under a new tag; see replaced_by_hand). Returns the new champion.
    """
    folder = Path(folder)
    with _locked(folder):
        previous = read_champion(folder)
        history = read_history(folder)
        kept = previous.dataset if previous is not None else None
        champion = Champion(
            model_tag=model_tag,
            bento_tag=bento_tag,
            data_hash=data_hash,
            git_revision=git_revision,
            promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
            promoted_by=promoted_by,
            weights_sha256=weights_sha256,
            dataset=DatasetRef.model_validate(dataset) if dataset is not None else kept,
        )
        event = {
            "model_tag": model_tag,
            "bento_tag": bento_tag,
            "promoted_at": champion.promoted_at,
            "action": promoted_by,
            "previous": previous.model_tag if previous else None,
            "weights_sha256": weights_sha256,
        }
        with atomic_dir(folder) as tmp:
            if folder.is_dir():  # keep whatever else lives there (e.g. a README)
                for item in folder.iterdir():
                    if item.name not in (CHAMPION_MODEL, CHAMPION_METRICS, HISTORY_FILE):
                        copy = shutil.copytree if item.is_dir() else shutil.copy2
                        copy(item, tmp / item.name)
            champion.write(tmp / CHAMPION_MODEL)
            write_json_atomic(tmp / CHAMPION_METRICS, metrics)
            write_json_atomic(tmp / HISTORY_FILE, [*history, event])
    logger.info("%s is the champion now (%s, by %s)", model_tag, folder, promoted_by)
    return champion


def champion_stack(folder: Path) -> list[str]:
    """The model tags a rollback walks back through, the current champion last.

    Replays the history: package and promote push a model, rollback pops one. A champion
    recorded before the history existed is the bottom of the stack.
    """
    history = read_history(Path(folder))
    stack: list[str] = []
    if history and history[0].get("previous"):
        stack.append(history[0]["previous"])
    elif not history and (current := read_champion(Path(folder))):
        stack.append(current.model_tag)
    for event in history:
        if event.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event["model_tag"]:
                stack.append(event["model_tag"])  # a history edited by hand: trust the event
        elif not stack or stack[-1] != event["model_tag"]:
            stack.append(event["model_tag"])
    return stack


def replaced_by_hand(folder: Path, weights_sha256: str | None) -> dict[str, Any] | None:
    """The history event in which a person (`medflow models promote` or `rollback`) replaced
    a champion with these weights, unless a later promote by hand chose them again; else None.

    The package stage asks before it records its model: a package run that only rebuilds the
    Bento of the same network (serving code, bentofile or package params changed) must not
    undo an operator's rollback. A new network (new weights) is recorded as usual: the gate
    has compared it with whichever model the operator chose. Events written before weights
    were recorded carry none and demote nothing.
    """
    if not weights_sha256:
        return None
    demoted_by: dict[str, Any] | None = None
    current: str | None = None  # the weights of the champion before each event
    for event in read_history(Path(folder)):
        weights = event.get("weights_sha256")
        if event.get("action") in ("promote", "rollback"):
            if weights == weights_sha256:
                demoted_by = None  # chosen by hand again
            elif current == weights_sha256:
                demoted_by = event
        current = weights
    return demoted_by


def rollback_target(folder: Path) -> str:
    """The model tag a rollback makes champion again: the one before the current champion."""
    stack = champion_stack(folder)
    if len(stack) < 2:
        raise ValueError(
            f"no previous champion to roll back to in {Path(folder) / HISTORY_FILE}"
            f" (champions on record: {stack or 'none'}): promote a model by tag instead"
            " (medflow models list; medflow models promote TAG)"
        )
    return stack[-2]
