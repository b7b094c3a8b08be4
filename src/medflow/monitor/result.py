"""What a monitor run found: per model tag its counts and rules, and what they were computed
from (numbers and category names only: no identifier, image hash or prediction id)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medflow.config import Params
from medflow.monitor.inputs import InputDrift
from medflow.monitor.performance import LivePerformance
from medflow.monitor.psi import ProbabilityShift
from medflow.monitor.reference import ModelReference
from medflow.monitor.rules import Rule

REPORT_FILE = "report.html"


def docs_slug(model_tag: str) -> str:
    """The folder of a model tag's Data Docs (under the report's docs/): name-version."""
    return model_tag.replace(":", "-")


@dataclass(frozen=True)
class ModelMonitoring:
    """One model tag's window: counts, rules and what they were computed from (numbers and
    category names only: no identifier, hash or prediction id)."""

    model_tag: str
    class_names: list[str]
    threshold: float
    n_predictions: int
    predicted_per_class: dict[str, int]
    reference: ModelReference
    rules: list[Rule]
    inputs: InputDrift | None
    shift: ProbabilityShift | None
    performance: LivePerformance | None
    production: dict[str, Any] | None  # drift.profile of the window
    probabilities: np.ndarray  # (n, classes)
    intensity: pd.DataFrame  # modality, pixel_mean of each prediction
    feedback_labels: np.ndarray
    feedback_probabilities: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def broken(self) -> list[Rule]:
        return [r for r in self.rules if r.broken]

    def summary(self) -> dict[str, Any]:
        """Counts and rules, JSON-safe."""
        return {
            "model_tag": self.model_tag,
            "predictions": self.n_predictions,
            "with_feedback": len(self.feedback_labels),
            "reference": self.reference.missing or "monitoring.json in the model store",
            "rules": [r.as_dict() for r in self.rules],
        }


@dataclass(frozen=True)
class MonitorResult:
    """A monitor run: its window, the store it read and each model tag's findings."""

    run_at: datetime
    since: datetime
    until: datetime
    store: str  # the database, without password
    models: list[ModelMonitoring]
    out_dir: Path
    params: Params
    notes: list[str] = field(default_factory=list)
    # (model tag, rule name) broken in the store's previous run: broken again is not news
    already_broken: frozenset[tuple[str, str]] = frozenset()

    @property
    def broken(self) -> list[tuple[str, Rule]]:
        """(model tag, rule) of every broken rule."""
        return [(m.model_tag, r) for m in self.models for r in m.broken]

    def summary(self) -> dict[str, Any]:
        """What the CLI prints, the flow returns and the artifact shows: counts and rules."""
        return {
            "run_at": self.run_at.isoformat(),
            "window": {
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "hours": (self.until - self.since).total_seconds() / 3600,
            },
            "store": self.store,
            "predictions": sum(m.n_predictions for m in self.models),
            "models": [m.summary() for m in self.models],
            "broken": [
                {
                    "model_tag": tag,
                    "name": r.name,
                    "score": r.as_dict()["score"],
                    "threshold": r.threshold,
                    "new": (tag, r.name) not in self.already_broken,
                }
                for tag, r in self.broken
            ],
            "notes": list(self.notes),
            "report": str(self.out_dir / REPORT_FILE),
        }
