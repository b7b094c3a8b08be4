"""Small real datasets shared by the data tests (built once per session, treat as read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medflow.data.synthetic import run_synth
from tests.helpers.synthetic import CLASSES, SMALL


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic DICOM source folder with labels.csv; copy it before changing it."""
    return run_synth(SMALL, CLASSES, tmp_path_factory.mktemp("synth") / "source").out_dir
