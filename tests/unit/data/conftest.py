"""Small real datasets shared by the data tests (built once per session, treat as read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medflow.config import SynthParams
from medflow.data.synthetic import run_synth

CLASSES = ["normal", "lesion"]
SMALL = SynthParams(n_patients=12, images_per_patient=2, lesion_prevalence=0.5, seed=3)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic DICOM source folder with labels.csv; copy it before changing it."""
    return run_synth(SMALL, CLASSES, tmp_path_factory.mktemp("synth") / "source").out_dir
