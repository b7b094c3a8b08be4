"""Session-wide test environment: every tool writes inside a per-session temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_tool_homes(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep BentoML's store and analytics off the user's home during tests."""
    base = tmp_path_factory.mktemp("homes")
    os.environ["BENTOML_HOME"] = str(base / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MEDFLOW_DEID_KEY", "medflow-test-key-not-secret")


def shared_data(name: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only beside the developers' clone)")
    return path
