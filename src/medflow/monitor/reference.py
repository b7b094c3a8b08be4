"""What production is compared with: the monitoring reference a model carries in the BentoML
model store (medflow.registry.monitoring), found by the model tag the predictions carry."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medflow.registry.monitoring import MONITORING_FILE, MonitoringReference


@dataclass(frozen=True)
class ModelReference:
    """A model tag's monitoring reference, or why there is none; `evaluated` holds its
    evaluated test metrics (from the reference, else the store entry's metadata)."""

    model_tag: str
    reference: MonitoringReference | None
    evaluated: dict[str, float] = field(default_factory=dict)
    missing: str | None = None


def load_reference(model_tag: str) -> ModelReference:
    """The model store entry's monitoring.json.

    A tag the store does not hold, or an entry without the file (a model packaged before
    monitoring, or without --manifest/--predictions), gives reference None and the reason.

    Raises:
        HandoffError: the file exists but is not a monitoring reference (names the file).
    """
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        model = bentoml.models.get(model_tag)
    except (BentoMLException, ValueError) as exc:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        return ModelReference(
            model_tag,
            None,
            missing=f"model {model_tag} is not in the BentoML model store at {home}"
            f" ({type(exc).__name__}): run the monitor where the model was packaged, or set"
            " BENTOML_HOME to that store",
        )
    stored = _numbers((model.info.metadata or {}).get("metrics") or {})
    path = Path(model.path) / MONITORING_FILE
    if not path.is_file():
        return ModelReference(
            model_tag,
            None,
            evaluated=stored,
            missing=f"model {model_tag} has no {MONITORING_FILE} in the model store (packaged"
            " before monitoring, or without the manifest and predictions):"
            f" {MonitoringReference.FIX}",
        )
    reference = MonitoringReference.read(path)
    return ModelReference(model_tag, reference, evaluated=reference.metrics or stored)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics mapping (the store keeps NaN as a string)."""
    out = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(name)] = number
    return out
