"""The champion as baseline: the dataset's champion loaded from the BentoML model store for
the evaluate stage to score on the candidate's own test split, or the Baseline saying why
there is none to compare with (the statuses: docs/evaluation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medflow.data.dataset import Dataset
from medflow.handoffs import CLASSES_DIFFER as CLASSES_DIFFER
from medflow.handoffs import COMPARED as COMPARED
from medflow.handoffs import NO_CHAMPION as NO_CHAMPION
from medflow.handoffs import TASK_DIFFERS as TASK_DIFFERS
from medflow.handoffs import UNAVAILABLE as UNAVAILABLE
from medflow.handoffs import Baseline, BaselineChampion, DatasetRef
from medflow.registry.champion import read_champion

if TYPE_CHECKING:  # the gate imports this module for its statuses: no torch at import
    import torch

    from medflow.models.artifact import ModelSpec

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.json"


@dataclass(frozen=True)
class ChampionModel:
    """A champion whose network could be loaded: ready to score."""

    net: torch.nn.Module
    spec: ModelSpec
    champion: BaselineChampion


def load_store_model(model_tag: str) -> tuple[torch.nn.Module, ModelSpec]:
    """The network and spec the package stage stored under `model_tag` in the BentoML store."""
    import bentoml

    from medflow.models.artifact import load_model

    return load_model(Path(bentoml.models.get(model_tag).path))


def find_baseline(
    champion_dir: Path | None,
    dataset: Dataset | None,
    class_names: list[str],
    task: str = "classification",
) -> ChampionModel | Baseline:
    """The champion of the dataset loaded for scoring, or the Baseline saying why there is
    none to compare with (never raises for a missing or unloadable champion: it says so).

    task: the candidate's (data.task); a champion of the other task does not compare (the
    dataset key names the source and classes, not the task)."""
    ds = DatasetRef.model_validate(dataset.as_dict()) if dataset is not None else None
    if champion_dir is None:
        return Baseline(status=NO_CHAMPION, reason="no champion folder given", dataset=ds)
    champion = read_champion(champion_dir)
    if champion is None:
        key = dataset.key if dataset is not None else Path(champion_dir).name
        reason = (
            f"no champion for dataset {key} yet ({champion_dir}): the first model packaged on"
            " it becomes its champion"
        )
        return Baseline(status=NO_CHAMPION, reason=reason, dataset=ds)
    kept = BaselineChampion.model_validate(
        champion.model_dump(include=set(BaselineChampion.model_fields))
    )
    tag = champion.model_tag
    try:
        net, spec = load_store_model(tag)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the baseline status
        reason = (
            f"champion {tag} of {champion_dir} could not be loaded from the BentoML model store"
            f" ({type(exc).__name__}: {exc}); the change rules are not applied. Promote a model"
            " that is in the store (medflow models list / promote) to compare with it again"
        )
        log.warning("%s", reason)
        return Baseline(status=UNAVAILABLE, reason=reason, dataset=ds, champion=kept)
    if spec.task != task:
        reason = (
            f"champion {tag} is a {spec.task} model, this one a {task} model: their metrics do"
            " not compare, so only the value rules apply"
        )
        log.warning("%s", reason)
        return Baseline(status=TASK_DIFFERS, reason=reason, dataset=ds, champion=kept)
    if list(spec.class_names) != list(class_names):
        reason = (
            f"champion {tag} classifies {list(spec.class_names)}, this model {list(class_names)}:"
            " their metrics do not compare, so only the value rules apply"
        )
        log.warning("%s", reason)
        return Baseline(status=CLASSES_DIFFER, reason=reason, dataset=ds, champion=kept)
    return ChampionModel(net, spec, kept)
