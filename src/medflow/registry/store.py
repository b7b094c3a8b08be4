"""The model registry: the BentoML model store, the Bentos built for it, and the champion.

`medflow models list` shows every packaged model with its metrics and gate decision;
`promote` infra-validates a model's Bento and, if it passes, makes it its dataset's champion
(medflow.registry.champion); `rollback` restores the previous champion, validated alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from medflow.data.dataset import known_keys
from medflow.registry.champion import read_champion, record_champion, rollback_target
from medflow.registry.infra_validation import InfraReport, infra_validate
from medflow.serving import MODEL_TAG_ARG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """One model store entry and the Bentos that serve it (newest first)."""

    tag: str
    created: datetime
    metrics: dict[str, Any]
    gate: str  # "passed", "refused" or "unknown"
    data_hash: str | None
    class_names: list[str]
    bentos: list[str] = field(default_factory=list)
    champion: bool = False
    dataset: str | None = None  # the key of the dataset it was packaged on (medflow.data.dataset)


@dataclass(frozen=True)
class Promotion:
    """A model made champion: its Bento, the champion it replaced and the infra report."""

    model_tag: str
    bento_tag: str
    previous: str | None
    infra: InfraReport


def _gate_word(gate: Any) -> str:
    if isinstance(gate, dict) and isinstance(gate.get("passed"), bool):
        return "passed" if gate["passed"] else "refused"
    return "unknown"


def bentos_by_model() -> dict[str, list[str]]:
    """model tag -> tags of the Bentos built to serve it, newest first.

    A medflow Bento names its model in the Bento argument model_tag
    (medflow.registry.packaging); Bentos built another way are matched by the one model they
    pack.
    """
    import bentoml

    found: dict[str, list[tuple[datetime, str]]] = {}
    for bento in bentoml.bentos.list():
        args = getattr(bento.info, "args", None) or {}
        model = args.get(MODEL_TAG_ARG) or bento.info.labels.get(MODEL_TAG_ARG)
        packed = [str(m.tag) for m in bento.info.all_models]
        if model is None and len(packed) == 1:
            model = packed[0]
        if model:
            found.setdefault(str(model), []).append((bento.info.creation_time, str(bento.tag)))
    return {m: [t for _, t in sorted(v, reverse=True)] for m, v in found.items()}


def list_models(model_name: str, champion_dir: Path | None = None) -> list[ModelEntry]:
    """Every stored version of `model_name`, newest first, with the Bentos serving it."""
    import bentoml

    champion = read_champion(champion_dir) if champion_dir else None
    served = bentos_by_model()
    entries = []
    for m in bentoml.models.list(model_name):
        meta = m.info.metadata or {}
        tag = str(m.tag)
        entries.append(
            ModelEntry(
                tag=tag,
                created=m.info.creation_time,
                metrics=dict(meta.get("metrics") or {}),
                gate=_gate_word(meta.get("gate")),
                data_hash=meta.get("data_hash") or m.info.labels.get("data_hash"),
                class_names=list((meta.get("spec") or {}).get("class_names") or []),
                bentos=served.get(tag, []),
                champion=champion is not None and champion.model_tag == tag,
                dataset=(meta.get("dataset") or {}).get("key") or m.info.labels.get("dataset"),
            )
        )
    return sorted(entries, key=lambda e: e.created, reverse=True)


def resolve(tag: str, model_name: str) -> ModelEntry:
    """The model entry for a model tag (`name:version`, or a bare version of model_name) or
    for a Bento tag (the model it serves). Raises ValueError naming the choices otherwise."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    entries = {e.tag: e for e in list_models(model_name)}
    candidates = [tag, f"{model_name}:{tag}"] if ":" not in tag else [tag]
    for candidate in candidates:
        if candidate in entries:
            return entries[candidate]
    try:
        bento = bentoml.bentos.get(tag)
    except (BentoMLException, ValueError):
        bento = None
    if bento is not None:
        model = (getattr(bento.info, "args", None) or {}).get(MODEL_TAG_ARG)
        if model in entries:
            entry = entries[model]
            # that very Bento first: the user named it
            others = [b for b in entry.bentos if b != str(bento.tag)]
            return replace(entry, bentos=[str(bento.tag), *others])
    known = ", ".join(list(entries)[:10]) or "none"
    raise ValueError(
        f"no model or Bento {tag!r} of {model_name!r} in the BentoML store"
        f" (models: {known}): see `medflow models list`"
    )


