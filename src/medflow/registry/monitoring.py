"""monitoring.json: what a classifier's model store entry keeps for `medflow monitor`.

The training data's drift profile (the one the validate stage keeps as its reference), the
test split's predicted probabilities and the evaluated metrics: production is compared with
these. The package stage writes it (medflow.registry.packaging.save_to_store); the monitor
reads it by the model tag the predictions carry. Numbers and category names only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from medflow.handoffs import Handoff
from medflow.validation import drift

MONITORING_FILE = "monitoring.json"
# manifest columns the training profile is computed from
PROFILE_COLUMNS = ("label", "manufacturer", "modality", "pixel_mean", "pixel_std")
_DIGITS = 6  # probabilities are kept to this many decimals (the file stays small)


class MonitoringReference(Handoff):
    """A packaged classifier's monitoring reference (monitoring.json, format 1)."""

    FIX: ClassVar[str] = (
        "re-package the model (the package stage with --manifest and --predictions) to store"
        " a monitoring reference"
    )

    format: Literal[1] = 1
    task: Literal["classification"] = "classification"
    class_names: list[str] = Field(min_length=2)
    threshold: float = Field(gt=0, lt=1)
    """the served decision threshold on p(class 1) (binary; multi-class takes the argmax)"""
    profile: dict[str, Any]
    """medflow.validation.drift.profile of the ingested manifest"""
    probabilities: list[list[float]]
    """the test split's predicted probabilities, one row per image, in class order"""
    metrics: dict[str, float]
    """the evaluated test metrics (metrics.json), e.g. auroc"""

    @field_validator("profile")
    @classmethod
    def _is_a_profile(cls, value: dict[str, Any]) -> dict[str, Any]:
        keys = ("label_fractions", "manufacturer_fractions", "intensity")
        if value.get("format") != drift.FORMAT or not all(k in value for k in keys):
            raise ValueError(f"not a format-{drift.FORMAT} drift profile")
        return value

    @model_validator(mode="after")
    def _rows_have_a_probability_per_class(self) -> MonitoringReference:
        width = len(self.class_names)
        bad = sum(len(row) != width for row in self.probabilities)
        if bad:
            raise ValueError(f"{bad} probability rows do not have {width} values")
        return self


def build_reference(
    manifest: Path,
    predictions: Path,
    class_names: Sequence[str],
    threshold: float,
    metrics: Mapping[str, Any],
) -> MonitoringReference:
    """The monitoring reference of a classifier from the ingested manifest (its drift
    profile, all splits) and evaluate's predictions.csv (its test-split probabilities).

    Raises:
        ValueError: the manifest lacks a PROFILE_COLUMNS column, or predictions.csv a
            p_<class> column; the message names them.
    """
    import pandas as pd

    from medflow.data.manifest import read_manifest

    manifest = Path(manifest)
    rows = read_manifest(manifest.parent)
    missing = [c for c in PROFILE_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{manifest} has no columns {missing}: re-run the ingest stage")
    preds = pd.read_csv(predictions)
    columns = [f"p_{c}" for c in class_names]
    missing = [c for c in columns if c not in preds.columns]
    if missing:
        raise ValueError(f"{predictions} has no columns {missing}: re-run the evaluate stage")
    probabilities = preds[columns].astype(float).round(_DIGITS).to_numpy().tolist()
    numbers = {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return MonitoringReference(
        class_names=list(class_names),
        threshold=threshold,
        profile=drift.profile(rows, list(class_names), "classification"),
        probabilities=probabilities,
        metrics=numbers,
    )
