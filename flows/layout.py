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
    def gate(self) -> Path:
        return self.reports / "gate.json"

    @property
    def bento(self) -> Path:
        return self.reports / "bento.json"