def _promote(
    entry: ModelEntry,
    champion_dir: Path,
    action: str,
    dataset: dict[str, Any] | None = None,
    **infra: Any,
) -> Promotion:
    import bentoml

    key = (dataset or {}).get("key")
    if key and entry.dataset and entry.dataset != key:
        raise ValueError(
            f"{entry.tag} was packaged on dataset {entry.dataset}, not {key}: a champion"
            " belongs to its dataset (select it with --dataset, or set data.source and"
            " data.class_names in params.yaml to that dataset's)"
        )
    if not entry.bentos:
        raise ValueError(
            f"no Bento serves {entry.tag}: package it first (medflow package ...) or build one"
            f" with: bentoml build -f deploy/bentofile.yaml --arg model_tag={entry.tag} src"
        )
    if entry.gate != "passed":
        raise ValueError(
            f"{entry.tag} did not pass the evaluation gate (gate: {entry.gate}): not promoting"
        )
    bento_tag = entry.bentos[0]
    previous = read_champion(champion_dir)
    logger.info("infra-validating %s (serving %s)", bento_tag, entry.tag)
    report = infra_validate(bento_tag, entry.tag, entry.class_names, **infra)
    metadata = bentoml.models.get(entry.tag).info.metadata
    spec = metadata.get("spec") or {}
    record_champion(
        champion_dir,
        model_tag=entry.tag,
        bento_tag=bento_tag,
        metrics=entry.metrics,
        data_hash=entry.data_hash,
        git_revision=(spec.get("provenance") or {}).get("git_revision"),
        promoted_by=action,
        weights_sha256=metadata.get("weights_sha256"),
        dataset=dataset,
    )
    return Promotion(
        model_tag=entry.tag,
        bento_tag=bento_tag,
        previous=previous.model_tag if previous else None,
        infra=report,
    )


def promote(
    tag: str,
    model_name: str,
    champion_dir: Path,
    dataset: dict[str, Any] | None = None,
    **infra: Any,
) -> Promotion:
    """Infra-validate the Bento of `tag` and make it the champion in champion_dir (the folder
    of `dataset`, medflow.data.dataset.Dataset.as_dict(); a model packaged on another dataset is
    refused); on any failure the champion is left as it was. `infra` goes to infra_validate
    (samples, timeout)."""
    entry = resolve(tag, model_name)
    return _promote(entry, Path(champion_dir), "promote", dataset, **infra)


def rollback(
    model_name: str, champion_dir: Path, dataset: dict[str, Any] | None = None, **infra: Any
) -> Promotion:
    """Make the champion before the current one champion again (infra-validated first)."""
    target = rollback_target(Path(champion_dir))
    return _promote(resolve(target, model_name), Path(champion_dir), "rollback", dataset, **infra)


def served_bento(champion_dir: Path) -> str:
    """The champion's Bento tag: what `make serve` serves."""
    champion = read_champion(Path(champion_dir))
    if champion is None:
        others = [k for k in known_keys(Path(champion_dir).parent) if k != Path(champion_dir).name]
        raise FileNotFoundError(
            f"no champion in {champion_dir}: run the pipeline (make run) or promote a model"
            " (medflow models promote TAG)"
            + (f"; datasets with a champion: {', '.join(others)} (--dataset KEY)" if others else "")
        )
    return champion.bento_tag
