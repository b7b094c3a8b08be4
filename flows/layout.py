"""Where each stage reads and writes, mirroring dvc.yaml (tests/unit/test_layout.py checks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def synthetic(self) -> Path:
        return self.data / "synthetic"

    @property
    def ingested(self) -> Path:
        return self.data / "ingested"

    @property
    def validation(self) -> Path:
        return self.data / "validation"

    @property
    def reference(self) -> Path:
        """The drift reference: the profile of the last dataset that passed validation."""
        return self.data / "reference" / "profile.json"

    @property
    def preprocessed(self) -> Path:
        return self.data / "preprocessed"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def manifest(self) -> Path:
        return self.ingested / "manifest.csv"

    @property
    def subgroups(self) -> Path:
        return self.reports / "subgroups.json"

    @property
    def evaluation(self) -> Path:
        """What the model card needs besides the metrics (threshold policy, data, model)."""
        return self.reports / "evaluation.json"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    @property
    def gate(self) -> Path:
        return self.reports / "gate.json"

    @property
    def model_card(self) -> Path:
        return self.reports / "model_card.md"

    @property
    def champion(self) -> Path:
        """The champion, the last model packaged or promoted: the gate's change rules compare
        against its metrics. Registry state, in the commands of dvc.yaml but no stage's output."""
        return self.reports / "champion"

    @property
    def champion_metrics(self) -> Path:
        return self.champion / "metrics.json"

    @property
    def bento(self) -> Path:
        return self.reports / "bento.json"
