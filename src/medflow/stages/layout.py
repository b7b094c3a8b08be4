"""Where each stage reads and writes: the one declaration in code of dvc.yaml's paths.

tests/unit/test_layout.py keeps the two in step.
"""

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
    def pacs_raw(self) -> Path:
        """The pull stage's raw folder (data.source pacs): identifiable instances under keyed
        tokens, and labels.csv. The ingest's source folder; gitignored, never in the DVC cache."""
        return self.data / "pacs"

    @property
    def pull_record(self) -> Path:
        """The pull stage's record: changes exactly when the PACS query's result does."""
        return self.data / "pull.json"

    @property
    def ingested(self) -> Path:
        return self.data / "ingested"

    @property
    def validation(self) -> Path:
        return self.data / "validation"

    @property
    def references(self) -> Path:
        """The drift references, one per dataset (medflow.data.dataset.reference_profile): the
        profile of the last dataset of that source and class names that passed validation."""
        return self.data / "reference"

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
    def training(self) -> Path:
        """The train stage's per-epoch curves (dvclive): `metrics.json`, the last epoch's
        values, and `plots/metrics/{train,val}/*.tsv`, one row per epoch."""
        return self.reports / "training"

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
    def predictions(self) -> Path:
        """The test split's predictions (per image): the confusion plot and the package
        stage's reference probabilities."""
        return self.reports / "predictions.csv"

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
    def baseline(self) -> Path:
        """The dataset's champion scored on the same test split: the gate's change rules."""
        return self.reports / "baseline.json"

    @property
    def champion(self) -> Path:
        """The champions, one per dataset (medflow.data.dataset.champion_folder): the last model
        packaged or promoted on it. Registry state, in the commands of dvc.yaml but no stage's
        output or dependency."""
        return self.reports / "champion"

    @property
    def bento(self) -> Path:
        return self.reports / "bento.json"
